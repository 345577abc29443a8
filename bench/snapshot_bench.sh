#!/usr/bin/env bash
# snapshot_bench.sh: live snapshot pause under load, and write/read throughput against chain
# depth, strata beside qemu-nbd on a qcow2 chain, in ONE run.
#
# Definitions (one line each, db_bench style):
#   pause        `strata snapshot --control` x SNAPSHOTS (default 100), one every 0.2 s, during
#                a 4k random-write QD32 fio load (fio --ioengine=nbd, 1 connection) on a
#                SIZE disk; figure = the server's own pause_ms (no request could start) per
#                snapshot: p50, p90, p99, max; plus the load's IOPS during the run.
#   rw4k-qd32@D  4k random write, QD32, RUNTIME s, on an empty top over a chain with D snapshots
#                below it (D in DEPTHS, default "0 8 64"); every snapshot layer holds LAYER_IOS
#                random 4 KiB writes (fio --number_ios, its own seed). strata: the chain is built
#                live with the control socket; qemu: qemu-img create -f qcow2 -b PREV -F qcow2
#                per layer, each filled through qemu-nbd, then qemu-nbd --cache=writeback on the
#                top. Median of ROUNDS rounds; each round measures every (server, depth) once,
#                in a rotating order, on a fresh empty top.
#   rr4k-qd32@D  4k random read, QD32, RUNTIME s, same chains (after the write run).
#
# Environment:
#   STRATA=path   strata binary (default: <repo>/build-bench/cli/strata, build/, build-live/, PATH)
#   SIZE=1G  RUNTIME=10  SNAPSHOTS=100  DEPTHS="0 8 64"  LAYER_IOS=2048  ROUNDS=3
#   SMOKE=1       quick check of the harness: SIZE=256M RUNTIME=2 SNAPSHOTS=10 DEPTHS="0 8"
#                 ROUNDS=1
#   SECTIONS="pause depth"  TARGETS="strata qemu"   WORK_PARENT=/var/tmp   RESULTS=dir (default
#   /tmp/strata-bench-results/snapshot-DATE)
# Results: markdown on stdout and in $RESULTS/report.md, raw fio JSON and the commands beside.
# Only the servers this script started are stopped, by PID.
set -euo pipefail
export PATH="/usr/bin:/usr/sbin:/bin:/sbin:$PATH"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
source "$here/lib.sh"
SMOKE=${SMOKE:-0}
if [[ $SMOKE == 1 ]]; then
  SIZE=${SIZE:-256M}; RUNTIME=${RUNTIME:-2}; SNAPSHOTS=${SNAPSHOTS:-10}; DEPTHS=${DEPTHS:-"0 8"}
  ROUNDS=${ROUNDS:-1}
fi
SIZE=${SIZE:-1G}
RUNTIME=${RUNTIME:-10}
SNAPSHOTS=${SNAPSHOTS:-100}
DEPTHS=${DEPTHS:-"0 8 64"}
LAYER_IOS=${LAYER_IOS:-2048}
ROUNDS=${ROUNDS:-3}
TARGETS=${TARGETS:-"strata qemu"}
SECTIONS=${SECTIONS:-"pause depth"}
WORK_PARENT=${WORK_PARENT:-/var/tmp}
RESULTS=${RESULTS:-/tmp/strata-bench-results/snapshot-$(date +%Y%m%d-%H%M%S)}

find_strata
require_tools snapshot_bench fio jq qemu-img qemu-nbd nbdinfo
[[ -x ${STRATA:-} ]] || { echo "snapshot_bench: no strata binary (STRATA=...)" >&2; exit 1; }

mkdir -p "$RESULTS"
WORK=$(mktemp -d "$WORK_PARENT/strata-snapbench-XXXXXX")
SERVER_PID=""
FIO_PID=""
log() { printf 'snapshot_bench %s: %s\n' "$(date +%T)" "$*" >&2; }
# fio's nbd engine prints "fio: connected to NBD server" before the JSON document.
fio_json() { sed -n '/^{/,$p' "$1"; }
cmd() { printf '%s\n' "$*" >>"$RESULTS/commands.md"; }
cleanup() {
  stop_pid "$FIO_PID"
  stop_pid "$SERVER_PID"
  rm -rf "$WORK"
}
trap cleanup EXIT

SOCK="$WORK/disk.sock"
URI="nbd+unix:///?socket=$SOCK"

wait_ready() { wait_for_nbd "$SERVER_PID" "$SOCK" "$WORK/server.log" || exit 1; }
start_strata() {  # LAYER
  rm -f "$SOCK"
  cmd "$STRATA serve --foreground --socket $SOCK --control $WORK/disk.ctl --log-level=error $1"
  "$STRATA" serve --foreground --socket "$SOCK" --control "$WORK/disk.ctl" --log-level=error "$1" \
    </dev/null >>"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_ready
}
start_qemu() { start_qemu_nbd_qcow2 "$1" "$SOCK" "$WORK/server.log"; }  # QCOW2
stop_server() { stop_pid "$SERVER_PID"; SERVER_PID=""; }

# fio NAME RW [extra...] -> JSON in $RESULTS/NAME.json; prints "IOPS SERVER_CPU_US_PER_IO".
run_fio() {
  local name=$1 rw=$2; shift 2
  local args=(--name="$name" --ioengine=nbd --uri="$URI" --rw="$rw" --bs=4k --iodepth=32
              --size="$SIZE" --output-format=json "$@")
  cmd "fio ${args[*]}"
  local before after
  before=$(cpu_ticks "$SERVER_PID")
  fio "${args[@]}" >"$RESULTS/$name.json" 2>"$RESULTS/$name.err"
  after=$(cpu_ticks "$SERVER_PID")
  fio_json "$RESULTS/$name.json" |
    jq -r --arg rw "${rw#rand}" --argjson ticks $((after - before)) --argjson hz "$(getconf CLK_TCK)" '
      .jobs[0][if $rw == "write" then "write" else "read" end] as $j
      | "\($j.iops | floor) \(if $j.total_ios > 0 then ($ticks / $hz * 1e6 / $j.total_ios * 100 | round) / 100 else "?" end)"'
}
# Fills the current top with LAYER_IOS random 4k writes, seed $1.
fill_layer() {
  fio --name=fill --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32 --size="$SIZE" \
    --number_ios="$LAYER_IOS" --randseed="$1" --output-format=terse >/dev/null 2>&1
}

{
  echo "# snapshot_bench $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "host: $(nproc) CPUs, $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg);"\
       "work dir on $(df -T "$WORK" | awk 'NR==2{print $2}'); strata: $STRATA;"\
       "SIZE=$SIZE RUNTIME=$RUNTIME SNAPSHOTS=$SNAPSHOTS DEPTHS=\"$DEPTHS\" LAYER_IOS=$LAYER_IOS"
  if strings "$STRATA" 2>/dev/null | grep -q "_GLIBCXX_ASSERTIONS\|AddressSanitizer"; then
    echo "WARNING: the strata binary looks like a debug/sanitizer build"
  fi
  echo
} >"$RESULTS/report.md"

# --- pause ----------------------------------------------------------------------------------
if [[ " $TARGETS " == *" strata "* && " $SECTIONS " == *" pause "* ]]; then
  log "pause: $SNAPSHOTS live snapshots under 4k random write QD32"
  "$STRATA" create --size "$SIZE" "$WORK/disk.strata" >/dev/null
  start_strata "$WORK/disk.strata"
  fio_args=(--name=load --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32
            --size="$SIZE" --time_based --runtime=3600 --output-format=json)
  cmd "fio ${fio_args[*]}   # killed with SIGINT after the snapshots"
  fio "${fio_args[@]}" >"$RESULTS/pause-load.json" 2>"$RESULTS/pause-load.err" &
  FIO_PID=$!
  sleep 2
  : >"$WORK/pauses"
  for i in $(seq 1 "$SNAPSHOTS"); do
    "$STRATA" snapshot --control "$WORK/disk.ctl" "p$i" --json |
      jq -r '"\(.pause_ms) \(.switch_ms) \(.durable_ms)"' >>"$WORK/pauses"
    sleep 0.2
  done
  cmd "strata snapshot --control $WORK/disk.ctl p\$i --json   # x $SNAPSHOTS, every 0.2 s"
  kill -INT "$FIO_PID"; wait "$FIO_PID" || true; FIO_PID=""
  load_iops=$(fio_json "$RESULTS/pause-load.json" | jq -r '.jobs[0].write.iops | floor' 2>/dev/null || echo "?")
  "$STRATA" stats --control "$WORK/disk.ctl" >"$RESULTS/pause-stats.json"
  stop_server
  cp "$WORK/pauses" "$RESULTS/pauses.txt"
  column_p50_p99() {  # COLUMN of $WORK/pauses -> "p50 p99"
    sort -g -k"$1" "$WORK/pauses" | awk -v c="$1" '{v[NR]=$c} END {
      n = NR; printf "%.2f %.2f\n", v[int(0.50 * n + 0.999999)], v[int(0.99 * n + 0.999999)] }'
  }
  read -r s50 s99 < <(column_p50_p99 2)
  read -r d50 d99 < <(column_p50_p99 3)
  read -r p50 p90 p99 pmax < <(sort -g "$WORK/pauses" | awk '{v[NR]=$1} END {
      n = NR
      i50 = int(0.50 * n + 0.999999); i90 = int(0.90 * n + 0.999999); i99 = int(0.99 * n + 0.999999)
      printf "%.2f %.2f %.2f %.2f\n", v[i50], v[i90], v[i99], v[n] }')
  {
    echo "## Snapshot pause under 4k random write QD32 ($SNAPSHOTS snapshots)"
    echo
    echo "| p50 ms | p90 ms | p99 ms | max ms | of which switching layers p50 / p99 ms | made durable after the pause p50 / p99 ms | load during the run (IOPS) |"
    echo "|---|---|---|---|---|---|---|"
    echo "| $p50 | $p90 | $p99 | $pmax | $s50 / $s99 | $d50 / $d99 | $load_iops |"
    echo
  } >>"$RESULTS/report.md"
  # Deleting 100 preallocated layer files can take minutes on a volume mounted with
  # `discard`: leave them to the cleanup at exit.
  mkdir -p "$WORK/old" && mv "$WORK"/disk*.strata "$WORK/old/"
fi

# --- throughput against chain depth -----------------------------------------------------------
# Every chain is built first, then ROUNDS rounds measure each (target, depth) once, in an order
# that rotates every round, each on a fresh empty top (strata revert / a new qcow2 overlay):
# the medians compare like with like, whatever the machine did in between.
declare -A W R WC RC  # IOPS and server CPU µs per I/O, one value per round
[[ " $SECTIONS " == *" depth "* ]] || DEPTHS=""
build_chain() {  # TARGET DEPTH -> the chain in $WORK/TARGET-dDEPTH
  local target=$1 d=$2 dir="$WORK/$1-d$2"
  mkdir -p "$dir"
  log "$target: building a chain with $d snapshots"
  if [[ $target == strata ]]; then
    "$STRATA" create --size "$SIZE" "$dir/disk.strata" >/dev/null
    start_strata "$dir/disk.strata"
    for i in $(seq 1 "$d"); do
      fill_layer "$i"
      "$STRATA" snapshot --control "$WORK/disk.ctl" "l$i" >/dev/null
    done
    stop_server
  else
    qemu-img create -q -f qcow2 "$dir/q0.qcow2" "$SIZE"
    for i in $(seq 1 "$d"); do
      start_qemu "$dir/q$((i - 1)).qcow2"
      fill_layer "$i"
      stop_server
      qemu-img create -q -f qcow2 -b "$dir/q$((i - 1)).qcow2" -F qcow2 "$dir/q$i.qcow2"
    done
  fi
}
serve_fresh_top() {  # TARGET DEPTH: empties the top layer and serves the chain
  local target=$1 d=$2 dir="$WORK/$1-d$2"
  if [[ $target == strata ]]; then
    "$STRATA" revert "$dir/disk.strata" >/dev/null
    start_strata "$dir/disk.strata"
  else
    rm -f "$dir/q$d.qcow2"
    if [[ $d == 0 ]]; then qemu-img create -q -f qcow2 "$dir/q0.qcow2" "$SIZE"
    else qemu-img create -q -f qcow2 -b "$dir/q$((d - 1)).qcow2" -F qcow2 "$dir/q$d.qcow2"; fi
    start_qemu "$dir/q$d.qcow2"
  fi
}
if [[ -n $DEPTHS ]]; then
  cmd "# chains: strata create + (fio fill, strata snapshot --control) x D; qemu-img create -f qcow2 -b q\$((i-1)).qcow2 -F qcow2 q\$i.qcow2, each filled through qemu-nbd first"
  cmd "# each round and (target, depth): strata revert TOP / a new empty qcow2 top, then the two fio runs below"
  for target in $TARGETS; do for d in $DEPTHS; do build_chain "$target" "$d"; done; done
  sync; sleep 5  # let writeback of the build settle
  read -ra depth_list <<<"$DEPTHS"
  for round in $(seq 1 "$ROUNDS"); do
    n=${#depth_list[@]}
    for k in $(seq 0 $((n - 1))); do
      d=${depth_list[$(((k + round - 1) % n))]}
      for target in $TARGETS; do
        log "round $round: $target with $d snapshots"
        serve_fresh_top "$target" "$d"
        read -r iops cpu < <(run_fio "$target-rw4k-qd32-d$d-r$round" randwrite --time_based \
                               --runtime="$RUNTIME" --randseed=4242)
        W[$target,$d]+=" $iops"; WC[$target,$d]+=" $cpu"
        read -r iops cpu < <(run_fio "$target-rr4k-qd32-d$d-r$round" randread --time_based \
                               --runtime="$RUNTIME" --randseed=4343)
        R[$target,$d]+=" $iops"; RC[$target,$d]+=" $cpu"
        stop_server
      done
    done
  done
fi

pct() {  # value base -> "+1.2%"
  awk -v v="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%+.1f%%", (v - b) * 100 / b; else print "?" }'
}
[[ -n $DEPTHS ]] && {
  first=${DEPTHS%% *}
  echo "## Throughput against chain depth (median IOPS of $ROUNDS rounds; change against depth $first of the same server)"
  echo
  echo "| snapshots below the top | strata rw4k-qd32 | qemu-nbd qcow2 rw4k-qd32 | strata rr4k-qd32 | qemu-nbd qcow2 rr4k-qd32 |"
  echo "|---|---|---|---|---|"
  for d in $DEPTHS; do
    row="| $d"
    for kind in W R; do
      for target in strata qemu; do
        if [[ $kind == W ]]; then v=${W[$target,$d]:-}; b=${W[$target,$first]:-}
        else v=${R[$target,$d]:-}; b=${R[$target,$first]:-}; fi
        v=$(median <<<"$v"); b=$(median <<<"$b")
        if [[ -z $v ]]; then row+=" | -"; elif [[ $d == "$first" ]]; then row+=" | $v"; else row+=" | $v ($(pct "$v" "$b"))"; fi
      done
    done
    echo "$row |"
  done
  echo
  echo "Server CPU per I/O (median µs; less sensitive to what else the machine does than IOPS):"
  echo
  echo "| snapshots below the top | strata write | qemu-nbd write | strata read | qemu-nbd read |"
  echo "|---|---|---|---|---|"
  for d in $DEPTHS; do
    echo "| $d | $(median <<<"${WC[strata,$d]:-}") | $(median <<<"${WC[qemu,$d]:-}") | $(median <<<"${RC[strata,$d]:-}") | $(median <<<"${RC[qemu,$d]:-}") |"
  done
  echo
  echo "Every round (IOPS / server CPU µs per I/O, in round order):"
  echo
  for target in $TARGETS; do for d in $DEPTHS; do
    echo "- $target depth $d: write${W[$target,$d]:-} /${WC[$target,$d]:-}; read${R[$target,$d]:-} /${RC[$target,$d]:-}"
  done; done
  echo
  echo "Commands: $RESULTS/commands.md; raw fio JSON beside it."
} >>"$RESULTS/report.md"
cat "$RESULTS/report.md"
