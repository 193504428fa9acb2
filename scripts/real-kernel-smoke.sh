#!/usr/bin/env bash
# Produces a fresh IMA log from a real kernel (scripts/gen-real-kernel-logs.sh into a temp
# dir) and checks that imasnap and evmctl give the same verdict on it, then on a tampered copy.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bin="$root/target/release/imasnap"
[ -x "$bin" ] || cargo build --release -p imasnap
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
OUT_BASE="$out" scripts/gen-real-kernel-logs.sh ima-ng violation
fail=0
for sc in ima-ng violation; do
  d="$out/$sc"
  args=(--pcrs "sha1,$d/pcrs-sha1.txt" --pcrs "sha256,$d/pcrs-sha256.txt")
  for iv in "" --ignore-violations; do
    set +e
    "$bin" log verify "$d/binary_runtime_measurements" "${args[@]}" $iv >/dev/null; ours=$?
    evmctl ima_measurement "${args[@]}" $iv "$d/binary_runtime_measurements" >/dev/null 2>&1; theirs=$?
    set -e
    [ "$ours" = 0 ] && o=pass || o=fail
    [ "$theirs" = 0 ] && t=pass || t=fail
    echo "real-kernel $sc ${iv:-strict}: imasnap=$o evmctl=$t"
    [ "$o" = "$t" ] || fail=1
  done
  # Tamper: flip one byte of the last record's file digest; both must now fail.
  cp "$d/binary_runtime_measurements" "$d/tampered"
  size=$(stat -c %s "$d/tampered")
  printf '\x5a' | dd of="$d/tampered" bs=1 seek=$((size - 40)) conv=notrunc status=none
  set +e
  "$bin" log verify "$d/tampered" "${args[@]}" --ignore-violations >/dev/null; ours=$?
  set -e
  echo "real-kernel $sc tampered: imasnap exit $ours"
  [ "$ours" != 0 ] || fail=1
done
exit $fail
