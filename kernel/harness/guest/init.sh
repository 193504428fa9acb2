#!/bin/busybox sh
# imasnap guest /init for the patched kernel, or with imasnap.stock=1 for Debian's stock
# kernel (kernel/harness). The harness appends the scenario: one shell function per
# stage, `stage_0`, `stage_1`, ... (a kexec ends a stage).
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t securityfs securityfs /sys/kernel/security
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tmpfs tmpfs /w
S=/sys/kernel/security/ima
arg() { sed -n "s/.*imasnap\.$1=\([0-9a-zA-Z_]*\).*/\1/p" /proc/cmdline; }
STAGE=$(arg stage); STAGE=${STAGE:-0}
NONCE=$(arg nonce)
# The agent's interface for recovery and the final bundle (imasnap.iface=staging).
IFACE=$(arg iface); IFACE=${IFACE:-auto}
# Stock kernel: disk drivers are modules, the built-in tcb policy measures (no policy write).
STOCK=$(arg stock); STOCK=${STOCK:-0}
echo "IMASNAP: stage $STAGE on $(uname -r)"
fail() { echo "IMASNAP-FAIL: $*"; sync; poweroff -f; }
if [ "$STOCK" = 1 ]; then
    for m in $(cat /modules/order); do insmod /modules/$m.ko || fail "insmod $m"; done
fi
# One ext4 disk: kexec images in /boot, the agent's store in /state, results in /out.
DISK=; i=0
while [ $i -lt 100 ] && [ -z "$DISK" ]; do
    for b in /sys/block/vd*; do
        [ "$(cat "$b/serial" 2>/dev/null)" = imasnap-disk ] && DISK=${b##*/}
    done
    [ -n "$DISK" ] || { sleep 0.1; i=$((i+1)); }
done
[ -n "$DISK" ] || fail "disk not found: $(ls /sys/block)"
mount -t ext4 /dev/$DISK /disk || fail "mount ext4"
mkdir -p /disk/out /disk/state
# The workload's directory. tcb measures root's reads on the disk and nothing on tmpfs,
# so on the stock kernel the workload (and, unavoidably, the agent's store) is measured.
W=/w
if [ "$STOCK" = 1 ]; then
    W=/disk/w; mkdir -p $W
else
    # Only files owned by uid 4242 are measured: the workload, nothing the agent touches.
    echo "measure func=FILE_CHECK mask=MAY_READ fowner=4242" > $S/policy || fail "policy write"
fi
T=/disk/out/trace.txt
note() { echo "$*" >> $T; echo "IMASNAP: $*"; }
count() { echo "list=$(cat $S/runtime_measurements_count) removed=$(cat $S/snapshot_removed 2>/dev/null)"; }
# Slab and vmalloc: kept dedup digests live in vmalloc'd arrays (kernel/README.md).
slab() { sed -n 's/^\(Slab\|SUnreclaim\|SReclaimable\|VmallocUsed\): *\([0-9]*\) kB/\1=\2/p' /proc/meminfo | tr '\n' ' '; }
# measure N TAG: N new files owned by 4242, each read once (N FILE_CHECK records)
measure() {
    mkdir -p $W/$2; j=0
    while [ $j -lt $1 ]; do echo "$2 $j" > $W/$2/$j; j=$((j+1)); done
    chown -R 4242 $W/$2
    cat $W/$2/* > /dev/null || fail "read workload $2"
    # The files go again: their inodes would otherwise dominate the slab figures.
    rm -rf $W/$2
    note "measure $1 $2 $(count)"
}
snapshot() {
    imasnap agent snapshot --state-dir /disk/state --tpm device:/dev/tpmrm0 --json \
        > /disk/out/snap-$1.json 2> /disk/out/snap-$1.err || fail "snapshot $1: $(cat /disk/out/snap-$1.err)"
    note "snapshot $1 $(count) $(cat /sys/kernel/debug/ima/snapshot_lock_ns 2>/dev/null | tr '\n' ' ')"
}
# open and close without done: an aborted attempt, its marker stays
abort() {
    exec 3<>$S/snapshot || fail "open snapshot for abort"
    exec 3>&-
    note "abort $1 $(count)"
}
# hold the file open while the agent tries: EBUSY (exit 2), then close (an abort too)
busy() {
    exec 3<>$S/snapshot || fail "open snapshot for busy"
    rc=0
    imasnap agent snapshot --state-dir /disk/state --tpm device:/dev/tpmrm0 \
        > /disk/out/busy-$1.out 2> /disk/out/busy-$1.err || rc=$?
    exec 3>&-
    note "busy $1 rc=$rc ebusy=$(grep -c EBUSY /disk/out/busy-$1.err) $(count)"
}
kexec_next() {
    note "kexec $1 $(count)"
    next=$((STAGE + 1))
    args=$(sed 's/ *imasnap\.stage=[0-9]*//' /proc/cmdline)
    kexec -s -l /disk/boot/bzImage --initrd=/disk/boot/initrd.gz --append="$args imasnap.stage=$next" \
        || fail "kexec load"
    # kexec_next TAG N: N snapshot attempts between load and execute, each refused
    if [ -n "$2" ]; then
        j=0; refused=0
        while [ $j -lt $2 ]; do
            if (exec 3<>$S/snapshot) 2>/dev/null; then :; else refused=$((refused + 1)); fi
            j=$((j + 1))
        done
        note "kexec_busy $1 tried=$2 refused=$refused $(count)"
    fi
    sync; umount /disk
    kexec -e
    fail "kexec -e returned"
}
# cut TAG FLAVOUR: the agent cuts through upstream staging (trim: N; stage: A, D)
cut() {
    imasnap agent snapshot --state-dir /disk/state --tpm device:/dev/tpmrm0 --interface staging --staging $2 \
        --json > /disk/out/cut-$1.json 2> /disk/out/cut-$1.err || fail "cut $1 $2: $(cat /disk/out/cut-$1.err)"
    note "cut $1 $2 staged_bytes=$(wc -c < $S/binary_runtime_measurements_staged) $(count)"
}
# This shell holds a _staged file open for writing: the agent (another process) and a
# plain reader both get EBUSY; closed, the reader reads again.
writer_busy() {
    exec 3>$S/binary_runtime_measurements_staged || fail "open staged for writing"
    rc=0
    imasnap agent snapshot --state-dir /disk/state --tpm device:/dev/tpmrm0 --interface staging \
        > /disk/out/wbusy-$1.out 2> /disk/out/wbusy-$1.err || rc=$?
    rd=0; cat $S/ascii_runtime_measurements > /dev/null 2> /disk/out/wbusy-$1.cat || rd=1
    exec 3>&-
    after=0; cat $S/ascii_runtime_measurements > /dev/null || after=1
    note "writer_busy $1 rc=$rc ebusy=$(grep -c EBUSY /disk/out/wbusy-$1.err) reader=$rd \
readerbusy=$(grep -ci busy /disk/out/wbusy-$1.cat) after=$after $(count)"
}
# Another process stages the list and leaves it staged.
stage_only() {
    echo A > $S/binary_runtime_measurements_staged || fail "write A"
    note "stage_only $1 $(count)"
}
# require IFACE: the scenario uses this interface (one option of the series may be off,
# kernel/README.md); without its file the guest stops before the first step and the
# host reports which option is missing instead of a failure inside a step. `legacy`
# needs both files absent: with either, `auto` would not pick legacy.
require() {
    case $1 in
        snapshot) f=$S/snapshot ;;
        staging) f=$S/binary_runtime_measurements_staged ;;
        legacy)
            for f in $S/snapshot $S/binary_runtime_measurements_staged; do
                [ -e "$f" ] || continue
                echo "IMASNAP-UNSUPPORTED: legacy ($f present)"
                sync; umount /disk; poweroff -f
            done
            return 0 ;;
        *) fail "require: unknown interface $1" ;;
    esac
    [ -e "$f" ] && return 0
    echo "IMASNAP-UNSUPPORTED: $1 ($f absent)"
    sync; umount /disk; poweroff -f
}
# view TAG: the FUSE view of the whole log (`imasnap mount` over the store and
# securityfs, as another process than the cuts); its files and count, the TPM's PCR 10
# by tpm2-tools, then SIGTERM must unmount it.
view() {
    V=/w/view; mkdir -p $V
    imasnap mount --state-dir /disk/state --interface "$IFACE" $V \
        > /disk/out/view-$1.json 2> /disk/out/view-$1.err &
    vpid=$!
    i=0; while [ $i -lt 100 ] && ! grep -q " $V fuse" /proc/mounts; do sleep 0.1; i=$((i+1)); done
    grep -q " $V fuse" /proc/mounts || fail "view $1: not mounted: $(cat /disk/out/view-$1.err)"
    for f in binary_runtime_measurements ascii_runtime_measurements binary_runtime_measurements_sha256 \
             ascii_runtime_measurements_sha256 runtime_measurements_count violations; do
        # busybox cat copies with sendfile(2), which FUSE serves from the page cache up to
        # the reported size: it sees every byte only because the size is the real one
        cat $V/$f > /disk/out/view-$1.$f || fail "view $1: read $f: $(cat /disk/out/view-$1.err)"
    done
    # written to the view: refused (read-only)
    wr=0; echo x 2>/dev/null > $V/binary_runtime_measurements || wr=1
    tpm2 pcrread -T device:/dev/tpmrm0 sha1:10+sha256:10 > /disk/out/pcrs-$1.yaml 2> /disk/out/pcrs-$1.err \
        || fail "view $1: tpm2 pcrread: $(cat /disk/out/pcrs-$1.err)"
    kill -TERM $vpid; rc=0; wait $vpid || rc=$?
    um=1; grep -q " $V fuse" /proc/mounts && um=0
    note "view $1 rc=$rc unmounted=$um write_refused=$wr count=$(cat /disk/out/view-$1.runtime_measurements_count) $(count)"
}
memory() { sync; echo 3 > /proc/sys/vm/drop_caches; note "memory $1 $(count) $(slab)"; }
finish() {
    rm -rf /disk/out/bundle
    imasnap agent bundle --state-dir /disk/state --tpm device:/dev/tpmrm0 --interface "$IFACE" --nonce "$NONCE" \
        --out /disk/out/bundle --json > /disk/out/bundle.json 2> /disk/out/bundle.err \
        || fail "bundle: $(cat /disk/out/bundle.err)"
    note "finish $(count)"
    cat /sys/kernel/debug/ima/snapshot_lock_ns > /disk/out/lock_ns.txt 2>/dev/null
    dmesg > /disk/out/dmesg-$STAGE.txt
    sync; umount /disk
    echo "IMASNAP-DONE"
    poweroff -f
}
