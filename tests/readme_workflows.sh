#!/usr/bin/env bash
# The README's workflows, run as a user types them (issue 12: "the README's commands all work
# exactly as written"). Each ```sh block is read out of README.md under its heading and its
# commands are run one by one, as written, from a scratch directory with `strata` on PATH and
# background servers (no --foreground); the script only names each command's start (so a
# README change that reorders or drops one fails here, naming it) and checks what the README
# promises after it. Stand-ins, each said where it is used: the guest (qemu-io through NBD),
# the VM images (made with qemu-img), paths under / (a scratch directory), and commands that
# need root or a kernel module (skipped). Servers are stopped by pid: the process holding the
# layer open, found in /proc (the README's `strata serve` writes no pid file). Run as root, the
# script runs itself again as the user nobody (a user's view: no root, no /run).
# Usage: readme_workflows.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
[ "$SERVER_KIND" = strata ] || skip "the README's strata workflows: nothing to compare with $SERVER_KIND"
need qemu-img qemu-io nbdinfo nbdcopy jq timeout
SELF="$(realpath "$0")"
README="$(realpath "$(dirname "$0")/../README.md")"
interop_init "$@"
STRATA="$(realpath "$STRATA")"
PATH="$(dirname "$STRATA"):$PATH"
[ "$(command -v strata)" = "$STRATA" ] || fail "strata on PATH is $(command -v strata), not $STRATA"
DAEMONS=()
trap 'for p in "${DAEMONS[@]}"; do terminate_pid "$p"; done; interop_cleanup' EXIT

# The commands of the N-th ```sh block under heading H (the heading's text without the #s):
# comment-only and blank lines dropped, a command's trailing comment kept (bash ignores it).
readme_block() {
  awk -v h="$1" -v n="$2" '
    /^```/ { if (on && $0 == "```") exit; fence = !fence
             if (fence && inh && $0 == "```sh" && ++k == n) on = 1; next }
    !fence && /^#+ / { t = $0; sub(/^#+ /, "", t); inh = (t == h); next }
    on && !/^[[:space:]]*(#|$)/ { print }' "$README"
}

# Loads block N under heading $1 into CMDS; NEXT is the index of the next command to run.
block() {
  mapfile -t CMDS < <(readme_block "$1" "$2")
  [ "${#CMDS[@]}" -gt 0 ] || fail "README.md has no \`\`\`sh block $2 under '$1'"
  NEXT=0
  log "--- $1 (block $2): ${#CMDS[@]} commands"
}

# Takes the next README command, which must start with $1, into CMD (not run: see run_cmd).
take() {
  [ "$NEXT" -lt "${#CMDS[@]}" ] || fail "README block ended; expected a command starting '$1'"
  CMD="${CMDS[$NEXT]}"; NEXT=$((NEXT + 1))
  [[ "$CMD" == "$1"* ]] || fail "README command '$CMD' does not start with '$1': the test needs updating"
}

# Runs CMD (optionally rewritten by sed expression $2) in the current directory, bounded;
# stdout in ./out, stderr in ./err, status in RC; $1 is the status expected (or "any").
run_cmd() {
  local want="$1" cmd="$CMD"
  if [ -n "${2:-}" ]; then cmd="$(sed -e "$2" <<<"$CMD")"; log "stand-in: '$CMD' runs as '$cmd'"; fi
  RC=0; timeout 60 bash -c "$cmd" </dev/null >out 2>err || RC=$?
  [ "$want" = any ] || [ "$RC" = "$want" ] \
    || fail "'$cmd' exited $RC, want $want: $(cat err out | head -5)"
}
# The next README command, which must start with $1, run as written; it must exit 0.
step() { take "$1"; run_cmd 0 "${2:-}"; }
# The next README command, not run (needs root, a kernel module or a VM); says why.
skip_step() { take "$1"; log "not run: '$CMD' ($2)"; }
# The README's remaining commands must all have been taken.
block_done() { [ "$NEXT" = "${#CMDS[@]}" ] || fail "README command '${CMDS[$NEXT]}' not covered by the test"; }

out_has() { grep -Eq -- "$1" out || fail "'$CMD' printed no line matching '$1': $(cat out err | head -5)"; }
err_has() { grep -Eq -- "$1" err || fail "'$CMD' said nothing matching '$1' on stderr: $(cat err | head -5)"; }
exists() { for f in "$@"; do [ -e "$f" ] || fail "after '$CMD': no $f in $PWD"; done; }
absent() { for f in "$@"; do [ ! -e "$f" ] || fail "after '$CMD': $f is still in $PWD"; done; }

# The pid of the server holding $PWD/$1 open (the daemon a background `strata serve` left).
server_pid() {
  local want="$PWD/$1" p f pids=()
  for p in /proc/[0-9]*; do
    for f in "$p"/fd/*; do
      [ "$(readlink "$f" 2>/dev/null)" = "$want" ] && { pids+=("${p#/proc/}"); break; }
    done
  done
  [ "${#pids[@]}" = 1 ] || fail "want one process holding $want, found: ${pids[*]:-none}"
  echo "${pids[0]}"
}
# After a background start: the daemon serves $1; recorded for cleanup.
started() { PID="$(server_pid "$1")"; DAEMONS+=("$PID"); }
# SIGTERM to the daemon $PID; it must exit within 20 s.
stop_pid() {
  kill -TERM "$PID"
  for _ in $(seq 200); do [ -e "/proc/$PID" ] || return 0; sleep 0.1; done
  fail "server $PID still runs 20 s after SIGTERM"
}
# Stand-in for the guest: qemu-io commands ($2...) on the NBD URI $1.
guest() { local u="$1"; shift; local a=(); for c in "$@"; do a+=(-c "$c"); done
          timeout 30 qemu-io -f raw "${a[@]}" "$u" >/dev/null || fail "qemu-io ${*} on $u failed"; }
# Stand-in for a guest of an offline disk: the disk served captive for qemu-io.
guest_offline() { local l="$1"; shift
  local q="qemu-io -f raw"; for c in "$@"; do q+=" -c '$c'"; done
  timeout 60 strata serve --run "$q \"\$uri\"" "$l" >/dev/null 2>&1 || fail "qemu-io $* on $l failed"; }
# A raw base as the README's examples assume one: 64 MiB, 0x11 in the first MiB, sparse after.
raw_base() { truncate -s 64M "$1"; guest_file "$1" 'write -P 0x11 0 1M'; }
guest_file() { timeout 30 qemu-io -f raw -c "$2" "$1" >/dev/null || fail "qemu-io $2 on $1"; }

U="$WORK/user"  # the user's directory
mkdir -p "$U" && cd "$U"

# --- Serving a disk --------------------------------------------------------------------------
strata create --size 16M disk.strata >/dev/null
block 'Serving a disk' 1
step 'strata serve disk.strata'
out_has "^serving $U/disk.strata at nbd\+unix:///\?socket=$U/disk.sock$"
[ "$(stat -c %a disk.sock)" = 600 ] || fail "disk.sock has mode $(stat -c %a disk.sock), not 0600"
exists disk.ctl
started disk.strata
guest 'nbd+unix:///?socket=disk.sock' 'write -P 0x5a 0 2M'
block 'Serving a disk' 2
step 'nbdinfo'
out_has 'export-size: 16777216'
step 'qemu-img convert -f raw -O qcow2'
exists copy.qcow2
skip_step 'qemu-system-x86_64' 'a VM'
skip_step 'nbd-client' 'root and the nbd kernel module'
step 'nbdcopy'
[ "$(stat -c %s backup.raw)" = 16777216 ] || fail "backup.raw is not 16 MiB"
qemu-img compare -q -f raw -F qcow2 backup.raw copy.qcow2 || fail "backup.raw and copy.qcow2 differ"
guest_file backup.raw 'read -P 0x5a 0 2M'
block_done
stop_pid
absent disk.sock disk.ctl
block 'Serving a disk' 1
NEXT=1
mkdir run
step 'strata serve --socket /run/disk.sock' "s#/run/#$U/run/#"
out_has "at nbd\+unix:///\?socket=$U/run/disk.sock$"
started disk.strata; stop_pid
take 'strata serve --listen 127.0.0.1:10809'
if timeout 2 bash -c ': </dev/tcp/127.0.0.1/10809' 2>/dev/null; then
  port=$((20000 + RANDOM % 20000))
  run_cmd 0 "s#:10809#:$port#"  # another test has 10809
else port=10809; run_cmd 0; fi
out_has "at nbd://127.0.0.1:$port"
timeout 20 nbdinfo --size "nbd://127.0.0.1:$port" | grep -qx 16777216 || fail "nbd://127.0.0.1:$port"
started disk.strata; stop_pid
step 'strata serve --run'
out_has 'virtual size: 16 MiB'
step 'strata serve --log-file disk.log disk.strata'
started disk.strata; stop_pid
grep -Eq "^20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z strata\[$PID\] info: stopped" disk.log \
  || fail "disk.log has no dated 'stopped' line of $PID: $(cat disk.log)"
block_done

# --- A base in another directory (issue 13); /srv/golden stands for $U/srv/golden ------------
mkdir -p "$U/srv/golden" "$U/vms" && cd "$U/vms"
raw_base "$U/srv/golden/base.raw"
GOLDEN="s#/srv/golden#$U/srv/golden#g"
block 'Serving a disk' 3
step 'strata create -b /srv/golden/base.raw -F raw vm.strata' "$GOLDEN"
err_has "--allow-parent-dir $U/srv/golden"
CMD='strata serve vm.strata'; run_cmd 1
err_has "raw base $U/srv/golden/base.raw .* lies outside $U/vms: pass --allow-parent-dir $U/srv/golden"
step 'strata serve --allow-parent-dir /srv/golden vm.strata' "$GOLDEN"
started vm.strata
guest 'nbd+unix:///?socket=vm.sock' 'read -P 0x11 0 1M'
stop_pid
step 'strata info --allow-parent-dir /srv/golden vm.strata' "$GOLDEN"
out_has "$U/srv/golden/base.raw"
take 'export STRATA_ALLOW_PARENT_DIR=/srv/golden'
run_cmd 0 "$GOLDEN; s|[[:space:]]*#.*\$|; strata check vm.strata|"  # and a command that needs it
block_done
cd "$U"

# --- Snapshots, revert and delete, end to end (offline) --------------------------------------
mkdir "$U/offline" && cd "$U/offline"
raw_base base.raw
block 'Snapshots, revert and delete, end to end (offline)' 1
step 'strata create -b base.raw -F raw vm.strata'
guest_offline vm.strata 'write -P 0xaa 1M 1M'
step 'strata snapshot vm.strata before-upgrade'
exists vm@before-upgrade.strata
guest_offline vm.strata 'write -P 0xbb 1M 1M'
step 'strata revert vm.strata before-upgrade'
guest_offline vm.strata 'read -P 0x11 0 1M' 'read -P 0xaa 1M 1M'
exists vm@before-upgrade.strata
step 'strata delete-snapshot vm.strata before-upgrade'
absent vm@before-upgrade.strata
guest_offline vm.strata 'read -P 0xaa 1M 1M'
step 'strata resize vm.strata +10G'
strata info --json vm.strata | jq -e '.virtual_size == 64*1048576 + 10*1073741824' >/dev/null \
  || fail "after '$CMD' the disk is not 64 MiB + 10 GiB: $(strata info vm.strata)"
step 'strata check vm.strata'
out_has 'vm.strata: no problems found'
block_done

# --- Fold the layers back into the raw image -------------------------------------------------
# The state the block starts from, on a disk not grown (--drop cannot drop a layer grown past
# its raw base: see the README's commit --into-base row).
mkdir "$U/fold" && cd "$U/fold"
raw_base base.raw
strata create -b base.raw -F raw vm.strata >/dev/null
guest_offline vm.strata 'write -P 0xaa 1M 1M'
strata snapshot vm.strata before-upgrade >/dev/null
block 'Fold the layers back into the raw image' 1
step 'strata delete-snapshot vm.strata before-upgrade'
[ "$(strata info --json vm.strata | jq '.layers | length')" = 2 ] || fail "not one layer on base.raw"
step 'strata commit --into-base vm.strata'
guest_file base.raw 'read -P 0xaa 1M 1M'
exists vm.strata
[ "$(strata info --json vm.strata | jq '.layers[0].allocated_bytes')" = 0 ] || fail "vm.strata not empty"
step 'strata commit --into-base --drop vm.strata'
absent vm.strata
guest_file base.raw 'read -P 0x11 0 1M'
block_done

# --- check's exit statuses, as the command table states them --------------------------------
grep -q '0 clean, 1 the check could not run (a missing or unreadable file), 2 problems (corruption), 3 only repairable findings' \
  "$README" || fail "README.md no longer states check's exit statuses as this test checks them"
strata create -b base.raw -F raw vm.strata >/dev/null
CMD='strata check vm.strata'; run_cmd 0
CMD='strata check gone.strata'; run_cmd 1
strata snapshot vm.strata s1 >/dev/null
printf '\xff' | dd of=vm@s1.strata bs=1 seek=200 conv=notrunc status=none  # one header copy
CMD='strata check vm.strata'; run_cmd 3
CMD='strata check --repair vm.strata'; run_cmd 0
mv base.raw base.away
CMD='strata check vm.strata'; run_cmd 2
mv base.away base.raw

# --- Bringing disks in and out ---------------------------------------------------------------
mkdir "$U/convert" && cd "$U/convert"
# Stand-ins for the VM images the block imports, and the snapshot s1 it exports.
qemu-img create -q -f qcow2 vm.qcow2 64M
timeout 30 qemu-io -f qcow2 -c 'write -P 0xcc 0 1M' vm.qcow2 >/dev/null
qemu-img create -q -f vmdk disk.vmdk 32M
block 'Bringing disks in and out' 1
step 'strata convert vm.qcow2 vm.strata'
guest_offline vm.strata 'read -P 0xcc 0 1M'
step 'strata convert -f vmdk disk.vmdk'
strata snapshot vm.strata s1 >/dev/null
step 'strata convert -O qcow2 vm.strata'
qemu-img compare -q vm.qcow2 "$(awk '{print $6}' <<<"$CMD")" || fail "'$CMD': the copy differs"
step 'strata convert -O vmdk -o subformat=streamOptimized vm@s1.strata s1.vmdk'
qemu-img compare -q -F vmdk vm.qcow2 s1.vmdk || fail "s1.vmdk differs from vm.qcow2"
step 'strata convert -O vhdx vm.strata vm.vhdx'
qemu-img compare -q -F vhdx vm.qcow2 vm.vhdx || fail "vm.vhdx differs from vm.qcow2"
block_done

# --- Moving a chain (rebase -u); / stands for the scratch directory -------------------------
mkdir "$U/move" && cd "$U/move"
raw_base base.raw
strata create -b base.raw -F raw vm.strata >/dev/null && strata snapshot vm.strata s1 >/dev/null
block 'Bringing disks in and out' 2
step 'mkdir /new' "s#/new#$U/move/new#g; s#/fast#$U/move/fast#g"
exists new/base.raw fast/vm@s1.strata fast/vm.strata
take 'strata info /fast/vm.strata'; run_cmd 1 "s#/fast#$U/move/fast#g"
err_has "raw base $U/move/fast/base.raw: .*No such file or directory"
step 'strata rebase -u -b /new/base.raw /fast/vm@s1.strata' "s#/new#$U/move/new#g; s#/fast#$U/move/fast#g"
step 'strata info --allow-parent-dir /new /fast/vm.strata' "s#/new#$U/move/new#g; s#/fast#$U/move/fast#g"
out_has "$U/move/new/base.raw"
block_done

# --- Live snapshots: the workflow, end to end ------------------------------------------------
mkdir "$U/live" && cd "$U/live"
raw_base base.raw
strata create -b base.raw -F raw vm.strata >/dev/null
block 'The workflow, end to end' 1
step 'strata serve vm.strata'
exists vm.sock vm.ctl
started vm.strata
URI_VM='nbd+unix:///?socket=vm.sock'
guest "$URI_VM" 'write -P 0xaa 1M 1M'  # the guest runs
step 'strata snapshot --control vm.ctl before-upgrade'
out_has "snapshot 'before-upgrade' taken live: $U/live/vm@before-upgrade.strata"
guest "$URI_VM" 'write -P 0xbb 1M 1M'  # the guest goes on writing
step 'strata list --control vm.ctl'
out_has "^1 +frozen +before-upgrade .*$U/live/vm@before-upgrade.strata$"
out_has "^2 +active .*$U/live/vm.strata$"
cp out list1
CMD='strata list vm.strata'; run_cmd 0  # the README's "or: strata list vm.strata"
cmp -s out list1 || fail "strata list vm.strata differs from --control vm.ctl: $(diff list1 out)"
step 'strata backup --to before-upgrade vm.strata backup.raw'
exists backup.raw backup.raw.strata-backup
jq -e '.snapshot == "before-upgrade"' backup.raw.strata-backup >/dev/null || fail "backup record"
guest_file backup.raw 'read -P 0x11 0 1M'; guest_file backup.raw 'read -P 0xaa 1M 1M'
# The README's alternative in a comment: nbdcopy of the @before-upgrade export.
CMD="$(grep -o "nbdcopy 'nbd+unix:///@before-upgrade?socket=vm.sock' full.raw" "$README")" \
  || fail "README.md lost the nbdcopy alternative"
run_cmd 0
cmp -s full.raw backup.raw || fail "'$CMD' and strata backup copied different bytes"
step 'strata snapshot --control vm.ctl nightly-2'
step 'strata backup --from before-upgrade --to nightly-2 vm.strata backup.raw'
out_has "^incremental from 'before-upgrade' of snapshot 'nightly-2'.*: 1 range, 1.0 MiB copied"
guest_file backup.raw 'read -P 0xbb 1M 1M'
CMD="strata map --json --diff before-upgrade --to nightly-2 vm.strata"
grep -qF "(what it copies: $CMD)" "$README" || fail "README.md lost '$CMD'"
run_cmd 0
jq -e 'length == 1 and .[0].start == 1048576 and .[0].length == 1048576' out >/dev/null \
  || fail "'$CMD': $(cat out)"
step 'strata revert --control vm.ctl before-upgrade'
out_has "reverted the served disk to snapshot 'before-upgrade'"
guest "$URI_VM" 'read -P 0xaa 1M 1M'
exists vm@nightly-2.strata  # off the chain now: a branch
step 'strata tree vm.strata'
out_has "vm@nightly-2.strata +frozen snapshot 'nightly-2'"
out_has '\*vm.strata +active'
step 'strata delete-snapshot vm.strata nightly-2'
absent vm@nightly-2.strata
step 'strata delete-snapshot --control vm.ctl before-upgrade'
absent vm@before-upgrade.strata
guest "$URI_VM" 'read -P 0x11 0 1M' 'read -P 0xaa 1M 1M'
step 'strata list --control vm.ctl'
out_has "^1 +active .*$U/live/vm.strata$"
out_has "deleting snapshot 'before-upgrade': done"
block_done
# The name is free again, and the stats the README's requests section names.
CMD='strata snapshot --control vm.ctl nightly-2'; run_cmd 0
CMD='strata stats vm.strata'; run_cmd 0
out_has '^live snapshots: 3 taken, 0 failed'
CMD='strata stats --output=json vm.strata'; run_cmd 0
jq -e '.total.requests > 0 and .snapshots.taken == 3 and (.total.latency_us | has("p99"))' out \
  >/dev/null || fail "'$CMD': $(head -c 300 out)"
stop_pid
absent vm.sock vm.ctl
CMD='strata check vm.strata'; run_cmd 0

# Once more as a user without root (nobody), when root can switch to it here.
if [ "$(id -u)" = 0 ] && [ -z "${STRATA_README_AS_NOBODY:-}" ] && command -v runuser >/dev/null \
   && runuser -u nobody -- test -x "$STRATA" -a -r "$README" 2>/dev/null; then
  log "--- again as nobody"
  timeout 80 runuser -u nobody -- env STRATA_README_AS_NOBODY=1 bash "$SELF" "$STRATA" \
    || fail "the README's workflows fail as the user nobody (above)"
fi
log "PASS${STRATA_README_AS_NOBODY:+ (as nobody)}"
