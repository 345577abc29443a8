#!/usr/bin/python3
"""Starts a program the way systemd starts a socket-activated Type=notify service, for
tests/systemd_activation.sh.

  sd_launcher.py --notify SOCKET --notify-log FILE --pid-file FILE
                 [--pass-listening PATH | --pass-bound PATH | --pass-file PATH |
                  --pass-tcp HOST] [--other-pid]
                 -- PROGRAM ARGS...

Like the service manager, this process stays the parent: it binds the datagram socket SOCKET
(a path, or @NAME in the abstract namespace) and sets NOTIFY_SOCKET to it; creates the
descriptor to pass (--pass-listening: a unix stream socket listening at PATH, as a .socket
unit's ListenStream=PATH; --pass-bound: one bound at PATH that does not listen; --pass-file: the
file PATH opened for reading; --pass-tcp: a TCP socket listening on HOST, an IPv4 or IPv6
address, at a port the kernel picks, as ListenStream=HOST:PORT) and keeps its own copy open, as
systemd does; forks; and the child puts the descriptor at fd 3, sets LISTEN_FDS=1,
LISTEN_FDNAMES and LISTEN_PID to its own pid (or, with --other-pid, to this process's: variables
meant for someone else) and execs PROGRAM, which
keeps that pid. The child's pid goes to the --pid-file; every datagram received is appended to
the --notify-log, followed by a line "--". SIGTERM and SIGINT are passed on to the child. Exits
with the child's status (128 + signal if it was killed) once it has exited.
"""
import argparse
import os
import signal
import socket
import sys
import threading

SD_LISTEN_FDS_START = 3


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--notify", required=True)
    p.add_argument("--notify-log", required=True)
    p.add_argument("--pid-file", required=True)
    passed = p.add_mutually_exclusive_group(required=True)
    passed.add_argument("--pass-listening")
    passed.add_argument("--pass-bound")
    passed.add_argument("--pass-file")
    passed.add_argument("--pass-tcp")
    p.add_argument("--other-pid", action="store_true")
    p.add_argument("program", nargs="+")
    return p.parse_args()


def unix_address(name):
    return "\0" + name[1:] if name.startswith("@") else name


def passed_descriptor(args):
    if args.pass_file:
        return os.open(args.pass_file, os.O_RDONLY)
    if args.pass_tcp:
        family = socket.AF_INET6 if ":" in args.pass_tcp else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind((args.pass_tcp, 0))
        sock.listen(16)
        return sock.detach()
    path = args.pass_listening or args.pass_bound
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    if args.pass_listening:
        sock.listen(16)
    return sock.detach()


def record_notifications(notify, log_path, stop):
    notify.settimeout(0.1)
    with open(log_path, "ab", buffering=0) as log:
        while True:
            try:
                message = notify.recv(4096)
            except socket.timeout:
                if stop.is_set():
                    return  # and nothing is queued any more
                continue
            log.write(message + b"\n--\n")


def exec_child(args, fd):
    os.dup2(fd, SD_LISTEN_FDS_START, inheritable=True)
    env = dict(os.environ)
    env["NOTIFY_SOCKET"] = args.notify
    env["LISTEN_FDS"] = "1"
    env["LISTEN_FDNAMES"] = "nbd"
    env["LISTEN_PID"] = str(os.getppid() if args.other_pid else os.getpid())
    os.execve(args.program[0], args.program, env)


def main():
    args = parse_args()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(unix_address(args.notify))
    open(args.notify_log, "wb").close()
    fd = passed_descriptor(args)
    child = os.fork()
    if child == 0:
        try:
            exec_child(args, fd)
        finally:
            os._exit(127)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _frame: os.kill(child, s))
    with open(args.pid_file + ".tmp", "w") as f:
        f.write("%d\n" % child)
    os.rename(args.pid_file + ".tmp", args.pid_file)
    stop = threading.Event()
    recorder = threading.Thread(target=record_notifications,
                                args=(notify, args.notify_log, stop))
    recorder.start()
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    stop.set()  # the recorder still takes what the child sent before it exited
    recorder.join()
    sys.exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


if __name__ == "__main__":
    main()
