#!/usr/bin/python3
"""Hostile and well-behaved NBD clients for tests/hostile_memory.sh (issue 13: a careless or
bad client must not grow the server without bound, nor starve the others).

  hostile_memory_client.py writes SOCK N HOLD_S
      N connections each send a 32 MiB WRITE header and its payload but the last byte (as much
      as the server takes until it takes nothing for a second), then stall for HOLD_S.
  hostile_memory_client.py reads SOCK N DEPTH HOLD_S
      N connections each pipeline DEPTH 32 MiB READs and never read a reply, then hold.
  hostile_memory_client.py idle SOCK N HOLD_S
      N connections negotiate an export, then sit idle.
  hostile_memory_client.py handshake SOCK MAX_S
      One connection that never answers the greeting: prints how many seconds passed until
      the server closed it (fails after MAX_S).
  hostile_memory_client.py stall SOCK MAX_S
      One connection sends a 1 MiB WRITE with 4 KiB of its payload, then stops: prints how
      many seconds passed until the server closed it.
  hostile_memory_client.py good URI TAG SECONDS LOG
      libnbd: for SECONDS, 128 KiB writes of data naming TAG and their offset in
      [40 MiB, 64 MiB), each read back at once; appends "TAG OFFSET" per acknowledged write to
      LOG and prints the slowest operation in ms and the count.
  hostile_memory_client.py verify URI LOG
      Every write LOG records reads back (the last one per offset wins).
The attackers print "ready" once their connections are set up, then hold until killed or
HOLD_S passes. Exit 1 with the reason on stderr when something does not hold.
"""
import select
import socket
import struct
import sys
import time

MiB = 1 << 20
MAX_PAYLOAD = 32 * MiB
REQUEST_MAGIC = 0x25609513
OPT_MAGIC = 0x49484156454F5054  # "IHAVEOPT"
REPLY_MAGIC = 0x3E889045565A9
OPT_GO = 7
REP_ACK = 1
CMD_READ, CMD_WRITE = 0, 1
GOOD_BASE, GOOD_END, GOOD_LEN = 40 * MiB, 64 * MiB, 128 << 10


def die(msg):
    print(f"hostile_memory_client.py: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError("server closed the connection")
        out += chunk
    return out


def negotiate(path):
    """A blocking connection in the transmission phase of the default export."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(path)
    greeting = recv_exact(s, 18)
    if greeting[:8] != b"NBDMAGIC":
        die(f"bad greeting {greeting!r}")
    s.sendall(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
    data = struct.pack(">I", 0) + struct.pack(">H", 0)  # export "" and no info requests
    s.sendall(struct.pack(">QII", OPT_MAGIC, OPT_GO, len(data)) + data)
    while True:
        magic, _opt, rtype, length = struct.unpack(">QIII", recv_exact(s, 20))
        if magic != REPLY_MAGIC:
            die(f"bad option reply magic {magic:#x}")
        recv_exact(s, length)
        if rtype == REP_ACK:
            return s
        if rtype & 0x80000000:
            die(f"NBD_OPT_GO refused: reply type {rtype:#x}")


def header(cmd, handle, offset, length):
    return struct.pack(">IHHQQI", REQUEST_MAGIC, 0, cmd, handle, offset, length)


def hold(seconds):
    print("ready", flush=True)
    time.sleep(seconds)


def connect_all(path, n):
    conns = []
    for _ in range(n):
        conns.append(negotiate(path))
    return conns


def writes(path, n, hold_s):
    conns = connect_all(path, n)
    pending = {}
    chunk = b"\xa5" * MiB
    for i, s in enumerate(conns):
        s.setblocking(False)
        pending[s] = [header(CMD_WRITE, i, 0, MAX_PAYLOAD), MAX_PAYLOAD - 1]
    deadline = time.monotonic() + 60
    progress = time.monotonic()
    while pending and time.monotonic() < min(deadline, progress + 1):
        _, ready, _ = select.select([], list(pending), [], 0.2)
        for s in ready:
            head, left = pending[s]
            data = head if head else chunk[:min(left, len(chunk))]
            try:
                sent = s.send(data)
            except BlockingIOError:
                continue
            progress = time.monotonic()
            if head:
                pending[s][0] = head[sent:]
            else:
                pending[s][1] -= sent
                if pending[s][1] == 0:
                    del pending[s]
    hold(hold_s)


def reads(path, n, depth, hold_s):
    conns = connect_all(path, n)
    for s in conns:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"".join(header(CMD_READ, h, 0, MAX_PAYLOAD) for h in range(depth)))
    hold(hold_s)


def idle(path, n, hold_s):
    conns = connect_all(path, n)
    hold(hold_s)
    del conns


def seconds_until_closed(s, max_s):
    start = time.monotonic()
    s.settimeout(max_s)
    try:
        while s.recv(65536):
            pass
    except socket.timeout:
        die(f"the server still had the connection open after {max_s} s")
    except ConnectionResetError:
        pass
    print(f"{time.monotonic() - start:.1f}", flush=True)


def handshake(path, max_s):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    seconds_until_closed(s, max_s)


def stall(path, max_s):
    s = negotiate(path)
    s.sendall(header(CMD_WRITE, 1, 0, MiB) + b"\x5a" * 4096)
    seconds_until_closed(s, max_s)


def good_block(tag, offset):
    line = f"{tag} {offset} ".encode()
    return (line * (GOOD_LEN // len(line) + 1))[:GOOD_LEN]


def good(uri, tag, seconds, log):
    import nbd
    h = nbd.NBD()
    h.connect_uri(uri)
    slowest, count = 0.0, 0
    offsets = range(GOOD_BASE, GOOD_END, GOOD_LEN)
    end = time.monotonic() + seconds
    with open(log, "a") as out:
        while time.monotonic() < end:
            offset = offsets[count % len(offsets)]
            data = good_block(tag, offset)
            t0 = time.monotonic()
            h.pwrite(data, offset)
            t1 = time.monotonic()
            out.write(f"{tag} {offset}\n")
            out.flush()
            back = h.pread(GOOD_LEN, offset)
            t2 = time.monotonic()
            if back != data:
                die(f"{tag}: read back of {offset} differs from what was written")
            slowest = max(slowest, t1 - t0, t2 - t1)
            count += 1
    h.shutdown()
    print(f"{slowest * 1000:.0f} {count}", flush=True)


def verify(uri, log):
    import nbd
    last = {}
    with open(log) as f:
        for line in f:
            tag, offset = line.split()
            last[int(offset)] = tag
    h = nbd.NBD()
    h.connect_uri(uri)
    for offset, tag in sorted(last.items()):
        if h.pread(GOOD_LEN, offset) != good_block(tag, offset):
            die(f"acknowledged write {tag} at {offset} is not on the disk")
    h.shutdown()
    print(f"{len(last)} blocks verified", flush=True)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "writes":
        writes(args[0], int(args[1]), float(args[2]))
    elif cmd == "reads":
        reads(args[0], int(args[1]), int(args[2]), float(args[3]))
    elif cmd == "idle":
        idle(args[0], int(args[1]), float(args[2]))
    elif cmd == "handshake":
        handshake(args[0], float(args[1]))
    elif cmd == "stall":
        stall(args[0], float(args[1]))
    elif cmd == "good":
        good(args[0], args[1], float(args[2]), args[3])
    elif cmd == "verify":
        verify(args[0], args[1])
    else:
        die(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
