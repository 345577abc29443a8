#!/usr/bin/env bash
# Regenerates the seed corpora in tests/fuzz/corpus/ from real messages: what nbdinfo, qemu-img
# and qemu-io send a running `strata serve` (recorded by capture_proxy.py), what the `strata`
# CLI sends its control socket, the header and journal of layer files strata wrote, and the
# merge journals of blockstore/FORMAT.md §7 (checked byte for byte by format_test.cc).
# Usage: tests/fuzz/make_corpus.sh STRATA_BINARY     (the corpora are committed; run it when
# a format or the protocol changes, then commit what changed)
set -euo pipefail
strata=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
out=$here/corpus
work=$(mktemp -d)
server=""
proxies=()
cleanup() {
  [ -z "$server" ] || kill "$server" 2>/dev/null || true
  for p in "${proxies[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"

"$strata" create --size 16M disk.strata >/dev/null
"$strata" serve --foreground --socket "$work/disk.sock" --control "$work/disk.ctl" disk.strata \
  2>serve.log &
server=$!
for _ in $(seq 100); do [ -S disk.sock ] && [ -S disk.ctl ] && break; sleep 0.1; done
/usr/bin/python3 "$here/capture_proxy.py" nbd.sock disk.sock nbd 60 &
proxies+=($!)
/usr/bin/python3 "$here/capture_proxy.py" ctl.sock disk.ctl ctl 60 &
proxies+=($!)
for _ in $(seq 100); do [ -S nbd.sock ] && [ -S ctl.sock ] && break; sleep 0.1; done
uri="nbd+unix:///?socket=$work/nbd.sock"
# Each client is one recorded connection (nbd.0, nbd.1, ...), in this order.
timeout 20 nbdinfo "$uri" >/dev/null
timeout 20 nbdinfo --list "$uri" >/dev/null
timeout 20 nbdinfo --map "$uri" >/dev/null
timeout 20 qemu-img info "$uri" >/dev/null
timeout 20 qemu-io -f raw -c 'write -P 0x5a 0 4k' -c 'read 0 64k' -c 'write -z 1M 128k' \
  -c 'discard 2M 64k' -c flush "$uri" >/dev/null
timeout 20 "$strata" snapshot --control ctl.sock s1 >/dev/null
timeout 20 "$strata" list --control ctl.sock >/dev/null
timeout 20 qemu-io -f raw -c 'write -P 0x11 4M 4k' -c flush "$uri" >/dev/null
sleep 0.5
kill "$server"
wait "$server" || true
server=""

mkdir -p "$out"/{nbd_handshake_fuzz,nbd_request_fuzz,layer_header_fuzz,layer_journal_fuzz,text_journal_fuzz,control_request_fuzz}
# Splits each NBD client stream where negotiation ends (NBD_OPT_GO or NBD_OPT_EXPORT_NAME):
# the handshake seed is a read size byte + the options, the request seed a session byte
# (structured replies + base:allocation, the read-write export) + the requests.
/usr/bin/python3 - "$out" nbd.[0-9]* <<'PY'
import struct, sys
out = sys.argv[1]
for path in sys.argv[2:]:
    data = open(path, "rb").read()
    pos = 4  # client flags
    while pos + 16 <= len(data):
        option, length = struct.unpack(">II", data[pos + 8:pos + 16])
        pos += 16 + length
        if option in (1, 7):  # EXPORT_NAME, GO
            break
    n = path.split(".")[-1]
    open(f"{out}/nbd_handshake_fuzz/client{n}", "wb").write(b"\x00" + data[:pos])
    open(f"{out}/nbd_handshake_fuzz/client{n}-in-7-byte-reads", "wb").write(b"\x06" + data[:pos])
    if pos < len(data):
        open(f"{out}/nbd_request_fuzz/client{n}", "wb").write(b"\x06" + data[pos:])
PY
for f in ctl.[0-9]*; do cp "$f" "$out/control_request_fuzz/strata-cli.${f#ctl.}"; done
# Layer files as strata left them: the active layer and the frozen snapshot (whose header
# records where its journal ends). Journal seed: the header's start and end sequences
# (8 bytes each, little-endian) and the journal's first 8 KiB (records, then zeros).
for layer in disk.strata disk@s1.strata; do
  # First byte 1: the targets keep CRCs matching what they mutate (see their comments).
  { printf '\1'; head -c 4096 "$layer"; } >"$out/layer_header_fuzz/$layer"
  {
    printf '\1'
    dd if="$layer" bs=1 skip=144 count=8 status=none   # journal_start_seq
    dd if="$layer" bs=1 skip=160 count=8 status=none   # journal_end_seq
    dd if="$layer" bs=4096 skip=16 count=2 status=none # the journal at cluster_size (64 KiB)
  } >"$out/layer_journal_fuzz/$layer"
done
# Text journals: the merge journal examples of FORMAT.md §7 (first byte 2: a merge journal
# whose CRC the target keeps matching; an example shown without its CRC line gets one), and a
# stream journal for the snapshot made above, as stream.cc writes it (3: the same, a stream).
uuid_of() { "$strata" info --output=json "$1" | jq -r ".layers[] | select(.file | endswith(\"$2\")) | .uuid"; }
/usr/bin/python3 - "$out/text_journal_fuzz" "$here/../../blockstore/FORMAT.md" \
  "$(uuid_of disk.strata disk@s1.strata)" "$(uuid_of disk.strata /disk.strata)" \
  "$here/../lib" <<'PY'
import re, sys
out, format_md, uuid, child_uuid, lib = sys.argv[1:]
sys.path.insert(0, lib)
from crc32c import crc32c
def journal(body):
    body = re.sub(r"crc=\d+\n$", "", body).encode()
    return body + b"crc=%d\n" % crc32c(body)
blocks = re.findall(r"```\n(strata-merge 2\n.*?)```", open(format_md).read(), re.S)
for n, block in enumerate(blocks, 1):
    open(f"{out}/format-md-merge-{n}", "wb").write(b"\x02" + journal(block))
stream = (f"strata-stream 1\nlayer=disk@s1.strata\nuuid={uuid}\nchild_uuid={child_uuid}\n"
          "name=s1\nrate_limit=0\n")
open(f"{out}/stream-s1", "wb").write(b"\x03" + journal(stream))
PY
echo "corpora in $out:"
for d in "$out"/*/; do echo "  $(basename "$d"): $(ls "$d" | wc -l) files, $(cat "$d"/* | wc -c) bytes"; done
