# The cases of `strata bench` (sourced by bench/run.sh, after lib.sh). Each case_NAME measures
# strata beside its peers and appends records (CASE WORKLOAD CONFIG ROUND metrics) through
# run_fio and record; steps_NAME says how many progress steps it reports. bench/README.md
# defines every case; report.py knows which config is whose peer and what the ceiling is.
# Inputs from run.sh: STRATA, BASE (read only), WBASE (a base the peers may write), SIZE_BYTES,
# CLUSTERS, WORK, RESULTS, RUNTIME, ROUNDS, and each case's sizes.

# --- transport: the same raw base through every server ----------------------------------------
# phys is fio on the file (io_uring, O_DIRECT): the device. null is nbdkit null: the transport
# with no storage, whose client CPU per I/O the ceiling uses. qemu-raw is the O_DIRECT peer of
# strata-none, nbdkit-file the page-cache peer of strata-wb (strata's default).
TRANSPORT_CONFIGS=(phys null qemu-raw nbdkit-file strata-none strata-wb)
# Reads first; then the sequential write, which allocates every cluster of a strata layer, so
# the random writes after it measure rewrites (first writes are the cow case).
TRANSPORT_WORKLOADS=(rr4k-qd1 rr4k-qd32 rr4k-2c sr1m-qd32 sw1m-qd32 rw4k-qd1 rw4k-qd32 rw4k-2c
                     rw64k-qd32)
declare -A WL_ARGS=(
  [rr4k-qd1]="--rw=randread --bs=4k --iodepth=1"
  [rr4k-qd32]="--rw=randread --bs=4k --iodepth=32"
  [rr4k-2c]="--rw=randread --bs=4k --iodepth=16 --numjobs=2"
  [sr1m-qd32]="--rw=read --bs=1M --iodepth=32"
  [sw1m-qd32]="--rw=write --bs=1M --iodepth=32"
  [rw4k-qd1]="--rw=randwrite --bs=4k --iodepth=1"
  [rw4k-qd32]="--rw=randwrite --bs=4k --iodepth=32"
  [rw4k-2c]="--rw=randwrite --bs=4k --iodepth=16 --numjobs=2"
  [rw64k-qd32]="--rw=randwrite --bs=64k --iodepth=32"
)
declare -A WL_NAME=(
  [rr4k-qd1]="4k randread QD1" [rr4k-qd32]="4k randread QD32" [rr4k-2c]="4k randread 2x QD16"
  [sr1m-qd32]="1M seq read QD32" [sw1m-qd32]="1M seq write QD32" [rw4k-qd1]="4k randwrite QD1"
  [rw4k-qd32]="4k randwrite QD32" [rw4k-2c]="4k randwrite 2x QD16" [rw64k-qd32]="64k randwrite QD32"
)
steps_transport() { echo $(( ${#TRANSPORT_WORKLOADS[@]} * ${#TRANSPORT_CONFIGS[@]} * ROUNDS )); }
case_transport() {
  local round w t n=${#TRANSPORT_CONFIGS[@]} k
  local -A pid=()
  for (( round = 1; round <= ROUNDS; round++ )); do
    # Every server up at once, each on its own socket; fresh strata layers each round.
    start_server null "$WORK/null.sock" nbdkit -f -U "$WORK/null.sock" null size="$SIZE_BYTES"
    pid[null]=$SERVER_PID
    qemu_nbd_serve qemu-raw "$WORK/qemu-raw.sock" raw "$WBASE" none; pid[qemu-raw]=$SERVER_PID
    start_server nbdkit-file "$WORK/nbdkit-file.sock" nbdkit -f -U "$WORK/nbdkit-file.sock" file file="$WBASE"
    pid[nbdkit-file]=$SERVER_PID
    for t in strata-none strata-wb; do
      rm -f "$WORK/$t.strata"
      "$STRATA" create -b "$BASE" -F raw "$WORK/$t.strata" >/dev/null
      local cache=writeback; [[ $t == strata-wb ]] || cache=none
      strata_serve "$t" "$WORK/$t.sock" "$WORK/$t.strata" --control "$WORK/$t.ctl" --cache="$cache"
      pid[$t]=$SERVER_PID
    done
    note_cmd "strata-none, strata-wb layers: strata create -b base.raw -F raw LAYER (fresh each round)"
    for w in "${TRANSPORT_WORKLOADS[@]}"; do
      # The order of the configs rotates every round, so none always runs first.
      for (( k = 0; k < n; k++ )); do
        t=${TRANSPORT_CONFIGS[$(( (k + round - 1) % n ))]}
        progress "${WL_NAME[$w]} $t ($round of $ROUNDS rounds)"
        if [[ $w == r* || $w == sr* ]]; then drop_caches; else sync; fi
        # shellcheck disable=SC2086
        if [[ $t == phys ]]; then
          run_fio transport "$w" phys "$round" - "file:$WBASE" ${WL_ARGS[$w]} --runtime="$RUNTIME" --time_based >&2
        else
          # strata's servers also say where each request's time went (stats' stages).
          local ctl=""; [[ $t == strata-* ]] && ctl=$WORK/$t.ctl
          STATS_CONTROL=$ctl run_fio transport "$w" "$t" "$round" "${pid[$t]}" "nbd:$WORK/$t.sock" \
            ${WL_ARGS[$w]} --runtime="$RUNTIME" --time_based >&2
        fi
      done
    done
    for t in "${!pid[@]}"; do stop_pid "${pid[$t]}"; done
    pid=()
  done
}

# --- cow: first writes into a fresh layer vs rewrites ------------------------------------------
# A fio iolog (version 2) writes 4 KiB at the start of every 64 KiB cluster, in a fixed shuffled
# order, replayed at QD32 without pauses: every write is a first write into its cluster. The same
# log again is all rewrites. A time-based random write would be mostly rewrites within seconds.
steps_cow() { echo $(( 3 * 2 * COW_ROUNDS )); }
case_cow() {
  local log=$WORK/first-writes.iolog round t phase
  "$PY" - "$CLUSTERS" >"$log" <<'EOF'
import random, sys
n = int(sys.argv[1]); order = list(range(n)); random.Random(42).shuffle(order)
print("fio version 2 iolog\nnbd add\nnbd open")
for c in order: print(f"nbd write {c * 65536} 4096")
EOF
  note_cmd "cow iolog: $CLUSTERS lines 'nbd write C*65536 4096', clusters shuffled (seed 42)"
  for (( round = 1; round <= COW_ROUNDS; round++ )); do
    for t in strata qcow2 qcow2-l2x; do
      rm -f "$WORK"/cow.*
      case $t in
        strata) "$STRATA" create -b "$BASE" -F raw "$WORK/cow.strata" >/dev/null
                strata_serve cow-strata "$WORK/cow.sock" "$WORK/cow.strata" --no-control --cache=none ;;
        qcow2*) local opts=(); [[ $t == qcow2 ]] || opts=(-o extended_l2=on)
                qemu-img create -q -f qcow2 "${opts[@]}" -b "$BASE" -F raw "$WORK/cow.qcow2"
                note_cmd "cow $t: qemu-img create -f qcow2 ${opts[*]} -b base.raw -F raw cow.qcow2"
                qemu_nbd_serve "cow-$t" "$WORK/cow.sock" qcow2 "$WORK/cow.qcow2" none ;;
      esac
      for phase in first rewrite; do
        progress "4k $phase write QD32 $t ($round of $COW_ROUNDS rounds)"
        sync
        run_fio cow "$phase" "$t" "$round" "$SERVER_PID" "nbd:$WORK/cow.sock" \
          --read_iolog="$log" --replay_no_stall=1 --iodepth=32 >&2
      done
      stop_server
    done
  done
  rm -f "$WORK"/cow.*
}

# --- chains, for depth and snapshot -------------------------------------------------------------
# Layer I of a chain holds LAYER_CLUSTERS clusters of 64 KiB at offsets util.py layer-offsets
# picks (seeded by I); the base answers the rest. strata's chain grows live: its server writes
# a layer and takes a snapshot through the control socket (util.py fill-chain); qcow2's grows
# with qemu-img create on the previous top and qemu-io writes into the new one.
# grow_strata DIR FROM TO: layers FROM..TO written and snapshotted (the top stays empty).
grow_strata() {
  local dir=$1
  strata_serve grow "$dir/sock" "$dir/disk.strata" --control "$dir/ctl"
  "$PY" "$here/util.py" fill-chain "nbd+unix:///?socket=$dir/sock" "$dir/ctl" "$STRATA" "$2" "$3" \
    "$LAYER_CLUSTERS" "$CLUSTERS"
  stop_server
}
# qcow2_top DIR N: an empty q$N.qcow2 on q$((N-1)).qcow2 (on the base for N = 1).
qcow2_top() {
  local dir=$1 n=$2 below=(-b "$BASE" -F raw)
  (( n == 1 )) || below=(-b "$1/q$(( n - 1 )).qcow2" -F qcow2)
  rm -f "$dir/q$n.qcow2"
  qemu-img create -q -f qcow2 "${below[@]}" "$dir/q$n.qcow2"
}
# grow_qcow2 DIR FROM TO: q$I.qcow2 for I in FROM..TO, each on the one below and written; then
# an empty top q$((TO+1)).qcow2.
grow_qcow2() {
  local dir=$1 i off
  for (( i = $2; i <= $3; i++ )); do
    qcow2_top "$dir" "$i"
    local cmds=()
    for off in $("$PY" "$here/util.py" layer-offsets "$i" "$LAYER_CLUSTERS" "$CLUSTERS"); do
      cmds+=(-c "write -P $(( i % 251 + 1 )) $off 64k")
    done
    qemu-io -f qcow2 "${cmds[@]}" "$dir/q$i.qcow2" >/dev/null
  done
  qcow2_top "$dir" $(( $3 + 1 ))
}
new_strata_chain() {  # DIR
  mkdir -p "$1"
  "$STRATA" create -b "$BASE" -F raw "$1/disk.strata" >/dev/null
  note_cmd "chains: strata create -b base.raw -F raw disk.strata; per layer I: write it" \
           "through strata serve, strata snapshot --control CTL cI (util.py fill-chain)"
  note_cmd "chains: qemu-img create -f qcow2 -b q(I-1).qcow2 -F qcow2 qI.qcow2 (q1 on base.raw" \
           "-F raw); qemu-io -c 'write -P I OFF 64k' per cluster; an empty top"
}

# --- depth: reads through chains of 1, 8, 64, 256 layers ----------------------------------------
# At each depth: the server's start until it answers (chain open), 4k random read QD32 with a
# dropped page cache, and the server's RSS after it; DEPTH_ROUNDS alternating rounds of a
# 1-layer disk over the same base (config strata-1layer, the ceiling), the chain, and qcow2's
# chain, so that a change of the device's speed during the case falls on all three alike.
steps_depth() { echo $(( $(wc -w <<<"$DEPTHS") * 3 * DEPTH_ROUNDS )); }
# depth_measure D CONFIG ROUND SOCKET SERVE...: starts the server (SERVE...: strata_serve or
# qemu_nbd_serve and their arguments) on a cold page cache, times it until it answers, reads,
# and records the open time and the RSS beside the read's record.
depth_measure() {
  local d=$1 cfg=$2 round=$3 sock=$4 t0 open rss; shift 4
  progress "4k randread QD32 through $d layers $cfg ($round of $DEPTH_ROUNDS rounds)"
  drop_caches
  t0=$(now)
  "$@"
  open=$(elapsed "$t0")
  run_fio depth "d$d" "$cfg" "$round" "$SERVER_PID" "nbd:$sock" --rw=randread --bs=4k \
    --iodepth=32 --runtime="$RUNTIME" --time_based >&2
  rss=$(awk '/^VmRSS/ {print $2 * 1024}' "/proc/$SERVER_PID/status")
  record depth "d$d" "$cfg" "$round" open_s="$open" rss_bytes="$rss" layers="$d"
  stop_server
}
case_depth() {
  local dir=$WORK/depth prev=0 d round
  new_strata_chain "$dir"
  "$STRATA" create -b "$BASE" -F raw "$dir/one.strata" >/dev/null
  for d in $DEPTHS; do
    # A chain of d layers: d-1 written snapshots below an empty top.
    (( d - 1 <= prev )) || grow_strata "$dir" $(( prev + 1 )) $(( d - 1 ))
    grow_qcow2 "$dir" $(( prev + 1 )) $(( d - 1 ))
    prev=$(( d - 1 ))
    for (( round = 1; round <= DEPTH_ROUNDS; round++ )); do
      depth_measure "$d" strata-1layer "$round" "$dir/sock" \
        strata_serve "depth$d-one" "$dir/sock" "$dir/one.strata" --no-control
      depth_measure "$d" strata "$round" "$dir/sock" \
        strata_serve "depth$d-strata" "$dir/sock" "$dir/disk.strata" --no-control
      depth_measure "$d" qcow2 "$round" "$dir/sock" \
        qemu_nbd_serve "depth$d-qcow2" "$dir/sock" qcow2 "$dir/q$d.qcow2" writeback
    done
  done
  rm -rf "$dir"
}

# --- snapshot: live snapshot pause under load; write throughput against snapshots -----------------
# Pause: SNAPSHOTS live snapshots, one every 0.2 s, during fio 4k random write QD32. strata:
# `strata snapshot --control --json`, the server's pause_ms (no request could start); QEMU:
# qemu-storage-daemon, QMP blockdev-snapshot-sync, the command's wall time (it drains inside).
steps_snapshot() { echo $(( 2 + $(wc -w <<<"$SNAP_DEPTHS") * 2 * SNAP_ROUNDS )); }
# The load rewrites the first 64 MiB of the disk: each of the 100 layers then holds at most
# 64 MiB. Over a whole 1 GiB disk every layer would allocate some 500 MiB of clusters (8 000
# writes into distinct ones in 0.2 s), 50 GB in all, whose deletion takes many minutes on a
# volume mounted with `discard`.
snapshot_load() {  # URI OUT: the fio write load, in the background (FIO_PID)
  local span=$(( SIZE_BYTES < 67108864 ? SIZE_BYTES : 67108864 ))
  local args=(--name=load --ioengine=nbd "--uri=$1" --rw=randwrite --bs=4k --iodepth=32
              --size="$span" --time_based --runtime=3600 --output-format=json "--output=$2")
  note_cmd "snapshot load: fio ${args[*]} (stopped after the snapshots)"
  fio "${args[@]}" >/dev/null 2>&1 &
  FIO_PID=$!
  STARTED_PIDS+=("$FIO_PID")
  sleep 1
}
snapshot_pause() {
  local dir=$WORK/pause-strata i
  mkdir -p "$dir"
  progress "$SNAPSHOTS live snapshots under 4k randwrite QD32 strata"
  "$STRATA" create -b "$BASE" -F raw "$dir/disk.strata" >/dev/null
  strata_serve pause-strata "$dir/sock" "$dir/disk.strata" --control "$dir/ctl"
  snapshot_load "nbd+unix:///?socket=$dir/sock" "$RESULTS/fio/snapshot-load-strata.json"
  : >"$dir/pauses"
  for (( i = 1; i <= SNAPSHOTS; i++ )); do
    "$STRATA" snapshot --control "$dir/ctl" "p$i" --json |
      "$PY" -c 'import json,sys; print(json.load(sys.stdin)["pause_ms"])' >>"$dir/pauses"
    sleep 0.2
  done
  note_cmd "snapshot strata: strata snapshot --control CTL pI --json (x $SNAPSHOTS, every 0.2 s; pause_ms)"
  stop_pid "$FIO_PID"
  stop_server
  record snapshot pause strata 1 count="$SNAPSHOTS" --samples "$dir/pauses"
  # The layers stay for the cleanup at exit, after the report (discard makes deletion slow).
  dir=$WORK/pause-qemu
  mkdir -p "$dir"

  progress "$SNAPSHOTS live snapshots under 4k randwrite QD32 qemu-storage-daemon"
  qemu-img create -q -f qcow2 -b "$BASE" -F raw "$dir/top.qcow2"
  local qsd=(qemu-storage-daemon
    --blockdev "driver=file,node-name=f0,filename=$dir/top.qcow2,cache.direct=off,aio=threads"
    --blockdev "driver=qcow2,node-name=n0,file=f0"
    --nbd-server "addr.type=unix,addr.path=$dir/sock"
    --export "type=nbd,id=exp0,node-name=n0,name=disk,writable=on"
    --chardev "socket,id=qmp0,path=$dir/qmp.sock,server=on,wait=off" --monitor chardev=qmp0)
  note_cmd "snapshot qemu: ${qsd[*]}"
  "${qsd[@]}" </dev/null >>"$WORK/qsd.log" 2>&1 &
  SERVER_PID=$!
  STARTED_PIDS+=("$SERVER_PID")
  wait_for_nbd "$SERVER_PID" "$dir/sock" "$WORK/qsd.log" disk || die "qemu-storage-daemon did not come up"
  snapshot_load "nbd+unix:///disk?socket=$dir/sock" "$RESULTS/fio/snapshot-load-qemu.json"
  "$PY" "$here/util.py" qmp-snapshots "$dir/qmp.sock" n0 "$dir" "$SNAPSHOTS" 0.2 >"$dir/pauses"
  note_cmd "snapshot qemu: QMP blockdev-snapshot-sync node-name=TOP snapshot-file=qsI.qcow2" \
           "format=qcow2 (x $SNAPSHOTS, every 0.2 s; wall time)"
  stop_pid "$FIO_PID"
  stop_server
  record snapshot pause qemu 1 count="$SNAPSHOTS" --samples "$dir/pauses"
}
# Throughput: 4k random write QD32 into an empty top over D snapshots (D in SNAP_DEPTHS), strata
# beside a qcow2 chain (qemu-nbd, page cache both); SNAP_ROUNDS rounds, the top emptied before
# each (strata revert, a new qcow2 overlay).
snapshot_throughput() {
  local dir=$WORK/snapdepth prev=0 d round t
  new_strata_chain "$dir"
  for d in $SNAP_DEPTHS; do
    (( d <= prev )) || grow_strata "$dir" $(( prev + 1 )) "$d"
    grow_qcow2 "$dir" $(( prev + 1 )) "$d"
    prev=$d
    for (( round = 1; round <= SNAP_ROUNDS; round++ )); do
      for t in strata qcow2; do
        progress "4k randwrite QD32 over $d snapshots $t ($round of $SNAP_ROUNDS rounds)"
        if [[ $t == strata ]]; then
          strata_serve "snap$d-strata" "$dir/sock" "$dir/disk.strata" --no-control
        else
          qcow2_top "$dir" $(( d + 1 ))
          qemu_nbd_serve "snap$d-qcow2" "$dir/sock" qcow2 "$dir/q$(( d + 1 )).qcow2" writeback
        fi
        sync
        run_fio snapshot "s$d" "$t" "$round" "$SERVER_PID" "nbd:$dir/sock" --rw=randwrite --bs=4k \
          --iodepth=32 --runtime="$RUNTIME" --time_based --randseed=4242 >&2
        stop_server
        # The top empty again (so the chain grows by the same layers as qcow2's): revert to the
        # newest snapshot, or a new layer on the base.
        if [[ $t == strata ]] && (( d == 0 )); then
          rm -f "$dir/disk.strata"; "$STRATA" create -b "$BASE" -F raw "$dir/disk.strata" >/dev/null
        elif [[ $t == strata ]]; then
          "$STRATA" revert "$dir/disk.strata" >/dev/null
        fi
      done
    done
  done
  rm -rf "$dir"
}
case_snapshot() { snapshot_pause; snapshot_throughput; }

# --- merge: offline commit; online deletion under load ------------------------------------------
steps_merge() { echo $(( 3 + 4 )); }
# timed CONFIG COMMAND...: wall time of COMMAND plus a sync, page cache dropped first.
timed_merge() {
  local config=$1 t0; shift
  drop_caches
  note_cmd "merge $config: $* ; sync"
  t0=$(now)
  "$@" >"$WORK/$config.out" 2>&1 || die "merge $config failed: $(tail -3 "$WORK/$config.out")"
  sync
  SECS=$(elapsed "$t0")
}
merge_offline() {
  local dir=$WORK/commit mib=$(( $(numfmt --from=iec "$MERGE_SIZE") >> 20 )) ok
  mkdir -p "$dir"
  dd if=/dev/urandom of="$dir/data.raw" bs=1M count="$mib" iflag=fullblock status=none
  truncate -s "$MERGE_SIZE" "$dir/base.raw"
  progress "cp + sync of $MERGE_SIZE"
  timed_merge cp-sync cp "$dir/data.raw" "$dir/copy.raw"
  record merge offline cp-sync 1 seconds="$SECS" verified=1
  rm -f "$dir/copy.raw"

  progress "qemu-img commit of $MERGE_SIZE"
  qemu-img create -q -f qcow2 -b "$dir/base.raw" -F raw "$dir/mid.qcow2"
  qemu-img create -q -f qcow2 -b "$dir/mid.qcow2" -F qcow2 "$dir/ov.qcow2"
  qemu_nbd_serve commit-fill "$dir/sock" qcow2 "$dir/ov.qcow2" none
  nbdcopy "$dir/data.raw" "nbd+unix:///?socket=$dir/sock"
  stop_server
  timed_merge qemu-img-commit qemu-img commit -f qcow2 "$dir/ov.qcow2"
  ok=0; qemu-img compare -q -f qcow2 -F raw "$dir/mid.qcow2" "$dir/data.raw" && ok=1
  record merge offline qemu-img-commit 1 seconds="$SECS" verified="$ok"
  rm -f "$dir"/*.qcow2

  progress "strata commit of $MERGE_SIZE"
  "$STRATA" create -b "$dir/base.raw" -F raw "$dir/top.strata" >/dev/null
  "$STRATA" snapshot "$dir/top.strata" s0 >/dev/null
  strata_serve commit-fill "$dir/sock" "$dir/top.strata" --no-control --cache=none
  nbdcopy "$dir/data.raw" "nbd+unix:///?socket=$dir/sock"
  stop_server
  note_cmd "merge: strata create -b base.raw -F raw top.strata; strata snapshot top.strata s0;" \
           "nbdcopy data.raw into top; the same shape in qcow2 (mid.qcow2 <- ov.qcow2); checked" \
           "untimed (strata export + cmp, qemu-img compare)"
  timed_merge strata-commit "$STRATA" commit "$dir/top.strata"
  ok=0
  "$STRATA" export "$dir/top.strata" "$dir/export.raw" >/dev/null 2>&1 && cmp -s "$dir/export.raw" "$dir/data.raw" && ok=1
  record merge offline strata-commit 1 seconds="$SECS" verified="$ok"
  rm -rf "$dir"
}

# Online: two shapes on an ONLINE_SIZE disk. newest: the newest snapshot holds the
# first half, the active layer the second; delete that snapshot (strata delete-snapshot; QEMU an
# active block-commit, a mirror, block-job-complete on READY). older: a (first half) <- b (second
# half) <- empty active; delete a (strata copies it up into b; QEMU block-commit top=b base=a).
# fio 4k random write QD32 rewrites the second half throughout, with every completion logged:
# IOPS before / during / after, the worst latency and stall during, IOPS per 100 ms.
merge_fill() {  # URI OFFSET: half the disk of fio's data, 1 MiB sequential writes
  fio --name=fill --ioengine=nbd --uri="$1" --rw=write --bs=1M --iodepth=8 --offset="$2" \
    --size=$(( ONLINE_BYTES / 2 )) --output-format=terse >/dev/null 2>>"$WORK/fill.err"
}
start_qsd_chain() {  # DIR QCOW2...: qemu-storage-daemon with the chain as nodes n0.., top exported
  local dir=$1 args=() i=0 prev="" f; shift
  for f in "$@"; do
    args+=(--blockdev "driver=file,node-name=f$i,filename=$f,cache.direct=off,aio=threads")
    args+=(--blockdev "driver=qcow2,node-name=n$i,file=f$i${prev:+,backing=$prev}")
    prev=n$i; i=$(( i + 1 ))
  done
  args+=(--nbd-server "addr.type=unix,addr.path=$dir/sock"
         --export "type=nbd,id=exp0,node-name=$prev,name=disk,writable=on"
         --chardev "socket,id=qmp0,path=$dir/qmp.sock,server=on,wait=off" --monitor chardev=qmp0)
  note_cmd "merge qemu: qemu-storage-daemon ${args[*]}"
  rm -f "$dir/sock"
  qemu-storage-daemon "${args[@]}" </dev/null >>"$WORK/qsd.log" 2>&1 &
  SERVER_PID=$!
  STARTED_PIDS+=("$SERVER_PID")
  wait_for_nbd "$SERVER_PID" "$dir/sock" "$WORK/qsd.log" disk || die "qemu-storage-daemon did not come up"
}
merge_online_one() {  # TARGET SCENARIO
  local t=$1 scen=$2 dir=$WORK/online half=$(( ONLINE_BYTES / 2 )) uri del ms me secs copied
  rm -rf "$dir"; mkdir -p "$dir"
  progress "deleting the $scen snapshot under 4k randwrite QD32 $t"
  if [[ $t == strata ]]; then
    "$STRATA" create --size "$ONLINE_BYTES" "$dir/disk.strata" >/dev/null
    strata_serve online-fill "$dir/sock" "$dir/disk.strata" --control "$dir/ctl"
    uri="nbd+unix:///?socket=$dir/sock"
    merge_fill "$uri" 0; "$STRATA" snapshot --control "$dir/ctl" a >/dev/null
    merge_fill "$uri" "$half"
    if [[ $scen == older ]]; then "$STRATA" snapshot --control "$dir/ctl" b >/dev/null; fi
    stop_server
    drop_caches
    strata_serve "online-$scen-strata" "$dir/sock" "$dir/disk.strata" --control "$dir/ctl"
  else
    local chain=("$dir/q0.qcow2" "$dir/q1.qcow2")
    qemu-img create -q -f qcow2 "$dir/q0.qcow2" "$ONLINE_BYTES"
    qemu_nbd_serve online-fill "$dir/sock" qcow2 "$dir/q0.qcow2" writeback
    merge_fill "nbd+unix:///?socket=$dir/sock" 0; stop_server
    qemu-img create -q -f qcow2 -b "$dir/q0.qcow2" -F qcow2 "$dir/q1.qcow2"
    qemu_nbd_serve online-fill "$dir/sock" qcow2 "$dir/q1.qcow2" writeback
    merge_fill "nbd+unix:///?socket=$dir/sock" "$half"; stop_server
    if [[ $scen == older ]]; then
      qemu-img create -q -f qcow2 -b "$dir/q1.qcow2" -F qcow2 "$dir/q2.qcow2"; chain+=("$dir/q2.qcow2")
    fi
    drop_caches
    start_qsd_chain "$dir" "${chain[@]}"
    uri="nbd+unix:///disk?socket=$dir/sock"
  fi
  local load=(--name=load --ioengine=nbd "--uri=$uri" --rw=randwrite --bs=4k --iodepth=32
              --offset="$half" --size="$half" --time_based --runtime=3600 --randseed=4242
              --disable_lat=1 --disable_slat=1 "--write_lat_log=$dir/lat" --log_unix_epoch=1
              --output-format=json "--output=$RESULTS/fio/merge-online-$scen-$t.json")
  note_cmd "merge online load: fio ${load[*]}"
  fio "${load[@]}" >/dev/null 2>"$dir/load.err" &
  FIO_PID=$!
  STARTED_PIDS+=("$FIO_PID")
  sleep "$(awk -v a="$WARM" -v b="$BEFORE" 'BEGIN { print a + b }')"
  kill -0 "$FIO_PID" 2>/dev/null || die "merge $t $scen: fio exited early: $(tail -3 "$dir/load.err")"
  if [[ $t == strata ]]; then
    del=a
    note_cmd "merge online strata: strata delete-snapshot --control CTL --json a"
    ms=$(date +%s%3N)
    timeout "$MERGE_TIMEOUT" "$STRATA" delete-snapshot --control "$dir/ctl" --json "$del" >"$dir/job.json" 2>&1 \
      || { "$STRATA" cancel --control "$dir/ctl" >/dev/null 2>&1 || true; echo '{}' >"$dir/job.json"; }
    me=$(date +%s%3N)
    read -r copied state < <("$PY" -c 'import json, sys; d = json.load(open(sys.argv[1]))
print(d.get("bytes_copied", 0), d.get("state", "failed"))' "$dir/job.json")
  else
    note_cmd "merge online qemu: QMP block-commit device=TOP top-node=n1 base-node=n0; block-job-complete on BLOCK_JOB_READY"
    "$PY" "$here/util.py" qmp-commit "$dir/qmp.sock" merge "n$(( ${#chain[@]} - 1 ))" n1 n0 \
      "$MERGE_TIMEOUT" >"$dir/job.json"
    read -r ms me copied state < <("$PY" -c 'import json, sys; d = json.load(open(sys.argv[1]))
print(int(d["start"] * 1000), int(d["end"] * 1000), d.get("offset") or 0, d["state"])' "$dir/job.json")
  fi
  secs=$(awk -v a="$ms" -v b="$me" 'BEGIN { printf "%.3f", (b - a) / 1000 }')
  sleep "$AFTER"
  stop_pid "$FIO_PID"
  stop_server
  local w
  w=$("$PY" "$here/util.py" timeline "$dir/lat_clat.1.log" "$ms" "$me" "$WARM" "$dir/timeline.csv")
  # shellcheck disable=SC2086
  record merge "online-$scen" "$t" 1 seconds="$secs" bytes_copied="$copied" state="$state" $w \
    --timeline "$dir/timeline.csv"
  rm -rf "$dir"
}
case_merge() {
  ONLINE_BYTES=$(numfmt --from=iec "$ONLINE_SIZE")
  merge_offline
  local scen t
  for scen in newest older; do for t in strata qemu; do merge_online_one "$t" "$scen"; done; done
}

# --- fragmentation: how a layer lies on the host volume after random writes ---------------------
# FRAG_IOS 4k random writes (QD32, seed 7) into a fresh layer over a sparse base; the server
# stopped (a clean stop flushes) and synced; host extents (filefrag) and allocated bytes; then a
# cold sequential read of the whole disk through the server (1M, QD4). The ceiling: the same
# read of the raw base file by fio itself (O_DIRECT).
steps_fragmentation() { echo 3; }
case_fragmentation() {
  local dir=$WORK/frag t layer ext
  mkdir -p "$dir"
  truncate -s "$SIZE_BYTES" "$dir/base.raw"
  for t in strata qcow2; do
    progress "$FRAG_IOS random 4k writes, then a cold sequential read $t"
    if [[ $t == strata ]]; then
      layer=$dir/layer.strata
      "$STRATA" create -b "$dir/base.raw" -F raw "$layer" >/dev/null
      strata_serve "frag-$t" "$dir/sock" "$layer" --no-control
    else
      layer=$dir/layer.qcow2
      qemu-img create -q -f qcow2 -b "$dir/base.raw" -F raw "$layer"
      qemu_nbd_serve "frag-$t" "$dir/sock" qcow2 "$layer" writeback
    fi
    run_fio fragmentation fill "$t" 1 "$SERVER_PID" "nbd:$dir/sock" --rw=randwrite --bs=4k \
      --iodepth=32 --number_ios="$FRAG_IOS" --randseed=7 >&2
    stop_server
    sync
    ext=$(filefrag "$layer" | sed -n 's/.*: \([0-9]*\) extents\{0,1\} found/\1/p')
    note_cmd "fragmentation: filefrag LAYER; du -B1 LAYER"
    record fragmentation layout "$t" 1 extents="$ext" allocated_bytes="$(du -B1 "$layer" | cut -f1)"
    drop_caches
    if [[ $t == strata ]]; then strata_serve "frag-$t" "$dir/sock" "$layer" --no-control
    else qemu_nbd_serve "frag-$t" "$dir/sock" qcow2 "$layer" writeback; fi
    run_fio fragmentation seqread "$t" 1 "$SERVER_PID" "nbd:$dir/sock" --rw=read --bs=1M --iodepth=4 >&2
    stop_server
  done
  progress "cold sequential read of the raw base file (the device)"
  drop_caches
  run_fio fragmentation seqread phys 1 - "file:$WBASE" --rw=read --bs=1M --iodepth=4 >&2
  rm -rf "$dir"
}
