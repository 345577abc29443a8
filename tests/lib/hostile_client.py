"""Careless and hostile NBD and control-socket clients for tests/hostile_connections.sh.

Raw sockets only (no libnbd), so a test can do what no real client does: hold connections in
the handshake, fill the server's connection cap, flood it with connections, send 200 000 bad
requests. Every mode is bounded in time and exits by itself.

  hostile_client.py squat SOCK N HOLD_S        N connections that read the greeting, send nothing
  hostile_client.py negotiate SOCK N HOLD_S    N connections through the handshake, then idle
  hostile_client.py flood SOCK SECONDS         connect and close as fast as possible; prints how
                                               many the server closed before its greeting
  hostile_client.py bad-reads SOCK N           N out-of-range READs on one connection; prints how
                                               many got an error reply
  hostile_client.py idle-control SOCK N HOLD_S N control connections that send nothing

The holding modes print "ready" once their connections are in, then "closed K" when the hold
ends: K of the N connections had been closed by the server meanwhile.
"""
import socket
import struct
import sys
import threading
import time

NBD_FLAG_C_FIXED_NEWSTYLE = 1
NBD_FLAG_C_NO_ZEROES = 2
IHAVEOPT = 0x49484156454F5054
NBD_OPT_EXPORT_NAME = 1
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
NBD_CMD_READ = 0
GREETING_SIZE = 18


def connect(path, timeout=10.0):
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
    assert greeting[:16] == b"NBDMAGICIHAVEOPT", greeting
    s.sendall(struct.pack(">I", NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES))
    s.sendall(struct.pack(">QII", IHAVEOPT, NBD_OPT_EXPORT_NAME, 0))
    size, _flags = struct.unpack(">QH", recv_exactly(s, 10))
    return s, size


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


def hold(conns, hold_s):
    print("ready", flush=True)
    time.sleep(hold_s)
    print(f"closed {sum(closed_by_server(s) for s in conns)}", flush=True)


def squat(path, n, hold_s):
    conns = []
    for _ in range(n):
        s = connect(path)
        recv_exactly(s, GREETING_SIZE)
        conns.append(s)
    hold(conns, hold_s)


def negotiate_many(path, n, hold_s):
    hold([negotiate(path)[0] for _ in range(n)], hold_s)


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
    request = struct.Struct(">IHHQQI")

    def send_all():
        batch = bytearray()
        for handle in range(n):
            batch += request.pack(REQUEST_MAGIC, 0, NBD_CMD_READ, handle, size + 4096, 4096)
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
            assert magic == SIMPLE_REPLY_MAGIC, hex(magic)
            errors += error != 0
            got += 1
        buf = buf[whole:]
    sender.join()
    print(f"replies {got} errors {errors}", flush=True)


def idle_control(path, n, hold_s):
    hold([connect(path) for _ in range(n)], hold_s)


def main():
    mode, path = sys.argv[1], sys.argv[2]
    args = sys.argv[3:]
    if mode == "squat":
        squat(path, int(args[0]), float(args[1]))
    elif mode == "negotiate":
        negotiate_many(path, int(args[0]), float(args[1]))
    elif mode == "flood":
        flood(path, float(args[0]))
    elif mode == "bad-reads":
        bad_reads(path, int(args[0]))
    elif mode == "idle-control":
        idle_control(path, int(args[0]), float(args[1]))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
