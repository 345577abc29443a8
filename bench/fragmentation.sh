#!/usr/bin/env bash
# fragmentation.sh: how a differencing layer lies on the host volume after random writes, strata
# beside qcow2 (Hyper-V's lesson: .AVHD files grow in small pieces, fragment the host volume and
# slow the disk), in ONE run.
#
#   layer       a fresh SIZE disk over a raw base of SIZE (sparse):
#                 strata: `strata create -b base.raw -F raw`, served by `strata serve`;
#                 qcow2:  `qemu-img create -f qcow2 -b base.raw -F raw`, served by
#                         `qemu-nbd --cache=writeback --aio=threads`.
#   load        fio 4k random writes, QD32, IOS of them (default 65536: 256 MiB), seed 7, through
#               fio's nbd engine; the server is stopped (a clean stop flushes), then `sync`.
#   extents     host extents of the layer file (`filefrag`), and its allocated MiB (`du`).
#   seq read    `fio --rw=read --bs=1M --iodepth=4` of the whole disk through the server just
#               after the page cache was dropped (MiB/s), median of READS runs; the written
#               clusters are scattered over the disk, so this reads the layer in disk order.
#
# Environment: STRATA=path, SIZE=1G, IOS=65536, READS=3, WORK_PARENT=/var/tmp (a real disk),
#              SMOKE=1 (SIZE=256M IOS=4096 READS=1), RESULTS=dir.
# Only the servers this script started are stopped, by PID. Dropping the page cache needs root;
# without it the read figures are warm-cache figures and the report says so.
set -euo pipefail
export PATH="/usr/bin:/usr/sbin:/bin:/sbin:$PATH"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
source "$here/lib.sh"
if [[ ${SMOKE:-0} == 1 ]]; then SIZE=${SIZE:-256M}; IOS=${IOS:-4096}; READS=${READS:-1}; fi
SIZE=${SIZE:-1G}
IOS=${IOS:-65536}
READS=${READS:-3}
WORK_PARENT=${WORK_PARENT:-/var/tmp}
RESULTS=${RESULTS:-/tmp/strata-bench-results/fragmentation-$(date -u +%Y%m%d-%H%M%S)}
find_strata
require_tools fragmentation fio jq qemu-img qemu-nbd nbdinfo filefrag
[[ -x ${STRATA:-} ]] || { echo "fragmentation: no strata binary (STRATA=...)" >&2; exit 2; }

mkdir -p "$RESULTS"
WORK=$(mktemp -d "$WORK_PARENT/strata-frag-XXXXXX")
SOCK="$WORK/nbd.sock"
URI="nbd+unix:///?socket=$SOCK"
STARTED_PIDS=()
SERVER_PID=""
trap stop_started_and_clean EXIT
trap 'exit 130' INT TERM
log() { echo "[fragmentation $(date +%H:%M:%S)] $*" >&2; }
cmd() { printf '%s\n' "$*" >>"$RESULTS/commands.md"; }

cold=1  # whether drop_caches can drop the page cache (root)
[[ -w /proc/sys/vm/drop_caches ]] || cold=0
start() {  # TARGET
  rm -f "$SOCK"
  if [[ $1 == strata ]]; then
    "$STRATA" serve --foreground --no-control --socket "$SOCK" --log-level=error \
      "$WORK/layer.strata" >>"$RESULTS/server.log" 2>&1 &
  else
    qemu-nbd --persistent --shared=8 --format=qcow2 --cache=writeback --aio=threads \
      "--socket=$SOCK" "$WORK/layer.qcow2" >>"$RESULTS/server.log" 2>&1 &
  fi
  SERVER_PID=$!
  STARTED_PIDS+=("$SERVER_PID")
  wait_for_nbd "$SERVER_PID" "$SOCK" "$RESULTS/server.log" || exit 1
}
stop() { stop_pid "$SERVER_PID"; SERVER_PID=""; }
fio_json() { sed -n '/^{/,$p' "$1"; }

truncate -s "$SIZE" "$WORK/base.raw"
declare -A EXTENTS MIB READ
for target in strata qcow2; do
  log "$target: $IOS random 4k writes"
  rm -f "$WORK"/layer.*
  if [[ $target == strata ]]; then
    "$STRATA" create -b base.raw -F raw "$WORK/layer.strata" >/dev/null
    layer="$WORK/layer.strata"
  else
    qemu-img create -q -f qcow2 -b base.raw -F raw "$WORK/layer.qcow2"
    layer="$WORK/layer.qcow2"
  fi
  start "$target"
  fill=(fio --name=fill --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32
        --size="$SIZE" --number_ios="$IOS" --randseed=7 --output-format=json)
  cmd "${fill[*]}   # $target"
  "${fill[@]}" >"$RESULTS/$target-fill.json" 2>"$RESULTS/$target-fill.err"
  stop
  sync
  EXTENTS[$target]=$(filefrag "$layer" | sed -n 's/.*: \([0-9]*\) extents\{0,1\} found/\1/p')
  MIB[$target]=$(du -m "$layer" | cut -f1)
  cmd "filefrag $layer; du -m $layer"
  for r in $(seq 1 "$READS"); do
    drop_caches
    start "$target"
    seq=(fio --name=seq --ioengine=nbd --uri="$URI" --rw=read --bs=1M --iodepth=4 --size="$SIZE"
         --output-format=json)
    [[ $r == 1 ]] && cmd "${seq[*]}   # $target, after dropping the page cache"
    "${seq[@]}" >"$RESULTS/$target-read$r.json" 2>"$RESULTS/$target-read$r.err"
    READ[$target]+=" $(fio_json "$RESULTS/$target-read$r.json" | jq -r '.jobs[0].read.bw_bytes / 1048576 | floor')"
    stop
  done
done

{
  echo "# fragmentation $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "host: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg); work dir on $(df --output=fstype "$WORK" | tail -1); SIZE=$SIZE IOS=$IOS READS=$READS; strata: $STRATA"
  echo
  echo "| layer | host extents | allocated MiB | seq read of the disk, MiB/s (median; runs) |"
  echo "|---|---|---|---|"
  for target in strata qcow2; do
    echo "| $target | ${EXTENTS[$target]} | ${MIB[$target]} | $(median <<<"${READ[$target]}") (${READ[$target]# }) |"
  done
  echo
  [[ $cold == 1 ]] || echo "Page cache not dropped (not root): the reads are warm-cache figures."
  echo "Commands: $RESULTS/commands.md; fio JSON beside it."
} >"$RESULTS/report.md"
cat "$RESULTS/report.md"
