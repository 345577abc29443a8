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
