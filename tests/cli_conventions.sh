#!/usr/bin/env bash
# strata's command line as qemu-img's users expect it: --help on every command (stdout, exit 0)
# and `strata help CMD`, --version, --output=human|json (null for "none"), map's qemu-img
# fields, check's exit statuses (0 clean, 1 could not check, 2 corruption, 3 only repairable),
# messages without status-code names, plurals, and a progress bar that ends its line.
# Usage: cli_conventions.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
[ "$SERVER_KIND" = strata ] || skip "strata's own command line: nothing to compare with $SERVER_KIND"
need jq
interop_init "$@"
cd "$WORK"

# rc of "$@" with stdout in $WORK/out and stderr in $WORK/err.
run() { local rc=0; "$STRATA" "$@" >"$WORK/out" 2>"$WORK/err" || rc=$?; echo "$rc"; }
expect_rc() {
  local want="$1"; shift
  local rc; rc="$(run "$@")"
  [ "$rc" = "$want" ] || fail "strata $*: exit $rc, want $want: $(cat "$WORK/err" "$WORK/out" | head -3)"
}

# --- --help, help CMD, --version ---------------------------------------------------------------
for cmd in serve create info map check export snapshot commit delete-snapshot revert list stats \
           cancel rebase convert tree backup resize bench; do
  expect_rc 0 "$cmd" --help
  [ -s out ] && [ ! -s err ] || fail "strata $cmd --help: usage not on stdout alone"
  grep -q "^usage: strata $cmd" out || grep -q "strata $cmd" out \
    || fail "strata $cmd --help does not show its usage: $(head -2 out)"
  cp out help1
  expect_rc 0 help "$cmd"
  cmp -s out help1 || fail "strata help $cmd differs from strata $cmd --help"
done
expect_rc 0 create -h
expect_rc 2 help no-such-command
expect_rc 0 --help
grep -q -- "--output=human|json" out || fail "strata --help does not mention --output"
expect_rc 0 --version
grep -Eq '^strata [0-9]+\.[0-9]+\.[0-9]+ \(git [^ )]+, [A-Za-z]+ build\), layer format version 1$' out \
  || fail "strata --version: $(cat out)"

# --- info / map --output -----------------------------------------------------------------------
head -c 1048576 /dev/urandom >base.raw
expect_rc 0 create -b base.raw -F raw disk.strata
expect_rc 0 create --size 1M solo.strata
expect_rc 0 info solo.strata
grep -q ', 1 layer (top first)' out || fail "info of a one-layer disk: $(head -1 out)"
expect_rc 0 info --output=json solo.strata
jq -e '.layers[0] | .snapshot == null and .frozen == null and (.created | type) == "string"' out \
  >/dev/null || fail "info --output=json: none is not null: $(cat out)"
cp out info1; expect_rc 0 info --json solo.strata
cmp -s out info1 || fail "info --json differs from --output=json"
expect_rc 2 info --output=xml solo.strata
grep -q "strata info: --output is human or json" err || fail "bad --output: $(cat err)"
expect_rc 0 map --output=json disk.strata
jq -e '.[0] | .start == 0 and .length == 1048576 and .depth == 1 and .present and .data
       and (.zero | not) and .offset == 0 and .layer == 0 and (.file | endswith("base.raw"))' out >/dev/null \
  || fail "map --output=json of the raw base: $(cat out)"
expect_rc 0 snapshot solo.strata s1
expect_rc 0 map --output=json solo.strata
jq -e 'length == 1 and (.[0] | .depth == 1 and (.present | not) and .zero and (.data | not)
       and (has("offset") | not) and .layer == null)' out >/dev/null \
  || fail "map --output=json of an unallocated disk: depth of the chain's bottom: $(cat out)"

# --- check's exit statuses -----------------------------------------------------------------------
expect_rc 0 check disk.strata
expect_rc 0 check --output=json disk.strata
jq -e '.corruptions == 0 and .leaks == 0 and .filename == "disk.strata" and (.notes | length) == 2' \
  out >/dev/null || fail "check --output=json of a clean disk: $(cat out)"
expect_rc 1 check missing.strata
grep -q "^strata check: .*missing.strata" err || fail "check of a missing file: $(cat err)"
expect_rc 1 check --no-such-option disk.strata
# A damaged header copy of the frozen snapshot: repairable only.
printf '\xff' | dd of=solo@s1.strata bs=1 seek=200 conv=notrunc status=none
expect_rc 3 check solo.strata
grep -q ': 0 problems, 1 repairable$' out || fail "check summary: $(tail -1 out)"
expect_rc 3 check --output=json solo.strata
jq -e '.corruptions == 0 and .leaks == 1 and (.repairable | length) == 1' out >/dev/null \
  || fail "check --output=json, repairable: $(cat out)"
expect_rc 0 check --repair solo.strata
expect_rc 0 check solo.strata
# A missing base: corruption.
mv base.raw base.away
expect_rc 2 check disk.strata
grep -q ': 1 problem, 0 repairable$' out || fail "check summary: $(tail -1 out)"
expect_rc 2 check --json disk.strata
jq -e '.corruptions == 1 and (.problems[0] | test("base.raw"))' out >/dev/null \
  || fail "check --json, corrupt: $(cat out)"

# --- messages for people ------------------------------------------------------------------------
expect_rc 1 info disk.strata
grep -q '^strata info: ' err || fail "info's error is not 'strata info: ...': $(cat err)"
expect_rc 1 export missing.strata out.raw
expect_rc 1 snapshot solo.strata s1
grep -q "^strata snapshot: .*already exists" err || fail "snapshot's error: $(cat err)"
for f in err; do
  ! grep -Eq '(^|: )[A-Z][A-Z_]{3,}: ' "$f" || fail "a status code's name reaches a person: $(cat "$f")"
done
mv base.away base.raw

# --- a progress bar's last frame ends its line ------------------------------------------------
if command -v script >/dev/null; then
  script -qec "'$STRATA' export disk.strata flat.raw" /dev/null | tr '\r' '\n' >tty.out
  grep -q 'export 100% \[' tty.out || fail "no progress bar on a terminal: $(cat tty.out)"
  grep -q '^exported disk.strata' tty.out \
    || fail "the result shares the progress bar's line: $(grep exported tty.out)"
  cmp -s flat.raw base.raw || fail "export on a terminal: wrong content"
else
  log "script (util-linux) not installed: the progress bar on a terminal is not checked"
fi
log "PASS"
