# Shared by the bench scripts (sourced after they set $repo).

# Sets STRATA to the strata binary unless the caller gave one: build-bench/, build/, build-live/,
# then PATH. Leaves it empty when none is found (the scripts then skip strata or stop).
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
  for pid in "${STARTED_PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  done
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

# The median of the numbers on stdin (separated by blanks or newlines); prints nothing for none.
median() {
  tr ' ' '\n' | { grep . || true; } | sort -n |
    awk '{v[NR]=$1} END { if (NR) print v[int((NR + 1) / 2)] }'
}

# require_tools SCRIPT TOOL...: exits 2 naming the first tool that is not installed.
require_tools() {
  local who=$1 t; shift
  for t in "$@"; do
    command -v "$t" >/dev/null || { echo "$who: $t not installed (scripts/install-deps.sh)" >&2; exit 2; }
  done
}

# wait_for_nbd PID SOCKET LOG: waits (at most 15 s) until the server PID answers NBD on the unix
# SOCKET; returns 1 with the tail of its LOG if it exited or never answered.
wait_for_nbd() {
  local pid=$1 sock=$2 logfile=$3 i
  for (( i = 0; i < 150; i++ )); do
    if [[ -S $sock ]] && timeout 5 nbdinfo --size "nbd+unix:///?socket=$sock" >/dev/null 2>&1; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "server pid $pid exited early:" >&2; tail "$logfile" >&2; return 1
    fi
    sleep 0.1
  done
  echo "server pid $pid did not answer on $sock within 15 s" >&2; return 1
}

# stop_pid PID: SIGTERM, at most 10 s to exit, then SIGKILL; reaps it. Only our own children.
stop_pid() {
  local pid=$1
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# Writes dirty pages back, then drops the page cache when allowed (root); never fails.
drop_caches() {
  sync
  if [[ -w /proc/sys/vm/drop_caches ]]; then echo 3 >/proc/sys/vm/drop_caches; fi
  return 0
}

# start_qemu_nbd_qcow2 QCOW2 SOCKET LOG: qemu-nbd serving one qcow2 file on the unix SOCKET as
# every bench compares it (host page cache, its thread pool, 8 connections); sets SERVER_PID and
# waits until it answers. The caller's `cmd` records the command line in its report.
start_qemu_nbd_qcow2() {
  local args=(--persistent --shared=8 --format=qcow2 --cache=writeback --aio=threads
              "--socket=$2" "$1")
  rm -f "$2"
  cmd "qemu-nbd ${args[*]}"
  qemu-nbd "${args[@]}" </dev/null >>"$3" 2>&1 &
  SERVER_PID=$!
  wait_for_nbd "$SERVER_PID" "$2" "$3" || exit 1
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
