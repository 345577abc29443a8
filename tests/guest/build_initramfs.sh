#!/usr/bin/env bash
# Builds the initramfs of the guest tests from host binaries (never downloads): busybox-static
# and its applet links, mkfs.ext4, e2fsck, and for the kernel-nbd cases nbd.ko of the guest
# kernel, nbd-client and the NBD server under test; for the QEMU-disk cases (the host serves,
# QEMU's NBD client is the disk) virtio_blk and virtio_pci with the modules they need instead.
# Each binary comes with the libraries ldd lists and the dynamic loader; tests/guest/init.sh
# is /init, and a config file holds the run's nonce and case.
#
# Usage: build_initramfs.sh OUT.cpio.gz KERNEL_VERSION SERVER_KIND SERVER_BINARY NONCE [CASE]
#   SERVER_KIND: strata | nbdkit (nbdkit validates the harness; its file plugin is copied too)
#                | none (nothing serves inside the guest: the QEMU-disk cases)
#   CASE: what /init runs, kernel_nbd (default) | online_merge | full_volume | qemu_disk_write
#         | qemu_disk_verify (see tests/guest/init.sh)
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

# Copies module NAME of the guest kernel and, first, the modules it depends on (modules.dep)
# into /lib/modules, appending each once to /etc/modules.load in the order insmod needs.
modules_dir="/lib/modules/$kver"
add_module() {  # NAME
  local rel dep
  rel="$(grep -E "^([^:]*/)?$1\.ko:" "$modules_dir/modules.dep" | cut -d: -f1)"
  [ -n "$rel" ] || { echo "no module $1 in $modules_dir/modules.dep" >&2; exit 1; }
  case "$rel" in *.ko) ;; *) echo "$rel: compressed modules are not handled" >&2; exit 1 ;; esac
  grep -qx "$1" "$root/etc/modules.load" 2>/dev/null && return
  for dep in $(grep -E "^$rel:" "$modules_dir/modules.dep" | cut -d: -f2-); do
    add_module "$(basename "$dep" .ko)"
  done
  cp "$modules_dir/$rel" "$root/lib/modules/$1.ko"
  echo "$1" >>"$root/etc/modules.load"
}

add_tool mkfs.ext4
add_tool e2fsck
case "$kind" in
  none)
    add_module virtio_pci
    add_module virtio_blk ;;
  strata)
    add_tool nbd-client
    cp -L "$server_bin" "$root/usr/local/bin/strata"
    copy_libs "$server_bin" ;;
  nbdkit)
    add_tool nbd-client
    add_tool nbdkit
    plugin="$(dirname "$(nbdkit --dump-config | sed -n 's/^plugindir=//p')/x")/nbdkit-file-plugin.so"
    copy_abs "$plugin"
    copy_libs "$plugin" ;;
  *) echo "unknown server kind $kind" >&2; exit 1 ;;
esac

[ "$kind" = none ] || add_module nbd

cp "$here/init.sh" "$root/init"
chmod 755 "$root/init"
printf 'NONCE=%s\nSERVER=%s\nCASE=%s\n' "$nonce" "$kind" "$case" >"$root/etc/strata-test.conf"

(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$out"
