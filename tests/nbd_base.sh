#!/usr/bin/env bash
# Issue 14, a base served over NBD (parent format nbd, a golden image served once for many
# hosts): a disk created with `strata create -b URI -F nbd` on an export of the test's base
# image, served as the README starts servers (background, relative paths, another working
# directory), for each kind of base server over a unix socket:
#   strata   `strata serve --read-only` of a frozen layer (its UUID recorded and checked),
#   qemu-nbd `qemu-nbd -r -f raw` of the raw image,
#   nbdkit   `nbdkit -r file` of the raw image;
# each reads as the base, takes unaligned writes (their edges read from the remote), reports
# the base's holes in block status, takes a live snapshot and deletes it online, and flattens
# (`strata convert -O raw`) to exactly the model of what was written; `strata check` is clean.
# Then, on an nbdkit base:
#   faults      the base killed: base reads fail with EIO within --base-timeout, local reads
#               and writes go on, `stats` shows the base down; restarted: reconnected, a read
#               issued while it was down is answered, nothing lost;
#   changed     the export restarted with another image: refused (the base changed), EIO;
#   writable    a writable export is refused unless --allow-writable-base;
#   tcp         nbd://127.0.0.1:PORT is followed only when --allow-parent-dir names it;
#   copy-on-read  what is read lands in the top layer; the base killed, it still reads.
# Usage: nbd_base.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
[ "$SERVER_KIND" = strata ] || skip "strata's own NBD base: nothing to compare with $SERVER_KIND"
need qemu-img qemu-io qemu-nbd nbdkit nbdinfo fio jq timeout
interop_init "$@"
STRATA="$(realpath "$STRATA")"
BASE_PID=""
VM_PID=""
cleanup_all() {
  local rc=$?
  terminate_pid "$VM_PID"
  terminate_pid "$BASE_PID"
  interop_rc "$rc"
}
interop_rc() { (exit "$1"); interop_cleanup; }
trap cleanup_all EXIT
mkdir -p "$WORK/disks" "$WORK/elsewhere"
make_base "$BASE"
cd "$WORK/elsewhere"
BSOCK="$WORK/disks/base.sock"
BURI="nbd+unix:///?socket=$BSOCK"
VURI="nbd+unix:///?socket=$WORK/disks/vm.sock"

# start_base KIND [IMAGE]: the export of $BASE (or IMAGE) at $BSOCK, its PID in $BASE_PID.
start_base() {
  rm -f "$BSOCK"
  case "$1" in
    strata)
      "$STRATA" serve --read-only --socket "$BSOCK" --pid-file ../gold.pid --log-file ../gold.log \
        --no-control ../disks/gold@golden.strata >/dev/null
      BASE_PID="$(cat ../gold.pid)" ;;
    qemu-nbd)
      qemu-nbd -r -f raw -t -e 8 -k "$BSOCK" "${2:-$BASE}" >/dev/null 2>&1 &
      BASE_PID=$! ;;
    nbdkit|writable)
      local ro=-r; [ "$1" = writable ] && ro=""
      nbdkit -f $ro -U "$BSOCK" file "${2:-$BASE}" &
      BASE_PID=$! ;;
  esac
  for _ in $(seq 100); do [ -S "$BSOCK" ] && return 0; sleep 0.05; done
  fail "the $1 base did not start"
}
stop_base() { terminate_pid "$BASE_PID"; BASE_PID=""; }
kill_base() { kill -KILL "$BASE_PID"; wait "$BASE_PID" 2>/dev/null || true; BASE_PID=""; }

# new_vm URI: ../disks/vm.strata, a new empty disk on the NBD base at URI.
new_vm() {
  rm -f ../disks/vm.strata
  "$STRATA" create -b "$1" -F nbd ../disks/vm.strata >/dev/null
}
serve_vm() {
  rm -f ../disks/vm.sock
  "$STRATA" serve --pid-file ../vm.pid --log-file ../vm.log "$@" ../disks/vm.strata >/dev/null
  VM_PID="$(cat ../vm.pid)"
}
stop_vm() {
  expect_stop "$VM_PID"
  VM_PID=""
}
base_field() {
  "$STRATA" stats --json ../disks/vm.strata |
    /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['base'][sys.argv[1]])" "$1"
}
wait_base() {  # wait_base FIELD VALUE SECONDS
  for _ in $(seq $(($3 * 10))); do [ "$(base_field "$1")" = "$2" ] && return 0; sleep 0.1; done
  fail "stats never showed base.$1 = $2 within $3 s: $("$STRATA" stats --json ../disks/vm.strata)"
}
# writes PATTERN OFFSET LENGTH ...: the same writes to the served disk and to the model.
writes() {
  local args=()
  while [ $# -gt 0 ]; do args+=(-c "write -P $1 $2 $3"); shift 3; done
  qemu-io -f raw "${args[@]}" "$VURI" >/dev/null || fail "writes to the served disk failed"
  qemu-io -f raw "${args[@]}" ../model.raw >/dev/null
}
compare_model() {
  qemu-img compare -q -f raw -F raw ../model.raw "$VURI" ||
    fail "$1: the disk differs from the model"
}

# The golden image as a frozen strata layer too, for the strata base.
cp "$BASE" ../disks/base.raw
"$STRATA" create -b base.raw -F raw ../disks/gold.strata >/dev/null
"$STRATA" snapshot ../disks/gold.strata golden >/dev/null
GOLD_UUID="$("$STRATA" info --json ../disks/gold@golden.strata | jq -r '.layers[0].uuid')"

for kind in strata qemu-nbd nbdkit; do
  log "base: $kind"
  start_base "$kind"
  new_vm "$BURI"
  info="$("$STRATA" info --json ../disks/vm.strata)"
  [ "$(jq -r '.layers[1].format' <<<"$info")" = nbd ] || fail "$kind: info shows no nbd base: $info"
  if [ "$kind" = strata ]; then
    [ "$(jq -r '.layers[0].parent_uuid' <<<"$info")" = "$GOLD_UUID" ] ||
      fail "the layer does not record the golden layer it stands on: $info"
  fi
  cp "$BASE" ../model.raw
  serve_vm
  compare_model "$kind: as created"
  writes 0xab 1000 70000 0xcd 20M 1M 0xef 30M 4096
  compare_model "$kind: after unaligned writes"
  map="$(nbdinfo --map "$VURI")"
  awk '$4 ~ /hole/ && $1 <= 33554432 && $1 + $2 >= 67108864 {found = 1} END {exit !found}' \
    <<<"$map" || fail "$kind: block status does not show the base's hole past 32M: $map"
  timeout 60 "$STRATA" snapshot --control ../disks/vm.ctl s1 >/dev/null
  writes 0x5a 9M 3000 0x5b 12M 64k
  timeout 120 "$STRATA" delete-snapshot --control ../disks/vm.ctl s1 >/dev/null
  compare_model "$kind: after a live snapshot and its deletion"
  stop_vm
  "$STRATA" check ../disks/vm.strata >/dev/null || fail "$kind: strata check found problems"
  rm -f ../flat.raw
  "$STRATA" convert -O raw ../disks/vm.strata ../flat.raw >/dev/null
  cmp -s ../flat.raw ../model.raw || fail "$kind: convert -O raw differs from the model"
  stop_base
done

# A strata base records the frozen layer it stands on: another frozen layer of the same size
# at that URI is refused.
start_base strata
"$STRATA" create -b "$BURI" -F nbd ../disks/vm.strata.new >/dev/null
stop_base
mv ../disks/gold@golden.strata ../disks/gold-kept.strata
rm ../disks/gold.strata
"$STRATA" create -b base.raw -F raw ../disks/gold.strata >/dev/null
"$STRATA" snapshot ../disks/gold.strata golden >/dev/null
start_base strata
if "$STRATA" info ../disks/vm.strata.new >/dev/null 2>../other-layer.err; then
  fail "a disk opened on another strata layer than its own"
fi
grep -q "was created on strata layer $GOLD_UUID" ../other-layer.err ||
  fail "no word of the layer it stands on: $(cat ../other-layer.err)"
stop_base

log "tls"
need psktool
psktool -u alice -p ../disks/keys.psk >/dev/null 2>&1
"$STRATA" serve --read-only --tls-psk ../disks/keys.psk --socket "$BSOCK" --pid-file ../gold.pid \
  --log-file ../gold.log --no-control ../disks/gold-kept.strata >/dev/null
BASE_PID="$(cat ../gold.pid)"
SURI="nbds+unix://alice@/?socket=$BSOCK&tls-psk-file=$WORK/disks/keys.psk"
new_vm "$SURI"
serve_vm
cp "$BASE" ../model.raw
compare_model "over TLS (PSK)"
stop_vm
stop_base

log "faults"
start_base nbdkit
new_vm "$BURI"
cp "$BASE" ../model.raw
serve_vm --base-timeout 3
writes 0x77 40M 1M
kill_base
start=$(date +%s)
if timeout 20 qemu-io -f raw -c 'read -P 0x22 9M 64k' "$VURI" >../read.out 2>&1; then
  fail "a read of the base succeeded with the base down"
fi
grep -q 'Input/output error' ../read.out ||
  fail "the base read failed without EIO: $(cat ../read.out)"
[ $(($(date +%s) - start)) -le 10 ] || fail "the failed read took more than 10 s (--base-timeout 3)"
timeout 20 qemu-io -f raw -c 'read -P 0x77 40M 1M' -c 'write -P 0x78 41M 64k' "$VURI" >/dev/null ||
  fail "local reads and writes failed while the base was down"
qemu-io -f raw -c 'write -P 0x78 41M 64k' ../model.raw >/dev/null
wait_base connected False 10
[ "$(base_field last_error)" != None ] || fail "stats gives no reason for the base being down"
# A read issued while the base is down is answered once it is back within --base-timeout.
timeout 20 qemu-io -f raw -c 'read -P 0x11 1M 64k' "$VURI" >../pending.out 2>&1 &
reader=$!
sleep 0.5
start_base nbdkit
wait "$reader" || fail "a read pending while the base restarted failed: $(cat ../pending.out)"
wait_base connected True 10
[ "$(base_field reconnects)" -ge 1 ] || fail "stats counts no reconnection"
compare_model "after the base came back"
# Under load: fio reads the whole disk (mostly the base) while the base is killed and
# restarted; the server answers every read (data or EIO) and stays up, and loses nothing.
fio --name=load --ioengine=nbd --uri="$VURI" --rw=randread --bs=64k --iodepth=16 --time_based \
  --runtime=6 --continue_on_error=all --output=../fio-load.out >/dev/null 2>&1 &
loader=$!
sleep 1.5
kill_base
sleep 1.5
start_base nbdkit
wait "$loader" || true
kill -0 "$VM_PID" 2>/dev/null || fail "the server died with the base killed under load"
grep -q 'read: IOPS=' ../fio-load.out || fail "fio under load did not run: $(cat ../fio-load.out)"
wait_base connected True 10
compare_model "after the base was killed under load"

log "changed"
kill_base
head -c $((32 * MiB)) /dev/zero >../other.raw
start_base nbdkit ../other.raw
for _ in $(seq 100); do
  base_field last_error | grep -q 'changed' && break
  sleep 0.1
done
base_field last_error | grep -q 'changed' ||
  fail "a base of another size was not refused: $(base_field last_error)"
if timeout 20 qemu-io -f raw -c 'read 1M 4096' "$VURI" >/dev/null 2>&1; then
  fail "a read went to a base that changed"
fi
stop_vm
if "$STRATA" serve --foreground --no-control --socket ../disks/vm2.sock ../disks/vm.strata \
  2>../changed.err; then
  fail "serve accepted a base that changed"
fi
grep -q 'the base changed' ../changed.err ||
  fail "serve did not say the base changed: $(cat ../changed.err)"
stop_base
start_base nbdkit
"$STRATA" check ../disks/vm.strata >/dev/null || fail "strata check found problems after the faults"
serve_vm
compare_model "after the changed base was put right"
stop_vm
stop_base

log "writable"
start_base writable
if "$STRATA" create -b "$BURI" -F nbd ../disks/w.strata 2>../writable.err; then
  fail "a writable export was accepted as a base"
fi
grep -q -- '--allow-writable-base' ../writable.err ||
  fail "no hint at --allow-writable-base: $(cat ../writable.err)"
"$STRATA" create --allow-writable-base -b "$BURI" -F nbd ../disks/w.strata >/dev/null
stop_base

log "tcp"
free_port='import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
PORT="$(/usr/bin/python3 -c "$free_port")"
nbdkit -f -r -i 127.0.0.1 -p "$PORT" file "$BASE" &
BASE_PID=$!
for _ in $(seq 100); do
  nbdinfo --size "nbd://127.0.0.1:$PORT/" >/dev/null 2>&1 && break
  sleep 0.05
done
TURI="nbd://127.0.0.1:$PORT/"
"$STRATA" create -b "$TURI" -F nbd ../disks/t.strata 2>../tcp.err >/dev/null
grep -q 'trusted only by name' ../tcp.err ||
  fail "create did not note the TCP base needs trust: $(cat ../tcp.err)"
if "$STRATA" info ../disks/t.strata >/dev/null 2>../tcp.err; then
  fail "info followed an untrusted TCP base"
fi
"$STRATA" info --allow-parent-dir "nbd://127.0.0.1:$PORT/" ../disks/t.strata >/dev/null
rm -f ../tflat.raw
"$STRATA" convert -O raw --allow-parent-dir "nbd://127.0.0.1:$PORT/" ../disks/t.strata ../tflat.raw \
  >/dev/null
cmp -s ../tflat.raw "$BASE" || fail "the disk on the TCP base does not read as the base"
# Served in the background as the README says, trusted by the URI's prefix.
rm -f ../disks/t.sock
"$STRATA" serve --allow-parent-dir "nbd://127.0.0.1:$PORT/" --pid-file ../t.pid \
  --log-file ../t.log ../disks/t.strata >/dev/null
VM_PID="$(cat ../t.pid)"
qemu-img compare -q -f raw -F raw "$BASE" "nbd+unix:///?socket=$WORK/disks/t.sock" ||
  fail "the disk served on the TCP base does not read as the base"
stop_vm
stop_base

log "copy-on-read"
start_base nbdkit
new_vm "$BURI"
serve_vm --copy-on-read
qemu-io -f raw -c 'read -P 0x11 0 8M' -c 'read -P 0x22 8M 8M' "$VURI" >/dev/null
for _ in $(seq 100); do
  data="$("$STRATA" list --json ../disks/vm.strata | jq '.layers[0].allocated_bytes')"
  [ "$data" -ge $((16 * MiB)) ] && break
  sleep 0.1
done
[ "$data" -ge $((16 * MiB)) ] || fail "copy-on-read kept $data bytes of the 16 MiB read"
kill_base
timeout 20 qemu-io -f raw -c 'read -P 0x11 0 8M' -c 'read -P 0x22 8M 8M' "$VURI" >/dev/null ||
  fail "what was read (and copied) no longer reads with the base down"
stop_vm
if "$STRATA" check ../disks/vm.strata >../check.out 2>&1; then
  fail "check passed with the base down"
fi
grep -q 'NBD base' ../check.out || fail "check did not name the NBD base: $(cat ../check.out)"
start_base nbdkit
"$STRATA" check ../disks/vm.strata >/dev/null ||
  fail "strata check found problems after copy-on-read"
log "PASS"
