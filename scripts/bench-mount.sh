#!/usr/bin/env bash
# Throughput and peak RSS of the whole-log view (docs/PERFORMANCE.md, "Issue 14"):
# a ~1M-record store from the kernel model (`sim run`, a cut every EVERY events), mounted
# standalone by `imasnap mount` over a securityfs-like directory holding the model's live
# list; then each view file is read whole with `dd bs=1M`, against the same bytes read
# from a plain file in the page cache (best of RUNS each, alternating). "first" is the
# first read after the mount (segments rendered, every byte through the FUSE daemon);
# later reads are what repeat readers see (the kernel keeps the view's pages). Peak RSS: VmHWM of the mount
# process. Needs root and /dev/fuse.
#
# Usage: scripts/bench-mount.sh [WORKDIR]   (default /tmp/imasnap-bench-mount)
# Env: EVENTS (1430000: ~1M records), EVERY (10000 events per cut), RUNS (5),
#      PASSTHROUGH (1; 0 mounts with --no-passthrough: every read through the daemon).
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/imasnap-bench-mount}
EVENTS=${EVENTS:-1430000}
EVERY=${EVERY:-10000}
RUNS=${RUNS:-5}
cargo build --release -q -p imasnap
B=${CARGO_TARGET_DIR:-target}/release/imasnap
mkdir -p "$W"
if [ ! -f "$W/b/bundle.json" ]; then
  rm -rf "$W/b" "$W/b.state"
  "$B" sim run --out "$W/b" --events "$EVENTS" --snapshot-every "$EVERY" >/dev/null
fi
# The model's kernel as securityfs shows it after the last cut (RFC interface).
IMA=$W/ima
rm -rf "$IMA" && mkdir -p "$IMA"
cp "$W/b/live.bin" "$IMA/binary_runtime_measurements"
touch "$IMA/snapshot" "$IMA/binary_runtime_measurements_sha1" "$IMA/binary_runtime_measurements_sha256"
MP=$W/mnt
mkdir -p "$MP"
umount "$MP" 2>/dev/null || true
opt=(); [ "${PASSTHROUGH:-1}" = 0 ] && opt=(--no-passthrough)
"$B" mount "${opt[@]}" --state-dir "$W/b.state" --ima-dir "$IMA" --interface snapshot --json "$MP" >"$W/mount.json" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 200); do grep -q " $MP fuse" /proc/mounts && break; sleep 0.05; done
grep -q " $MP fuse" /proc/mounts || { echo "bench-mount: the view did not mount" >&2; exit 1; }

once() { # wall seconds of one read of $1
  local t0 t1
  t0=$(date +%s.%N)
  dd if="$1" of=/dev/null bs=1M status=none
  t1=$(date +%s.%N)
  python3 -c "print($t1 - $t0)"
}
pair() { # best of RUNS for the view $1 and the plain file $2, alternating (same noise)
  local bv=999 bp=999
  for _ in $(seq "$RUNS"); do
    bv=$(python3 -c "print(min($bv, $(once "$1")))")
    bp=$(python3 -c "print(min($bp, $(once "$2")))")
  done
  echo "$bv $bp"
}

echo "passthrough: ${PASSTHROUGH:-1}  records: $(cat "$MP/runtime_measurements_count")  segments: $(ls "$W"/b.state/boots/*/ | grep -c '\.snap$')  load: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-38s %12s %11s %10s %10s %7s\n' file bytes "first MB/s" "view MB/s" "plain MB/s" ratio
for f in binary_runtime_measurements ascii_runtime_measurements binary_runtime_measurements_sha256 ascii_runtime_measurements_sha256; do
  t0=$(date +%s.%N)
  cat "$MP/$f" >"$W/plain-$f"
  t1=$(date +%s.%N)
  first=$(python3 -c "print($t1 - $t0)")
  n=$(stat -c %s "$W/plain-$f")
  read -r v p < <(pair "$MP/$f" "$W/plain-$f")
  python3 -c "n=$n; v=$v; p=$p; f=$first; print(f'%-38s %12d %11.0f %10.0f %10.0f %6.0f%%' % ('$f', n, n/f/1e6, n/v/1e6, n/p/1e6, 100*p/v))"
done
echo "mount process peak RSS: $(grep VmHWM /proc/$PID/status | awk '{print $2, $3}')"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
