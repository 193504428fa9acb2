#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test imasnap has.
#
#   scripts/test.sh            # everything (about 10 minutes on 2 cores)
#   FUZZ_SECONDS=60 scripts/test.sh
#   SKIP_QEMU=1 scripts/test.sh   # skip booting a real kernel
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/install-deps.sh

echo "== build"
cargo build --release --workspace --all-targets

echo "== fuzz smoke (${FUZZ_SECONDS:-20}s per target)"
scripts/fuzz-smoke.sh "${FUZZ_SECONDS:-20}"

if [ "${SKIP_QEMU:-0}" != 1 ]; then
  echo "== real kernel: boot Debian's kernel in QEMU with swtpm, verify its fresh IMA log"
  scripts/real-kernel-smoke.sh
fi

echo "== cargo test"
cargo test --release --workspace
