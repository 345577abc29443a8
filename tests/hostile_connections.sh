#!/usr/bin/env bash
# Issue 13, careless and hostile clients: none may take the server down, grow it without bound
# or lock real clients out.
#   1. Handshake squatters (connections that never negotiate) past --max-handshakes: the oldest
#      is closed for each new one, so nbdinfo is still served within 1 s; logged at a bounded rate.
#   2. Connections past --max-connections are closed as they arrive, logged at a bounded rate,
#      with the server near idle, while a client connected before keeps being served (reads
#      within 1 s); once the holder lets go, new clients are served again (the counts follow).
#   3. 200 000 out-of-range READs on one connection: every one gets its error reply, and the log
#      stays small (before the limiter: one line per request).
#   4. The control socket: 80 idle control connections held (64 refused every other control
#      client before, unlogged): `strata stats` and `strata snapshot` still work, the eviction
#      is logged, and the idle ones are closed after the 10 s idle timeout.
# The server runs in the background as the README starts it: `strata serve` on a relative path
# from another directory, the socket and control socket beside the disk.
# Usage: hostile_connections.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
[ "$SERVER_KIND" = strata ] || skip "strata's own connection caps: nothing to compare with $SERVER_KIND"
need nbdinfo timeout
/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "python3-libnbd not installed"
interop_init "$@"
STRATA="$(realpath "$STRATA")"
HOSTILE="$(realpath "$(dirname "$0")/lib/hostile_client.py")"
mkdir -p "$WORK/d" "$WORK/elsewhere"
cd "$WORK/elsewhere"
"$STRATA" create --size 16M ../d/disk.strata >/dev/null
"$STRATA" serve --max-connections 12 --max-handshakes 4 --workers 2 --pid-file ../d/disk.pid \
  --log-file ../d/server.log ../d/disk.strata >/dev/null
SERVER_PID="$(cat ../d/disk.pid)"
SOCK_PATH="$WORK/d/disk.sock"
DISK_URI="nbd+unix:///?socket=$SOCK_PATH"
LOG="$WORK/d/server.log"
grep -q "at most 12 connections (4 in handshake)" "$LOG" || fail "the serving line does not state the caps"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
hz=$(getconf CLK_TCK)
lines() { grep -c -- "$1" "$LOG" || true; }
# Starts a hostile client in the background ($! its pid) writing to $WORK/$1.out, and waits
# (bounded) until it says its connections are in.
hostile() {
  local name="$1"; shift
  timeout 60 /usr/bin/python3 "$HOSTILE" "$@" >"$WORK/$name.out" 2>&1 &
  HOSTILE_PID=$!
  for _ in $(seq 200); do grep -q ready "$WORK/$name.out" && return 0; sleep 0.05; done
  fail "$name: its connections did not get in: $(cat "$WORK/$name.out")"
}
# Waits for the hostile client's end; CLOSED is its "closed K" count.
wait_hostile() {
  wait "$HOSTILE_PID" || fail "$1 failed: $(cat "$WORK/$1.out")"
  CLOSED=$(awk '/^closed/ {print $2}' "$WORK/$1.out")
}
# nbdinfo --size must answer within 1 s.
served_within_1s() {
  local t0 t1
  t0=$(date +%s%N)
  [ "$(timeout 1 nbdinfo --size "$DISK_URI")" = 16777216 ] || fail "$1: nbdinfo was not served within 1 s"
  t1=$(date +%s%N)
  log "$1: nbdinfo served in $(((t1 - t0) / 1000000)) ms"
}

# --- 1. Handshake squatters -----------------------------------------------------------------
hostile squat squat "$SOCK_PATH" 4 3
served_within_1s "4 squatters holding every handshake place"
wait_hostile squat
[ "$CLOSED" -ge 1 ] || fail "no squatter was closed to make room for nbdinfo"
before=$(lines "max-handshakes")
hostile squat squat "$SOCK_PATH" 200 2
served_within_1s "after 200 squatters"
wait_hostile squat
evicted=$CLOSED
logged=$(($(lines "max-handshakes") - before))
log "200 squatters: $evicted closed by the server, $logged log lines naming --max-handshakes"
[ "$evicted" -ge 196 ] || fail "only $evicted of 200 squatters were closed (at most 4 may stay)"
[ "$logged" -ge 1 ] || fail "the squatters' eviction was not logged"
[ "$logged" -le 40 ] || fail "$logged lines for 200 evictions: not rate-limited"

# --- 2. Past --max-connections ---------------------------------------------------------------
# A well-behaved client, connected first, reads every 50 ms for 4 s; its slowest read counts.
cat >"$WORK/reader.py" <<'EOF'
import nbd, sys, time
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print("ready", flush=True)
slowest = 0.0
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    t = time.monotonic()
    h.pread(4096, 0)
    slowest = max(slowest, time.monotonic() - t)
    time.sleep(0.05)
h.shutdown()
print(f"slowest {slowest:.3f}", flush=True)
EOF
timeout 30 /usr/bin/python3 "$WORK/reader.py" "$DISK_URI" 4 >"$WORK/reader.out" 2>&1 &
READER=$!
for _ in $(seq 100); do grep -q ready "$WORK/reader.out" && break; sleep 0.05; done
grep -q ready "$WORK/reader.out" || fail "the reader did not connect: $(cat "$WORK/reader.out")"
hostile full negotiate "$SOCK_PATH" 11 3.5  # with the reader: 12, the cap
before=$(lines "max-connections")
t0=$(cpu_ticks)
timeout 10 /usr/bin/python3 "$HOSTILE" flood "$SOCK_PATH" 2 >"$WORK/flood.out"
ticks=$(($(cpu_ticks) - t0))
read -r _ attempts _ refused <"$WORK/flood.out"
logged=$(($(lines "max-connections") - before))
log "full: $refused of $attempts new connections closed at once; $logged log lines; server CPU $ticks ticks ($hz/s) in 2 s"
[ "$attempts" -ge 50 ] || fail "the flood made only $attempts connections"
[ "$refused" -eq "$attempts" ] || fail "$((attempts - refused)) connections past --max-connections were served"
[ "$logged" -ge 1 ] || fail "nothing logged about --max-connections"
[ "$logged" -le 40 ] || fail "$logged lines for $attempts refusals: not rate-limited"
[ "$ticks" -le $((hz / 2)) ] || fail "the server used $ticks ticks of CPU in 2 s refusing connections"
wait_hostile full
[ "$CLOSED" -eq 0 ] || fail "negotiated connections were closed"
wait "$READER" || fail "the reader failed: $(cat "$WORK/reader.out")"
slowest=$(awk '/^slowest/ {print $2}' "$WORK/reader.out")
log "the client connected before read every 50 ms meanwhile, slowest read $slowest s"
awk -v s="$slowest" 'BEGIN { exit !(s < 1.0) }' || fail "a read took $slowest s while the server was full"
# Every held connection has gone: the counts came down, so new clients are served again.
for _ in $(seq 50); do timeout 1 nbdinfo --size "$DISK_URI" >/dev/null 2>&1 && break; sleep 0.1; done
served_within_1s "once the holder let go"

# --- 3. 200 000 bad requests ------------------------------------------------------------------
size_before=$(stat -c %s "$LOG")
timeout 60 /usr/bin/python3 "$HOSTILE" bad-reads "$SOCK_PATH" 200000 >"$WORK/bad.out"
growth=$(($(stat -c %s "$LOG") - size_before))
log "200000 out-of-range READs: $(cat "$WORK/bad.out"); the log grew by $growth bytes"
[ "$(cat "$WORK/bad.out")" = "replies 200000 errors 200000" ] || fail "not every bad READ got its error"
[ "$growth" -le 65536 ] || fail "the log grew by $growth bytes for 200000 bad requests"

# --- 4. The control socket -------------------------------------------------------------------
hostile control idle-control "$WORK/d/disk.ctl" 80 13
timeout 5 "$STRATA" stats --control ../d/disk.ctl >/dev/null ||
  fail "strata stats was locked out by 80 idle control connections"
timeout 10 "$STRATA" snapshot --control ../d/disk.ctl s1 >/dev/null ||
  fail "strata snapshot was locked out by 80 idle control connections"
grep -q "control socket .*client closed: 64 clients connected; this one idle longest" "$LOG" ||
  fail "making room on the full control socket was not logged"
wait_hostile control
closed=$CLOSED
log "80 idle control connections: $closed closed by the server within 13 s"
[ "$closed" -eq 80 ] || fail "only $closed of 80 idle control connections were closed"
grep -q "control socket .*client closed: no complete request in 10s" "$LOG" ||
  fail "the idle timeout was not logged"
[ "$(timeout 5 "$STRATA" list --control ../d/disk.ctl | grep -c s1)" -ge 1 ] ||
  fail "the control socket does not serve after the idle clients went"

kill -0 "$SERVER_PID" || fail "the server died"
log "ok: squatters, a full server, 200000 bad requests and idle control clients locked nobody out"
log PASS
