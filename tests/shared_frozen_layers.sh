#!/usr/bin/env bash
# Issue 14, frozen layers on shared storage: one golden image G (a raw base and a frozen strata
# layer on it) that strata may not write, and two disks on it, each with its own active layer,
# served at once as the README starts servers (background, relative paths, another working
# directory), as hosts sharing G over NFS or CephFS would. Each server gets different writes
# and a live snapshot, reads back its own data, and a deletion of its own snapshot; the
# deletion of G through a server and an offline `strata commit` into G are refused with a
# clear error while the servers hold G, and lose nothing; `check --repair` of a third disk on
# G meanwhile finds no problem. G's files keep their sha256 and its
# directory gets no new file. Both servers stop cleanly and `strata check` finds both disks
# clean.
#
# How G is made unwritable, each a separate round:
#   ro-mount  (root) G's directory bind-mounted read-only in a private mount namespace
#             (unshare -m): EROFS for every write, even root's;
#   nobody    (root) G's files chmod 0444 in a 0555 directory, the disks and servers run by
#             nobody (setpriv) in a directory nobody owns: EACCES;
#   chmod     (not root) the same permissions, the caller's own user.
# Usage: shared_frozen_layers.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
[ "$SERVER_KIND" = strata ] || skip "strata's own layers: nothing to compare with $SERVER_KIND"
need nbdsh nbdinfo sha256sum timeout

MiB=$((1024 * 1024))

# --- one round: run as the user the round is for, G already unwritable ---------------------------
# scenario STRATA G HOSTS: HOSTS is a directory this user owns.
scenario() {
  local strata="$1" g="$2" hosts="$3"
  WORK="$hosts"  # fail() shows $WORK/server.log
  mkdir -p "$hosts/a" "$hosts/b" "$hosts/c" "$hosts/elsewhere"
  local before
  before="$(fingerprint "$g")"
  for h in a b; do
    (cd "$hosts/$h" && timeout 60 "$strata" create -b "$g/gold.strata" -F strata vm.strata \
       >"$hosts/$h/create.out" 2>&1) \
      || fail "create -b on the shared layer ($h): $(cat "$hosts/$h/create.out")"
    grep -q "note: vm.strata is not registered as a child of $g/gold.strata" \
      "$hosts/$h/create.out" \
      || fail "create -b gave no note of the skipped registry: $(cat "$hosts/$h/create.out")"
  done
  # As the README starts a server: background, relative paths, from another directory.
  for h in a b; do
    local out
    out="$(cd "$hosts/elsewhere" && timeout 60 "$strata" serve --allow-parent-dir "$g" \
             --pid-file "../$h/vm.pid" --log-file "../$h/server.log" "../$h/vm.strata" 2>&1)" \
      || fail "strata serve ../$h/vm.strata: $out"
    grep -q "^serving $hosts/$h/vm.strata at " <<<"$out" || fail "no 'serving' line: $out"
  done
  local ua="nbd+unix:///?socket=$hosts/a/vm.sock" ub="nbd+unix:///?socket=$hosts/b/vm.sock"
  # Different data through each, a live snapshot of each, more data after it.
  write_pattern "$ua" 0xa1 $((1 * MiB)) || fail "write through a"
  write_pattern "$ub" 0xb1 $((1 * MiB)) || fail "write through b"
  for h in a b; do
    timeout 60 "$strata" snapshot --control "$hosts/$h/vm.ctl" s1 >/dev/null \
      || fail "live snapshot of $h"
  done
  write_pattern "$ua" 0xa2 $((3 * MiB)) || fail "write through a after the snapshot"
  write_pattern "$ub" 0xb2 $((5 * MiB)) || fail "write through b after the snapshot"
  check_reads "$ua" 0xa1 0xa2 $((3 * MiB)) "a"
  check_reads "$ub" 0xb1 0xb2 $((5 * MiB)) "b"
  # Refused while the servers hold G, each saying why, nothing changed.
  local out
  out="$(timeout 60 "$strata" delete-snapshot --control "$hosts/a/vm.ctl" gold 2>&1)" \
    && fail "deleting the shared layer through a server was accepted: $out"
  grep -q "never changed or removed" <<<"$out" || fail "delete-snapshot gold: unclear refusal: $out"
  (cd "$hosts/c" && timeout 60 "$strata" create -b "$g/gold.strata" -F strata c.strata \
     >/dev/null 2>&1) || fail "create -b for the offline commit"
  out="$(cd "$hosts/c" && timeout 60 "$strata" commit --allow-parent-dir "$g" c.strata 2>&1)" \
    && fail "an offline commit into the shared layer was accepted: $out"
  grep -q "cannot commit .*c.strata into $g/gold.strata: .*in use by another process" <<<"$out" \
    || fail "commit into gold: unclear refusal: $out"
  [ ! -e "$hosts/c/c.strata.merge" ] || fail "the refused commit left a journal"
  # A repair of a disk on G leaves G, which the servers hold, as it is: not a problem.
  out="$(timeout 60 "$strata" check --repair --allow-parent-dir "$g" "$hosts/c/c.strata" 2>&1)" \
    || fail "check --repair of a disk on the shared layer while it is served: $out"
  # A deletion of a server's own snapshot merges into its own layers only: it works.
  timeout 120 "$strata" delete-snapshot --control "$hosts/a/vm.ctl" s1 >/dev/null 2>&1 \
    || fail "deleting a's own snapshot s1 online"
  check_reads "$ua" 0xa1 0xa2 $((3 * MiB)) "a after deleting s1"
  check_reads "$ub" 0xb1 0xb2 $((5 * MiB)) "b"
  for h in a b; do stop_by_pid_file "$hosts/$h/vm.pid"; done
  # With the servers gone, the commit is still refused: G cannot be written.
  out="$(cd "$hosts/c" && timeout 60 "$strata" commit --allow-parent-dir "$g" c.strata 2>&1)" \
    && fail "an offline commit into the unwritable shared layer was accepted: $out"
  grep -q "cannot commit .*c.strata into $g/gold.strata" <<<"$out" || fail "commit: $out"
  [ ! -e "$hosts/c/c.strata.merge" ] || fail "the refused commit left a journal"
  for h in a b; do
    out="$(timeout 60 "$strata" check --allow-parent-dir "$g" "$hosts/$h/vm.strata" 2>&1)" \
      || fail "strata check of $h after the servers stopped: $out"
  done
  out="$(timeout 60 "$strata" check --allow-parent-dir "$g" "$hosts/c/c.strata" 2>&1)" \
    || fail "strata check of c after the refused commits: $out"
  [ "$(fingerprint "$g")" = "$before" ] \
    || fail "G changed: $(diff <(echo "$before") <(fingerprint "$g"))"
}

# Every file of directory $1 (hidden ones too) with its sha256: a new file or a changed byte shows.
fingerprint() {
  (cd "$1" && find . -mindepth 1 -printf '%P %m %s\n' | sort &&
     find . -type f -print0 | sort -z | xargs -0r sha256sum)
}

# 1 MiB of byte $2 at offset $3 through URI $1.
write_pattern() {
  timeout 60 nbdsh -u "$1" -c "h.pwrite(bytes([$2]) * $MiB, $3); h.flush()"
}

# Through URI $1: $2 at 1 MiB, $3 at offset $4, G's content at 8 MiB (the golden layer's data)
# and at 20 MiB (the raw base's).
check_reads() {
  timeout 60 nbdsh -u "$1" -c "
import sys
def want(off, byte, what):
    got = h.pread($MiB, off)
    if got != bytes([byte]) * $MiB:
        sys.exit('$5: %s @ %d: expected 0x%02x, read 0x%02x...' % (what, off, byte, got[0]))
want($MiB, $2, 'first write')
want($4, $3, 'write after the snapshot')
want(8 * $MiB, 0x3c, 'the golden layer')
want(20 * $MiB, 0x5a, 'the raw base')
" || fail "$5: read back"
}

# SIGTERM to the daemon named by pid file $1; it must be gone within 20 s.
stop_by_pid_file() {
  local pid
  pid="$(cat "$1")" || fail "no pid file $1"
  kill -TERM "$pid"
  for _ in $(seq 200); do [ -e "/proc/$pid" ] || return 0; sleep 0.1; done
  fail "server $pid ($1) still runs 20 s after SIGTERM"
}

if [ "${1:-}" = "--scenario" ]; then
  shift
  scenario "$@"
  exit 0
fi
if [ "${1:-}" = "--ro-mount-scenario" ]; then
  # In a private mount namespace: G's directory read-only over itself, for this round only.
  mount --bind "$3" "$3" && mount -o remount,bind,ro "$3" || skip "cannot bind-mount read-only"
  scenario "$2" "$3" "$4"
  exit 0
fi

# --- the golden image, and the rounds ------------------------------------------------------------
interop_init "$@"
STRATA="$(realpath "$STRATA")"
SELF="$(realpath "$0")"
chmod 0755 "$WORK"
cleanup_servers() {
  for f in "$WORK"/*/hosts/*/vm.pid; do
    [ -s "$f" ] && terminate_pid "$(cat "$f")"
  done
  return 0
}
trap 'cleanup_servers; interop_cleanup' EXIT

# G: 32 MiB raw base (0x5a), a frozen layer with 0x3c in [8M, 12M).
make_golden() {
  local g="$1"
  mkdir -p "$g"
  head -c $((32 * MiB)) /dev/zero | tr '\0' '\132' >"$g/base.raw"
  (cd "$g" && "$STRATA" create -b base.raw -F raw g.strata >/dev/null)
  timeout 60 "$STRATA" serve --foreground --socket "$g/g.sock" --no-control --run \
    "nbdsh -u \"\$uri\" -c 'h.pwrite(bytes([0x3c]) * (4 * $MiB), 8 * $MiB); h.flush()'" \
    "$g/g.strata" 2>>"$WORK/server.log" || fail "writing the golden layer"
  "$STRATA" snapshot "$g/g.strata" gold >/dev/null
  mv "$g/g@gold.strata" "$g/gold.strata"
  rm -f "$g/g.strata" "$g/.strata-children"
}

rounds=() passed=()
if [ "$(id -u)" = 0 ]; then
  command -v unshare >/dev/null && rounds+=(ro-mount)
  command -v setpriv >/dev/null && rounds+=(nobody)
else
  rounds+=(chmod)
fi
for round in "${rounds[@]}"; do
  R="$WORK/$round"
  mkdir -p "$R/hosts"
  make_golden "$R/golden"
  start=$SECONDS
  rc=0
  case "$round" in
    ro-mount)
      timeout 200 unshare -m --propagation private "$SELF" --ro-mount-scenario "$STRATA" \
        "$R/golden" "$R/hosts" || rc=$? ;;
    nobody)
      chmod 0444 "$R/golden"/*; chmod 0555 "$R/golden"
      chown nobody "$R/hosts"
      timeout 200 setpriv --reuid=nobody --regid=nogroup --clear-groups \
        "$SELF" --scenario "$STRATA" "$R/golden" "$R/hosts" || rc=$? ;;
    chmod)
      chmod 0444 "$R/golden"/*; chmod 0555 "$R/golden"
      timeout 200 "$SELF" --scenario "$STRATA" "$R/golden" "$R/hosts" || rc=$? ;;
  esac
  chmod -R u+w "$R/golden"
  case "$rc" in
    0) log "round $round: two servers on one unwritable golden image, $((SECONDS - start)) s"
       passed+=("$round") ;;
    77) log "round $round skipped" ;;
    *) fail "round $round (status $rc)" ;;
  esac
done
[ "${#passed[@]}" -gt 0 ] || skip "no round could run"
log "PASS (${passed[*]})"
