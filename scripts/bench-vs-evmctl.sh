#!/usr/bin/env bash
# Same synthetic log, same PCR files, one run: imasnap vs `evmctl ima_measurement`.
# Verifies the sha1 and sha256 banks with template digests recomputed, and records peak RSS.
#
#   scripts/bench-vs-evmctl.sh [RECORDS]   (default 1000000)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
n="${1:-1000000}"
bin="$root/target/release/imasnap"
cargo build --release -q -p imasnap
command -v evmctl >/dev/null || scripts/install-deps.sh
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$bin" log synth --records "$n" --seed 42 -o "$work/big" 2>/dev/null
"$bin" log synth --records 10000 --seed 42 -o "$work/small" 2>/dev/null

measure() { # label, command... → prints "label seconds rss_kib exit"
  local label=$1; shift
  local t0 t1 rc
  t0=$(date +%s.%N)
  set +e
  /usr/bin/time -f "%M" -o "$work/rss" "$@" >/dev/null 2>"$work/err"; rc=$?
  set -e
  t1=$(date +%s.%N)
  printf '%-28s %8.3f s %8d KiB  exit %d\n' "$label" "$(echo "$t1 - $t0" | bc)" "$(tail -1 "$work/rss")" "$rc"
}

args() { echo --pcrs "sha1,$1/pcrs-sha1.txt" --pcrs "sha256,$1/pcrs-sha256.txt" --ignore-violations; }
echo "records: $n ($(stat -c %s "$work/big/binary_runtime_measurements") bytes), cores: $(nproc)"
for i in 1 2 3; do
  # shellcheck disable=SC2046
  measure "imasnap log verify (run $i)" "$bin" log verify "$work/big/binary_runtime_measurements" $(args "$work/big")
done
# shellcheck disable=SC2046
measure "evmctl ima_measurement" evmctl ima_measurement $(args "$work/big") "$work/big/binary_runtime_measurements"
# shellcheck disable=SC2046
measure "imasnap 10k records" "$bin" log verify "$work/small/binary_runtime_measurements" $(args "$work/small")
