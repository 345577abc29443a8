#!/usr/bin/env bash
# Issue 13, a full host volume done as Hyper-V's Paused-Critical should have been. On a 64 MiB
# tmpfs the test makes (root), with a ballast file it can delete to give space back:
#   1. --min-free: the warning is logged once and `stats` says "low" before the volume is full;
#   2. --on-full=pause: writes that need space stall (no error reaches the client), `stats` and
#      `list` say PAUSED-CRITICAL, a live snapshot is refused saying so, and the writes finish
#      by themselves once space returns;
#   3. --full-timeout 2: a write that waits longer fails with ENOSPC after about 2 s;
#   4. SIGTERM while a write waits: the server still stops at once (the write gets ENOSPC);
#   5. the default (--on-full=error): ENOSPC at once;
# and every acknowledged block reads back, and `strata check` finds nothing, at the end;
# then, on a new disk on the full volume: 6. --on-full=pause, WRITE_ZEROES with and without
# NO_HOLE whose unaligned edges need space (whole sub-blocks only become zero marks, which
# allocate nothing) stall without an error while `stats` says paused-critical, finish once space
# returns, read back as zeros, and `check` is clean.
# The server runs in the background as the README starts it, with relative paths.
# Usage: full_volume.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
[ "$SERVER_KIND" = strata ] || skip "strata's own --on-full: nothing to compare with $SERVER_KIND"
need nbdinfo timeout
interop_init "$@"
STRATA="$(realpath "$STRATA")"
FILL="/usr/bin/python3 $(realpath "$(dirname "$0")")/lib/fill_writer.py"
mkdir -p "$WORK/vol" "$WORK/elsewhere"
mount -t tmpfs -o size=64m strata-full-volume "$WORK/vol" 2>/dev/null ||
  skip "cannot mount a small tmpfs (needs root)"
WRITER=""
cleanup_volume() {
  local rc=$?
  [ -n "$WRITER" ] && kill $WRITER 2>/dev/null || true  # one or more PIDs
  terminate_pid "$SERVER_PID"; SERVER_PID=""
  umount -l "$WORK/vol" 2>/dev/null || true
  interop_cleanup_rc "$rc"
}
interop_cleanup_rc() { (exit "$1"); interop_cleanup; }
trap cleanup_volume EXIT
cd "$WORK/elsewhere"
dd if=/dev/zero of=../vol/ballast bs=1M count=16 status=none
"$STRATA" create --size 256M ../vol/disk.strata >/dev/null
URI="nbd+unix:///?socket=$WORK/vol/disk.sock"

serve() {
  "$STRATA" serve --socket ../vol/disk.sock --pid-file ../disk.pid --log-file ../server.log \
    "$@" ../vol/disk.strata
  SERVER_PID="$(cat ../disk.pid)"
}
stop() {
  expect_stop "$SERVER_PID"
  SERVER_PID=""
}
stats() { "$STRATA" stats --json ../vol/disk.strata; }
field() { stats | /usr/bin/python3 -c "import json,sys; r=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
# wait_for EXPR SECONDS: until the stats reply makes the Python expression EXPR (over r) true.
wait_for() {
  for _ in $(seq $(($2 * 10))); do [ "$(field "$1")" = True ] && return 0; sleep 0.1; done
  fail "stats never showed $1 within $2 s: $(stats)"
}
acked() { grep -c '^acked' "$1" || true; }

# 1. The early warning, before the volume is full.
serve --on-full=pause --min-free 20M
$FILL write "$URI" 0 8 1 >/dev/null || fail "the first 8 MiB failed"
sleep 1.5
[ "$(field 'r["volume"]["low"]')" = False ] || fail "low with 8 MiB written: $(stats)"
$FILL write "$URI" 8 16 1 >/dev/null || fail "the next 16 MiB failed"
wait_for 'r["volume"]["low"]' 5
[ "$(field 'r["enospc"]["full"]')" = False ] || fail "full already: the warning came too late"
"$STRATA" stats ../vol/disk.strata | grep -q "LOW, below --min-free" || fail "stats does not say LOW"
[ "$(grep -c 'host volume low on space' ../server.log)" = 1 ] || fail "the warning was not logged once"
log "1. --min-free warned before the volume filled"

# 2. Paused-critical: the writes stall, then finish by themselves once space returns.
$FILL write "$URI" 24 20 2 >../w2.out 2>&1 &
WRITER=$!
wait_for 'r["paused_critical"]' 30
stalled=$(acked ../w2.out)
sleep 2
kill -0 "$WRITER" 2>/dev/null || fail "the writer ended while paused: $(cat ../w2.out)"
[ "$(acked ../w2.out)" = "$stalled" ] || fail "writes were acknowledged while the volume was full"
! grep -q '^error' ../w2.out || fail "a write failed instead of waiting: $(cat ../w2.out)"
"$STRATA" list ../vol/disk.strata | grep -q "PAUSED-CRITICAL" || fail "list does not say PAUSED-CRITICAL"
"$STRATA" stats ../vol/disk.strata | grep -q "PAUSED-CRITICAL" || fail "stats does not say PAUSED-CRITICAL"
# A live snapshot would hold every request for its pause timeout: refused at once, saying why.
rc=0; out=$(timeout 10 "$STRATA" snapshot --control ../vol/disk.ctl during-pause 2>&1) || rc=$?
[ "$rc" != 0 ] && grep -q "paused-critical" <<<"$out" || fail "snapshot while paused: rc $rc, $out"
[ "$(field 'r["waiting_writes"] if "waiting_writes" in r else r["enospc"]["waiting_writes"]')" -ge 1 ]
rm ../vol/ballast
timeout 30 tail --pid="$WRITER" -f /dev/null || fail "the writes did not resume within 30 s of freeing space"
wait "$WRITER" || fail "the paused writer failed: $(cat ../w2.out)"
WRITER=""
[ "$(acked ../w2.out)" = 20 ] || fail "not all 20 writes were acknowledged: $(cat ../w2.out)"
[ "$(field 'r["paused_critical"]')" = False ] || fail "still paused-critical after the writes finished"
grep -q "no longer paused-critical" ../server.log || fail "the end of the pause was not logged"
log "2. paused at $stalled of 20 MiB, resumed by itself when space returned"
stop

# 3. A write waits at most --full-timeout, then fails with ENOSPC.
serve --on-full=pause --full-timeout 2
dd if=/dev/zero of=../vol/ballast bs=1M count=64 status=none 2>/dev/null || true  # fills the volume
rc=0; $FILL write "$URI" 52 64 3 >../w3.out 2>&1 || rc=$?
[ "$rc" = 3 ] || fail "the write did not fail after its timeout: rc $rc, $(cat ../w3.out)"
read -r _ _ err secs <<<"$(grep '^error' ../w3.out)"
[ "$err" = 28 ] || fail "errno $err, not ENOSPC"
awk -v s="$secs" 'BEGIN { exit !(s >= 1.9 && s < 10) }' || fail "the write failed after $secs s, not ~2 s"
W3=$(acked ../w3.out)
log "3. --full-timeout 2: ENOSPC after $secs s ($W3 MiB were acknowledged before)"
stop

# 4. SIGTERM while a write waits for space: the server stops at once.
serve --on-full=pause
$FILL write "$URI" 120 1 4 >../w4.out 2>&1 &
WRITER=$!
wait_for 'r["paused_critical"]' 20
began=$(date +%s)
stop
log "4. stopped $(( $(date +%s) - began )) s after SIGTERM with a write waiting"
wait "$WRITER" && fail "the waiting write was acknowledged although nothing was written" || true
WRITER=""

# 5. The default: ENOSPC at once.
serve
rc=0; $FILL write "$URI" 130 1 5 >../w5.out 2>&1 || rc=$?
read -r _ _ err secs <<<"$(grep '^error' ../w5.out)"
[ "$rc" = 3 ] && [ "$err" = 28 ] || fail "default mode: rc $rc, $(cat ../w5.out)"
awk -v s="$secs" 'BEGIN { exit !(s < 1) }' || fail "default mode waited $secs s"
log "5. default --on-full=error: ENOSPC after $secs s"
# Nothing acknowledged was lost.
$FILL verify "$URI" 0 24 1 || fail "phase 1's data"
$FILL verify "$URI" 24 20 2 || fail "phase 2's data"
[ "$W3" = 0 ] || $FILL verify "$URI" 52 "$W3" 3 || fail "phase 3's data"
stop
"$STRATA" check ../vol/disk.strata >../check.out || fail "check: $(cat ../check.out)"

# 6. WRITE_ZEROES on a full volume waits as a write does (its edges need new clusters): a new
# disk in place of the checked one, the rest of the volume filled by a ballast to delete.
rm ../vol/disk.strata ../vol/ballast
"$STRATA" create --size 256M ../vol/disk.strata >/dev/null
dd if=/dev/zero of=../vol/ballast bs=1M count=64 status=none 2>/dev/null || true  # fills it
serve --on-full=pause
$FILL zero "$URI" 140 16 trim >../z-trim.out 2>&1 &
ZTRIM=$!
$FILL zero "$URI" 160 16 no-hole >../z-nohole.out 2>&1 &
ZNOHOLE=$!
WRITER="$ZTRIM $ZNOHOLE"
wait_for 'r["enospc"]["waiting_writes"] >= 2' 30
stalled="$(acked ../z-trim.out)+$(acked ../z-nohole.out)"
sleep 2
kill -0 "$ZTRIM" && kill -0 "$ZNOHOLE" || fail "a zero writer ended while paused"
[ "$(acked ../z-trim.out)+$(acked ../z-nohole.out)" = "$stalled" ] ||
  fail "WRITE_ZEROES were acknowledged while the volume was full"
! grep -q '^error' ../z-trim.out ../z-nohole.out ||
  fail "a WRITE_ZEROES failed instead of waiting: $(cat ../z-trim.out ../z-nohole.out)"
"$STRATA" stats ../vol/disk.strata | grep -q "PAUSED-CRITICAL" || fail "stats does not say PAUSED-CRITICAL"
rm ../vol/ballast
for w in "$ZTRIM" "$ZNOHOLE"; do
  timeout 30 tail --pid="$w" -f /dev/null || fail "WRITE_ZEROES did not resume within 30 s"
  wait "$w" || fail "a paused zero writer failed: $(cat ../z-trim.out ../z-nohole.out)"
done
WRITER=""
[ "$(acked ../z-trim.out)" = 16 ] && [ "$(acked ../z-nohole.out)" = 16 ] ||
  fail "not all WRITE_ZEROES were acknowledged: $(cat ../z-trim.out ../z-nohole.out)"
$FILL verify "$URI" 140 36 0 || fail "the zeroed range does not read back as zeros"
log "6. WRITE_ZEROES paused at $stalled of 16+16, resumed when space returned, read back zeros"

stop
"$STRATA" check ../vol/disk.strata >../check.out || fail "check after WRITE_ZEROES: $(cat ../check.out)"
log "PASS"
