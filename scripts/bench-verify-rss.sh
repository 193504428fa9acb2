#!/usr/bin/env bash
# Peak RSS and wall time of `imasnap verify` (full history and --latest-only) on bundles
# written by `imasnap sim run`, for several history lengths (issue #3: RSS must not grow
# with history).
#
#   scripts/bench-verify-rss.sh [RUNS] [EVENTS...]   (defaults 3, 10000 1000000)
#
# Each bundle: `imasnap sim run --out DIR --events N --snapshot-every 5000` (N workload
# events; re-opens add no record, so a bundle holds ~0.7 N records). Each verification runs
# RUNS times under /usr/bin/time (peak RSS; wall time includes process start and the
# verifier's own reported time in parentheses); prints every run, then best wall time and max peak RSS.
# IMASNAP_BIN=PATH measures that binary (no build); WORK=DIR keeps the bundles there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
runs="${1:-3}"
shift || true
sizes=("$@")
[ "${#sizes[@]}" -gt 0 ] || sizes=(10000 1000000)
bin="${IMASNAP_BIN:-$root/target/release/imasnap}"
[ -n "${IMASNAP_BIN:-}" ] || cargo build --release -q -p imasnap
if [ -n "${WORK:-}" ]; then work=$WORK; mkdir -p "$work"; else work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT; fi

echo "cores: $(nproc), cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
summary=()
# sim run's software TPM (seed 1): the AK a verifier would have enrolled.
"$bin" tpm ak --tpm soft:seed=1 -o "$work/ak.pub"
for n in "${sizes[@]}"; do
  dir="$work/bundle-$n"
  rm -rf "$dir" "$dir.state"
  "$bin" sim run --out "$dir" --events "$n" --snapshot-every 5000 >"$work/sim.log" 2>&1 ||
    { cat "$work/sim.log" >&2; exit 2; }
  echo "# $(tail -1 "$work/sim.log")"
  for mode in full latest-only; do
    extra=(); [ "$mode" = latest-only ] && extra=(--latest-only)
    best="" rss=0 line=""
    for i in $(seq "$runs"); do
      t0=$(date +%s.%N)
      set +e
      /usr/bin/time -f "%M" -o "$work/time" "$bin" verify "$dir" --ak "$work/ak.pub" "${extra[@]}" >"$work/out" 2>&1; rc=$?
      set -e
      t1=$(date +%s.%N)
      secs=$(printf '%.3f' "$(echo "$t1 - $t0" | bc)")
      kib=$(tail -1 "$work/time")
      line=$(head -1 "$work/out")
      # the verifier's own time (last field of its second line, e.g. "...; 19.2 ms")
      printf '%8d events %-12s run %d: %7s s wall (%s) %8d KiB  exit %d\n' "$n" "$mode" "$i" "$secs" \
        "$(sed -n 2p "$work/out" | awk -F'; ' '{print $NF}')" "$kib" "$rc"
      [ "$rc" -eq 0 ] || { cat "$work/out" >&2; exit 1; }
      if [ -z "$best" ] || [ "$(echo "$secs < $best" | bc)" = 1 ]; then best=$secs; fi
      [ "$kib" -gt "$rss" ] && rss=$kib
    done
    echo "         ${line}"
    summary+=("$(printf '%8d events %-12s best %6s s  peak RSS %8d KiB' "$n" "$mode" "$best" "$rss")")
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "---- summary (best of $runs wall time; peak RSS = max over runs)"
printf '%s\n' "${summary[@]}"
