#!/usr/bin/env bash
# The offline commands over interrupted operations, from other working directories and beside
# a running server: the CLI side of blockstore/{recovery,commit,check}_test.cc. Each case is a
# finding of the adversarial review. An interruption is a syscall failed with strace's fault
# injection at an exact call, not a kill at a guessed time.
# Usage: offline_recovery.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
[ "$SERVER_KIND" = strata ] || skip "strata's own offline commands: nothing to compare with $SERVER_KIND"
need strace jq qemu-io
interop_init "$@"
STRATA="$(realpath "$STRATA")"  # the cases run in other directories
strace -f -qq -o /dev/null -e inject=getpid:error=EPERM true 2>/dev/null \
  || skip "strace cannot trace here (ptrace not permitted)"

# strata under strace, failing every call of the syscalls $1 (e.g. unlink,unlinkat) from the
# $2-th on with EIO: the command stops there as if the machine had died.
strata_failing() {
  local calls="$1" when="$2"; shift 2
  strace -f -qq -o /dev/null -e trace="$calls" -e inject="$calls:error=EIO:when=$when+" \
    "$STRATA" "$@"
}
uuids() { "$STRATA" info --json "$1" | jq -r '[.layers[].uuid] | join(" ")'; }
# A 4 MiB disk in directory $1 (relative names, as a user in that directory types them):
# 64 KiB of 0x61 in snapshot s1, then 64 KiB of 0x62 at 64 KiB above it.
make_vm() {
  mkdir -p "$1"
  (cd "$1" && "$STRATA" create --size 4M disk.strata >/dev/null &&
   "$STRATA" serve --run 'qemu-io -f raw -c "write -P 0x61 0 64k" "$uri"' disk.strata \
     >/dev/null 2>>"$WORK/server.log" &&
   "$STRATA" snapshot disk.strata s1 >/dev/null &&
   "$STRATA" serve --run 'qemu-io -f raw -c "write -P 0x62 64k 64k" "$uri"' disk.strata \
     >/dev/null 2>>"$WORK/server.log")
}
expect_vm_content() {
  "$STRATA" export "$1" "$WORK/out.raw" >/dev/null || fail "export $1"
  local out
  out="$(qemu-io -f raw -c 'read -P 0x61 0 64k' -c 'read -P 0x62 64k 64k' "$WORK/out.raw" 2>&1)"
  [ "$(grep -c '^read 65536/65536' <<<"$out")" = 2 ] && ! grep -q "verification failed" <<<"$out" \
    || fail "$1: wrong content after the merge: $out"
}

# Finding 2: the merge journal named files relative to the working directory, so resuming
# vm1's merge from vm2 renamed vm2's snapshot over vm2's disk. Now it names them relative to
# its own directory and checks their UUIDs.
make_vm "$WORK/vm1"
make_vm "$WORK/vm2"
vm2_before="$(uuids "$WORK/vm2/disk.strata")"
rc=0
(cd "$WORK/vm1" && strata_failing unlink,unlinkat 1 delete-snapshot disk.strata s1) \
  >/dev/null 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "delete-snapshot did not fail when its journal could not be removed"
[ -f "$WORK/vm1/disk.strata.merge" ] || fail "no merge journal left behind in vm1"
out="$(cd "$WORK/vm2" && "$STRATA" commit --resume ../vm1/disk.strata 2>&1)" \
  || fail "commit --resume ../vm1/disk.strata from vm2: $out"
grep -q "completed the interrupted commit of ../vm1/disk.strata" <<<"$out" \
  || fail "commit --resume did not say what it completed: $out"
[ "$(uuids "$WORK/vm2/disk.strata")" = "$vm2_before" ] || fail "vm2's chain changed"
[ -f "$WORK/vm2/disk@s1.strata" ] || fail "vm2's snapshot was renamed away"
[ ! -e "$WORK/vm1/disk.strata.merge" ] || fail "vm1's journal is still there"
[ "$("$STRATA" info --json "$WORK/vm1/disk.strata" | jq '.layers | length')" = 1 ] \
  || fail "vm1's merge did not finish"
expect_vm_content "$WORK/vm1/disk.strata"
"$STRATA" check --quiet "$WORK/vm2/disk.strata" >/dev/null || fail "check of vm2"
log "ok: a journal resumed from another directory acts on its own disk only"

# Finding 4: killed between its journal renames (the second one, the copy's progress), a
# merge left its target readable: info/export/serve --read-only of disk@s1.strata showed a mix
# of both layers. Now the target says `merging` until the merge is finished.
make_vm "$WORK/vm3"
cd "$WORK/vm3"
rc=0
strata_failing rename,renameat,renameat2 2 delete-snapshot disk.strata s1 >/dev/null 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "delete-snapshot did not fail at its second rename"
[ -f disk.strata.merge ] || fail "no merge journal after a failed copy"
for cmd in "info disk@s1.strata" "export disk@s1.strata $WORK/mix.raw" \
           "serve --read-only --run true disk@s1.strata" "info disk.strata"; do
  out="$("$STRATA" $cmd 2>&1)" && fail "strata $cmd opened a half-merged layer: $out"
  grep -q "interrupted" <<<"$out" || fail "strata $cmd: unclear refusal: $out"
done
out="$("$STRATA" commit --resume disk.strata 2>&1)" || fail "commit --resume: $out"
expect_vm_content disk.strata
[ ! -e disk@s1.strata ] || fail "the deleted snapshot is still there"
cd "$WORK"
log "ok: an interrupted merge's target refuses every open until the merge is finished"

# Finding 5: a branch on the snapshot, created from another directory by absolute path, was
# silently changed by the merge into it. `create` records the branch's directory beside the
# snapshot, and the merge refuses.
make_vm "$WORK/vm4"
cd "$WORK/vm4"
mkdir other
"$STRATA" create -b "$WORK/vm4/disk@s1.strata" -F strata other/b2.strata >/dev/null
out="$("$STRATA" delete-snapshot disk.strata s1 2>&1)" && fail "merged into a snapshot with a branch: $out"
grep -q "other/b2.strata" <<<"$out" || fail "the refusal does not name the branch: $out"
# Its parent lies above its directory: trusted by name, as a user must (issue 13).
"$STRATA" info --allow-parent-dir . other/b2.strata >/dev/null || fail "the branch no longer opens"
cd "$WORK"
log "ok: a merge refuses when a branch in another directory uses the snapshot"

# Finding 3: check --repair took no lock and punched space a running server had just reused.
# Now it refuses while the disk is served; a plain check says its view may be stale.
cd "$WORK/vm4"
rc=0
export STRATA  # for the captive commands
out="$("$STRATA" serve --run '"$STRATA" check --repair disk.strata' disk.strata 2>&1)" || rc=$?
[ "$rc" -ne 0 ] || fail "check --repair of a served disk did not refuse: $out"
grep -q "open for writing" <<<"$out" || fail "unclear refusal: $out"
out="$("$STRATA" serve --run '"$STRATA" check disk.strata' disk.strata 2>&1)" \
  || fail "check of a served disk: $out"
grep -q "may be stale" <<<"$out" || fail "check of a served disk does not say its view may be stale: $out"
cd "$WORK"
log "ok: check --repair refuses a served disk"

log "PASS"
