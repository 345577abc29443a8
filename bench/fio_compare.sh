#!/usr/bin/env bash
# fio_compare.sh: strata serve against its peers, end to end through fio, in ONE run.
#
# Every target serves (or is) the same raw base file of random data; fio's nbd engine drives the
# NBD servers over a unix socket, fio's io_uring engine with O_DIRECT drives the file itself.
#
#   phys         fio io_uring, O_DIRECT, on the base file: this machine's limit
#   null         nbdkit null: the transport ceiling (no storage at all)
#   qemu-raw     qemu-nbd -f raw --cache=none --aio=io_uring on the base    } O_DIRECT pair
#   strata-none  strata serve --cache=none, one empty layer on the base     }
#   nbdkit-file  nbdkit file on the base                                    } page-cache pair
#   strata-wb    strata serve --cache=writeback, one empty layer on the base}
#   before-none  } the same two with the BASELINE binary (an earlier build), when BASELINE is
#   before-wb    } set: a change's before/after ratios from one run
#
# Workloads (one line each, db_bench style):
#   rr4k-qd1     4k random read, QD1, 1 connection (latency: p50 is the figure)
#   rr4k-qd32    4k random read, QD32, 1 connection
#   rr4k-2c      4k random read, 2 connections x QD16 (fio numjobs=2: one connection each)
#   sr1m-qd32    1 MiB sequential read, QD32
#   sw1m-qd32    1 MiB sequential write, QD32 (allocates every cluster of a strata layer)
#   rw4k-qd32    4k random write, QD32 (after sw1m: rewrites into allocated clusters)
#   rw4k-2c      4k random write, 2 connections x QD16
# Copy-on-write section: 4k first writes into a fresh layer, one per 64 KiB cluster in shuffled
#   order (fio iolog replay, QD32), then the rewrite of the same blocks; strata vs qemu-nbd on a
#   qcow2 overlay (and on one with extended_l2=on).
# Chain section: 4k random read QD32 through chains of strata layers (depth 1, 8, 64) and of
#   qcow2 overlays (depth 1, 8, 32, 64); layer i of a chain holds 64 KiB at every cluster
#   c with c % 64 == i % 64, the rest reads from the base.
#
# Reported per run: IOPS, bandwidth, p50 completion latency, and server CPU per I/O
# (utime+stime of the server process from /proc/PID/stat before and after, / fio's I/O count).
# Read runs start with a dropped page cache. Results: markdown on stdout and in $RESULTS, with
# the raw fio JSON and the exact commands.
#
# Environment:
#   STRATA=path      strata binary (default: <repo>/build-bench/cli/strata, then build/, PATH)
#   SIZE=2G          base size          RUNTIME=10   seconds per time-based run
#   ROUNDS=1         rounds of the main section; each round starts fresh strata layers, and the
#                    report takes the median of the rounds
#   SMOKE=1          quick check of the harness: SIZE=256M RUNTIME=2, short chains
#   SECTIONS="main cow chain"          which parts to run
#   TARGETS="phys null qemu-raw strata-none nbdkit-file strata-wb"
#   STRATA_DEPTHS="1 8 64"  QCOW_DEPTHS="1 8 32 64"
#   WORK_PARENT=/var/tmp    where the temporary data directory goes (deleted at exit)
#   RESULTS=dir             where results go (default /tmp/strata-bench-results/fio-compare-DATE)
#   STRATA_SERVE_ARGS=...   extra arguments for strata serve (e.g. --workers 2)
#   BASELINE=path           an earlier strata binary: adds the before-* targets to the main and
#                           copy-on-write sections and a "this build vs BASELINE" table
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
source "$here/lib.sh"

SMOKE=${SMOKE:-0}
if [[ $SMOKE == 1 ]]; then
  SIZE=${SIZE:-256M}; RUNTIME=${RUNTIME:-2}
  STRATA_DEPTHS=${STRATA_DEPTHS:-"1 8"}; QCOW_DEPTHS=${QCOW_DEPTHS:-"1 8"}
fi
SIZE=${SIZE:-2G}
RUNTIME=${RUNTIME:-10}
SECTIONS=${SECTIONS:-"main cow chain"}
ROUNDS=${ROUNDS:-1}
ROUND=1
BASELINE=${BASELINE:-}
DEFAULT_TARGETS="phys null qemu-raw strata-none nbdkit-file strata-wb"
if [[ -n $BASELINE ]]; then DEFAULT_TARGETS+=" before-none before-wb"; fi
TARGETS=${TARGETS:-$DEFAULT_TARGETS}
STRATA_DEPTHS=${STRATA_DEPTHS:-"1 8 64"}
QCOW_DEPTHS=${QCOW_DEPTHS:-"1 8 32 64"}
WORK_PARENT=${WORK_PARENT:-/var/tmp}
STAMP=$(date -u +%Y%m%d-%H%M%S)
RESULTS=${RESULTS:-/tmp/strata-bench-results/fio-compare-$STAMP}
STRATA_SERVE_ARGS=${STRATA_SERVE_ARGS:-}
CLUSTER=65536

find_strata

SIZE_BYTES=$(numfmt --from=iec "$SIZE")
(( SIZE_BYTES % CLUSTER == 0 )) || { echo "SIZE must be a multiple of 64 KiB" >&2; exit 2; }
CLK_TCK=$(getconf CLK_TCK)

mkdir -p "$RESULTS"
WORK=$(mktemp -d "$WORK_PARENT/strata-fio-compare.XXXXXX")
RUNS="$RESULTS/runs.jsonl"
CMDS="$RESULTS/commands.md"
: >"$RUNS"
: >"$CMDS"
STARTED_PIDS=()
declare -A NOTED=()
SERVER_PID=""
SERVER_SOCK=""
SERVER_LABEL=""

log() { echo "[fio_compare $(date +%H:%M:%S)] $*" >&2; }

trap stop_started_and_clean EXIT
trap 'exit 130' INT TERM

require_tools fio_compare fio qemu-nbd qemu-img nbdkit nbdinfo nbdsh python3 numfmt

strata_ok=0
if [[ -n $STRATA ]] && "$STRATA" serve --help >/dev/null 2>&1; then strata_ok=1; fi
if (( !strata_ok )); then
  log "strata serve not available (STRATA='$STRATA'): strata targets are skipped"
fi
want_section() { [[ " $SECTIONS " == *" $1 "* ]]; }


note_cmd() { grep -qxF -- "$*" "$CMDS" || printf '%s\n' "$*" >>"$CMDS"; }

# start_server LABEL SOCKET COMMAND...: runs COMMAND in the background (it must stay in the
# foreground itself), waits until the socket answers NBD, sets SERVER_PID.
start_server() {
  local label=$1 sock=$2; shift 2
  rm -f "$sock"
  "$@" >"$RESULTS/server-$label.log" 2>&1 &
  SERVER_PID=$!
  SERVER_SOCK=$sock
  SERVER_LABEL=$label
  STARTED_PIDS+=("$SERVER_PID")
  wait_for_nbd "$SERVER_PID" "$sock" "$RESULTS/server-$label.log" || { log "server $label did not come up"; return 1; }
}

# SIGTERM, then SIGKILL if the server has not exited 20 s later (noted in the report: a server
# that hangs on shutdown is a bug to fix, not something to wait for).
stop_server() {
  [[ -n $SERVER_PID ]] || return 0
  kill "$SERVER_PID" 2>/dev/null || true
  local i
  for (( i = 0; i < 200; i++ )); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    log "server pid $SERVER_PID did not exit within 20 s of SIGTERM: killed"
    echo "server pid $SERVER_PID ($SERVER_LABEL) did not exit within 20 s of SIGTERM; killed with SIGKILL" >>"$RESULTS/incidents.txt"
    kill -9 "$SERVER_PID" 2>/dev/null || true
  fi
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

# run_fio TARGET WORKLOAD ENDPOINT FIO_ARGS...: one fio run, one line in runs.jsonl.
# ENDPOINT is "nbd:SOCKET" (fio nbd engine; server CPU measured on SERVER_PID) or "file:PATH".
run_fio() {
  local target=$1 workload=$2 endpoint=$3; shift 3
  local out="$RESULTS/fio-$target-$workload-r$ROUND.json"
  local -a cmd=(fio --name="$workload" --output="$out" --output-format=json --group_reporting)
  case $endpoint in
    nbd:*) cmd+=(--ioengine=nbd "--uri=nbd+unix:///?socket=${endpoint#nbd:}") ;;
    file:*) cmd+=(--ioengine=io_uring --direct=1 "--filename=${endpoint#file:}") ;;
  esac
  cmd+=("$@")
  local before=0 after=0 pid=""
  if [[ $endpoint == nbd:* ]]; then pid=$SERVER_PID; before=$(cpu_ticks "$pid"); fi
  if ! "${cmd[@]}" >"${out%.json}.stdout" 2>&1; then
    log "fio failed for $target $workload:"; tail -5 "${out%.json}.stdout" >&2
    return 0
  fi
  local cpu_ticks_used=-1
  if [[ -n $pid ]]; then after=$(cpu_ticks "$pid"); cpu_ticks_used=$(( after - before )); fi
  # One line per workload and engine in commands.md, with the run's own paths abstracted.
  local key="${endpoint%%:*} $workload"
  if [[ -z ${NOTED[$key]:-} ]]; then
    NOTED[$key]=1
    local line="${cmd[*]}"
    line=${line//$RESULTS/\$OUT}; line=${line//$WORK/\$DIR}; line=${line//--output=\$OUT\/fio-$target-$workload-r$ROUND.json/--output=OUT.json}
    note_cmd "fio ($key): $line"
  fi
  python3 - "$out" "$target" "$workload" "$cpu_ticks_used" "$CLK_TCK" "$ROUND" "${cmd[*]}" >>"$RUNS" <<'EOF'
import json, sys
out, target, workload, ticks, clk, rnd, cmd = sys.argv[1:]
ticks, clk = int(ticks), int(clk)
d = json.load(open(out))
ios = iops = bw = 0
p50 = []
for j in d["jobs"]:
    for k in ("read", "write"):
        s = j[k]
        if s["total_ios"] == 0:
            continue
        ios += s["total_ios"]; iops += s["iops"]; bw += s["bw_bytes"]
        pct = s.get("clat_ns", {}).get("percentile", {})
        if "50.000000" in pct:
            p50.append(pct["50.000000"] / 1000.0)
cpu_s = ticks / clk if ticks >= 0 else None
print(json.dumps({
    "target": target, "workload": workload, "round": int(rnd), "ios": ios, "iops": iops, "bw_bytes": bw,
    "p50_us": max(p50) if p50 else None, "server_cpu_s": cpu_s,
    "cpu_us_per_io": (cpu_s * 1e6 / ios) if (cpu_s is not None and ios) else None,
    "load1": float(open("/proc/loadavg").read().split()[0]), "cmd": cmd}))
EOF
  log "$target $workload (round $ROUND): $(tail -1 "$RUNS" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.0f IOPS, %.0f MB/s, p50 %s us, server cpu/io %s us, load1 %s" % (r["iops"], r["bw_bytes"]/1e6, r["p50_us"], r["cpu_us_per_io"], r["load1"]))')"
}

# ---------------------------------------------------------------------------------------------
# Data
BASE="$WORK/base.raw"
log "results in $RESULTS; data in $WORK; base $SIZE of random data"
dd if=/dev/urandom of="$BASE" bs=1M count=$(( SIZE_BYTES >> 20 )) iflag=fullblock status=none
note_cmd "# $(date -u '+%Y-%m-%d %H:%M UTC') $(uname -r), $(nproc) CPUs, fio $(fio --version), $(qemu-nbd --version | head -1), $(nbdkit --version)"
note_cmd "base: dd if=/dev/urandom of=base.raw bs=1M count=$(( SIZE_BYTES >> 20 ))"
note_cmd "strata: ${STRATA:-none} (serve available: $strata_ok)"
if [[ -n $BASELINE ]]; then
  "$BASELINE" serve --help >/dev/null 2>&1 || { echo "BASELINE=$BASELINE cannot serve" >&2; exit 2; }
  note_cmd "baseline (before-* targets): $BASELINE"
fi

NCLUSTERS=$(( SIZE_BYTES / CLUSTER ))
# iolog v2: one 4k write at the start of every 64 KiB cluster, in a fixed shuffled order.
COW_LOG="$WORK/cow.iolog"
python3 - "$NCLUSTERS" "$CLUSTER" >"$COW_LOG" <<'EOF'
import random, sys
n, cl = int(sys.argv[1]), int(sys.argv[2])
order = list(range(n)); random.Random(42).shuffle(order)
print("fio version 2 iolog\nnbd add\nnbd open")
for c in order: print(f"nbd write {c * cl} 4096")
EOF
# fill_layer I: through the server on $SOCK, 64 KiB of random data at every cluster c with
# c % 64 == I % 64, then FLUSH and a clean disconnect (libnbd, queue depth 1).
fill_layer() {
  # nbdsh runs the python3 first in PATH; the Debian one has the nbd module.
  PATH="/usr/bin:$PATH" nbdsh -u "nbd+unix:///?socket=$SOCK" -c "
import os
buf = os.urandom($CLUSTER)
for off in range(($1 % 64) * $CLUSTER, $SIZE_BYTES, 64 * $CLUSTER):
    h.pwrite(buf, off)
h.flush()
h.shutdown()
"
}

SOCK="$WORK/nbd.sock"
TIMED=(--runtime="$RUNTIME" --time_based)
declare -A WL=(
  [rr4k-qd1]="--rw=randread --bs=4k --iodepth=1"
  [rr4k-qd32]="--rw=randread --bs=4k --iodepth=32"
  [rr4k-2c]="--rw=randread --bs=4k --iodepth=16 --numjobs=2"
  [sr1m-qd32]="--rw=read --bs=1M --iodepth=32"
  [sw1m-qd32]="--rw=write --bs=1M --iodepth=32"
  [rw4k-qd32]="--rw=randwrite --bs=4k --iodepth=32"
  [rw4k-2c]="--rw=randwrite --bs=4k --iodepth=16 --numjobs=2"
)
WL_ORDER=(rr4k-qd1 rr4k-qd32 rr4k-2c sr1m-qd32 sw1m-qd32 rw4k-qd32 rw4k-2c)

new_strata_layer() {  # PATH PARENT FORMAT
  rm -f "$1"
  "$STRATA" create -b "$2" -F "$3" "$1" >/dev/null
}

strata_serve() {  # LABEL LAYER CACHE [BINARY]
  local bin=${4:-$STRATA}
  # shellcheck disable=SC2086
  start_server "$1" "$SOCK" "$bin" serve --socket "$SOCK" --cache="$3" --foreground $STRATA_SERVE_ARGS "$2"
  [[ $1 == fill ]] || note_cmd "$1 server: $bin serve --socket SOCK --cache=$3 --foreground $STRATA_SERVE_ARGS $2"
}

qemu_serve() {  # LABEL FORMAT IMAGE [extra]
  local label=$1 fmt=$2 img=$3; shift 3
  start_server "$label" "$SOCK" qemu-nbd -f "$fmt" --cache=none --aio=io_uring --shared=4 -t -k "$SOCK" "$@" "$img"
  [[ $label == fill ]] || note_cmd "$label server: qemu-nbd -f $fmt --cache=none --aio=io_uring --shared=4 -t -k SOCK $* $img"
}

# ---------------------------------------------------------------------------------------------
if want_section main; then
  # Workload-major order: every server is up at once (each on its own socket, idle ones cost
  # nothing) and each workload runs on every target back to back, so a neighbour's load on a
  # shared machine hits all targets of a workload alike.
  for (( ROUND = 1; ROUND <= ROUNDS; ROUND++ )); do
    declare -A SPID=() SSOCK=()
    for t in $TARGETS; do
      SOCK="$WORK/$t.sock"
      case $t in
        phys) note_cmd "phys: fio --ioengine=io_uring --direct=1 --filename=$BASE"; continue ;;
        null)
          start_server null "$SOCK" nbdkit -f -U "$SOCK" null size="$SIZE_BYTES"
          note_cmd "null server: nbdkit -f -U SOCK null size=$SIZE_BYTES" ;;
        qemu-raw) qemu_serve qemu-raw raw "$BASE" ;;
        nbdkit-file)
          start_server nbdkit-file "$SOCK" nbdkit -f -U "$SOCK" file file="$BASE"
          note_cmd "nbdkit-file server: nbdkit -f -U SOCK file file=$BASE" ;;
        strata-none|strata-wb|before-none|before-wb)
          (( strata_ok )) || continue
          cache=none; if [[ $t == *-wb ]]; then cache=writeback; fi
          bin=$STRATA; if [[ $t == before-* ]]; then bin=$BASELINE; fi
          new_strata_layer "$WORK/$t.strata" "$BASE" raw
          note_cmd "$t layer: $STRATA create -b $BASE -F raw $WORK/$t.strata"
          strata_serve "$t" "$WORK/$t.strata" "$cache" "$bin" ;;
        *) log "unknown target $t"; continue ;;
      esac
      SPID[$t]=$SERVER_PID; SSOCK[$t]=$SOCK
    done
    for w in "${WL_ORDER[@]}"; do
      for t in $TARGETS; do
        if [[ $t == phys ]]; then
          ep="file:$BASE"
        elif [[ -n ${SPID[$t]:-} ]]; then
          ep="nbd:${SSOCK[$t]}"; SERVER_PID=${SPID[$t]}
        else
          continue
        fi
        if [[ $w == rr* || $w == sr* ]]; then drop_caches; else sync; fi
        # shellcheck disable=SC2086
        run_fio "$t" "$w" "$ep" ${WL[$w]} "${TIMED[@]}"
      done
    done
    for t in "${!SPID[@]}"; do SERVER_PID=${SPID[$t]}; SERVER_LABEL=$t; stop_server; done
    rm -f "$WORK"/strata-*.strata
  done
  ROUND=1
  SOCK="$WORK/nbd.sock"
fi

# ---------------------------------------------------------------------------------------------
if want_section cow; then
  COW_ARGS=(--read_iolog="$COW_LOG" --replay_no_stall=1 --iodepth=32)
  note_cmd "cow iolog: $NCLUSTERS lines 'nbd write C*65536 4096', clusters shuffled (seed 42)"
  if (( strata_ok )); then
    for t in strata-none ${BASELINE:+before-none}; do
      bin=$STRATA; if [[ $t == before-* ]]; then bin=$BASELINE; fi
      new_strata_layer "$WORK/cow.strata" "$BASE" raw
      strata_serve "${t%-none}-cow" "$WORK/cow.strata" none "$bin"
      run_fio "$t" cow-first "nbd:$SOCK" "${COW_ARGS[@]}"
      run_fio "$t" cow-rewrite "nbd:$SOCK" "${COW_ARGS[@]}"
      stop_server; rm -f "$WORK/cow.strata"
    done
  fi
  for v in qcow2 qcow2-l2x; do
    opts=""; if [[ $v == qcow2-l2x ]]; then opts="-o extended_l2=on"; fi
    # shellcheck disable=SC2086
    qemu-img create -q -f qcow2 $opts -b "$BASE" -F raw "$WORK/cow.qcow2"
    note_cmd "$v overlay: qemu-img create -f qcow2 $opts -b $BASE -F raw cow.qcow2"
    qemu_serve "$v-cow" qcow2 "$WORK/cow.qcow2"
    run_fio "qemu-$v" cow-first "nbd:$SOCK" "${COW_ARGS[@]}"
    run_fio "qemu-$v" cow-rewrite "nbd:$SOCK" "${COW_ARGS[@]}"
    stop_server; rm -f "$WORK/cow.qcow2"
  done
fi

# ---------------------------------------------------------------------------------------------
if want_section chain; then
  note_cmd "chain fill (nbdsh): layer i gets h.pwrite(64 KiB random, C*65536) for every cluster C with C % 64 == i % 64, then h.flush()"
  if (( strata_ok )); then
    for d in $STRATA_DEPTHS; do
      top="$WORK/chain$d.strata"
      new_strata_layer "$top" "$BASE" raw
      for (( i = 0; i < d; i++ )); do
        strata_serve fill "$top" none
        fill_layer "$i"
        stop_server
        if (( i < d - 1 )); then "$STRATA" snapshot "$top" "s$i" >/dev/null; fi
      done
      note_cmd "strata chain depth $d: create -b base -F raw; then per layer: serve, fill, 'strata snapshot LAYER sI'"
      drop_caches
      strata_serve "strata-chain$d" "$top" none
      run_fio strata-none "chain$d-rr4k-qd32" "nbd:$SOCK" --rw=randread --bs=4k --iodepth=32 "${TIMED[@]}"
      stop_server
      rm -f "$WORK"/chain"$d"*.strata
    done
  fi
  maxd=0; for d in $QCOW_DEPTHS; do if (( d > maxd )); then maxd=$d; fi; done
  if (( maxd > 0 )); then
    prev="$BASE"; pfmt=raw
    for (( i = 1; i <= maxd; i++ )); do
      qemu-img create -q -f qcow2 -b "$prev" -F "$pfmt" "$WORK/q$i.qcow2"
      qemu_serve fill qcow2 "$WORK/q$i.qcow2"
      fill_layer $(( i - 1 ))
      stop_server
      prev="$WORK/q$i.qcow2"; pfmt=qcow2
    done
    note_cmd "qcow2 chain: qemu-img create -f qcow2 -b q(i-1) -F qcow2 qi (q1 on base -F raw), each filled as above"
    for d in $QCOW_DEPTHS; do
      drop_caches
      qemu_serve "qcow2-chain$d" qcow2 "$WORK/q$d.qcow2" -r
      run_fio qemu-qcow2 "chain$d-rr4k-qd32" "nbd:$SOCK" --rw=randread --bs=4k --iodepth=32 "${TIMED[@]}"
      stop_server
    done
    rm -f "$WORK"/q*.qcow2
  fi
fi

# ---------------------------------------------------------------------------------------------
sed -i "s|$WORK|\$DIR|g; s|$RESULTS|\$OUT|g" "$CMDS"
python3 - "$RUNS" "$CMDS" "$STRATA_DEPTHS" "$QCOW_DEPTHS" "$SIZE" "$RUNTIME" >"$RESULTS/report.md" <<'EOF'
import json, sys
runs_path, cmds_path, sdepths, qdepths, size, runtime = sys.argv[1:]
import statistics
runs, allruns = {}, {}
for line in open(runs_path):
    r = json.loads(line); allruns.setdefault((r["target"], r["workload"]), []).append(r)
runs = {k: v[-1] for k, v in allruns.items()}
def get(t, w, k):
    """Median over rounds."""
    vals = [r.get(k) for r in allruns.get((t, w), []) if r.get(k) is not None]
    return statistics.median(vals) if vals else None
def fmt(v, unit=""):
    if v is None: return "–"
    if unit == "iops": return f"{v/1000:.1f}k"
    if unit == "mbs": return f"{v/1e6:.0f}"
    return f"{v:.1f}"
targets = [t for t in ["phys", "null", "qemu-raw", "strata-none", "nbdkit-file", "strata-wb",
                       "before-none", "before-wb"]
           if any(k[0] == t for k in runs)]
wls = ["rr4k-qd1", "rr4k-qd32", "rr4k-2c", "sr1m-qd32", "sw1m-qd32", "rw4k-qd32", "rw4k-2c"]
out = []
p = out.append
loads = [r["load1"] for v in allruns.values() for r in v if r.get("load1") is not None]
nrounds = max(len(v) for v in allruns.values()) if allruns else 0
p(f"## fio_compare: base {size}, {runtime}s per timed run, median of {nrounds} round(s)\n")
if loads:
    p(f"1-minute load average after each run: min {min(loads):.2f}, max {max(loads):.2f} "
      "(fio + server alone make about 2 on this 2-CPU box; more means another job shared the CPUs)\n")
if any(k[1] in wls for k in runs):
    for title, key, unit in [("IOPS (4k) / MB/s (1M)", None, None), ("p50 completion latency, µs", "p50_us", ""),
                             ("server CPU per I/O, µs (utime+stime / I/Os)", "cpu_us_per_io", "")]:
        p(f"### {title}\n")
        p("| workload | " + " | ".join(targets) + " |")
        p("|---" * (len(targets) + 1) + "|")
        for w in wls:
            cells = []
            for t in targets:
                if key is None:
                    cells.append(fmt(get(t, w, "bw_bytes"), "mbs") + " MB/s" if "1m" in w and get(t, w, "bw_bytes") is not None
                                 else fmt(get(t, w, "iops"), "iops"))
                else:
                    cells.append(fmt(get(t, w, key)))
            p(f"| {w} | " + " | ".join(cells) + " |")
        p("")
cow = [t for t in ["strata-none", "before-none", "qemu-qcow2", "qemu-qcow2-l2x"] if (t, "cow-first") in runs]
if cow:
    p("### Copy-on-write: 4k first write per 64 KiB cluster vs rewrite (iolog replay, QD32)\n")
    p("| target | first-write IOPS | rewrite IOPS | first/rewrite | CPU µs/IO first | CPU µs/IO rewrite |")
    p("|---|---|---|---|---|---|")
    for t in cow:
        f, r = get(t, "cow-first", "iops"), get(t, "cow-rewrite", "iops")
        p(f"| {t} | {fmt(f,'iops')} | {fmt(r,'iops')} | {f/r:.2f} | {fmt(get(t,'cow-first','cpu_us_per_io'))} | {fmt(get(t,'cow-rewrite','cpu_us_per_io'))} |" if f and r else f"| {t} | – | – | – | – | – |")
    p("")
chains = [(t, int(w[5:].split("-")[0])) for (t, w) in runs if w.startswith("chain")]
if chains:
    p("### 4k random read QD32 through a chain\n")
    p("| target | depth | IOPS | vs depth 1 | p50 µs | CPU µs/IO |")
    p("|---|---|---|---|---|---|")
    for t, d in sorted(chains):
        i = get(t, f"chain{d}-rr4k-qd32", "iops"); i1 = get(t, "chain1-rr4k-qd32", "iops")
        w = f"chain{d}-rr4k-qd32"
        rel = f"{i / i1:.2f}" if i and i1 else "–"
        p(f"| {t} | {d} | {fmt(i, 'iops')} | {rel} | {fmt(get(t, w, 'p50_us'))} | {fmt(get(t, w, 'cpu_us_per_io'))} |")
    p("")
# Targets of issue 4, as ratios within this run.
def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b
S = "strata-none"
sdmax = max([int(x) for x in sdepths.split()] or [1])
checks = [
    ("4k randread QD32 vs qemu-nbd raw", ratio(get(S, "rr4k-qd32", "iops"), get("qemu-raw", "rr4k-qd32", "iops")), ">=", 1.5),
    ("4k randread QD32 vs physical (fio io_uring O_DIRECT)", ratio(get(S, "rr4k-qd32", "iops"), get("phys", "rr4k-qd32", "iops")), ">=", 0.85),
    ("4k randwrite QD32 vs qemu-nbd raw", ratio(get(S, "rw4k-qd32", "iops"), get("qemu-raw", "rw4k-qd32", "iops")), ">=", 1.3),
    ("1M seq read vs physical", ratio(get(S, "sr1m-qd32", "bw_bytes"), get("phys", "sr1m-qd32", "bw_bytes")), ">=", 0.85),
    ("4k randread QD1 p50 vs qemu-nbd raw", ratio(get(S, "rr4k-qd1", "p50_us"), get("qemu-raw", "rr4k-qd1", "p50_us")), "<=", 0.6),
    ("server CPU µs per 4k randread (QD32)", get(S, "rr4k-qd32", "cpu_us_per_io"), "<=", 10),
    ("server CPU µs per 4k randwrite (QD32)", get(S, "rw4k-qd32", "cpu_us_per_io"), "<=", 10),
    ("CoW first write vs rewrite of the same blocks", ratio(get(S, "cow-first", "iops"), get(S, "cow-rewrite", "iops")), ">=", 0.9),
    ("CoW first write vs qemu-nbd qcow2 first write", ratio(get(S, "cow-first", "iops"), get("qemu-qcow2", "cow-first", "iops")), ">=", 3.0),
    (f"4k randread QD32, chain depth {sdmax} vs 1", ratio(get(S, f"chain{sdmax}-rr4k-qd32", "iops"), get(S, "chain1-rr4k-qd32", "iops")), ">=", 0.95),
]
p("### Targets (issue 4), strata --cache=none, ratios within this run\n")
p("| check | measured | target | met |")
p("|---|---|---|---|")
for name, v, op, goal in checks:
    if v is None:
        p(f"| {name} | not measured | {op} {goal} | – |"); continue
    met = v >= goal if op == ">=" else v <= goal
    p(f"| {name} | {v:.3g} | {op} {goal} | {'yes' if met else 'NO'} |")
wb = [("strata-wb / nbdkit file, " + w, ratio(get("strata-wb", w, "iops"), get("nbdkit-file", w, "iops"))) for w in wls]
if any(v is not None for _, v in wb):
    p("\nPage-cache pair (no target in the issue): " + ", ".join(f"{n.split(', ')[1]} {v:.2f}" for n, v in wb if v is not None))
before = [(now, then) for now, then in [("strata-none", "before-none"), ("strata-wb", "before-wb")]
          if any(k[0] == then for k in runs)]
if before:
    p("\n### This build vs BASELINE (ratios within this run: > 1 is faster / more CPU)\n")
    p("| workload | " + " | ".join(f"{n} / {b} IOPS | CPU µs/IO" for n, b in before) + " |")
    p("|---" * (2 * len(before) + 1) + "|")
    for w in wls + ["cow-first", "cow-rewrite"]:
        cells = []
        for n, b in before:
            r, c = ratio(get(n, w, "iops"), get(b, w, "iops")), ratio(get(n, w, "cpu_us_per_io"), get(b, w, "cpu_us_per_io"))
            cells += [f"{r:.3f}" if r else "–", f"{c:.3f}" if c else "–"]
        if any(x != "–" for x in cells): p(f"| {w} | " + " | ".join(cells) + " |")
import os
inc = os.path.join(os.path.dirname(runs_path), "incidents.txt")
if os.path.exists(inc):
    p("\n### Incidents\n")
    for line in open(inc): p("- " + line.strip())
p("\n### Commands\n")
p("```")
p(open(cmds_path).read().rstrip())
p("```")
print("\n".join(out))
EOF
cat "$RESULTS/report.md"
log "report: $RESULTS/report.md"
