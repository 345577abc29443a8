#!/usr/bin/env bash
# merge_bench.sh: ONLINE snapshot deletion under a guest write load, strata beside
# qemu-storage-daemon's block-commit, in ONE run.
#
# Definitions (one line each, db_bench style):
#   newest   a SIZE disk whose newest snapshot holds SIZE/2 of data (the first half) and whose
#            active layer holds SIZE/2 (the second half, written after the snapshot); delete
#            that snapshot. strata: `strata delete-snapshot --control` (copies what the
#            snapshot holds up into the active layer). qemu: snap.qcow2 <- top.qcow2 served by
#            qemu-storage-daemon, QMP block-commit of the active node into snap (an active
#            commit, a mirror job), block-job-complete once BLOCK_JOB_READY arrives.
#   older    the same data one layer lower: snapshot a (first half) <- snapshot b (second half)
#            <- an empty active layer; delete the older one, a, which has b above it. strata:
#            delete-snapshot a (copies a up into b); qemu: a.qcow2 <- b.qcow2 <- top.qcow2,
#            block-commit top-node=b base-node=a (a plain commit, finishes on its own).
#   load     fio --ioengine=nbd, 4k random write, QD32, one connection, over the second half
#            of the disk (LOAD_RANGE=half; =all: the whole disk, see below), started WARM+BEFORE
#            s before the deletion and stopped AFTER s after it ends; every completion is logged
#            (--write_lat_log, --log_unix_epoch), so the windows are exact.
#   windows  before = [load start + WARM, deletion start), during = [deletion start, end],
#            after = (end, load stop]; IOPS = completions in the window / its length.
#   pause    what a guest sees as a stall: the longest completion latency of a write in flight
#            during the deletion, and the longest stretch with no write completing at all that
#            overlaps it (1 ms resolution); the second also catches time fio spends blocked
#            sending a request, which its clat does not count.
#            strata has no pause point by design (the final relink happens under a lock, not a
#            drain), so these figures are its worst case; for QEMU they include the drain of
#            block-job-complete.
#   copied   strata: the job's bytes_copied. qemu newest: the mirror job's final offset (the
#            data it copied, re-copies of blocks the guest dirtied included); qemu older: the
#            commit job's offset counts every byte of the range it walked, so the data
#            allocated in b.qcow2 (qemu-img map before the run) is shown instead.
# Goal (the issue): merge <= 5 s, write IOPS during >= 0.7 x before, no pause over 10 ms.
#
# Both servers use the host page cache: `strata serve` default (--cache=writeback), and
# qemu-storage-daemon with file nodes cache.direct=off, aio=threads (its defaults). The page
# cache is dropped before every load starts, so the deletion reads what it copies from disk.
#
# Environment:
#   STRATA=path   strata binary (default: <repo>/build-bench/cli/strata, build/, build-live/, PATH)
#   SIZE=1G  WARM=2  BEFORE=6  AFTER=8  MERGE_TIMEOUT=120 (s; then the job is cancelled)
#   LOAD_RANGE=half|all
#   SCENARIOS="newest older"  TARGETS="strata qemu"  WORK_PARENT=/var/tmp
#   SMOKE=1       quick check of the harness: SIZE=256M WARM=1 BEFORE=3 AFTER=3
#   OUT=dir       results (default /tmp/merge-bench-DATE): report.md, commands.md, per-run
#                 fio JSON, 100 ms timelines (timeline-RUN.csv), job JSON, server logs
# Only the processes this script started are stopped, by PID.
set -euo pipefail
export PATH="/usr/bin:/usr/sbin:/bin:/sbin:$PATH"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
source "$here/lib.sh"
if [[ ${SMOKE:-0} == 1 ]]; then
  SIZE=${SIZE:-256M}; WARM=${WARM:-1}; BEFORE=${BEFORE:-3}; AFTER=${AFTER:-3}
fi
SIZE=${SIZE:-1G}
WARM=${WARM:-2}
BEFORE=${BEFORE:-6}
AFTER=${AFTER:-8}
MERGE_TIMEOUT=${MERGE_TIMEOUT:-120}
LOAD_RANGE=${LOAD_RANGE:-half}
SCENARIOS=${SCENARIOS:-"newest older"}
TARGETS=${TARGETS:-"strata qemu"}
WORK_PARENT=${WORK_PARENT:-/var/tmp}
OUT=${OUT:-/tmp/merge-bench-$(date +%Y%m%d-%H%M%S)}
PY=/usr/bin/python3

find_strata
require_tools merge_bench fio jq qemu-img qemu-nbd qemu-storage-daemon nbdinfo numfmt "$PY"
[[ -x ${STRATA:-} ]] || { echo "merge_bench: no strata binary (STRATA=...)" >&2; exit 1; }
SIZE_BYTES=$(numfmt --from=iec "$SIZE")
HALF=$(( SIZE_BYTES / 2 ))
# The load rewrites the second half by default: the half the active layer (newest) or b
# (older) holds. Over the whole disk (LOAD_RANGE=all), fio's random map rewrites every block
# within seconds, the deleted snapshot's data is all shadowed by then, and there is little left
# to copy (strata copies only what the layer above lacks).
case $LOAD_RANGE in
  half) LOAD_OFFSET=$HALF; LOAD_SIZE=$HALF ;;
  all) LOAD_OFFSET=0; LOAD_SIZE=$SIZE_BYTES ;;
  *) echo "merge_bench: LOAD_RANGE=half|all" >&2; exit 2 ;;
esac

mkdir -p "$OUT"
WORK=$(mktemp -d "$WORK_PARENT/strata-mergebench-XXXXXX")
SERVER_PID=""
FIO_PID=""
log() { printf 'merge_bench %s: %s\n' "$(date +%T)" "$*" >&2; }
cmd() { printf '%s\n' "$*" >>"$OUT/commands.md"; }
now_ms() { date +%s%3N; }
cleanup() {
  stop_pid "$FIO_PID"
  stop_pid "$SERVER_PID"
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- helpers in python (plain socket + json: QMP; the completion log: windows) ----------------
# qmp_merge SOCK JOB DEVICE TOP BASE TIMEOUT: block-commit, block-job-complete on READY, waits
# for BLOCK_JOB_COMPLETED; prints one JSON line with wall-clock start/ready/end (epoch s).
cat >"$WORK/qmp_merge.py" <<'EOF'
import json, socket, sys, time
path, job, device, top, base, timeout = sys.argv[1:7]
s = socket.socket(socket.AF_UNIX); s.connect(path)
buf, events = b"", []
def recv(deadline):
    global buf
    while b"\n" not in buf:
        left = deadline - time.time()
        if left <= 0: return None
        s.settimeout(left)
        try: chunk = s.recv(65536)
        except socket.timeout: return None
        if not chunk: sys.exit("qmp: connection closed")
        buf += chunk
    line, buf = buf.split(b"\n", 1)
    return json.loads(line)
def execute(name, **args):
    s.sendall((json.dumps({"execute": name, "arguments": args}) + "\n").encode())
    while True:
        m = recv(time.time() + 30)
        if m is None: sys.exit("qmp: no reply to " + name)
        if "return" in m: return m["return"]
        if "error" in m: sys.exit("qmp: %s: %s" % (name, m["error"]))
        events.append(m)
recv(time.time() + 10)  # greeting
execute("qmp_capabilities")
out = {"start": time.time()}
execute("block-commit", **{"job-id": job, "device": device, "top-node": top, "base-node": base})
deadline = out["start"] + float(timeout)
while "end" not in out:
    m = events.pop(0) if events else recv(deadline)
    if m is None:  # too slow: cancel, and say so
        out["state"] = "timeout"; out["end"] = time.time()
        execute("block-job-cancel", device=job, force=True)
        break
    ev, data = m.get("event"), m.get("data", {})
    if data.get("device") != job: continue
    if ev == "BLOCK_JOB_READY":
        out["ready"] = time.time()
        execute("block-job-complete", device=job)
    elif ev in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"):
        out.update(end=time.time(), offset=data.get("offset"), len=data.get("len"),
                   state="done" if ev == "BLOCK_JOB_COMPLETED" and "error" not in data else "failed",
                   error=data.get("error"))
print(json.dumps(out))
EOF
# windows CLAT_LOG START_MS END_MS WARM_S TIMELINE_CSV: prints "before during after ratio
# max_during_ms p99_during_ms gap_during_ms max_before_ms" from fio's per-I/O completion log
# (epoch ms, clat ns, ...); writes IOPS and max latency per 100 ms to TIMELINE_CSV.
cat >"$WORK/windows.py" <<'EOF'
import sys
logf, ms, me, warm, csv = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
t, lat = [], []
with open(logf) as f:
    for line in f:
        a = line.split(",", 2)
        t.append(int(a[0])); lat.append(int(a[1]))
t0, tend = t[0] + int(warm * 1000), t[-1]
win = {"b": [], "d": [], "a": []}
bins = {}
for ti, li in zip(t, lat):
    k = (ti - t[0]) // 100
    n, mx = bins.get(k, (0, 0)); bins[k] = (n + 1, max(mx, li))
    if ti < t0: continue
    win["b" if ti < ms else "d" if ti <= me else "a"].append((ti, li))
def iops(w, a, b): return len(w) / ((b - a) / 1000) if b > a else 0
def pct(v, p): return sorted(v)[min(len(v) - 1, int(p * len(v)))] / 1e6 if v else 0
bi, di, ai = iops(win["b"], t0, ms), iops(win["d"], ms, me), iops(win["a"], me, tend)
# A stall can straddle the end (QEMU reports the job completed before the drained requests
# are answered): latency counts every write in flight during the window, the gap every stretch
# between completions that overlaps it.
dl = [li for ti, li in zip(t, lat) if ti >= ms and ti - li / 1e6 <= me]
ts = sorted(t)
gap = max((b - a for a, b in zip(ts, ts[1:]) if b >= ms and a <= me), default=me - ms)
print("%d %d %d %.2f %.1f %.1f %d %.1f" % (bi, di, ai, di / bi if bi else 0, max(dl, default=0) / 1e6,
      pct(dl, 0.99), gap, max((l for _, l in win["b"]), default=0) / 1e6))
with open(csv, "w") as f:
    f.write("t_ms_from_load_start,iops,max_clat_ms,phase\n")
    for k in sorted(bins):
        ts = t[0] + k * 100
        ph = "warm" if ts < t0 else "before" if ts < ms else "during" if ts <= me else "after"
        f.write("%d,%d,%.2f,%s\n" % (k * 100, bins[k][0] * 10, bins[k][1] / 1e6, ph))
EOF

# --- servers -------------------------------------------------------------------------------
SOCK="$WORK/disk.sock"
# strata serve daemonizes once it listens; the pid file gives the process to stop.
start_strata() {  # LAYER
  local layer=$1
  cmd "$STRATA serve --pid-file $WORK/strata.pid --log-file $WORK/strata.log --log-level=info $layer"
  "$STRATA" serve --pid-file "$WORK/strata.pid" --log-file "$WORK/strata.log" --log-level=info \
    "$layer" >/dev/null 2>>"$WORK/strata.log"
  SERVER_PID=$(<"$WORK/strata.pid")
  URI="nbd+unix:///?socket=$(dirname "$layer")/disk.sock"
  wait_for_nbd "$SERVER_PID" "$(dirname "$layer")/disk.sock" "$WORK/strata.log" || exit 1
}
# qemu-nbd serves one qcow2 layer while it is filled (as snapshot_bench builds its chains).
start_qemu_nbd() {  # QCOW2
  start_qemu_nbd_qcow2 "$1" "$SOCK" "$WORK/qemu-nbd.log"
  URI="nbd+unix:///?socket=$SOCK"
}
# qemu-storage-daemon with the qcow2 chain FILE... (bottom first) as nodes n0, n1, ...; the
# top node is exported as "disk" (the export follows the graph when a commit replaces the top).
start_qsd() {  # QCOW2...
  local args=() i=0 prev=""
  rm -f "$SOCK" "$WORK/qmp.sock"
  for f in "$@"; do
    args+=(--blockdev "driver=file,node-name=f$i,filename=$f,cache.direct=off,aio=threads")
    args+=(--blockdev "driver=qcow2,node-name=n$i,file=f$i${prev:+,backing=$prev}")
    prev=n$i; i=$((i + 1))
  done
  args+=(--nbd-server "addr.type=unix,addr.path=$SOCK"
         --export "type=nbd,id=exp0,node-name=$prev,name=disk,writable=on"
         --chardev "socket,id=qmp0,path=$WORK/qmp.sock,server=on,wait=off" --monitor chardev=qmp0)
  cmd "qemu-storage-daemon ${args[*]}"
  qemu-storage-daemon "${args[@]}" </dev/null >>"$WORK/qsd.log" 2>&1 &
  SERVER_PID=$!
  URI="nbd+unix:///disk?socket=$SOCK"
  for (( i = 0; i < 150; i++ )); do
    [[ -S $SOCK ]] && timeout 5 nbdinfo --size "$URI" >/dev/null 2>&1 && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { tail "$WORK/qsd.log" >&2; exit 1; }
    sleep 0.1
  done
  log "qemu-storage-daemon did not answer"; exit 1
}
stop_server() { stop_pid "$SERVER_PID"; SERVER_PID=""; }

# fill OFFSET: SIZE/2 of fio's (non-zero) data, sequential 1 MiB writes, into the current URI.
fill() {
  fio --name=fill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=8 --offset="$1" \
    --size="$HALF" --output-format=terse >/dev/null 2>>"$WORK/fill.err"
}

# --- chains ----------------------------------------------------------------------------------
# strata: the snapshots are taken live, as a guest's disk gets them.
build_strata() {  # SCENARIO DIR
  local dir=$2
  mkdir -p "$dir"
  "$STRATA" create --size "$SIZE" "$dir/disk.strata" >/dev/null
  start_strata "$dir/disk.strata"
  if [[ $1 == newest ]]; then
    fill 0; "$STRATA" snapshot --control "$dir/disk.ctl" snap >/dev/null; fill "$HALF"
    DELETE=snap
  else
    fill 0; "$STRATA" snapshot --control "$dir/disk.ctl" a >/dev/null
    fill "$HALF"; "$STRATA" snapshot --control "$dir/disk.ctl" b >/dev/null
    DELETE=a
  fi
  stop_server
  cmd "# strata $1: create --size $SIZE; fill [0,$HALF); snapshot; fill [$HALF,$SIZE_BYTES)$([[ $1 == older ]] && echo "; snapshot"); delete $DELETE"
}
# qemu: each layer is filled through qemu-nbd, then the next overlay is created on it.
build_qemu() {  # SCENARIO DIR
  local dir=$2
  mkdir -p "$dir"
  qemu-img create -q -f qcow2 "$dir/q0.qcow2" "$SIZE"
  start_qemu_nbd "$dir/q0.qcow2"; fill 0; stop_server
  qemu-img create -q -f qcow2 -b "$dir/q0.qcow2" -F qcow2 "$dir/q1.qcow2"
  start_qemu_nbd "$dir/q1.qcow2"; fill "$HALF"; stop_server
  CHAIN=("$dir/q0.qcow2" "$dir/q1.qcow2")
  if [[ $1 == older ]]; then
    qemu-img create -q -f qcow2 -b "$dir/q1.qcow2" -F qcow2 "$dir/q2.qcow2"
    CHAIN+=("$dir/q2.qcow2")
  fi
  # What the committed layer holds (q1 in both cases: the active top, or b).
  COMMIT_DATA=$(qemu-img map -f qcow2 --output=json "$dir/q1.qcow2" |
    jq '[.[] | select(.depth == 0 and .data) | .length] | add // 0')
  cmd "# qemu $1: qemu-img create -f qcow2 q0 $SIZE; fill [0,$HALF) via qemu-nbd; q1 on q0, fill [$HALF,$SIZE_BYTES)$([[ $1 == older ]] && echo "; q2 (empty) on q1")"
}

# --- one run: load, deletion, windows ---------------------------------------------------------
start_load() {  # RUN
  local args=(--name=load --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32
              --offset="$LOAD_OFFSET" --size="$LOAD_SIZE" --time_based --runtime=3600 --randseed=4242
              --disable_lat=1 --disable_slat=1 --write_lat_log="$WORK/$1" --log_unix_epoch=1
              --output-format=json --output="$OUT/$1-load.json")
  cmd "fio ${args[*]}   # stopped with SIGINT AFTER s after the deletion"
  fio "${args[@]}" >/dev/null 2>"$OUT/$1-load.err" &
  FIO_PID=$!
}
stop_load() { kill -INT "$FIO_PID"; wait "$FIO_PID" || true; FIO_PID=""; }

# delete_strata RUN DIR: sets MS ME (epoch ms), COPIED (bytes), SECS, STATE.
delete_strata() {
  local run=$1 dir=$2
  cmd "$STRATA delete-snapshot --control $dir/disk.ctl --json $DELETE"
  MS=$(now_ms)
  if ! timeout "$MERGE_TIMEOUT" "$STRATA" delete-snapshot --control "$dir/disk.ctl" --json "$DELETE" \
       >"$OUT/$run-job.json" 2>"$OUT/$run-job.err"; then
    ME=$(now_ms)
    log "$run: delete-snapshot failed or timed out: $(tail -2 "$OUT/$run-job.err")"
    "$STRATA" cancel --control "$dir/disk.ctl" >>"$OUT/$run-job.err" 2>&1 || true
    COPIED="?"; SECS="?"; STATE=failed
    return 0
  fi
  ME=$(now_ms)
  read -r COPIED SECS STATE < <(jq -r '"\(.bytes_copied) \(.elapsed_seconds) \(.state)"' "$OUT/$run-job.json")
}
delete_qemu() {  # RUN SCENARIO
  # The committed layer is n1 in both: the active top (newest) or b below the top (older).
  local run=$1 top=n1 base=n0 device=n$(( ${#CHAIN[@]} - 1 ))
  cmd "qmp: block-commit job-id=merge device=$device top-node=$top base-node=$base; block-job-complete on BLOCK_JOB_READY; until BLOCK_JOB_COMPLETED"
  "$PY" "$WORK/qmp_merge.py" "$WORK/qmp.sock" merge "$device" "$top" "$base" "$MERGE_TIMEOUT" \
    >"$OUT/$run-job.json" 2>"$OUT/$run-job.err" || { log "$run: QMP failed: $(cat "$OUT/$run-job.err")"; exit 1; }
  read -r MS ME SECS STATE offset < <(jq -r '"\(.start * 1000 | floor) \(.end * 1000 | floor) \(.end - .start | . * 1000 | round / 1000) \(.state) \(.offset)"' "$OUT/$run-job.json")
  if [[ $2 == newest ]]; then COPIED=$offset; else COPIED=$COMMIT_DATA; fi
}

declare -A ROW
run_one() {  # TARGET SCENARIO
  local target=$1 scen=$2 run="$1-$2" dir="$WORK/$1-$2"
  log "$run: building the chain"
  if [[ $target == strata ]]; then build_strata "$scen" "$dir"; else build_qemu "$scen" "$dir"; fi
  drop_caches
  if [[ $target == strata ]]; then start_strata "$dir/disk.strata"; else start_qsd "${CHAIN[@]}"; fi
  start_load "$run"
  sleep $(( WARM + BEFORE ))
  kill -0 "$FIO_PID" 2>/dev/null || { log "$run: fio exited early: $(tail -3 "$OUT/$run-load.err")"; exit 1; }
  log "$run: deleting the snapshot under load"
  if [[ $target == strata ]]; then delete_strata "$run" "$dir"; else delete_qemu "$run" "$scen"; fi
  log "$run: $STATE in $SECS s, copied $COPIED bytes"
  sleep "$AFTER"
  stop_load
  if [[ $target == strata ]]; then
    "$STRATA" stats --control "$dir/disk.ctl" --output=json >"$OUT/$run-stats.json" 2>&1 || true
    "$STRATA" list --control "$dir/disk.ctl" >"$OUT/$run-list.txt" 2>&1 || true
    cp "$WORK/strata.log" "$OUT/$run-server.log"
  else
    cp "$WORK/qsd.log" "$OUT/$run-server.log"
  fi
  stop_server
  local w
  w=$("$PY" "$WORK/windows.py" "$WORK/${run}_clat.1.log" "$MS" "$ME" "$WARM" "$OUT/timeline-$run.csv")
  rm -f "$WORK/${run}"_*.log
  ROW[$run]="$COPIED $SECS $STATE $w"
  rm -rf "$dir"  # frees the disk for the next run
}

# --- report ----------------------------------------------------------------------------------
mib() { [[ $1 =~ ^[0-9]+$ ]] && awk -v b="$1" 'BEGIN { printf "%.0f MiB", b / 1048576 }' || echo "$1"; }
{
  echo "# merge_bench $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "host: $(nproc) CPUs, $(uname -r), load average at start $(cut -d' ' -f1-3 /proc/loadavg);"\
       "work dir on $(df -T "$WORK" | awk 'NR==2{print $2}'); strata: $STRATA ($("$STRATA" --version 2>&1 | head -1));"\
       "$(qemu-storage-daemon --version | head -1); fio $(fio --version)"
  echo "SIZE=$SIZE (each snapshot and layer: $(mib "$HALF")) WARM=$WARM BEFORE=$BEFORE AFTER=$AFTER"\
       "LOAD_RANGE=$LOAD_RANGE (load writes [$LOAD_OFFSET, $((LOAD_OFFSET + LOAD_SIZE))))"
  if strings "$STRATA" 2>/dev/null | grep -q "AddressSanitizer"; then
    echo "WARNING: the strata binary looks like a sanitizer build"
  fi
  echo
} >"$OUT/report.md"
cmd "# merge_bench $(date -u +%FT%TZ), SIZE=$SIZE, page cache dropped before each load"

for scen in $SCENARIOS; do
  for target in $TARGETS; do run_one "$target" "$scen"; done
done

{
  echo "## Deleting a snapshot under 4k random write QD32 (load average at the end $(cut -d' ' -f1-3 /proc/loadavg))"
  echo
  echo "| run | bytes copied | merge s | state | write IOPS before | during | after | during/before | max write latency during (ms) | p99 during (ms) | longest stretch with no completion during (ms) | max latency before (ms) |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  for scen in $SCENARIOS; do for target in $TARGETS; do
    read -r copied secs state bi di ai ratio mx p99 gap mxb <<<"${ROW[$target-$scen]}"
    echo "| $target-$scen | $(mib "$copied") | $secs | $state | $bi | $di | $ai | $ratio | $mx | $p99 | $gap | $mxb |"
  done; done
  echo
  echo "Goal: merge <= 5 s, during/before >= 0.7, no stall over 10 ms (max latency and longest stretch)."
  echo "qemu-older's bytes copied is the data allocated in the committed layer (see the header)."
  echo "Commands: $OUT/commands.md; fio JSON, job JSON, 100 ms timelines (timeline-RUN.csv) beside it."
} >>"$OUT/report.md"
cat "$OUT/report.md"
