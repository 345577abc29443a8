#!/usr/bin/python3
"""Careless and hostile NBD and control-socket clients for tests/hostile_connections.sh and
tests/hostile_memory.sh (issue 13: a careless or bad client must not take the server down, grow
it without bound, nor lock out or starve the others).

Raw sockets (no libnbd) for the attackers, so a test can do what no real client does: hold
connections in the handshake, fill the server's connection cap, flood it with connections, send
200 000 bad requests, stall in a payload. Every mode is bounded in time and exits by itself.

Connection caps (hostile_connections.sh):
  hostile_client.py squat SOCK N HOLD_S        N connections that read the greeting, send nothing
  hostile_client.py negotiate SOCK N HOLD_S    N connections through the handshake, then idle
  hostile_client.py flood SOCK SECONDS         connect and close as fast as possible; prints how
                                               many the server closed before its greeting
  hostile_client.py bad-reads SOCK N           N out-of-range READs on one connection; prints how
                                               many got an error reply
  hostile_client.py idle-control SOCK N HOLD_S N control connections that send nothing
These holding modes print "ready" once their connections are in, then "closed K" when the hold
ends: K of the N connections had been closed by the server meanwhile.

Memory (hostile_memory.sh):
  hostile_client.py writes SOCK N HOLD_S
      N connections each send a 32 MiB WRITE header and its payload but the last byte (as much
      as the server takes until it takes nothing for a second), then stall for HOLD_S.
  hostile_client.py reads SOCK N DEPTH HOLD_S
      N connections each pipeline DEPTH 32 MiB READs and never read a reply, then hold.
  hostile_client.py idle SOCK N HOLD_S
      N connections negotiate an export, then sit idle.
  hostile_client.py handshake SOCK MAX_S
      One connection that never answers the greeting: prints how many seconds passed until
      the server closed it (fails after MAX_S).
  hostile_client.py stall SOCK MAX_S
      One connection sends a 1 MiB WRITE with 4 KiB of its payload, then stops: prints how
      many seconds passed until the server closed it.
  hostile_client.py budget-wait SOCK URI STRATA DISK
      Against a server with --max-buffer-memory 64M: two connections stall in 32 MiB WRITE
      payloads (the pool is used up), two more send a 32 MiB WRITE header and wait for budget
      (`strata stats` shows them waiting_for_budget); the first waiter disconnects, then one
      stalled writer does. The other waiter must get its WRITE through, then a libnbd client
      an 8 MiB write and read each within 1 s; once all are gone, `stats` must show no
      connection and pool_used_bytes 0. Prints what it saw, one line a step.
  hostile_client.py good URI TAG SECONDS LOG
      libnbd: for SECONDS, 128 KiB writes of data naming TAG and their offset in
      [40 MiB, 64 MiB), each read back at once; appends "TAG OFFSET" per acknowledged write to
      LOG and prints the slowest operation in ms and the count.
  hostile_client.py verify URI LOG
      Every write LOG records reads back (the last one per offset wins).
These attackers print "ready" once their connections are set up, then hold until killed or
HOLD_S passes.

Exit 1 with the reason on stderr when something does not hold.
"""
import select
import socket
import struct
import sys
import threading
import time

MiB = 1 << 20
MAX_PAYLOAD = 32 * MiB
NBD_FLAG_C_FIXED_NEWSTYLE = 1
NBD_FLAG_C_NO_ZEROES = 2
IHAVEOPT = 0x49484156454F5054
OPTION_REPLY_MAGIC = 0x3E889045565A9
NBD_OPT_GO = 7
NBD_REP_ACK = 1
NBD_REP_INFO = 3
NBD_INFO_EXPORT = 0
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
NBD_CMD_READ, NBD_CMD_WRITE = 0, 1
GREETING_SIZE = 18
GOOD_BASE, GOOD_END, GOOD_LEN = 40 * MiB, 64 * MiB, 128 << 10


def die(msg):
    print(f"hostile_client.py: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def connect(path, timeout=30.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def recv_exactly(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise EOFError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def negotiate(path):
    """A connection in transmission on the default export; returns (socket, export size)."""
    s = connect(path)
    greeting = recv_exactly(s, GREETING_SIZE)
    if greeting[:16] != b"NBDMAGICIHAVEOPT":
        die(f"bad greeting {greeting!r}")
    s.sendall(struct.pack(">I", NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES))
    data = struct.pack(">IH", 0, 0)  # export "" and no info requests
    s.sendall(struct.pack(">QII", IHAVEOPT, NBD_OPT_GO, len(data)) + data)
    size = None
    while True:
        magic, _opt, rtype, length = struct.unpack(">QIII", recv_exactly(s, 20))
        if magic != OPTION_REPLY_MAGIC:
            die(f"bad option reply magic {magic:#x}")
        payload = recv_exactly(s, length)
        if rtype == NBD_REP_INFO and struct.unpack_from(">H", payload)[0] == NBD_INFO_EXPORT:
            size = struct.unpack_from(">Q", payload, 2)[0]
        elif rtype == NBD_REP_ACK:
            if size is None:
                die("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT")
            return s, size
        elif rtype & 0x80000000:
            die(f"NBD_OPT_GO refused: reply type {rtype:#x}")


def negotiate_all(path, n):
    return [negotiate(path)[0] for _ in range(n)]


def header(cmd, handle, offset, length):
    return struct.pack(">IHHQQI", REQUEST_MAGIC, 0, cmd, handle, offset, length)


def closed_by_server(s):
    """Whether the server has closed `s` (reads what is pending without blocking)."""
    s.setblocking(False)
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def hold(hold_s):
    print("ready", flush=True)
    time.sleep(hold_s)


def hold_and_count_closed(conns, hold_s):
    hold(hold_s)
    print(f"closed {sum(closed_by_server(s) for s in conns)}", flush=True)


# --- Connection caps -----------------------------------------------------------------------

def squat(path, n, hold_s):
    conns = []
    for _ in range(n):
        s = connect(path)
        recv_exactly(s, GREETING_SIZE)
        conns.append(s)
    hold_and_count_closed(conns, hold_s)


def flood(path, seconds):
    attempts = refused = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        attempts += 1
        try:
            s = connect(path, timeout=2.0)
            # Over the cap the server closes at once, before any greeting.
            if s.recv(GREETING_SIZE) == b"":
                refused += 1
            s.close()
        except OSError:
            refused += 1
        time.sleep(0.002)
    print(f"attempts {attempts} refused {refused}", flush=True)


def bad_reads(path, n):
    s, size = negotiate(path)
    s.settimeout(60)

    def send_all():
        batch = bytearray()
        for handle in range(n):
            batch += header(NBD_CMD_READ, handle, size + 4096, 4096)
            if len(batch) >= 1 << 16:
                s.sendall(batch)
                batch.clear()
        s.sendall(batch)

    sender = threading.Thread(target=send_all)
    sender.start()
    errors = 0
    reply = struct.Struct(">IIQ")
    buf = b""
    got = 0
    while got < n:
        chunk = s.recv(1 << 16)
        if not chunk:
            break
        buf += chunk
        whole = len(buf) // reply.size * reply.size
        for off in range(0, whole, reply.size):
            magic, error, _handle = reply.unpack_from(buf, off)
            if magic != SIMPLE_REPLY_MAGIC:
                die(f"bad reply magic {magic:#x}")
            errors += error != 0
            got += 1
        buf = buf[whole:]
    sender.join()
    print(f"replies {got} errors {errors}", flush=True)


# --- Memory --------------------------------------------------------------------------------

def writes(path, n, hold_s):
    conns = negotiate_all(path, n)
    pending = {}
    chunk = b"\xa5" * MiB
    for i, s in enumerate(conns):
        s.setblocking(False)
        pending[s] = [header(NBD_CMD_WRITE, i, 0, MAX_PAYLOAD), MAX_PAYLOAD - 1]
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
    conns = negotiate_all(path, n)
    for s in conns:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"".join(header(NBD_CMD_READ, h, 0, MAX_PAYLOAD) for h in range(depth)))
    hold(hold_s)


def idle(path, n, hold_s):
    conns = negotiate_all(path, n)
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
    seconds_until_closed(connect(path), max_s)


def stall(path, max_s):
    s, _size = negotiate(path)
    s.sendall(header(NBD_CMD_WRITE, 1, 0, MiB) + b"\x5a" * 4096)
    seconds_until_closed(s, max_s)


def stall_writes(path, n):
    """n connections, each in a 32 MiB WRITE payload that lacks its last byte."""
    conns = negotiate_all(path, n)
    for i, s in enumerate(conns):
        s.settimeout(30)
        s.sendall(header(NBD_CMD_WRITE, i, 0, MAX_PAYLOAD) + b"\xa5" * (MAX_PAYLOAD - 1))
    return conns


def budget_wait(path, uri, strata, disk):
    import json
    import subprocess
    import nbd

    def stats():
        out = subprocess.run([strata, "stats", "--json", disk], check=True, timeout=30,
                             capture_output=True, text=True).stdout
        return json.loads(out)

    def until(what, pred, seconds=10):
        end = time.monotonic() + seconds
        while True:
            r = stats()
            if pred(r):
                return r
            if time.monotonic() > end:
                die(f"{what} not seen within {seconds} s: {json.dumps(r)}")
            time.sleep(0.1)

    def waiting(r):
        return sum(c.get("waiting_for_budget", False) for c in r["connections"])

    stalled = stall_writes(path, 2)
    pool = stats()["buffer_budget"]["pool_bytes"]
    until("the pool used up", lambda r: r["buffer_budget"]["pool_used_bytes"] > pool - MiB)
    gone, _ = negotiate(path)
    gone.sendall(header(NBD_CMD_WRITE, 10, 0, MAX_PAYLOAD))
    until("one connection waiting for budget", lambda r: waiting(r) == 1)
    live, _ = negotiate(path)
    live.settimeout(30)
    live.sendall(header(NBD_CMD_WRITE, 11, MAX_PAYLOAD, MAX_PAYLOAD))
    r = until("two connections waiting for budget", lambda r: waiting(r) == 2)
    print(f"waiting {waiting(r)} pool_used {r['buffer_budget']['pool_used_bytes']}", flush=True)
    sender = threading.Thread(target=live.sendall, args=(b"\x5a" * MAX_PAYLOAD,))
    sender.start()
    gone.close()
    t0 = time.monotonic()
    stalled.pop().close()
    try:
        reply = recv_exactly(live, 16)
    except socket.timeout:
        die("the waiting WRITE was not served within 30 s of a stalled writer leaving")
    magic, error, handle = struct.unpack(">IIQ", reply)
    if magic != SIMPLE_REPLY_MAGIC or error != 0 or handle != 11:
        die(f"the waiting WRITE got magic {magic:#x} error {error} handle {handle}")
    sender.join()
    print(f"waiter served {time.monotonic() - t0:.2f} s after a stalled writer left", flush=True)
    h = nbd.NBD()
    h.connect_uri(uri)
    data = b"\x3c" * (8 * MiB)
    t0 = time.monotonic()
    h.pwrite(data, 0)
    t1 = time.monotonic()
    if h.pread(len(data), 0) != data:
        die("the good client's 8 MiB read back differs")
    t2 = time.monotonic()
    print(f"good client: 8 MiB write {(t1 - t0) * 1000:.0f} ms, read {(t2 - t1) * 1000:.0f} ms",
          flush=True)
    if max(t1 - t0, t2 - t1) >= 1:
        die("a good-client request took 1 s or more")
    h.shutdown()
    for s in stalled + [live]:
        s.close()
    r = until("every connection closed and the pool back to 0",
              lambda r: r["connections_open"] == 0 and r["buffer_budget"]["pool_used_bytes"] == 0)
    print(f"closed: connections_open {r['connections_open']} "
          f"pool_used {r['buffer_budget']['pool_used_bytes']}", flush=True)


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


MODES = {
    "squat": lambda a: squat(a[0], int(a[1]), float(a[2])),
    "negotiate": lambda a: hold_and_count_closed(negotiate_all(a[0], int(a[1])), float(a[2])),
    "flood": lambda a: flood(a[0], float(a[1])),
    "bad-reads": lambda a: bad_reads(a[0], int(a[1])),
    "idle-control": lambda a: hold_and_count_closed([connect(a[0]) for _ in range(int(a[1]))],
                                                    float(a[2])),
    "writes": lambda a: writes(a[0], int(a[1]), float(a[2])),
    "reads": lambda a: reads(a[0], int(a[1]), int(a[2]), float(a[3])),
    "idle": lambda a: idle(a[0], int(a[1]), float(a[2])),
    "handshake": lambda a: handshake(a[0], float(a[1])),
    "stall": lambda a: stall(a[0], float(a[1])),
    "budget-wait": lambda a: budget_wait(a[0], a[1], a[2], a[3]),
    "good": lambda a: good(a[0], a[1], float(a[2]), a[3]),
    "verify": lambda a: verify(a[0], a[1]),
}


def main():
    mode = sys.argv[1]
    if mode not in MODES:
        die(f"unknown mode {mode}")
    MODES[mode](sys.argv[2:])


if __name__ == "__main__":
    main()
