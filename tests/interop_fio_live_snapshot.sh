#!/usr/bin/env bash
# Live snapshots under a fio load: fio's nbd engine writes random 4 KiB blocks with crc32c
# verify headers on two connections (QD 16 each) while `strata snapshot --control` takes
# snapshots in a loop. Then: fio's own verify of the live disk (no write lost across the
# switches); every snapshot copied with nbdcopy from its read-only @NAME export while the disk
# is still served, and compared with `strata export` of the frozen layer file once the server
# stopped; `strata check`; and fio --verify_only after a restart.
# Usage: interop_fio_live_snapshot.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
need fio nbdcopy nbdinfo cmp
[ "$SERVER_KIND" = strata ] || skip "live snapshots are strata's"
interop_init "$@"

make_base "$BASE"
make_chain
start_server
CTL="$WORK/disk.ctl"

job=(--name=rand --rw=randwrite --bs=4k --iodepth=16 --numjobs=2 --size=32M --offset=0
     --offset_increment=32M --loops=2)
fio_args=(--output-format=normal --group_reporting --ioengine=nbd --uri="$URI"
          --verify=crc32c --verify_fatal=1 --randrepeat=1 --randseed=77 --verify_state_save=0)
timeout 120 fio "${fio_args[@]}" --do_verify=1 "${job[@]}" >"$WORK/fio.out" 2>&1 &
FIO_PID=$!

n=0
while kill -0 "$FIO_PID" 2>/dev/null && [ "$n" -lt 12 ]; do
  sleep 0.1
  out="$("$STRATA" snapshot --control "$CTL" "s$n" --json)" || fail "snapshot s$n: $out"
  n=$((n + 1))
done
rc=0
wait "$FIO_PID" || rc=$?
if [ "$rc" -ne 0 ] || grep -Eq "verify: bad|bad magic|crc32c: verify failed|err= *[1-9]" "$WORK/fio.out"; then
  cat "$WORK/fio.out" >&2
  fail "fio under live snapshots (rc $rc)"
fi
[ "$n" -ge 3 ] || fail "fio finished before 3 snapshots were taken ($n)"
log "$n snapshots taken under load; $("$STRATA" stats --control "$CTL" | grep -E '"pause_p99_ms"|"last_pause_ms"' | tr -d ' \n')"

# Back up every snapshot from its export while the disk is still served.
for i in $(seq 0 $((n - 1))); do
  timeout 60 nbdcopy "nbd+unix:///@s$i?socket=$SOCK" "$WORK/backup-s$i.raw" || fail "nbdcopy @s$i"
done
stop_server
check_layer
for i in $(seq 0 $((n - 1))); do
  "$STRATA" export "$WORK/disk@s$i.strata" "$WORK/export-s$i.raw" >/dev/null 2>&1 \
    || fail "strata export disk@s$i.strata"
  cmp "$WORK/backup-s$i.raw" "$WORK/export-s$i.raw" || fail "@s$i export differs from its layer"
  rm -f "$WORK/backup-s$i.raw" "$WORK/export-s$i.raw"
done
start_server
timeout 120 fio "${fio_args[@]}" --verify_only "${job[@]}" >"$WORK/fio-verify.out" 2>&1 \
  || { cat "$WORK/fio-verify.out" >&2; fail "fio --verify_only after restart"; }
stop_server
check_layer
log "PASS"
