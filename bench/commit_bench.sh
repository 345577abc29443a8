#!/usr/bin/env bash
# commit_bench.sh: merging a fully written layer into its parent, strata vs qemu-img vs a copy.
#
#   strata-commit        `strata commit LAYER`: LAYER holds SIZE of random data (written through
#                        `strata serve` by nbdcopy) over an empty frozen snapshot s0 over a raw
#                        base of SIZE other random bytes; the merge goes into s0 (snapshot delete).
#   qemu-img-commit      `qemu-img commit -f qcow2 OVERLAY`: the same shape in qcow2 (64 KiB
#                        clusters): overlay with the same data over an empty qcow2 over the base.
#   qemu-img-commit-raw  the qcow2 overlay committed straight into the raw base.
#   cp-sync              `cp DATA COPY; sync`: copying SIZE bytes, the floor for moving the data.
# Each timing covers the command and a following `sync` (dirty pages count as not done), and
# starts with a dropped page cache. After each merge the result is compared with the data
# (untimed: export + cmp, qemu-img compare), so a fast but wrong commit cannot pass. Goal (issue 3): strata <= qemu-img, and
# strata <= 1.25 x cp + sync.
#
# Each is done REPEAT times (default 3, interleaved) and the median is used; all are shown.
# Environment: STRATA=path, SIZE=1G, REPEAT=3, SMOKE=1 (SIZE=128M REPEAT=1), WORK_PARENT=/var/tmp,
#              RESULTS=dir (default /tmp/strata-bench-results/commit-DATE).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
source "$here/lib.sh"
if [[ ${SMOKE:-0} == 1 ]]; then SIZE=${SIZE:-128M}; REPEAT=${REPEAT:-1}; fi
REPEAT=${REPEAT:-3}
SIZE=${SIZE:-1G}
WORK_PARENT=${WORK_PARENT:-/var/tmp}
RESULTS=${RESULTS:-/tmp/strata-bench-results/commit-$(date -u +%Y%m%d-%H%M%S)}
find_strata
SIZE_BYTES=$(numfmt --from=iec "$SIZE")
MIB=$(( SIZE_BYTES >> 20 ))

mkdir -p "$RESULTS"
WORK=$(mktemp -d "$WORK_PARENT/strata-commit-bench.XXXXXX")
SOCK="$WORK/nbd.sock"
URI="nbd+unix:///?socket=$SOCK"
STARTED_PIDS=()
SERVER_PID=""
log() { echo "[commit_bench $(date +%H:%M:%S)] $*" >&2; }
trap stop_started_and_clean EXIT
trap 'exit 130' INT TERM
require_tools commit_bench qemu-img qemu-nbd nbdcopy nbdinfo numfmt python3
strata_ok=0
if [[ -n $STRATA ]] && "$STRATA" --help 2>&1 | grep -q "^ *commit" && "$STRATA" serve --help >/dev/null 2>&1; then
  strata_ok=1
else
  log "strata commit/serve not available (STRATA='$STRATA'): strata is skipped"
fi


start_server() {  # LABEL COMMAND...
  local label=$1; shift
  rm -f "$SOCK"
  "$@" >"$RESULTS/server-$label.log" 2>&1 &
  SERVER_PID=$!
  STARTED_PIDS+=("$SERVER_PID")
  wait_for_nbd "$SERVER_PID" "$SOCK" "$RESULTS/server-$label.log" || { log "$label did not come up"; return 1; }
}
stop_server() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; }

declare -A SECS=()
CMDS=()
# timed NAME COMMAND...: wall time of COMMAND plus a sync, page cache dropped first.
timed() {
  local name=$1; shift
  drop_caches
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >"$RESULTS/$name.out" 2>&1 || { log "$name failed:"; tail -5 "$RESULTS/$name.out" >&2; return 1; }
  sync
  t1=$(date +%s.%N)
  SECS[$name]+="$(python3 -c "print(f'{$t1 - $t0:.3f}')") "
  (( rep > 1 )) || CMDS+=("$name: $* ; sync")
  log "$name (run $rep): ${SECS[$name]}s"
}
verify() {  # NAME FILE: the merged base must equal the data written
  if cmp -s "$2" "$WORK/data.raw"; then VERIFIED[$1]+="yes "; else VERIFIED[$1]+="NO "; log "$1: merged image differs from the data"; fi
}
declare -A VERIFIED=()

log "data in $WORK, results in $RESULTS, $SIZE"
dd if=/dev/urandom of="$WORK/base.raw" bs=1M count="$MIB" iflag=fullblock status=none
dd if=/dev/urandom of="$WORK/data.raw" bs=1M count="$MIB" iflag=fullblock status=none

for (( rep = 1; rep <= REPEAT; rep++ )); do
# --- cp + sync
timed cp-sync cp "$WORK/data.raw" "$WORK/copy.raw"
rm -f "$WORK/copy.raw"

# --- qemu-img commit, qcow2 overlay into an empty qcow2 layer (like for like: snapshot delete)
cp "$WORK/base.raw" "$WORK/qbase.raw"
qemu-img create -q -f qcow2 -b "$WORK/qbase.raw" -F raw "$WORK/mid.qcow2"
qemu-img create -q -f qcow2 -b "$WORK/mid.qcow2" -F qcow2 "$WORK/ov.qcow2"
start_server qemu-fill qemu-nbd -f qcow2 --cache=none --aio=io_uring -t -k "$SOCK" "$WORK/ov.qcow2"
nbdcopy "$WORK/data.raw" "$URI"
stop_server
timed qemu-img-commit qemu-img commit -f qcow2 "$WORK/ov.qcow2"
if qemu-img compare -q -f qcow2 -F raw "$WORK/mid.qcow2" "$WORK/data.raw"; then VERIFIED[qemu-img-commit]+="yes "; else VERIFIED[qemu-img-commit]+="NO "; fi
rm -f "$WORK/qbase.raw" "$WORK/mid.qcow2" "$WORK/ov.qcow2"

# --- qemu-img commit, qcow2 overlay straight into the raw base
cp "$WORK/base.raw" "$WORK/qbase.raw"
qemu-img create -q -f qcow2 -b "$WORK/qbase.raw" -F raw "$WORK/ov.qcow2"
start_server qemu-fill qemu-nbd -f qcow2 --cache=none --aio=io_uring -t -k "$SOCK" "$WORK/ov.qcow2"
nbdcopy "$WORK/data.raw" "$URI"
stop_server
timed qemu-img-commit-raw qemu-img commit -f qcow2 "$WORK/ov.qcow2"
verify qemu-img-commit-raw "$WORK/qbase.raw"
rm -f "$WORK/qbase.raw" "$WORK/ov.qcow2"

# --- strata commit: the active layer into its (empty) frozen snapshot parent
if (( strata_ok )); then
  cp "$WORK/base.raw" "$WORK/sbase.raw"
  "$STRATA" create -b "$WORK/sbase.raw" -F raw "$WORK/top.strata" >/dev/null
  "$STRATA" snapshot "$WORK/top.strata" s0 >/dev/null
  start_server strata-fill "$STRATA" serve --socket "$SOCK" --cache=none --foreground "$WORK/top.strata"
  nbdcopy "$WORK/data.raw" "$URI"
  stop_server
  if (( rep == 1 )); then "$STRATA" info "$WORK/top.strata" >"$RESULTS/strata-info-before.txt" 2>&1 || true; fi
  timed strata-commit "$STRATA" commit "$WORK/top.strata"
  "$STRATA" export "$WORK/top.strata" "$WORK/export.raw" >/dev/null 2>&1 || true
  verify strata-commit "$WORK/export.raw"
  rm -f "$WORK"/sbase.raw "$WORK"/top*.strata "$WORK/export.raw"
fi
done

# --- report
median_or_dash() { local m; m=$(median <<<"$*"); echo "${m:-–}"; }
{
  echo "## commit_bench: merge $SIZE of written data into a raw base ($(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -r), $(nproc) CPUs)"
  echo
  echo "| what | median s (incl. sync) | all runs, s | merged image == data |"
  echo "|---|---|---|---|"
  for n in strata-commit qemu-img-commit qemu-img-commit-raw cp-sync; do
    echo "| $n | $(median_or_dash ${SECS[$n]:-}) | ${SECS[$n]:-not measured} | ${VERIFIED[$n]:-–} |"
  done
  echo
  python3 - "$(median_or_dash ${SECS[strata-commit]:-})" "$(median_or_dash ${SECS[qemu-img-commit]:-})" "$(median_or_dash ${SECS[cp-sync]:-})" <<'EOF'
import sys
s, q, c = [float(x) if x and x != "–" else None for x in sys.argv[1:]]
print("| check | measured | target | met |")
print("|---|---|---|---|")
rows = [("strata commit / qemu-img commit", s / q if s and q else None, 1.0),
        ("strata commit / (cp + sync)", s / c if s and c else None, 1.25)]
for name, v, goal in rows:
    print(f"| {name} | {v:.2f} | <= {goal} | {'yes' if v <= goal else 'NO'} |" if v is not None
          else f"| {name} | not measured | <= {goal} | – |")
if q and c:
    print(f"\nqemu-img commit (into qcow2) / (cp + sync) = {q / c:.2f}")
EOF
  echo
  echo '```'
  printf '%s\n' "${CMDS[@]}" | sed "s|$WORK|\$DIR|g"
  echo "strata chain: strata create -b sbase.raw -F raw top.strata; strata snapshot top.strata s0; fill top.strata; commit"
  echo "qemu chain:   qemu-img create -f qcow2 -b qbase.raw -F raw mid.qcow2; qemu-img create -f qcow2 -b mid.qcow2 -F qcow2 ov.qcow2; fill ov.qcow2; commit"
  echo "fill: nbdcopy data.raw nbd+unix:///?socket=SOCK through qemu-nbd -f qcow2 --cache=none --aio=io_uring -t / strata serve --cache=none"
  echo "verify (not timed): strata export top.strata out.raw + cmp; qemu-img compare -f qcow2 -F raw mid.qcow2 data.raw; cmp qbase.raw data.raw"
  echo '```'
} >"$RESULTS/report.md"
cat "$RESULTS/report.md"
