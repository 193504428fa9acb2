#!/usr/bin/env bash
# Soak (docs/PERFORMANCE.md "Issue 15"): one verifier with SQLite against 1,000 agents
# (100 new records per round, snapshot every 1,000 records) for 10 minutes, a line a
# minute with the rounds, failed rounds and the verifier's RSS. The agents run in a child
# process (--separate-agents), so the RSS is the verifier's alone.
#
# Passes when no round failed and, after the first minute (warm-up), the verifier's RSS
# stays within 10 % (largest minute over smallest).
#
# Usage: scripts/soak-verifier.sh [STATE_DIR]   (agents' stores; default /tmp, on disk:
#        they grow by ~10 MB/s, too much for tmpfs over 10 minutes)
# Env: HOSTS (1000), RECORDS (100), MINUTES (10), WARMUP (30 s before the first minute),
#      DB_DIR (the verifier's SQLite; default /tmp). Run it under `nice -n -20` on a
#      shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-/tmp}
HOSTS=${HOSTS:-1000}
RECORDS=${RECORDS:-100}
MINUTES=${MINUTES:-10}
WARMUP=${WARMUP:-30}
DB_DIR=${DB_DIR:-/tmp}
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
cargo bench -p imasnap-verifier-service --bench load -- --hosts "$HOSTS" --records "$RECORDS" \
    --seconds $((MINUTES * 60)) --warmup "$WARMUP" --report-every 60 --separate-agents \
    --dir "$DIR" --db-dir "$DB_DIR" | tee "$OUT"
awk '
    /^t=/ && !/warm-up/ {
        n++; rss = ""
        for (i = 1; i < NF; i++) {
            if ($i == "failed") failed += $(i + 1)
            if ($i == "RSS" && rss == "") rss = $(i + 1)
        }
        if (n > 1) { if (min == "" || rss < min) min = rss; if (rss > max) max = rss }
    }
    END {
        if (n < 2) { print "soak: too few minutes"; exit 1 }
        growth = (max - min) * 100 / min
        printf "soak: %d minutes, %d failed rounds, verifier RSS after minute 1: %d-%d MB (%.1f %%)\n", n, failed, min, max, growth
        if (failed > 0 || growth > 10) { print "soak: FAIL"; exit 1 }
        print "soak: PASS"
    }' "$OUT"
