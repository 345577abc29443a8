#!/usr/bin/env bash
# `strata serve` started the way systemd starts a socket-activated Type=notify service
# (scripts/strata@.service): lib/sd_launcher.py binds the listening socket and the
# NOTIFY_SOCKET, and its child puts the socket at fd 3, sets LISTEN_FDS=1 and LISTEN_PID to its
# own pid and execs `strata serve` (same pid). The server must serve NBD on the passed socket
# (and bind none of its own), say READY=1 with its MAINPID once it serves, keep its control
# socket, answer SIGTERM with STOPPING=1 and exit 0, leaving the socket file (the manager's)
# in place; the daemon (no --foreground) must serve the passed socket too, its parent telling
# the daemon's pid. Variables meant for another pid are ignored (the server binds its own
# socket); a passed descriptor that is not a listening socket, or --socket beside activation,
# is a clear error and a non-zero exit. A passed TCP socket bound to every interface (0.0.0.0,
# ::) without TLS is refused as --listen 0.0.0.0 is, unless --insecure-listen (then warned).
# Usage: systemd_activation.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
[ "$SERVER_KIND" = strata ] || skip "socket activation of strata itself: nothing to compare"
need nbdinfo timeout
[ -x /usr/bin/python3 ] || skip "/usr/bin/python3 not installed"
/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "python3-libnbd (nbd module) not installed"
interop_init "$@"
LAUNCHER="$(cd "$(dirname "$0")" && pwd)/lib/sd_launcher.py"
LAUNCHER_PID=""
PASSED="$WORK/passed.sock"
"$STRATA" create --size 16M "$LAYER" >/dev/null

# The launcher first (it passes SIGTERM on), then interop_cleanup's server and work dir.
cleanup() {
  local rc=$?
  terminate_pid "$LAUNCHER_PID"
  set +e  # (exit) hands interop_cleanup our status in $?; under -e it would end the trap here
  (exit "$rc")
  interop_cleanup
}
trap cleanup EXIT

# Alive and not a zombie.
running() { [ -e "/proc/$1" ] && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null; }

# launch LAUNCHER_ARGS... -- strata serve ARGS...: the launcher in the background (at most
# 60 s), its output in $WORK/server.log (fail shows it); SERVER_PID is the child it started.
launch() {
  rm -f "$PASSED" "$WORK/server.pid" "$WORK/notify.sock"
  timeout 60 /usr/bin/python3 "$LAUNCHER" --notify-log "$WORK/notify.log" \
    --pid-file "$WORK/server.pid" "$@" >"$WORK/server.log" 2>&1 &
  LAUNCHER_PID=$!
  for _ in $(seq 100); do [ -s "$WORK/server.pid" ] && break; sleep 0.1; done
  [ -s "$WORK/server.pid" ] || fail "the launcher started nothing within 10 s"
  SERVER_PID="$(cat "$WORK/server.pid")"
}

# Waits (at most 15 s) until the server has sent the notification line $1.
await_notify() {
  for _ in $(seq 150); do
    grep -qx -- "$1" "$WORK/notify.log" && return 0
    running "$LAUNCHER_PID" || break
    sleep 0.1
  done
  grep -qx -- "$1" "$WORK/notify.log" \
    || fail "no '$1' on NOTIFY_SOCKET within 15 s; received: $(cat "$WORK/notify.log")"
}

# Waits (at most 20 s) for the launcher to exit; RC is its status (the server's).
finish() {
  for _ in $(seq 200); do running "$LAUNCHER_PID" || break; sleep 0.1; done
  running "$LAUNCHER_PID" && fail "the server $SERVER_PID still runs after 20 s"
  RC=0
  wait "$LAUNCHER_PID" || RC=$?
  LAUNCHER_PID=""
  SERVER_PID=""
}

# Writes 64 KiB of 0xab at 1 MiB through URI $1, flushes, reads it back (at most 20 s).
write_and_read() {
  timeout 20 /usr/bin/python3 - "$1" <<'EOF' || fail "NBD write/read through $1 failed"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(b"\xab" * 65536, 1 << 20)
h.flush()
assert h.pread(65536, 1 << 20) == b"\xab" * 65536, "read back differs"
h.shutdown()
EOF
}

# --- activated, in the foreground, notifying a socket file --------------------------------------
launch --notify "$WORK/notify.sock" --pass-listening "$PASSED" -- \
  "$STRATA" serve --foreground "$LAYER"
await_notify READY=1
grep -qx "MAINPID=$SERVER_PID" "$WORK/notify.log" \
  || fail "READY=1 without MAINPID=$SERVER_PID: $(cat "$WORK/notify.log")"
grep -qx "STATUS=serving $LAYER at nbd+unix:///?socket=$PASSED" "$WORK/notify.log" \
  || fail "no STATUS=serving ... line: $(cat "$WORK/notify.log")"
[ ! -e "$WORK/disk.sock" ] || fail "the server bound its own socket beside the layer"
PASSED_URI="nbd+unix:///?socket=$PASSED"
size="$(timeout 20 nbdinfo --size "$PASSED_URI")" || fail "nothing serves $PASSED_URI"
[ "$size" = 16777216 ] || fail "nbdinfo --size says $size, not 16 MiB"
write_and_read "$PASSED_URI"
timeout 20 "$STRATA" list --control "$WORK/disk.ctl" >"$WORK/list.out" 2>&1 \
  || fail "strata list --control $WORK/disk.ctl failed: $(cat "$WORK/list.out")"
grep -q "$LAYER" "$WORK/list.out" || fail "strata list does not show $LAYER: $(cat "$WORK/list.out")"
grep -q "on unix:$PASSED" "$WORK/server.log" || fail "the log does not say it serves $PASSED"
kill -TERM "$SERVER_PID"
finish
[ "$RC" = 0 ] || fail "the activated server exited with status $RC after SIGTERM"
grep -qx STOPPING=1 "$WORK/notify.log" || fail "no STOPPING=1: $(cat "$WORK/notify.log")"
[ -S "$PASSED" ] || fail "the server removed the socket file the manager created"
"$STRATA" export "$LAYER" "$WORK/out.raw" >/dev/null
head -c 65536 /dev/zero | tr '\0' '\253' >"$WORK/expected"
dd if="$WORK/out.raw" bs=64K skip=16 count=1 status=none | cmp -s - "$WORK/expected" \
  || fail "the write through the passed socket is not on the disk after the stop"
log "foreground: READY=1, NBD and control, STOPPING=1, exit 0"

# --- activated, daemonizing, notifying an abstract socket: the parent tells the daemon's pid ----
launch --notify "@strata-activation-test-$$" --pass-listening "$PASSED" -- \
  "$STRATA" serve --pid-file "$WORK/daemon.pid" --log-file "$WORK/daemon.log" "$LAYER"
await_notify READY=1
finish
[ "$RC" = 0 ] || fail "strata serve (background) exited with status $RC"
[ -s "$WORK/daemon.pid" ] || fail "no daemon pid file"
SERVER_PID="$(cat "$WORK/daemon.pid")"  # the cleanup stops it if what follows fails
grep -qx "MAINPID=$SERVER_PID" "$WORK/notify.log" \
  || fail "READY=1 without the daemon's MAINPID=$SERVER_PID: $(cat "$WORK/notify.log")"
timeout 20 nbdinfo --size "$PASSED_URI" >/dev/null || fail "the daemon does not serve $PASSED_URI"
kill -TERM "$SERVER_PID"
for _ in $(seq 200); do running "$SERVER_PID" || break; sleep 0.1; done
running "$SERVER_PID" && fail "the daemon $SERVER_PID still runs 20 s after SIGTERM"
SERVER_PID=""
grep -q "info: stopped" "$WORK/daemon.log" || fail "the daemon did not stop cleanly"
log "background: the daemon serves the passed socket, READY=1 with its pid"

# --- LISTEN_PID of another process: ignored, the server binds its own socket --------------------
launch --notify "$WORK/notify.sock" --pass-listening "$PASSED" --other-pid -- \
  "$STRATA" serve --foreground "$LAYER"
await_notify READY=1
timeout 20 nbdinfo --size "$URI" >/dev/null || fail "LISTEN_PID of another pid: $URI not served"
grep -q "LISTEN_FDS=1 is for LISTEN_PID=[0-9]*, not this process ($SERVER_PID): ignored" \
  "$WORK/server.log" || fail "the server does not say it ignored another's LISTEN_FDS"
kill -TERM "$SERVER_PID"
finish
[ "$RC" = 0 ] || fail "exit status $RC after SIGTERM (LISTEN_PID of another pid)"
log "LISTEN_PID of another pid: ignored, its own socket served"

# --- what cannot be served on: a clear error, a non-zero exit, no readiness ---------------------
# expect_failure MESSAGE LAUNCHER_ARGS... -- strata serve ARGS...
expect_failure() {
  local message="$1"
  shift
  launch --notify "$WORK/notify.sock" "$@"
  finish
  [ "$RC" != 0 ] || fail "status 0 where '$message' was expected"
  grep -qF -- "$message" "$WORK/server.log" || fail "no '$message' in: $(cat "$WORK/server.log")"
  grep -qx READY=1 "$WORK/notify.log" && fail "READY=1 from a server that failed to start"
  [ ! -e "$WORK/disk.sock" ] || fail "a failed activated start bound $WORK/disk.sock"
}
echo data >"$WORK/plain-file"
expect_failure "socket activation (LISTEN_FDS=1): fd 3 is not a socket" \
  --pass-file "$WORK/plain-file" -- "$STRATA" serve --foreground "$LAYER"
expect_failure "fd 3 is a stream socket that does not listen" \
  --pass-bound "$PASSED" -- "$STRATA" serve --foreground "$LAYER"
expect_failure "the service manager passed unix:$PASSED (LISTEN_FDS): drop --socket" \
  --pass-listening "$PASSED" -- "$STRATA" serve --foreground --socket "$WORK/disk.sock" "$LAYER"

# --- a passed TCP socket on every interface: the rule of --listen 0.0.0.0 -----------------------
# Refused without TLS, naming what to do (the socket listens for the second this takes); with
# --insecure-listen served, reached via 127.0.0.1, and warned about in the log.
for host in 0.0.0.0 ::; do
  expect_failure "serves every network interface without TLS: require TLS with --tls-certs DIR" \
    --pass-tcp "$host" -- "$STRATA" serve --foreground "$LAYER"
  grep -q -- "pass --insecure-listen to serve in the clear" "$WORK/server.log" \
    || fail "the refusal of a wildcard $host socket does not name --insecure-listen"
done
launch --notify "$WORK/notify.sock" --pass-tcp 0.0.0.0 -- \
  "$STRATA" serve --foreground --insecure-listen "$LAYER"
await_notify READY=1
port="$(sed -n 's|.*WARNING: --insecure-listen: tcp:0.0.0.0:\([0-9]*\) is served.*|\1|p' \
  "$WORK/server.log" | head -n 1)"
[ -n "$port" ] || fail "no --insecure-listen warning for the passed socket: $(cat "$WORK/server.log")"
size="$(timeout 20 nbdinfo --size "nbd://127.0.0.1:$port/")" || fail "nothing serves 127.0.0.1:$port"
[ "$size" = 16777216 ] || fail "nbdinfo --size via the passed wildcard socket says $size"
kill -TERM "$SERVER_PID"
finish
[ "$RC" = 0 ] || fail "exit status $RC after SIGTERM (wildcard socket, --insecure-listen)"
log "a passed wildcard socket: refused without TLS, served with --insecure-listen"
log "PASS"
