#!/usr/bin/env bash
# Figures for quote-anchored checkpoints (docs/PERFORMANCE.md "Checkpoints"):
#
#  1. latest-segment verification after a short history and after ~1M records, the same
#     cut spacing in both (so the records after the newest checkpoint are alike), on each
#     back end: RFC snapshots and staging (kernel model), legacy (checkpoints on the
#     agent's copy of a never-trimmed list, examples/legacy_bundle.rs);
#  2. full history of the ~1M-record bundle in ranges between checkpoints, --jobs 1 vs 2;
#  3. what a checkpoint costs per cut on swtpm (and on the in-process soft TPM), and the
#     kernel model's longest list-lock hold with checkpoints on and off.
#
# Usage: scripts/bench-checkpoints.sh [WORKDIR]   (default /tmp/imasnap-bench-cp)
# Env: EVENTS_SMALL (14500), EVENTS_BIG (1430500), EVERY (10000 events per cut), RUNS (5),
#      PARTS (which parts to run: "latest ranges cost" by default; e.g. PARTS=ranges);
#      legacy: LEGACY_SMALL (10000 records), LEGACY_BIG (997000: 142 checkpoints and the same 3,000-record tail as the small one), LEGACY_EVERY (7000).
# Needs: a release build with --features tpm2 (built here), swtpm for part 3.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/imasnap-bench-cp}
EVENTS_SMALL=${EVENTS_SMALL:-14500}
EVENTS_BIG=${EVENTS_BIG:-1430500}
EVERY=${EVERY:-10000}
RUNS=${RUNS:-5}
PARTS=${PARTS:-latest ranges cost}
part() { [[ " $PARTS " == *" $1 "* ]]; }
cargo build --release -q -p imasnap --features tpm2
B=${CARGO_TARGET_DIR:-target}/release/imasnap
mkdir -p "$W"

bundle() { # name events every [extra args]
  local d=$W/$1
  if [ ! -f "$d/bundle.json" ]; then
    rm -rf "$d" "$d.state"
    "$B" sim run --out "$d" --events "$2" --snapshot-every "$3" "${@:4}" >/dev/null
  fi
  echo "$d"
}

# Best of RUNS: engine seconds (the "seconds" of --json) and whole-command wall seconds.
best() { # args...
  local best_e=999 best_w=999 out
  for _ in $(seq "$RUNS"); do
    local t0 t1
    t0=$(date +%s.%N)
    out=$("$B" verify "$@" --trust-bundle-ak --json)
    t1=$(date +%s.%N)
    local e w
    e=$(python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["verdict"]=="verified", d; print(d["seconds"])' <<<"$out")
    w=$(python3 -c "print($t1-$t0)")
    best_e=$(python3 -c "print(min($best_e,$e))")
    best_w=$(python3 -c "print(min($best_w,$w))")
  done
  local n
  n=$(python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["report"]["quote_matched_at"])' <<<"$out")
  echo "$best_e $best_w $n"
}

# A stock kernel's host: the agent's copy with a checkpoint every $3 records.
legacy_bundle() { # name records every
  local d=$W/$1
  if [ ! -f "$d/bundle.json" ]; then
    rm -rf "$d"
    cargo run --release -q -p imasnap-agent-server --features sim --example legacy_bundle -- "$d" "$2" "$3" >/dev/null
  fi
  echo "$d"
}
cps() { python3 -c 'import json,sys; m=json.load(open(sys.argv[1]+"/manifest.json")); print(sum(1 for s in m["snapshots"] if "checkpoint" in s))' "$1"; }

latest() { # back-end small-bundle big-bundle
  local se sw sn be bw bn
  read -r se sw sn < <(best "$2" --latest-only)
  read -r be bw bn < <(best "$3" --latest-only)
  for row in "small $sn $2 $se $sw" "big $bn $3 $be $bw"; do
    set -- "$1" $row
    printf '%-8s %-6s %9s records %5s checkpoints  engine %.3f ms  command %.1f ms\n' "$1" "$2" "$3" "$(cps "$4")" \
      "$(python3 -c "print($5*1e3)")" "$(python3 -c "print($6*1e3)")"
  done
  python3 -c "print(f'{\"$1\":8} ratio big/small: engine {$be/$se:.2f}x, command {$bw/$sw:.2f}x')"
}

big=$(bundle big "$EVENTS_BIG" "$EVERY")
if part latest; then
small=$(bundle small "$EVENTS_SMALL" "$EVERY")
echo "== latest segment from the newest checkpoint, per back end (best of $RUNS)"
latest rfc "$small" "$big"
latest staging "$(bundle staging-small "$EVENTS_SMALL" "$EVERY" --interface staging)" \
  "$(bundle staging-big "$EVENTS_BIG" "$EVERY" --interface staging)"
latest legacy "$(legacy_bundle legacy-small "${LEGACY_SMALL:-10000}" "${LEGACY_EVERY:-7000}")" \
  "$(legacy_bundle legacy-big "${LEGACY_BIG:-997000}" "${LEGACY_EVERY:-7000}")"
fi

if part ranges; then
echo "== full history in ranges between checkpoints (best of $RUNS, load $(cut -d' ' -f1-3 /proc/loadavg))"
read -r j1 _ n < <(best "$big" --jobs 1)
read -r j2 _ _ < <(best "$big" --jobs 2)
python3 -c "n=$n; print(f'{n} records: --jobs 1 {$j1:.3f} s ({n/$j1/1e6:.2f}M rec/s), --jobs 2 {$j2:.3f} s ({n/$j2/1e6:.2f}M rec/s), speed-up {$j1/$j2:.2f}x')"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
fi

part cost || exit 0
echo "== checkpoint cost per cut"
for spec in soft swtpm; do
  d=$W/cost-$spec
  rm -rf "$d" "$d.state"
  if [ "$spec" = swtpm ]; then
    command -v swtpm >/dev/null || { echo "swtpm: not installed, skipped"; continue; }
    tcti=$(scripts/swtpm.sh start "$W/swtpm" 23321)
    "$B" sim run --out "$d" --events 40000 --snapshot-every 2000 --tpm "$tcti" --json >"$W/cost-$spec.json"
    rm -rf "$d" "$d.state"
    tcti=$(scripts/swtpm.sh start "$W/swtpm" 23321)
    "$B" sim run --out "$d" --events 40000 --snapshot-every 2000 --tpm "$tcti" --no-checkpoints --json >"$W/cost-$spec-off.json"
    scripts/swtpm.sh stop "$W/swtpm" >/dev/null
  else
    "$B" sim run --out "$d" --events 40000 --snapshot-every 2000 --json >"$W/cost-$spec.json"
    rm -rf "$d" "$d.state"
    "$B" sim run --out "$d" --events 40000 --snapshot-every 2000 --no-checkpoints --json >"$W/cost-$spec-off.json"
  fi
  python3 - "$W/cost-$spec.json" "$W/cost-$spec-off.json" "$spec" <<'EOF'
import json, sys
on = json.load(open(sys.argv[1]))["report"]; off = json.load(open(sys.argv[2]))["report"]
c = on["checkpoints"]
print(f"{sys.argv[3]:6} {c['taken']} checkpoints ({c['quotes']} quotes): mean {c['total_ns']/max(c['taken'],1)/1e6:.2f} ms, "
      f"max {c['max_ns']/1e6:.2f} ms; kernel list-lock max pause {on['max_pause_ns']/1e3:.1f} us with, "
      f"{off['max_pause_ns']/1e3:.1f} us without")
EOF
done
