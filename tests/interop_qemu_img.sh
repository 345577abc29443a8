#!/usr/bin/env bash
# qemu-img against the server over nbd+unix://: info sees the right size and format, compare
# sees the base through the empty layer, convert writes into the export (-n, the way backups
# are restored) and reads it out again byte-exact, and the data survives a restart.
# Usage: interop_qemu_img.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
need qemu-img nbdinfo
interop_init "$@"

make_base "$BASE"
make_chain
start_server

# info: raw over NBD, virtual size = the base's size.
info_json="$(timeout 30 qemu-img info --output=json "$URI")"
size="$(jq -r '."virtual-size"' <<<"$info_json")"
[ "$size" = "$DISK_SIZE" ] || fail "qemu-img info virtual-size $size, want $DISK_SIZE"
[ "$(jq -r '.format' <<<"$info_json")" = raw ] || fail "qemu-img info format: $info_json"

# compare: the export equals the base (nothing written yet). Exit 0 = identical.
timeout 60 qemu-img compare -f raw -F raw "$BASE" "$URI" || fail "export differs from its base"

# convert into the export (-n: target exists): a random 24 MiB image with a hole in the middle.
src="$WORK/src.raw"
truncate -s "$DISK_SIZE" "$src"
head -c $((8 * MiB)) /dev/urandom | dd of="$src" bs=1M conv=notrunc status=none
head -c $((16 * MiB)) /dev/urandom | dd of="$src" bs=1M seek=16 conv=notrunc status=none
timeout 60 qemu-img convert -n -f raw -O raw -W "$src" "$URI" || fail "qemu-img convert into NBD"
timeout 60 qemu-img compare -f raw -F raw "$src" "$URI" || fail "export differs after convert -n"

# convert out of the export to a local file: byte-exact.
timeout 60 qemu-img convert -f raw -O raw "$URI" "$WORK/out.raw" || fail "qemu-img convert from NBD"
cmp "$src" "$WORK/out.raw" || fail "converted-out image differs from what was written"

# Restart: still equal (qemu-img sends FLUSH at the end of convert).
stop_server
check_layer
start_server
timeout 60 qemu-img compare -f raw -F raw "$src" "$URI" || fail "export differs after restart"
stop_server
check_layer
log "PASS"
