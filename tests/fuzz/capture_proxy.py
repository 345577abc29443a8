#!/usr/bin/python3
"""Forwards a unix socket to another and records what each client sends.

Usage: capture_proxy.py LISTEN TARGET PREFIX SECONDS
Connection n's client-to-server bytes go to PREFIX.n. Exits after SECONDS, or when killed.
"""
import os
import selectors
import socket
import sys
import time

listen_path, target, prefix, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
deadline = time.monotonic() + seconds
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(listen_path)
server.listen(8)
sel = selectors.DefaultSelector()
sel.register(server, selectors.EVENT_READ)
peers = {}  # socket -> (other socket, log file or None)
count = 0


def close(s):
    other, _ = peers.pop(s)
    sel.unregister(s)
    s.close()
    if other in peers:
        close(other)


while time.monotonic() < deadline:
    for key, _ in sel.select(timeout=0.2):
        s = key.fileobj
        if s is server:
            client, _ = server.accept()
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(target)
            log = open(f"{prefix}.{count}", "wb")
            count += 1
            peers[client] = (upstream, log)
            peers[upstream] = (client, None)
            sel.register(client, selectors.EVENT_READ)
            sel.register(upstream, selectors.EVENT_READ)
            continue
        if s not in peers:
            continue
        data = s.recv(1 << 16)
        other, log = peers[s]
        if not data:
            close(s)
            continue
        if log:
            log.write(data)
            log.flush()
        other.sendall(data)
