#!/usr/bin/env bash
# Installs what imasnap's tests need on a fresh Debian 12 machine (as root). Idempotent:
# apt runs only when a package is missing.
set -euo pipefail

pkgs=(
  swtpm swtpm-tools tpm2-tools libtss2-dev   # the real TPM 2.0 stack and a software TPM
  ima-evm-utils                              # evmctl, the peer we cross-check against
  qemu-system-x86 busybox-static cpio e2fsprogs linux-image-amd64  # real-kernel logs
  pkg-config clang                           # tss-esapi / bindings
  kexec-tools flex bison libelf-dev libssl-dev build-essential  # kernel/: patched kernel + kexec in the guest
  openssl hyperfine bc
  python3-venv python3-gpg                   # Keylime from PyPI in a venv (scripts/keylime-venv.sh); it imports gpg
  fuse3                                      # `imasnap mount`: the FUSE view (the kernel's /dev/fuse; fusermount3)
  postgresql                                 # verifier replicas: a throwaway cluster (scripts/postgres.sh), psql
  chromium chromium-driver libnss3-tools     # the dashboard's browser test: headless Chromium, chromedriver, certutil/pk12util
  systemd binutils                           # the package test: systemd-analyze verify, objdump/strip (packaging/)
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The stock kernel the harness boots (guest::stock_kernel): the metapackage can be
# installed while its kernel's /boot image is gone (a trimmed image); reinstall it then.
kver=$(dpkg-query -W -f='${Depends}' linux-image-amd64 | sed -n 's/^ *linux-image-\([^ ,]*\).*/\1/p')
if [ -n "$kver" ] && { [ ! -r "/boot/vmlinuz-$kver" ] || [ ! -r "/lib/modules/$kver/modules.dep" ]; }; then
  echo "install-deps: /boot/vmlinuz-$kver missing: apt-get install --reinstall linux-image-$kver"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends --reinstall "linux-image-$kver" >/dev/null
fi
command -v cargo >/dev/null || { echo "install-deps: cargo not found (rustup toolchain expected)" >&2; exit 1; }
# test.sh runs clippy; rustup's minimal profile leaves it out.
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
# `imasnap mount` tests need the kernel's FUSE device; never skip them silently.
if [ ! -e /dev/fuse ]; then
  modprobe fuse 2>/dev/null || true
  [ -e /dev/fuse ] || { echo "install-deps: /dev/fuse is missing (no FUSE in this kernel): the mount tests cannot run" >&2; exit 1; }
fi
