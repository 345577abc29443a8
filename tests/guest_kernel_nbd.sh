#!/usr/bin/env bash
# The Linux kernel's nbd driver against the server, inside a TCG guest (this host's kernel has
# no nbd module and no KVM; see /work/shared/GUEST-NOTES.md). The guest serves a chain on a unix
# socket, attaches /dev/nbd0 with nbd-client, builds and fills an ext4 file system, restarts
# the server, reattaches, runs e2fsck and verifies every file's checksum, then `strata check`.
# Case online_merge instead deletes two live snapshots online (`strata delete-snapshot
# --control`, rate-limited) while a writer keeps writing into the mounted ext4, then checks
# e2fsck, every checksum, `strata list` and `strata check`. Case full_volume serves a disk on a
# small tmpfs with --on-full=pause and fills the mounted ext4 past the volume's end: the writes
# stall (paused-critical) with no I/O error in the guest until space is freed, then finish.
# The kernel client uses simple replies only and 4 KiB requests: a path no other test drives.
# Pass = the guest prints our random nonce with PASS, and no panic/oops appears in the console.
# Usage: guest_kernel_nbd.sh STRATA_BINARY [CASE]
#   CASE: kernel_nbd (default) | online_merge | full_volume (the cases of tests/guest/init.sh)
#   STRATA_TEST_SERVER=nbdkit validates the harness (kernel_nbd only)
set -euo pipefail
strata="${1:-}"
guest_case="${2:-kernel_nbd}"
kind="${STRATA_TEST_SERVER:-strata}"
me="guest_kernel_nbd.sh${2:+ $guest_case}"
. "$(cd "$(dirname "$0")" && pwd)/guest/guest_lib.sh"

# Bound of the whole guest run, per case (TCG boot 4-5 s; see tests/CMakeLists.txt timeouts).
case "$guest_case" in
  kernel_nbd) guest_timeout=180 ;;
  online_merge) guest_timeout=240
                [ "$kind" = strata ] || skip "online_merge needs the strata server, not $kind" ;;
  full_volume) guest_timeout=180
               [ "$kind" = strata ] || skip "full_volume needs the strata server, not $kind" ;;
  *) fail "unknown case $guest_case (kernel_nbd | online_merge | full_volume)" ;;
esac

guest_need_tools qemu-system-x86_64 busybox nbd-client mkfs.ext4 e2fsck cpio gzip
guest_setup
[ -f "/lib/modules/$kver/kernel/drivers/block/nbd.ko" ] || skip "no nbd.ko for $kver"
case "$kind" in
  strata) [ -x "$strata" ] || skip "strata binary not built: ${strata:-<none given>}"; server_bin="$strata" ;;
  nbdkit) command -v nbdkit >/dev/null || skip "nbdkit not installed"; server_bin="$(command -v nbdkit)" ;;
  *) skip "the guest test supports STRATA_TEST_SERVER=strata or nbdkit, not $kind" ;;
esac

"$guest_dir/build_initramfs.sh" "$work/initramfs.cpio.gz" "$kver" "$kind" "$server_bin" "$nonce" \
  "$guest_case" || fail "building the initramfs failed"

guest_start nbd "$guest_timeout" "$work/initramfs.cpio.gz"
guest_wait "$guest_timeout"
echo "$me: PASS ($kind, kernel $kver)"
