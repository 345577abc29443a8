#!/usr/bin/env bash
# `strata resize` as a qemu-img user expects it (issue 12): an overlay on a smaller raw base and
# a snapshot grows; the server, started as the README starts it (in the background, relative
# paths from another directory), then offers the new size (nbdinfo --size, qemu-img info), and
# qemu-io reads the old data below the old end and zeros past it, and writes there. A served
# disk and a shrink are refused with messages that say why; the same size changes nothing;
# `strata check` finds the grown chain clean.
# Usage: resize_grow.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
[ "$SERVER_KIND" = strata ] || skip "strata's own command: nothing to compare with $SERVER_KIND"
need nbdinfo qemu-img qemu-io jq timeout
interop_init "$@"
STRATA="$(realpath "$STRATA")"  # the commands run in another directory
mkdir -p "$WORK/rel" "$WORK/elsewhere"
cd "$WORK/elsewhere"
URI="nbd+unix:///?socket=$WORK/rel/disk.sock"
PID_FILE="$WORK/rel/disk.pid"
OLD=$((16 * MiB)) NEW=$((24 * MiB))

serve() {
  timeout 20 "$STRATA" serve ../rel/disk.strata --socket ../rel/disk.sock \
    --pid-file ../rel/disk.pid --log-file ../rel/server.log >/dev/null \
    || fail "strata serve ../rel/disk.strata did not start"
  SERVER_PID="$(cat "$PID_FILE")"
}
stop() {
  kill -TERM "$SERVER_PID"
  for _ in $(seq 200); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$SERVER_PID" 2>/dev/null && fail "the server $SERVER_PID still runs 20 s after SIGTERM"
  SERVER_PID=""
}
qio() { timeout 30 qemu-io -f raw "$URI" "$@"; }

# base.raw: 0x11 in [0, 16M); on it the disk, 0x22 written at 1M, frozen as s1; then 0x33
# written at 2M, up to the old end.
head -c "$OLD" /dev/zero | tr '\0' '\021' >../rel/base.raw
"$STRATA" create -b base.raw -F raw ../rel/disk.strata >/dev/null
serve
qio -c "write -P 0x22 1M 64k" >/dev/null || fail "qemu-io write before the snapshot"
stop
"$STRATA" snapshot ../rel/disk.strata s1 >/dev/null
serve
qio -c "write -P 0x33 $((OLD - 64 * 1024)) 64k" >/dev/null || fail "qemu-io write at the old end"
# A served disk is refused: NBD cannot tell its clients that the size changed.
out="$(timeout 20 "$STRATA" resize ../rel/disk.strata +8M 2>&1)" \
  && fail "resize of a served disk succeeded: $out"
grep -q "stop the server" <<<"$out" || fail "the refusal does not say to stop the server: $out"
grep -q "FAILED_PRECONDITION" <<<"$out" && fail "the message shows a status code: $out"
stop

out="$(timeout 20 "$STRATA" resize ../rel/disk.strata 8M 2>&1)" && fail "a shrink succeeded: $out"
grep -q "shrinking .* not supported" <<<"$out" || fail "the shrink refusal says: $out"
out="$(timeout 20 "$STRATA" resize ../rel/disk.strata 16M)" || fail "the same size failed: $out"
grep -q "nothing to do" <<<"$out" || fail "the same size says: $out"
out="$(timeout 20 "$STRATA" resize ../rel/disk.strata +8M)" || fail "strata resize +8M: $out"
grep -q "to 24.0 MiB ($NEW bytes)" <<<"$out" || fail "strata resize +8M says: $out"
[ "$(stat -c %s ../rel/base.raw)" = "$OLD" ] || fail "the raw base changed size"
timeout 20 "$STRATA" check ../rel/disk.strata >/dev/null || fail "strata check of the grown disk"
# info: the disk's new size; s1 and the base keep theirs (top first: disk, s1, base).
sizes="$(timeout 20 "$STRATA" info --output=json ../rel/disk.strata \
  | jq -c '[.virtual_size, (.layers[] | .virtual_size)]')" || fail "strata info"
[ "$sizes" = "[$NEW,$NEW,$OLD,$OLD]" ] || fail "strata info sizes (disk, top, s1, base): $sizes"

serve
size="$(timeout 20 nbdinfo --size "$URI")" || fail "nbdinfo --size"
[ "$size" = "$NEW" ] || fail "nbdinfo --size says $size, not $NEW"
vsize="$(timeout 30 qemu-img info --output=json "$URI" | jq -r '."virtual-size"')"
[ "$vsize" = "$NEW" ] || fail "qemu-img info says virtual-size $vsize, not $NEW"
qio -r -c "read -P 0x11 0 1M" -c "read -P 0x22 1M 64k" -c "read -P 0x11 2M 1M" \
    -c "read -P 0x33 $((OLD - 64 * 1024)) 64k" -c "read -P 0 $OLD 8M" >"$WORK/read.out" \
  || fail "qemu-io reads: $(cat "$WORK/read.out")"
grep -q "Pattern verification failed" "$WORK/read.out" && fail "qemu-io: $(cat "$WORK/read.out")"
# Writes across the old end and into the new area, read back after a restart.
qio -c "write -P 0x44 $((OLD - 4096)) 8k" -c "write -P 0x55 $((NEW - 4096)) 4k" >/dev/null \
  || fail "qemu-io writes in the new area"
stop
serve
qio -r -c "read -P 0x44 $((OLD - 4096)) 8k" -c "read -P 0 $((OLD + 4096)) 1M" \
    -c "read -P 0x55 $((NEW - 4096)) 4k" >"$WORK/read.out" || fail "qemu-io rereads"
grep -q "Pattern verification failed" "$WORK/read.out" && fail "qemu-io: $(cat "$WORK/read.out")"
stop
# The snapshot keeps its size and content.
out="$(timeout 30 qemu-img info --output=json "$WORK/rel/base.raw" | jq -r '."virtual-size"')"
[ "$out" = "$OLD" ] || fail "the base is $out bytes"
s1="$(timeout 20 "$STRATA" info --output=json ../rel/disk@s1.strata | jq .virtual_size)" \
  || fail "info of s1"
[ "$s1" = "$OLD" ] || fail "s1 is $s1 bytes, not $OLD"
timeout 20 "$STRATA" check ../rel/disk.strata >/dev/null || fail "strata check after the writes"
log "PASS"
