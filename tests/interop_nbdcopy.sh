#!/usr/bin/env bash
# nbdcopy with 4 connections in both directions (multi-conn: each connection writes its own
# part and one FLUSH at the end must cover them all), then cmp; again after a restart; and the
# offline `export` of the layer must equal what was served.
# Usage: interop_nbdcopy.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
need nbdcopy nbdinfo
interop_init "$@"

make_base "$BASE"
make_chain
start_server

# Source: random data with holes and a zero-filled (non-sparse) run, so nbdcopy sends writes,
# zero requests for the holes over base data, and skips nothing it should not.
src="$WORK/src.raw"
truncate -s "$DISK_SIZE" "$src"
head -c $((12 * MiB)) /dev/urandom | dd of="$src" bs=1M conv=notrunc status=none
head -c $((4 * MiB)) /dev/zero | dd of="$src" bs=1M seek=12 conv=notrunc status=none
head -c $((20 * MiB)) /dev/urandom | dd of="$src" bs=1M seek=20 conv=notrunc status=none
# [16M,20M) and [40M,64M) are holes in src; [16M,20M) covers base data (0x22 ends at 16M, the
# random part is [16M,24M)) which must become zeros on the export.

timeout 90 nbdcopy --connections=4 --requests=16 --flush "$src" "$URI" || fail "nbdcopy file -> NBD"
timeout 90 nbdcopy --connections=4 "$URI" "$WORK/out.raw" || fail "nbdcopy NBD -> file"
cmp "$src" "$WORK/out.raw" || fail "NBD content differs from what nbdcopy wrote"

# After a clean restart, the same bytes.
stop_server
check_layer
start_server
rm -f "$WORK/out.raw"
timeout 90 nbdcopy --connections=4 "$URI" "$WORK/out.raw" || fail "nbdcopy NBD -> file after restart"
cmp "$src" "$WORK/out.raw" || fail "NBD content changed across a restart"

stop_server
export_layer "$WORK/exported.raw"
cmp "$src" "$WORK/exported.raw" || fail "offline export differs from served content"
check_layer
log "PASS"
