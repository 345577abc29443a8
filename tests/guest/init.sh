#!/bin/sh
# /init of the kernel-nbd guest (see tests/guest_kernel_nbd.sh). Serves a chain from inside the
# guest on a unix socket and attaches the kernel's nbd driver to it (simple replies only, the
# path QEMU-less users hit), then runs the case named by CASE in /etc/strata-test.conf:
#   kernel_nbd    makes and uses an ext4 file system, takes a live snapshot of it while mounted
#                 (fsfreeze around `strata snapshot --control`), changes files, checks the
#                 snapshot through its @NAME export on /dev/nbd1, restarts the server and
#                 checks the files, then runs `strata check`.
#   online_merge  fills ext4, takes live snapshots s1 and s2 with more files between, then
#                 deletes s2 and s1 online (`strata delete-snapshot --control`, rate-limited)
#                 while a background writer keeps adding files and overwriting blocks that the
#                 deleted snapshots hold; then e2fsck, every checksum after a fresh attach,
#                 `strata list` (no snapshot left, one layer on the base) and `strata check`.
#   full_volume   serves a disk on a 128 MiB tmpfs with --on-full=pause, fills the ext4 on it
#                 past the volume's end: the writes stall (stats says paused-critical, no I/O
#                 error reaches the kernel, the file system stays read-write) until the test
#                 deletes a ballast file, then finish; e2fsck and the checksum after a fresh
#                 attach, then `strata check`.
# The QEMU-disk cases serve nothing inside: the host serves the disk and QEMU's own NBD client
# is the guest's virtio disk /dev/vda (tests/guest_qemu_disk.sh):
#   qemu_disk_write   makes ext4 on /dev/vda, writes before/ and syncs, prints its checksums,
#                     prints STRATA-GUEST-WRITING (the host takes a live snapshot now) and keeps
#                     writing during/ for 10 s, prints STRATA-GUEST-WROTE, writes after-writes,
#                     prints every file's checksum (tag final) and runs e2fsck -fn.
#   qemu_disk_verify  e2fsck -fn of /dev/vda, prints every file's checksum (tag final), then
#                     writes second-boot and prints its checksum (tag second).
# A checksum line is STRATA-GUEST-SUM <nonce> <tag> <sha256> <path under the file system>.
# Prints one result line with the host's nonce:
#   STRATA-GUEST-RESULT <nonce> PASS|FAIL <reason>
# and powers off. Every wait is bounded; the host also bounds the whole guest.
export PATH=/usr/local/bin:/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
. /etc/strata-test.conf

result() {
  echo "STRATA-GUEST-RESULT $NONCE $1 $2"
  sync
  poweroff -f
  sleep 10
}
step() { echo "guest: [$(cut -d' ' -f1 /proc/uptime)] $*"; }

W=/work
SOCK=$W/disk.sock
SERVER_PID=

start_server() {
  rm -f $SOCK
  case "$SERVER" in
    strata) strata serve --foreground --socket $SOCK --log-level=info $W/disk.strata >>$W/server.log 2>&1 & ;;
    nbdkit) nbdkit --foreground --unix $SOCK file file=$W/disk.raw >>$W/server.log 2>&1 & ;;
  esac
  SERVER_PID=$!
  i=0
  while [ ! -S $SOCK ]; do
    i=$((i + 1))
    [ $i -lt 100 ] || { cat $W/server.log; result FAIL "server did not create its socket"; }
    kill -0 $SERVER_PID 2>/dev/null || { cat $W/server.log; result FAIL "server exited at start"; }
    sleep 0.1
  done
}
stop_server() {
  kill -TERM $SERVER_PID
  i=0
  while kill -0 $SERVER_PID 2>/dev/null; do
    i=$((i + 1))
    [ $i -lt 200 ] || { cat $W/server.log; result FAIL "server ignored SIGTERM"; }
    sleep 0.1
  done
  wait $SERVER_PID
  rc=$?
  [ $rc -eq 0 ] || { cat $W/server.log; result FAIL "server exit status $rc after SIGTERM"; }
}
attach() {  # [DEVICE [nbd-client options...]] (default nbd0, the default export)
  dev=${1:-nbd0}
  [ $# -gt 0 ] && shift
  nbd-client -unix $SOCK /dev/$dev -b 4096 -t ${NBD_TIMEOUT:-10} "$@" || result FAIL "nbd-client attach $dev"
  i=0
  while [ "$(cat /sys/block/$dev/size)" = 0 ]; do
    i=$((i + 1)); [ $i -lt 100 ] || result FAIL "$dev has size 0 after attach"; sleep 0.1
  done
}
detach() {  # [DEVICE]
  dev=${1:-nbd0}
  nbd-client -d /dev/$dev || result FAIL "nbd-client -d $dev"
  i=0
  while [ "$(cat /sys/block/$dev/size)" != 0 ]; do
    i=$((i + 1)); [ $i -lt 100 ] || result FAIL "$dev still attached after -d"; sleep 0.1
  done
}

nbd_setup() {
  step "insmod nbd"
  insmod /lib/modules/nbd.ko nbds_max=2 || result FAIL "insmod nbd.ko"
  ip link set lo up

  step "create chain ($SERVER)"
  # A sparse 256 MiB raw base under an active layer: the kernel reads base holes through the
  # chain and every write lands in the layer.
  dd if=/dev/zero of=$W/base.raw bs=1M count=0 seek=256 2>/dev/null
  case "$SERVER" in
    strata) strata create -b $W/base.raw -F raw $W/disk.strata >$W/create.log 2>&1 \
              || { cat $W/create.log; result FAIL "strata create"; } ;;
    nbdkit) cp $W/base.raw $W/disk.raw ;;
  esac
}

CTL=$W/disk.ctl
CASE=${CASE:-kernel_nbd}

# sha256sum lines of every file under PATH... (default: the whole file system), from /mnt.
sums() {  # OUT [PATH...]
  out=$1; shift
  [ $# -gt 0 ] || set -- .
  (cd /mnt && find "$@" -type f | sort | xargs sha256sum) >$out
}
# COUNT small files DIR/small0.. of random bytes, the i-th FIRST + i * STEP bytes long.
write_smalls() {  # DIR COUNT FIRST STEP
  mkdir -p $1
  i=0
  while [ $i -lt $2 ]; do
    dd if=/dev/urandom of=$1/small$i bs=$(($3 + i * $4)) count=1 2>/dev/null \
      || result FAIL "write $1/small$i"
    i=$((i + 1))
  done
}
# The "snapshot before an upgrade" workflow on a mounted file system: freeze it (ext4 flushes
# and checkpoints its journal, so the snapshot is a clean file system), take a live snapshot
# through the control socket, thaw.
live_snapshot() {  # NAME
  fsfreeze --freeze /mnt || result FAIL "fsfreeze --freeze"
  strata snapshot --control $CTL $1 >$W/snapshot-$1.log 2>&1
  rc=$?
  fsfreeze --unfreeze /mnt || result FAIL "fsfreeze --unfreeze"
  [ $rc -eq 0 ] || { cat $W/snapshot-$1.log; result FAIL "strata snapshot --control $1"; }
  cat $W/snapshot-$1.log
}

case_kernel_nbd() {
  step "write files"
  mkdir -p /mnt/dir/sub
  dd if=/dev/urandom of=/mnt/big bs=1M count=24 2>/dev/null || result FAIL "write big"
  write_smalls /mnt/dir/sub 200 512 37
  dd if=/dev/urandom of=/mnt/dir/trimmed bs=1M count=4 2>/dev/null
  sync
  rm /mnt/dir/trimmed
  fstrim /mnt 2>/dev/null || step "fstrim not available (ignored)"
  sums $W/sums
  [ "$(wc -l <$W/sums)" -ge 201 ] || result FAIL "checksum list too short"
  sync

  if [ "$SERVER" = strata ]; then
    # Take the snapshot, then let the "upgrade" change files.
    step "live snapshot of the mounted file system"
    live_snapshot before-upgrade
    dd if=/dev/urandom of=/mnt/big bs=1M count=24 conv=notrunc 2>/dev/null || result FAIL "upgrade big"
    rm -r /mnt/dir/sub
    dd if=/dev/urandom of=/mnt/new bs=1M count=8 2>/dev/null || result FAIL "upgrade new"
    sync
    step "the snapshot, attached as /dev/nbd1 beside the running disk"
    attach nbd1 -N @before-upgrade
    e2fsck -f -n /dev/nbd1 >$W/fsck-snapshot.log 2>&1 \
      || { cat $W/fsck-snapshot.log; result FAIL "e2fsck of the snapshot found errors"; }
    mkdir -p /snap
    mount -t ext4 -o ro /dev/nbd1 /snap || result FAIL "mount the snapshot"
    (cd /snap && sha256sum -c -s $W/sums) || result FAIL "the snapshot lost files written before it"
    [ -e /snap/new ] && result FAIL "the snapshot holds a file written after it"
    umount /snap
    detach nbd1
    sums $W/sums
  fi
  umount /mnt || result FAIL "umount"
  detach
  stop_server

  step "restart + verify"
  start_server
  attach
  e2fsck -f -n /dev/nbd0 >$W/fsck.log 2>&1 || { cat $W/fsck.log; result FAIL "e2fsck found errors"; }
  mount -t ext4 -o ro /dev/nbd0 /mnt || result FAIL "mount after restart"
  (cd /mnt && sha256sum -c -s $W/sums) || result FAIL "file checksums differ after restart"
  umount /mnt
  detach
  stop_server
}

# --- online_merge ------------------------------------------------------------------------------
RATE=4M          # --rate-limit of each deletion: ~24 MiB of s2 and ~40 MiB of s1 are copied
                 # up, so the copies take ~6 and ~10 s and overlap many writer rounds
WRITER_PID=

# Until $W/writer.stop exists: a file under /mnt/live (32-256 KiB; new ones for 300 rounds,
# then rewritten, so at most ~45 MiB), 64 KiB overwritten in place inside /mnt/big (written
# before s1, so its blocks sit in the snapshots being deleted), sync; $W/writer.count counts
# finished rounds, $W/writer.log their uptimes. A failure leaves $W/writer.failed (a background
# shell must not call result).
WRITER_FILES=300
writer() {
  n=0
  while [ ! -e $W/writer.stop ]; do
    f=live/f$((n % WRITER_FILES))
    dd if=/dev/urandom of=/mnt/$f bs=32k count=$((1 + n % 8)) 2>/dev/null \
      || { echo "write $f in round $n" >$W/writer.failed; return; }
    dd if=/dev/urandom of=/mnt/big bs=64k count=1 seek=$(((n * 37) % 384)) conv=notrunc \
      2>/dev/null || { echo "overwrite big in round $n" >$W/writer.failed; return; }
    sync
    n=$((n + 1))
    echo $n >$W/writer.count
    echo "$n $(cut -d' ' -f1 /proc/uptime)" >>$W/writer.log
  done
}
writer_count() { cat $W/writer.count 2>/dev/null || echo 0; }
# The merge object of `strata list --control --output=json`, on one line ("" when null).
merge_state() {
  strata list --control $CTL --output=json >$W/list.json 2>&1 || { cat $W/list.json; return 1; }
  tr -d '\n' <$W/list.json | sed -n 's/.*"merge": *{\([^}]*\)}.*/\1/p'
}
# Deletes snapshot NAME online with the waiting form of the command, rate-limited, while the
# writer runs; polls `strata list` meanwhile and wants to see the job running, the writer to
# finish rounds during it, then exit 0 and the job done without error.
delete_online() {  # NAME
  kill -0 $WRITER_PID 2>/dev/null || result FAIL "the writer is not running before deleting $1"
  before=$(writer_count)
  t0=$(date +%s)
  echo "start $1 $(cut -d' ' -f1 /proc/uptime)" >>$W/writer.log
  timeout 120 strata delete-snapshot --control $CTL --rate-limit $RATE $1 >$W/delete-$1.log 2>&1 &
  dpid=$!
  seen_running=
  i=0
  while kill -0 $dpid 2>/dev/null; do
    m=$(merge_state) || result FAIL "strata list --control during the deletion of $1"
    case "$m" in
      *'"state": "running"'*) case "$m" in *"\"snapshot\": \"$1\""*) seen_running=1 ;; esac ;;
    esac
    i=$((i + 1))
    [ $i -lt 1200 ] || { kill $dpid; result FAIL "delete-snapshot $1 still running after 4 min of polls"; }
    sleep 0.2
  done
  wait $dpid
  rc=$?
  t1=$(date +%s)
  echo "end $1 $(cut -d' ' -f1 /proc/uptime)" >>$W/writer.log
  after=$(writer_count)
  cat $W/delete-$1.log
  [ $rc -eq 0 ] || { tail -20 $W/server.log; result FAIL "delete-snapshot --control $1 exit $rc"; }
  [ -f $W/writer.failed ] && result FAIL "writer during the deletion of $1: $(cat $W/writer.failed)"
  m=$(merge_state) || result FAIL "strata list --control after deleting $1"
  case "$m" in *'"state": "done"'*) ;; *) result FAIL "merge of $1 not done after the command: $m" ;; esac
  case "$m" in *"\"snapshot\": \"$1\""*) ;; *) result FAIL "merge field names another job: $m" ;; esac
  case "$m" in *'"error": null'*) ;; *) result FAIL "merge of $1 reports an error: $m" ;; esac
  [ -n "$seen_running" ] || result FAIL "strata list never showed the deletion of $1 running"
  [ "$after" -gt "$before" ] || result FAIL "the writer finished no round during the deletion of $1"
  gap=$(awk -v job=$1 '$1 == "start" && $2 == job { on = 1; last = $3; next }
    on && $1 == "end" && $2 == job { if ($3 - last > max) max = $3 - last; on = 0; next }
    on && NF == 2 { if ($2 - last > max) max = $2 - last; last = $2 }
    END { printf "%.1f", max }' $W/writer.log)
  step "deleted $1 in $((t1 - t0)) s while the writer finished $((after - before)) rounds (longest gap $gap s)"
}

case_online_merge() {
  [ "$SERVER" = strata ] || result FAIL "online_merge needs SERVER=strata"
  step "write files, snapshot s1 live"
  mkdir -p /mnt/a /mnt/b /mnt/live
  dd if=/dev/urandom of=/mnt/big bs=1M count=24 2>/dev/null || result FAIL "write big"
  write_smalls /mnt/a 100 512 53
  sync
  live_snapshot s1

  step "more files, snapshot s2 live"
  dd if=/dev/urandom of=/mnt/b/mid bs=1M count=12 2>/dev/null || result FAIL "write b/mid"
  write_smalls /mnt/b 100 700 41
  # s2 holds some of big's blocks too: the first 4 MiB, rewritten
  dd if=/dev/urandom of=/mnt/big bs=1M count=4 conv=notrunc 2>/dev/null || result FAIL "rewrite big"
  sync
  sums $W/sums.fixed a b   # files nothing touches from here on
  [ "$(wc -l <$W/sums.fixed)" -eq 201 ] || result FAIL "checksum list of a and b is not 201 lines"
  live_snapshot s2
  strata list --control $CTL

  step "writer running; delete s2, then s1, online (--rate-limit $RATE)"
  rm -f $W/writer.stop $W/writer.failed $W/writer.count
  writer &
  WRITER_PID=$!
  sleep 1
  delete_online s2
  delete_online s1

  step "stop the writer ($(writer_count) rounds), sync, umount"
  touch $W/writer.stop
  i=0
  while kill -0 $WRITER_PID 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 300 ] || result FAIL "the writer did not stop within 30 s"; sleep 0.1
  done
  wait $WRITER_PID
  [ -f $W/writer.failed ] && result FAIL "writer: $(cat $W/writer.failed)"
  [ "$(writer_count)" -ge 3 ] || result FAIL "the writer finished only $(writer_count) rounds"
  sums $W/sums.live big live
  n=$(writer_count); [ $n -le $WRITER_FILES ] || n=$WRITER_FILES
  [ "$(wc -l <$W/sums.live)" -eq $((n + 1)) ] || result FAIL "checksum list of live/ and big is short"
  sync
  umount /mnt || result FAIL "umount"
  detach   # and attach again: nothing below comes from the guest's caches

  step "fresh attach: e2fsck -fn, every checksum"
  attach
  e2fsck -f -n /dev/nbd0 >$W/fsck.log 2>&1 || { cat $W/fsck.log; result FAIL "e2fsck found errors"; }
  mount -t ext4 -o ro /dev/nbd0 /mnt || result FAIL "mount after the deletions"
  (cd /mnt && sha256sum -c -s $W/sums.fixed) || result FAIL "files written before s2 differ after the deletions"
  (cd /mnt && sha256sum -c -s $W/sums.live) || result FAIL "files written during the deletions differ"
  umount /mnt

  step "strata list: no snapshot left, one layer on the base"
  strata list --control $CTL || result FAIL "strata list --control"
  strata list --control $CTL --output=json >$W/list.json 2>&1 || { cat $W/list.json; result FAIL "strata list --output=json"; }
  layers=$(tr -d '\n' <$W/list.json | sed 's/"merge": *[{n].*//')
  n=$(echo "$layers" | grep -o '"position": *[0-9]*' | wc -l)
  [ "$n" -eq 2 ] || result FAIL "strata list shows $n layers, not the active layer on the base"
  echo "$layers" | grep -q '"snapshot": *"' && result FAIL "strata list still shows a snapshot"
  echo "$layers" | grep -q '"state": *"active"' || result FAIL "strata list shows no active layer"
  echo "$layers" | grep -q '"state": *"raw base"' || result FAIL "strata list shows no raw base"
  left=$(ls $W | grep '^disk@' || true)
  [ -z "$left" ] || result FAIL "files of the deleted snapshots remain: $left"
  detach
  stop_server
}

# --- full_volume -------------------------------------------------------------------------------
VOL=/vol
# dmesg lines that mean the guest saw the full volume as errors, not as a stall.
io_errors() { dmesg | grep -E "I/O error|EXT4-fs (error|warning)|Remounting filesystem read-only|Buffer I/O" || true; }

case_full_volume() {
  [ "$SERVER" = strata ] || result FAIL "full_volume needs SERVER=strata"
  umount /mnt || result FAIL "umount"
  detach
  stop_server
  step "a disk on a 128 MiB volume with a 72 MiB ballast file, served with --on-full=pause"
  mkdir -p $VOL
  mount -t tmpfs -o size=128m tmpfs $VOL || result FAIL "mount the small volume"
  dd if=/dev/zero of=$VOL/ballast bs=1M count=72 2>/dev/null || result FAIL "ballast"
  strata create --size 256M $VOL/disk.strata >$W/create.log 2>&1 || { cat $W/create.log; result FAIL "create"; }
  CTL=$VOL/disk.ctl
  rm -f $SOCK
  strata serve --foreground --socket $SOCK --on-full=pause --min-free 16M $VOL/disk.strata \
    >>$W/server.log 2>&1 &
  SERVER_PID=$!
  i=0
  while [ ! -S $SOCK ]; do
    i=$((i + 1)); [ $i -lt 100 ] || { cat $W/server.log; result FAIL "no socket"; }; sleep 0.1
  done
  # The kernel's request timeout must outlast the pause, or it fails the stalled requests.
  NBD_TIMEOUT=60 attach
  mkfs.ext4 -q -F -b 4096 /dev/nbd0 >$W/mkfs.log 2>&1 || { cat $W/mkfs.log; result FAIL "mkfs.ext4"; }
  mount -t ext4 /dev/nbd0 /mnt || result FAIL "mount"
  dmesg -c >/dev/null

  step "write 40 MiB into the ext4: more than the volume has free"
  (dd if=/dev/urandom of=/mnt/fill bs=1M count=40 conv=fsync 2>$W/dd.err; echo $? >$W/dd.rc) &
  DD_PID=$!
  i=0
  until strata stats --control $CTL --output=json 2>/dev/null | grep -q '"paused_critical": true'; do
    i=$((i + 1)); [ $i -lt 600 ] || result FAIL "the disk never became paused-critical: $(cat $W/dd.err)"
    [ -f $W/dd.rc ] && result FAIL "dd ended before the volume filled: rc $(cat $W/dd.rc) $(cat $W/dd.err)"
    sleep 0.1
  done
  strata stats --control $CTL | grep -E "host volume|PAUSED"
  sleep 3
  [ -f $W/dd.rc ] && result FAIL "dd ended while the disk was paused: rc $(cat $W/dd.rc) $(cat $W/dd.err)"
  [ -z "$(io_errors)" ] || result FAIL "the guest saw errors while paused: $(io_errors)"
  strata list --control $CTL | grep -q PAUSED-CRITICAL || result FAIL "list does not say PAUSED-CRITICAL"

  step "delete the ballast: the writes resume by themselves"
  rm $VOL/ballast
  i=0
  while [ ! -f $W/dd.rc ]; do
    i=$((i + 1)); [ $i -lt 600 ] || result FAIL "dd did not finish within 60 s of freeing space"; sleep 0.1
  done
  wait $DD_PID
  [ "$(cat $W/dd.rc)" = 0 ] || { tail -20 $W/server.log; result FAIL "dd failed: $(cat $W/dd.err)"; }
  [ -z "$(io_errors)" ] || result FAIL "the guest saw errors: $(io_errors)"
  grep " /mnt " /proc/mounts | grep -q " rw," || result FAIL "/mnt is no longer read-write: $(grep ' /mnt ' /proc/mounts)"
  strata stats --control $CTL --output=json | grep -q '"paused_critical": false' || result FAIL "still paused-critical"
  sha=$(sha256sum /mnt/fill | cut -d' ' -f1)
  umount /mnt || result FAIL "umount"
  detach

  step "fresh attach: e2fsck -fn and the checksum"
  attach
  e2fsck -f -n /dev/nbd0 >$W/fsck.log 2>&1 || { cat $W/fsck.log; result FAIL "e2fsck found errors"; }
  mount -t ext4 -o ro /dev/nbd0 /mnt || result FAIL "mount after the pause"
  [ "$(sha256sum /mnt/fill | cut -d' ' -f1)" = "$sha" ] || result FAIL "the file differs after a fresh attach"
  umount /mnt
  detach
  stop_server
  grep -E "paused-critical|host volume" $W/server.log
  strata check $VOL/disk.strata >$W/check-vol.log 2>&1 || { cat $W/check-vol.log; result FAIL "strata check of the full volume's disk"; }
}

# --- QEMU as the disk's client -----------------------------------------------------------------
# Loads virtio_pci and virtio_blk (and what they need, in order) and waits for /dev/vda.
virtio_disk() {
  for m in $(cat /etc/modules.load); do
    insmod /lib/modules/$m.ko || result FAIL "insmod $m.ko"
  done
  i=0
  while [ ! -b /dev/vda ]; do
    i=$((i + 1)); [ $i -lt 100 ] || result FAIL "no /dev/vda within 10 s of loading virtio_blk"; sleep 0.1
  done
}
# The checksum of every file on /mnt, one STRATA-GUEST-SUM line each, for the host to compare.
print_sums() {  # TAG
  sums $W/sums.$1
  sed "s|^\([0-9a-f]*\)  \./|STRATA-GUEST-SUM $NONCE $1 \1 |" $W/sums.$1
}

case_qemu_disk_write() {
  virtio_disk
  step "mkfs.ext4 on /dev/vda (QEMU's NBD client), write before/"
  mkfs.ext4 -q -F -b 4096 /dev/vda >$W/mkfs.log 2>&1 || { cat $W/mkfs.log; result FAIL "mkfs.ext4"; }
  mount -t ext4 /dev/vda /mnt || result FAIL "mount /dev/vda"
  mkdir -p /mnt/before/sub /mnt/during
  dd if=/dev/urandom of=/mnt/before/big bs=1M count=16 2>/dev/null || result FAIL "write big"
  write_smalls /mnt/before/sub 100 512 61
  sync
  print_sums before
  [ "$(wc -l <$W/sums.before)" -eq 101 ] || result FAIL "checksum list of before/ is not 101 lines"

  # The host takes its live snapshot while these rounds run (each one synced).
  echo "STRATA-GUEST-WRITING $NONCE"
  end=$(($(cut -d. -f1 /proc/uptime) + 10))
  n=0
  while [ $(cut -d. -f1 /proc/uptime) -lt $end ] && [ $n -lt 1000 ]; do
    dd if=/dev/urandom of=/mnt/during/f$n bs=64k count=$((1 + n % 8)) 2>/dev/null \
      || result FAIL "write during/f$n"
    sync
    n=$((n + 1))
  done
  echo "STRATA-GUEST-WROTE $NONCE"
  step "wrote $n files into during/ in 10 s"
  dd if=/dev/urandom of=/mnt/after-writes bs=1M count=2 2>/dev/null || result FAIL "write after-writes"
  sync
  print_sums final
  umount /mnt || result FAIL "umount"
  e2fsck -f -n /dev/vda >$W/fsck.log 2>&1 || { cat $W/fsck.log; result FAIL "e2fsck found errors"; }
}

case_qemu_disk_verify() {
  virtio_disk
  step "e2fsck -fn /dev/vda, the checksums, then write second-boot"
  e2fsck -f -n /dev/vda >$W/fsck.log 2>&1 || { cat $W/fsck.log; result FAIL "e2fsck found errors"; }
  mount -t ext4 /dev/vda /mnt || result FAIL "mount /dev/vda"
  print_sums final
  mkdir -p /mnt/second
  dd if=/dev/urandom of=/mnt/second/boot bs=1M count=4 2>/dev/null || result FAIL "write second/boot"
  sync
  print_sums second
  umount /mnt || result FAIL "umount"
}

case "$CASE" in
  qemu_disk_write) case_qemu_disk_write; result PASS ok ;;
  qemu_disk_verify) case_qemu_disk_verify; result PASS ok ;;
esac

nbd_setup
step "serve + attach + mkfs"
start_server
attach
mkfs.ext4 -q -F -b 4096 /dev/nbd0 >$W/mkfs.log 2>&1 || { cat $W/mkfs.log; result FAIL "mkfs.ext4"; }
mount -t ext4 /dev/nbd0 /mnt || result FAIL "mount"

case "$CASE" in
  kernel_nbd) case_kernel_nbd ;;
  online_merge) case_online_merge ;;
  full_volume) case_full_volume ;;
  *) result FAIL "unknown CASE $CASE" ;;
esac

if [ "$SERVER" = strata ]; then
  step "strata check"
  strata check $W/disk.strata >$W/check.log 2>&1 || { cat $W/check.log; result FAIL "strata check"; }
  cat $W/check.log
fi
result PASS ok
