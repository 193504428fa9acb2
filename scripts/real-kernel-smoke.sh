#!/usr/bin/env bash
# Produces a fresh IMA log from a real kernel (scripts/gen-real-kernel-logs.sh into a temp
# dir) and checks that imasnap and evmctl give the same verdict on it, then on a tampered copy.
# The guest also runs the host-built imasnap: `agent bundle` quotes PCR 0-10 through
# /dev/tpmrm0 (swtpm as vTPM) over a host nonce; the host checks that quote with
# tpm2_checkquote and the whole bundle (real IMA log + quote) with `imasnap verify`
# against the AK it enrolled before the boot, then tampered variants of it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# The guest quotes through /dev/tpmrm0: the binary needs the real TPM 2.0 back end.
# scripts/test.sh passes the one it built (IMASNAP_BIN); otherwise build it here.
bin="${IMASNAP_BIN:-$root/target/release/imasnap}"
[ -n "${IMASNAP_BIN:-}" ] || cargo build --release -q -p imasnap --features tpm2
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
GUEST_IMASNAP="$bin" OUT_BASE="$out" scripts/gen-real-kernel-logs.sh ima-ng violation
# expect NAME WANT CMD...: runs CMD, compares its exit status with WANT.
expect() {
  local name=$1 want=$2 rc=0; shift 2
  "$@" >/dev/null 2>&1 || rc=$?
  echo "real-kernel $name: exit $rc (want $want)"
  [ "$rc" = "$want" ]
}

# The quote made inside the guest, and the bundle around it.
check_guest_quote() {
  local sc=$1 d=$2 nonce ok=0 t
  nonce=$(cat "$d/nonce.txt")
  python3 - "$d/bundle/quote.json" "$d/q" <<'PY'
import json, sys
q = json.load(open(sys.argv[1]))
open(sys.argv[2] + ".attest", "wb").write(bytes.fromhex(q["attest"]))
open(sys.argv[2] + ".sig", "wb").write(bytes.fromhex(q["signature"]))
ak = open(sys.argv[1].rsplit("/", 2)[0] + "/enrolled-ak.pub").read().strip()
open(sys.argv[2] + ".ak", "wb").write(bytes.fromhex(ak))   # TPM2B_PUBLIC, tpm2-tools' "tss" format
PY
  expect "$sc guest quote, tpm2_checkquote" 0 \
    tpm2_checkquote -u "$d/q.ak" -m "$d/q.attest" -s "$d/q.sig" -g sha256 -q "$nonce" || ok=1
  expect "$sc guest bundle, imasnap verify (enrolled AK)" 0 \
    "$bin" verify "$d/bundle" --ak "$d/enrolled-ak.pub" --nonce "$nonce" || ok=1
  expect "$sc guest bundle, another nonce" 1 \
    "$bin" verify "$d/bundle" --ak "$d/enrolled-ak.pub" --nonce "00$nonce" || ok=1
  "$bin" tpm ak --tpm soft --out "$d/other-ak.pub"
  expect "$sc guest bundle, another AK" 1 \
    "$bin" verify "$d/bundle" --ak "$d/other-ak.pub" --nonce "$nonce" || ok=1
  # one byte of record 1's template data (its file digest) flipped: the sha256 bank,
  # extended with sha256 over the template data, no longer reaches the quoted PCR 10
  t=$d/bundle-tampered; cp -a "$d/bundle" "$t"
  python3 - "$t/live.bin" <<'PY'
import struct, sys
b = bytearray(open(sys.argv[1], "rb").read())
nl = struct.unpack_from("<I", b, 24)[0]
p = 32 + nl + struct.unpack_from("<I", b, 28 + nl)[0]     # record 1
nl = struct.unpack_from("<I", b, p + 24)[0]
b[p + 32 + nl + 4 + 10] ^= 1                                # inside its d-ng field
open(sys.argv[1], "wb").write(b)
PY
  expect "$sc guest bundle, record 1 tampered" 1 \
    "$bin" verify "$t" --ak "$d/enrolled-ak.pub" --nonce "$nonce" || ok=1
  return $ok
}

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
  check_guest_quote "$sc" "$d" || fail=1
done
exit $fail
