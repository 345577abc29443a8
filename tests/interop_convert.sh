#!/usr/bin/env bash
# Disks in and out with qemu-img's conventions: `strata convert` imports qcow2, VMDK, VDI,
# VHDX and VHD images byte-exact and sparse (neither unwritten nor explicitly zeroed ranges
# become data), exports a chain with a snapshot to qcow2 and vmdk byte-exact; refuses an
# existing target, a served disk and a missing source, and removes a half-written target;
# `strata info` on each foreign format says how to import it (exit 1); a differencing VHDX
# (what qemu-img 7.2 cannot open) fails cleanly. `strata rebase -u` fixes the links of a
# chain whose files moved apart, frozen and active layers alike, and refuses a parent that is
# not the recorded one (other UUID, other size, other format) and a served disk.
# Usage: interop_convert.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
need qemu-img qemu-io jq python3 nbdinfo
interop_init "$@"
[ "$SERVER_KIND" = strata ] || skip "tests strata's own commands"

GiB=$((1024 * MiB))
T=(timeout 60)

# expect_fail RC TEXT CMD...: CMD exits with RC (any non-zero for "nz") and says TEXT.
expect_fail() {
  local want_rc="$1" text="$2" rc=0
  shift 2
  "$@" >"$WORK/out" 2>&1 || rc=$?
  if [ "$want_rc" = nz ]; then [ "$rc" -ne 0 ] || fail "$* succeeded: $(cat "$WORK/out")"
  else [ "$rc" -eq "$want_rc" ] || fail "$* exited $rc, want $want_rc: $(cat "$WORK/out")"; fi
  grep -qF -- "$text" "$WORK/out" || fail "$*: no '$text' in: $(cat "$WORK/out")"
}

# data_ranges LAYER: the [start,length] pairs `strata map` calls data, as JSON.
data_ranges() { "$STRATA" map --json "$1" | jq -c '[.[] | select(.data) | [.start, .length]]'; }
allocated() { echo $(($(stat -c %b "$1") * 512)); }

# --- import: four formats, data in two ranges, explicit zeros in a third --------------------
want_data="[[$((1 * MiB)),$((2 * MiB))],[$((100 * MiB)),$((1 * MiB))]]"
for fmt in qcow2 vmdk vdi vhdx vpc; do
  img="$WORK/img.$fmt" dst="$WORK/imported-$fmt.strata"
  qemu-img create -q -f "$fmt" "$img" 1G
  qemu-io -f "$fmt" -c 'write -P 0x5a 1M 2M' -c 'write -z 8M 1M' -c 'write -P 0x33 100M 1M' \
    "$img" >/dev/null
  "${T[@]}" "$STRATA" convert "$img" "$dst" >"$WORK/out" 2>&1 || fail "import $fmt: $(cat "$WORK/out")"
  grep -qF "imported $img ($fmt, 1.0 GiB)" "$WORK/out" || fail "import $fmt said: $(cat "$WORK/out")"
  "$STRATA" check "$dst" >/dev/null || fail "strata check of the $fmt import"
  [ "$(data_ranges "$dst")" = "$want_data" ] ||
    fail "$fmt import: data ranges $(data_ranges "$dst"), want $want_data (zeros and holes must stay sparse)"
  [ "$(allocated "$dst")" -lt $((64 * MiB)) ] || fail "$fmt import allocates $(allocated "$dst") bytes of a 1 GiB disk"
  "${T[@]}" "$STRATA" export "$dst" "$WORK/flat.raw" >/dev/null
  "${T[@]}" qemu-img compare -q -f "$fmt" -F raw "$img" "$WORK/flat.raw" || fail "$fmt import differs from its source"
  rm -f "$WORK/flat.raw"
  # info on the foreign image: what it is and how to import it, exit 1.
  expect_fail 1 "$img is a $( [ "$fmt" = vpc ] && echo 'VHD (vpc)' || { [ "$fmt" = qcow2 ] && echo qcow2 || echo "${fmt^^}"; }) image, not a strata layer: import it with \`strata convert $img DISK.strata\`" \
    "$STRATA" info "$img"
done
log "import of qcow2, vmdk, vdi, vhdx, vpc: byte-exact and sparse"

# The import takes create's geometry options.
"${T[@]}" "$STRATA" convert --cluster-size 128K --sub-block-size 8K "$WORK/img.qcow2" "$WORK/geo.strata" >/dev/null
[ "$("$STRATA" info --json "$WORK/geo.strata" | jq -c '[.cluster_size, .sub_block_size]')" = "[131072,8192]" ] ||
  fail "--cluster-size/--sub-block-size not honoured"

# --- export: a chain with a snapshot, to qcow2 and vmdk ------------------------------------
LAYER="$WORK/disk.strata"
"${T[@]}" "$STRATA" convert "$WORK/img.qcow2" "$LAYER" >/dev/null
"$STRATA" snapshot "$LAYER" s1 >/dev/null
captive 'qemu-io -f raw -c "write -P 0x77 5M 1M" -c "write -z 1M 512K" "$uri"' >/dev/null ||
  fail "writing on top of snapshot s1"
"${T[@]}" "$STRATA" export "$LAYER" "$WORK/chain.raw" >/dev/null
for fmt in qcow2 vmdk; do
  out="$WORK/out.$fmt"
  "${T[@]}" "$STRATA" convert -O "$fmt" "$LAYER" "$out" >"$WORK/out" 2>&1 || fail "export to $fmt: $(cat "$WORK/out")"
  "${T[@]}" qemu-img compare -q -f "$fmt" -F raw "$out" "$WORK/chain.raw" || fail "$fmt export differs from the chain"
  actual="$(qemu-img info --output=json "$out" | jq '."actual-size"')"
  [ "$actual" -lt $((64 * MiB)) ] || fail "$fmt export of a 1 GiB disk takes $actual bytes: holes not kept"
done
# A snapshot exports as it was frozen (the source image, not the later writes).
"${T[@]}" "$STRATA" convert -O qcow2 "$WORK/disk@s1.strata" "$WORK/s1.qcow2" >/dev/null
"${T[@]}" qemu-img compare -q "$WORK/s1.qcow2" "$WORK/img.qcow2" || fail "snapshot s1 export differs from the image it came from"
# -o passes qemu-img's creation options.
"${T[@]}" "$STRATA" convert -O vmdk -o subformat=streamOptimized "$LAYER" "$WORK/stream.vmdk" >/dev/null
qemu-img info --output=json "$WORK/stream.vmdk" | jq -e '."format-specific".data["create-type"] == "streamOptimized"' >/dev/null ||
  fail "-o subformat=streamOptimized not passed to qemu-img"
log "export of a chain with a snapshot to qcow2 and vmdk: byte-exact and sparse"

# --- refusals -------------------------------------------------------------------------------
sum="$(md5sum <"$WORK/imported-qcow2.strata")"
expect_fail 1 "$WORK/imported-qcow2.strata exists: strata convert never overwrites" \
  "$STRATA" convert "$WORK/img.vdi" "$WORK/imported-qcow2.strata"
[ "$(md5sum <"$WORK/imported-qcow2.strata")" = "$sum" ] || fail "a refused import changed the existing file"
expect_fail 1 "$WORK/out.qcow2 exists" "$STRATA" convert -O qcow2 "$LAYER" "$WORK/out.qcow2"
expect_fail 1 "open $WORK/nope.qcow2: No such file or directory" "$STRATA" convert "$WORK/nope.qcow2" "$WORK/nope.strata"
[ ! -e "$WORK/nope.strata" ] || fail "a failed import left its target"
expect_fail 1 "is a strata layer already" "$STRATA" convert "$LAYER" "$WORK/again.strata"
expect_fail 2 "-o goes with -O" "$STRATA" convert -o compat=1.1 "$WORK/img.qcow2" "$WORK/x.strata"
start_server
expect_fail 1 "is in use by another process" "$STRATA" convert -O qcow2 "$LAYER" "$WORK/served.qcow2"
[ ! -e "$WORK/served.qcow2" ] || fail "a refused export created its target"
expect_fail 1 "is in use by another process" "$STRATA" rebase -u -b "disk@s1.strata" "$LAYER"
stop_server
# qemu-img fails halfway (a corrupt L1 entry: info opens it, reading fails): no DST is left.
cp "$WORK/img.qcow2" "$WORK/bad.qcow2"
python3 - "$WORK/bad.qcow2" <<'PY'
import struct, sys
with open(sys.argv[1], 'r+b') as f:
    f.seek(40); l1 = struct.unpack('>Q', f.read(8))[0]
    f.seek(l1); f.write(struct.pack('>Q', 0x8000000000000201))
PY
expect_fail 1 "removed the half-written $WORK/bad.strata" "${T[@]}" "$STRATA" convert "$WORK/bad.qcow2" "$WORK/bad.strata"
[ ! -e "$WORK/bad.strata" ] || fail "a failed import left $WORK/bad.strata"
# A differencing VHDX (a Hyper-V .avhdx: HasParent plus a parent locator). qemu-img 7.2
# cannot open one ("Operation not supported"): the import says so and creates nothing.
cp "$WORK/img.vhdx" "$WORK/child.avhdx"
python3 - "$WORK/child.avhdx" <<'PY'
import struct, sys, uuid
with open(sys.argv[1], 'r+b') as f:
    f.seek(0x30000); rt = f.read(65536); assert rt[:4] == b'regi'
    meta_guid = uuid.UUID('8B7CA206-4790-4B9A-B8FE-575F050F886E').bytes_le
    for i in range(struct.unpack_from('<I', rt, 8)[0]):
        e = rt[16 + 32 * i:48 + 32 * i]
        if e[:16] == meta_guid: meta = struct.unpack_from('<Q', e, 16)[0]
    f.seek(meta); mt = f.read(65536); assert mt[:8] == b'metadata'
    n = struct.unpack_from('<H', mt, 10)[0]
    params = uuid.UUID('CAA16737-FA36-4D43-B3B6-33F0AA44E76B').bytes_le
    for i in range(n):
        e = mt[32 + 32 * i:64 + 32 * i]
        if e[:16] == params:
            at = meta + struct.unpack_from('<I', e, 16)[0] + 4
            f.seek(at); flags = struct.unpack('<I', f.read(4))[0]
            f.seek(at); f.write(struct.pack('<I', flags | 2))
    locator = uuid.UUID('A8D35F2D-B30B-454D-ABF7-D3D84834AB0C').bytes_le
    f.seek(meta + 32 + 32 * n)
    f.write(locator + struct.pack('<III', struct.unpack_from('<I', mt, 48)[0], 8, 4) + b'\0' * 4)
    f.seek(meta + 10); f.write(struct.pack('<H', n + 1))
PY
expect_fail 1 "qemu-img info --output=json $WORK/child.avhdx failed" "$STRATA" convert "$WORK/child.avhdx" "$WORK/child.strata"
grep -qF "Operation not supported" "$WORK/out" || fail "qemu-img's own reason missing: $(cat "$WORK/out")"
[ ! -e "$WORK/child.strata" ] || fail "a refused import left its target"
log "refusals: existing targets, served disk, missing or strata source, half-written, differencing VHDX"

# --- rebase -u: a chain whose files moved apart ---------------------------------------------
R="$WORK/rebase"
mkdir -p "$R"
make_base "$R/base.raw"
"$STRATA" create -b base.raw -F raw "$R/top.strata" >/dev/null
LAYER="$R/top.strata"
captive 'qemu-io -f raw -c "write -P 0x44 2M 1M" "$uri"' >/dev/null || fail "writing the chain"
"$STRATA" snapshot "$LAYER" s >/dev/null
captive 'qemu-io -f raw -c "write -P 0x55 40M 1M" "$uri"' >/dev/null || fail "writing the top"
"${T[@]}" "$STRATA" export "$LAYER" "$R/before.raw" >/dev/null
# Each file in a directory of its own: both links break.
mkdir -p "$R/a" "$R/b" "$R/c"
mv "$R/base.raw" "$R/a/"; mv "$R/top@s.strata" "$R/b/"; mv "$R/top.strata" "$R/c/"
expect_fail 1 "top@s.strata" "$STRATA" info "$R/c/top.strata"
# Wrong parents are refused with what differs, and change nothing.
"$STRATA" create --size 64M "$R/other.strata" >/dev/null && "$STRATA" snapshot "$R/other.strata" o >/dev/null
expect_fail 1 "expects parent UUID" "$STRATA" rebase -u -b ../other@o.strata "$R/c/top.strata"
truncate -s 32M "$R/small.raw"
expect_fail 1 "is 33554432 bytes but was 67108864" "$STRATA" rebase -u -b ../small.raw -F raw "$R/b/top@s.strata"
expect_fail 1 "was created on a raw parent, not a strata one" "$STRATA" rebase -u -b ../a/base.raw -F strata "$R/b/top@s.strata"
expect_fail 2 "only -u is supported" "$STRATA" rebase -b ../a/base.raw "$R/b/top@s.strata"
"$STRATA" create --size 64M "$R/lone.strata" >/dev/null
expect_fail 1 "has no parent" "$STRATA" rebase -u -b a/base.raw "$R/lone.strata"
# The right parents: the active layer's link, then the frozen snapshot's.
"$STRATA" rebase -u -b ../b/top@s.strata "$R/c/top.strata" >"$WORK/out" 2>&1 || fail "rebase top: $(cat "$WORK/out")"
grep -qF "now links to its strata parent $R/b/top@s.strata" "$WORK/out" || fail "rebase said: $(cat "$WORK/out")"
# The parents now lie in a/ and b/, outside c/: trusted by name (issue 13).
TRUST=(--allow-parent-dir "$R/a" --allow-parent-dir "$R/b")
expect_fail 1 "lies outside $R/c: pass --allow-parent-dir $R/b" "$STRATA" info "$R/c/top.strata"
expect_fail 1 "base.raw" "$STRATA" info "${TRUST[@]}" "$R/c/top.strata"
"$STRATA" rebase -u -F raw -b "$R/a/base.raw" "$R/b/top@s.strata" >/dev/null || fail "rebase of the frozen snapshot"
"$STRATA" info "${TRUST[@]}" "$R/c/top.strata" >/dev/null || fail "info after both rebases"
"$STRATA" check "${TRUST[@]}" "$R/c/top.strata" >/dev/null || fail "check after both rebases"
"${T[@]}" "$STRATA" export "${TRUST[@]}" "$R/c/top.strata" "$R/after.raw" >/dev/null
cmp "$R/before.raw" "$R/after.raw" || fail "the rebased chain reads differently"
log "rebase -u: links fixed on frozen and active layers, wrong parents refused"
log "PASS"
