# kernel/lib.sh - sourced by smoke.sh and stress.sh: the packages a guest run needs, its
# work directory, and the swtpm it talks to. Expects log() and die() from the caller.

# guest_need CMD:PACKAGE... : installs the packages of missing commands, and
# busybox-static unless /bin/busybox is a static binary.
guest_need() {
    local need=() c
    for c in "$@"; do
        command -v "${c%%:*}" >/dev/null || need+=("${c#*:}")
    done
    [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || need+=(busybox-static)
    if [ ${#need[@]} -gt 0 ]; then
        log "installing ${need[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq "${need[@]}" >/dev/null
    fi
}

# guest_workdir NAME KEEP: sets WORK (a new temporary directory); on exit swtpm is
# stopped, WORK/out and the console log are copied to KEEP when set, and WORK goes.
guest_workdir() {
    WORK=$(mktemp -d "/tmp/imasnap-$1.XXXXXX")
    GUEST_KEEP=$2
    SWTPM_PID=
    trap guest_cleanup EXIT
}
guest_cleanup() {
    [ -n "$SWTPM_PID" ] && kill "$SWTPM_PID" 2>/dev/null || true
    if [ -n "$GUEST_KEEP" ]; then
        mkdir -p "$GUEST_KEEP"; cp -a "$WORK/out/." "$GUEST_KEEP/" 2>/dev/null || true
        cp "$WORK/console.log" "$GUEST_KEEP/" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}

# guest_swtpm: a TPM 2.0 with sha1 and sha256 banks and an EK, in WORK/tpm, serving
# WORK/swtpm.sock (QEMU's tpm-tis); sets SWTPM_PID.
guest_swtpm() {
    mkdir -p "$WORK/tpm"
    swtpm_setup --tpm2 --tpmstate "$WORK/tpm" --pcr-banks sha1,sha256 --createek \
        --overwrite >"$WORK/swtpm_setup.log" 2>&1 || { cat "$WORK/swtpm_setup.log" >&2; die "swtpm_setup"; }
    swtpm socket --tpm2 --tpmstate dir="$WORK/tpm" --ctrl type=unixio,path="$WORK/swtpm.sock" \
        --flags startup-clear --terminate >"$WORK/swtpm.log" 2>&1 &
    SWTPM_PID=$!
    for _ in $(seq 50); do [ -S "$WORK/swtpm.sock" ] && break; sleep 0.1; done
    [ -S "$WORK/swtpm.sock" ] || die "swtpm did not start"
}
