#!/usr/bin/env bash
# Checks that the real TPM 2.0 stack (tss-esapi, libtss2) stays at the edge:
# - the pure libraries and the verifier service never depend on tss-esapi;
# - the default `imasnap` (what `cargo run --release -- demo` builds) and the
#   verifier-only build (`--no-default-features --features verifier`) compile with
#   pkg-config unable to find any system library, so neither needs libtss2-dev.
# The build goes to target/pure so that target/release keeps the tpm2 binary.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

fail=0
for p in imasnap-log imasnap-kernel-model imasnap-verifier imasnap-policy imasnap-store imasnap-verifier-service; do
  if cargo tree -q -p "$p" -e normal,build --prefix none | grep -q '^tss-esapi'; then
    echo "check-pure-build: $p depends on tss-esapi:" >&2
    cargo tree -q -p "$p" -e normal,build -i tss-esapi >&2 || true
    fail=1
  fi
done
for f in "" "--no-default-features --features verifier"; do
  # shellcheck disable=SC2086
  if cargo tree -q -p imasnap $f -e normal,build --prefix none | grep -q '^tss-esapi'; then
    echo "check-pure-build: imasnap ${f:-(default features)} depends on tss-esapi" >&2
    fail=1
  fi
done
[ "$fail" = 0 ] || exit 1

# An empty pkg-config search path: tss-esapi-sys would fail here, looking for tss2-sys.pc.
export PKG_CONFIG_LIBDIR=/nonexistent PKG_CONFIG_PATH=
export CARGO_TARGET_DIR="$root/target/pure"
cargo build -q -p imasnap
cargo build -q -p imasnap --no-default-features --features verifier
"$CARGO_TARGET_DIR/debug/imasnap" --version
echo "check-pure-build: ok (no tss-esapi in the pure crates; default and verifier-only builds need no libtss2)"
