#!/usr/bin/python3
"""Writes or verifies seeded 1 MiB blocks through NBD (python3-libnbd), for tests/full_volume.sh.

  fill_writer.py write URI START_MIB COUNT SEED
      Writes COUNT blocks of 1 MiB from START_MIB MiB on, one at a time, each block's bytes a
      function of (SEED, its MiB), printing "acked N" after each acknowledged write. On the
      first failed write it prints "error MIB ERRNO SECONDS" (how long the write took) and
      exits 3; exits 0 once all are acknowledged and a FLUSH succeeded.
  fill_writer.py zero URI START_MIB COUNT FLAGS
      Sends COUNT WRITE_ZEROES, one at a time, each from 512 bytes into its MiB to 512 bytes
      before the MiB's end: both edges are partial sub-blocks, written as zero data, so on
      clusters not yet allocated they need space. FLAGS: "no-hole" (NBD_CMD_FLAG_NO_HOLE) or
      "trim". Prints and exits as write does.
  fill_writer.py verify URI START_MIB COUNT SEED
      Exits 0 when every block reads back as written (SEED 0: as zeros, what zero leaves); else
      1, naming the first bad block.
"""
import sys
import time

import nbd

MiB = 1 << 20


def block(seed, mib):
    if seed == 0:
        return bytes(MiB)
    head = f"seed {seed} MiB {mib} ".encode()
    return (head * (MiB // len(head) + 1))[:MiB]


def main():
    mode, uri, start, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    seed = 0 if mode == "zero" else int(sys.argv[5])
    flags = nbd.CMD_FLAG_NO_HOLE if mode == "zero" and sys.argv[5] == "no-hole" else 0
    h = nbd.NBD()
    h.connect_uri(uri)
    for mib in range(start, start + count):
        if mode == "verify":
            if h.pread(MiB, mib * MiB) != block(seed, mib):
                print(f"block at {mib} MiB differs", flush=True)
                return 1
            continue
        began = time.monotonic()
        try:
            if mode == "zero":
                h.zero(MiB - 1024, mib * MiB + 512, flags)
            else:
                h.pwrite(block(seed, mib), mib * MiB)
        except nbd.Error as e:
            print(f"error {mib} {e.errnum} {time.monotonic() - began:.1f}", flush=True)
            return 3
        print(f"acked {mib - start + 1}", flush=True)
    if mode != "verify":
        h.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
