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
