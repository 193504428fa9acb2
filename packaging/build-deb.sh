#!/usr/bin/env bash
# Builds the imasnap Debian package with dpkg-deb (no cargo-deb: nothing to compile or
# download first, and every file's place is written out here).
#
#   packaging/build-deb.sh [OUTDIR]        # prints the .deb's path
#
# The binary: $IMASNAP_BIN if set (it must be built with --features imasnap/tpm2), else
# `cargo build --release -p imasnap --features imasnap/tpm2`. Man pages and completions
# come from that binary (`imasnap man DIR`, `imasnap completions SHELL`).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
out="${1:-$target/debian}"
bin="${IMASNAP_BIN:-}"
if [ -z "$bin" ]; then
  (cd "$root" && cargo build --release -p imasnap --features imasnap/tpm2 >&2)
  bin="$target/release/imasnap"
fi
[ -x "$bin" ] || { echo "build-deb: no binary at $bin" >&2; exit 1; }
# A package without the real TPM back end would refuse the default tpm = "device:…".
objdump -p "$bin" | grep -c 'NEEDED.*libtss2-esys' >/dev/null \
  || { echo "build-deb: $bin is not built with --features imasnap/tpm2 (no libtss2-esys)" >&2; exit 1; }

version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$root/Cargo.toml")"
arch="$(dpkg --print-architecture)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
p="$stage/pkg"

install -D -m0755 "$bin" "$p/usr/bin/imasnap"
strip --strip-unneeded "$p/usr/bin/imasnap"
# Units where Debian 12's systemd packages put theirs.
install -D -m0644 "$here/systemd/imasnap-agent.service" "$p/lib/systemd/system/imasnap-agent.service"
install -D -m0644 "$here/systemd/imasnap-verifier.service" "$p/lib/systemd/system/imasnap-verifier.service"
install -D -m0644 "$here/debian/sysusers.conf" "$p/usr/lib/sysusers.d/imasnap.conf"
install -D -m0644 "$here/etc/agent.toml" "$p/etc/imasnap/agent.toml"
install -D -m0644 "$here/etc/verifier.toml" "$p/etc/imasnap/verifier.toml"

mkdir -p "$p/usr/share/man/man1"
"$p/usr/bin/imasnap" man "$p/usr/share/man/man1" >/dev/null
gzip -9n "$p"/usr/share/man/man1/*.1
install -d "$p/usr/share/bash-completion/completions" "$p/usr/share/zsh/vendor-completions" \
  "$p/usr/share/fish/vendor_completions.d"
"$p/usr/bin/imasnap" completions bash >"$p/usr/share/bash-completion/completions/imasnap"
"$p/usr/bin/imasnap" completions zsh >"$p/usr/share/zsh/vendor-completions/_imasnap"
"$p/usr/bin/imasnap" completions fish >"$p/usr/share/fish/vendor_completions.d/imasnap.fish"

doc="$p/usr/share/doc/imasnap"
install -d "$doc"
for f in README.md docs/OPERATORS.md docs/SERVICES.md; do install -m0644 "$root/$f" "$doc/"; done
install -m0644 "$here/debian/copyright" "$doc/copyright"

# Depends: the package of every shared library the binary links, at least the installed
# upstream version (what dpkg-shlibdeps would do with a debian/ tree).
deps=()
for lib in $(objdump -p "$bin" | awk '/NEEDED/ {print $2}'); do
  # awk reads to the end (no early exit): under pipefail a writer cut off early is a failure.
  path="$(ldconfig -p | awk -v l="$lib" '$1 == l && /x86-64|AArch64|64bit/ && !n++ {print $NF}')"
  [ -n "$path" ] || { echo "build-deb: $lib not found by ldconfig" >&2; exit 1; }
  pkg=""
  for cand in "$path" "$(readlink -f "$path")" "${path/#\/usr\/lib/\/lib}" "${path/#\/lib/\/usr\/lib}"; do
    pkg="$(dpkg -S "$cand" 2>/dev/null | awk -F: '!n++ {print $1}')" && [ -n "$pkg" ] && break
  done
  [ -n "$pkg" ] || { echo "build-deb: no package owns $path" >&2; exit 1; }
  ver="$(dpkg-query -W -f='${Version}' "$pkg" | sed 's/^[0-9]*://; s/-[^-]*$//; s/+.*//')"
  deps+=("$pkg (>= $ver)")
done
depends="$(printf '%s\n' "${deps[@]}" | sort -u | paste -sd, | sed 's/,/, /g')"

install -d "$p/DEBIAN"
for s in postinst prerm postrm; do install -m0755 "$here/debian/$s" "$p/DEBIAN/$s"; done
printf '/etc/imasnap/agent.toml\n/etc/imasnap/verifier.toml\n' >"$p/DEBIAN/conffiles"
size="$(du -sk --exclude=DEBIAN "$p" | cut -f1)"
cat >"$p/DEBIAN/control" <<CONTROL
Package: imasnap
Version: $version
Architecture: $arch
Maintainer: imasnap developers <imasnap@localhost>
Installed-Size: $size
Depends: $depends
Recommends: tpm2-tools
Section: admin
Priority: optional
Homepage: https://github.com/imasnap/imasnap
Description: IMA measurement-log snapshots: agent, verifier and tools
 imasnap moves older Linux IMA measurement records out of the kernel into
 snapshot files and lets a verifier check each piece against TPM quotes.
 This package holds the imasnap binary, the systemd units imasnap-agent and
 imasnap-verifier (Type=notify, hardened), example configurations in
 /etc/imasnap, man pages and bash, zsh and fish completions.
CONTROL
mkdir -p "$out"
deb="$out/imasnap_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$p" "$deb" >/dev/null
echo "$deb"
