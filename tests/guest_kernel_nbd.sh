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
export PATH="/usr/bin:/usr/sbin:/bin:/sbin:$PATH"
here="$(cd "$(dirname "$0")" && pwd)"
strata="${1:-}"
guest_case="${2:-kernel_nbd}"
kind="${STRATA_TEST_SERVER:-strata}"
me="guest_kernel_nbd.sh${2:+ $guest_case}"

skip() { echo "$me: SKIP: $*" >&2; exit 77; }
fail() { echo "$me: FAIL: $*" >&2; exit 1; }

# Bound of the whole guest run, per case (TCG boot 4-5 s; see tests/CMakeLists.txt timeouts).
case "$guest_case" in
  kernel_nbd) guest_timeout=180 ;;
  online_merge) guest_timeout=240
                [ "$kind" = strata ] || skip "online_merge needs the strata server, not $kind" ;;
  full_volume) guest_timeout=180
               [ "$kind" = strata ] || skip "full_volume needs the strata server, not $kind" ;;
  *) fail "unknown case $guest_case (kernel_nbd | online_merge | full_volume)" ;;
esac

for t in qemu-system-x86_64 busybox nbd-client mkfs.ext4 e2fsck cpio gzip; do
  command -v "$t" >/dev/null 2>&1 || skip "$t not installed (scripts/install-deps.sh --with-guest)"
done
kernel="$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -1 || true)"
[ -n "$kernel" ] || skip "no /boot/vmlinuz-*-cloud-amd64 (linux-image-cloud-amd64)"
kver="${kernel#/boot/vmlinuz-}"
[ -f "/lib/modules/$kver/kernel/drivers/block/nbd.ko" ] || skip "no nbd.ko for $kver"
case "$kind" in
  strata) [ -x "$strata" ] || skip "strata binary not built: ${strata:-<none given>}"; server_bin="$strata" ;;
  nbdkit) command -v nbdkit >/dev/null || skip "nbdkit not installed"; server_bin="$(command -v nbdkit)" ;;
  *) skip "the guest test supports STRATA_TEST_SERVER=strata or nbdkit, not $kind" ;;
esac

work="$(mktemp -d /tmp/strata-guest-XXXXXX)"
qemu_pid=""
cleanup() {
  local rc=$?
  if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
    kill -KILL "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
  fi
  [ -n "${STRATA_TEST_KEEP:-}" ] || rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

nonce="$(od -An -N8 -tx8 /dev/urandom | tr -d ' \n')"
"$here/guest/build_initramfs.sh" "$work/initramfs.cpio.gz" "$kver" "$kind" "$server_bin" "$nonce" \
  "$guest_case" || fail "building the initramfs failed"

# The whole guest run is bounded: timeout, stdin from /dev/null, no network, no reboot.
rc=0
timeout "$guest_timeout" qemu-system-x86_64 -accel tcg -smp 2 -m 1024 -nic none -nographic -no-reboot \
  -kernel "$kernel" -initrd "$work/initramfs.cpio.gz" \
  -append "rdinit=/init console=ttyS0 quiet panic=-1" \
  </dev/null >"$work/console.raw" 2>&1 &
qemu_pid=$!
wait "$qemu_pid" || rc=$?
qemu_pid=""
tr -d '\r' <"$work/console.raw" >"$work/console.log"

show_console() { echo "--- guest console (last 60 lines) ---" >&2; tail -60 "$work/console.log" >&2; }
[ "$rc" -ne 124 ] || { show_console; fail "guest did not finish within $guest_timeout s"; }
if grep -Eq "Kernel panic|Oops:|BUG: |general protection fault|Call Trace:" "$work/console.log"; then
  show_console; fail "kernel panic/oops/BUG in the guest"
fi
line="$(grep -a "^STRATA-GUEST-RESULT $nonce " "$work/console.log" | tail -1 || true)"
[ -n "$line" ] || { show_console; fail "no result line with our nonce (qemu exit $rc)"; }
case "$line" in
  "STRATA-GUEST-RESULT $nonce PASS"*) grep -a "^guest: " "$work/console.log" >&2 || true
                                      echo "$me: PASS ($kind, kernel $kver)" ;;
  *) show_console; fail "guest reported: ${line#STRATA-GUEST-RESULT $nonce }" ;;
esac
