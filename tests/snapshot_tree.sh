#!/usr/bin/env bash
# The snapshot tree of a served disk, as issue 12's problems 3 and 4 found it broken: a revert
# left `vm@nightly-2.strata` on disk where no command showed it, it blocked deleting
# `before-upgrade` and its name; a merge silently broke a branch in another directory. Here,
# with `strata serve` in the background from another directory with relative paths (as the
# README starts it): `strata tree` shows the dead branch, `delete-snapshot --control` removes
# it, the name is reusable, a branch elsewhere (registered by `create -b`) blocks the merge,
# a deleted branch keeps blocking it until `check --repair` forgets it.
# Usage: snapshot_tree.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
[ "$SERVER_KIND" = strata ] || skip "strata's own snapshot tree: nothing to compare with $SERVER_KIND"
need jq timeout
interop_init "$@"
STRATA="$(realpath "$STRATA")"
S() { timeout 60 "$STRATA" "$@"; }
mkdir -p "$WORK/vm" "$WORK/elsewhere" "$WORK/other"
cd "$WORK/elsewhere"
truncate -s 16M ../vm/base.raw
S create -b base.raw -F raw ../vm/vm.strata >/dev/null

start_server() {
  S serve --socket ../vm/vm.sock --pid-file ../vm/vm.pid --log-file ../vm/server.log ../vm/vm.strata
  SERVER_PID="$(cat ../vm/vm.pid)"
}
stop_server() {
  kill -TERM "$SERVER_PID"
  for _ in $(seq 200); do [ -e "/proc/$SERVER_PID" ] || break; sleep 0.1; done
  [ -e "/proc/$SERVER_PID" ] && fail "the server $SERVER_PID still runs 20 s after SIGTERM"
  SERVER_PID=""
}
# Every snapshot name in `strata tree --output=json` that is off the current chain.
off_chain() {
  S tree --output=json ../vm/vm.strata |
    jq -r '[.. | objects | select(.current_chain == false) | .snapshot // .file] | join(",")'
}

start_server
S snapshot --control ../vm/vm.ctl before-upgrade >/dev/null
S snapshot --control ../vm/vm.ctl nightly-2 >/dev/null
S revert --control ../vm/vm.ctl before-upgrade >/dev/null

# Problem 4: the dead branch is visible, blocks the merge by name, and its name is taken.
[ "$(off_chain)" = nightly-2 ] || fail "tree's off-chain snapshots: '$(off_chain)', not nightly-2"
human="$(S tree ../vm/vm.strata)"
grep -q "vm@nightly-2.strata  frozen snapshot 'nightly-2'" <<<"$human" ||
  fail "human tree lacks the dead branch: $human"
S info ../vm/vm.strata | grep -q "1 layer off this chain" || fail "info does not mention the dead branch"
S info --output=json ../vm/vm.strata | jq -e '.tree.layers[0].snapshot == "before-upgrade"' >/dev/null ||
  fail "info --output=json has no tree"
if out="$(S delete-snapshot --control ../vm/vm.ctl before-upgrade 2>&1)"; then
  fail "deleting before-upgrade under a dead branch succeeded"
fi
grep -q "vm@nightly-2.strata" <<<"$out" || fail "the refusal does not name the dead branch: $out"
if S snapshot --control ../vm/vm.ctl nightly-2 >/dev/null 2>&1; then
  fail "a snapshot took the name of the existing dead branch nightly-2"
fi
out="$(S delete-snapshot --control ../vm/vm.ctl nightly-2)"
grep -q "deleted snapshot 'nightly-2'" <<<"$out" || fail "off-chain delete said: $out"
[ ! -e ../vm/vm@nightly-2.strata ] || fail "vm@nightly-2.strata is still there"
[ -z "$(off_chain)" ] || fail "still off the chain: $(off_chain)"
S snapshot --control ../vm/vm.ctl nightly-2 >/dev/null || fail "the freed name nightly-2 was refused"
log "ok: a revert's dead branch is shown, blocks the merge by name, goes, frees its name"

# Problem 3: a branch in another directory, made with an absolute parent path, is registered.
S create -b "$WORK/vm/vm@before-upgrade.strata" -F strata ../other/b2.strata >/dev/null
grep -q "$WORK/other/b2.strata" ../vm/.strata-children || fail "b2 not registered beside its parent"
S tree ../vm/vm.strata | grep -q "$WORK/other/b2.strata" || fail "tree lacks the branch elsewhere"
if out="$(S delete-snapshot --control ../vm/vm.ctl before-upgrade 2>&1)"; then
  fail "deleting before-upgrade broke the branch in another directory"
fi
grep -q "other/b2.strata" <<<"$out" || fail "the refusal does not name the branch: $out"
# Its parent lies in another directory: trusted by name, as a user must (issue 13).
S info --allow-parent-dir "$WORK/vm" ../other/b2.strata >/dev/null || fail "the branch no longer opens"
log "ok: a branch in another directory blocks the merge of its snapshot and still opens"

# Gone: deleted without strata, it blocks merges until check --repair forgets it.
rm ../other/b2.strata
if out="$(S delete-snapshot --control ../vm/vm.ctl before-upgrade 2>&1)"; then
  fail "a merge went ahead past a registered child that is gone"
fi
grep -q "no longer where they were created" <<<"$out" || fail "gone child refusal said: $out"
stop_server
rc=0; S check ../vm/vm.strata >/dev/null 2>&1 || rc=$?
[ "$rc" = 3 ] || fail "check of a disk with a gone registered child exited $rc, not 3 (repairable)"
S check --repair ../vm/vm.strata >/dev/null || fail "check --repair failed"
S check ../vm/vm.strata >/dev/null || fail "check after --repair is not clean"
start_server
S delete-snapshot --control ../vm/vm.ctl before-upgrade >/dev/null ||
  fail "deleting before-upgrade after the repair failed"
stop_server
log "ok: a deleted branch is reported (check exit 3), forgotten by --repair, then the merge runs"
log PASS
