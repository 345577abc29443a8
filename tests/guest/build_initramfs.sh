#!/usr/bin/env bash
# Builds the initramfs for the kernel-nbd guest test from host binaries (never downloads):
# busybox-static and its applet links, nbd.ko of the guest kernel, nbd-client, mkfs.ext4,
# e2fsck, the NBD server under test, each with the libraries ldd lists and the dynamic loader,
# plus tests/guest/init.sh as /init and a config file with the run's nonce and case.
#
# Usage: build_initramfs.sh OUT.cpio.gz KERNEL_VERSION SERVER_KIND SERVER_BINARY NONCE [CASE]
#   SERVER_KIND: strata | nbdkit (nbdkit validates the harness; its file plugin is copied too)
#   CASE: what /init runs, kernel_nbd (default) | online_merge | full_volume (see tests/guest/init.sh)
set -euo pipefail
out="$1" kver="$2" kind="$3" server_bin="$4" nonce="$5" case="${6:-kernel_nbd}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(mktemp -d /tmp/strata-initramfs-XXXXXX)"
trap 'rm -rf "$root"' EXIT

mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,lib64,proc,sys,dev,tmp,run,mnt,etc,work,lib/modules}

# Copies a file to the same absolute path inside the image (following symlinks).
copy_abs() {
  mkdir -p "$root$(dirname "$1")"
  cp -L "$1" "$root$1"
}
# Copies the libraries ldd lists for $1, and the loader. ldd indents every line; the loader's
# line has no "=>", so strip leading blanks before looking at the first field.
copy_libs() {
  local line lib
  while IFS= read -r line; do
    line="${line#"${line%%[![:space:]]*}"}"
    case "$line" in
      *"=> not found"*) echo "missing library for $1: $line" >&2; exit 1 ;;
      *"=> /"*) lib="${line#*=> }"; lib="${lib%% (*}" ;;
      /*) lib="${line%% (*}" ;;
      *) continue ;;  # linux-vdso, "statically linked"
    esac
    [ -e "$root$lib" ] || copy_abs "$lib"
  done < <(ldd "$1" 2>/dev/null || true)
}
# A host tool into /usr/local/bin (not /tmp or /run: /init mounts tmpfs there).
add_tool() {
  local path
  path="$(command -v "$1")" || { echo "tool not found: $1" >&2; exit 1; }
  cp -L "$path" "$root/usr/local/bin/$(basename "${2:-$path}")"
  copy_libs "$path"
}

# busybox with its applet links, except those that would shadow the real tools copied below.
cp "$(command -v busybox)" "$root/bin/busybox"
shadowed=" nbd-client mkfs.ext4 mke2fs mkfs.ext2 e2fsck fsck fsck.ext4 init "
for applet in $(busybox --list); do
  case "$shadowed" in *" $applet "*) continue ;; esac
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done

add_tool nbd-client
add_tool mkfs.ext4
add_tool e2fsck
case "$kind" in
  strata)
    cp -L "$server_bin" "$root/usr/local/bin/strata"
    copy_libs "$server_bin" ;;
  nbdkit)
    add_tool nbdkit
    plugin="$(dirname "$(nbdkit --dump-config | sed -n 's/^plugindir=//p')/x")/nbdkit-file-plugin.so"
    copy_abs "$plugin"
    copy_libs "$plugin" ;;
  *) echo "unknown server kind $kind" >&2; exit 1 ;;
esac

ko="/lib/modules/$kver/kernel/drivers/block/nbd.ko"
[ -f "$ko" ] || { echo "no $ko (compressed modules are not handled)" >&2; exit 1; }
cp "$ko" "$root/lib/modules/nbd.ko"

cp "$here/init.sh" "$root/init"
chmod 755 "$root/init"
printf 'NONCE=%s\nSERVER=%s\nCASE=%s\n' "$nonce" "$kind" "$case" >"$root/etc/strata-test.conf"

(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$out"
