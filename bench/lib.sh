# Shared by bench/run.sh, its cases (cases.sh) and tls_bench.sh (sourced after they set $repo).

# Sets STRATA to the strata binary unless the caller gave one (`strata bench` passes itself):
# build-bench/, build/, build-live/, then PATH. Leaves it empty when none is found.
find_strata() {
  [[ -n ${STRATA:-} ]] && return 0
  local c
  for c in "$repo/build-bench/cli/strata" "$repo/build/cli/strata" "$repo/build-live/cli/strata" \
           "$(command -v strata || true)"; do
    if [[ -n $c && -x $c ]]; then STRATA=$c; return 0; fi
  done
  STRATA=""
}

# Exit trap: stops only the processes this script started (STARTED_PIDS), then removes $WORK.
stop_started_and_clean() {
  local pid
  for pid in "${STARTED_PIDS[@]}"; do stop_pid "$pid"; done
  # The servers' logs stay with the results: what a failed run's server said.
  if [[ -n ${RESULTS:-} && -d $RESULTS ]] && compgen -G "$WORK/*.log" >/dev/null; then
    mkdir -p "$RESULTS/logs" && cp "$WORK"/*.log "$RESULTS/logs/"
  fi
  rm -rf "$WORK"
}

# utime+stime of a process, all threads, in clock ticks (fields 14 and 15 of /proc/PID/stat;
# split after the last ')' because the command name may hold spaces).
cpu_ticks() {
  local stat
  stat=$(<"/proc/$1/stat")
  stat=${stat##*) }
  # shellcheck disable=SC2086
  set -- $stat
  echo $(( ${12} + ${13} ))
}

# require_tools SCRIPT TOOL...: exits 2 naming the first tool that is not installed.
require_tools() {
  local who=$1 t; shift
  for t in "$@"; do
    command -v "$t" >/dev/null || { echo "$who: $t not installed (scripts/install-deps.sh)" >&2; exit 2; }
  done
}

# wait_for_nbd PID SOCKET LOG [EXPORT]: waits (at most 30 s) until the server PID answers NBD on
# the unix SOCKET; returns 1 with the tail of its LOG if it exited or never answered.
wait_for_nbd() {
  local pid=$1 sock=$2 logfile=$3 export=${4:-} i
  for (( i = 0; i < 1500; i++ )); do
    if [[ -S $sock ]] && timeout 5 nbdinfo --size "nbd+unix:///$export?socket=$sock" >/dev/null 2>&1; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "server pid $pid exited early:" >&2; tail "$logfile" >&2; return 1
    fi
    sleep 0.02
  done
  echo "server pid $pid did not answer on $sock within 30 s" >&2; return 1
}

# stop_pid PID: SIGTERM, at most 20 s to exit, then SIGKILL; reaps it. Only our own children.
stop_pid() {
  local pid=$1
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# Writes dirty pages back, then drops the page cache when allowed (root); never fails.
drop_caches() {
  sync
  if [[ -w /proc/sys/vm/drop_caches ]]; then echo 3 >/proc/sys/vm/drop_caches; fi
  return 0
}

# --- servers, as every case starts them --------------------------------------------------------
# start_server LABEL SOCKET COMMAND...: runs COMMAND (which stays in the foreground) in the
# background with its log in $WORK/LABEL.log, waits until SOCKET answers NBD; sets SERVER_PID
# and records the command line (paths abstracted) for the report.
start_server() {
  local label=$1 sock=$2; shift 2
  rm -f "$sock"
  note_cmd "$label: $*"
  "$@" </dev/null >>"$WORK/$label.log" 2>&1 &
  SERVER_PID=$!
  STARTED_PIDS+=("$SERVER_PID")
  wait_for_nbd "$SERVER_PID" "$sock" "$WORK/$label.log" || die "server $label did not come up"
}

# bench_init NAME: the usual start of a bench script, after it set RESULTS and WORK_PARENT: makes
# $RESULTS and $WORK (a new directory under $WORK_PARENT), empties STARTED_PIDS, sets the exit
# trap that stops them and removes $WORK, and defines log (stderr, "[NAME HH:MM:SS] ...") and
# cmd (a line in $RESULTS/commands.md, emptied here).
bench_init() {
  BENCH_NAME=$1
  mkdir -p "$RESULTS"
  WORK=$(mktemp -d "$WORK_PARENT/strata-$1.XXXXXX")
  STARTED_PIDS=()
  trap stop_started_and_clean EXIT
  trap 'exit 130' INT TERM
  : >"$RESULTS/commands.md"
  log() { echo "[$BENCH_NAME $(date +%H:%M:%S)] $*" >&2; }
  cmd() { printf '%s\n' "$*" >>"$RESULTS/commands.md"; }
}

# strata_serve LABEL SOCKET LAYER [ARGS...]: `strata serve` in the foreground (no daemon: the
# pid is the server's), with its control socket beside the layer unless ARGS say otherwise.
strata_serve() {
  local label=$1 sock=$2 layer=$3; shift 3
  start_server "$label" "$sock" "$STRATA" serve --foreground --socket "$sock" --log-level=error \
    "$@" "$layer"
}

# qemu_nbd_serve LABEL SOCKET FORMAT IMAGE CACHE: qemu-nbd as the bench compares it: O_DIRECT
# with io_uring (CACHE=none, the pair of strata --cache=none) or the page cache with its thread
# pool (CACHE=writeback, the pair of strata's default); 8 connections, persistent.
qemu_nbd_serve() {
  local label=$1 sock=$2 fmt=$3 image=$4 cache=$5 aio=io_uring
  [[ $cache == none ]] || aio=threads
  start_server "$label" "$sock" qemu-nbd --persistent --shared=8 --format="$fmt" \
    --cache="$cache" --aio="$aio" --socket="$sock" "$image"
}

stop_server() { stop_pid "$SERVER_PID"; SERVER_PID=""; }

# --- what the report shows ----------------------------------------------------------------------
# note_cmd LINE: one line of the report's command list (once), with the scratch and results
# directories written as $DIR and $OUT.
note_cmd() {
  local line=${*//$WORK/\$DIR}
  line=${line//$RESULTS/\$OUT}
  grep -qxF -- "$line" "$RESULTS/commands.txt" 2>/dev/null || printf '%s\n' "$line" >>"$RESULTS/commands.txt"
}

# run_fio CASE WORKLOAD CONFIG ROUND SERVER_PID|- ENDPOINT FIO_ARGS...: one fio run and its
# record (bench/util.py fio). ENDPOINT is nbd:SOCKET (fio's nbd engine, the default export) or
# file:PATH (io_uring, O_DIRECT). Prints fio's one-line summary.
run_fio() {
  local case=$1 wl=$2 config=$3 round=$4 pid=$5 ep=$6; shift 6
  local args=(--name="$wl")
  case $ep in
    nbd:*) args+=(--ioengine=nbd "--uri=nbd+unix:///?socket=${ep#nbd:}") ;;
    file:*) args+=(--ioengine=io_uring --direct=1 "--filename=${ep#file:}") ;;
  esac
  args+=("$@")
  note_cmd "$case $config $wl: fio ${args[*]}"
  "$PY" "$here/util.py" fio "$RESULTS/records.jsonl" "$case" "$wl" "$config" "$round" "$pid" \
    "$RESULTS/fio/$case-$wl-$config-r$round.json" -- "${args[@]}"
}

# record CASE WORKLOAD CONFIG ROUND NAME=VALUE... [--samples FILE] [--timeline CSV]
record() { "$PY" "$here/util.py" metric "$RESULTS/records.jsonl" "$@"; }

die() { echo "strata bench: $*" >&2; exit 1; }

# Seconds since the epoch, with nanoseconds.
now() { date +%s.%N; }
# elapsed T0: seconds since T0 (from now), 3 decimals.
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
