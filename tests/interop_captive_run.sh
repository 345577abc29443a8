#!/usr/bin/env bash
# Captive mode, like `nbdkit --run`: `strata serve --run 'CMD' LAYER` serves, runs CMD through
# sh with $uri / $unixsocket / $nbd set, shuts down and exits with CMD's status. Checked with
# real clients inside CMD (qemu-img, nbdsh, nbdinfo), a failing CMD, and the layer afterwards.
# Usage: interop_captive_run.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
need qemu-img qemu-io nbdinfo nbdsh jq
interop_init "$@"

make_base "$BASE"
make_chain

# The environment CMD sees.
captive 'echo "uri=$uri"; echo "unixsocket=$unixsocket"; echo "nbd=$nbd"' >"$WORK/env.out" \
  || fail "captive echo failed"
grep -q '^uri=nbd+unix://.*socket=' "$WORK/env.out" || fail "\$uri not set: $(cat "$WORK/env.out")"
sock="$(sed -n 's/^unixsocket=//p' "$WORK/env.out")"
[ -n "$sock" ] || fail "\$unixsocket not set"
[ -n "$(sed -n 's/^nbd=//p' "$WORK/env.out")" ] || fail "\$nbd not set"
# strata removes its socket when it exits (nbdkit 1.32 leaves it behind, so only strata is held
# to it): a stale socket makes the next `serve` on the same path fail or confuses clients.
if [ "$SERVER_KIND" = strata ] && [ -S "$sock" ]; then
  fail "socket $sock left behind after captive mode ended"
fi

# Real clients inside CMD: qemu-io writes, nbdsh (another captive run) reads it back, qemu-img
# info sees the size.
captive 'qemu-io -f raw -c "write -P 0x6b 0 4M" -c "write -P 0x6c 5M 512" "$uri"' >/dev/null \
  || fail "captive qemu-io write failed"
captive "nbdsh -u \"\$uri\" -c '
import sys
ok = h.pread(4 << 20, 0) == b\"\\x6b\" * (4 << 20) and h.pread(512, 5 << 20) == b\"\\x6c\" * 512
sys.exit(0 if ok else 3)
'" || fail "captive nbdsh: data written in an earlier captive run is not there"
size="$(captive 'qemu-img info --output=json "$uri"' | jq -r '."virtual-size"')"
[ "$size" = "$DISK_SIZE" ] || fail "captive qemu-img info: size $size"

# The exit status of CMD is the server's exit status.
rc=0; captive 'exit 42' || rc=$?
[ "$rc" -eq 42 ] || fail "captive mode returned $rc for a command exiting 42"
# A CMD that fails to run at all is an error too.
rc=0; captive 'no-such-command-xyz 2>/dev/null' || rc=$?
[ "$rc" -ne 0 ] || fail "captive mode returned 0 for a missing command"

# Base data beyond the blob still shows through.
captive 'qemu-io -f raw -c "read -P 0x11 4M 1M" -c "read -P 0x11 5243392 1M" -c "read -P 0x22 8M 64k" "$uri"' >/dev/null \
  || fail "base data wrong through captive mode"
check_layer
log "PASS"
