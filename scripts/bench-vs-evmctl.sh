#!/usr/bin/env bash
# Same synthetic log, same PCR files, one run: imasnap vs `evmctl ima_measurement`.
# Both verify the sha1 and sha256 banks with template digests recomputed (both reject a log
# whose template data was altered); peak RSS from /usr/bin/time.
#
#   scripts/bench-vs-evmctl.sh [RECORDS] [RUNS]   (defaults 1000000, 3)
#
# Prints every run, then best-of-RUNS wall time, records/s, the imasnap/evmctl speed ratio and
# the peak RSS of imasnap on the big log vs a 10,000-record log. Exits 1 if any verification
# fails (a failed run's time means nothing). NO_BUILD=1 uses target/release as is;
# IMASNAP_BIN=PATH measures that binary (no build).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
n="${1:-1000000}"
runs="${2:-3}"
bin="${IMASNAP_BIN:-$root/target/release/imasnap}"
[ "${NO_BUILD:-0}" = 1 ] || [ -n "${IMASNAP_BIN:-}" ] || cargo build --release -q -p imasnap
command -v evmctl >/dev/null || scripts/install-deps.sh
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for d in "big $n" "small 10000"; do set -- $d
  "$bin" log synth --records "$2" --seed 42 -o "$work/$1" >"$work/synth.log" 2>&1 || { cat "$work/synth.log" >&2; exit 2; }
done

# measure LABEL CMD... → prints one line; sets $secs and $rss_kib. Aborts on a non-zero exit.
measure() {
  local label=$1; shift
  local t0 t1 rc
  t0=$(date +%s.%N)
  set +e
  /usr/bin/time -f "%M" -o "$work/rss" "$@" >/dev/null 2>"$work/err"; rc=$?
  set -e
  t1=$(date +%s.%N)
  secs=$(echo "$t1 - $t0" | bc)
  rss_kib=$(tail -1 "$work/rss")
  printf '%-32s %8.3f s %8d KiB  exit %d\n' "$label" "$secs" "$rss_kib" "$rc"
  if [ "$rc" -ne 0 ]; then
    echo "FAILED: $*" >&2; grep -v '^Failed to stat' "$work/err" | tail -5 >&2; exit 1
  fi
}
min() { if [ -z "$1" ] || [ "$(echo "$2 < $1" | bc)" = 1 ]; then echo "$2"; else echo "$1"; fi; }

args() { echo --pcrs "sha1,$1/pcrs-sha1.txt" --pcrs "sha256,$1/pcrs-sha256.txt" --ignore-violations; }
echo "records: $n ($(stat -c %s "$work/big/binary_runtime_measurements") bytes), cores: $(nproc)," \
  "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(evmctl --version 2>&1 | head -1)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

best_i="" rss_i=0
for i in $(seq "$runs"); do
  # shellcheck disable=SC2046
  measure "imasnap log verify (run $i)" "$bin" log verify "$work/big/binary_runtime_measurements" $(args "$work/big")
  best_i=$(min "$best_i" "$secs"); [ "$rss_kib" -gt "$rss_i" ] && rss_i=$rss_kib
done
best_e=""
for i in $(seq "$runs"); do
  # evmctl prints a "Failed to stat" line per ima-sig record (it looks for the file); to a file.
  # shellcheck disable=SC2046
  measure "evmctl ima_measurement (run $i)" evmctl ima_measurement $(args "$work/big") "$work/big/binary_runtime_measurements"
  best_e=$(min "$best_e" "$secs")
done
best_s="" rss_s=0
for i in $(seq "$runs"); do
  # shellcheck disable=SC2046
  measure "imasnap 10k records (run $i)" "$bin" log verify "$work/small/binary_runtime_measurements" $(args "$work/small")
  best_s=$(min "$best_s" "$secs"); [ "$rss_kib" -gt "$rss_s" ] && rss_s=$rss_kib
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "---- summary (best of $runs wall time; peak RSS = max over runs)"
printf 'imasnap  %d records: %.3f s = %.0f records/s\n' "$n" "$best_i" "$(echo "$n / $best_i" | bc -l)"
printf 'evmctl   %d records: %.3f s = %.0f records/s\n' "$n" "$best_e" "$(echo "$n / $best_e" | bc -l)"
printf 'speed ratio imasnap/evmctl: %.2fx\n' "$(echo "$best_e / $best_i" | bc -l)"
printf 'peak RSS imasnap: %d KiB (%d records) vs %d KiB (10000 records): delta %d KiB\n' \
  "$rss_i" "$n" "$rss_s" "$((rss_i - rss_s))"
