# Shared helpers for the interop scripts (sourced, not run). Bash, set -euo pipefail.
#
#   source "$(dirname "$0")/lib/interop_lib.sh"
#   interop_init "$@"            # $1 = path to the strata binary; makes $WORK, traps cleanup
#   make_base "$WORK/base.raw"   # 64 MiB: 0x11 in [0,8M), 0x22 in [8M,16M), random [16M,24M), hole
#   make_chain                   # $LAYER over the base (strata create -b / qcow2 overlay / copy)
#   start_server [--read-only]   # background server on $SOCK; $URI; waits until it accepts
#   stop_server                  # SIGTERM our server only, bounded wait, expects exit 0
#   snapshot NAME / check_layer / export_layer OUT / captive 'CMD'
#
# The server is one parameter: STRATA_TEST_SERVER=strata (default) | qemu-nbd | nbdkit.
# Scripts exit 77 (ctest SKIP_RETURN_CODE) when a tool they need is missing, with the reason.

# nbdsh and nbdinfo plugins are Python/Debian tools: make sure /usr/bin wins over pyenv shims.
export PATH="/usr/bin:/usr/sbin:/bin:/sbin:$PATH"
export LC_ALL=C

SERVER_KIND="${STRATA_TEST_SERVER:-strata}"
SERVER_PID=""
DISK_SIZE=$((64 * 1024 * 1024))
MiB=$((1024 * 1024))

log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
fail() { log "FAIL: $*"; [ -n "${WORK:-}" ] && [ -f "$WORK/server.log" ] && tail -30 "$WORK/server.log" >&2; exit 1; }
skip() { log "SKIP: $*"; exit 77; }
need() { for t in "$@"; do command -v "$t" >/dev/null 2>&1 || skip "$t not installed"; done; }

interop_init() {
  STRATA="${1:-}"
  case "$SERVER_KIND" in
    strata) [ -x "$STRATA" ] || skip "strata binary not built: ${STRATA:-<none given>}" ;;
    qemu-nbd) need qemu-nbd qemu-img ;;
    nbdkit) need nbdkit ;;
    *) fail "unknown STRATA_TEST_SERVER=$SERVER_KIND" ;;
  esac
  WORK="$(mktemp -d /tmp/strata-interop-XXXXXX)"
  SOCK="$WORK/disk.sock"
  URI="nbd+unix:///?socket=$SOCK"
  BASE="$WORK/base.raw"
  case "$SERVER_KIND" in
    strata) LAYER="$WORK/disk.strata" ;;
    qemu-nbd) LAYER="$WORK/disk.qcow2" ;;
    nbdkit) LAYER="$WORK/disk.raw" ;;
  esac
  trap interop_cleanup EXIT
  log "server: $SERVER_KIND, work dir: $WORK"
}

# SIGTERM to our own process $1 (if it runs), SIGKILL if it is still there 10 s later.
terminate_pid() {
  [ -n "$1" ] && kill -0 "$1" 2>/dev/null || return 0
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# expect_stop PID: SIGTERM to our own process PID, which must exit within 15 s (a server that
# stops as SIGTERM promises: in-flight requests finished, the disk flushed).
expect_stop() {
  kill -TERM "$1"
  for _ in $(seq 150); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  fail "the server did not stop within 15 s of SIGTERM"
}

interop_cleanup() {
  local rc=$?
  terminate_pid "$SERVER_PID"
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ] && [ -f "$WORK/server.log" ]; then
    log "server log:"; tail -40 "$WORK/server.log" >&2
  fi
  [ -n "${STRATA_TEST_KEEP:-}" ] || rm -rf "$WORK"
  exit "$rc"
}

# A base image whose regions can be told apart with qemu-io's `read -P`: 0x11 in [0,8M),
# 0x22 in [8M,16M), random in [16M,24M), a sparse hole up to 64 MiB.
make_base() {
  local f="$1"
  truncate -s "$DISK_SIZE" "$f"
  head -c $((8 * MiB)) /dev/zero | tr '\0' '\021' | dd of="$f" bs=1M conv=notrunc status=none
  head -c $((8 * MiB)) /dev/zero | tr '\0' '\042' | dd of="$f" bs=1M seek=8 conv=notrunc status=none
  head -c $((8 * MiB)) /dev/urandom | dd of="$f" bs=1M seek=16 conv=notrunc status=none
}

# The active layer over $BASE (or an empty disk of $DISK_SIZE with `make_chain --no-base`).
make_chain() {
  if [ "${1:-}" = "--no-base" ]; then
    case "$SERVER_KIND" in
      strata) "$STRATA" create --size "$((DISK_SIZE / MiB))M" "$LAYER" ;;
      qemu-nbd) qemu-img create -q -f qcow2 "$LAYER" "$DISK_SIZE" ;;
      nbdkit) truncate -s "$DISK_SIZE" "$LAYER" ;;
    esac
    return
  fi
  case "$SERVER_KIND" in
    strata) "$STRATA" create -b "$BASE" -F raw "$LAYER" ;;
    qemu-nbd) qemu-img create -q -f qcow2 -b "$BASE" -F raw "$LAYER" ;;
    nbdkit) cp --sparse=always "$BASE" "$LAYER" ;;
  esac
}

# The server command line for $SERVER_KIND, serving $LAYER on $SOCK, into the array
# SERVER_ARGV; extra args: --read-only.
server_argv() {
  local ro=()
  if [ "${1:-}" = "--read-only" ]; then ro=(--read-only); fi
  case "$SERVER_KIND" in
    strata) SERVER_ARGV=("$STRATA" serve --foreground --socket "$SOCK" --log-level=info "${ro[@]}" "$LAYER") ;;
    qemu-nbd) SERVER_ARGV=(qemu-nbd --persistent --shared=16 --format=qcow2 --allocation-depth
                           --discard=unmap --cache=writeback "--socket=$SOCK" "${ro[@]}" "$LAYER") ;;
    nbdkit) SERVER_ARGV=(nbdkit --foreground --unix "$SOCK" "${ro[@]}" file "file=$LAYER") ;;
  esac
}

# Waits until $SOCK accepts an NBD handshake (at most 15 s), or fails.
wait_ready() {
  for _ in $(seq 150); do
    kill -0 "$SERVER_PID" 2>/dev/null || fail "server exited during startup"
    if [ -S "$SOCK" ] && timeout 5 nbdinfo --size "$URI" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  fail "server did not accept connections within 15 s"
}

start_server() {
  [ -z "$SERVER_PID" ] || fail "server already running"
  rm -f "$SOCK"
  server_argv "$@"
  echo "=== ${SERVER_ARGV[*]}" >>"$WORK/server.log"
  "${SERVER_ARGV[@]}" </dev/null >>"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_ready
}

# SIGTERM to our own server; it must exit 0 within 20 s.
stop_server() {
  [ -n "$SERVER_PID" ] || fail "stop_server: no server"
  kill -TERM "$SERVER_PID"
  local rc=0
  for _ in $(seq 200); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -KILL "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
    fail "server ignored SIGTERM for 20 s"
  fi
  wait "$SERVER_PID" || rc=$?
  SERVER_PID=""
  [ "$rc" -eq 0 ] || fail "server exited with status $rc after SIGTERM"
}

# Offline snapshot: LAYER's content frozen as <stem>@NAME, LAYER a new empty layer on top.
snapshot() {
  case "$SERVER_KIND" in
    strata) "$STRATA" snapshot "$LAYER" "$1" ;;
    qemu-nbd)
      mv "$LAYER" "$WORK/disk@$1.qcow2"
      qemu-img create -q -f qcow2 -b "$WORK/disk@$1.qcow2" -F qcow2 "$LAYER" ;;
    nbdkit) skip "nbdkit has no layers to snapshot" ;;
  esac
}

check_layer() {
  case "$SERVER_KIND" in
    strata) "$STRATA" check "$LAYER" >"$WORK/check.out" 2>&1 || { cat "$WORK/check.out" >&2; fail "strata check failed"; } ;;
    qemu-nbd) qemu-img check -q "$LAYER" || fail "qemu-img check failed" ;;
    nbdkit) ;;
  esac
}

export_layer() {
  case "$SERVER_KIND" in
    strata) "$STRATA" export "$LAYER" "$1" ;;
    qemu-nbd) qemu-img convert -f qcow2 -O raw "$LAYER" "$1" ;;
    nbdkit) cp --sparse=always "$LAYER" "$1" ;;
  esac
}

# Captive mode: serve $LAYER only while CMD runs (CMD sees $uri, $unixsocket, $nbd); returns
# CMD's status. strata and nbdkit do this themselves (--run); for qemu-nbd it is emulated.
captive() {
  local cmd="$1" rc=0
  # A server that leaves its socket behind is caught by interop_captive_run.sh; here a stale
  # one must not make the next run fail to bind.
  rm -f "$WORK/captive.sock"
  case "$SERVER_KIND" in
    strata) timeout 120 "$STRATA" serve --foreground --socket "$WORK/captive.sock" --run "$cmd" "$LAYER" \
              </dev/null 2>>"$WORK/server.log" || rc=$? ;;
    nbdkit) timeout 120 nbdkit --unix "$WORK/captive.sock" --run "$cmd" file "file=$LAYER" \
              </dev/null 2>>"$WORK/server.log" || rc=$? ;;
    qemu-nbd)
      local saved_sock="$SOCK" saved_uri="$URI"
      SOCK="$WORK/captive.sock"; URI="nbd+unix:///?socket=$SOCK"
      start_server
      uri="$URI" unixsocket="$SOCK" nbd="$URI" timeout 120 sh -c "$cmd" || rc=$?
      stop_server
      SOCK="$saved_sock"; URI="$saved_uri" ;;
  esac
  return "$rc"
}
