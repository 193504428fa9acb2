#!/usr/bin/env bash
# Checks the README's main command on a fresh Debian 12: a debootstrap'ed bookworm chroot
# with only a C toolchain (gcc, libc6-dev: what rustup's linker needs), CA certificates,
# and this machine's rustup toolchain bind-mounted read-only. No libtss2, no pkg-config,
# no swtpm, and the test command has never run there. Clones the committed HEAD and runs
# `cargo run --release -- demo` inside. Not part of CI (a full release build from an
# empty cargo cache); run by hand, as root:
#
#   scripts/check-fresh-machine.sh [CHROOT_DIR]   # default /srv/imasnap-fresh12
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-/srv/imasnap-fresh12}"
toolchain="$(rustup toolchain list | awk '/default/ {print $1; exit}')"
rustup_home="${RUSTUP_HOME:-$HOME/.rustup}"

if [ ! -x "$dir/usr/bin/gcc" ]; then
  command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
  debootstrap --variant=minbase bookworm "$dir" http://deb.debian.org/debian >/dev/null
  cp /etc/resolv.conf "$dir/etc/"
  chroot "$dir" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends gcc libc6-dev ca-certificates git >/dev/null'
fi
for p in pkg-config libtss2-dev swtpm; do
  if chroot "$dir" dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    echo "check-fresh-machine: $dir has $p; it is not a fresh machine" >&2; exit 1
  fi
done

# Where this machine reaches crates.io through a proxy with its own CA, the chroot needs
# that CA too (infrastructure, not a dependency of imasnap).
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  mkdir -p "$dir/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/"
  chroot "$dir" update-ca-certificates >/dev/null 2>&1
fi

mnt=()
cleanup() { for m in "${mnt[@]}"; do umount "$m" 2>/dev/null || true; done; }
trap cleanup EXIT
mkdir -p "$dir/opt/rustup" "$dir/proc"
mount --bind -o ro "$rustup_home" "$dir/opt/rustup"; mnt+=("$dir/opt/rustup")
mount -t proc proc "$dir/proc"; mnt+=("$dir/proc")

rm -rf "$dir/root/imasnap" "$dir/root/cargo-home"
git clone -q "$root" "$dir/root/imasnap"
chroot "$dir" /usr/bin/env -i HOME=/root PATH="/opt/rustup/toolchains/$toolchain/bin:/usr/bin:/bin" \
  RUSTUP_HOME=/opt/rustup CARGO_HOME=/root/cargo-home \
  sh -c "cd /root/imasnap && cargo run --release -q -- demo"
echo "check-fresh-machine: ok: 'cargo run --release -- demo' passed in a fresh Debian 12 chroot ($dir)"
