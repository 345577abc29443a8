#!/usr/bin/env bash
# nbd_base.sh: reading through a base served over NBD (issue 14), side by side in one run.
#
#   bench/nbd_base.sh
#
# One export of a random raw image (qemu-nbd -r -f raw, page cache, 8 connections, on a unix
# socket) is the golden base. Three ways of reading it, each through fio's nbd engine:
#   direct   the base export itself (the ceiling: what any layer over it can reach)
#   strata   `strata serve` of a layer created with `-b nbd+unix://... -F nbd` (nothing written:
#            every read goes to the base through strata's libnbd client)
#   qcow2    qemu-nbd serving a qcow2 overlay whose backing file is the same export
#            (`qemu-img create -b nbd+unix://... -F raw`), as QEMU users layer on an NBD base
# Workloads: 4k random read QD32, and 1M sequential read QD8, RUNTIME seconds each, in ROUNDS
# alternating rounds (every server up at once); the median and the spread per configuration,
# the ratio to direct, and the CPU per I/O of the layer's server and of the base server.
#
# Environment: STRATA=path  SIZE=1G  RUNTIME=8  ROUNDS=3  WORK_PARENT=/var/tmp
#              RESULTS=dir (default /tmp/strata-bench-results/nbd-base-DATE)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
source "$here/lib.sh"

[[ ${1:-} == -h || ${1:-} == --help ]] && { sed -n '2,19p' "$0"; exit 0; }
SIZE=${SIZE:-1G}
RUNTIME=${RUNTIME:-8}
ROUNDS=${ROUNDS:-3}
WORK_PARENT=${WORK_PARENT:-/var/tmp}
RESULTS=${RESULTS:-/tmp/strata-bench-results/nbd-base-$(date -u +%Y%m%d-%H%M%S)}
CLK_TCK=$(getconf CLK_TCK)
find_strata
[[ -n $STRATA ]] || { echo "nbd_base.sh: no strata binary (build it, or set STRATA)" >&2; exit 2; }
require_tools nbd_base.sh fio qemu-nbd qemu-img nbdinfo python3 numfmt
bench_init nbd_base

log "base: $SIZE random, served by qemu-nbd; results in $RESULTS"
head -c "$(numfmt --from=iec "$SIZE")" /dev/urandom >"$WORK/base.raw"
BASE_SOCK="$WORK/base.sock"
BASE_URI="nbd+unix:///?socket=$BASE_SOCK"
base_args=(-r -f raw -t -e 8 --cache=writeback -k "$BASE_SOCK" "$WORK/base.raw")
cmd "base: qemu-nbd ${base_args[*]//$WORK/\$DIR}"
qemu-nbd "${base_args[@]}" </dev/null >"$RESULTS/base.log" 2>&1 &
BASE_PID=$!
STARTED_PIDS+=($!)
wait_for_nbd "$BASE_PID" "$BASE_SOCK" "$RESULTS/base.log" || exit 1

"$STRATA" create -b "$BASE_URI" -F nbd "$WORK/vm.strata" >/dev/null
strata_args=(serve --foreground --no-control --socket "$WORK/vm.sock" "$WORK/vm.strata")
cmd "strata create -b $BASE_URI -F nbd vm.strata; strata ${strata_args[*]//$WORK/\$DIR}"
"$STRATA" "${strata_args[@]}" </dev/null >"$RESULTS/strata.log" 2>&1 &
STRATA_PID=$!
STARTED_PIDS+=($!)
wait_for_nbd "$STRATA_PID" "$WORK/vm.sock" "$RESULTS/strata.log" || exit 1

qemu-img create -q -f qcow2 -b "$BASE_URI" -F raw "$WORK/vm.qcow2"
cmd "qemu-img create -f qcow2 -b $BASE_URI -F raw vm.qcow2"
qemu_nbd_serve qcow2 "$WORK/qcow2.sock" qcow2 "$WORK/vm.qcow2" writeback
QCOW2_PID=$SERVER_PID


declare -A SOCK=([direct]=$BASE_SOCK [strata]=$WORK/vm.sock [qcow2]=$WORK/qcow2.sock)
declare -A PID=([direct]=$BASE_PID [strata]=$STRATA_PID [qcow2]=$QCOW2_PID)

# run CONFIG WORKLOAD RW BS QD ROUND: one fio run; one line in runs.jsonl.
run() {
  local config=$1 workload=$2 rw=$3 bs=$4 qd=$5 round=$6
  local out="$RESULTS/fio-$config-$workload-$round.json"
  local f=(fio --name="$workload" --ioengine=nbd "--uri=nbd+unix:///?socket=${SOCK[$config]}"
           --rw="$rw" --bs="$bs" --iodepth="$qd" --time_based --runtime="$RUNTIME"
           --output-format=json --output="$out")
  (( round == 1 )) && cmd "$config $workload: ${f[*]//$WORK/\$DIR}"
  local server_before base_before
  server_before=$(cpu_ticks "${PID[$config]}")
  base_before=$(cpu_ticks "$BASE_PID")
  "${f[@]}" >"$RESULTS/fio-$config-$workload-$round.stdout" 2>&1 ||
    { log "fio failed: $RESULTS/fio-$config-$workload-$round.stdout"; exit 1; }
  python3 - "$out" "$config" "$workload" "$round" \
    "$(( $(cpu_ticks "${PID[$config]}") - server_before ))" \
    "$(( $(cpu_ticks "$BASE_PID") - base_before ))" "$CLK_TCK" >>"$RESULTS/runs.jsonl" <<'EOF'
import json, sys
out, config, workload, rnd, ticks, base_ticks, clk = sys.argv[1:]
r = json.load(open(out))["jobs"][0]["read"]
ios = r["total_ios"]
per_io = lambda t: int(t) / int(clk) * 1e6 / ios if ios else None
print(json.dumps({"config": config, "workload": workload, "round": int(rnd), "ios": ios,
                  "iops": r["iops"], "mbps": r["bw_bytes"] / 1e6,
                  "p50_us": r["clat_ns"]["percentile"]["50.000000"] / 1e3,
                  "server_us_per_io": per_io(ticks), "base_us_per_io": per_io(base_ticks),
                  "load1": float(open("/proc/loadavg").read().split()[0])}))
EOF
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for (( round = 1; round <= ROUNDS; round++ )); do
  for config in direct strata qcow2; do
    log "round $round/$ROUNDS: $config"
    run "$config" randread-4k-qd32 randread 4k 32 "$round"
    run "$config" seqread-1m-qd8 read 1M 8 "$round"
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$RESULTS/runs.jsonl" "$SIZE" "$RUNTIME" "$ROUNDS" "$load_before" "$load_after" \
  >"$RESULTS/report.md" <<'EOF'
import json, statistics, sys, collections
runs, size, runtime, rounds, before, after = sys.argv[1:]
by = collections.defaultdict(list)
for line in open(runs):
    r = json.loads(line)
    by[(r["workload"], r["config"])].append(r)
def med(rs, k):
    v = [r[k] for r in rs if r[k] is not None]
    return statistics.median(v) if v else None
print(f"## nbd_base.sh: reads through an NBD base ({size}, {runtime} s x {rounds} rounds)\n")
print(f"load average before {before}, after {after}\n")
print("| workload | config | IOPS (median) | spread | MB/s | p50 µs | vs direct | layer server µs/IO | base server µs/IO |")
print("|---|---|---|---|---|---|---|---|---|")
for w in ("randread-4k-qd32", "seqread-1m-qd8"):
    direct = med(by[(w, "direct")], "iops")
    for c in ("direct", "strata", "qcow2"):
        rs = by[(w, c)]
        iops = med(rs, "iops")
        lo, hi = min(r["iops"] for r in rs), max(r["iops"] for r in rs)
        srv = med(rs, "server_us_per_io") if c != "direct" else None
        base = med(rs, "base_us_per_io")
        fmt = lambda v: "–" if v is None else f"{v:.1f}"
        print(f"| {w} | {c} | {iops:.0f} | {lo:.0f}–{hi:.0f} | {med(rs, 'mbps'):.0f} | "
              f"{med(rs, 'p50_us'):.0f} | {iops / direct:.2f}x | {fmt(srv)} | {fmt(base)} |")
EOF
cat "$RESULTS/report.md"
log "report: $RESULTS/report.md"
