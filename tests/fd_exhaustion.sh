#!/usr/bin/env bash
# Issue 13, descriptor exhaustion: with its descriptor limit reached (clients holding more
# connections than `ulimit -n` allows, and more connecting), the accept loop spun at ~99% CPU
# and logged "Too many open files" at ~33 MB/s. Now it closes connections as they arrive,
# pauses accepting, logs at most a line a second, and serves again once descriptors free up.
# The server runs in the background as the README starts it, under `prlimit --nofile=64`.
# Usage: fd_exhaustion.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
[ "$SERVER_KIND" = strata ] || skip "strata's own accept loop: nothing to compare with $SERVER_KIND"
need nbdinfo prlimit timeout
interop_init "$@"
STRATA="$(realpath "$STRATA")"
mkdir -p "$WORK/d" "$WORK/elsewhere"
cd "$WORK/elsewhere"
"$STRATA" create --size 16M ../d/disk.strata >/dev/null
# --max-connections past the limit: this is about running out of descriptors, which the
# default cap (sized from the limit) would otherwise keep from happening.
timeout 20 prlimit --nofile=64 -- "$STRATA" serve --max-connections 1000 --socket ../d/disk.sock \
  --pid-file ../d/disk.pid --log-file ../d/server.log ../d/disk.strata
SERVER_PID="$(cat ../d/disk.pid)"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }

# 100 connections held (more than the limit), then 2 s of connecting and closing at once.
cat >"$WORK/flood.py" <<'EOF'
import socket, sys, time
path, hold_s = sys.argv[1], float(sys.argv[2])
held = []
for _ in range(100):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    held.append(s)
end = time.monotonic() + hold_s
while time.monotonic() < end:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(path)
    except (BlockingIOError, ConnectionRefusedError, OSError):
        pass
    s.close()
    time.sleep(0.001)
print("flood done", flush=True)
time.sleep(float(sys.argv[3]))
EOF
/usr/bin/python3 "$WORK/flood.py" ../d/disk.sock 1 4 >"$WORK/flood.out" 2>&1 &
FLOOD=$!
for _ in $(seq 100); do grep -q "flood done" "$WORK/flood.out" 2>/dev/null && break; sleep 0.05; done
grep -q "flood done" "$WORK/flood.out" || fail "the flood did not get its connections in: $(cat "$WORK/flood.out")"

# Out of descriptors, with 100 connections held: the server must be near idle.
before=$(cpu_ticks); lines_before=$(grep -c "Too many open files" ../d/server.log || true)
sleep 2
after=$(cpu_ticks); lines_after=$(grep -c "Too many open files" ../d/server.log || true)
ticks=$((after - before)); hz=$(getconf CLK_TCK)
log "server CPU over 2 s out of descriptors: $ticks ticks ($hz/s); log lines: $((lines_after - lines_before))"
[ "$ticks" -le $((hz / 2)) ] || fail "the server used $ticks ticks of CPU in 2 s while out of descriptors (spinning)"
[ "$((lines_after - lines_before))" -le 4 ] || fail "$((lines_after - lines_before)) 'Too many open files' lines in 2 s"
[ "$lines_after" -ge 1 ] || fail "nothing logged about running out of descriptors"

# The flood lets go: the server serves a new client again.
kill "$FLOOD" 2>/dev/null || true; wait "$FLOOD" 2>/dev/null || true
for _ in $(seq 50); do
  timeout 5 nbdinfo --size "nbd+unix:///?socket=$WORK/d/disk.sock" >/dev/null 2>&1 && break
  sleep 0.1
done
[ "$(timeout 5 nbdinfo --size "nbd+unix:///?socket=$WORK/d/disk.sock")" = 16777216 ] ||
  fail "the server does not serve again once descriptors are free"
log "ok: out of descriptors the server stays near idle, logs a line a second, then serves again"
log PASS
