#!/usr/bin/env bash
# Issue 13: `--listen 0.0.0.0:P` (or [::]:P) served the disk on every interface in the clear
# without a word. Now a wildcard address without --tls=require is refused with a message
# naming --tls-certs/--tls-psk and --insecure-listen; with --insecure-listen it is served and
# a warning goes to stderr and the log; with TLS required it is served quietly. The servers
# listen on the wildcard only for the second it takes to check, and are reached via 127.0.0.1.
# Usage: wildcard_listen.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
[ "$SERVER_KIND" = strata ] || skip "strata's --listen check: nothing to compare with $SERVER_KIND"
need nbdinfo psktool timeout
interop_init "$@"
STRATA="$(realpath "$STRATA")"
cd "$WORK"
"$STRATA" create --size 16M disk.strata >/dev/null

for address in 0.0.0.0 '[::]'; do
  rc=0
  timeout 20 "$STRATA" serve --listen "$address:0" --pid-file disk.pid disk.strata \
    >serve.out 2>serve.err || rc=$?
  [ "$rc" -eq 2 ] || fail "--listen $address:0 without TLS: exit status $rc, not 2 (usage)"
  [ ! -e disk.pid ] || fail "--listen $address:0 without TLS started a server"
  grep -q -- "--insecure-listen" serve.err && grep -q -- "--tls-certs" serve.err ||
    fail "the refusal does not say what to do: $(cat serve.err)"
done

# --insecure-listen: served (background, the default), warned on stderr and in the log.
timeout 20 "$STRATA" serve --listen 0.0.0.0:0 --insecure-listen --pid-file disk.pid \
  --log-file server.log disk.strata >serve.out 2>serve.err || fail "--insecure-listen: $(cat serve.err)"
SERVER_PID="$(cat disk.pid)"
port="$(sed -n 's|^serving .* at nbd://0.0.0.0:\([0-9]*\)/.*|\1|p' serve.out)"
[ -n "$port" ] || fail "no port in: $(cat serve.out)"
size="$(timeout 30 nbdinfo --size "nbd://127.0.0.1:$port/")" || fail "nbdinfo via 127.0.0.1 failed"
terminate_pid "$SERVER_PID"; SERVER_PID=""
grep -q "WARNING: --insecure-listen" serve.err || fail "no warning on stderr: $(cat serve.err)"
grep -q "WARNING: --insecure-listen" server.log || fail "no warning in the log"
[ "$size" = $((16 * MiB)) ] || fail "nbdinfo --size: $size"

# TLS required: the wildcard is accepted without a warning.
psktool -u alice -p keys.psk >/dev/null 2>&1
rm -f server.log
timeout 20 "$STRATA" serve --listen 0.0.0.0:0 --tls-psk keys.psk --pid-file disk.pid \
  --log-file server.log disk.strata >serve.out 2>serve.err || fail "wildcard with TLS: $(cat serve.err)"
SERVER_PID="$(cat disk.pid)"
terminate_pid "$SERVER_PID"; SERVER_PID=""
grep -q "at nbds://0.0.0.0:" serve.out || fail "the URI is not nbds://: $(cat serve.out)"
! grep -q WARNING serve.err server.log || fail "warned with TLS required"
log "PASS"
