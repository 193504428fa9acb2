# guest-binary.sh - sourced: copy a host-built dynamic binary into an initramfs tree.
#
# No musl toolchain here, so the guest runs the host's glibc binary: copy it (stripped),
# every library ldd names at the same path, the loader, and the TSS TCTI modules that
# libtss2-tctildr dlopen()s at run time (ldd cannot see those).
#
#   guest_add_binary ROOT /path/to/imasnap /bin/imasnap
#
# The guest must run it with LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
# (there is no ld.so.cache in the initramfs).

guest_copy_lib() { # ROOT PATH: copy the file a library path resolves to, under its own name
    local root=$1 p=$2
    [ -e "$root$p" ] && return 0
    mkdir -p "$root$(dirname "$p")"
    cp -L "$p" "$root$p"
}

guest_add_libs_of() { # ROOT ELF
    local root=$1 elf=$2 lib
    for lib in $(LC_ALL=C ldd "$elf" | awk '/=> \//{print $3} /^\t\/.*ld-linux/{print $1}'); do
        guest_copy_lib "$root" "$lib"
    done
}

guest_add_binary() { # ROOT SRC DEST
    local root=$1 src=$2 dest=$3 tcti
    mkdir -p "$root$(dirname "$dest")"
    if command -v strip >/dev/null; then strip -o "$root$dest" "$src"; else cp "$src" "$root$dest"; fi
    chmod 755 "$root$dest"
    guest_add_libs_of "$root" "$src"
    for tcti in /usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0 /usr/lib/x86_64-linux-gnu/libtss2-tcti-swtpm.so.0; do
        [ -e "$tcti" ] || continue
        guest_copy_lib "$root" "$tcti"
        guest_add_libs_of "$root" "$tcti"
    done
}
