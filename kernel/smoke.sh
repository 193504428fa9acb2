#!/usr/bin/env bash
# kernel/smoke.sh - boot the imasnap kernel in QEMU (TCG) with swtpm and check the
# snapshot interface (CONFIG_IMA_LOG_SNAPSHOT) and the staging interface
# (CONFIG_IMA_STAGING) from a busybox shell in the guest.
#
# Three kernels in two QEMU runs:
#   1. the checks of both interfaces; then (unless SMOKE_BENCH) records are staged,
#      kexec_file_load, the commands still work, kexec -e;
#   2. the kernel reached by kexec: its list must start with the staged records;
#      the host replays every exported record + that list to PCR 10 (sha1, sha256);
#   3. a second boot with ima_flush_htable: N is refused (EINVAL), D forgets digests.
# A kernel with one option alone (build.sh --without-feature / --without-staging)
# gets the checks of its interface and checks that the other one's files are absent;
# without staging, the next kernel must list the records in memory at kexec first
# (a snapshot is refused after kexec_file_load), and there is no third boot.
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
#   SMOKE_FLUSH=0      skip the ima_flush_htable boot
#   SMOKE_IFACES=...   the interfaces the kernel must have: "snapshot,staging",
#                      "snapshot", "staging" or "none" (default: read from the config
#                      build.sh keeps next to the bzImage; else what the guest finds).
#                      The checks of an interface the kernel lacks are replaced by
#                      checks that its files are absent.
#   SMOKE_MEM=N        instead of the checks: kernel memory (Slab + VmallocUsed after
#                      drop_caches) for N measurements in batches of SMOKE_MEM_BATCH
#                      (5000), once without trimming and once with "N" after every
#                      batch (the agent's cadence); figures only, QEMU_TIMEOUT=3600
#   QEMU_TIMEOUT=180   seconds before the guest is killed (each run)
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
# The interfaces the kernel must have: SMOKE_IFACES, else the config build.sh keeps
# next to the bzImage; without either the guest checks whichever it finds.
IFACES=${SMOKE_IFACES:-}
if [ -z "$IFACES" ] && [ -r "$(dirname "$BZ")/config" ]; then
    ! grep -qx 'CONFIG_IMA_LOG_SNAPSHOT=y' "$(dirname "$BZ")/config" || IFACES=snapshot
    ! grep -qx 'CONFIG_IMA_STAGING=y' "$(dirname "$BZ")/config" || IFACES=${IFACES:+$IFACES,}staging
    IFACES=${IFACES:-none}
fi
[ -z "$IFACES" ] || log "interfaces the kernel must have: $IFACES"

# shellcheck source=kernel/lib.sh
. "$HERE/lib.sh"
guest_need qemu-system-x86_64:qemu-system-x86 swtpm:swtpm swtpm_setup:swtpm-tools cpio:cpio \
    kexec:kexec-tools setpriv:util-linux python3:python3
guest_workdir smoke "${SMOKE_OUT:-}"

# ------------------------------------------------------------------ guest ---
mkdir -p "$WORK"/root/{bin,sbin,dev,proc,sys,tmp,out}
cp /bin/busybox "$WORK/root/bin/busybox"
# kexec (the staged records across kexec) and setpriv (EPERM without CAP_SYS_ADMIN),
# with the libraries they link
for b in kexec setpriv; do
    cp "$(command -v $b)" "$WORK/root/sbin/$b"
    for lib in $(ldd "$(command -v $b)" | grep -o '/[^ ]*'); do
        mkdir -p "$WORK/root$(dirname "$lib")"; cp -L "$lib" "$WORK/root$lib"
    done
done
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
export PATH=/bin:/sbin
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
pcrs() {
    for alg in sha1 sha256 sha384 sha512; do
        [ -d /sys/class/tpm/tpm0/pcr-$alg ] || continue
        : > $1/pcrs-$alg.txt
        for p in 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23; do
            printf 'PCR-%02d: %s\n' $p "$(tr 'A-F' 'a-f' < /sys/class/tpm/tpm0/pcr-$alg/$p)" >> $1/pcrs-$alg.txt
        done
    done
}
# werr FILE DATA: one write of DATA (echo -e escapes) to FILE, opened by a child
# shell; prints "ok" or the shell's error (which ends in the errno's text)
werr() { r=$( { echo -ne "$2" > "$1"; } 2>&1 ) && echo ok || echo "$r"; }
expect() {
    local what=$1 want=$2 got; shift 2
    got=$(werr "$@")
    case "$got" in *"$want"*) pass "$what: $want" ;; *) fail "$what: want '$want', got '$got'" ;; esac
}
policy() {
    # measure everything read by root or executed, tmpfs/ramfs included, except the
    # pseudo filesystems (proc, sysfs, securityfs) so that the checks do not measure
    printf '%s\n' 'dont_measure fsmagic=0x9fa0' 'dont_measure fsmagic=0x62656572' \
        'dont_measure fsmagic=0x73636673' 'measure func=BPRM_CHECK' \
        'measure func=FILE_CHECK mask=MAY_READ uid=0' > $S/policy \
        || fail "policy write"
}
STAGE=$(sed -n 's/.*smoke\.stage=\([0-9]*\).*/\1/p' /proc/cmdline)
# Which interfaces this kernel has (each option builds alone): the snapshot file
# (CONFIG_IMA_LOG_SNAPSHOT), the _staged files (CONFIG_IMA_STAGING). The checks of an
# interface run only where it exists; smoke.ifaces (from the host) says which must.
HAS_SNAP=0; [ -e $S/snapshot ] && HAS_SNAP=1
HAS_STAGING=0; [ -e $S/binary_runtime_measurements_staged ] && HAS_STAGING=1

# ------------------------------------------------ the kernel reached by kexec ---
if [ "$STAGE" = 1 ]; then
    O=/tmp/out1; mkdir -p $O
    cp $S/binary_runtime_measurements $O/live.bin
    cp $S/binary_runtime_measurements_sha256 $O/live-sha256.bin
    cat $S/runtime_measurements_count > $O/count.txt
    pcrs $O
    (cd $O && tar -cf - .) | dd of=/dev/vda bs=1M seek=16 conv=notrunc 2>/dev/null
    sync
    echo "SMOKE-KEXEC-END"
    poweroff -f
fi

# -------------------------------------------------- kernel memory (SMOKE_MEM) ---
# Files on a ramfs, each read once and removed after its batch (only IMA's state
# stays); with imasnap.trim the writer reads the list and deletes it with "N" after
# every batch, as an agent that exports every 5,000 records would.
M=$(sed -n 's/.*imasnap\.mem=\([0-9]*\).*/\1/p' /proc/cmdline)
if [ -n "$M" ]; then
    BATCH=$(sed -n 's/.*imasnap\.batch=\([0-9]*\).*/\1/p' /proc/cmdline)
    TRIM=$(sed -n 's/.*imasnap\.trim=\([0-9]*\).*/\1/p' /proc/cmdline)
    if [ "$TRIM" = 1 ] && [ "$HAS_STAGING" = 0 ]; then
        fail "SMOKE_MEM trims with N: the kernel has no staging interface"; echo "SMOKE-END failed=1"; poweroff -f
    fi
    mkdir -p /m; mount -t ramfs ramfs /m
    echo 'measure func=FILE_CHECK mask=MAY_READ fsmagic=0x858458f6' > $S/policy || fail "policy"
    mem() { sync; echo 3 > /proc/sys/vm/drop_caches; awk '/^(Slab|VmallocUsed):/ {printf "%s %s ", $1, $2}' /proc/meminfo; }
    m0=$(mem); t0=$(cut -d' ' -f1 /proc/uptime); i=0; trims=0
    while [ $i -lt $M ]; do
        mkdir /m/b; b=0
        while [ $b -lt ${BATCH:-5000} ] && [ $i -lt $M ]; do echo "mem $i" > /m/b/$b; b=$((b + 1)); i=$((i + 1)); done
        cat /m/b/* > /dev/null
        rm -rf /m/b
        if [ "$TRIM" = 1 ]; then
            sh -c "exec 3<>$S/binary_runtime_measurements && n=\$(cat $S/runtime_measurements_count) && cat <&3 > /dev/null && echo \$n >&3" \
                && trims=$((trims + 1)) || fail "trim after $i"
        fi
    done
    m1=$(mem)
    echo "SMOKE-MEM: files=$i trim=${TRIM:-0} trims=$trims in_memory=$(count) seconds=$(awk "BEGIN {print $(cut -d' ' -f1 /proc/uptime) - $t0}") before: $m0 after: $m1"
    echo "SMOKE-END failed=$FAILED"
    poweroff -f
fi

# ------------------------------------------- a boot with ima_flush_htable ---
if grep -q ima_flush_htable /proc/cmdline; then
    policy
    if [ "$HAS_STAGING" = 0 ]; then
        fail "the ima_flush_htable boot checks staging: the kernel has none"; echo "SMOKE-END failed=1"; poweroff -f
    fi
    ST=$S/binary_runtime_measurements_staged
    echo "same" > /tmp/dup; cat /tmp/dup > /dev/null
    expect "flush: N refused with ima_flush_htable" "Invalid argument" $S/binary_runtime_measurements '1\n'
    expect "flush: A" ok $ST 'A\n'
    expect "flush: D" ok $ST 'D\n'
    rm /tmp/dup; echo "same" > /tmp/dup; c=$(count)
    cat /tmp/dup > /dev/null
    check "flush: a file measured before D is measured again ($c -> $(count))" test "$(count)" -eq $((c + 1))
    echo "SMOKE-END failed=$FAILED"
    poweroff -f
fi

policy
echo "SMOKE-INFO: interfaces snapshot=$HAS_SNAP staging=$HAS_STAGING"
WANT=$(sed -n 's/.*smoke\.ifaces=\([a-z,]*\).*/\1/p' /proc/cmdline)
if [ -n "$WANT" ]; then
    case ",$WANT," in *,snapshot,*) w=1 ;; *) w=0 ;; esac
    check "snapshot interface $( [ $w = 1 ] && echo present || echo absent) as configured ($WANT)" test "$HAS_SNAP" = $w
    case ",$WANT," in *,staging,*) w=1 ;; *) w=0 ;; esac
    check "staging interface $( [ $w = 1 ] && echo present || echo absent) as configured ($WANT)" test "$HAS_STAGING" = $w
fi

for i in 1 2 3 4 5 6 7 8; do echo "file $i" > /tmp/f$i; cat /tmp/f$i >/dev/null; done

if [ "$HAS_SNAP" = 1 ]; then
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
else
    # CONFIG_IMA_LOG_SNAPSHOT=n: none of its files
    check "no snapshot file (snapshots off)" test ! -e $S/snapshot
    check "no snapshot_removed (snapshots off)" test ! -e $S/snapshot_removed
    check "no snapshot_lock_ns in debugfs (snapshots off)" test ! -e $D/snapshot_lock_ns
fi

# ------------------------------------------------------------------ staging ---
# CONFIG_IMA_STAGING: "A"/"D" on the _staged files, "N" on the originals, every
# error code of the interface (matched by the errno's text). Every record deleted
# is first exported to $O/export/ (in order; an "n" export holds the list read
# before "N", and its .count the N written): the host replays them.
if [ "$HAS_STAGING" = 1 ]; then
    ST=$S/binary_runtime_measurements_staged
    E=$O/export; mkdir -p $E; k=0
    keep() { k=$((k + 1)); cp "$1" $E/$(printf %02d $k)-$2.bin; }
    for alg in sha1 sha256; do
        for kind in ascii binary; do
            f=${kind}_runtime_measurements_${alg}_staged
            check "$f exists, mode 0640" test "$(stat -c %a $S/$f 2>/dev/null)" = 640
        done
    done
    check "binary_runtime_measurements_staged -> sha1" \
        test "$(readlink $S/binary_runtime_measurements_staged)" = binary_runtime_measurements_sha1_staged
    check "ascii_runtime_measurements_staged -> sha1" \
        test "$(readlink $S/ascii_runtime_measurements_staged)" = ascii_runtime_measurements_sha1_staged
    check "original files writable by root (0640)" test "$(stat -c %a $S/binary_runtime_measurements_sha256)" = 640
    check "the staged list is empty" test "$(wc -c < $ST)" -eq 0

    # EPERM: root without CAP_SYS_ADMIN (dropped from the bounding set)
    r=$(/sbin/setpriv --bounding-set -sys_admin sh -c "echo A > $ST" 2>&1) && fail "open for write without CAP_SYS_ADMIN: EPERM (it succeeded)" || \
        case "$r" in *"not permitted"*) pass "open for write without CAP_SYS_ADMIN: Operation not permitted" ;; *) fail "no CAP_SYS_ADMIN: got '$r'" ;; esac
    r=$(/sbin/setpriv --bounding-set -sys_admin sh -c "cat $S/ascii_runtime_measurements_sha256 > /dev/null" 2>&1) \
        && pass "a reader needs no CAP_SYS_ADMIN" || fail "a reader needs no CAP_SYS_ADMIN: $r"

    # A: the whole current list is staged; the count is of the current list only
    # (reading a tmpfs file as root measures it: what is compared stays in variables)
    c0=$(count)
    before=$(cat $S/ascii_runtime_measurements_sha256)
    expect "A on a _staged file" ok $ST 'A\n'
    check "runtime_measurements_count counts the current list only (0 after A, was $c0)" test "$(count)" -eq 0
    check "ascii sha256 _staged file holds the $c0 staged records" \
        test "$(wc -l < $S/ascii_runtime_measurements_sha256_staged)" -eq "$c0"
    check "the _staged file shows what the list held before A" test "$(cat $S/ascii_runtime_measurements_sha256_staged)" = "$before"
    check "the original files are empty after A" test "$(wc -c < $S/binary_runtime_measurements)" -eq 0
    keep $ST staged
    # the list starts with the last snapshot's marker, or without snapshots with boot_aggregate
    first=ima-ng; [ "$HAS_SNAP" = 1 ] && first=ima-buf
    check "binary _staged file: sha1 binary records, $first first" \
        test "$(dd if=$ST bs=1 skip=28 count=${#first} 2>/dev/null)" = $first -a "$(u32 $ST 0)" = 10
    expect "A with records staged" "File exists" $ST 'A\n'
    expect "D on another _staged file" ok $S/ascii_runtime_measurements_sha256_staged 'D\n'
    check "the staged files are empty after D" test "$(wc -c < $ST)" -eq 0
    expect "D with nothing staged" "No such file" $ST 'D\n'
    expect "A with an empty current list" "No such file" $ST 'A\n'

    # Dedup after D: same path and content, new inode: found in the kept digests
    echo "dup" > /tmp/dup; cat /tmp/dup > /dev/null
    expect "A (dedup)" ok $ST 'A\n'; keep $ST staged
    expect "D (dedup)" ok $ST 'D\n'
    rm /tmp/dup; echo "dup" > /tmp/dup; c=$(count); cat /tmp/dup > /dev/null
    check "a file measured before D is not measured again (kept digests)" test "$(count)" -eq "$c"

    # Bad writes: EINVAL
    for i in 1 2 3 4 5 6; do echo "staging $i" > /tmp/s$i; cat /tmp/s$i > /dev/null; done
    expect "N = 0" "Invalid argument" $S/binary_runtime_measurements '0\n'
    expect "N on a _staged file" "Invalid argument" $ST '1\n'
    expect "A on an original file" "Invalid argument" $S/binary_runtime_measurements 'A\n'
    expect "D on an original file" "Invalid argument" $S/ascii_runtime_measurements 'D\n'
    expect "a command without a newline" "Invalid argument" $ST 'A'
    expect "a 1-byte write" "Invalid argument" $ST '\n'
    expect "a 22-byte write" "Invalid argument" $S/binary_runtime_measurements '000000000000000000001\n'
    expect "N not decimal" "Invalid argument" $S/binary_runtime_measurements 'x1\n'
    expect "N above ULONG_MAX" "Invalid argument" $S/binary_runtime_measurements '18446744073709551616\n'
    expect "an unknown command" "Invalid argument" $ST 'X\n'
    c=$(count)
    expect "N larger than the list ($((c + 100)))" "No such file" $S/binary_runtime_measurements "$((c + 100))\n"

    # N: deletes exactly the first N records; the writer reads, then writes N on the same fd
    c=$(count)
    exec 3<>$S/binary_runtime_measurements
    n=$((c - 2))
    k=$((k + 1)); cat <&3 > $E/$(printf %02d $k)-n.bin; echo $n > $E/$(printf %02d $k)-n.count
    check "N=$n on the writer's fd" sh -c "echo $n >&3"
    exec 3>&-
    check "N deleted $n records ($c -> $(count))" test "$(count)" -eq $((c - n))
    # a 21-byte N (20 digits) is accepted
    k=$((k + 1)); cp $S/binary_runtime_measurements $E/$(printf %02d $k)-n.bin; echo 1 > $E/$(printf %02d $k)-n.count
    expect "a 21-byte N (00000000000000000001)" ok $S/binary_runtime_measurements_sha256 '00000000000000000001\n'

    # Many readers or one writer, across all the measurement files
    exec 5<$S/ascii_runtime_measurements_sha256
    expect "a writer while a reader holds another file" "busy" $ST 'A\n'
    exec 5<&-
    exec 3>>$ST
    exec 4>>$S/ascii_runtime_measurements
    pass "the same writer opens several files (binary_runtime_measurements_staged, ascii_runtime_measurements)"
    read -r line < $S/ascii_runtime_measurements_sha256 && pass "the writer's own process reads" || fail "the writer's own process reads"
    r=$( (exec 6<$S/binary_runtime_measurements_sha256) 2>&1 ) && fail "a reader of another process while a writer holds the files (it opened)" \
        || case "$r" in *busy*) pass "a reader of another process while a writer holds the files: busy" ;; *) fail "reader vs writer: $r" ;; esac
    expect "a second writer process" "busy" $S/binary_runtime_measurements '1\n'
    if [ "$HAS_SNAP" = 1 ]; then
        r=$( (exec 6<>$S/snapshot) 2>&1 ) && fail "snapshot open while a staging writer holds the files (it opened)" \
            || case "$r" in *busy*) pass "snapshot open while a staging writer holds the files: busy" ;; *) fail "snapshot vs writer: $r" ;; esac
    fi
    exec 3>&- 4>&-
    check "readers open again once the writer is gone" sh -c "cat $S/binary_runtime_measurements_staged > /dev/null"
else
    # CONFIG_IMA_STAGING=n: none of its files, the originals stay read-only, N is refused
    check "no _staged file (staging off)" sh -c "! ls $S | grep -q _staged"
    check "original files stay 0440 (staging off)" test "$(stat -c %a $S/binary_runtime_measurements_sha256)" = 440
    c=$(count)
    expect "N refused (staging off)" "Invalid argument" $S/binary_runtime_measurements '1\n'
    check "N deleted nothing (staging off)" test "$(count)" -eq "$c"
fi

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
if [ -n "$B" ] && [ "$HAS_SNAP" = 0 ]; then
    fail "SMOKE_BENCH takes snapshots: the kernel has no snapshot interface"
elif [ -n "$B" ]; then
    snaps 1; hits a 2
    snaps $((B - 3)); hits b "$B"
fi

# evidence for the host: lists and PCRs
cp $S/binary_runtime_measurements $O/live.bin
cp $S/ascii_runtime_measurements $O/live.txt
pcrs $O
cat /proc/cmdline > $O/cmdline.txt
echo $FAILED > $O/failed
# Saved before the kexec load: the segment then has half a page for new records,
# and tar's reads are measured.
(cd $O && tar -cf /dev/vda .) || echo "SMOKE-FAIL: tar to /dev/vda"
sync
# kexec with records staged (not with SMOKE_BENCH, whose snapshots are not kept).
# Staging is allowed after kexec_file_load (unlike a snapshot: it adds nothing to
# the list); the next kernel must list the staged records first. Without staging
# the next kernel must list the records in memory at kexec first, and a snapshot is
# refused once the segment is loaded.
if [ -z "$B" ] && [ -e /boot/bzImage ]; then
    kexec -s -l /boot/bzImage --initrd=/boot/initrd1.gz \
        --append="$(cat /proc/cmdline) smoke.stage=1" || fail "kexec load"
    echo "kexec 1" > /tmp/x1; cat /tmp/x1 > /dev/null
    if [ "$HAS_STAGING" = 1 ]; then
        expect "A after kexec_file_load" ok $ST 'A\n'
        dd if=$ST of=/dev/vda bs=1M seek=8 conv=notrunc 2>/dev/null
        echo "kexec 2" > /tmp/x2; cat /tmp/x2 > /dev/null
        expect "A after kexec_file_load, records staged" "File exists" $ST 'A\n'
    else
        if [ "$HAS_SNAP" = 1 ]; then
            r=$( (exec 4<>$S/snapshot) 2>&1 ) && fail "snapshot open after kexec_file_load: EBUSY (it opened)" \
                || case "$r" in *busy*) pass "snapshot open after kexec_file_load: busy" ;; *) fail "snapshot after kexec load: $r" ;; esac
        fi
        dd if=$S/binary_runtime_measurements of=/dev/vda bs=1M seek=8 conv=notrunc 2>/dev/null
    fi
    sync
    echo "SMOKE-END failed=$FAILED"
    for d in /sys/bus/virtio/drivers/virtio_blk/virtio*; do
        [ -e "$d" ] && echo "${d##*/}" > /sys/bus/virtio/drivers/virtio_blk/unbind
    done
    kexec -e
    fail "kexec -e returned"
fi
echo "SMOKE-END failed=$FAILED"
poweroff -f
EOF
chmod 755 "$WORK/root/init"
# the kernel reached by kexec boots the same init (without /boot) with smoke.stage=1
(cd "$WORK/root" && find . | cpio -o -H newc --quiet | gzip -1) > "$WORK/initrd1.gz"
if [ -z "${SMOKE_BENCH:-}${SMOKE_MEM:-}" ]; then
    mkdir -p "$WORK/root/boot"; cp "$BZ" "$WORK/root/boot/bzImage"; cp "$WORK/initrd1.gz" "$WORK/root/boot/"
fi
(cd "$WORK/root" && find . | cpio -o -H newc --quiet | gzip -1) > "$WORK/initrd.gz"

# ------------------------------------------------------------------- boot ---
# boot NAME APPEND: one QEMU run with a fresh swtpm; console in WORK/console-NAME.log
boot() {
    if [ -n "$SWTPM_PID" ]; then kill "$SWTPM_PID" 2>/dev/null || true; wait "$SWTPM_PID" 2>/dev/null || true; fi
    rm -rf "$WORK/tpm" "$WORK/swtpm.sock"; SWTPM_PID=
    guest_swtpm
    rm -f "$WORK/out.img"; truncate -s 24M "$WORK/out.img"
    local start rc=0
    start=$(date +%s)
    timeout "$QEMU_TIMEOUT" qemu-system-x86_64 -machine q35 -accel tcg -cpu max -smp "${SMOKE_SMP:-1}" -m 1024 \
        -display none -monitor none -serial stdio -no-reboot \
        -kernel "$BZ" -initrd "$WORK/initrd.gz" \
        -append "console=ttyS0 panic=-1 ima_hash=sha256 $2" \
        -drive file="$WORK/out.img",format=raw,if=virtio \
        -chardev socket,id=chrtpm,path="$WORK/swtpm.sock" -tpmdev emulator,id=tpm0,chardev=chrtpm \
        -device tpm-tis,tpmdev=tpm0 > "$WORK/console-$1.log" 2>&1 || rc=$?
    log "guest ($1) ran $(( $(date +%s) - start ))s (qemu exit $rc)"
    grep -a '^SMOKE-' "$WORK/console-$1.log" | tr -d '\r' || true
    # the debug kernel runs the KUnit suites ima_snapshot and ima_staging at boot
    if grep -aq '# Subtest: ima_' "$WORK/console-$1.log"; then
        if grep -aqE 'not ok [0-9]+ ima_' "$WORK/console-$1.log"; then
            echo "SMOKE-FAIL: KUnit ($1)"; FAILED=1
        else
            echo "SMOKE-PASS: KUnit suites $(tr -d '\r' < "$WORK/console-$1.log" | grep -aoE '[] ]ok [0-9]+ ima_[a-z]+$' | sed 's/.* //' | sort -u | tr '\n' ' ')passed ($1)"
        fi
    fi
}
FAILED=0
if [ -n "${SMOKE_MEM:-}" ]; then
    for trim in 0 1; do
        boot "mem$trim" "$SMOKE_APPEND imasnap.mem=$SMOKE_MEM imasnap.batch=${SMOKE_MEM_BATCH:-5000} imasnap.trim=$trim"
        grep -aq '^SMOKE-END failed=0' "$WORK/console-mem$trim.log" || { tail -n 20 "$WORK/console-mem$trim.log" >&2; die "memory run $trim failed"; }
    done
    python3 - "$WORK/console-mem0.log" "$WORK/console-mem1.log" <<'PY'
import re, sys
def growth(f):
    l = [l for l in open(f, errors='replace') if l.startswith('SMOKE-MEM:')][0]
    b, a = l.split('before:')[1].split('after:')
    kb = lambda t: dict((k.rstrip(':'), int(v)) for k, v in re.findall(r'(\w+:) (\d+)', t))
    b, a = kb(b), kb(a)
    return {k: a[k] - b[k] for k in b}, l.split(' before:')[0]
(g0, l0), (g1, l1) = growth(sys.argv[1]), growth(sys.argv[2])
t0, t1 = sum(g0.values()), sum(g1.values())
for g, l, t in ((g0, l0, t0), (g1, l1, t1)):
    print(f"{l}: Slab {g['Slab']:+,} kB, VmallocUsed {g['VmallocUsed']:+,} kB, total {t:+,} kB")
print(f"SMOKE-MEM: saved {100 * (1 - t1 / t0):.1f}% ({t0:,} kB -> {t1:,} kB)")
PY
    exit 0
fi
boot main "$SMOKE_APPEND${SMOKE_BENCH:+ imasnap.bench=$SMOKE_BENCH}${IFACES:+ smoke.ifaces=$IFACES}"
cp "$WORK/console-main.log" "$WORK/console.log"
# what the guest found (the flush boot and the kexec check depend on staging)
HAS_STAGING=$(sed -n 's/^SMOKE-INFO: interfaces snapshot=[01] staging=\([01]\).*/\1/p' "$WORK/console-main.log" | tr -d '\r' | head -n1)
HAS_STAGING=${HAS_STAGING:-1}
mkdir -p "$WORK/out/kexec"
tar -xf "$WORK/out.img" -C "$WORK/out" 2>/dev/null || true
cp "$WORK/out.img" "$WORK/out/out.img"
if ! grep -aq '^SMOKE-END' "$WORK/console-main.log" || grep -aq '^SMOKE-FAIL' "$WORK/console-main.log"; then
    grep -aq '^SMOKE-END' "$WORK/console-main.log" || tail -n 30 "$WORK/console-main.log" >&2
    FAILED=1
fi

# Host checks: the replay of every exported record (snapshots, staged, the first N
# of each "N" read) then the list in memory equals PCR 10 in both banks; after
# kexec, the next kernel's list starts with the records staged at kexec (without
# staging: the records in memory at kexec).
host_check() {
    python3 - "$WORK/out" "$@" <<'PY'
import glob, hashlib, os, struct, sys
out, what = sys.argv[1], sys.argv[2]
# what the first kernel saved at kexec: its staged records, or without staging its list
carried = 'staged' if len(sys.argv) < 4 or sys.argv[3] == '1' else 'in memory'
def recs(b, stop_at_zero=False):
    o, r = 0, []
    while o + 28 <= len(b):
        pcr, = struct.unpack_from('<I', b, o)
        nl, = struct.unpack_from('<I', b, o + 24)
        if stop_at_zero and pcr == 0 and nl == 0:
            break
        tl, = struct.unpack_from('<I', b, o + 28 + nl)
        end = o + 32 + nl + tl
        r.append((pcr, b[o + 4:o + 24], b[o + 32 + nl:end], b[o:end]))
        o = end
    return r
def replay(rs):
    p = {'sha1': b'\0' * 20, 'sha256': b'\0' * 32}
    for pcr, d, td, _ in rs:
        if pcr != 10:
            continue
        v = d == b'\0' * 20
        p['sha1'] = hashlib.sha1(p['sha1'] + (b'\xff' * 20 if v else d)).digest()
        p['sha256'] = hashlib.sha256(p['sha256'] + (b'\xff' * 32 if v else hashlib.sha256(td).digest())).digest()
    return p
def pcr10(d, alg):
    for l in open(f'{d}/pcrs-{alg}.txt'):
        if l.startswith('PCR-10: '):
            return l.split()[1]
def exported():
    # the snapshots exist only with CONFIG_IMA_LOG_SNAPSHOT, the exports only with staging
    rs = []
    for f in (f'{out}/snap1.bin', f'{out}/snap3.bin'):
        if os.path.exists(f):
            rs += recs(open(f, 'rb').read())
    for f in sorted(glob.glob(f'{out}/export/*.bin')):
        r = recs(open(f, 'rb').read())
        if f.endswith('-n.bin'):
            r = r[:int(open(f[:-4] + '.count').read())]
        rs += r
    return rs
ok = True
def check(cond, msg):
    global ok
    print(('SMOKE-PASS: ' if cond else 'SMOKE-FAIL: ') + msg)
    ok = ok and cond
ex = exported()
if what == 'main':
    live = recs(open(f'{out}/live.bin', 'rb').read())
    p = replay(ex + live)
    for alg in ('sha1', 'sha256'):
        check(p[alg].hex() == pcr10(out, alg),
              f'host: {len(ex)} exported + {len(live)} in memory replay to PCR 10 {alg}')
else:
    k1 = f'{out}/kexec'
    img = open(f'{out}/out.img', 'rb').read()
    staged = recs(img[8 << 20:16 << 20], stop_at_zero=True)
    live = recs(open(f'{k1}/live.bin', 'rb').read())
    check(len(staged) > 0 and [r[3] for r in live[:len(staged)]] == [r[3] for r in staged],
          f"host: the kexec'd kernel's list starts with the {len(staged)} records {carried} at kexec")
    check(any(b'boot_aggregate' in r[2] for r in live[len(staged):]),
          'host: its own boot_aggregate follows the records carried over')
    p = replay(ex + live)
    for alg in ('sha1', 'sha256'):
        check(p[alg].hex() == pcr10(k1, alg),
              f'host: after kexec, {len(ex)} exported + {len(live)} in memory replay to PCR 10 {alg}')
sys.exit(0 if ok else 1)
PY
}
if [ -z "${SMOKE_BENCH:-}" ] && [ "$FAILED" = 0 ]; then
    host_check main || FAILED=1
    if grep -aq '^SMOKE-KEXEC-END' "$WORK/console-main.log"; then
        dd if="$WORK/out.img" bs=1M skip=16 2>/dev/null | tar -xf - -C "$WORK/out/kexec" 2>/dev/null || true
        host_check kexec "$HAS_STAGING" || FAILED=1
    else
        echo "SMOKE-FAIL: the kernel reached by kexec did not finish"; FAILED=1
    fi
fi
if [ "$HAS_STAGING" = 0 ]; then
    log "no staging interface: no ima_flush_htable boot (it checks A, D and N)"
elif [ "${SMOKE_FLUSH:-1}" = 1 ] && [ -z "${SMOKE_BENCH:-}" ]; then
    boot flush "$SMOKE_APPEND ima_flush_htable"
    cp "$WORK/console-flush.log" "$WORK/out/" 2>/dev/null || true
    if ! grep -aq '^SMOKE-END failed=0' "$WORK/console-flush.log" || grep -aq '^SMOKE-FAIL' "$WORK/console-flush.log"; then
        grep -aq '^SMOKE-END' "$WORK/console-flush.log" || tail -n 30 "$WORK/console-flush.log" >&2
        FAILED=1
    fi
fi
[ "$FAILED" = 0 ] || { log "FAILED"; exit 1; }
log "all checks passed"
