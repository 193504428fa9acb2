#!/usr/bin/env bash
# kernel/smoke.sh - boot the imasnap kernel in QEMU (TCG) with swtpm and check the
# snapshot interface from a busybox shell in the guest.
#
# Usage (as root on Debian 12):
#   kernel/smoke.sh [BZIMAGE]        default: the bzImage kernel/build.sh prints
# Environment:
#   SMOKE_OUT=DIR      keep the guest's files there (lists, snapshot, PCRs, console)
#   SMOKE_APPEND=...   extra kernel arguments (e.g. ima_snapshot_htable=drop)
#   SMOKE_SMP=N        CPUs of the guest (default 1; the debug kernel runs with 2)
#   SMOKE_BENCH=N      also time the measurement hot path (2,000 dedup hits in the kept
#                      digests, read by one process) after 2 snapshots and after N
#                      (e.g. 1000); figures only, QEMU_TIMEOUT=1200
#   QEMU_TIMEOUT=180   seconds before the guest is killed
# Prints one PASS/FAIL line per check; exits non-zero if any check failed or the guest
# did not finish.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
QEMU_TIMEOUT=${QEMU_TIMEOUT:-180}
SMOKE_APPEND=${SMOKE_APPEND:-}

log() { printf '[kernel/smoke] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"
BZ=${1:-}
if [ -z "$BZ" ]; then BZ=$("$HERE/build.sh"); fi
[ -r "$BZ" ] || die "no bzImage at $BZ"

# shellcheck source=kernel/lib.sh
. "$HERE/lib.sh"
guest_need qemu-system-x86_64:qemu-system-x86 swtpm:swtpm swtpm_setup:swtpm-tools cpio:cpio
guest_workdir smoke "${SMOKE_OUT:-}"

# ------------------------------------------------------------------ guest ---
mkdir -p "$WORK"/root/{bin,dev,proc,sys,tmp,out}
cp /bin/busybox "$WORK/root/bin/busybox"
cat > "$WORK/root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t securityfs securityfs /sys/kernel/security
mount -t tmpfs tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug
S=/sys/kernel/security/ima
D=/sys/kernel/debug/ima
O=/tmp/out
mkdir -p $O
FAILED=0
pass() { echo "SMOKE-PASS: $*"; }
fail() { echo "SMOKE-FAIL: $*"; FAILED=1; }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
u32() { od -An -tu4 -j "$2" -N4 "$1" | tr -d ' '; }
count() { cat $S/runtime_measurements_count; }
removed() { cat $S/snapshot_removed; }

# measure everything read by root or executed, tmpfs/ramfs included, except the
# pseudo filesystems (proc, sysfs, securityfs) so that the checks do not measure
printf '%s\n' 'dont_measure fsmagic=0x9fa0' 'dont_measure fsmagic=0x62656572' \
    'dont_measure fsmagic=0x73636673' 'measure func=BPRM_CHECK' \
    'measure func=FILE_CHECK mask=MAY_READ uid=0' > $S/policy \
    || fail "policy write"
for i in 1 2 3 4 5 6 7 8; do echo "file $i" > /tmp/f$i; cat /tmp/f$i >/dev/null; done

check "snapshot file exists" test -e $S/snapshot
check "snapshot_removed exists" test -r $S/snapshot_removed
check "snapshot_lock_ns is in debugfs, not securityfs" sh -c "test -r $D/snapshot_lock_ns && ! test -e $S/snapshot_lock_ns"

before=$(count); r0=$(removed)

# 1st attempt: open, read, done
exec 3<>$S/snapshot || fail "open snapshot"
cat <&3 > $O/snap1.bin
n1=$(count)
check "open appends one marker ($before -> $n1)" test "$n1" -eq $((before + 1))
size=$(wc -c < $O/snap1.bin)
check "read returns records ($size bytes)" test "$size" -gt 100
check "first record is PCR 10" test "$(u32 $O/snap1.bin 0)" = 10
check "first record is ima-ng boot_aggregate" \
    sh -c "head -c 200 $O/snap1.bin | grep -q boot_aggregate && test \"\$(dd if=$O/snap1.bin bs=1 skip=28 count=6 2>/dev/null)\" = ima-ng"
check "snapshot excludes the marker" sh -c "! grep -q snapshot_aggregate $O/snap1.bin"
if (exec 4<>$S/snapshot) 2>$O/ebusy.txt; then
    fail "second open got EBUSY (it succeeded)"
else
    check "second open got EBUSY ($(cat $O/ebusy.txt | tr -d '\n'))" grep -qi busy $O/ebusy.txt
fi
check "write done" sh -c 'echo done >&3'
if sh -c 'echo done >&3' 2>/dev/null; then fail "second done refused"; else pass "second done refused"; fi
exec 3>&-
cp $S/binary_runtime_measurements $O/live1.bin
check "list starts with the marker (ima-buf snapshot_aggregate)" \
    sh -c "test \"\$(dd if=$O/live1.bin bs=1 skip=28 count=7 2>/dev/null)\" = ima-buf && head -c 200 $O/live1.bin | grep -q snapshot_aggregate"
check "marker buf starts with Snapshot_Attempt_Count=1;" grep -q 'Snapshot_Attempt_Count=1; sha' $O/live1.bin
r1=$(removed)
check "snapshot_removed grew by the records read ($r0 -> $r1)" test "$r1" -eq $((r0 + n1 - 1))
check "runtime_measurements_count = records in memory" test "$(count)" -ge 1 -a "$(count)" -lt "$n1"

# 2nd attempt: aborted (close without done) keeps everything
for i in 1 2 3; do echo "more $i" > /tmp/g$i; cat /tmp/g$i >/dev/null; done
c2=$(count)
exec 3<>$S/snapshot
exec 3>&-
check "abort keeps the list (+1 marker)" test "$(count)" -eq $((c2 + 1))
check "abort removes nothing" test "$(removed)" -eq "$r1"

# 3rd attempt: its snapshot starts with the 1st marker and holds the aborted one
exec 3<>$S/snapshot
cat <&3 > $O/snap3.bin
check "next snapshot starts with the previous marker" \
    sh -c "test \"\$(dd if=$O/snap3.bin bs=1 skip=28 count=7 2>/dev/null)\" = ima-buf"
check "aborted marker (attempt 2) is an ordinary record" grep -q 'Snapshot_Attempt_Count=2;' $O/snap3.bin
echo done >&3
exec 3>&-
check "third marker carries attempt 3" grep -q 'Snapshot_Attempt_Count=3;' $S/binary_runtime_measurements
cat $D/snapshot_lock_ns > $O/snapshot_lock_ns.txt
check "snapshot_lock_ns readable" grep -q '^max_ns: [1-9]' $O/snapshot_lock_ns.txt
sed 's/^/SMOKE-INFO: /' $O/snapshot_lock_ns.txt
echo "SMOKE-INFO: removed $(removed), in memory $(count)"

# One writer or many readers across the measurement files. A reader that holds a
# list open, reads part of it, and goes on later sees every record once: a snapshot
# cannot remove records under it (its open gets EBUSY meanwhile).
for i in 1 2 3 4 5; do echo "slow $i" > /tmp/h$i; cat /tmp/h$i >/dev/null; done
exec 5<$S/binary_runtime_measurements
dd bs=64 count=1 <&5 > $O/slow.bin 2>/dev/null
# On a kernel without the rule this snapshot completes, and the reader's next read
# starts as many records later as "done" removed.
if sh -c "exec 4<>$S/snapshot && cat <&4 >/dev/null && echo done >&4" 2>$O/ebusy-reader.txt; then
    fail "snapshot open while a reader holds the list got EBUSY (it succeeded and removed records)"
else
    check "snapshot open while a reader holds the list: EBUSY" grep -qi busy $O/ebusy-reader.txt
fi
cat <&5 >> $O/slow.bin
exec 5<&-
cp $S/binary_runtime_measurements $O/whole.bin
check "the slow reader saw the whole list, no gap ($(wc -c < $O/slow.bin) bytes)" cmp -s $O/slow.bin $O/whole.bin
exec 5<$S/ascii_runtime_measurements
exec 6<$S/binary_runtime_measurements_sha256
if (exec 4<>$S/snapshot) 2>/dev/null; then fail "snapshot open with two readers: EBUSY"; else pass "snapshot open with two readers: EBUSY"; fi
exec 5<&- 6<&-
exec 3<>$S/snapshot || fail "open snapshot with no reader left"
for f in binary_runtime_measurements ascii_runtime_measurements_sha256; do
    if (exec 5<$S/$f) 2>$O/ebusy-writer.txt; then
        fail "reader open of $f while the snapshot is open got EBUSY (it succeeded)"
    else
        check "reader open of $f while the snapshot is open: EBUSY" grep -qi busy $O/ebusy-writer.txt
    fi
done
exec 3>&-
check "readers open again once the snapshot is closed" sh -c "cat $S/ascii_runtime_measurements >/dev/null"

# Hot path after many snapshots (SMOKE_BENCH=N): a measurement whose digest was removed
# by the last snapshot is found in the kept digests (a dedup hit: no new record, no
# extend). Timed: 2,000 such hits after 2 snapshots, then after N.
ms() { cut -d' ' -f1 /proc/uptime | tr -d .; }
mk() { rm -rf /tmp/hot$1; mkdir -p /tmp/hot$1; i=0; while [ $i -lt 2000 ]; do echo "hot $1 $i" > /tmp/hot$1/$i; i=$((i + 1)); done; }
snaps() {
    j=0
    while [ $j -lt $1 ]; do
        echo "kept $j" > /tmp/k; cat /tmp/k > /dev/null
        sh -c "exec 3<>$S/snapshot && cat <&3 > /dev/null && echo done >&3" || fail "bench snapshot $j"
        j=$((j + 1))
    done
}
hits() {
    mk $1; cat /tmp/hot$1/* > /dev/null; snaps 1     # measured, then removed by a snapshot
    mk $1; c0=$(count)                              # same paths and content, new inodes
    t0=$(ms); cat /tmp/hot$1/* > /dev/null; t1=$(ms)
    check "bench: 2000 dedup hits after $2 snapshots add no record" test "$(count)" = "$c0"
    echo "SMOKE-INFO: hot path after $2 snapshots: 2000 dedup hits in $(( (t1 - t0) * 10 )) ms"
}
B=$(sed -n 's/.*imasnap\.bench=\([0-9]*\).*/\1/p' /proc/cmdline)
if [ -n "$B" ]; then
    snaps 1; hits a 2
    snaps $((B - 3)); hits b "$B"
fi

# evidence for the host: lists and PCRs
cp $S/binary_runtime_measurements $O/live.bin
cp $S/ascii_runtime_measurements $O/live.txt
for alg in sha1 sha256 sha384 sha512; do
    [ -d /sys/class/tpm/tpm0/pcr-$alg ] || continue
    : > $O/pcrs-$alg.txt
    for p in 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23; do
        printf 'PCR-%02d: %s\n' $p "$(tr 'A-F' 'a-f' < /sys/class/tpm/tpm0/pcr-$alg/$p)" >> $O/pcrs-$alg.txt
    done
done
cat /proc/cmdline > $O/cmdline.txt
echo $FAILED > $O/failed
(cd $O && tar -cf /dev/vda .) || echo "SMOKE-FAIL: tar to /dev/vda"
sync
echo "SMOKE-END failed=$FAILED"
poweroff -f
EOF
chmod 755 "$WORK/root/init"
(cd "$WORK/root" && find . | cpio -o -H newc --quiet | gzip -1) > "$WORK/initrd.gz"
truncate -s 8M "$WORK/out.img"

# ------------------------------------------------------------------- boot ---
guest_swtpm

START=$(date +%s)
rc=0
timeout "$QEMU_TIMEOUT" qemu-system-x86_64 -machine q35 -accel tcg -cpu max -smp "${SMOKE_SMP:-1}" -m 1024 \
    -display none -monitor none -serial stdio -no-reboot \
    -kernel "$BZ" -initrd "$WORK/initrd.gz" \
    -append "console=ttyS0 panic=-1 ima_hash=sha256 $SMOKE_APPEND${SMOKE_BENCH:+ imasnap.bench=$SMOKE_BENCH}" \
    -drive file="$WORK/out.img",format=raw,if=virtio \
    -chardev socket,id=chrtpm,path="$WORK/swtpm.sock" -tpmdev emulator,id=tpm0,chardev=chrtpm \
    -device tpm-tis,tpmdev=tpm0 > "$WORK/console.log" 2>&1 || rc=$?
log "guest ran $(( $(date +%s) - START ))s (qemu exit $rc)"
grep -a '^SMOKE-' "$WORK/console.log" | tr -d '\r' || true
mkdir -p "$WORK/out"
tar -xf "$WORK/out.img" -C "$WORK/out" 2>/dev/null || true
if ! grep -aq '^SMOKE-END failed=0' "$WORK/console.log"; then
    grep -aq '^SMOKE-END' "$WORK/console.log" || tail -n 30 "$WORK/console.log" >&2
    log "FAILED"
    exit 1
fi
log "all checks passed"
