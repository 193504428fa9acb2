#!/usr/bin/env bash
# kernel/stress.sh - the snapshot and staging series under concurrency, on the SMP debug
# kernel (kernel/build.sh --debug: PREEMPT, lockdep + PROVE_RCU, DEBUG_ATOMIC_SLEEP,
# DEBUG_LIST, KASAN, KUnit) in QEMU with 2 CPUs and swtpm.
#
# Two scenarios (STRESS_SCENARIOS, default "snapshot staging"), each in two kernels
# (the second reached by kexec). Scenario "snapshot": these run at once for
# STRESS_SECONDS (default 35, so >= 60 s in all):
#   - a writer measuring new files in a loop;
#   - two slow readers, of binary_runtime_measurements and ascii_runtime_measurements_sha256,
#     reading 1 KiB per read() with pauses, resting 5 and 7 s, then starting over (readers
#     take precedence over the snapshot writer: without rests it would starve);
#   - a snapshot loop: open (EBUSY while a reader holds a list: retried), then an abort,
#     or read and "done" (two of every three).
# Between the two kernels: kexec -s -l, three snapshot opens that must get EBUSY, kexec -e.
#
# Checks on the host:
#   - dmesg of both kernels holds no lockdep, RCU, KASAN, list-debug, BUG or WARNING report;
#   - the KUnit suites ima_snapshot and ima_staging passed;
#   - every snapshot completed with "done", in order, then the final list, replay to the
#     TPM's PCR 10 (sha1 and sha256), read from sysfs at the end: no record lost or twice;
#   - each kept slow read of the binary list is a contiguous run of that stitched log.
# Scenario "staging" (CONFIG_IMA_STAGING): the same writer and readers, and a stager
# that alternates "A", read of the _staged file, "D" (one writer open) with a read of
# binary_runtime_measurements and "N" = half its records plus one (EBUSY from the
# readers retried); between the kernels: kexec -s -l, "A" (records staged), kexec -e.
# Checks: dmesg as above; the next kernel's list starts with the staged records; every
# export (staged reads, the first N records of each N read) of both kernels, in order,
# then the final list replay to PCR 10; slow reads are contiguous runs of that log.
#
# Usage (as root): kernel/stress.sh [BZIMAGE]   default: kernel/build.sh --debug
# Environment: STRESS_SECONDS, STRESS_OUT=DIR (keep the guest's files), QEMU_TIMEOUT (900),
#              IMASNAP_BIN (the imasnap binary for the replay; default target/release/imasnap)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
STRESS_SECONDS=${STRESS_SECONDS:-35}
QEMU_TIMEOUT=${QEMU_TIMEOUT:-900}
IMASNAP=${IMASNAP_BIN:-$ROOT/target/release/imasnap}

log() { printf '[kernel/stress] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"
BZ=${1:-}
if [ -z "$BZ" ]; then BZ=$("$HERE/build.sh" --debug); fi
[ -r "$BZ" ] || die "no bzImage at $BZ"
[ -x "$IMASNAP" ] || die "no imasnap binary at $IMASNAP (cargo build --release, or set IMASNAP_BIN)"

# shellcheck source=kernel/lib.sh
. "$HERE/lib.sh"
guest_need qemu-system-x86_64:qemu-system-x86 swtpm:swtpm swtpm_setup:swtpm-tools cpio:cpio kexec:kexec-tools python3:python3
STRESS_OUT=${STRESS_OUT:-}
guest_workdir stress ""

# ------------------------------------------------------------------ guest ---
R=$WORK/root
mkdir -p "$R"/{bin,sbin,dev,proc,sys,tmp,boot}
cp /bin/busybox "$R/bin/busybox"
# kexec and the libraries it links
KEXEC=$(command -v kexec)
cp "$KEXEC" "$R/sbin/kexec"
for lib in $(ldd "$KEXEC" | grep -o '/[^ ]*'); do
    mkdir -p "$R$(dirname "$lib")"; cp -L "$lib" "$R$lib"
done
cat > "$R/init" <<EOF
#!/bin/busybox sh
SECS=$STRESS_SECONDS
EOF
cat >> "$R/init" <<'EOF'
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t securityfs securityfs /sys/kernel/security
mount -t debugfs debugfs /sys/kernel/debug
mount -t tmpfs tmpfs /tmp
S=/sys/kernel/security/ima
STAGE=$(sed -n 's/.*stress\.stage=\([0-9]*\).*/\1/p' /proc/cmdline); STAGE=${STAGE:-0}
MODE=$(sed -n 's/.*stress\.mode=\([a-z]*\).*/\1/p' /proc/cmdline); MODE=${MODE:-snapshot}
O=/tmp/out; mkdir -p $O/snaps $O/readers $O/exports
ST=$S/binary_runtime_measurements_staged
echo "STRESS: $MODE, stage $STAGE, $(nproc) CPUs"
disk() { for b in /sys/block/vd*; do [ "$(cat $b/serial 2>/dev/null)" = "$1" ] && echo /dev/${b##*/}; done; }
OUT=$(disk stress-out); BOOT=$(disk stress-boot)
[ -n "$OUT" ] && [ -n "$BOOT" ] || { echo "STRESS-FAIL: disks $(ls /sys/block)"; poweroff -f; }
# in both kernels: a policy is not carried across kexec
printf '%s\n' 'dont_measure fsmagic=0x9fa0' 'dont_measure fsmagic=0x62656572' \
    'dont_measure fsmagic=0x73636673' 'dont_measure fsmagic=0x64626720' \
    'measure func=FILE_CHECK mask=MAY_READ fowner=4242' > $S/policy || echo "STRESS-FAIL: policy"

# the writer: a new file measured per iteration
writer() {
    mkdir -p /tmp/m; i=0
    while [ ! -e /tmp/stop ]; do
        i=$((i + 1)); echo "stage $STAGE file $i $$" > /tmp/m/f; chown 4242 /tmp/m/f
        cat /tmp/m/f > /dev/null; rm /tmp/m/f
    done
    echo "$i" > $O/writer-count
}
# A slow reader of list $1: 1 KiB per read() (one dd each), to the end, then a rest of
# $2 seconds; keeps its last three complete reads. Only files owned by uid 4242 (the
# writer's) are measured, so nothing the readers touch is. Each
# open runs in its own shell: a failed redirection of `exec` ends the shell.
reader() {
    n=0
    while [ ! -e /tmp/stop ]; do
        if sh -c '
            exec 5<"$1" || exit 2
            : > "$2"
            while [ ! -e /tmp/stop ]; do
                dd bs=1024 count=1 <&5 >> "$2" 2> "$2.err"
                read -r l < "$2.err"
                case "$l" in 0+0*) exit 0 ;; esac
            done
            exit 1' reader "$S/$1" /tmp/r-$1 2>/dev/null; then
            n=$((n + 1)); mv /tmp/r-$1 $O/readers/$1.$((n % 3))
            # Readers take precedence: without a pause the writer would starve.
            sleep $2
        else
            usleep 5000
        fi
    done
    echo "$n" > $O/reader-$1-count
}
# Snapshots: an abort, then done twice, and again. EBUSY (a reader holds a list) is retried;
# any other error fails the run. A snapshot is kept only once "done" succeeded.
snapper() {
    k=0; busy=0; aborted=0
    while [ ! -e /tmp/stop ]; do
        if [ $(((k + 1) % 3)) = 1 ]; then
            cmd="exec 3<>$S/snapshot"
        else
            cmd="exec 3<>$S/snapshot && cat <&3 > /tmp/snap && echo done >&3"
        fi
        if err=$(sh -c "$cmd" 2>&1); then
            k=$((k + 1))
            if [ $((k % 3)) = 1 ]; then
                aborted=$((aborted + 1))
            else
                mv /tmp/snap $O/snaps/$(printf '%s-%05d' $STAGE $k).bin
            fi
        else
            case "$err" in
                *[Bb]usy*) busy=$((busy + 1)) ;;
                *) echo "STRESS-FAIL: snapshot: $err" ;;
            esac
        fi
        usleep 100000
    done
    echo "opened=$k busy=$busy aborted=$aborted" > $O/snapper
}
# Staging: "A", read, "D" on one writer open of the _staged file, alternating with a
# read of the list and "N" (half its records plus one) on one writer open. Each export
# is kept only once its records were deleted. EBUSY (a reader holds a list) is
# retried; ENOENT (nothing to stage or delete yet) is counted; anything else fails.
stager() {
    k=0; busy=0; staged=0; deleted=0; empty=0
    while [ ! -e /tmp/stop ]; do
        k=$((k + 1)); f=/tmp/x-$(printf '%s-%05d' $STAGE $k)
        if [ $((k % 2)) = 1 ]; then
            cmd="exec 3<>$ST && echo A >&3 && cat <&3 > $f-staged.bin && echo D >&3"
        else
            cmd="exec 3<>$S/binary_runtime_measurements && n=\$(( \$(cat $S/runtime_measurements_count) / 2 + 1 )) && cat <&3 > $f-n.bin && echo \$n > $f-n.count && echo \$n >&3"
        fi
        if err=$(sh -c "$cmd" 2>&1); then
            mv $f-* $O/exports/
            if [ $((k % 2)) = 1 ]; then staged=$((staged + 1)); else deleted=$((deleted + 1)); fi
        else
            rm -f $f-*
            case "$err" in
                *[Bb]usy*) busy=$((busy + 1)) ;;
                *"No such file"*) empty=$((empty + 1)) ;;
                *) echo "STRESS-FAIL: stager: $err" ;;
            esac
        fi
        usleep 100000
    done
    echo "staged=$staged deleted=$deleted busy=$busy empty=$empty" > $O/stager
}
save() {
    cp $S/binary_runtime_measurements $O/live.bin 2>/dev/null
    dmesg > $O/dmesg-$STAGE.txt
    (cd $O && tar -cf - .) | dd of=$OUT bs=1M seek=$((STAGE * 128)) conv=notrunc 2>/dev/null
    sync
}

writer & W=$!
reader binary_runtime_measurements 5 & R1=$!
reader ascii_runtime_measurements_sha256 7 & R2=$!
if [ "$MODE" = staging ]; then stager & P=$!; else snapper & P=$!; fi
sleep $SECS
touch /tmp/stop
wait $W $R1 $R2 $P
echo "STRESS: $MODE stage $STAGE: $(cat $O/writer-count) measured, $(cat $O/snapper $O/stager 2>/dev/null), reads $(cat $O/reader-*-count | tr '\n' ' ')"

if [ "$STAGE" = 0 ] && [ "$MODE" = staging ]; then
    save
    mkdir -p /tmp/boot; (cd /tmp/boot && tar -xf $BOOT)
    kexec -s -l /tmp/boot/bzImage --initrd=/tmp/boot/initrd.gz \
        --append="$(cat /proc/cmdline) stress.stage=1" || echo "STRESS-FAIL: kexec load"
    # records staged at kexec: the next kernel must list them first
    echo "staged at kexec" > /tmp/m/k; chown 4242 /tmp/m/k; cat /tmp/m/k > /dev/null
    err=$(sh -c "echo A > $ST" 2>&1) || echo "STRESS-FAIL: A before kexec: $err"
    dd if=$ST of=$OUT bs=1M seek=100 conv=notrunc 2>/dev/null
    sync
    echo "STRESS-KEXEC: staged $(wc -c < $ST) bytes"
    for d in /sys/bus/virtio/drivers/virtio_blk/virtio*; do
        [ -e "$d" ] && echo "${d##*/}" > /sys/bus/virtio/drivers/virtio_blk/unbind
    done
    kexec -e
    echo "STRESS-FAIL: kexec -e returned"
elif [ "$STAGE" = 0 ]; then
    # Saved before the load: from kexec_file_load on, the segment has half a page of
    # room for new records, and tar's reads would be measured.
    save
    mkdir -p /tmp/boot; (cd /tmp/boot && tar -xf $BOOT)
    kexec -s -l /tmp/boot/bzImage --initrd=/tmp/boot/initrd.gz \
        --append="$(cat /proc/cmdline) stress.stage=1" || echo "STRESS-FAIL: kexec load"
    refused=0
    for j in 1 2 3; do (exec 3<>$S/snapshot) 2>/dev/null || refused=$((refused + 1)); done
    echo "STRESS-KEXEC: refused $refused of 3 snapshot opens after the load"
    # Quiesce the disks: 6.12's virtio-blk has no shutdown hook, and an interrupt it
    # raises into the next kernel's early boot trips KASAN there (before IMA starts).
    for d in /sys/bus/virtio/drivers/virtio_blk/virtio*; do
        [ -e "$d" ] && echo "${d##*/}" > /sys/bus/virtio/drivers/virtio_blk/unbind
    done
    kexec -e
    echo "STRESS-FAIL: kexec -e returned"
else
    for alg in sha1 sha256; do
        tr 'A-F' 'a-f' < /sys/class/tpm/tpm0/pcr-$alg/10 > $O/pcr10-$alg
    done
    save
    echo "STRESS-END"
fi
poweroff -f
EOF
chmod 755 "$R/init"
(cd "$R" && find . | cpio -o -H newc --quiet | gzip -1) > "$WORK/initrd.gz"
mkdir -p "$WORK/bootfiles"; cp "$BZ" "$WORK/bootfiles/bzImage"; cp "$WORK/initrd.gz" "$WORK/bootfiles/"
tar -cf "$WORK/boot.tar" -C "$WORK/bootfiles" .
REPORTS='BUG:|WARNING:|KASAN:|possible recursive locking|possible circular locking|inconsistent lock state|suspicious RCU usage|sleeping function called from invalid context|list_add corruption|list_del corruption|DEBUG_LOCKS_WARN_ON|Call Trace'

# Whether every debug report in dmesg $1 precedes IMA's first message. Seen on this
# QEMU TCG + KASAN setup, in either kernel: an interrupt during identify_cpu() in early
# boot trips KASAN in rcu_is_watching(), seconds before IMA starts. It is not the
# series' code, but it turns lock debugging off for the rest of that boot, so such a
# run proves nothing: it is booted again instead of passed.
early_noise_only() {
    python3 - "$1" "$REPORTS" <<'PY'
import re, sys
ts = lambda l: float(m.group(1)) if (m := re.match(r'\[\s*([0-9.]+)\]', l)) else None
lines = open(sys.argv[1], errors='replace').read().splitlines()
ima = next((ts(l) for l in lines if ' ima: ' in l and ts(l) is not None), None)
reps = [ts(l) for l in lines if re.search(sys.argv[2], l)]
sys.exit(0 if reps and ima is not None and all(t is not None and t < ima for t in reps) else 1)
PY
}

# ------------------------------------------------------------------- boot ---
FAILED=0
pass() { echo "STRESS-PASS: $*"; }
fail() { echo "STRESS-FAIL: $*"; FAILED=1; }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }

# boot_scenario MODE: two kernels (the second by kexec), booted again (up to three
# attempts) when a debug report precedes IMA's first message; results in WORK/out.
boot_scenario() {
    local attempt noise s f rc START
    for attempt in 1 2 3; do
        rm -rf "$WORK/out" "$WORK/tpm" "$WORK/swtpm.sock"; rm -f "$WORK/out.img"
        truncate -s 256M "$WORK/out.img"
        [ -n "$SWTPM_PID" ] && { kill "$SWTPM_PID" 2>/dev/null || true; wait "$SWTPM_PID" 2>/dev/null || true; }
        guest_swtpm
        START=$(date +%s)
        rc=0
        timeout "$QEMU_TIMEOUT" qemu-system-x86_64 -machine q35 -accel tcg -cpu max -smp 2 -m 1024 \
            -display none -monitor none -serial stdio -no-reboot \
            -kernel "$BZ" -initrd "$WORK/initrd.gz" \
            -append "console=ttyS0 panic=-1 ima_hash=sha256 stress.mode=$1" \
            -drive file="$WORK/out.img",format=raw,if=none,id=out -device virtio-blk-pci,drive=out,serial=stress-out \
            -drive file="$WORK/boot.tar",format=raw,if=none,id=boot,readonly=on \
            -device virtio-blk-pci,drive=boot,serial=stress-boot \
            -chardev socket,id=chrtpm,path="$WORK/swtpm.sock" -tpmdev emulator,id=tpm0,chardev=chrtpm \
            -device tpm-tis,tpmdev=tpm0 > "$WORK/console.log" 2>&1 || rc=$?
        log "$1: guest ran $(( $(date +%s) - START ))s (qemu exit $rc, attempt $attempt)"
        grep -a '^STRESS' "$WORK/console.log" | tr -d '\r' || true
        grep -a 'ima_snapshot' "$WORK/console.log" | tr -d '\r' | tail -n 5 || true
        mkdir -p "$WORK/out/0" "$WORK/out/1"
        dd if="$WORK/out.img" bs=1M count=100 2>/dev/null | tar -xf - -C "$WORK/out/0" 2>/dev/null || true
        dd if="$WORK/out.img" bs=1M skip=128 2>/dev/null | tar -xf - -C "$WORK/out/1" 2>/dev/null || true
        noise=0
        for s in 0 1; do
            f=$WORK/out/$s/dmesg-$s.txt
            if [ -s "$f" ] && early_noise_only "$f"; then
                noise=1
                grep -E -m1 -A3 "$REPORTS" "$f" | sed "s/^/STRESS-INFO: kernel $s early boot: /" >&2
            fi
        done
        [ "$noise" = 1 ] && [ "$attempt" -lt 3 ] || break
        log "attempt $attempt: a debug report before IMA started (not the series' code); booting again"
    done
    if [ -n "$STRESS_OUT" ]; then
        mkdir -p "$STRESS_OUT/$1"; cp -a "$WORK/out/." "$STRESS_OUT/$1/"; cp "$WORK/console.log" "$STRESS_OUT/$1/"
    fi
}

# checks common to both scenarios: the guest finished, clean dmesg in both kernels,
# WORK/stitched.bin replays to the final PCR 10, slow reads are runs of it
common_checks() {
    local m=$1 s f alg want got
    grep -aq '^STRESS-END' "$WORK/console.log" || { tail -n 40 "$WORK/console.log" >&2; fail "$m: the guest reached the end"; }
    grep -aq '^STRESS-FAIL' "$WORK/console.log" && fail "$m: the guest reported a failure"
    for s in 0 1; do
        f=$WORK/out/$s/dmesg-$s.txt
        check "$m: kernel $s left its dmesg" test -s "$f"
        if grep -Eq "$REPORTS" "$f" 2>/dev/null; then
            grep -E -B2 -A12 "$REPORTS" "$f" | head -n 60 >&2
            fail "$m: kernel $s dmesg holds a debug report"
        else
            pass "$m: kernel $s dmesg: no lockdep, RCU, KASAN, list-debug, BUG or WARNING report"
        fi
        check "$m: kernel $s: lockdep was on" grep -q 'Lock dependency validator' "$f"
        check "$m: kernel $s: KASAN was on" grep -q 'KernelAddressSanitizer initialized' "$f"
        check "$m: kernel $s: lock debugging stayed on" sh -c "! grep -q 'Disabling lock debugging' '$f'"
        check "$m: kernel $s: the slow readers read (binary $(cat "$WORK/out/$s/reader-binary_runtime_measurements-count" 2>/dev/null), ascii $(cat "$WORK/out/$s/reader-ascii_runtime_measurements_sha256-count" 2>/dev/null))" \
            test "$(cat "$WORK/out/$s/reader-binary_runtime_measurements-count" 2>/dev/null || echo 0)" -ge 1
    done
    "$IMASNAP" log replay "$WORK/stitched.bin" --json > "$WORK/replay.json" 2> "$WORK/replay.err" || true
    for alg in sha1 sha256; do
        want=$(cat "$WORK/out/1/pcr10-$alg" 2>/dev/null)
        got=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["pcrs"]["10"][sys.argv[2]])' \
              "$WORK/replay.json" "$alg" 2>/dev/null || echo "?")
        check "$m: stitched log ($(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["records"])' "$WORK/replay.json" 2>/dev/null) records) replays to the TPM's PCR 10 $alg" test "$got" = "$want"
    done
    STRESS_MODE=$m python3 - "$WORK/stitched.bin" "$WORK"/out/*/readers/binary_runtime_measurements.* <<'PY' && pass "$m: every kept slow read is a contiguous run of the stitched log" || fail "$m: a slow read is not a contiguous run of the stitched log"
import os, sys
log = open(sys.argv[1], 'rb').read()
for p in sys.argv[2:]:
    b = open(p, 'rb').read()
    # an empty read is a reader that came right after "A" or an "N" of the whole list
    if (not b and os.environ.get('STRESS_MODE') != 'staging') or log.find(b) < 0:
        print(f"  {p}: {len(b)} bytes not found in the stitched log", file=sys.stderr)
        sys.exit(1)
PY
    echo "STRESS-INFO: $(grep -ah '^STRESS: ' "$WORK/console.log" | tr -d '\r' | tr '\n' ' ')"
}

for MODE in ${STRESS_SCENARIOS:-snapshot staging}; do
    boot_scenario "$MODE"
    if [ "$MODE" = snapshot ]; then
        check "KUnit suite ima_snapshot passed" sh -c "grep -Eq '[] ]ok [0-9]+ ima_snapshot\$' '$WORK/out/0/dmesg-0.txt' && ! grep -q 'not ok' '$WORK/out/0/dmesg-0.txt'"
        check "KUnit suite ima_staging passed" sh -c "grep -Eq '[] ]ok [0-9]+ ima_staging\$' '$WORK/out/0/dmesg-0.txt' && ! grep -q 'not ok' '$WORK/out/0/dmesg-0.txt'"
        check "three snapshot opens between kexec load and execute: EBUSY" grep -aq '^STRESS-KEXEC: refused 3 of 3' "$WORK/console.log"
        for s in 0 1; do
            n=$(ls "$WORK/out/$s/snaps" 2>/dev/null | wc -l)
            a=$(sed -n 's/.*aborted=\([0-9]*\).*/\1/p' "$WORK/out/$s/snapper" 2>/dev/null)
            b=$(sed -n 's/.*busy=\([0-9]*\).*/\1/p' "$WORK/out/$s/snapper" 2>/dev/null)
            check "kernel $s: snapshots completed ($n), aborted (${a:-0}) and refused for a reader (${b:-0})" \
                test "$n" -ge 1 -a "${a:-0}" -ge 1
        done
        # the stitched log: snapshots of kernel 0, then of kernel 1, then kernel 1's final list
        cat $(ls "$WORK"/out/0/snaps/*.bin "$WORK"/out/1/snaps/*.bin 2>/dev/null) "$WORK/out/1/live.bin" > "$WORK/stitched.bin"
    else
        for s in 0 1; do
            st=$(sed -n 's/.*staged=\([0-9]*\).*/\1/p' "$WORK/out/$s/stager" 2>/dev/null)
            dl=$(sed -n 's/.*deleted=\([0-9]*\).*/\1/p' "$WORK/out/$s/stager" 2>/dev/null)
            check "staging: kernel $s: A/read/D rounds (${st:-0}) and N deletions (${dl:-0}) ($(cat "$WORK/out/$s/stager" 2>/dev/null))" \
                test "${st:-0}" -ge 1 -a "${dl:-0}" -ge 1
        done
        # the stitched log: kernel 0's exports, kernel 1's, kernel 1's final list; an
        # "N" export counts only its first N records
        python3 - "$WORK" <<'PY' && pass "staging: kernel 1's records start with the records staged at kexec" || fail "staging: kernel 1's records start with the records staged at kexec"
import glob, struct, sys
w = sys.argv[1]
def recs(b, stop_at_zero=False):
    o, r = 0, []
    while o + 28 <= len(b):
        pcr, = struct.unpack_from('<I', b, o)
        nl, = struct.unpack_from('<I', b, o + 24)
        if stop_at_zero and pcr == 0 and nl == 0:
            break
        tl, = struct.unpack_from('<I', b, o + 28 + nl)
        r.append(b[o:o + 32 + nl + tl])
        o += 32 + nl + tl
    return r
def exports(s):
    rs = []
    for f in sorted(glob.glob(f'{w}/out/{s}/exports/*.bin')):
        r = recs(open(f, 'rb').read())
        if f.endswith('-n.bin'):
            r = r[:int(open(f[:-4] + '.count').read())]
        rs += r
    return rs
k1 = exports(1) + recs(open(f'{w}/out/1/live.bin', 'rb').read())
open(f'{w}/stitched.bin', 'wb').write(b''.join(exports(0) + k1))
with open(f'{w}/out.img', 'rb') as f:
    f.seek(100 << 20)
    staged = recs(f.read(28 << 20), stop_at_zero=True)
print(f'STRESS-INFO: {len(staged)} records staged at kexec; kernel 1: {len(k1)} records exported or in memory')
sys.exit(0 if staged and k1[:len(staged)] == staged else 1)
PY
    fi
    common_checks "$MODE"
done
[ "$FAILED" = 0 ] || { log "FAILED"; exit 1; }
log "all checks passed"
