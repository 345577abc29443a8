#!/usr/bin/env bash
# fio's nbd engine (libnbd, deep queues) writing random 4 KiB blocks with crc32c verify
# headers, sequential 1 MiB blocks on a second connection-set, then verifying everything again
# after a server restart (--verify_only regenerates the same offsets and checks them).
# Usage: interop_fio_verify.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
need fio nbdinfo
interop_init "$@"

make_base "$BASE"
make_chain
start_server

run_fio() {  # extra fio args...
  local out rc=0
  out="$(timeout 120 fio --output-format=normal --group_reporting \
           --ioengine=nbd --uri="$URI" --verify=crc32c --verify_fatal=1 --do_verify=1 \
           --randrepeat=1 --randseed=1234 --verify_state_save=0 "$@" 2>&1)" || rc=$?
  if [ "$rc" -ne 0 ] || ! grep -q "connected to NBD server" <<<"$out" \
       || grep -Eq "verify: bad|bad magic|crc32c: verify failed|err= *[1-9]" <<<"$out"; then
    echo "$out" >&2
    fail "fio $* (rc $rc)"
  fi
}

# Random 4 KiB writes, 32 in flight, over base data (first 32 MiB), verified at the end.
random_job=(--name=rand --rw=randwrite --bs=4k --iodepth=32 --offset=0 --size=32M)
run_fio "${random_job[@]}"
# Sequential 1 MiB writes, two jobs (two connections) on disjoint halves of [32M, 64M).
seq_job=(--name=seq --rw=write --bs=1M --iodepth=8 --numjobs=2 --offset=32M --size=16M
         --offset_increment=16M)
run_fio "${seq_job[@]}"

stop_server
check_layer
start_server
# Same jobs, verify only: every block written above must still carry its header and checksum.
run_fio "${random_job[@]}" --verify_only
run_fio "${seq_job[@]}" --verify_only
stop_server
check_layer
log "PASS"
