#!/usr/bin/env bash
# gen-real-kernel-logs.sh - produce REAL IMA measurement logs from Debian's stock
# kernel and store them as test fixtures under tests/fixtures/real-kernel/<scenario>/.
#
# What it does
#   * Boots Debian 12's stock `linux-image-amd64` kernel (6.1, CONFIG_IMA=y) in
#     `qemu-system-x86_64 -machine q35 -accel tcg -m 512` (no KVM needed) with a
#     fresh `swtpm socket --tpm2` vTPM (sha1 + sha256 PCR banks) attached through
#     `-tpmdev emulator` + `-device tpm-tis`.  The kernel is NOT rebuilt.
#   * The guest is a busybox-static initramfs.  Its /init insmods virtio_pci,
#     virtio_blk, crc32c and ext4 (+ deps, order taken from modules.dep, .ko
#     copied from /lib/modules/<ver>/), mounts proc/sys/devtmpfs/securityfs, mounts
#     an ext4 data disk (built on the host with `mkfs.ext4 -d`, no loop mount) and
#     runs /data/scenario.sh from it.  Files on that disk are what IMA measures
#     (the tcb policy ignores tmpfs/ramfs, i.e. the initramfs).
#   * /init then copies the IMA lists from securityfs, the PCRs read INSIDE the
#     guest from /sys/class/tpm/tpm0/pcr-{sha1,sha256}/N (swtpm exits with QEMU),
#     /proc/cmdline, the BIOS event log and dmesg into a tar archive written raw to
#     a second virtio disk, syncs and does `poweroff -f`.  The host untars it.
#   * Each fixture is checked on the host with `evmctl ima_measurement` (with
#     `--ignore-violations` where the log has violations, `--verify-sig` for the
#     signed scenario) and with an independent Python replay (template hashes,
#     per-bank PCR replay, boot_aggregate); any failure makes the script exit
#     non-zero and leaves the old fixtures untouched.
#   * README.md in the fixture directory is (re)generated with the results.
#
# Scenarios (kernel arguments in addition to `console=ttyS0 panic=-1`):
#   ima-ng     ima_policy=tcb ima_template=ima-ng ima_hash=sha256
#   ima-sig    ima_policy=tcb ima_template=ima-sig ima_hash=sha256
#              (files signed on the host with `evmctl ima_sign` and a throwaway
#              RSA-2048 key; security.ima set on the image with `debugfs ea_set`)
#   ima-buf    ima_policy=tcb|critical_data ima_template=ima-ng ima_hash=sha256
#              (ima-buf record: kernel_version)
#   violation  ima_policy=tcb ima_template=ima-ng ima_hash=sha256, plus a real
#              open_writers and a real ToMToU violation
#
# Output per scenario directory:
#   binary_runtime_measurements, ascii_runtime_measurements  (classic sha1 lists;
#       6.1 has no per-bank files), pcrs-sha1.txt, pcrs-sha256.txt (evmctl format
#       `PCR-NN: <lowercase hex>`, NN=00..23), cmdline.txt (/proc/cmdline of the
#       guest), kernel-release.txt, violations.txt (securityfs counter),
#       binary_bios_measurements (SeaBIOS TCG2 log, when present), and for ima-sig
#       signing-key.pub.pem + signing-cert.der (to verify the signatures).
#
# Usage (as root, on Debian 12; missing packages are apt-get installed):
#   scripts/gen-real-kernel-logs.sh                 # all scenarios
#   scripts/gen-real-kernel-logs.sh ima-ng violation  # a subset
# Environment:
#   QEMU_TIMEOUT=120   seconds per boot          KEEP_WORK=1  keep the work dir
#   OUT_BASE=...       output dir (default tests/fixtures/real-kernel)
#   GUEST_IMASNAP=...  path of a host-built imasnap binary: it is copied into the
#                      initramfs with its shared libraries, the verifier side enrols
#                      the vTPM's AK on the host before the boot (`imasnap tpm ak`),
#                      and the guest runs `imasnap agent bundle --tpm device:/dev/tpmrm0`
#                      (quote of PCR 0-10 over a host nonce + the live list) after the
#                      scenario. Each scenario directory then also holds bundle/,
#                      enrolled-ak.pub, nonce.txt and agent-bundle.json.
# Idempotent: every run rebuilds everything in a fresh temp dir and replaces the
# scenario directories (only after they verified).  Exit status != 0 on failure.

set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
OUT_BASE=${OUT_BASE:-$REPO/tests/fixtures/real-kernel}
QEMU_TIMEOUT=${QEMU_TIMEOUT:-120}
KEEP_WORK=${KEEP_WORK:-0}
GUEST_IMASNAP=${GUEST_IMASNAP:-}
ALL_SCENARIOS=(ima-ng ima-sig ima-buf violation)
COMMON_ARGS="console=ttyS0 panic=-1"
START_TS=$(date +%s)

log() { printf '[gen-real-kernel-logs] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

scenario_args() {
    case "$1" in
        ima-ng)    echo "ima_policy=tcb ima_template=ima-ng ima_hash=sha256" ;;
        ima-sig)   echo "ima_policy=tcb ima_template=ima-sig ima_hash=sha256" ;;
        ima-buf)   echo "ima_policy=tcb|critical_data ima_template=ima-ng ima_hash=sha256" ;;
        violation) echo "ima_policy=tcb ima_template=ima-ng ima_hash=sha256" ;;
        *) die "unknown scenario '$1' (known: ${ALL_SCENARIOS[*]})" ;;
    esac
}

if [ $# -gt 0 ]; then SCENARIOS=("$@"); else SCENARIOS=("${ALL_SCENARIOS[@]}"); fi
for s in "${SCENARIOS[@]}"; do scenario_args "$s" >/dev/null; done

[ "$(id -u)" = 0 ] || die "must run as root (debugfs/qemu/apt)"

# ---------------------------------------------------------------- packages ---
ensure_packages() {
    local pkgs=(swtpm swtpm-tools ima-evm-utils qemu-system-x86 busybox-static cpio
                linux-image-amd64 e2fsprogs openssl tar gzip python3)
    local missing=() p
    for p in "${pkgs[@]}"; do
        # python3 may come from elsewhere (pyenv...); only install if absent.
        if [ "$p" = python3 ] && command -v python3 >/dev/null; then continue; fi
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing missing packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=900 update -qq
        apt-get -o DPkg::Lock::Timeout=900 install -y -qq "${missing[@]}"
    fi
    local c
    for c in swtpm swtpm_setup evmctl qemu-system-x86_64 mkfs.ext4 debugfs cpio openssl python3; do
        command -v "$c" >/dev/null || die "command '$c' not found after install"
    done
    [ -x /bin/busybox ] || die "/bin/busybox (busybox-static) missing"
    file_is_static /bin/busybox || die "/bin/busybox is not static (install busybox-static)"
}
file_is_static() { ! LC_ALL=C ldd "$1" >/dev/null 2>&1; }

# ------------------------------------------------------------------ kernel ---
pick_kernel() {
    # The version the linux-image-amd64 metapackage points at, e.g. 6.1.0-56-amd64.
    local dep
    dep=$(dpkg-query -W -f='${Depends}' linux-image-amd64 2>/dev/null | tr ',' '\n' \
          | sed -n 's/^ *linux-image-\([^ ]*\).*/\1/p' | head -n1)
    [ -n "$dep" ] || die "cannot determine kernel version from linux-image-amd64"
    KVER=$dep
    VMLINUZ=/boot/vmlinuz-$KVER
    MODDIR=/lib/modules/$KVER
    [ -r "$VMLINUZ" ] || die "$VMLINUZ missing"
    [ -r "$MODDIR/modules.dep" ] || die "$MODDIR/modules.dep missing"
    KPKGVER=$(dpkg-query -W -f='${Version}' "linux-image-$KVER")
    log "kernel: $KVER (package linux-image-$KVER $KPKGVER)"
}

# Print, in load order, the modules.dep paths needed for the given module names.
module_load_order() {
    local seen="" out=()
    _resolve() {
        local name=$1 line path deps d
        line=$(grep -E "(^|/)${name}\.ko(\.xz|\.zst|\.gz)?:" "$MODDIR/modules.dep" | head -n1) || true
        if [ -z "$line" ]; then
            # built into the kernel?  then nothing to load
            grep -qE "(^|/)${name}\.ko$" "$MODDIR/modules.builtin" && return 0
            die "module $name not found in modules.dep"
        fi
        path=${line%%:*}; deps=${line#*:}
        case " $seen " in *" $path "*) return 0 ;; esac
        # modules.dep lists dependencies so that the last one must be loaded first
        local rev=() 
        for d in $deps; do rev=("$d" "${rev[@]}"); done
        for d in "${rev[@]}"; do
            d=${d##*/}; d=${d%%.ko*}
            _resolve "$d"
        done
        case " $seen " in *" $path "*) return 0 ;; esac
        seen="$seen $path"; out+=("$path")
    }
    local m
    for m in "$@"; do _resolve "$m"; done
    printf '%s\n' "${out[@]}"
}

# -------------------------------------------------------------- initramfs ---
build_initramfs() {
    local root=$WORK/initramfs p base
    rm -rf "$root"; mkdir -p "$root"/{bin,dev,proc,sys,data,out,modules}
    cp /bin/busybox "$root/bin/busybox"
    if [ -n "$GUEST_IMASNAP" ]; then
        [ -x "$GUEST_IMASNAP" ] || die "GUEST_IMASNAP=$GUEST_IMASNAP is not executable"
        # shellcheck source=lib/guest-binary.sh
        . "$SCRIPT_DIR/lib/guest-binary.sh"
        guest_add_binary "$root" "$GUEST_IMASNAP" /bin/imasnap
        log "guest imasnap: $(du -sh "$root/bin/imasnap" | cut -f1) + $(find "$root/lib" "$root/lib64" "$root/usr" -type f 2>/dev/null | wc -l) libraries"
    fi
    : > "$root/modules/order"
    local order
    order=$(module_load_order virtio_pci virtio_blk crc32c_generic ext4) || die "module resolution failed"
    while read -r p; do
        base=${p##*/}; base=${base%%.ko*}
        case "$p" in
            *.ko)     cp "$MODDIR/$p" "$root/modules/$base.ko" ;;
            *.ko.xz)  xz -dc "$MODDIR/$p" > "$root/modules/$base.ko" ;;
            *.ko.zst) zstd -qdc "$MODDIR/$p" > "$root/modules/$base.ko" ;;
            *.ko.gz)  gzip -dc "$MODDIR/$p" > "$root/modules/$base.ko" ;;
        esac
        echo "$base" >> "$root/modules/order"
    done <<<"$order"
    log "guest modules: $(tr '\n' ' ' < "$root/modules/order")"

    cat > "$root/init" <<'EOF'
#!/bin/busybox sh
# imasnap guest init: load modules, mount data disk, run scenario, dump IMA state.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t securityfs securityfs /sys/kernel/security
echo "IMASNAP: init on $(uname -r)"
for m in $(cat /modules/order); do
    insmod /modules/$m.ko || echo "IMASNAP: insmod $m failed"
done
fail() { echo "IMASNAP-FAIL: $*"; poweroff -f; }
# find the disks by their virtio serial (fallback: vda=data, vdb=out)
DATA=; OUT=; i=0
while [ $i -lt 50 ]; do
    for b in /sys/block/vd*; do
        [ -e "$b" ] || continue
        s=$(cat "$b/serial" 2>/dev/null)
        case "$s" in imasnap-data) DATA=${b##*/} ;; imasnap-out) OUT=${b##*/} ;; esac
    done
    [ -n "$DATA" ] && [ -n "$OUT" ] && break
    [ -e /sys/block/vda ] && [ -e /sys/block/vdb ] && [ $i -gt 10 ] && { DATA=vda; OUT=vdb; break; }
    sleep 0.1; i=$((i+1))
done
[ -n "$DATA" ] && [ -n "$OUT" ] || fail "disks not found: $(ls /sys/block)"
echo "IMASNAP: data=/dev/$DATA out=/dev/$OUT"
mount -t ext4 /dev/$DATA /data || fail "mount ext4"
[ -x /data/scenario.sh ] || fail "no /data/scenario.sh"
echo "IMASNAP: running scenario"
/data/scenario.sh || fail "scenario.sh exit $?"
# The agent: quote over the host's nonce, then the live list (it runs from the
# initramfs and keeps its store in tmpfs, so it adds no measurements itself).
nonce=$(sed -n 's/.*imasnap\.nonce=\([0-9a-f]*\).*/\1/p' /proc/cmdline)
if [ -x /bin/imasnap ] && [ -n "$nonce" ]; then
    echo "IMASNAP: agent bundle (tpm: $(ls /dev/tpm*))"
    mkdir -p /run/imasnap
    LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu \
        /bin/imasnap agent bundle --tpm device:/dev/tpmrm0 --state-dir /run/imasnap \
        --nonce "$nonce" --out /out/bundle --json > /out/agent-bundle.json 2> /out/agent-bundle.err \
        || { cat /out/agent-bundle.err; fail "imasnap agent bundle"; }
fi
echo "IMASNAP: dumping"
S=/sys/kernel/security/ima
n=0
while :; do
    c1=$(cat $S/runtime_measurements_count)
    for f in $S/*runtime_measurements*; do
        case "$f" in *_count) continue ;; esac
        cat "$f" > /out/${f##*/}
    done
    for alg in sha1 sha256 sha384 sha512; do
        [ -d /sys/class/tpm/tpm0/pcr-$alg ] || continue
        : > /out/pcrs-$alg.txt
        for p in 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23; do
            printf 'PCR-%02d: %s\n' $p "$(tr 'A-F' 'a-f' < /sys/class/tpm/tpm0/pcr-$alg/$p)" >> /out/pcrs-$alg.txt
        done
    done
    c2=$(cat $S/runtime_measurements_count)
    [ "$c1" = "$c2" ] && break
    n=$((n+1)); [ $n -lt 5 ] || fail "measurement list keeps growing"
done
echo "$c1" > /out/runtime_measurements_count
cat $S/violations > /out/violations.txt
cat /proc/cmdline > /out/cmdline.txt
uname -r > /out/kernel-release.txt
ls -l $S/ > /out/securityfs-ima-listing.txt
ls /sys/class/tpm/tpm0/ > /out/tpm-sysfs-listing.txt
[ -r /sys/kernel/security/tpm0/binary_bios_measurements ] && \
    cat /sys/kernel/security/tpm0/binary_bios_measurements > /out/binary_bios_measurements
dmesg > /out/dmesg.txt
cd /out && tar -cf /dev/$OUT . || fail "tar"
sync
echo "IMASNAP-DONE count=$c1"
poweroff -f
EOF
    chmod 755 "$root/init"
    (cd "$root" && find . -print0 | LC_ALL=C sort -z \
        | cpio --null -o -H newc --quiet --reproducible 2>/dev/null \
        | gzip -9n) > "$WORK/initrd.cpio.gz"
}

# -------------------------------------------------------------- data disk ---
# Populates $1 (a directory) with the scenario's files + scenario.sh.
populate_data_dir() {
    local scen=$1 d=$2
    mkdir -p "$d/bin" "$d/etc" "$d/files"
    cp /bin/busybox "$d/bin/busybox"            # static ELF, exec'd -> BPRM_CHECK
    printf 'hello from imasnap\n' > "$d/files/hello.txt"
    printf '{"name":"imasnap","kind":"fixture"}\n' > "$d/etc/config.json"
    : > "$d/files/empty"
    printf 'spaces in the name\n' > "$d/files/name with spaces.txt"
    printf 'utf-8 name\n' > "$d/files/$(printf 'caf\303\251.txt')"
    cat > "$d/bin/hello.sh" <<'EOF'
#!/bin/sh
echo "IMASNAP: hello.sh ran"
EOF
    chmod 755 "$d/bin/hello.sh"
    {
        echo '#!/bin/sh'
        echo '# runs as root from the ext4 disk; every file read/exec here gets measured'
        echo 'set -e'
        echo 'cat /data/files/hello.txt /data/etc/config.json /data/files/empty >/dev/null'
        echo 'cat "/data/files/name with spaces.txt" >/dev/null'
        printf 'cat "/data/files/caf\303\251.txt" >/dev/null\n'
        echo '/data/bin/busybox true'
        echo '/data/bin/hello.sh'
    } > "$d/scenario.sh"
    case "$scen" in
        ima-sig)
            printf 'this file carries an RSA signature in security.ima\n' > "$d/files/signed.txt"
            printf 'this file has no security.ima\n' > "$d/files/unsigned.txt"
            printf 'this file has a sha256 hash (type 0x04) in security.ima\n' > "$d/files/hashed.txt"
            cat >> "$d/scenario.sh" <<'EOF'
cat /data/files/signed.txt /data/files/unsigned.txt /data/files/hashed.txt >/dev/null
EOF
            ;;
        violation)
            printf 'open_writers victim\n' > "$d/files/open-writers.txt"
            printf 'ToMToU victim\n' > "$d/files/tomtou.txt"
            cat >> "$d/scenario.sh" <<'EOF'
# open_writers: measure (read as root) a file that is open for write
exec 3>>/data/files/open-writers.txt
cat /data/files/open-writers.txt >/dev/null
exec 3>&-
# ToMToU: open a measured file for write while it is still open for read
exec 4</data/files/tomtou.txt
echo "appended while open for read" >> /data/files/tomtou.txt
exec 4<&-
sync
EOF
            ;;
    esac
    echo 'echo "IMASNAP: scenario done"' >> "$d/scenario.sh"
    chmod 755 "$d/scenario.sh"
}

# Signs files of the ima-sig scenario; xattrs are written into the image with
# debugfs so the host filesystem's xattr support does not matter.
sign_ima_sig_files() {
    local d=$1 keydir=$2 f
    mkdir -p "$keydir/sigs"
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 36500 \
        -subj "/CN=imasnap throwaway IMA fixture key" \
        -addext subjectKeyIdentifier=hash -addext basicConstraints=critical,CA:FALSE \
        -addext keyUsage=digitalSignature \
        -keyout "$keydir/signing-key.pem" -out "$keydir/signing-cert.pem" 2>/dev/null
    openssl x509 -in "$keydir/signing-cert.pem" -outform DER -out "$keydir/signing-cert.der"
    openssl pkey -in "$keydir/signing-key.pem" -pubout -out "$keydir/signing-key.pub.pem"
    SIGNED_FILES=(/files/signed.txt /bin/hello.sh /bin/busybox /etc/config.json)
    for f in "${SIGNED_FILES[@]}"; do
        cp "$d$f" "$keydir/sigs/tmp"
        evmctl ima_sign -n --sigfile -a sha256 --key "$keydir/signing-key.pem" "$keydir/sigs/tmp" \
            >"$keydir/sign.log" 2>&1 || { cat "$keydir/sign.log" >&2; die "evmctl ima_sign $f failed"; }
        mv "$keydir/sigs/tmp.sig" "$keydir/sigs/$(echo "$f" | tr / _).sig"
    done
    rm -f "$keydir/sigs/tmp"
    # security.ima of type IMA_XATTR_DIGEST_NG (0x04) + hash algo sha256 (4) + digest:
    # not a signature, so the ima-sig `sig` field must stay empty for it.
    { printf '\004\004'; openssl dgst -sha256 -binary "$d/files/hashed.txt"; } \
        > "$keydir/sigs/_files_hashed.txt.hash"
}

build_data_disk() {
    local scen=$1 img=$2 d=$WORK/$scen/data
    rm -rf "$d"; mkdir -p "$d"
    populate_data_dir "$scen" "$d"
    [ "$scen" = ima-sig ] && sign_ima_sig_files "$d" "$WORK/$scen/keys"
    rm -f "$img"
    # fixed UUID/hash seed and no metadata_csum_seed: reproducible image
    E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -L imasnap-data \
        -U 6f1b1a52-3c2e-4d0b-9a57-0d2b8f6d1e01 -E hash_seed=2d6c0c9e-3a51-4f61-8c7e-5b1a8a6c0f02,root_owner=0:0 \
        -d "$d" "$img" 16M >/dev/null
    if [ "$scen" = ima-sig ]; then
        local f
        for f in "${SIGNED_FILES[@]}"; do
            debugfs -w -R "ea_set -f $WORK/$scen/keys/sigs/$(echo "$f" | tr / _).sig $f security.ima" "$img" 2>/dev/null
        done
        debugfs -w -R "ea_set -f $WORK/$scen/keys/sigs/_files_hashed.txt.hash /files/hashed.txt security.ima" "$img" 2>/dev/null
        for f in "${SIGNED_FILES[@]}" /files/hashed.txt; do
            debugfs -R "ea_list $f" "$img" 2>/dev/null | grep -q 'security.ima' \
                || die "security.ima not set on $f in $img"
        done
    fi
}

# ------------------------------------------------------------------- boot ---
SWTPM_PID=
stop_swtpm() {
    if [ -n "$SWTPM_PID" ] && kill -0 "$SWTPM_PID" 2>/dev/null; then
        kill "$SWTPM_PID" 2>/dev/null || true
        wait "$SWTPM_PID" 2>/dev/null || true
    fi
    SWTPM_PID=
}
cleanup() {
    local rc=$?
    stop_swtpm
    if [ "$KEEP_WORK" = 1 ] || [ $rc -ne 0 ]; then
        [ -n "${WORK:-}" ] && log "work dir kept: $WORK"
    else
        [ -n "${WORK:-}" ] && rm -rf "$WORK"
    fi
    exit $rc
}

# The verifier's side of enrolment: before the host boots, read the public part of the
# vTPM's default AK (an EK-hierarchy primary, so the guest re-creates the same key).
enrol_ak() {
    local sd=$1 port
    port=$(( 24000 + RANDOM % 4000 ))
    swtpm socket --tpm2 --tpmstate dir="$sd/tpm" --server type=tcp,port=$port,bindaddr=127.0.0.1 \
        --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 --flags not-need-init,startup-clear \
        --log file="$sd/swtpm-enrol.log",level=1 &
    SWTPM_PID=$!
    local i=0
    until "$GUEST_IMASNAP" tpm ak --tpm "swtpm:host=127.0.0.1,port=$port" --out "$sd/enrolled-ak.pub" 2>"$sd/enrol.err"; do
        sleep 0.2; i=$((i+1))
        [ $i -lt 50 ] || { cat "$sd/enrol.err" >&2; die "AK enrolment on swtpm port $port failed"; }
    done
    stop_swtpm
    log "enrolled AK: $(cut -c1-32 "$sd/enrolled-ak.pub")..."
}

boot_scenario() {
    local scen=$1 sd=$WORK/$1 args
    args="$COMMON_ARGS $(scenario_args "$scen")"
    mkdir -p "$sd/tpm"
    build_data_disk "$scen" "$sd/data.ext4"
    truncate -s 0 "$sd/out.img"; truncate -s 8M "$sd/out.img"

    swtpm_setup --tpm2 --tpmstate "$sd/tpm" --pcr-banks sha1,sha256 --overwrite \
        --logfile "$sd/swtpm_setup.log" >/dev/null 2>&1 \
        || { cat "$sd/swtpm_setup.log" >&2 || true; die "swtpm_setup failed"; }
    if [ -n "$GUEST_IMASNAP" ]; then
        enrol_ak "$sd"
        NONCE=$(openssl rand -hex 20)
        echo "$NONCE" > "$sd/nonce.txt"
        args="$args imasnap.nonce=$NONCE"
    fi
    local sock=$sd/swtpm.sock
    rm -f "$sock"
    swtpm socket --tpm2 --tpmstate dir="$sd/tpm" --ctrl type=unixio,path="$sock" \
        --terminate --log file="$sd/swtpm.log",level=1 &
    SWTPM_PID=$!
    local i=0
    while [ ! -S "$sock" ]; do
        sleep 0.1; i=$((i+1)); [ $i -lt 100 ] || die "swtpm socket did not appear"
    done

    log "[$scen] booting: $args"
    local t0 rc=0
    t0=$(date +%s)
    timeout "$QEMU_TIMEOUT" qemu-system-x86_64 \
        -machine q35 -accel tcg -cpu max -m 512 -smp 1 \
        -display none -monitor none -serial file:"$sd/console.log" -no-reboot \
        -kernel "$VMLINUZ" -initrd "$WORK/initrd.cpio.gz" -append "$args" \
        -chardev socket,id=chrtpm,path="$sock" \
        -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-tis,tpmdev=tpm0 \
        -drive file="$sd/data.ext4",if=none,id=d0,format=raw \
        -device virtio-blk-pci,drive=d0,serial=imasnap-data \
        -drive file="$sd/out.img",if=none,id=d1,format=raw \
        -device virtio-blk-pci,drive=d1,serial=imasnap-out \
        </dev/null >"$sd/qemu.log" 2>&1 || rc=$?
    stop_swtpm
    log "[$scen] qemu exit $rc after $(( $(date +%s) - t0 )) s"
    if [ $rc -ne 0 ] || ! grep -q IMASNAP-DONE "$sd/console.log"; then
        tail -n 40 "$sd/console.log" >&2 || true
        cat "$sd/qemu.log" >&2 || true
        die "[$scen] guest did not finish (qemu rc=$rc)"
    fi
    mkdir -p "$sd/dump"
    tar -xf "$sd/out.img" -C "$sd/dump" || die "[$scen] cannot read dump tar"
    [ -s "$sd/dump/binary_runtime_measurements" ] || die "[$scen] empty binary log"
}

# ----------------------------------------------------------------- verify ---
# Independent replay (python3): template hashes, per-bank PCR replay,
# boot_aggregate.  Prints KEY=VALUE lines; exits 1 on mismatch.
replay_check() {
    python3 - "$@" <<'PY'
import hashlib, struct, sys
d = sys.argv[1]
data = open(f"{d}/binary_runtime_measurements", "rb").read()
def pcrs(alg):
    out = {}
    for line in open(f"{d}/pcrs-{alg}.txt"):
        k, v = line.split(":")
        out[int(k[4:])] = bytes.fromhex(v.strip())
    return out
P = {"sha1": pcrs("sha1"), "sha256": pcrs("sha256")}
recs, off = [], 0
while off < len(data):
    pcr, = struct.unpack_from("<I", data, off); off += 4
    dig = data[off:off+20]; off += 20
    nl, = struct.unpack_from("<I", data, off); off += 4
    name = data[off:off+nl].decode(); off += nl
    assert name != "ima", "legacy ima template not expected"
    tl, = struct.unpack_from("<I", data, off); off += 4
    tdata = data[off:off+tl]; off += tl
    fields, o = [], 0
    while o < tl:
        fl, = struct.unpack_from("<I", tdata, o); o += 4
        fields.append(tdata[o:o+fl]); o += fl
    assert o == tl, "template data does not split into fields"
    recs.append((pcr, dig, name, tdata, fields))
ok = True
viol = 0
templates = {}
sig_nonempty = 0
bufs = []
for pcr, dig, name, tdata, fields in recs:
    templates[name] = templates.get(name, 0) + 1
    if dig == bytes(20):
        viol += 1
        continue
    if hashlib.sha1(tdata).digest() != dig:
        print(f"BAD_TEMPLATE_HASH={fields[1]!r}"); ok = False
    if name in ("ima-sig", "ima-sigv2", "ima-modsig") and fields[2]:
        sig_nonempty += 1
    if name == "ima-buf":
        bufs.append(f"{fields[1].rstrip(bytes(1)).decode()}={fields[2].decode(errors='replace')}")
# replay: sha1 bank, and the sha256 bank both ways
def replay(alg, method):
    size = hashlib.new(alg).digest_size
    acc = {}
    for pcr, dig, name, tdata, fields in recs:
        cur = acc.get(pcr, bytes(size))
        if dig == bytes(20):
            ext = b"\xff" * size if method == "native" else (b"\xff" * 20).ljust(size, b"\0")
        elif method == "native":
            ext = hashlib.new(alg, tdata).digest()
        else:
            ext = dig.ljust(size, b"\0")
        acc[pcr] = hashlib.new(alg, cur + ext).digest()
    return all(P[alg][p] == v for p, v in acc.items()), sorted(acc)
s1, used = replay("sha1", "native")
s256n, _ = replay("sha256", "native")
s256p, _ = replay("sha256", "padded")
print(f"RECORDS={len(recs)}")
print("TEMPLATES=" + ",".join(f"{k}:{v}" for k, v in sorted(templates.items())))
print(f"VIOLATION_RECORDS={viol}")
print(f"SIG_NONEMPTY={sig_nonempty}")
print("IMA_BUF=" + ";".join(bufs))
print(f"PCRS_USED={','.join(map(str, used))}")
print(f"SHA1_BANK_REPLAY={'ok' if s1 else 'MISMATCH'}")
print(f"SHA256_BANK_REPLAY_NATIVE={'ok' if s256n else 'no'}")
print(f"SHA256_BANK_REPLAY_PADDED_SHA1={'ok' if s256p else 'no'}")
ok = ok and s1 and (s256n or s256p)
# boot_aggregate
pcr, dig, name, tdata, fields = recs[0]
ba_name = fields[1].rstrip(b"\0").decode()
alg, _, digest = fields[0].partition(b"\0")
alg = alg.decode().rstrip(":")
bank = P[alg]
n = 8 if alg == "sha1" else 10
calc = hashlib.new(alg, b"".join(bank[i] for i in range(n))).digest()
ba_ok = ba_name == "boot_aggregate" and calc == digest
print(f"BOOT_AGGREGATE={alg}:{digest.hex()} ({'ok' if ba_ok else 'MISMATCH'}: {alg} over PCR 0-{n-1})")
ok = ok and ba_ok
# ascii list has the same number of lines
nascii = sum(1 for _ in open(f"{d}/ascii_runtime_measurements", "rb"))
print(f"ASCII_LINES={nascii}")
ok = ok and nascii == len(recs)
sys.exit(0 if ok else 1)
PY
}

EVMCTL_RC=0
EVMCTL_FILTER=
run_evmctl() { # appends the command, its output and exit status to $RES
    local dir=$1 out; shift
    EVMCTL_RC=0
    out=$(cd "$dir" && evmctl "$@" 2>&1) || EVMCTL_RC=$?
    if [ -n "$EVMCTL_FILTER" ]; then
        out=$(grep -E "$EVMCTL_FILTER" <<<"$out" || true)
        out="(output filtered with grep -E '$EVMCTL_FILTER')"$'\n'"$out"
    fi
    printf '$ evmctl %s\n%s\n[exit status %d]\n\n' "$*" "$out" "$EVMCTL_RC" >> "$RES"
}

# Verifies the staged fixture in $2; writes $2/verification.txt.
verify_scenario() {
    local scen=$1 dir=$2 r pcrargs
    RES=$dir/verification.txt
    pcrargs=(--pcrs sha1,pcrs-sha1.txt --pcrs sha256,pcrs-sha256.txt)
    r=$(replay_check "$dir") || { echo "$r" >&2; die "[$scen] independent replay failed"; }
    { echo "# independent replay (scripts/gen-real-kernel-logs.sh, python3)"; echo "$r"; echo
      echo "# evmctl (run inside this directory)"; } > "$RES"
    run_evmctl "$dir" ima_measurement "${pcrargs[@]}" binary_runtime_measurements
    local decisive=$EVMCTL_RC
    if grep -q '^VIOLATION_RECORDS=[1-9]' <<<"$r"; then
        run_evmctl "$dir" ima_measurement --ignore-violations "${pcrargs[@]}" binary_runtime_measurements
        decisive=$EVMCTL_RC
    fi
    if [ "$scen" = ima-sig ]; then
        # -v makes evmctl print one "verification is OK" line per signature;
        # keep only the key lines (the rest is per-record PCR noise)
        EVMCTL_FILTER='^(key |Matched|Failed|errno|.*verification)'
        run_evmctl "$dir" -v ima_measurement --verify-sig --key signing-cert.der "${pcrargs[@]}" \
            binary_runtime_measurements
        EVMCTL_FILTER=
        [ $EVMCTL_RC -eq 0 ] || { cat "$RES" >&2; die "[$scen] evmctl --verify-sig failed"; }
        local nok nsig
        nok=$(grep -c 'verification is OK' "$RES" || true)
        nsig=$(sed -n 's/^SIG_NONEMPTY=//p' <<<"$r")
        [ "$nok" = "$nsig" ] && ! grep -q 'verification failed' "$RES" \
            || { cat "$RES" >&2; die "[$scen] $nok of $nsig signatures verified"; }
    fi
    [ "$decisive" -eq 0 ] || { cat "$RES" >&2; die "[$scen] evmctl ima_measurement failed"; }
    case "$scen" in
        ima-sig)   grep -q '^SIG_NONEMPTY=[1-9]' <<<"$r" || die "[$scen] no record carries a signature" ;;
        ima-buf)   grep -q '^TEMPLATES=.*ima-buf:' <<<"$r" || die "[$scen] no ima-buf record" ;;
        violation) grep -q '^VIOLATION_RECORDS=[1-9]' <<<"$r" || die "[$scen] no violation record" ;;
    esac
}

install_fixture() {
    local scen=$1 sd=$WORK/$1 dst=$OUT_BASE/$1 stage=$WORK/$1/fixture f
    rm -rf "$stage"; mkdir -p "$stage"
    for f in binary_runtime_measurements ascii_runtime_measurements pcrs-sha1.txt \
             pcrs-sha256.txt cmdline.txt kernel-release.txt violations.txt \
             binary_bios_measurements; do
        [ -e "$sd/dump/$f" ] && cp "$sd/dump/$f" "$stage/$f"
    done
    if [ -d "$sd/dump/bundle" ]; then
        cp -a "$sd/dump/bundle" "$stage/bundle"
        cp "$sd/dump/agent-bundle.json" "$sd/enrolled-ak.pub" "$sd/nonce.txt" "$stage/"
    fi
    # any per-bank lists (kernel >= 6.10) too
    for f in "$sd"/dump/*_runtime_measurements_*; do
        [ -e "$f" ] && cp "$f" "$stage/"
    done
    if [ "$scen" = ima-sig ]; then
        cp "$sd/keys/signing-key.pub.pem" "$sd/keys/signing-cert.der" "$sd/keys/signing-cert.pem" "$stage/"
    fi
    for f in binary_runtime_measurements ascii_runtime_measurements pcrs-sha1.txt pcrs-sha256.txt cmdline.txt; do
        [ -s "$stage/$f" ] || die "[$scen] fixture file $f missing"
    done
    verify_scenario "$scen" "$stage"
    local kib; kib=$(du -sk "$stage" | cut -f1)
    [ "$kib" -lt 200 ] || die "[$scen] fixture is ${kib} KiB (>= 200 KiB)"
    mkdir -p "$OUT_BASE"
    rm -rf "$dst.new"; cp -a "$stage" "$dst.new"
    rm -rf "$dst"; mv "$dst.new" "$dst"
    log "[$scen] fixture written: $dst (${kib} KiB)"
}

# ----------------------------------------------------------------- README ---
write_readme() {
    local readme=$OUT_BASE/README.md s r total
    total=$1
    {
        cat <<EOF
# Real IMA measurement logs (Debian 12 stock kernel, QEMU + swtpm)

Generated by \`scripts/gen-real-kernel-logs.sh\` (read its header for the details).
Regenerate, as root on Debian 12, from the repository root:

    scripts/gen-real-kernel-logs.sh            # all scenarios, ~$(( (total + 30) / 60 )) min
    scripts/gen-real-kernel-logs.sh ima-sig    # a single scenario

Nothing here is synthetic: each directory is what a real kernel wrote.

- Kernel: Debian \`linux-image-$KVER\` version $KPKGVER (\`uname -r\` in the guest:
  $(cat "$WORK/${SCENARIOS[0]}/dump/kernel-release.txt")), stock, not rebuilt.
- Machine: \`qemu-system-x86_64 -machine q35 -accel tcg -cpu max -m 512\`
  ($(qemu-system-x86_64 --version | head -n1)), SeaBIOS, direct \`-kernel\` boot.
- vTPM: $(swtpm --version 2>&1 | head -n1), fresh state per boot
  (\`swtpm_setup --tpm2 --pcr-banks sha1,sha256\`), \`tpm-tis\`.
- Guest: busybox-static initramfs; measured files live on an ext4 virtio disk
  (\`/data\`), because the tcb policy skips tmpfs/ramfs. PCRs were read inside
  the guest from \`/sys/class/tpm/tpm0/pcr-<alg>/<n>\` right after the lists were
  copied (the copy is retried until \`runtime_measurements_count\` is stable).
- Verified with $(evmctl --version 2>&1 | head -n1) and an independent replay in the
  script (template hashes, per-bank PCR replay, boot_aggregate).

## Files in each scenario directory

| file | content |
|---|---|
| \`binary_runtime_measurements\` | the kernel's binary list (SHA1 template digests; 6.1 has no per-bank files) |
| \`ascii_runtime_measurements\` | the kernel's ASCII list, same boot |
| \`pcrs-sha1.txt\`, \`pcrs-sha256.txt\` | PCR 0-23 of each bank, evmctl \`--pcrs\` format \`PCR-NN: <hex>\` |
| \`cmdline.txt\` | \`/proc/cmdline\` of the guest (the exact kernel arguments) |
| \`kernel-release.txt\` | \`uname -r\` in the guest |
| \`violations.txt\` | \`/sys/kernel/security/ima/violations\` |
| \`binary_bios_measurements\` | SeaBIOS TCG2 event log (PCR 0-7 history before the kernel) |
| \`verification.txt\` | output of the replay and evmctl checks run when the fixture was generated |
| \`signing-key.pub.pem\`, \`signing-cert.pem\`, \`signing-cert.der\` | ima-sig only: throwaway key that signed the files |

## Findings on this kernel

Observed in these fixtures. The replay, evmctl, signature and record-type checks
are re-run by the script on every generation; the rest was read off the logs.

- Only the classic lists exist in securityfs (no per-bank
  \`*_runtime_measurements_<alg>\` files before 6.10). Every record is in PCR 10.
- The sha1 bank is extended with the SHA1 template digest; the sha256 bank with
  SHA256 over the same template data (per-bank digests, 5.8+ behaviour), NOT
  with the zero-padded SHA1 digest (\`SHA256_BANK_REPLAY_NATIVE=ok\`,
  \`..._PADDED_SHA1=no\`). Violations extend 0xFF repeated for the bank size.
- boot_aggregate (first record, template = \`ima_template\`) is \`sha256:\` =
  SHA256(PCR0 || ... || PCR9) of the sha256 bank. SeaBIOS measurements are
  deterministic, so it is the same value in every scenario.
- Violations: template digest is 20 zero bytes; the \`d-ng\` field is
  \`sha256:\\0\` + 32 zero bytes (the \`ima_hash\` algorithm, not sha1); the
  name field is the real path. The open_writers violation record comes
  *before* the measurement of the same file; the ToMToU record comes *after*
  the (earlier) measurement of the file. evmctl 1.4 only matches the PCRs with
  \`--ignore-violations\` (without it, it replays violations as zeros).
- \`ima_policy=tcb|critical_data\` (one argument, \`|\`-separated; two separate
  \`ima_policy=tcb ima_policy=critical_data\` arguments were also tried and give
  the same records) adds exactly
  one ima-buf record, \`kernel_version\`, right after boot_aggregate. It uses
  template \`ima-buf\` although \`ima_template=ima-ng\`; \`buf\` is the release
  string without NUL and \`d-ng\` is sha256 of \`buf\`.
- ima-sig without any appraise policy (6.1 has no CONFIG_IMA_WRITE_POLICY, so
  only the built-in tcb policy is used): the \`sig\` field holds the whole
  \`security.ima\` xattr (\`03 02 <keyid> <siglen> <sig>\`, 265 bytes) for the
  signed files. Files without the xattr, and a file whose xattr is a hash
  (type 0x04, \`files/hashed.txt\`), get an empty \`sig\` field, so their ASCII
  lines end with a space (boot_aggregate included).
- File names: a space in a path is stored as \`_\` in the \`n-ng\` field itself
  (binary list too, so it is covered by the template hash):
  \`/data/files/name with spaces.txt\` is logged as
  \`/data/files/name_with_spaces.txt\`. UTF-8 bytes (\`café.txt\`) pass through raw.
- evmctl noise: for ima-sig records with a signature, plain \`ima_measurement\`
  prints \`Failed to stat: /data/...\` (it looks for the guest paths on the
  host) and still exits 0; the \`errno: ...\` line after a failed match is stale.
- Nothing in the initramfs (rootfs is tmpfs) is measured: no records for
  /init, busybox or the insmod'ed modules.

EOF
        for s in "${ALL_SCENARIOS[@]}"; do
            [ -d "$OUT_BASE/$s" ] || continue
            r=$OUT_BASE/$s/verification.txt
            echo "## Scenario \`$s\`"
            echo
            echo "Kernel arguments (\`cmdline.txt\`): \`$(cat "$OUT_BASE/$s/cmdline.txt")\`"
            echo
            echo "What the guest did: $(scenario_blurb "$s")"
            echo
            echo "Securityfs \`violations\` counter: $(cat "$OUT_BASE/$s/violations.txt");" \
                 "fixture size: $(du -sk "$OUT_BASE/$s" | cut -f1) KiB." \
                 "Verification output (also in \`$s/verification.txt\`):"
            echo
            sed 's/^/    /' "$r"
            echo
        done
        echo "Last generation (scenarios: ${SCENARIOS[*]}) took ${total} s in total," \
             "${#SCENARIOS[@]} boot(s) under TCG on a 2-core host."
    } > "$readme.new"
    mv "$readme.new" "$readme"
}

scenario_blurb() {
    local common="reads /data/files/{hello.txt,empty,name with spaces.txt,café.txt} and /data/etc/config.json as root (FILE_CHECK), execs the static /data/bin/busybox and the script /data/bin/hello.sh (BPRM_CHECK); /data/scenario.sh itself is measured too."
    case "$1" in
        ima-ng) echo "$common" ;;
        ima-sig) echo "$common In addition reads files/signed.txt (signed), files/unsigned.txt (no xattr) and files/hashed.txt (hash-type xattr). Signed with evmctl ima_sign (sha256, signature v2, RSA-2048): files/signed.txt, bin/hello.sh, bin/busybox, etc/config.json." ;;
        ima-buf) echo "$common The critical_data policy adds the ima-buf record kernel_version." ;;
        violation) echo "$common Then: holds files/open-writers.txt open for write while root reads it (open_writers violation), and appends to files/tomtou.txt while it is open for read after being measured (ToMToU violation)." ;;
    esac
}

# ------------------------------------------------------------------- main ---
ensure_packages
pick_kernel
WORK=$(mktemp -d /tmp/imasnap-real-kernel.XXXXXX)
trap cleanup EXIT
trap 'exit 130' INT TERM
build_initramfs
for s in "${SCENARIOS[@]}"; do
    boot_scenario "$s"
    install_fixture "$s"
done
TOTAL=$(( $(date +%s) - START_TS ))
write_readme "$TOTAL"
log "done in ${TOTAL} s: ${SCENARIOS[*]} -> $OUT_BASE"
