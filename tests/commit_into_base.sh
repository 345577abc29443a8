#!/usr/bin/env bash
# `strata commit --into-base` (issue 12), as a user coming from `qemu-img commit` runs it: from
# another working directory with relative paths, the raw base in a directory of its own. After
# each commit the raw file must hold the disk's data byte for byte (`cmp`, `qemu-img compare`)
# and the disk must read as before; zeroed ranges must leave holes in the base; the refusals
# (another disk on the base, a read-only base, a served disk) must change nothing and say why
# without a status-code prefix; an interrupted commit must be finished by `commit --resume`.
# Usage: commit_into_base.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
[ "$SERVER_KIND" = strata ] || skip "strata's own offline command: nothing to compare with $SERVER_KIND"
need qemu-img qemu-io jq timeout
interop_init "$@"
STRATA="$(realpath "$STRATA")"  # the cases run in other directories
mkdir -p "$WORK/img" "$WORK/vm" "$WORK/elsewhere" "$WORK/other"
cd "$WORK/elsewhere"
BASE=../img/base.raw DISK=../vm/disk.strata SNAP=../vm/disk@s1.strata
# The base lies in img/, beside the disk's vm/ (and layers in other/ stand on it): trusted once
# for every command, as README's "A base in another directory" tells users (issue 13).
export STRATA_ALLOW_PARENT_DIR="$WORK/img:$WORK/vm"

# rc of `strata "$@"` with stdout and stderr in $WORK/out.
run() { local rc=0; timeout 60 "$STRATA" "$@" >"$WORK/out" 2>&1 || rc=$?; echo "$rc"; }
refused() {  # $1: what the message must name; the rest: the command
  local want="$1"; shift
  [ "$(run "$@")" != 0 ] || fail "strata $* did not refuse"
  grep -q -- "$want" "$WORK/out" || fail "strata $*: the refusal does not name $want: $(cat "$WORK/out")"
  ! grep -q "FAILED_PRECONDITION\|INVALID_ARGUMENT" "$WORK/out" \
    || fail "strata $*: status code in the message: $(cat "$WORK/out")"
  [ ! -e "$BASE.merge" ] || fail "strata $*: a journal was left beside the base"
}
# Writes with qemu-io through a captive server of the disk: "$@" are qemu-io -c commands.
guest() {
  local cmds=() c
  for c in "$@"; do cmds+=(-c "'$c'"); done
  timeout 60 "$STRATA" serve --run "qemu-io -f raw ${cmds[*]} \"\$uri\"" "$DISK" \
    >/dev/null 2>>"$WORK/server.log" || fail "writing through strata serve --run: $*"
}
export_disk() { timeout 60 "$STRATA" export "$1" "$2" >/dev/null || fail "export $1"; }
same_bytes() {  # $1 raw file, $2 raw file, $3 what
  cmp "$1" "$2" || fail "$3: $1 and $2 differ"
  qemu-img compare -q -f raw -F raw "$1" "$2" || fail "$3: qemu-img compare $1 $2"
}
blocks() { stat -c %b "$1"; }

# A 4 MiB base, all data (so a punched range shows in its block count), and a disk on it.
head -c $((4 * MiB)) /dev/urandom >"$BASE"
[ "$(run create -b "$BASE" -F raw "$DISK")" = 0 ] || fail "create: $(cat "$WORK/out")"
guest "write -P 0x61 0 64k" "write -P 0x62 200k 100k"
[ "$(run snapshot "$DISK" s1)" = 0 ] || fail "snapshot: $(cat "$WORK/out")"
guest "write -P 0x63 64k 64k" "write -z 1M 1M" "write -P 0x64 3M 8k"

# --- Refusals: nothing changes --------------------------------------------------------------
cp "$BASE" "$WORK/base.before"
# Another disk on the same base, created from its own directory (recorded beside the base).
(cd "$WORK/other" && timeout 60 "$STRATA" create -b ../img/base.raw -F raw other.strata >/dev/null) \
  || fail "create other.strata"
refused "other.strata" commit --into-base "$SNAP"
rm "$WORK/other/other.strata"
chmod a-w "$BASE"
refused "read-only" commit --into-base "$SNAP"
chmod u+w "$BASE"
refused "exactly one child\|parent is strata" commit --into-base "$DISK"
# A served disk: started as the README starts it, in the background.
out="$(timeout 20 "$STRATA" serve --socket ../vm/disk.sock --pid-file ../vm/disk.pid "$DISK" 2>&1)" \
  || fail "serve: $out"
SERVER_PID="$(cat ../vm/disk.pid)"
refused "in use" commit --into-base "$SNAP"
terminate_pid "$SERVER_PID"; SERVER_PID=""
# QEMU holding the base (its fcntl locks, not flock): qemu-nbd exporting it read-only.
if command -v qemu-nbd >/dev/null; then
  timeout 30 qemu-nbd -r -f raw -k "$WORK/qemu.sock" "$BASE" 2>>"$WORK/server.log" &
  SERVER_PID=$!
  for _ in $(seq 50); do [ -S "$WORK/qemu.sock" ] && break; sleep 0.1; done
  refused "holds a file lock" commit --into-base "$SNAP"
  terminate_pid "$SERVER_PID"; SERVER_PID=""
fi
cmp -s "$BASE" "$WORK/base.before" || fail "a refused commit changed the base"

# --- The snapshot into the base: its child stands on the base, the disk reads the same ------
export_disk "$DISK" "$WORK/disk.before"
export_disk "$SNAP" "$WORK/s1.raw"
[ "$(run commit --into-base "$SNAP")" = 0 ] || fail "commit --into-base $SNAP: $(cat "$WORK/out")"
grep -q "into its raw base" "$WORK/out" || fail "commit --into-base did not say what it did: $(cat "$WORK/out")"
same_bytes "$BASE" "$WORK/s1.raw" "the base after committing s1"
[ ! -e "$SNAP" ] || fail "$SNAP is still there"
export_disk "$DISK" "$WORK/disk.after"
same_bytes "$WORK/disk.after" "$WORK/disk.before" "the disk after committing s1"
[ "$(run info --json "$DISK")" = 0 ] || fail "info: $(cat "$WORK/out")"
[ "$(jq '.layers | length' "$WORK/out")" = 2 ] || fail "not base + one layer: $(cat "$WORK/out")"

# --- The active layer into the base: an empty layer is left, the base holds the disk -------
# Interrupted first where strace can inject faults, then finished from another directory.
before_blocks="$(blocks "$BASE")"
if command -v strace >/dev/null && strace -f -qq -o /dev/null -e inject=getpid:error=EPERM true 2>/dev/null; then
  # The second rename is the journal's first progress record: the copy has begun.
  rc=0
  strace -f -qq -o /dev/null -e trace=rename,renameat,renameat2 \
    -e inject=rename,renameat,renameat2:error=EIO:when=2+ \
    "$STRATA" commit --into-base "$DISK" >/dev/null 2>&1 || rc=$?
  [ "$rc" != 0 ] || fail "commit --into-base did not fail when its journal could not be renamed"
  [ -f "$BASE.merge" ] || fail "no journal beside the base"
  [ "$(run info "$DISK")" != 0 ] || fail "info opened a half-committed disk"
  grep -q "interrupted commit" "$WORK/out" || fail "info does not say why: $(cat "$WORK/out")"
  out="$(cd "$WORK/other" && timeout 60 "$STRATA" commit --resume ../vm/disk.strata 2>&1)" \
    || fail "commit --resume from another directory: $out"
  grep -q "completed the interrupted commit" <<<"$out" || fail "commit --resume said: $out"
  [ ! -e "$BASE.merge" ] || fail "the journal is still there after --resume"
else
  log "strace cannot inject faults here: the interrupted case is skipped"
  [ "$(run commit --into-base "$DISK")" = 0 ] || fail "commit --into-base $DISK: $(cat "$WORK/out")"
fi
same_bytes "$BASE" "$WORK/disk.before" "the base after committing the top"
[ "$(blocks "$BASE")" -le $((before_blocks - 2048)) ] \
  || fail "the zeroed MiB was not punched out of the base ($before_blocks, then $(blocks "$BASE") blocks)"
export_disk "$DISK" "$WORK/disk.after"
same_bytes "$WORK/disk.after" "$WORK/disk.before" "the disk after committing the top"
[ "$(run info --json "$DISK")" = 0 ] || fail "info: $(cat "$WORK/out")"
[ "$(jq '.layers | length' "$WORK/out")" = 2 ] || fail "not base + one layer: $(cat "$WORK/out")"

# --- --drop: the raw file alone is the disk ------------------------------------------------
guest "write -P 0x65 512k 4k"
export_disk "$DISK" "$WORK/disk.before"
[ "$(run commit --into-base --drop "$DISK")" = 0 ] || fail "commit --into-base --drop: $(cat "$WORK/out")"
[ ! -e "$DISK" ] || fail "--drop left $DISK"
same_bytes "$BASE" "$WORK/disk.before" "the base after --drop"
log "PASS"
