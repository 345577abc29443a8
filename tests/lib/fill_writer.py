#!/usr/bin/python3
"""Writes or verifies seeded 1 MiB blocks through NBD (python3-libnbd), for tests/full_volume.sh.

  fill_writer.py write URI START_MIB COUNT SEED
      Writes COUNT blocks of 1 MiB from START_MIB MiB on, one at a time, each block's bytes a
      function of (SEED, its MiB), printing "acked N" after each acknowledged write. On the
      first failed write it prints "error MIB ERRNO SECONDS" (how long the write took) and
      exits 3; exits 0 once all are acknowledged and a FLUSH succeeded.
  fill_writer.py verify URI START_MIB COUNT SEED
      Exits 0 when every block reads back as written; else 1, naming the first bad block.
"""
import sys
import time

import nbd

MiB = 1 << 20


def block(seed, mib):
    head = f"seed {seed} MiB {mib} ".encode()
    return (head * (MiB // len(head) + 1))[:MiB]


def main():
    mode, uri, start, count, seed = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
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
            h.pwrite(block(seed, mib), mib * MiB)
        except nbd.Error as e:
            print(f"error {mib} {e.errnum} {time.monotonic() - began:.1f}", flush=True)
            return 3
        print(f"acked {mib - start + 1}", flush=True)
    if mode == "write":
        h.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
