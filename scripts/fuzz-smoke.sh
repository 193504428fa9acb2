#!/usr/bin/env bash
# Builds the libFuzzer targets under fuzz/ and runs each for N seconds (default 20), one
# after another, starting from the committed seeds in fuzz/seeds/<target>/.
#
#   scripts/fuzz-smoke.sh [SECONDS] [TARGET...]
#
# Installs cargo-fuzz when it is missing. Builds with the default toolchain and
# RUSTC_BOOTSTRAP=1, which lets stable accept the -Z flags cargo-fuzz passes, so no nightly
# download is needed; set FUZZ_TOOLCHAIN=nightly to use an installed nightly instead.
# Exits non-zero when a target crashes; the crashing input is left in
# fuzz/artifacts/<target>/. Per-target logs go to fuzz/target/smoke-logs/<target>.log.
set -euo pipefail

secs="${1:-20}"
shift || true
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    # 10 targets x 20 s: about three and a half minutes of fuzzing after the build.
    targets=(binary_log ascii_log kexec_buffer evidence_body bundle_manifest tpm_wire tpm_credential policy_json engine_segments engine_checkpoints)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

toolchain=()
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
    toolchain=("+$FUZZ_TOOLCHAIN")
else
    export RUSTC_BOOTSTRAP=1
fi
# glibc's per-thread destructor record of a thread still exiting is not a leak (fuzz/lsan.supp).
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$root/fuzz/lsan.supp}"
# Two cores: keep the build modest unless the caller chose otherwise.
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

echo "fuzz-smoke: cargo ${toolchain[*]:-} fuzz build (RUSTC_BOOTSTRAP=${RUSTC_BOOTSTRAP:-unset})"
# One build of the whole fuzz package: the targets share their dependencies.
cargo "${toolchain[@]}" fuzz build

logs=fuzz/target/smoke-logs
mkdir -p "$logs"
status=0
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    log="$logs/$t.log"
    echo "fuzz-smoke: $t for ${secs}s"
    if cargo "${toolchain[@]}" fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
        runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
        cov="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 | sed -n 's/.*cov: \([0-9]*\).*ft: \([0-9]*\).*/cov \1, ft \2/p')"
        echo "fuzz-smoke: $t ok: ${runs:-?} runs, ${cov:-coverage unknown}"
    else
        status=1
        echo "fuzz-smoke: $t FAILED, last lines of $log:"
        tail -n 40 "$log"
    fi
done
exit "$status"
