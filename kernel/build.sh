#!/usr/bin/env bash
# kernel/build.sh - build the imasnap test kernel (Linux 6.12 + kernel/patches).
#
# Fetches linux-source-6.12 with apt, applies kernel/patches/*.patch, configures
# tinyconfig + kernel/config/imasnap.config, builds bzImage and prints its path on
# stdout. Results are cached under ${IMASNAP_KERNEL_CACHE:-/var/cache/imasnap/kernel}/<key>/
# where <key> = sha256 over the patches, the config fragment, this script's build
# recipe version, the source package version and the feature switch: a repeated run
# with the same inputs prints the cached bzImage at once.
#
# Usage (as root on Debian 12; missing build packages are apt-get installed):
#   kernel/build.sh                    # build (or reuse) the kernel with both features:
#                                      # CONFIG_IMA_LOG_SNAPSHOT and CONFIG_IMA_STAGING
#   kernel/build.sh --without-feature  # CONFIG_IMA_LOG_SNAPSHOT=n (staging only; own key)
#   kernel/build.sh --without-staging  # CONFIG_IMA_STAGING=n (snapshots only; own key)
#   kernel/build.sh --without-feature --compile-only
#   kernel/build.sh --without-staging --compile-only
#                                      # only security/integrity/ (W=1), no bzImage: the
#                                      # cheap CI checks that each option builds alone
#   kernel/build.sh --check            # checkpatch.pl --strict over the series, no build
#   kernel/build.sh --debug            # the SMP debug kernel: config/imasnap.config plus
#                                      # config/debug.config (PREEMPT, lockdep, PROVE_RCU,
#                                      # KASAN, DEBUG_LIST, KUnit), its own cache key
# Environment:
#   IMASNAP_KERNEL_CACHE  cache root (default /var/cache/imasnap/kernel)
#   JOBS                  make -j (default 2)
#   VERBOSE=1             show build output
# The source tree and the object directories stay in <cache>/tree and <cache>/obj-*,
# so a changed patch only rebuilds what it touches.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${IMASNAP_KERNEL_CACHE:-/var/cache/imasnap/kernel}
JOBS=${JOBS:-2}
VERBOSE=${VERBOSE:-0}
SRC_PKG=linux-source-6.12
RECIPE=2   # bump when the build steps below change what is produced
FEATURE=on      # on: both options; off: no snapshots; nostaging: no staging; none
CHECK=0
COMPILE_ONLY=0
FLAVOUR=

log() { printf '[kernel/build] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for a in "$@"; do
    case "$a" in
        --without-feature) [ "$FEATURE" = nostaging ] && FEATURE=none || FEATURE=off ;;
        --without-staging) [ "$FEATURE" = off ] && FEATURE=none || FEATURE=nostaging ;;
        --check) CHECK=1 ;;
        --compile-only) COMPILE_ONLY=1 ;;
        --debug) FLAVOUR=debug ;;
        -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $a" ;;
    esac
done

PATCHES=("$HERE"/patches/*.patch)
[ -e "${PATCHES[0]}" ] || die "no patches in $HERE/patches"
FRAGMENT=$HERE/config/imasnap.config
[ -r "$FRAGMENT" ] || die "missing $FRAGMENT"
FRAGMENTS=("$FRAGMENT")
# The default kernel also mounts `imasnap mount`'s FUSE view in the guest; the
# single-option and debug kernels do not need it (and keep their cache keys).
if [ "$FEATURE" = on ] && [ -z "$FLAVOUR" ]; then
    FRAGMENTS+=("$HERE/config/view.config")
fi
if [ "$FLAVOUR" = debug ]; then
    [ "$FEATURE" = on ] || die "--debug builds the kernel with the feature"
    FRAGMENTS+=("$HERE/config/debug.config")
fi

# Runs a command quietly; on failure shows the end of its output.
quiet() {
    local logf=$1; shift
    if [ "$VERBOSE" = 1 ]; then "$@" 2>&1 | tee -a "$logf" >&2; return "${PIPESTATUS[0]}"; fi
    if ! "$@" >>"$logf" 2>&1; then
        log "command failed: $*"; tail -n 40 "$logf" >&2; return 1
    fi
}

ensure_packages() {
    local pkgs=(build-essential flex bison bc libelf-dev libssl-dev xz-utils perl python3)
    # checkpatch's SPDX check runs scripts/spdxcheck.py, which needs these
    [ "$CHECK" = 1 ] && pkgs+=(python3-ply python3-git)
    local missing=() p
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        [ "$(id -u)" = 0 ] || die "missing packages ${missing[*]} (run as root to install them)"
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=900 update -qq >/dev/null
        apt-get -o DPkg::Lock::Timeout=900 install -y -qq "${missing[@]}" >/dev/null
    fi
}

# The version apt would download, without downloading.
source_version() {
    local v
    v=$(apt-cache policy "$SRC_PKG" 2>/dev/null | sed -n 's/^ *Candidate: //p')
    if [ -z "$v" ] || [ "$v" = "(none)" ]; then
        [ "$(id -u)" = 0 ] || die "$SRC_PKG unknown to apt"
        apt-get -o DPkg::Lock::Timeout=900 update -qq >/dev/null
        v=$(apt-cache policy "$SRC_PKG" | sed -n 's/^ *Candidate: //p')
    fi
    [ -n "$v" ] && [ "$v" != "(none)" ] || die "apt has no $SRC_PKG"
    echo "$v"
}

# Unpacks the source once per version into $TREE (pristine + applied series).
fetch_source() {
    local ver=$1 dl=$CACHE/src deb
    TREE=$CACHE/tree/$ver/linux
    [ -f "$TREE/Makefile" ] && return 0
    mkdir -p "$dl" "$CACHE/tree/$ver"
    deb=$(ls "$dl"/"${SRC_PKG}"_"${ver//:/%3a}"_all.deb 2>/dev/null | head -n1 || true)
    if [ -z "$deb" ]; then
        log "downloading $SRC_PKG $ver"
        (cd "$dl" && apt-get download -q "$SRC_PKG=$ver" >/dev/null 2>"$dl/download.log") \
            || { cat "$dl/download.log" >&2; die "apt-get download failed"; }
        deb=$(ls "$dl"/"${SRC_PKG}"_*_all.deb | head -n1)
    fi
    log "unpacking $(basename "$deb")"
    rm -rf "$CACHE/tree/$ver/deb" "$TREE.tmp"
    dpkg-deb -x "$deb" "$CACHE/tree/$ver/deb"
    mkdir -p "$TREE.tmp"
    tar -xJf "$CACHE/tree/$ver/deb/usr/src/$SRC_PKG.tar.xz" -C "$TREE.tmp" --strip-components=1
    rm -rf "$CACHE/tree/$ver/deb"
    mv "$TREE.tmp" "$TREE"
}

# Puts back, from the source package, every file the given patches touch.
restore_pristine() {
    local files f tmp deb
    log "restoring the files of the previous series from the source package"
    files=$(sed -n 's|^+++ b/||p; s|^--- a/||p' "$@" | sort -u)
    deb=$(ls "$CACHE"/src/"${SRC_PKG}"_*_all.deb | head -n1)
    tmp=$(mktemp -d)
    # shellcheck disable=SC2086
    dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/src/$SRC_PKG.tar.xz" \
        | tar -xJ -C "$tmp" --strip-components=1 --wildcards $(for f in $files; do echo "*/$f"; done) 2>/dev/null || true
    for f in $files; do
        if [ -e "$tmp/$f" ]; then cp "$tmp/$f" "$TREE/$f"; else rm -f "$TREE/$f"; fi
        rm -f "$TREE/$f.orig" "$TREE/$f.rej"
    done
    rm -rf "$tmp"
}

# Brings $TREE to "pristine + this series": reverts the series applied last time
# (kept in $TREE/.imasnap-applied/, reverted patch by patch in reverse order).
apply_series() {
    local applied=$TREE/.imasnap-applied p i
    if [ -d "$applied" ] && [ "$(cat "$applied"/*.patch 2>/dev/null | sha256sum)" = "$(cat "${PATCHES[@]}" | sha256sum)" ]; then
        return 0
    fi
    if [ -d "$applied" ]; then
        local old=("$applied"/*.patch) ok=1
        for (( i=${#old[@]}-1; i>=0; i-- )); do
            [ -e "${old[$i]}" ] || continue
            if (cd "$TREE" && patch -p1 -R -s --dry-run < "${old[$i]}" >/dev/null 2>&1); then
                (cd "$TREE" && patch -p1 -R -s < "${old[$i]}" >/dev/null)
            else
                ok=0; break
            fi
        done
        [ "$ok" = 1 ] || restore_pristine "${old[@]}"
        rm -rf "$applied"
    fi
    rm -rf "$applied.tmp"; mkdir -p "$applied.tmp"
    for p in "${PATCHES[@]}"; do
        (cd "$TREE" && patch -p1 -s -f -N < "$p" >/dev/null) || die "patch $(basename "$p") does not apply"
        cp "$p" "$applied.tmp/"
    done
    mv "$applied.tmp" "$applied"
}

run_check() {
    local p out rc=0
    for p in "${PATCHES[@]}"; do
        # /usr/bin first: spdxcheck.py must find the Debian python3 with ply and git
        out=$(cd "$TREE" && PATH=/usr/bin:$PATH perl scripts/checkpatch.pl --strict -q "$p" 2>&1) || rc=1
        printf '%s: %s\n' "$(basename "$p")" "$( [ -z "$out" ] && echo clean || echo "$out" | grep -cE '^(ERROR|WARNING|CHECK)' | sed 's/$/ issue(s)/')"
        [ -z "$out" ] || printf '%s\n' "$out"
    done
    return $rc
}

ensure_packages
VER=$(source_version)
KEY=$( { echo "recipe=$RECIPE feature=$FEATURE compile_only=$COMPILE_ONLY pkg=$SRC_PKG=$VER${FLAVOUR:+ flavour=$FLAVOUR}"; cat "${FRAGMENTS[@]}" "${PATCHES[@]}"; } \
       | sha256sum | cut -c1-32)
OUT=$CACHE/$KEY

if [ "$CHECK" = 1 ]; then
    mkdir -p "$CACHE"
    fetch_source "$VER"
    run_check
    exit $?
fi

if [ "$COMPILE_ONLY" = 1 ] && [ -e "$OUT/compiled" ]; then
    log "cached: security/integrity/ compiled ($FEATURE): $OUT"
    exit 0
fi
if [ "$COMPILE_ONLY" = 0 ] && [ -s "$OUT/bzImage" ]; then
    log "cached: $OUT ($(cat "$OUT/info" 2>/dev/null | tr '\n' ' '))"
    echo "$OUT/bzImage"
    exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
START=$(date +%s)
fetch_source "$VER"
apply_series
OBJ=$CACHE/obj-$FEATURE${FLAVOUR:+-$FLAVOUR}
[ "$COMPILE_ONLY" = 1 ] && OBJ=$CACHE/obj-$FEATURE-compile
mkdir -p "$OBJ"
LOG=$OBJ/build.log
: > "$LOG"
frag=$(mktemp)
if [ "$FEATURE" != on ]; then
    grep -v '^CONFIG_IMA_LOG_SNAPSHOT=\|^CONFIG_IMA_STAGING=' "$FRAGMENT" > "$frag"
    case "$FEATURE" in
        off) printf '# CONFIG_IMA_LOG_SNAPSHOT is not set\nCONFIG_IMA_STAGING=y\n' ;;
        nostaging) printf 'CONFIG_IMA_LOG_SNAPSHOT=y\n# CONFIG_IMA_STAGING is not set\n' ;;
        none) printf '# CONFIG_IMA_LOG_SNAPSHOT is not set\n# CONFIG_IMA_STAGING is not set\n' ;;
    esac >> "$frag"
else
    cat "${FRAGMENTS[@]}" > "$frag"
fi
log "configuring ($FEATURE${FLAVOUR:+, $FLAVOUR})"
quiet "$LOG" make -C "$TREE" O="$OBJ" tinyconfig
quiet "$LOG" "$TREE/scripts/kconfig/merge_config.sh" -m -O "$OBJ" "$OBJ/.config" "$frag"
quiet "$LOG" make -C "$TREE" O="$OBJ" olddefconfig
for s in $(grep -o '^CONFIG_[A-Z0-9_]*=y' "$frag"); do
    grep -qx "$s" "$OBJ/.config" || die "config: $s did not stick (see $OBJ/.config)"
done
for s in $(sed -n 's/^# \(CONFIG_[A-Z0-9_]*\) is not set$/\1/p' "$frag"); do
    if grep -q "^$s=y" "$OBJ/.config"; then die "config: $s still set"; fi
done
rm -f "$frag"
if [ "$COMPILE_ONLY" = 1 ]; then
    # Everything the series touches lives in security/integrity/: compiling that
    # directory (W=1) proves the #ifdef paths build, in a fraction of a full build.
    log "compiling security/integrity/ with W=1, -j$JOBS (log: $LOG)"
    quiet "$LOG" make -C "$TREE" O="$OBJ" -j"$JOBS" W=1 security/integrity/
    if grep -E 'security/integrity/.*(warning|error):' "$LOG" >&2; then die "warnings in security/integrity/"; fi
    # no link here: a call left to a function of the other option would only fail at
    # vmlinux link time, so every ima_* symbol the objects use must be defined by them
    # (or by the architecture: the kexec buffer hand-over)
    missing=$(comm -23 <(nm -u "$OBJ"/security/integrity/ima/*.o | awk '$2 ~ /^ima_/ {print $2}' | sort -u) \
                       <( { nm --defined-only "$OBJ"/security/integrity/ima/*.o "$OBJ"/security/integrity/*.o | awk '{print $3}'
                            printf '%s\n' ima_get_kexec_buffer ima_free_kexec_buffer; } | sort -u))
    [ -z "$missing" ] || die "security/integrity/ima/ uses undefined symbols: $missing"
    mkdir -p "$OUT"
    echo "feature=$FEATURE seconds=$(( $(date +%s) - START ))" > "$OUT/compiled"
    log "security/integrity/ compiles ($FEATURE) in $(( $(date +%s) - START ))s"
    exit 0
fi
log "building bzImage with -j$JOBS (log: $LOG)"
quiet "$LOG" make -C "$TREE" O="$OBJ" -j"$JOBS" bzImage
mkdir -p "$OUT.tmp"
cp "$OBJ/arch/x86/boot/bzImage" "$OUT.tmp/bzImage"
cp "$OBJ/.config" "$OUT.tmp/config"
SECS=$(( $(date +%s) - START ))
printf 'source=%s=%s\nfeature=%s%s\nbuild_seconds=%s\nrelease=%s\n' "$SRC_PKG" "$VER" "$FEATURE" "${FLAVOUR:+ $FLAVOUR}" "$SECS" \
    "$(cat "$OBJ/include/config/kernel.release" 2>/dev/null)" > "$OUT.tmp/info"
rm -rf "$OUT"; mv "$OUT.tmp" "$OUT"
log "built in ${SECS}s: $OUT"
echo "$OUT/bzImage"
