#!/usr/bin/env bash
# strata as a QEMU guest's disk through QEMU's own NBD client (issue 14), in a TCG guest (no
# KVM here; see /work/shared/GUEST-NOTES.md). The host serves a chain (a sparse raw base under
# a strata layer) with `strata serve` in the background, as the README does, on a unix socket
# given by a relative path. Boot 1 (`-drive file=nbd:unix:...,format=raw,if=virtio,cache=none`)
# makes ext4 on /dev/vda and writes; while it writes, the host takes a live snapshot
# (`strata snapshot --control`) and asserts the guest was still running and writing when the
# snapshot returned. The snapshot is exported to raw while the disk stays served: it is a
# crash-consistent ext4 (journal replayed, then e2fsck -fn clean) holding every file synced
# before it with its checksum, and not the file written after the writes ended. Boot 2
# (`-blockdev driver=nbd,... -device virtio-blk-pci`) runs e2fsck, finds every file of boot 1
# with its checksum and writes one more. Then the server stops on SIGTERM, `strata check`
# passes, and the exported disk passes e2fsck -fn and holds every file with its checksum
# (read out with debugfs: no loop mounts here).
# Pass = both guests print our random nonce with PASS, no panic/oops, every host check holds.
# Usage: guest_qemu_disk.sh STRATA_BINARY
set -euo pipefail
strata="${1:-}"
me="guest_qemu_disk.sh"
. "$(cd "$(dirname "$0")" && pwd)/guest/guest_lib.sh"
guest_timeout=150   # each boot (TCG boot 4-5 s, each boot's work 15-30 s)

guest_need_tools qemu-system-x86_64 busybox mkfs.ext4 e2fsck debugfs cpio gzip
[ -x "$strata" ] || skip "strata binary not built: ${strata:-<none given>}"
strata="$(cd "$(dirname "$strata")" && pwd)/$(basename "$strata")"
guest_setup
for m in virtio_blk virtio_pci; do
  grep -Eq "/$m\.ko:" "/lib/modules/$kver/modules.dep" 2>/dev/null || skip "no $m.ko for $kver"
done

server_pid=""
stop_server() {  # SIGTERM to the daemon this test started (its pid file), then wait for it
  local i=0
  [ -n "$server_pid" ] || return 0
  kill -TERM "$server_pid" 2>/dev/null || true
  while kill -0 "$server_pid" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 300 ] || fail "strata serve (pid $server_pid) ignored SIGTERM for 30 s"
    sleep 0.1
  done
  server_pid=""
}
trap 'rc=$?; guest_kill; stop_server; guest_cleanup; exit $rc' EXIT

cd "$work"
truncate -s 256M base.raw
"$strata" create -b base.raw -F raw vm.strata >create.log 2>&1 || { cat create.log >&2; fail "strata create"; }
# The default mode: the daemon goes to the background once it serves, data on vm.sock and
# control on vm.ctl beside the disk.
"$strata" serve --log-file "$work/serve.log" --pid-file "$work/serve.pid" vm.strata >serve.out 2>&1 \
  || { cat serve.out serve.log >&2; fail "strata serve"; }
server_pid="$(cat serve.pid)"
[ -S vm.sock ] && [ -S vm.ctl ] || fail "no vm.sock / vm.ctl after strata serve: $(cat serve.out)"

"$guest_dir/build_initramfs.sh" write.cpio.gz "$kver" none - "$nonce" qemu_disk_write \
  || fail "building the initramfs failed"
"$guest_dir/build_initramfs.sh" verify.cpio.gz "$kver" none - "$nonce" qemu_disk_verify \
  || fail "building the initramfs failed"

# The checksum lines tagged TAG of the last console, as a `sha256sum -c` list.
sums_of() {  # TAG
  guest_console | sed -n "s|^STRATA-GUEST-SUM $nonce $1 \\([0-9a-f]*\\) \\(.*\\)|\\1  \\2|p"
}
# Every file named in SUMS, read out of the ext4 image RAW with debugfs, checked against it.
check_image() {  # RAW SUMS WHAT
  local tree="$work/tree-$(basename "$1" .raw)" path
  mkdir -p "$tree"
  for path in $(cut -d' ' -f3 "$2" | cut -d/ -f1 | sort -u); do
    debugfs -R "rdump /$path $tree" "$1" >/dev/null 2>"$tree.err" || { cat "$tree.err" >&2; fail "debugfs rdump /$path of $3"; }
  done
  (cd "$tree" && sha256sum -c --quiet "$2") >&2 || fail "files of $3 differ from the guest's checksums"
}

echo "$me: boot 1: -drive file=nbd:unix:$work/vm.sock,format=raw,if=virtio,cache=none" >&2
guest_start write "$guest_timeout" write.cpio.gz \
  -drive "file=nbd:unix:$work/vm.sock,format=raw,if=virtio,cache=none"
i=0
until guest_console | grep -q "^STRATA-GUEST-WRITING $nonce"; do
  i=$((i + 1))
  kill -0 "$qemu_pid" 2>/dev/null || { guest_wait "$guest_timeout"; fail "boot 1 ended before writing"; }
  [ $i -lt 1200 ] || { show_console; fail "boot 1 printed no STRATA-GUEST-WRITING within 120 s"; }
  sleep 0.1
done
sleep 1
"$strata" snapshot --control vm.ctl mid-write >snapshot.log 2>&1 || { cat snapshot.log >&2; fail "live snapshot"; }
kill -0 "$qemu_pid" 2>/dev/null || fail "the guest was no longer running when the snapshot returned"
guest_console | grep -q "^STRATA-GUEST-WROTE $nonce" \
  && fail "the guest had finished writing before the snapshot returned"
echo "$me: live snapshot mid-write taken while the guest wrote: $(cat snapshot.log)" >&2
guest_wait "$guest_timeout"
sums_of before >sums.before
sums_of final >sums.final
[ "$(wc -l <sums.before)" -eq 101 ] || fail "boot 1 printed $(wc -l <sums.before) checksums of before/, not 101"
grep -q ' after-writes$' sums.final || fail "boot 1 printed no checksum of after-writes"

# The snapshot while the disk stays served: a served disk cannot be exported, its snapshot can.
[ -f vm@mid-write.strata ] || fail "no snapshot file vm@mid-write.strata: $(ls)"
"$strata" export vm@mid-write.strata snapshot.raw >export-snapshot.log 2>&1 \
  || { cat export-snapshot.log >&2; fail "strata export of the snapshot"; }
# Taken without fsfreeze, it is the disk as after a power cut: replay ext4's journal, then it
# must be clean.
rc=0; e2fsck -E journal_only -y snapshot.raw >fsck-snapshot-replay.log 2>&1 || rc=$?
[ $rc -le 1 ] || { cat fsck-snapshot-replay.log >&2; fail "replaying the snapshot's journal: e2fsck exit $rc"; }
e2fsck -f -n snapshot.raw >fsck-snapshot.log 2>&1 || { cat fsck-snapshot.log >&2; fail "e2fsck -fn of the snapshot"; }
check_image snapshot.raw "$work/sums.before" "the snapshot"
debugfs -R "stat /after-writes" snapshot.raw 2>&1 | grep -q "not found" \
  || fail "the snapshot holds after-writes, written after the snapshot returned"

echo "$me: boot 2: -blockdev driver=nbd,server.type=unix,server.path=$work/vm.sock -device virtio-blk-pci" >&2
guest_start verify "$guest_timeout" verify.cpio.gz \
  -blockdev "driver=nbd,server.type=unix,server.path=$work/vm.sock,node-name=strata0,cache.direct=on" \
  -device virtio-blk-pci,drive=strata0
guest_wait "$guest_timeout"
sums_of final >sums.final2
diff sums.final sums.final2 >&2 || fail "boot 2 read other checksums than boot 1 wrote"
sums_of second >sums.second
grep -q ' second/boot$' sums.second || fail "boot 2 printed no checksum of second/boot"

stop_server
grep -a " ERROR: " serve.log >&2 && fail "the server logged errors"
"$strata" check vm.strata >check.log 2>&1 || { cat check.log >&2; fail "strata check"; }
"$strata" export vm.strata final.raw >export-final.log 2>&1 || { cat export-final.log >&2; fail "strata export"; }
e2fsck -f -n final.raw >fsck-final.log 2>&1 || { cat fsck-final.log >&2; fail "e2fsck -fn of the final disk"; }
check_image final.raw "$work/sums.second" "the final disk"
# QEMU 7.2's NBD client has no multi-conn (README): one connection a boot, whatever the server
# advertises. Said, not asserted: a later QEMU may open more.
conns="$(grep -c ": opened from " serve.log || true)"
echo "$me: PASS (kernel $kver; $(wc -l <sums.second) files checked in the final disk, $(wc -l <sums.before) in the snapshot; QEMU opened $conns NBD connections in 2 boots)"
