#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test imasnap has.
#
#   scripts/test.sh            # everything (about 10 minutes on 2 cores)
#   FUZZ_SECONDS=60 scripts/test.sh
#   SKIP_QEMU=1 scripts/test.sh   # skip booting real kernels (and building the patched one)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/install-deps.sh

# Tests need release speed, not link-time optimisation or debug info: without them the
# ~60 test, bench and example binaries link in a fraction of the time on 2 cores. The
# figures in docs/PERFORMANCE.md come from the normal release profile (thin LTO).
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_DEBUG=0

# The tests use the real TPM 2.0 back end (tss-esapi, libtss2); the default build does not.
export IMASNAP_FEATURES="--features imasnap/tpm2"

echo "== build (features: tpm2)"
cargo build --release --workspace --all-targets $IMASNAP_FEATURES
# The binary with tpm2 that the QEMU guests run (scripts and kernel/harness read this).
export IMASNAP_BIN="$root/target/release/imasnap"

echo "== pure builds: no tss-esapi in the pure crates; the default and verifier-only binaries build without libtss2"
scripts/check-pure-build.sh

echo "== clippy (library lints: no unwrap/expect/panic, unsafe only where allowed)"
cargo clippy --release --workspace --lib --bins $IMASNAP_FEATURES -- -D warnings

echo "== Debian package: build the .deb, dpkg -i into a scratch root, check its contents, systemd-analyze verify the units, READY=1/STOPPING=1 from the installed binary (packaging/test-deb.sh)"
packaging/test-deb.sh

echo "== fuzz smoke (${FUZZ_SECONDS:-20}s per target)"
scripts/fuzz-smoke.sh "${FUZZ_SECONDS:-20}"

if [ "${SKIP_QEMU:-0}" != 1 ]; then
  echo "== real kernel: boot Debian's kernel in QEMU with swtpm, verify its fresh IMA log"
  scripts/real-kernel-smoke.sh

  echo "== kernel/: checkpatch, build the patched kernel with CONFIG_IMA_LOG_SNAPSHOT and CONFIG_IMA_STAGING (cached by patch hash), compile security/integrity/ with each option alone (W=1), boot smoke (snapshots, staging, kexec, ima_flush_htable)"
  kernel/build.sh --check
  kernel/build.sh --without-feature --compile-only   # staging only
  kernel/build.sh --without-staging --compile-only   # snapshots only
  IMASNAP_KERNEL="$(kernel/build.sh)"
  export IMASNAP_KERNEL
  kernel/smoke.sh "$IMASNAP_KERNEL"

  echo "== kernel/: each option alone, booted (each built and cached by patch hash like the kernel above; ~5.5 min each uncached): smoke on the staging-only and the snapshot-only kernel (the other option's files absent)"
  t0=$(date +%s)
  IMASNAP_KERNEL_STAGING_ONLY="$(kernel/build.sh --without-feature)"   # CONFIG_IMA_LOG_SNAPSHOT=n
  IMASNAP_KERNEL_SNAPSHOT_ONLY="$(kernel/build.sh --without-staging)"  # CONFIG_IMA_STAGING=n
  echo "single-option kernels ready in $(( $(date +%s) - t0 )) s"
  kernel/smoke.sh "$IMASNAP_KERNEL_STAGING_ONLY"
  kernel/smoke.sh "$IMASNAP_KERNEL_SNAPSHOT_ONLY"
  echo "single-option kernel steps took $(( $(date +%s) - t0 )) s"

  echo "== kernel/: the SMP debug kernel (lockdep, PROVE_RCU, KASAN, DEBUG_LIST; cached by patch hash): KUnit, smoke on 2 CPUs, stress (snapshot and staging scenarios, 70 s each, each with a kexec)"
  t0=$(date +%s)
  IMASNAP_DEBUG_KERNEL="$(kernel/build.sh --debug)"
  echo "debug kernel ready in $(( $(date +%s) - t0 )) s"
  SMOKE_SMP=2 QEMU_TIMEOUT=600 kernel/smoke.sh "$IMASNAP_DEBUG_KERNEL"
  kernel/stress.sh "$IMASNAP_DEBUG_KERNEL"
  echo "debug kernel steps took $(( $(date +%s) - t0 )) s"
fi

echo "== Keylime from PyPI in a venv (cached by requirements hash): its own code loads the policies imasnap makes"
IMASNAP_KEYLIME_PYTHON="$(scripts/keylime-venv.sh)"
export IMASNAP_KEYLIME_PYTHON

echo "== cargo test (with swtpm, Keylime and PostgreSQL: tests that need one fail if it is missing)"
swtpm_dir="$(mktemp -d)"
# A throwaway PostgreSQL cluster (run as the postgres user) for the verifier's PostgreSQL
# and replica tests; each test makes its own database in it.
pg_dir="$(mktemp -d)"
trap 'scripts/swtpm.sh stop "$swtpm_dir/state" || true; rm -rf "$swtpm_dir"; scripts/postgres.sh stop "$pg_dir" || true; rm -rf "$pg_dir"' EXIT
IMASNAP_SWTPM="$(scripts/swtpm.sh start "$swtpm_dir/state" "${IMASNAP_SWTPM_PORT:-23210}")"
export IMASNAP_SWTPM
IMASNAP_POSTGRES_URL="$(scripts/postgres.sh start "$pg_dir" "${IMASNAP_POSTGRES_PORT:-55432}")"
IMASNAP_POSTGRES_DIR="$pg_dir"
export IMASNAP_POSTGRES_URL IMASNAP_POSTGRES_DIR
log="$swtpm_dir/cargo-test.log"
set +e
cargo test --release --workspace $IMASNAP_FEATURES 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
if [ "${SKIP_QEMU:-0}" != 1 ]; then
  # --ignored includes the stock-kernel tests: Debian's 6.1 (linux-image-amd64, no build),
  # the agent in legacy mode with checkpoints on its copy.
  echo "== the patched kernel in QEMU: agent in the guest, model vs kernel; Debian's stock kernel: legacy checkpoints (ignored tests)"
  cargo test --release -p imasnap-kernel-harness -- --ignored 2>&1 | tee -a "$log"
  [ "${PIPESTATUS[0]}" = 0 ] || rc=1
  echo "== each option alone in QEMU: the staging scenario on the staging-only kernel, the RFC scenarios on the snapshot-only kernel"
  IMASNAP_KERNEL="$IMASNAP_KERNEL_STAGING_ONLY" cargo test --release -p imasnap-kernel-harness --test real_kernel -- \
    --ignored --exact real_kernel_staging_matches_the_model_and_verifies 2>&1 | tee -a "$log"
  [ "${PIPESTATUS[0]}" = 0 ] || rc=1
  IMASNAP_KERNEL="$IMASNAP_KERNEL_SNAPSHOT_ONLY" cargo test --release -p imasnap-kernel-harness --test real_kernel -- \
    --ignored --exact real_kernel_matches_the_model_and_verifies snapshots_refused_between_kexec_load_and_execute 2>&1 | tee -a "$log"
  [ "${PIPESTATUS[0]}" = 0 ] || rc=1
fi
set -e
# One closing line over every test binary (doc-test runners print "0 passed" last).
passed=$(grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s += $1} END {print s + 0}')
echo "tests: $passed passed, $failed failed"
exit "$rc"
