#!/usr/bin/env bash
# qemu-io (QEMU's block layer, the same code a VM's disk goes through) writes and verifies
# patterns over NBD: aligned and unaligned 512-byte writes over base data, write-zeroes, discard,
# FUA writes, aio batches; then everything is verified again after a server restart.
# Usage: interop_qemu_io.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
need qemu-io nbdinfo
interop_init "$@"

make_base "$BASE"
make_chain
start_server

qio() { timeout 60 qemu-io -f raw "$@" "$URI"; }

# Runs qemu-io with the given -c commands; fails if any command reported a mismatch/error.
# qemu-io exits 0 even when `read -P` finds a mismatch, so its output is checked too.
qio_check() {
  local out
  out="$(qio "$@" 2>&1)" || { echo "$out" >&2; fail "qemu-io failed: $*"; }
  if grep -Eiq "mismatch|error|failed|not ok" <<<"$out"; then
    echo "$out" >&2
    fail "qemu-io reported a problem: $*"
  fi
}

# The base shows through the empty layer.
qio_check -c 'read -P 0x11 0 8M' -c 'read -P 0x22 8M 8M' -c 'read -P 0 24M 40M'

# Aligned writes, then 512-byte writes unaligned to the 4 KiB sub-blocks, over base data: the
# rest of each sub-block must keep the base.
qio_check -c 'write -P 0xab 64k 64k' -c 'read -P 0xab 64k 64k' \
          -c 'read -P 0x11 0 64k' -c 'read -P 0x11 128k 64k'
qio_check -c 'write -P 0xcd 1049088 512' -c 'write -P 0xce 1050624 512' \
          -c 'read -P 0x11 1048576 512' -c 'read -P 0xcd 1049088 512' \
          -c 'read -P 0x11 1049600 1024' -c 'read -P 0xce 1050624 512' \
          -c 'read -P 0x11 1051136 3584'
# An odd-sized, odd-offset write (qemu's NBD client passes byte granularity through when the
# server's minimum block size allows, or does read-modify-write itself).
qio_check -c 'write -P 0x5e 9000001 3333' -c 'read -P 0x5e 9000001 3333' \
          -c 'read -P 0x22 8998912 1089' -c 'read -P 0x22 9003334 4096'

# write-zeroes (-z) over base data, and with -u (allow unmap) as a guest discard-zero does.
qio_check -c 'write -z 2M 256k' -c 'read -P 0 2M 256k' -c 'read -P 0x11 1984k 64k' \
          -c 'read -P 0x11 2304k 64k'
qio_check -c 'write -z -u 3M 128k' -c 'read -P 0 3M 128k'

# discard over written data; the neighbours stay.
qio_check -c 'write -P 0x77 4M 256k' -c 'discard 4160k 64k' -c 'read -P 0x77 4M 64k' \
          -c 'read -P 0x77 4224k 128k'

# FUA writes (-f) and an explicit flush.
qio_check -c 'write -f -P 0x99 5M 64k' -c 'flush' -c 'read -P 0x99 5M 64k'

# aio: 16 writes in flight, then verify.
cmds=()
for i in $(seq 0 15); do cmds+=(-c "aio_write -P $((0x40 + i)) $((6 * MiB + i * 65536)) 64k"); done
cmds+=(-c aio_flush)
for i in $(seq 0 15); do cmds+=(-c "read -P $((0x40 + i)) $((6 * MiB + i * 65536)) 64k"); done
qio_check "${cmds[@]}"

# 32 MiB write (the maximum payload) across the end of the base's data into its hole.
qio_check -c 'write -P 0x3c 20M 32M' -c 'read -P 0x3c 20M 32M' -c 'read -P 0 52M 12M'

# Restart, then verify every pattern again.
stop_server
check_layer
start_server
qio_check -c 'read -P 0x11 0 64k' -c 'read -P 0xab 64k 64k' -c 'read -P 0xcd 1049088 512' \
          -c 'read -P 0x11 1049600 1024' -c 'read -P 0xce 1050624 512' \
          -c 'read -P 0x5e 9000001 3333' -c 'read -P 0 2M 256k' -c 'read -P 0 3M 128k' \
          -c 'read -P 0x77 4M 64k' -c 'read -P 0x99 5M 64k' -c 'read -P 0x4f 7274496 64k' \
          -c 'read -P 0x3c 20M 32M' -c 'read -P 0x22 8M 64k'
stop_server
check_layer
log "PASS"
