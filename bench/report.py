#!/usr/bin/python3
"""report.py RESULTS: turns the records `strata bench` measured (RESULTS/records.jsonl, with
machine.json, params.json and commands.txt beside them) into RESULTS/results.json, report.md
and PNG charts (gnuplot; skipped, and said so, when it is not installed).

Python's standard library rather than bash + jq: medians, percentiles of the pause samples,
the ceiling formula and the charts' data all live in one readable place. The schema of
results.json is in bench/README.md ("Results"); which config is whose peer, and what each
ceiling is, is defined here once (PEERS, ceiling()).
"""
import json
import os
import shutil
import statistics
import subprocess
import sys

RES = sys.argv[1]
records = [json.loads(line) for line in open(os.path.join(RES, "records.jsonl"))]
machine = json.load(open(os.path.join(RES, "machine.json")))
params = json.load(open(os.path.join(RES, "params.json")))
commands = open(os.path.join(RES, "commands.txt")).read().splitlines()
# The first report, at the end of the run, records the load the run ended with in
# machine.json, so a report redrawn later (or from merged runs) shows that load, not today's.
if "load_after" not in machine:
    machine["load_after"] = open("/proc/loadavg").read().split()[:3]
    with open(os.path.join(RES, "machine.json"), "w") as out:
        json.dump(machine, out)
CPUS = machine["cpus"]

# Whose peer each config is, per case (the first that was measured for the workload).
PEERS = {
    "transport": {"strata-none": ["qemu-raw"], "strata-wb": ["nbdkit-file"]},
    "cow": {"strata": ["qcow2"]},
    "depth": {"strata": ["qcow2"]},
    "snapshot": {"strata": ["qemu", "qcow2"]},
    "merge": {"strata-commit": ["qemu-img-commit"], "strata": ["qemu"]},
    "fragmentation": {"strata": ["qcow2"]},
}
LOWER_IS_BETTER = {"p50_us", "p99_us", "mean_us", "server_us", "before_disk_us", "disk_us",
                   "send_us", "client_socket_us", "server_cpu_us_per_io", "server_user_us_per_io",
                   "client_cpu_us_per_io",
                   "seconds",
                   "pause_p50_ms", "pause_p99_ms", "pause_max_ms", "extents", "open_s",
                   "rss_bytes", "max_lat_ms", "stall_ms", "allocated_bytes"}


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, max(0, int(p * len(v) + 0.999999) - 1))] if v else None


# --- aggregate: one entry per (case, workload, config) ------------------------------------------
groups = {}
for r in records:
    groups.setdefault((r["case"], r["workload"], r["config"]), []).append(r)
entries = {}
for key, rs in groups.items():
    by_round = {}  # a round's fio record and its other figures (open time, RSS) are one round
    for r in sorted(rs, key=lambda r: r["round"]):
        m = by_round.setdefault(r["round"], {"round": r["round"], "load1": r["load1"]})
        m.update(r["metrics"])
        if "samples" in r:
            m.update(pause_p50_ms=pct(r["samples"], 0.5), pause_p90_ms=pct(r["samples"], 0.9),
                     pause_p99_ms=pct(r["samples"], 0.99), pause_max_ms=max(r["samples"]))
    rounds = list(by_round.values())
    e = {"case": key[0], "workload": key[1], "config": key[2], "rounds": rounds,
         "median": {}, "min": {}, "max": {}}
    for k in sorted({k for rd in rounds for k in rd} - {"round", "load1"}):
        vals = [rd[k] for rd in rounds if isinstance(rd.get(k), (int, float))]
        if vals:
            e["median"][k] = statistics.median(vals)
            e["min"][k], e["max"][k] = min(vals), max(vals)
        elif rounds[-1].get(k) is not None:
            e["median"][k] = rounds[-1][k]
    for extra in ("samples", "timeline"):
        if extra in rs[-1]:
            e[extra] = rs[-1][extra]
    if "cmd" in rs[-1]:
        e["command"] = rs[-1]["cmd"]
    entries[key] = e


def get(case, wl, config, metric="iops"):
    e = entries.get((case, wl, config))
    return e["median"].get(metric) if e else None


def ratio(a, b):
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def ceiling(e):
    """{"iops"/"mbs"/...: value, "how": text} or None: the best this config could do here."""
    c, wl, cfg = e["case"], e["workload"], e["config"]
    if c == "transport" and cfg not in ("phys", "null"):
        dev = get(c, wl, "phys")
        client = get(c, wl, "null", "client_cpu_us_per_io")
        server = get(c, wl, cfg, "server_cpu_us_per_io")
        if dev is None or client is None or server is None:
            return None
        cpu_bound = CPUS * 1e6 / (client + server)
        iops = min(dev, cpu_bound)
        per_io = ratio(get(c, wl, cfg, "mbs"), get(c, wl, cfg, "iops")) or 0
        return {"iops": iops, "mbs": iops * per_io,
                "how": f"min(device {dev:,.0f}, {CPUS} CPUs / ({client:.1f} client + {server:.1f} "
                       f"server µs) = {cpu_bound:,.0f})"}
    if c == "cow" and wl == "first":
        v = get(c, "rewrite", cfg)
        return {"iops": v, "how": "rewrite of the same blocks"} if v else None
    if c == "depth" and cfg == "strata":
        v = get(c, wl, "strata-1layer")
        return {"iops": v, "how": "strata through 1 layer, in the same rounds"} if v else None
    if c == "depth" and wl != "d1" and cfg != "strata-1layer":
        v = get(c, "d1", cfg)
        return {"iops": v, "how": "the same server, 1 layer"} if v else None
    if c == "snapshot" and wl.startswith("s") and wl != "s0":
        v = get(c, "s0", cfg)
        return {"iops": v, "how": "the same server, no snapshot"} if v else None
    if c == "merge" and wl == "offline" and cfg != "cp-sync":
        v = get(c, "offline", "cp-sync", "seconds")
        return {"seconds": v, "how": "cp + sync of the data"} if v else None
    if c == "merge" and wl.startswith("online"):
        v = get(c, wl, cfg, "iops_before")
        return {"iops_during": v, "how": "write IOPS before the deletion"} if v else None
    if c == "fragmentation" and wl == "seqread" and cfg != "phys":
        v = get(c, "seqread", "phys", "mbs")
        return {"mbs": v, "how": "fio O_DIRECT read of the raw base file"} if v else None
    return None


for e in entries.values():
    for p in PEERS.get(e["case"], {}).get(e["config"], []):
        if (e["case"], e["workload"], p) in entries:
            e["peer"] = p
            pm = entries[(e["case"], e["workload"], p)]["median"]
            e["vs_peer"] = {k: ratio(v, pm.get(k)) for k, v in e["median"].items()
                            if ratio(v, pm.get(k)) is not None}
            break
    ce = ceiling(e)
    if ce:
        e["ceiling"] = ce
        e["vs_ceiling"] = {k: ratio(e["median"].get(k), v) for k, v in ce.items() if k != "how"
                           and ratio(e["median"].get(k), v) is not None}

ORDER = ["transport", "cow", "depth", "snapshot", "merge", "fragmentation"]
cases = sorted(entries.values(), key=lambda e: (ORDER.index(e["case"]), e["workload"], e["config"]))
results = {"schema": 1, "machine": {k: v for k, v in machine.items() if k != "tools"},
           "tools": machine["tools"], "params": params, "cases": cases, "commands": commands}
json.dump(results, open(os.path.join(RES, "results.json"), "w"), indent=1)


# --- report.md ----------------------------------------------------------------------------------
def f(v, kind=""):
    if v is None:
        return "–"
    if kind == "x":
        return f"{v:.2f}×"
    if kind == "int" or (isinstance(v, float) and abs(v) >= 1000):
        return f"{v:,.0f}".replace(",", " ")
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def in_flight(workload):
    """Requests a transport workload keeps in flight: its QD, or 2 connections × QD16."""
    return 32 if workload.endswith("-2c") else int(workload.rsplit("qd", 1)[1])


def range_of(e, k):
    """'min–max' of metric K over entry E's rounds, or None."""
    return f"{f(e['min'][k])}–{f(e['max'][k])}" if e and k in e["min"] else None


def spread(e, k):
    return f" ({range_of(e, k)})" if range_of(e, k) and len(e["rounds"]) >= 2 else ""


def in_series(w):
    """Transport workload W's IOPS if the device alone and the transport alone (nbdkit null)
    took as long in series as they do alone (Little's law); None without both."""
    dev, null = get(T, w, "phys", "mean_us"), get(T, w, "null", "mean_us")
    return in_flight(w) * 1e6 / (dev + null) if dev and null else None


out = []
p = out.append
build = machine["strata_build_type"]
if build not in ("Release", "RelWithDebInfo", "MinSizeRel"):
    p(f"**WARNING: strata is a '{build}' build, without optimization: these figures do not stand "
      "for strata's.**\n")
if params["quick"]:
    p("**--quick run: tiny sizes and times, a check of the set-up, not a measurement.**\n")
p("# strata bench\n")
p(f"`{params['command']}`, {machine['date']}\n")
p("| machine | |\n|---|---|")
p(f"| CPU | {machine['cpu_model']}, {machine['cpus']} CPUs, {machine['memory_bytes'] >> 30} GiB |")
p(f"| kernel | {machine['kernel']} |")
p(f"| scratch | {machine['scratch_fs']} ({params['scratch']}) |")
p(f"| load average before / after | {' '.join(machine['load_before'])} / "
  f"{' '.join(machine['load_after'])} (fio and one server make about 2 on 2 CPUs; more means "
  "other jobs shared the CPUs) |")
p(f"| base | {params['base']}, {params['size_bytes'] >> 20} MiB |")
p(f"| timed runs | {params['runtime']} each, {params['rounds']} alternating rounds "
  "(transport), every server up at once |")
timings = os.path.join(RES, "timings.txt")
if os.path.exists(timings):
    p(f"| time per case | {', '.join(open(timings).read().split(chr(10))).strip(', ')} |")
for tool, v in machine["tools"].items():
    p(f"| {tool} | {v} |")
p("")
p("Ratios are strata / peer and strata / ceiling, from medians of the same run; (a–b) is the "
  "spread over rounds. Server CPU µs per I/O is the primary efficiency figure (utime+stime of "
  "the server from /proc, per I/O): on a shared machine IOPS swing with scheduling, CPU per I/O "
  "much less.\n")

T = "transport"
tw = ["rr4k-qd1", "rr4k-qd32", "rr4k-2c", "sr1m-qd32", "sw1m-qd32", "rw4k-qd1", "rw4k-qd32",
      "rw4k-2c", "rw64k-qd32"]
if any(k[0] == T for k in entries):
    p("## transport: the raw base through every server\n")
    p("strata-none (`--cache=none`) beside qemu-nbd raw `--cache=none --aio=io_uring`, strata-wb "
      "(the default page cache) beside nbdkit file. Ceiling = min(the device: fio io_uring "
      f"O_DIRECT on the file at the same depth, {CPUS} CPUs / (client + server CPU µs per I/O)), "
      "the client's CPU measured against nbdkit null (no storage). Random writes run after the "
      "sequential write, so on strata they are rewrites (first writes: the cow case).\n")
    p("| workload | strata | IOPS (spread) | MB/s | peer | peer IOPS | ×peer | ceiling IOPS | "
      "×ceiling | server µs/IO | peer µs/IO | ×peer | p50 µs | peer p50 | p99 µs | peer p99 |")
    p("|---" * 16 + "|")
    for w in tw:
        for s in ("strata-none", "strata-wb"):
            e = entries.get((T, w, s))
            if not e:
                continue
            m, pe = e["median"], e.get("peer", "–")
            pm = entries[(T, w, pe)]["median"] if pe != "–" else {}
            vp, vc, ce = e.get("vs_peer", {}), e.get("vs_ceiling", {}), e.get("ceiling", {})
            p(f"| {w} | {s} | {f(m.get('iops'), 'int')}{spread(e, 'iops')} | {f(m.get('mbs'))} | {pe} | "
              f"{f(pm.get('iops'), 'int')} | {f(vp.get('iops'), 'x')} | {f(ce.get('iops'), 'int')} | "
              f"{f(vc.get('iops'), 'x')} | {f(m.get('server_cpu_us_per_io'))} | "
              f"{f(pm.get('server_cpu_us_per_io'))} | {f(vp.get('server_cpu_us_per_io'), 'x')} | "
              f"{f(m.get('p50_us'))} | {f(pm.get('p50_us'))} | {f(m.get('p99_us'))} | "
              f"{f(pm.get('p99_us'))} |")
    p("")
    cfgs = [c for c in ["phys", "null", "qemu-raw", "nbdkit-file", "strata-none", "strata-wb"]
            if any(k[0] == T and k[2] == c for k in entries)]
    for title, metric in [("IOPS (1M and 64k rows: MB/s)", None),
                          ("server CPU µs per I/O", "server_cpu_us_per_io"),
                          ("of that the server's user space (its own code; the rest is the "
                           "kernel's work for it: socket, file system, device driver), µs per I/O",
                           "server_user_us_per_io"),
                          ("client (fio + libnbd) CPU µs per I/O", "client_cpu_us_per_io")]:
        p(f"Every configuration, {title}:\n")
        p("| workload | " + " | ".join(cfgs) + " |")
        p("|---" * (len(cfgs) + 1) + "|")
        for w in tw:
            cells = []
            for c in cfgs:
                mt = metric or ("mbs" if ("1m" in w or "64k" in w) else "iops")
                cells.append(f(get(T, w, c, mt), "" if metric else "int"))
            p(f"| {w} | " + " | ".join(cells) + " |")
        p("")
    stage_rows = [(w, c) for w in tw for c in ("strata-none", "strata-wb")
                  if get(T, w, c, "disk_us") is not None]
    if stage_rows:
        p("Where a strata request's time goes, mean µs per request (medians over rounds): fio's "
          "latency split by the server's own clock (`strata stats` stages_us) into parse → disk "
          "I/O started and the disk I/O, and the rest: fio and libnbd, and the socket both ways. "
          "The reply's send (queued until the server reaped its completion) overlaps the rest, "
          "as the client may read the reply before that. Beside it the device alone at the same depth (phys) and the "
          "transport alone (nbdkit null: client and socket with no storage), and what a server "
          "that added nothing would reach if the two took as long in series as they do alone: "
          "requests in flight / (device alone + null alone), an estimate (Little's law), not a "
          "bound, since the device is faster at a lower depth.\n")
        p("| workload | strata | fio mean | before disk | disk | reply send | client + socket | "
          "device alone | null alone | in series, IOPS | strata IOPS | ×in series |")
        p("|---" * 12 + "|")
        for w, c in stage_rows:
            dev, null = get(T, w, "phys", "mean_us"), get(T, w, "null", "mean_us")
            # The device alone is O_DIRECT: the page-cache configuration has no such estimate.
            series = in_series(w) if c == "strata-none" else None
            p(f"| {w} | {c} | {f(get(T, w, c, 'mean_us'))} | {f(get(T, w, c, 'before_disk_us'))} | "
              f"{f(get(T, w, c, 'disk_us'))} | {f(get(T, w, c, 'send_us'))} | "
              f"{f(get(T, w, c, 'client_socket_us'))} | {f(dev)} | {f(null)} | "
              f"{f(series, 'int')} | {f(get(T, w, c), 'int') if series else '–'} | "
              f"{f(ratio(get(T, w, c), series), 'x')} |")
        p("")
    for w in tw:
        e = entries.get((T, w, "strata-none"))
        if e and "ceiling" in e:
            p(f"- ceiling {w} (strata-none): {e['ceiling']['how']}")
    p("")
    p("![IOPS by configuration](transport-iops.png) ![MB/s by configuration](transport-mbs.png)")
    p("![latency percentiles](latency.png)\n")


def cpu_floor(w):
    """(sum, transport, device): an estimate of the server CPU per I/O that a server doing
    nothing of its own would spend on workload W with --cache=none: the transport alone (nbdkit
    null's server: receive, parse, send, no storage) plus the device path (fio's own CPU per I/O
    doing the same I/O on the file, io_uring O_DIRECT, fio's bookkeeping included)."""
    transport = get(T, w, "null", "server_cpu_us_per_io")
    device = get(T, w, "phys", "client_cpu_us_per_io")
    if transport is None or device is None:
        return None
    return transport + device, transport, device


def transport_range(w, cfg, k):
    return range_of(entries.get((T, w, cfg)), k) or "–"


def goal_why(name, w):
    """What the measurements say about why the goal NAME was missed at workload W."""
    if name == "cpu-qemu":
        fl = cpu_floor(w)
        if not fl:
            return ""
        half = 0.5 * get(T, w, "qemu-raw", "server_cpu_us_per_io")
        strata = get(T, w, "strata-none", "server_cpu_us_per_io")
        user = get(T, w, "strata-none", "server_user_us_per_io")
        return (f"{w}: transport alone {f(fl[1])} µs + device path {f(fl[2])} = {f(fl[0])} "
                f"(table below); strata {f(strata)} µs = {f(strata / fl[0], 'x')} of that, "
                f"{f(user)} of it in strata's own code (user space); 0.5× qemu-nbd is "
                f"{f(half)} µs" + (", below what the transport and the device cost"
                                   if half < fl[0] <= strata / 0.9 else ""))
    if name == "cpu-nbdkit":
        k = "server_cpu_us_per_io"
        return (f"{w}: strata-wb {transport_range(w, 'strata-wb', k)} µs over the rounds, nbdkit file "
                f"{transport_range(w, 'nbdkit-file', k)}, the transport alone (nbdkit null) "
                f"{transport_range(w, 'null', k)}")
    if name == "ceiling-none":
        series = in_series(w)
        if not series:
            return ""
        return (f"{w}: at a fixed depth the device and the transport take their time in series: "
                f"{f(series, 'int')} IOPS in series (stage table), strata "
                f"{f(ratio(get(T, w, 'strata-none'), series), 'x')} of that")
    if name == "ceiling-wb":
        return (f"{w}: the ceiling's device is O_DIRECT; strata-wb reads and writes the page "
                f"cache, which cost its server {f(get(T, w, 'strata-wb', 'server_cpu_us_per_io'))} "
                f"µs per I/O (nbdkit file {f(get(T, w, 'nbdkit-file', 'server_cpu_us_per_io'))})")
    if name == "qd1":
        return (f"p50 strata-none {transport_range(w, 'strata-none', 'p50_us')} µs over the rounds, "
                f"qemu-nbd raw {transport_range(w, 'qemu-raw', 'p50_us')}")
    if name == "seqread":
        return (f"strata-none {transport_range(w, 'strata-none', 'mbs')} MB/s over the rounds, the "
                f"device {transport_range(w, 'phys', 'mbs')}")
    return ""


def goals():
    """The efficiency goals of issue 15, each as measured in this run: the worst workload."""
    rows = []

    def worst(measure, better_low, limit):
        vals = [(measure(w), w) for w in tw if measure(w) is not None]
        if not vals:
            return None
        v, w = max(vals) if better_low else min(vals)
        return v, w, (v <= limit if better_low else v >= limit)

    checks = [
        ("cpu-qemu", "server CPU per I/O, strata-none / qemu-nbd raw, every workload", "≤ 0.5",
         True, 0.5, lambda w: ratio(get(T, w, "strata-none", "server_cpu_us_per_io"),
                                    get(T, w, "qemu-raw", "server_cpu_us_per_io"))),
        ("cpu-nbdkit", "server CPU per I/O, strata-wb / nbdkit file, every workload", "≤ 1", True,
         1.0, lambda w: ratio(get(T, w, "strata-wb", "server_cpu_us_per_io"),
                              get(T, w, "nbdkit-file", "server_cpu_us_per_io"))),
        ("ceiling-none", "IOPS / computed ceiling, strata-none, every workload", "≥ 0.9", False,
         0.9, lambda w: (entries.get((T, w, "strata-none")) or {}).get("vs_ceiling", {}).get("iops")),
        ("ceiling-wb", "IOPS / computed ceiling, strata-wb, every workload", "≥ 0.9", False, 0.9,
         lambda w: (entries.get((T, w, "strata-wb")) or {}).get("vs_ceiling", {}).get("iops")),
        ("qd1", "4k randread QD1 p50, strata-none / qemu-nbd raw", "≤ 0.6", True, 0.6,
         lambda w: ratio(get(T, w, "strata-none", "p50_us"), get(T, w, "qemu-raw", "p50_us"))
         if w == "rr4k-qd1" else None),
        ("seqread", "1M seq read, strata-none / the device", "≥ 0.85", False, 0.85,
         lambda w: ratio(get(T, w, "strata-none", "mbs"), get(T, w, "phys", "mbs"))
         if w == "sr1m-qd32" else None),
    ]
    for key, name, goal, low, limit, fn in checks:
        r = worst(fn, low, limit)
        if r:
            rows.append((name, goal, f"{r[0]:.2f} (worst: {r[1]})", "yes" if r[2] else "**no**",
                         "" if r[2] else goal_why(key, r[1])))
    d64 = entries.get(("depth", "d64", "strata"))
    if d64 and "iops" in d64.get("vs_ceiling", {}):
        v = d64["vs_ceiling"]["iops"]
        one = entries.get(("depth", "d64", "strata-1layer"))
        why = (f"64 layers {range_of(d64, 'iops')} IOPS over the rounds, 1 layer "
               f"{range_of(one, 'iops')}" if range_of(d64, "iops") and range_of(one, "iops")
               else "")
        rows.append(("4k randread QD32 through 64 layers / 1 layer, strata", "≥ 0.95",
                     f"{v:.2f}", "yes" if v >= 0.95 else "**no**", "" if v >= 0.95 else why))
    if not rows:
        return
    p("## Efficiency goals (issue 15), as measured in this run\n")
    p("| goal | target | measured | met | where a miss comes from |")
    p("|---|---|---|---|---|")
    for r in rows:
        p("| " + " | ".join(r) + " |")
    p("\nWhere a goal is missed, the row says by how much, at which workload, and what the run's "
      "own figures say of it; where the time per request goes is in the stage table under "
      "transport, and bench/README.md \"Where the time goes\" has the profile.\n")
    fl = [(w, c) for w in tw
          if (c := cpu_floor(w)) and get(T, w, "strata-none", "server_cpu_us_per_io")]
    if fl:
        p("Server CPU per I/O beside what every server pays (`--cache=none`): the transport "
          "alone (nbdkit null's server: receive, parse, send) plus the device path (fio's own CPU "
          "per I/O doing the I/O on the file, O_DIRECT). Both are other programs' figures, so "
          "the sum is an estimate, not a bound: at QD1 it counts two programs' wakeups, and "
          "strata's transport is cheaper than nbdkit null's. Where strata spends about the sum "
          "and half of qemu-nbd's CPU is below it, the ≤ 0.5 goal asks for less than the "
          "transport and the device cost.\n")
        p("| workload | transport alone | device path | sum | strata-none | ×sum | qemu-nbd raw "
          "| 0.5× qemu-nbd |")
        p("|---" * 8 + "|")
        for w, (floor, transport, device) in fl:
            s_cpu = get(T, w, "strata-none", "server_cpu_us_per_io")
            q_cpu = get(T, w, "qemu-raw", "server_cpu_us_per_io")
            p(f"| {w} | {f(transport)} | {f(device)} | {f(floor)} | {f(s_cpu)} | "
              f"{f(s_cpu / floor, 'x')} | {f(q_cpu)} | {f(q_cpu / 2 if q_cpu else None)} |")
        p("")


def simple_table(case, title, wls, cfg_metrics, note=""):
    """Rows (workload, config) of CASE with the metrics, each beside the peer's and the ratio."""
    if not any(k[0] == case for k in entries):
        return
    p(f"## {title}\n")
    if note:
        p(note + "\n")
    head = "| workload | config |"
    for label, _ in cfg_metrics:
        head += f" {label} | peer | ×peer |"
    p(head + " ceiling | ×ceiling |")
    p("|---" * (2 + 3 * len(cfg_metrics) + 2) + "|")
    for w in wls:
        for (c, ww, cfg), e in sorted(entries.items()):
            if c != case or ww != w or cfg not in PEERS[case]:
                continue
            pe = e.get("peer")
            pm = entries[(c, w, pe)]["median"] if pe else {}
            row = f"| {w} | {cfg} vs {pe or '–'} |"
            for _, k in cfg_metrics:
                row += (f" {f(e['median'].get(k))}{spread(e, k)} | {f(pm.get(k))} | "
                        f"{f(e.get('vs_peer', {}).get(k), 'x')} |")
            ce = e.get("ceiling", {})
            ck = next((k for k in ce if k != "how"), None)
            row += (f" {f(ce.get(ck))} ({ce['how']}) | {f(e.get('vs_ceiling', {}).get(ck), 'x')} |"
                    if ck else " – | – |")
            p(row)
    p("")


simple_table("cow", "cow: first writes into a fresh layer vs rewrites",
             ["first", "rewrite"],
             [("IOPS", "iops"), ("server µs/IO", "server_cpu_us_per_io"), ("p99 µs", "p99_us")],
             "4 KiB at the start of every 64 KiB cluster in shuffled order (fio iolog replay, QD32): "
             "`first` allocates every cluster, `rewrite` writes the same blocks again. strata "
             "`--cache=none` beside qemu-nbd `--cache=none` on a qcow2 overlay; the ceiling of a "
             "first write is the rewrite. qcow2 with `extended_l2=on`: "
             + ", ".join(f"{w} {f(get('cow', w, 'qcow2-l2x'), 'int')} IOPS"
                         for w in ("first", "rewrite")) + ".")
dw = sorted({k[1] for k in entries if k[0] == "depth"}, key=lambda w: int(w[1:]))
simple_table("depth", "depth: 4k random read QD32 through chains of layers", dw,
             [("IOPS", "iops"), ("open s", "open_s"), ("RSS bytes", "rss_bytes"),
              ("server µs/IO", "server_cpu_us_per_io")],
             "dN: N layers (N-1 written snapshots below an empty top) over the raw base, page "
             "cache dropped; strata (default cache) beside qemu-nbd on a qcow2 chain (writeback). "
             "open s: from the server's start until it answers NBD. "
             f"{params.get('depth_rounds', 1)} alternating rounds of strata through 1 layer "
             "(an empty layer over the same base: the ceiling), the chain and qcow2's chain; "
             "qcow2's ceiling: its d1.")
if any(k[:2] == ("snapshot", "pause") for k in entries):
    p("## snapshot: live snapshot pause under 4k random write QD32\n")
    p("strata: the server's pause_ms (no request could start); qemu-storage-daemon: the wall "
      "time of QMP blockdev-snapshot-sync, which drains the disk inside it.\n")
    p("| config | snapshots | p50 ms | p90 ms | p99 ms | max ms | p99 ×peer |")
    p("|---|---|---|---|---|---|---|")
    for cfg in ("strata", "qemu"):
        e = entries.get(("snapshot", "pause", cfg))
        if e:
            m = e["median"]
            p(f"| {cfg} | {f(m.get('count'), 'int')} | {f(m.get('pause_p50_ms'))} | "
              f"{f(m.get('pause_p90_ms'))} | {f(m.get('pause_p99_ms'))} | "
              f"{f(m.get('pause_max_ms'))} | {f(e.get('vs_peer', {}).get('pause_p99_ms'), 'x')} |")
    p("\n![snapshot pause distribution](pause.png)\n")
sw = sorted({k[1] for k in entries if k[0] == "snapshot" and k[1] != "pause"},
            key=lambda w: int(w[1:]))
simple_table("snapshot", "snapshot: 4k random write QD32 into an empty top over N snapshots", sw,
             [("IOPS", "iops"), ("server µs/IO", "server_cpu_us_per_io")],
             "sN: N snapshots below the top; strata beside qemu-nbd on a qcow2 chain (both page "
             "cache). Ceiling: the same server with no snapshot.")
simple_table("merge", "merge: offline commit, online deletion under load",
             ["offline", "online-newest", "online-older"],
             [("seconds", "seconds"), ("IOPS during", "iops_during"),
              ("during/before", "during_vs_before"), ("max latency ms", "max_lat_ms")],
             "offline: `strata commit` of the data into an empty snapshot beside `qemu-img commit` "
             "of the same shape in qcow2, each with a final sync (ceiling: cp + sync "
             f"{f(get('merge', 'offline', 'cp-sync', 'seconds'))} s); results checked untimed: "
             + ", ".join(f"{c} {'ok' if get('merge', 'offline', c, 'verified') == 1 else 'NOT verified'}"
                         for c in ("strata-commit", "qemu-img-commit")
                         if get("merge", "offline", c, "verified") is not None)
             + ". online: deleting a snapshot under 4k random write QD32 (newest: QEMU's active "
             "block-commit; older: a plain block-commit); ceiling: IOPS before the deletion.")
for (c, w, cfg), e in sorted(entries.items()):
    state = e["median"].get("state")
    if c == "merge" and w.startswith("online") and state not in (None, "done"):
        # A job that did not finish: its seconds are how long it was given, a lower bound.
        p(f"- {w} {cfg}: **{state}** after {f(e['median'].get('seconds'))} s, "
          f"{f(e['median'].get('bytes_copied'), 'int')} bytes copied: its time is a lower bound.")
if any(k[0] == "merge" and k[1].startswith("online") for k in entries):
    p("\n![I/O over time during a merge](merge.png)\n")
simple_table("fragmentation", "fragmentation: after random 4k writes", ["layout", "seqread"],
             [("host extents", "extents"), ("allocated bytes", "allocated_bytes"),
              ("MB/s", "mbs")],
             "A fresh layer over a sparse base after random 4k writes (QD32): host extents "
             "(filefrag), allocated bytes, then a cold sequential read (1M, QD4) of the disk; "
             "ceiling: the same read of the raw base by fio, O_DIRECT. A strata cluster first "
             "written by 4 KiB holds only its written sub-blocks and the rest is read from "
             "below; strata reads a slot's runs, and the base's under one request, as one span "
             "each (qcow2 copied each whole cluster at its first write: the cow case's first "
             "writes pay for it). One run per configuration: a cold read follows the host "
             "device's drift.")
goals()
p("## Commands\n")
p("Paths: $DIR is the scratch directory, $OUT the results directory.\n")
p("```")
out.extend(commands)
p("```")
open(os.path.join(RES, "report.md"), "w").write("\n".join(out) + "\n")


# --- charts -------------------------------------------------------------------------------------
def block(name, rows):
    return f"${name} << EOD\n" + "\n".join(" ".join(str(x) for x in r) for r in rows) + "\nEOD\n"


def histogram(png, title, ylabel, wls, cfgs, metric):
    rows = [[w] + [get(T, w, c, metric) or 0 for c in cfgs] for w in wls
            if any(get(T, w, c, metric) for c in cfgs)]
    cols = " , ".join(f"$d using {i + 2}:xtic(1) title '{c}'" for i, c in enumerate(cfgs))
    return (block("d", rows) + f"set output '{png}'\nset title '{title}'\nset ylabel '{ylabel}'\n"
            "set style data histograms\nset style histogram clustered gap 1\n"
            "set style fill solid border -1\nset boxwidth 0.9\nset xtics rotate by -30\n"
            "set key outside right\nset yrange [0:*]\n" f"plot {cols}\nunset xtics\nset xtics\n")


def charts():
    scripts = []
    cfgs = [c for c in ["phys", "null", "qemu-raw", "nbdkit-file", "strata-none", "strata-wb"]
            if any(k[0] == T and k[2] == c for k in entries)]
    if cfgs:
        scripts.append(histogram("transport-iops.png", "4k IOPS by configuration", "IOPS",
                                 [w for w in tw if "4k" in w], cfgs, "iops"))
        scripts.append(histogram("transport-mbs.png", "MB/s by configuration", "MB/s",
                                 ["rw64k-qd32", "sr1m-qd32", "sw1m-qd32"], cfgs, "mbs"))
        rows = [[f"{w}/{q}"] + [get(T, w, c, q + "_us") or 0 for c in cfgs if c != "phys"]
                for w in ("rr4k-qd1", "rw4k-qd1", "rr4k-qd32", "rw4k-qd32") for q in ("p50", "p99")
                if get(T, w, "strata-none", "p50_us") is not None]
        lc = [c for c in cfgs if c != "phys"]
        cols = " , ".join(f"$d using {i + 2}:xtic(1) title '{c}'" for i, c in enumerate(lc))
        scripts.append(block("d", rows) + "set output 'latency.png'\n"
                       "set title 'completion latency percentiles'\nset ylabel 'µs'\n"
                       "set style data histograms\nset style histogram clustered gap 1\n"
                       "set style fill solid border -1\nset key outside right\nset logscale y\n"
                       "set xtics rotate by -30\nset yrange [*:*]\n" f"plot {cols}\nunset logscale y\n")
    if dw:
        plots = []
        for cfg in ("strata", "qcow2"):
            rows = [[int(w[1:]), get("depth", w, cfg) or 0] for w in dw]
            scripts.append(block(f"depth_{cfg}", rows))
            plots.append(f"$depth_{cfg} using 1:2 with linespoints title '{cfg}'")
        scripts.append("set output 'depth.png'\nset title '4k random read QD32 through N layers'\n"
                       "set xlabel 'layers'\nset ylabel 'IOPS'\nset logscale x 2\nset key outside right\n"
                       "set yrange [0:*]\nset style data linespoints\n" f"plot {', '.join(plots)}\n"
                       "unset logscale x\nunset xlabel\n")
    plots = []
    for cfg in ("strata", "qemu"):
        e = entries.get(("snapshot", "pause", cfg))
        if e and e.get("samples"):
            s = sorted(e["samples"])
            scripts.append(block(f"pause_{cfg}", [[v, (i + 1) / len(s)] for i, v in enumerate(s)]))
            plots.append(f"$pause_{cfg} using 1:2 with steps title '{cfg}'")
    if plots:
        scripts.append("set output 'pause.png'\nset title 'live snapshot pause under 4k random write QD32'\n"
                       "set xlabel 'pause ms'\nset ylabel 'fraction of snapshots'\nset logscale x\n"
                       "set key outside right\nset yrange [0:1]\n" f"plot {', '.join(plots)}\n"
                       "unset logscale x\nunset xlabel\nset yrange [*:*]\n")
    plots = []
    for (c, w, cfg), e in sorted(entries.items()):
        if c == "merge" and e.get("timeline"):
            name = f"{w}-{cfg}".replace("-", "_")
            scripts.append(block(name, [[t, i] for t, i, _ in e["timeline"]]))
            plots.append(f"${name} using 1:2 with lines title '{cfg} {w[7:]}'")
    if plots:
        scripts.append("set output 'merge.png'\nset title 'write IOPS (per 100 ms) while a snapshot is deleted'\n"
                       "set xlabel 's since the load started'\nset ylabel 'IOPS'\nset key outside right\n"
                       "set yrange [0:*]\n" f"plot {', '.join(plots)}\n")
    if not scripts:
        return
    if shutil.which("gnuplot") is None:
        print("report.py: gnuplot is not installed (Debian: gnuplot-nox): no charts", file=sys.stderr)
        return
    gp = "set terminal pngcairo size 960,480 font ',10'\nset grid ytics\n" + "".join(scripts)
    open(os.path.join(RES, "charts.gp"), "w").write(gp)
    r = subprocess.run(["gnuplot", "charts.gp"], cwd=RES, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        print("report.py: gnuplot failed, charts incomplete:\n" + r.stdout[-2000:], file=sys.stderr)


charts()
print("\n".join(out[: out.index("## Commands\n")] if "## Commands\n" in out else out))
