#!/usr/bin/env bash
# `imasnap log verify` vs `evmctl ima_measurement` on a plain ima-ng log (issue 13).
#
#   scripts/bench-log-verify-ng.sh [RECORDS] [RUNS]   (defaults 1000000, 3)
#
# The log is `imasnap log synth --ima-ng-only --seed 42`: ima-ng records and ~0.5 %
# violations, no ima-sig record, so evmctl does not stat any file (scripts/bench-vs-evmctl.sh
# uses the mixed log, where it stats every ima-sig file and is slower). Both tools verify the
# sha1 and sha256 banks with every template digest recomputed, with the same PCR files and
# --ignore-violations. Prints every run, the load average before and after, then the best of
# RUNS wall times, records/s and the imasnap/evmctl ratio. Exits 1 if a verification fails.
# The binary: IMASNAP_BIN, else $CARGO_TARGET_DIR/release/imasnap (built first unless
# NO_BUILD=1), else target/release/imasnap.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
n="${1:-1000000}"
runs="${2:-3}"
bin="${IMASNAP_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/imasnap}"
[ "${NO_BUILD:-0}" = 1 ] || [ -n "${IMASNAP_BIN:-}" ] || cargo build --release -q -p imasnap
command -v evmctl >/dev/null || scripts/install-deps.sh
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$bin" log synth --records "$n" --seed 42 --ima-ng-only -o "$work/big" >"$work/synth.log" 2>&1 ||
  { cat "$work/synth.log" >&2; exit 2; }
log="$work/big/binary_runtime_measurements"

measure() {
  local label=$1; shift
  local t0 t1 rc
  t0=$(date +%s.%N)
  set +e
  "$@" >/dev/null 2>"$work/err"; rc=$?
  set -e
  t1=$(date +%s.%N)
  secs=$(echo "$t1 - $t0" | bc)
  printf '%-32s %8.3f s  exit %d\n' "$label" "$secs" "$rc"
  if [ "$rc" -ne 0 ]; then
    echo "FAILED: $*" >&2; tail -5 "$work/err" >&2; exit 1
  fi
}
min() { if [ -z "$1" ] || [ "$(echo "$2 < $1" | bc)" = 1 ]; then echo "$2"; else echo "$1"; fi; }
args() { echo --pcrs "sha1,$work/big/pcrs-sha1.txt" --pcrs "sha256,$work/big/pcrs-sha256.txt" --ignore-violations; }

echo "records: $n ($(stat -c %s "$log") bytes, ima-ng only), cores: $(nproc)," \
  "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(evmctl --version 2>&1 | head -1)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
best_i="" best_e=""
for i in $(seq "$runs"); do
  # shellcheck disable=SC2046
  measure "imasnap log verify (run $i)" "$bin" log verify "$log" $(args)
  best_i=$(min "$best_i" "$secs")
done
for i in $(seq "$runs"); do
  # shellcheck disable=SC2046
  measure "evmctl ima_measurement (run $i)" evmctl ima_measurement $(args) "$log"
  best_e=$(min "$best_e" "$secs")
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "---- summary (best of $runs wall time)"
printf 'imasnap  %d records: %.3f s = %.0f records/s\n' "$n" "$best_i" "$(echo "$n / $best_i" | bc -l)"
printf 'evmctl   %d records: %.3f s = %.0f records/s\n' "$n" "$best_e" "$(echo "$n / $best_e" | bc -l)"
printf 'speed ratio imasnap/evmctl: %.2fx\n' "$(echo "$best_e / $best_i" | bc -l)"
