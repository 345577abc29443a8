#!/usr/bin/env bash
# `strata serve` in the background, started as the README starts it: from another working
# directory with relative paths, its output captured with `out=$(... 2>&1)`. The capture must
# return as soon as the daemon serves (the daemon lets go of the caller's stderr), the daemon
# must go on serving and stop by its pid file, `--log-file` must get its dated lines, and
# `--log=syslog` must not fail (where no syslog listens, only the exit status is checked). A
# start that fails before daemonizing still tells the caller, with a non-zero exit.
# Usage: serve_background.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
[ "$SERVER_KIND" = strata ] || skip "strata's own daemon: nothing to compare with $SERVER_KIND"
need nbdinfo timeout
interop_init "$@"
STRATA="$(realpath "$STRATA")"  # the cases run in another directory
mkdir -p "$WORK/rel" "$WORK/elsewhere"
"$STRATA" create --size 16M "$WORK/rel/disk.strata" >/dev/null
SOCK_URI="nbd+unix:///?socket=$WORK/rel/disk.sock"

# Runs `out=$(timeout 20 strata serve ARGS 2>&1)` in $WORK/elsewhere, as a user types it. A
# daemon that keeps the caller's stderr holds that $(...) open although `strata serve` itself
# returned (timeout cannot help), so a watchdog bounds it: OUT and RC are set, RC=hung if the
# capture did not return within 25 s.
serve_captured() {
  rm -f "$WORK/out" "$WORK/rc"
  (cd "$WORK/elsewhere" && out="$(timeout 20 "$STRATA" serve "$@" 2>&1)" && rc=0 || rc=$?
   printf '%s' "$out" >"$WORK/out"; echo "$rc" >"$WORK/rc.tmp"; mv "$WORK/rc.tmp" "$WORK/rc") &
  local sub=$!
  for _ in $(seq 250); do [ -f "$WORK/rc" ] && break; sleep 0.1; done
  if [ -f "$WORK/rc" ]; then
    wait "$sub" || true
    OUT="$(cat "$WORK/out")"; RC="$(cat "$WORK/rc")"
  else
    kill "$sub" 2>/dev/null || true; wait "$sub" 2>/dev/null || true
    OUT="(no output: the capture did not return)"; RC=hung
  fi
}

# Alive and not a zombie (an exited daemon whose new parent has not reaped it yet).
running() { [ -e "/proc/$1" ] && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null; }

# The daemon's pid from pid file $1; the cleanup trap stops it if the script fails.
daemon_pid() {
  [ -s "$1" ] || fail "no pid file $1 after the start returned"
  SERVER_PID="$(cat "$1")"
  running "$SERVER_PID" || fail "the daemon $SERVER_PID (from $1) does not run"
}

# SIGTERM to the daemon by its pid file; it must exit within 20 s and remove the file.
stop_daemon() {
  daemon_pid "$1"
  kill -TERM "$SERVER_PID"
  for _ in $(seq 200); do running "$SERVER_PID" || break; sleep 0.1; done
  running "$SERVER_PID" && fail "the daemon $SERVER_PID still runs 20 s after SIGTERM"
  SERVER_PID=""
  [ ! -e "$1" ] || fail "the pid file $1 outlived the daemon"
}

# --- the default (syslog) in the background: the capture returns, the server serves -------------
PID_FILE="$WORK/rel/disk.pid"
start=$SECONDS
serve_captured ../rel/disk.strata --socket ../rel/disk.sock --pid-file ../rel/disk.pid
[ -s "$PID_FILE" ] && daemon_pid "$PID_FILE"
[ "$RC" = 0 ] || fail "out=\$(strata serve ../rel/disk.strata ... 2>&1) gave status $RC: $OUT"
[ $((SECONDS - start)) -le 10 ] || fail "the capture took $((SECONDS - start)) s to return"
grep -q "^serving $WORK/rel/disk.strata at nbd+unix:///?socket=$WORK/rel/disk.sock$" <<<"$OUT" \
  || fail "no 'serving' line in the captured output: $OUT"
size="$(timeout 20 nbdinfo --size "$SOCK_URI")" || fail "the daemon does not serve $SOCK_URI"
[ "$size" = 16777216 ] || fail "nbdinfo --size says $size, not 16 MiB"
# `list` and `stats` find the default control socket from the layer, by a relative path too.
listed="$(cd "$WORK/elsewhere" && timeout 20 "$STRATA" list ../rel/disk.strata)" \
  || fail "strata list ../rel/disk.strata: $listed"
grep -q "active .*$WORK/rel/disk.strata" <<<"$listed" || fail "strata list LAYER shows: $listed"
(cd "$WORK/elsewhere" && timeout 20 "$STRATA" stats --output=json ../rel/disk.strata | jq -e .total >/dev/null) \
  || fail "strata stats --output=json ../rel/disk.strata gave no totals"
out="$(timeout 20 "$STRATA" list --control "$WORK/rel/disk.ctl" "$WORK/rel/disk.strata" 2>&1)" \
  && fail "list with both --control and LAYER was accepted: $out"
stop_daemon "$PID_FILE"
log "background, default log: the capture returned in $((SECONDS - start)) s"

# --- --log-file: relative to the caller's directory, dated lines from the daemon ---------------
serve_captured ../rel/disk.strata --log-file ../rel/server.log --pid-file ../rel/disk.pid
[ -s "$PID_FILE" ] && daemon_pid "$PID_FILE"
[ "$RC" = 0 ] || fail "strata serve --log-file ../rel/server.log gave status $RC: $OUT"
pid="$SERVER_PID"
timeout 20 nbdinfo --size "$SOCK_URI" >/dev/null || fail "the daemon does not serve $SOCK_URI"
stop_daemon "$PID_FILE"
LOG="$WORK/rel/server.log"
[ -s "$LOG" ] || fail "--log-file ../rel/server.log (from elsewhere/) made no $LOG"
stamp='[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}(Z|[+-][0-9]{2}:?[0-9]{2})'
for what in "info: serving $WORK/rel/disk.strata " "info: conn 1: opened" \
            "info: received Terminated" "info: stopped"; do
  grep -Eq "^$stamp strata\[$pid\] $what" "$LOG" \
    || fail "no dated line '... strata[$pid] $what' in $LOG: $(cat "$LOG")"
done
bad="$(grep -Ev "^$stamp strata\[$pid\] (info|error|debug): " "$LOG" || true)"
[ -z "$bad" ] || fail "lines of $LOG without an ISO 8601 date and time: $bad"
grep -q ' info: ' <<<"$OUT" && fail "log lines reached the caller's output: $OUT"
log "--log-file: $(wc -l <"$LOG") dated lines"

# --- --log=syslog: starts and stops (syslog may be absent here: then only the status counts) --
serve_captured ../rel/disk.strata --log=syslog --pid-file ../rel/disk.pid
[ -s "$PID_FILE" ] && daemon_pid "$PID_FILE"
[ "$RC" = 0 ] || fail "strata serve --log=syslog gave status $RC: $OUT"
stop_daemon "$PID_FILE"

# --- failures before daemonizing reach the caller's stderr, with a non-zero exit --------------
serve_captured ../rel/missing.strata --pid-file ../rel/disk.pid
[ "$RC" != 0 ] && [ "$RC" != hung ] || fail "serving a missing layer gave status $RC: $OUT"
grep -q 'missing.strata' <<<"$OUT" || fail "the error does not name the layer: $OUT"
serve_captured ../rel/disk.strata --log-file ../no/such/dir/server.log --pid-file ../rel/disk.pid
[ "$RC" != 0 ] && [ "$RC" != hung ] || fail "an unwritable --log-file gave status $RC: $OUT"
grep -q "log file $WORK/elsewhere/../no/such/dir/server.log: No such file" <<<"$OUT" \
  || fail "the error does not name the log file: $OUT"
serve_captured ../rel/disk.strata --log=journal
[ "$RC" = 2 ] && grep -q -- '--log' <<<"$OUT" || fail "--log=journal gave status $RC: $OUT"
[ ! -e "$PID_FILE" ] || fail "a failed start left $PID_FILE"
log "PASS"
