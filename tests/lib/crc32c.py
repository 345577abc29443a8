"""CRC32C (Castagnoli), bit by bit, as blockstore/crc32c.cc computes it: for the test tools that
write strata's on-disk formats themselves (tests/lib/relink_layer.py, tests/fuzz/make_corpus.sh)."""


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF
