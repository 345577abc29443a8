#!/usr/bin/env bash
# `strata backup` (issue 12) against full copies: a disk served in the background as the README
# serves it (relative paths, from another working directory), written with qemu-io, three live
# snapshots s1, s2, s3; a full backup of s1, then incrementals s1 -> s2 and s2 -> s3, each OUT
# compared (cmp) with nbdcopy of the same @sN export, and the bytes copied checked to be only
# the changed ranges (`strata map --diff`), not the disk. Then what must be refused: an
# incremental from the wrong snapshot (OUT untouched), no record, SNAP1 not older; a killed
# full backup leaves no OUT (and the previous one intact), a killed incremental is detected and
# finished by running it again; and the same backups offline, the server stopped.
# Usage: interop_backup.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
[ "$SERVER_KIND" = strata ] || skip "strata backup reads strata snapshots"
need qemu-io nbdcopy nbdinfo jq cmp timeout
interop_init "$@"
STRATA="$(realpath "$STRATA")"  # the commands run in another directory
mkdir -p "$WORK/vm" "$WORK/elsewhere" "$WORK/backups"
cd "$WORK/elsewhere"
VM=../vm/vm.strata
SNAP_URI() { echo "nbd+unix:///@$1?socket=$WORK/vm/vm.sock"; }
backup() { timeout 60 "$STRATA" backup "$@"; }
io() { timeout 30 qemu-io -f raw "${@/#/-c}" "nbd+unix:///?socket=$WORK/vm/vm.sock" >/dev/null; }

"$STRATA" create --size 64M "$VM" >/dev/null
timeout 20 "$STRATA" serve --log-file ../vm/vm.log --pid-file ../vm/vm.pid "$VM" >/dev/null
SERVER_PID="$(cat ../vm/vm.pid)"  # the cleanup trap stops it

# s1: data at the start, a 1 MiB run, a lone block near the end.
io 'write -P 0x11 0 4M' 'write -P 0x12 20M 1M' 'write -P 0x13 60M 4k'
timeout 20 "$STRATA" snapshot --control ../vm/vm.ctl s1 >/dev/null
# s2: rewrites inside and outside s1's data, and zeros over data (must become zeros in OUT).
io 'write -P 0x21 1M 64k' 'write -P 0x22 40M 4M' 'write -z 20M 512k'
timeout 20 "$STRATA" snapshot --control ../vm/vm.ctl s2 >/dev/null
# s3: unaligned writes (the server widens them to sub-blocks).
io 'write -P 0x31 3000 5000' 'write -P 0x32 50M 1k'
timeout 20 "$STRATA" snapshot --control ../vm/vm.ctl s3 >/dev/null
# Writes after s3 must not reach any backup of it.
io 'write -P 0x41 0 1M'

# The reference: a full nbdcopy of the same export.
expect_copy_of() {
  local out="$1" snap="$2"
  timeout 60 nbdcopy "$(SNAP_URI "$snap")" "$WORK/ref-$snap.raw"
  cmp "$out" "$WORK/ref-$snap.raw" || fail "$out differs from nbdcopy of @$snap"
  [ "$(jq -r .snapshot "$out.strata-backup")" = "$snap" ] || fail "the record of $out does not name $snap"
  [ "$(jq -r .state "$out.strata-backup")" = complete ] || fail "the record of $out is not complete"
}
# bytes_copied of the JSON summary $1 must be the total of `map --diff $2 --to $3`.
expect_diff_bytes() {
  local want
  want="$("$STRATA" map --json --diff "$2" --to "$3" "$VM" | jq '[.[].length] | add // 0')"
  [ "$(jq .bytes_copied <<<"$1")" = "$want" ] || fail "$2 -> $3 copied $(jq .bytes_copied <<<"$1") bytes, the diff is $want: $1"
  [ "$(jq .ranges <<<"$1")" = "$("$STRATA" map --json --diff "$2" --to "$3" "$VM" | jq length)" ] \
    || fail "$2 -> $3: ranges differ from map --diff: $1"
}

OUT=../backups/vm.raw
# --- full backup of s1 through the server: sparse, equal to nbdcopy --------------------------------
sum="$(backup --to s1 --output=json "$VM" "$OUT")" || fail "full backup of s1: $sum"
[ "$(jq -r .mode <<<"$sum")" = full ] || fail "not a full backup: $sum"
grep -q '^nbd+unix:///%40s1?socket=' <<<"$(jq -r .source <<<"$sum")" || fail "s1 was not read through @s1: $sum"
[ "$(jq .bytes_copied <<<"$sum")" = $(((4 + 1) * MiB + 4096)) ] || fail "the full backup copied more than s1's data: $sum"
expect_copy_of "$OUT" s1
[ "$(stat -c %b "$OUT")" -lt $((8 * MiB / 512)) ] || fail "the full backup is not sparse: $(stat -c %b "$OUT") blocks"
log "full backup of s1: $(jq .bytes_copied <<<"$sum") bytes"

# --- the refusals leave OUT untouched -----------------------------------------------------------
before="$(sha256sum <"$OUT")"
out="$(backup --from s2 --to s3 "$VM" "$OUT" 2>&1)" && fail "an incremental from s2 onto a copy of s1 ran: $out"
grep -q "holds snapshot 's1'" <<<"$out" || fail "the refusal does not say what OUT holds: $out"
out="$(backup --from s3 --to s2 "$VM" "$OUT" 2>&1)" && fail "--from s3 --to s2 ran: $out"
grep -q "not older than" <<<"$out" || fail "SNAP1 not older than SNAP2: $out"
out="$(backup --from s1 --to nope "$VM" "$OUT" 2>&1)" && fail "a missing snapshot was accepted: $out"
grep -q "no snapshot 'nope'" <<<"$out" || fail "missing snapshot: $out"
cp --sparse=always "$OUT" ../backups/norecord.raw
out="$(backup --from s1 --to s2 "$VM" ../backups/norecord.raw 2>&1)" && fail "an incremental onto a copy without a record ran: $out"
grep -q "has no record" <<<"$out" || fail "no record: $out"
out="$(backup --to s1 "$VM" ../backups/norecord.raw 2>&1)" && fail "a full backup replaced a file it did not make: $out"
[ "$(sha256sum <"$OUT")" = "$before" ] || fail "a refused backup changed $OUT"
log "refusals: wrong snapshot, not older, missing, no record; OUT untouched"

# --- incrementals s1 -> s2 -> s3: only the changed ranges, equal to nbdcopy ------------------------
sum="$(backup --from s1 --to s2 --json "$VM" "$OUT")" || fail "incremental s1 -> s2: $sum"
expect_diff_bytes "$sum" s1 s2
[ "$(jq .zero_bytes <<<"$sum")" -ge $((512 * 1024)) ] || fail "the zeroed range was not seen as zeros: $sum"
expect_copy_of "$OUT" s2
sum="$(backup --from s2 --to s3 --json "$VM" "$OUT")" || fail "incremental s2 -> s3: $sum"
expect_diff_bytes "$sum" s2 s3
expect_copy_of "$OUT" s3
log "incrementals s1 -> s2 -> s3: $(jq .bytes_copied <<<"$sum") bytes for the last"

# --- a killed full backup leaves no OUT, and the previous OUT as it was ---------------------------
killed_run() {  # ARGS...: starts `strata backup ARGS` rate-limited, kills it -9 mid-copy
  "$STRATA" backup --rate-limit 1M "$@" >/dev/null 2>&1 &
  local pid=$!
  sleep 1.5
  kill -0 "$pid" 2>/dev/null || fail "strata backup $* ended before it was killed"
  kill -KILL "$pid"
  wait "$pid" 2>/dev/null || true
}
killed_run --to s2 "$VM" ../backups/new.raw
[ ! -e ../backups/new.raw ] || fail "a killed full backup left OUT behind"
[ ! -e ../backups/new.raw.strata-backup ] || fail "a killed full backup left a record"
killed_run --to s2 "$VM" "$OUT"
expect_copy_of "$OUT" s3
sum="$(backup --to s2 --json "$VM" ../backups/new.raw)" || fail "full backup after a killed one: $sum"
expect_copy_of ../backups/new.raw s2
log "killed full backups: no OUT, previous OUT intact; the next one replaces the leftover"

# --- a killed incremental is detected, and finished by the same incremental ----------------------
# s1 -> s3 onto a copy of s1 copies over 4 MiB: 1.5 s at 1 MiB/s is within it.
backup --to s1 "$VM" ../backups/inc.raw >/dev/null
killed_run --from s1 --to s3 "$VM" ../backups/inc.raw
[ "$(jq -r .state ../backups/inc.raw.strata-backup)" = in-progress ] || fail "a killed incremental left no in-progress record"
out="$(backup --from s1 --to s2 "$VM" ../backups/inc.raw 2>&1)" && fail "another incremental onto an interrupted one ran: $out"
grep -q "was interrupted" <<<"$out" || fail "interrupted incremental: $out"
backup --from s1 --to s3 "$VM" ../backups/inc.raw >/dev/null || fail "re-running the interrupted incremental failed"
expect_copy_of ../backups/inc.raw s3
log "killed incremental: refused for another, finished by the same"

# --- offline: the server stopped, the frozen files read directly ----------------------------------
kill -TERM "$SERVER_PID"
for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$SERVER_PID" 2>/dev/null && fail "the server ignored SIGTERM"
SERVER_PID=""
sum="$(backup --to s1 --json "$VM" ../backups/off.raw)" || fail "offline full backup: $sum"
[ "$(jq -r .source <<<"$sum")" = ../vm/vm@s1.strata ] || fail "offline, s1 was not read from its file: $sum"
cmp ../backups/off.raw "$WORK/ref-s1.raw" || fail "the offline full backup differs from nbdcopy of @s1"
sum="$(backup --from s1 --to s3 --json "$VM" ../backups/off.raw)" || fail "offline incremental: $sum"
expect_diff_bytes "$sum" s1 s3
cmp ../backups/off.raw "$WORK/ref-s3.raw" || fail "the offline incremental differs from nbdcopy of @s3"
out="$(backup --socket ../vm/vm.sock --to s1 "$VM" ../backups/off2.raw 2>&1)" && fail "--socket without a server fell back to the files: $out"
log "offline: full and incremental from the frozen files, --socket insists on a server"
log "PASS"
