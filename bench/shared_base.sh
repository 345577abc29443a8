#!/usr/bin/env bash
# shared_base.sh: one golden base, N strata servers each on its own active layer over it, fio on
# all of them at once (issue 14, the scale scenario).
#
#   bench/shared_base.sh [--base file|nbd] [N]        N = 4 servers by default
#
# The golden image: a raw base of SIZE random bytes and a frozen (empty) strata layer on it, in
# its own directory, its files chmod a-w (as a shared golden image is kept). Each of the N disks
# is `strata create -b GOLDEN -F strata` in a directory of its own, served by its own
# `strata serve --cache=writeback` on a unix socket. Workloads, one line each:
#   randread   4k random read, QD $QD, one fio nbd connection per server, all N at once,
#              RUNTIME seconds, page cache dropped first: every read goes down to the golden base
#   randwrite  4k random write, QD $QD, the same: into each server's own layer (the first write
#              of each 64 KiB cluster allocates it, so this is mostly first writes early on)
# Reported per server and in aggregate: IOPS, and server CPU (utime+stime from /proc/PID/stat
# before and after, as seconds and µs per I/O), with the machine's load average.
#
# --base selects where the golden image comes from (setup_base_MODE below):
#   file  the frozen layer and raw base are files every server opens (shared storage: NFS,
#         CephFS; here a local directory)
#   nbd   the golden image served once over NBD (`strata serve --read-only` of the frozen
#         layer, one process), every disk's parent that export (`create -b URI -F nbd`): the
#         base server's CPU is reported too
#
# Environment: STRATA=path  SIZE=1G  RUNTIME=10  QD=16  WORK_PARENT=/var/tmp
#              RESULTS=dir (default /tmp/strata-bench-results/shared-base-DATE)
#              STRATA_SERVE_ARGS=... extra arguments for every strata serve
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
source "$here/lib.sh"

MODE=file
N=4
while (( $# )); do
  case $1 in
    --base) MODE=${2:?--base needs file or nbd}; shift 2 ;;
    --base=*) MODE=${1#--base=}; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) N=$1; shift ;;
  esac
done
if ! [[ $N =~ ^[1-9][0-9]*$ ]]; then
  echo "shared_base.sh: N must be a positive number, not '$N'" >&2; exit 2
fi
SIZE=${SIZE:-1G}
RUNTIME=${RUNTIME:-10}
QD=${QD:-16}
WORK_PARENT=${WORK_PARENT:-/var/tmp}
STAMP=$(date -u +%Y%m%d-%H%M%S)
RESULTS=${RESULTS:-/tmp/strata-bench-results/shared-base-$STAMP}
STRATA_SERVE_ARGS=${STRATA_SERVE_ARGS:-}
CLK_TCK=$(getconf CLK_TCK)

find_strata
if [[ -z $STRATA ]]; then
  echo "shared_base.sh: no strata binary (build it, or set STRATA)" >&2; exit 2
fi
require_tools shared_base.sh fio nbdinfo python3 numfmt
bench_init shared_base
SERVER_PIDS=()
BASE_PID=""

# --- the golden image: sets PARENT, PARENT_FORMAT, GOLDEN_DIR (and BASE_PID for a served one) --
setup_base_file() {
  GOLDEN_DIR="$WORK/golden"
  mkdir -p "$GOLDEN_DIR"
  head -c "$(numfmt --from=iec "$SIZE")" /dev/urandom >"$GOLDEN_DIR/base.raw"
  (cd "$GOLDEN_DIR" && "$STRATA" create -b base.raw -F raw gold.strata >/dev/null &&
     "$STRATA" snapshot gold.strata v1 >/dev/null && rm -f gold.strata .strata-children)
  chmod a-w "$GOLDEN_DIR"/*
  PARENT="$GOLDEN_DIR/gold@v1.strata"
  PARENT_FORMAT=strata
  cmd "golden: $SIZE random base.raw; strata create -b base.raw -F raw gold.strata;" \
      "strata snapshot gold.strata v1; chmod a-w"
}

setup_base_nbd() {
  setup_base_file
  local sock="$GOLDEN_DIR/golden.sock"
  local args=(serve --read-only --foreground --no-control --cache=writeback --socket "$sock"
              "$GOLDEN_DIR/gold@v1.strata")
  cmd "golden served once: strata ${args[*]//$WORK/\$DIR}"
  "$STRATA" "${args[@]}" </dev/null >"$RESULTS/base-server.log" 2>&1 &
  BASE_PID=$!
  STARTED_PIDS+=($!)
  wait_for_nbd "$BASE_PID" "$sock" "$RESULTS/base-server.log" || exit 1
  PARENT="nbd+unix:///?socket=$sock"
  PARENT_FORMAT=nbd
}

# --- N disks and servers ------------------------------------------------------------------------
start_servers() {
  local i dir
  for (( i = 1; i <= N; i++ )); do
    dir="$WORK/host$i"
    mkdir -p "$dir"
    "$STRATA" create -b "$PARENT" -F "$PARENT_FORMAT" "$dir/vm.strata" >/dev/null 2>&1
    # shellcheck disable=SC2086
    local args=(serve --foreground --cache=writeback --no-control --socket "$dir/vm.sock"
                --allow-parent-dir "$GOLDEN_DIR" $STRATA_SERVE_ARGS "$dir/vm.strata")
    (( i == 1 )) && cmd "strata ${args[*]//$WORK/\$DIR}"
    "$STRATA" "${args[@]}" </dev/null >"$RESULTS/server-$i.log" 2>&1 &
    SERVER_PIDS+=($!)
    STARTED_PIDS+=($!)
    wait_for_nbd "$!" "$dir/vm.sock" "$RESULTS/server-$i.log" || exit 1
  done
}

# run_all WORKLOAD RW: fio on every server at once; one line per server in $RESULTS/runs.jsonl.
run_all() {
  local workload=$1 rw=$2 i
  drop_caches
  local -a before=() fios=()
  for (( i = 1; i <= N; i++ )); do before[i]=$(cpu_ticks "${SERVER_PIDS[i-1]}"); done
  local base_before=0
  [[ -n $BASE_PID ]] && base_before=$(cpu_ticks "$BASE_PID")
  local t0=$SECONDS
  for (( i = 1; i <= N; i++ )); do
    local -a f=(fio --name="$workload-$i" --ioengine=nbd
                "--uri=nbd+unix:///?socket=$WORK/host$i/vm.sock"
                --rw="$rw" --bs=4k --iodepth="$QD" --time_based --runtime="$RUNTIME"
                --randseed="$i" --output-format=json --output="$RESULTS/fio-$workload-$i.json")
    (( i == 1 )) && cmd "fio (each server, all at once): ${f[*]//$WORK/\$DIR}"
    "${f[@]}" >"$RESULTS/fio-$workload-$i.stdout" 2>&1 &
    fios+=($!)
  done
  local rc=0
  for pid in "${fios[@]}"; do wait "$pid" || rc=1; done
  (( rc == 0 )) || { log "a fio run failed: see $RESULTS/fio-$workload-*.stdout"; exit 1; }
  local base_ticks=-1
  [[ -n $BASE_PID ]] && base_ticks=$(( $(cpu_ticks "$BASE_PID") - base_before ))
  for (( i = 1; i <= N; i++ )); do
    python3 - "$RESULTS/fio-$workload-$i.json" "$workload" "$i" \
      "$(( $(cpu_ticks "${SERVER_PIDS[i-1]}") - before[i] ))" "$base_ticks" "$CLK_TCK" \
      >>"$RESULTS/runs.jsonl" <<'EOF'
import json, sys
out, workload, server, ticks, base_ticks, clk = sys.argv[1:]
d = json.load(open(out))
ios = iops = 0
for j in d["jobs"]:
    for k in ("read", "write"):
        ios += j[k]["total_ios"]; iops += j[k]["iops"]
cpu = int(ticks) / int(clk)
print(json.dumps({"workload": workload, "server": int(server), "ios": ios, "iops": iops,
                  "server_cpu_s": cpu, "cpu_us_per_io": cpu * 1e6 / ios if ios else None,
                  "base_cpu_s": int(base_ticks) / int(clk) if int(base_ticks) >= 0 else None,
                  "load1": float(open("/proc/loadavg").read().split()[0])}))
EOF
  done
  log "$workload: $N servers for $((SECONDS - t0)) s"
}

report() {
  python3 - "$RESULTS/runs.jsonl" "$N" "$MODE" "$SIZE" "$RUNTIME" "$QD" <<'EOF'
import json, sys, collections
runs, n, mode, size, runtime, qd = sys.argv[1:]
by = collections.defaultdict(list)
for line in open(runs):
    r = json.loads(line); by[r["workload"]].append(r)
print(f"## shared_base.sh: {n} servers on one golden base (--base {mode}), {size}, 4k QD{qd}, {runtime} s\n")
print("| workload | server | IOPS | server CPU s | CPU µs per I/O |")
print("|---|---|---|---|---|")
for w, rs in by.items():
    for r in sorted(rs, key=lambda r: r["server"]):
        print(f"| {w} | {r['server']} | {r['iops']:.0f} | {r['server_cpu_s']:.2f} | {r['cpu_us_per_io']:.1f} |")
    tot_io = sum(r["ios"] for r in rs); tot_cpu = sum(r["server_cpu_s"] for r in rs)
    print(f"| {w} | **all {len(rs)}** | **{sum(r['iops'] for r in rs):.0f}** | {tot_cpu:.2f} | {tot_cpu * 1e6 / tot_io:.1f} |")
    base = rs[0]["base_cpu_s"]
    print(f"| {w} | base server | – | {'%.2f' % base if base is not None else 'n/a (a file)'} | |")
print(f"\nload average at the end: {max(r['load1'] for rs in by.values() for r in rs):.2f}")
EOF
}

log "golden base: --base $MODE, $SIZE; $N servers; results in $RESULTS"
"setup_base_$MODE"
start_servers
run_all randread randread
run_all randwrite randwrite
{ report; echo
  echo "machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  echo; echo "commands:"; sed 's/^/    /' "$RESULTS/commands.md"; } | tee "$RESULTS/report.md"
