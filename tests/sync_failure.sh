#!/usr/bin/env bash
# A failed fdatasync is sticky (README, "What strata guarantees"; FORMAT.md §2, rule 6), in
# both cache modes: strace injects EIO into the running server's next fdatasync, then the test
# checks that this FLUSH and every later FLUSH, FUA write and write fail with EIO while reads go
# on, that `strata stats` names the failure, and that after a restart the disk holds exactly
# what the last completed FLUSH acknowledged, and `strata check` passes.
# Usage: sync_failure.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
[ "$SERVER_KIND" = strata ] || skip "strata's own failure handling"
interop_init "$@"
need strace nbdsh
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "python3-libnbd missing"

CTL="$WORK/disk.ctl"
STRACE_PID=""
stop_strace() {
  if [ -n "$STRACE_PID" ]; then
    kill -TERM "$STRACE_PID" 2>/dev/null || true
    wait "$STRACE_PID" 2>/dev/null || true
    STRACE_PID=""
  fi
}

# Runs the NBD steps of one phase (python3-libnbd); prints what it observed.
nbd_phase() {
  timeout 60 /usr/bin/python3 - "$URI" "$1" <<'EOF'
import errno, sys, nbd
uri, phase = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.connect_uri(uri)
A, B, C = b"A" * 4096, b"B" * 4096, b"C" * 4096
def expect_eio(what, fn):
    try:
        fn()
    except nbd.Error as e:
        if e.errno != errno.EIO and "(EIO)" not in str(e):
            sys.exit(f"{what}: expected EIO, got {e}")
        return
    sys.exit(f"{what}: succeeded after a failed sync")
if phase == "before":
    h.pwrite(A, 0)
    h.flush()                       # acknowledged: must survive
    h.pwrite(B, 4096)               # not flushed when the sync fails
elif phase == "during":
    expect_eio("the FLUSH whose fdatasync failed", h.flush)
elif phase == "after":
    expect_eio("a later FLUSH", h.flush)
    expect_eio("a later FUA write", lambda: h.pwrite(C, 8192, nbd.CMD_FLAG_FUA))
    expect_eio("a later write", lambda: h.pwrite(C, 12288))
    if h.pread(4096, 0) != A:
        sys.exit("reads stopped working after the failed sync")
elif phase == "restarted":
    if h.pread(4096, 0) != A:
        sys.exit("the write acknowledged by the last completed FLUSH was lost")
    if h.pread(4096, 8192) == C or h.pread(4096, 12288) == C:
        sys.exit("a write refused with EIO reached the disk")
    h.pwrite(C, 8192)               # writable again
    h.flush()
h.shutdown()
EOF
}

for cache in writeback none; do
  log "--cache=$cache"
  rm -f "$LAYER" "$WORK"/*.strata
  make_base "$BASE"
  make_chain
  rm -f "$SOCK"
  "$STRATA" serve --foreground --socket "$SOCK" --control "$CTL" --cache="$cache" "$LAYER" \
    </dev/null >>"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_ready
  nbd_phase before || fail "before the failure ($cache)"
  # Attach to every thread of the server; the next fdatasync anywhere in it fails.
  strace -f -qq -p "$SERVER_PID" -e trace=fdatasync -e inject=fdatasync:error=EIO:when=1 \
    -o "$WORK/strace.out" 2>"$WORK/strace.err" &
  STRACE_PID=$!
  for _ in $(seq 100); do
    if grep -q "^TracerPid:[[:space:]]*$STRACE_PID" /proc/"$SERVER_PID"/status 2>/dev/null; then break; fi
    sleep 0.1
  done
  grep -q "^TracerPid:[[:space:]]*$STRACE_PID" /proc/"$SERVER_PID"/status \
    || skip "strace could not attach to the server (ptrace not permitted here)"
  sleep 0.5  # -f attaches to the other threads just after the first
  nbd_phase during || fail "the failing FLUSH ($cache)"
  grep -q "EIO (Input/output error) (INJECTED)" "$WORK/strace.out" || fail "no fdatasync was failed"
  stop_strace
  nbd_phase after || fail "after the failure ($cache)"
  stats="$("$STRATA" stats --control "$CTL" --json 2>&1)"
  grep -q "a sync failed" <<<"$stats" || fail "stats does not show the failed sync: $stats"
  kill -TERM "$SERVER_PID"
  for _ in $(seq 200); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$SERVER_PID" 2>/dev/null && fail "server ignored SIGTERM after the failed sync"
  rc=0; wait "$SERVER_PID" || rc=$?; SERVER_PID=""
  log "server exited with $rc after the failed sync (its last flush failed, as it must)"
  start_server
  nbd_phase restarted || fail "after the restart ($cache)"
  stop_server
  check_layer
done
log "PASS"
