#!/usr/bin/env bash
# Hostile parent links (issue 13): a layer file whose header, CRC valid, names as its raw base
# a file outside its directory, a device, a file on /proc, a directory, a symbolic link or a
# FIFO. Before, `info`, `check` ("no problems found") and `serve` accepted them and served the
# file over NBD (an uploaded layer read any file the server could), and a FIFO hung every
# command. Each command must now refuse each probe, saying why, within 10 s; a base outside the
# layer's tree works once trusted with --allow-parent-dir (or STRATA_ALLOW_PARENT_DIR), and the
# served data is the base's.
# Usage: hostile_parents.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
[ "$SERVER_KIND" = strata ] || skip "strata's own parent rules: nothing to compare with $SERVER_KIND"
need nbdcopy timeout cmp
interop_init "$@"
STRATA="$(realpath "$STRATA")"
RELINK="$(dirname "$0")/lib/relink_layer.py"
VMS="$WORK/vms"
mkdir -p "$VMS" "$WORK/golden"
head -c $((4 * MiB)) /dev/urandom > "$WORK/golden/base.raw"
cp "$WORK/golden/base.raw" "$VMS/base.raw"
# Another user's file, 8 KiB (a whole number of sub-blocks, so the size rules let it through).
mkdir "$WORK/secret"
head -c 8192 /dev/urandom > "$WORK/secret/key.bin"

# Runs strata "$@" bounded at 10 s; sets $out (stdout + stderr) and $rc. A timeout is a hang.
run() {
  rc=0
  out="$(timeout 10 "$STRATA" "$@" 2>&1)" || rc=$?
  [ "$rc" -ne 124 ] || fail "strata $* hung (still running after 10 s)"
}
# Asserts the last run failed with exit status $1 and its message says $2.
expect_refused() {
  local want_rc="$1" why="$2" what="$3"
  [ "$rc" -eq "$want_rc" ] || fail "$what: exit $rc, expected $want_rc: $out"
  grep -qF -- "$why" <<<"$out" || fail "$what: the message does not say '$why': $out"
}

# A layer on $VMS/base.raw, then relinked to $1 with $1's size as the recorded parent size.
hostile_layer() {
  rm -f "$VMS/vm.strata"
  "$STRATA" create -b base.raw -F raw "$VMS/vm.strata" >/dev/null
  /usr/bin/python3 "$RELINK" "$VMS/vm.strata" "$1"
}

mkdir "$VMS/adir"
ln -s base.raw "$VMS/link.raw"
mkfifo "$VMS/fifo"
probes=(
  "../secret/key.bin|lies outside"
  "../../../../../../../../etc/passwd|lies outside"
  "/etc/shadow|lies outside"
  "/dev/zero|a character device"
  "/proc/self/mem|a file on /proc"
  "adir|a directory"
  "link.raw|a symbolic link"
  "fifo|a FIFO"
)
for probe in "${probes[@]}"; do
  parent="${probe%%|*}" why="${probe#*|}"
  hostile_layer "$parent"
  run info "$VMS/vm.strata"
  expect_refused 1 "$why" "info on a layer naming $parent"
  grep -qF "vm.strata" <<<"$out" || fail "info: the message does not name the layer: $out"
  run check "$VMS/vm.strata"
  expect_refused 2 "$why" "check on a layer naming $parent"
  # Background mode, as users start it: the failure must reach the caller.
  run serve --socket "$WORK/hostile.sock" "$VMS/vm.strata"
  expect_refused 1 "$why" "serve of a layer naming $parent"
  [ ! -S "$WORK/hostile.sock" ] || fail "serve left a socket for a layer naming $parent"
  run commit "$VMS/vm.strata"
  expect_refused 1 "$why" "commit of a layer naming $parent"
  run commit --into-base "$VMS/vm.strata"
  expect_refused 1 "$why" "commit --into-base of a layer naming $parent"
  run export "$VMS/vm.strata" "$WORK/out.raw"
  expect_refused 1 "$why" "export of a layer naming $parent"
  [ ! -e "$WORK/out.raw" ] || fail "export wrote $WORK/out.raw from a layer naming $parent"
  log "refused by info, check, serve, commit, export: $parent ($why)"
done
# Nothing a refused commit --into-base could have written to.
cmp -s "$VMS/base.raw" "$WORK/golden/base.raw" || fail "the base changed"

# `create -b` on a FIFO: refused at once, no layer left.
run create -b fifo -F raw "$VMS/new.strata"
expect_refused 1 "a FIFO" "create -b FIFO"
[ ! -e "$VMS/new.strata" ] || fail "create -b FIFO left $VMS/new.strata"
run create -b /dev/zero -F raw "$VMS/new.strata"
expect_refused 1 "a character device" "create -b /dev/zero"

# A golden image outside the layer's tree: create takes it (the user named it) and says what
# later commands need; they refuse it until the directory is trusted.
run create -b ../golden/base.raw -F raw "$VMS/branch.strata"
[ "$rc" -eq 0 ] || fail "create -b ../golden/base.raw: $out"
grep -qF -- "--allow-parent-dir $WORK/golden" <<<"$out" \
  || fail "create did not say the base needs --allow-parent-dir: $out"
run info "$VMS/branch.strata"
expect_refused 1 "--allow-parent-dir $WORK/golden" "info without the flag"
run info --allow-parent-dir "$WORK/golden" "$VMS/branch.strata"
[ "$rc" -eq 0 ] || fail "info --allow-parent-dir: $out"
rc=0
out="$(STRATA_ALLOW_PARENT_DIR="/nonexistent:$WORK/golden" timeout 10 "$STRATA" check \
         "$VMS/branch.strata" 2>&1)" || rc=$?
[ "$rc" -eq 0 ] || fail "check with STRATA_ALLOW_PARENT_DIR: exit $rc: $out"
run serve --socket "$WORK/branch.sock" "$VMS/branch.strata"
expect_refused 1 "--allow-parent-dir" "serve without the flag"
# Served in the background with the flag (relative paths, as the README shows): the disk
# reads as the golden base.
(cd "$VMS" && timeout 10 "$STRATA" serve --allow-parent-dir ../golden --socket branch.sock \
   --pid-file "$WORK/branch.pid" branch.strata >/dev/null 2>>"$WORK/server.log") \
  || fail "serve --allow-parent-dir ../golden did not start"
SERVER_PID="$(cat "$WORK/branch.pid")"
timeout 20 nbdcopy "nbd+unix:///?socket=$VMS/branch.sock" "$WORK/served.raw" \
  || fail "nbdcopy from the served branch"
cmp "$WORK/served.raw" "$WORK/golden/base.raw" || fail "the served disk is not the golden base"
terminate_pid "$SERVER_PID"
SERVER_PID=""
run commit --into-base --allow-parent-dir "$WORK/golden" "$VMS/branch.strata"
[ "$rc" -eq 0 ] || fail "commit --into-base --allow-parent-dir: $out"
log "PASS"
