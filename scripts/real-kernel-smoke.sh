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
  # Tamper: flip one byte of the file digest of the first non-violation record after
  # boot_aggregate (a violation's data is not hashed, by IMA's design). Both must now fail.
  python3 - "$d/binary_runtime_measurements" "$d/tampered" <<'PY'
import struct, sys
b = bytearray(open(sys.argv[1], 'rb').read())
p, i = 0, 0
while p < len(b):
    digest = b[p + 4:p + 24]
    nl = struct.unpack_from('<I', b, p + 24)[0]
    dl = struct.unpack_from('<I', b, p + 28 + nl)[0]
    data = p + 32 + nl
    if i > 0 and any(digest):
        flen = struct.unpack_from('<I', b, data)[0]
        b[data + 4 + flen - 1] ^= 0x01   # last byte of the d-ng digest
        break
    p, i = data + dl, i + 1
open(sys.argv[2], 'wb').write(b)
PY
  set +e
  "$bin" log verify "$d/tampered" "${args[@]}" --ignore-violations >/dev/null; ours=$?
  set -e
  echo "real-kernel $sc tampered: imasnap exit $ours"
  [ "$ours" != 0 ] || fail=1
done
exit $fail
