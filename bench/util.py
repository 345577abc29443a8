#!/usr/bin/python3
"""Measuring helpers of `strata bench` (bench/run.sh): each subcommand does one thing a case
needs and bash does badly. Standard library only (the bench runs on a bare Debian box).

  fio RECORDS CASE WORKLOAD CONFIG ROUND SERVER_PID OUT -- FIO_ARGS...
        runs fio (its JSON into OUT), and appends one record to RECORDS: IOPS, MB/s, p50/p99
        completion latency, server CPU µs per I/O (utime+stime of SERVER_PID from /proc, all
        threads, before and after; "-" for none), of it user space (utime), and client CPU µs
        per I/O (fio's own rusage).
  metric RECORDS CASE WORKLOAD CONFIG ROUND NAME=VALUE... [--samples FILE] [--timeline CSV]
        appends a record of figures measured otherwise (seconds, extents, pause samples).
  machine SCRATCH STRATA          the machine and every tool's version, as JSON on stdout.
  layer-offsets I N CLUSTERS      N cluster offsets (64 KiB) layer I of a chain writes.
  fill-chain URI CONTROL STRATA FIRST LAST N CLUSTERS
        through the server at URI: for layers FIRST..LAST, writes layer I's 64 KiB clusters,
        flushes, and takes a live snapshot `cI` (`strata snapshot --control`).
  qmp-snapshots QMP NODE DIR COUNT INTERVAL
        COUNT x blockdev-snapshot-sync on a qemu-storage-daemon, one every INTERVAL s; prints
        each command's wall time in ms (the guest waits for the drain inside it).
  qmp-commit QMP JOB DEVICE TOP BASE TIMEOUT
        block-commit, block-job-complete on READY, until COMPLETED; one JSON line of times.
  timeline CLAT_LOG START_MS END_MS WARM CSV
        from fio's per-I/O completion log: IOPS before / during / after a window, the worst
        latency and stall during it; IOPS per 100 ms into CSV.
"""
import json
import os
import random
import resource
import socket
import subprocess
import sys
import time

CLUSTER = 65536


def server_ticks(pid):
    """(user, system) clock ticks of PID, its threads included; None for no server ("-")."""
    if pid == "-":
        return None
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def load1():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def append(records, rec):
    rec["load1"] = load1()
    with open(records, "a") as f:
        f.write(json.dumps(rec) + "\n")


def strata_stats(control):
    """The total counters of the strata server at CONTROL (`strata stats --output=json`)."""
    r = subprocess.run([os.environ["STRATA"], "stats", "--output=json", "--control", control],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    if r.returncode != 0:
        sys.exit(f"strata stats --control {control} failed: {r.stderr.strip()}")
    return json.loads(r.stdout)["total"]


def stage_means(before, after):
    """Mean µs per request of each server stage between two `stats` totals: the server's
    latency (parse to reply queued) and its parts before_disk, disk and send."""
    out = {}
    hists = {"server_us": ("latency_us",), "before_disk_us": ("stages_us", "before_disk"),
             "disk_us": ("stages_us", "disk"), "send_us": ("stages_us", "send")}
    for name, path in hists.items():
        b, a = before, after
        for k in path:
            b, a = b.get(k, {}), a.get(k, {})
        n = a.get("count", 0) - b.get("count", 0)
        if n > 0:
            out[name] = (a["mean"] * a["count"] - b["mean"] * b["count"]) / n
    return out


def fio(argv):
    """One fio run and its record. With STATS_CONTROL set (a strata server's control socket),
    the server's stage means over the run are recorded beside fio's figures."""
    records, case, workload, config, rnd, pid, out = argv[:7]
    assert argv[7] == "--"
    cmd = ["fio", f"--output={out}", "--output-format=json", "--group_reporting"] + argv[8:]
    hz = os.sysconf("SC_CLK_TCK")
    control = os.environ.get("STATS_CONTROL")
    stats0 = strata_stats(control) if control else None
    before = server_ticks(pid)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # fio's nbd engine prints "connected to NBD server" on stdout: the JSON goes to --output.
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = server_ticks(pid)
    stats1 = strata_stats(control) if control else None
    if r.returncode != 0:
        sys.exit(f"fio failed for {config} {workload}: {r.stdout.strip()[-500:]}")
    # fio may put a warning line before the JSON document.
    text = open(out).read()
    d = json.loads(text[text.index("{"):])
    ios = iops = bw = lat_sum = 0
    p50, p99 = [], []
    for j in d["jobs"]:
        for k in ("read", "write"):
            s = j[k]
            if s["total_ios"] == 0:
                continue
            ios += s["total_ios"]
            iops += s["iops"]
            bw += s["bw_bytes"]
            lat_sum += s.get("clat_ns", {}).get("mean", 0) / 1000.0 * s["total_ios"]
            pct = s.get("clat_ns", {}).get("percentile", {})
            if "50.000000" in pct:
                p50.append(pct["50.000000"] / 1000.0)
                p99.append(pct["99.000000"] / 1000.0)
    m = {"iops": iops, "mbs": bw / 1e6, "ios": ios,
         "p50_us": max(p50) if p50 else None, "p99_us": max(p99) if p99 else None,
         "mean_us": lat_sum / ios if ios else None,
         "client_cpu_us_per_io": ((ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime)
                                  * 1e6 / ios) if ios else None}
    if before is not None and ios:
        m["server_cpu_us_per_io"] = (sum(after) - sum(before)) / hz * 1e6 / ios
        # User space is the server's own code; the rest the kernel spent on its behalf (the
        # socket, the file system, the device's driver).
        m["server_user_us_per_io"] = (after[0] - before[0]) / hz * 1e6 / ios
    if control:
        m.update(stage_means(stats0, stats1))
        if "server_us" in m and m["mean_us"] is not None:
            # What is left of the client's latency: fio and libnbd, and the socket both ways
            # (the reply's send among it: its stage ends when the server reaps the send's
            # completion, after the client may have read the reply).
            m["client_socket_us"] = m["mean_us"] - m["server_us"]
    append(records, {"case": case, "workload": workload, "config": config, "round": int(rnd),
                     "metrics": m, "cmd": " ".join(cmd)})
    cpu = m.get("server_cpu_us_per_io")
    print(f"{iops:,.0f} IOPS, {bw / 1e6:,.0f} MB/s, p50 {m['p50_us'] or 0:.0f} µs"
          + (f", server {cpu:.1f} µs/IO" if cpu is not None else ""))


def metric(argv):
    records, case, workload, config, rnd = argv[:5]
    rec = {"case": case, "workload": workload, "config": config, "round": int(rnd), "metrics": {}}
    it = iter(argv[5:])
    for a in it:
        if a == "--samples":
            rec["samples"] = [float(x) for x in open(next(it)).read().split()]
        elif a == "--timeline":
            rows = [line.split(",") for line in open(next(it)).read().splitlines()[1:]]
            rec["timeline"] = [[int(r[0]) / 1000.0, int(r[1]), r[3]] for r in rows]
        else:
            k, v = a.split("=", 1)
            try:
                rec["metrics"][k] = float(v)
            except ValueError:
                rec["metrics"][k] = v
    append(records, rec)


def first_line(cmd):
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=10)
        return r.stdout.strip().splitlines()[0] if r.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"


def machine(argv):
    scratch, strata = argv
    model = "unknown"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", scratch], stdout=subprocess.PIPE,
                        text=True).stdout.strip()
    mem = int(open("/proc/meminfo").readline().split()[1]) * 1024
    version = first_line([strata, "--version"])
    build = version.split(", ")[-2].rsplit(" build)", 1)[0] if " build)" in version else "unknown"
    tools = {
        "strata": version, "fio": first_line(["fio", "--version"]),
        "qemu-nbd": first_line(["qemu-nbd", "--version"]),
        "qemu-img": first_line(["qemu-img", "--version"]),
        "qemu-storage-daemon": first_line(["qemu-storage-daemon", "--version"]),
        "nbdkit": first_line(["nbdkit", "--version"]),
        # nbdinfo --version: "nbdinfo 1.14.2" then "libnbd 1.14.2".
        "libnbd": first_line(["sh", "-c", "nbdinfo --version | grep ^libnbd"]),
        "gnuplot": first_line(["gnuplot", "--version"]),
    }
    print(json.dumps({
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_model": model, "cpus": os.cpu_count(), "memory_bytes": mem,
        "kernel": os.uname().release, "scratch": scratch, "scratch_fs": fs,
        "load_before": open("/proc/loadavg").read().split()[:3],
        "strata_binary": strata, "strata_build_type": build, "tools": tools}, indent=1))


def layer_offsets(i, n, clusters):
    rnd = random.Random(1000 + i)
    return [c * CLUSTER for c in rnd.sample(range(clusters), min(n, clusters))]


def fill_chain(argv):
    import nbd  # python3-libnbd
    uri, control, strata, first, last, n, clusters = argv
    h = nbd.NBD()
    h.connect_uri(uri)
    for i in range(int(first), int(last) + 1):
        buf = bytes([i % 251 + 1]) * CLUSTER
        for off in layer_offsets(i, int(n), int(clusters)):
            h.pwrite(buf, off)
        h.flush()
        subprocess.run([strata, "snapshot", "--control", control, f"c{i}"], check=True,
                       stdout=subprocess.DEVNULL)
    h.shutdown()


class Qmp:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.buf, self.events = b"", []
        self.recv(time.time() + 10)  # greeting
        self.execute("qmp_capabilities")

    def recv(self, deadline):
        while b"\n" not in self.buf:
            left = deadline - time.time()
            if left <= 0:
                return None
            self.s.settimeout(left)
            try:
                chunk = self.s.recv(65536)
            except socket.timeout:
                return None
            if not chunk:
                sys.exit("qmp: connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, name, **args):
        self.s.sendall((json.dumps({"execute": name, "arguments": args}) + "\n").encode())
        while True:
            m = self.recv(time.time() + 60)
            if m is None:
                sys.exit("qmp: no reply to " + name)
            if "return" in m:
                return m["return"]
            if "error" in m:
                sys.exit("qmp: %s: %s" % (name, m["error"]))
            self.events.append(m)


def qmp_snapshots(argv):
    path, node, directory, count, interval = argv
    q = Qmp(path)
    for i in range(1, int(count) + 1):
        t0 = time.monotonic()
        q.execute("blockdev-snapshot-sync", **{
            "node-name": node, "snapshot-file": f"{directory}/qs{i}.qcow2",
            "snapshot-node-name": f"qs{i}", "format": "qcow2"})
        print("%.3f" % ((time.monotonic() - t0) * 1000), flush=True)
        node = f"qs{i}"
        time.sleep(float(interval))


def qmp_commit(argv):
    path, job, device, top, base, timeout = argv
    q = Qmp(path)
    out = {"start": time.time()}
    q.execute("block-commit", **{"job-id": job, "device": device, "top-node": top,
                                 "base-node": base})
    deadline = out["start"] + float(timeout)
    while "end" not in out:
        m = q.events.pop(0) if q.events else q.recv(deadline)
        if m is None:  # too slow: cancel, and say so
            out["state"] = "timeout"
            out["end"] = time.time()
            q.execute("block-job-cancel", device=job, force=True)
            break
        ev, data = m.get("event"), m.get("data", {})
        if data.get("device") != job:
            continue
        if ev == "BLOCK_JOB_READY":
            out["ready"] = time.time()
            q.execute("block-job-complete", device=job)
        elif ev in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"):
            ok = ev == "BLOCK_JOB_COMPLETED" and "error" not in data
            out.update(end=time.time(), offset=data.get("offset"), state="done" if ok else "failed")
    print(json.dumps(out))


def timeline(argv):
    logf, ms, me, warm, csv = argv[0], int(argv[1]), int(argv[2]), float(argv[3]), argv[4]
    t, lat = [], []
    with open(logf) as f:
        for line in f:
            a = line.split(",", 2)
            t.append(int(a[0]))
            lat.append(int(a[1]))
    t0, tend = t[0] + int(warm * 1000), t[-1]
    win = {"b": [], "d": [], "a": []}
    bins = {}
    for ti, li in zip(t, lat):
        k = (ti - t[0]) // 100
        n, mx = bins.get(k, (0, 0))
        bins[k] = (n + 1, max(mx, li))
        if ti >= t0:
            win["b" if ti < ms else "d" if ti <= me else "a"].append(li)

    def iops(w, a, b):
        return len(w) / ((b - a) / 1000) if b > a else 0

    bi, di, ai = iops(win["b"], t0, ms), iops(win["d"], ms, me), iops(win["a"], me, tend)
    # A stall can straddle the end: latency counts every write in flight during the window,
    # the gap every stretch between completions that overlaps it.
    dl = [li for ti, li in zip(t, lat) if ti >= ms and ti - li / 1e6 <= me]
    ts = sorted(t)
    gap = max((b - a for a, b in zip(ts, ts[1:]) if b >= ms and a <= me), default=me - ms)
    print(f"iops_before={bi:.0f} iops_during={di:.0f} iops_after={ai:.0f} "
          f"during_vs_before={di / bi if bi else 0:.3f} max_lat_ms={max(dl, default=0) / 1e6:.2f} "
          f"stall_ms={gap}")
    with open(csv, "w") as f:
        f.write("t_ms,iops,max_clat_ms,phase\n")
        for k in sorted(bins):
            ts_k = t[0] + k * 100
            ph = "warm" if ts_k < t0 else "before" if ts_k < ms else "during" if ts_k <= me else "after"
            f.write("%d,%d,%.2f,%s\n" % (k * 100, bins[k][0] * 10, bins[k][1] / 1e6, ph))


def main():
    cmd, argv = sys.argv[1], sys.argv[2:]
    if cmd == "layer-offsets":
        print("\n".join(str(o) for o in layer_offsets(int(argv[0]), int(argv[1]), int(argv[2]))))
        return
    {"fio": fio, "metric": metric, "machine": machine, "fill-chain": fill_chain,
     "qmp-snapshots": qmp_snapshots, "qmp-commit": qmp_commit, "timeline": timeline}[cmd](argv)


if __name__ == "__main__":
    main()
