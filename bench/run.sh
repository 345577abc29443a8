#!/usr/bin/env bash
# bench/run.sh: `strata bench` (cli/bench_command.cc execs it with the same options, and sets
# STRATA to itself). Measures what copy-on-write costs on this machine and disk, every figure
# beside its peer and its ceiling, in one run; writes RESULTS/results.json, report.md and charts.
#
# usage: bench/run.sh [--quick] [--base IMAGE | --size SIZE] [--dir SCRATCH] [--results DIR]
#                     [--cases LIST]          (`strata bench --help` says what each one means)
#
# The cases are functions in cases.sh (case_NAME, and steps_NAME: how many progress steps it
# takes); each appends records to RESULTS/records.jsonl through util.py, and report.py turns
# them into results.json, report.md and the charts (bench/README.md has the schema).
# Only the processes this script started are stopped, by PID.
set -euo pipefail
export PATH="/usr/bin:/usr/sbin:/bin:/sbin:$PATH"
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
repo=$(cd "$here/.." && pwd)
PY=/usr/bin/python3
source "$here/lib.sh"
source "$here/cases.sh"

ALL_CASES="transport cow depth snapshot merge fragmentation"
QUICK=0 BASE_IMAGE="" SIZE="" SCRATCH=/var/tmp RESULTS="" CASES=$ALL_CASES
usage() {
  echo "usage: bench/run.sh [--quick] [--base IMAGE | --size SIZE] [--dir SCRATCH] [--results DIR]"
  echo "                    [--cases LIST]"
  echo "(strata bench --help describes the options)"
}
while (( $# )); do
  opt=$1 val=""
  if [[ $opt == --*=* ]]; then val=${opt#*=}; opt=${opt%%=*}; elif (( $# > 1 )); then val=$2; fi
  case $opt in
    -h|--help) usage; exit 0 ;;
    --quick) [[ $1 == *=* ]] && { echo "run.sh: --quick takes no value" >&2; exit 2; }; QUICK=1 ;;
    --base|--size|--dir|--results|--cases)
      [[ -n $val ]] || { echo "run.sh: $opt needs a value" >&2; usage >&2; exit 2; }
      case $opt in
        --base) BASE_IMAGE=$val ;; --size) SIZE=$val ;; --dir) SCRATCH=$val ;;
        --results) RESULTS=$val ;; --cases) CASES=${val//,/ } ;;
      esac
      [[ $1 == *=* ]] || shift ;;
    *) echo "run.sh: unknown option '$opt'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
for c in $CASES; do
  [[ " $ALL_CASES " == *" $c "* ]] || { echo "strata bench: unknown case '$c' (of: $ALL_CASES)" >&2; exit 2; }
done
[[ -z $BASE_IMAGE || -z $SIZE ]] || { echo "strata bench: --base and --size exclude each other" >&2; exit 2; }

# Sizes and times: the full run fits in 25 minutes on 2 CPUs, --quick in 3 (bench/README.md).
if (( QUICK )); then
  # Four of the transport workloads (every case still runs): the fio runs' start-up, not their
  # length, is most of the time here.
  TRANSPORT_WORKLOADS=(rr4k-qd1 rr4k-qd32 sr1m-qd32 rw4k-qd32)
  SIZE=${SIZE:-64M} RUNTIME=300ms ROUNDS=2 COW_ROUNDS=1 DEPTHS="1 8 64" DEPTH_ROUNDS=1 LAYER_CLUSTERS=4
  SNAPSHOTS=10 SNAP_DEPTHS="0 8" SNAP_ROUNDS=1 MERGE_SIZE=32M ONLINE_SIZE=32M
  WARM=0.5 BEFORE=1 AFTER=1 MERGE_TIMEOUT=10 FRAG_IOS=1024
else
  SIZE=${SIZE:-1G} RUNTIME=1500ms ROUNDS=5 COW_ROUNDS=2 DEPTHS="1 8 64 256" DEPTH_ROUNDS=3 LAYER_CLUSTERS=16
  SNAPSHOTS=100 SNAP_DEPTHS="0 8 64" SNAP_ROUNDS=3 MERGE_SIZE=1G ONLINE_SIZE=512M
  WARM=1 BEFORE=4 AFTER=4 MERGE_TIMEOUT=40 FRAG_IOS=32768
fi

require_tools "strata bench" fio qemu-nbd qemu-img qemu-io qemu-storage-daemon nbdkit nbdinfo \
  filefrag findmnt numfmt "$PY"
find_strata
[[ -n $STRATA ]] && "$STRATA" serve --help >/dev/null 2>&1 \
  || die "no strata binary that serves (STRATA='${STRATA:-}'): build it, or run strata bench"
export STRATA=$(readlink -f "$STRATA")
[[ -d $SCRATCH ]] || die "--dir $SCRATCH: no such directory"

STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS=$(readlink -m "${RESULTS:-strata-bench-$STAMP}")
mkdir -p "$RESULTS/fio"
: >"$RESULTS/records.jsonl"
: >"$RESULTS/commands.txt"
WORK=$(mktemp -d "$(readlink -f "$SCRATCH")/strata-bench.XXXXXX")
STARTED_PIDS=()
SERVER_PID=""
trap stop_started_and_clean EXIT
trap 'exit 130' INT TERM

"$PY" "$here/util.py" machine "$WORK" "$STRATA" >"$RESULTS/machine.json"
build=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["strata_build_type"])' "$RESULTS/machine.json")
case $build in
  Release|RelWithDebInfo|MinSizeRel) ;;
  *) echo "strata bench: WARNING: $STRATA is a '$build' build, not optimized: its figures do not" \
          "stand for strata's (cmake -DCMAKE_BUILD_TYPE=Release)" >&2 ;;
esac
[[ -w /proc/sys/vm/drop_caches ]] || echo "strata bench: not root: the page cache cannot be dropped, reads may be warm" >&2

# The base: the user's image (read only: peers that write get a scratch copy), or random data.
if [[ -n $BASE_IMAGE ]]; then
  BASE=$(readlink -f "$BASE_IMAGE")
  [[ -f $BASE ]] || die "--base $BASE_IMAGE: not a file"
  fmt=$(qemu-img info --output=json "$BASE" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["format"])')
  [[ $fmt == raw ]] || die "--base $BASE_IMAGE is $fmt, not a raw image (strata convert, qemu-img convert -O raw)"
  SIZE_BYTES=$(stat -c %s "$BASE")
  (( SIZE_BYTES % 65536 == 0 )) || die "--base $BASE_IMAGE: its size is not a multiple of 64 KiB"
  WBASE=$WORK/peer-base.raw
  cp --sparse=always "$BASE" "$WBASE"
  note_cmd "base: $BASE_IMAGE (read only); the peers that write get a copy: cp $BASE_IMAGE peer-base.raw"
else
  SIZE_BYTES=$(numfmt --from=iec "$SIZE")
  (( SIZE_BYTES % 65536 == 0 && SIZE_BYTES >= 4194304 )) || die "--size $SIZE: at least 4M, a multiple of 64K"
  BASE=$WORK/base.raw WBASE=$BASE
  dd if=/dev/urandom of="$BASE" bs=1M count=$(( SIZE_BYTES >> 20 )) iflag=fullblock status=none
  note_cmd "base: dd if=/dev/urandom of=base.raw bs=1M count=$(( SIZE_BYTES >> 20 ))"
fi
CLUSTERS=$(( SIZE_BYTES / 65536 ))
# Layers in subdirectories of the scratch directory have their base (and parents) above them.
export STRATA_ALLOW_PARENT_DIR="$WORK:$(dirname "$BASE")"
command="strata bench"
(( QUICK )) && command+=" --quick"
if [[ -n $BASE_IMAGE ]]; then command+=" --base $BASE_IMAGE"; else command+=" --size $SIZE"; fi
command+=" --cases ${CASES// /,}"
cat >"$RESULTS/params.json" <<EOF
{"quick": $QUICK, "base": "${BASE_IMAGE:-scratch random data}", "size_bytes": $SIZE_BYTES,
 "runtime": "$RUNTIME", "rounds": $ROUNDS, "depth_rounds": $DEPTH_ROUNDS, "cases": "$CASES", "scratch": "$SCRATCH",
 "command": "$command"}
EOF

# Progress: "[3/14] 4k randread QD32 strata (2 of 5 rounds) ETA 1m40s" on stderr. The ETA
# extrapolates the time per step so far.
STEP=0 TOTAL=0 T_START=$(date +%s)
for c in $CASES; do TOTAL=$(( TOTAL + $("steps_$c") )); done
progress() {
  STEP=$(( STEP + 1 ))
  local spent=$(( $(date +%s) - T_START )) eta=""
  if (( STEP > 1 )); then
    local left=$(( spent * (TOTAL - STEP + 1) / (STEP - 1) ))
    eta=" ETA $(( left / 60 ))m$(( left % 60 ))s"
  fi
  printf '[%d/%d] %s%s\n' "$STEP" "$TOTAL" "$*" "$eta" >&2
}

echo "strata bench: $STRATA ($build), base $(numfmt --to=iec "$SIZE_BYTES"), scratch $WORK, results $RESULTS" >&2
: >"$RESULTS/timings.txt"
for c in $CASES; do
  t0=$(date +%s)
  "case_$c"
  echo "$c $(( $(date +%s) - t0 )) s" >>"$RESULTS/timings.txt"
done
"$PY" "$here/report.py" "$RESULTS"
echo "strata bench: done in $(( $(date +%s) - T_START )) s: $RESULTS/report.md" >&2
