#!/bin/sh
# /init of the kernel-nbd guest (see tests/guest_kernel_nbd.sh). Serves a chain from inside the
# guest on a unix socket, attaches the kernel's nbd driver to it (simple replies only, the
# path QEMU-less users hit), makes and uses an ext4 file system, takes a live snapshot of it
# while mounted (fsfreeze around `strata snapshot --control`), changes files, checks the
# snapshot through its @NAME export on /dev/nbd1, restarts the server and checks the files,
# then runs `strata check`. Prints one result line with the host's nonce:
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
step() { echo "guest: $*"; }

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
  nbd-client -unix $SOCK /dev/$dev -b 4096 -t 10 "$@" || result FAIL "nbd-client attach $dev"
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

step "serve + attach + mkfs"
start_server
attach
mkfs.ext4 -q -F -b 4096 /dev/nbd0 >$W/mkfs.log 2>&1 || { cat $W/mkfs.log; result FAIL "mkfs.ext4"; }
mount -t ext4 /dev/nbd0 /mnt || result FAIL "mount"

step "write files"
mkdir -p /mnt/dir/sub
dd if=/dev/urandom of=/mnt/big bs=1M count=24 2>/dev/null || result FAIL "write big"
i=0
while [ $i -lt 200 ]; do
  dd if=/dev/urandom of=/mnt/dir/sub/small$i bs=$((512 + i * 37)) count=1 2>/dev/null \
    || result FAIL "write small$i"
  i=$((i + 1))
done
dd if=/dev/urandom of=/mnt/dir/trimmed bs=1M count=4 2>/dev/null
sync
rm /mnt/dir/trimmed
fstrim /mnt 2>/dev/null || step "fstrim not available (ignored)"
sums() { (cd /mnt && find . -type f ! -name lost+found | sort | xargs sha256sum) >$1; }
sums $W/sums
[ "$(wc -l <$W/sums)" -ge 201 ] || result FAIL "checksum list too short"
sync

if [ "$SERVER" = strata ]; then
  # The "snapshot before an upgrade" workflow on a mounted file system: freeze it (ext4
  # flushes and checkpoints its journal, so the snapshot is a clean file system), take a live
  # snapshot through the control socket, thaw, and let the "upgrade" change files.
  step "live snapshot of the mounted file system"
  fsfreeze --freeze /mnt || result FAIL "fsfreeze --freeze"
  strata snapshot --control $W/disk.ctl before-upgrade >$W/snapshot.log 2>&1
  rc=$?
  fsfreeze --unfreeze /mnt || result FAIL "fsfreeze --unfreeze"
  [ $rc -eq 0 ] || { cat $W/snapshot.log; result FAIL "strata snapshot --control"; }
  cat $W/snapshot.log
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

if [ "$SERVER" = strata ]; then
  step "strata check"
  strata check $W/disk.strata >$W/check.log 2>&1 || { cat $W/check.log; result FAIL "strata check"; }
fi
result PASS ok
