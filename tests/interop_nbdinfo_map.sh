#!/usr/bin/env bash
# nbdinfo (libnbd's probe tool, what scripts and virt-v2v use): the export's flags, the
# contexts listed, and --map / --map=strata:layer over a three-level chain (raw base, frozen
# snapshot, active layer), checked extent by extent. A wrong map makes sparse copies lose data
# (a data range called zero) or makes incremental backups miss changes (a wrong depth).
# Usage: interop_nbdinfo_map.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
need nbdinfo qemu-io jq
interop_init "$@"
[ "$SERVER_KIND" != nbdkit ] || skip "nbdkit serves no layers"

case "$SERVER_KIND" in
  strata) LAYER_CTX="strata:layer" ;;
  qemu-nbd) LAYER_CTX="qemu:allocation-depth" ;;
esac

# Field of the extent covering byte OFF in a --map --json listing ($1 = json, $2 = off).
type_at() {
  jq -e --argjson o "$2" '[.[] | select(.offset <= $o and $o < .offset + .length)][0].type' \
    <<<"$1" || fail "no extent covers offset $2: $1"
}
# Every extent of the listing covering [OFF, OFF+LEN) has type TYPE.
expect_type() {  # json off len want what
  local json="$1" off="$2" len="$3" want="$4" what="$5"
  local got
  got="$(jq -c --argjson o "$off" --argjson l "$len" \
    '[.[] | select(.offset < $o + $l and .offset + .length > $o) | .type] | unique' <<<"$json")"
  [ "$got" = "[$want]" ] || fail "$what: types $got over [$off, +$len), want [$want]"
}
# The listing covers the disk exactly once, in order, without gaps.
expect_covers_disk() {
  jq -e --argjson size "$DISK_SIZE" '
    (reduce .[] as $e ({pos: 0, ok: true};
       {pos: ($e.offset + $e.length), ok: (.ok and $e.offset == .pos and $e.length > 0)}))
    | .ok and .pos == $size' <<<"$1" >/dev/null || fail "map does not tile the disk: $1"
}
qio() { timeout 60 qemu-io -f raw "$@" "$URI" >/dev/null || fail "qemu-io $*"; }

make_base "$BASE"
make_chain
start_server

# Export-level facts.
info="$(timeout 30 nbdinfo --json "$URI")"
jq -e '.exports[0]."export-size" == '"$DISK_SIZE" <<<"$info" >/dev/null || fail "size: $info"
jq -e '.exports[0].can_multi_conn == true and .exports[0].can_trim == true and
       .exports[0].can_zero == true and .exports[0].can_flush == true and
       .exports[0].is_read_only == false' <<<"$info" >/dev/null || fail "flags: $info"
jq -e --arg c "$LAYER_CTX" '.exports[0].contexts | index("base:allocation") != null and
       index($c) != null' <<<"$info" >/dev/null || fail "contexts: $info"
# nbdinfo --list shows the (default) export.
timeout 30 nbdinfo --list --json "$URI" | jq -e '.exports | length >= 1' >/dev/null \
  || fail "nbdinfo --list shows no export"

# Generation 1 (will be frozen as snapshot s1): data at 1M, written then trimmed at 5M.
qio -c 'write -P 0xa1 1M 256k' -c 'write -P 0xa2 5M 256k' -c flush
stop_server
snapshot s1
start_server
# Generation 2 (active): data at 3M, zeroes over base data at 2M, trim of s1's data at 5M.
qio -c 'write -P 0xb1 3M 256k' -c 'write -z 2M 256k' -c 'discard 5M 256k'

map="$(timeout 30 nbdinfo --map --json "$URI")"
expect_covers_disk "$map"
expect_type "$map" $((1 * MiB)) $((256 * 1024)) 0 "data written before the snapshot"
expect_type "$map" $((3 * MiB)) $((256 * 1024)) 0 "data written after the snapshot"
expect_type "$map" $((8 * MiB)) $((8 * MiB)) 0 "base-only data"
for off in $((2 * MiB)) $((5 * MiB)); do
  t="$(type_at "$map" "$off")"
  (( t & 2 )) || fail "zeroed/trimmed range at $off has type $t (no ZERO bit): $map"
done
# Base:allocation must never call a range zero that holds data: read every ZERO extent back.
while read -r off len; do
  timeout 60 qemu-io -f raw -c "read -P 0 $off $len" "$URI" >/dev/null \
    || fail "extent at $off+$len says zero but reads non-zero"
done < <(jq -r '.[] | select((.type % 4) >= 2) | "\(.offset) \(.length)"' <<<"$map")

# The layer context: who answers each range.
lmap="$(timeout 30 nbdinfo --map="$LAYER_CTX" --json "$URI")"
expect_covers_disk "$lmap"
expect_type "$lmap" $((3 * MiB)) $((256 * 1024)) 1 "active layer data"
expect_type "$lmap" $((2 * MiB)) $((256 * 1024)) 1 "active layer zeroes"
expect_type "$lmap" $((5 * MiB)) $((256 * 1024)) 1 "active layer trim over s1 data"
expect_type "$lmap" $((1 * MiB)) $((256 * 1024)) 2 "snapshot s1 data"
expect_type "$lmap" $((8 * MiB)) $((8 * MiB)) 3 "raw base data"
# The text form agrees (what a user reads): the line at 3M says depth 1 in its type column.
timeout 30 nbdinfo --map="$LAYER_CTX" "$URI" | awk -v o=$((3 * MiB)) \
  '$1 <= o && o < $1 + $2 { found = 1; if ($3 != 1) exit 1 } END { exit !found }' \
  || fail "text --map=$LAYER_CTX disagrees at 3M"
stop_server

# An empty disk without a base: all hole+zero, depth 0; one write shows up as depth 1 data.
rm -f "$LAYER" "$WORK"/disk@*
make_chain --no-base
start_server
map="$(timeout 30 nbdinfo --map --json "$URI")"
expect_type "$map" 0 "$DISK_SIZE" 3 "empty disk (hole,zero)"
expect_type "$(timeout 30 nbdinfo --map="$LAYER_CTX" --json "$URI")" 0 "$DISK_SIZE" 0 "empty disk depth"
qio -c 'write -P 0x33 4M 64k'
map="$(timeout 30 nbdinfo --map --json "$URI")"
expect_type "$map" $((4 * MiB)) 65536 0 "written range on empty disk"
expect_type "$map" 0 $((4 * MiB)) 3 "untouched range on empty disk"
expect_type "$(timeout 30 nbdinfo --map="$LAYER_CTX" --json "$URI")" $((4 * MiB)) 65536 1 \
  "written range depth on empty disk"
stop_server
check_layer
log "PASS"
