#!/usr/bin/python3
"""NBD writer and verifier for tests/kill_sweep.sh's live family and tests/merge_kill.sh
(python3-libnbd).

  acked_writer.py write URI CTL SNAPNAME LOG STRATA [SEED]
      Writes a seeded workload (sector-aligned writes of 512 B .. 64 KiB, some FUA, up to 4 in
      flight, a FLUSH every few writes), takes the live snapshot SNAPNAME through the control
      socket CTL with no write in flight halfway, then writes again. Stops quietly when the
      server dies (the test kills it) and records in LOG which writes were issued, which were
      acknowledged, and which of those a completed FLUSH, FUA or snapshot made durable.
  acked_writer.py verify URI LOG INITIAL_RAW SNAPNAME SNAPS_JSON
      After the restart: every sector of the disk must hold its last durable version or a
      version written after it (a write not covered by a FLUSH may be lost, or partly lost at
      sector granularity; nothing else may appear); a snapshot the server reported created
      must exist and read exactly the disk at the time of the request, and so must one that
      exists although the request got no reply (crash-atomic); the snapshots that existed
      before (SNAPS_JSON: {"@NAME": "expected.raw"}) must read unchanged.
  acked_writer.py stream URI LOG SEED ID_BASE STOP_FILE MAX_SECONDS [LO_MIB:HI_MIB]
      Writes as `write` does (ids ID_BASE+1, ...; the whole disk or [LO, HI) MiB), a FLUSH every
      5 writes, until STOP_FILE exists, MAX_SECONDS passed or the server dies; LOG as `write`'s
      (tests/merge_kill.sh runs several during one merge and verifies their merged logs).
Exit 0 when all holds; otherwise exit 1 with every violation on stderr (at most 10 sectors).
"""
import json
import os
import random
import subprocess
import sys
import time

import nbd

SECTOR = 512


def sector_bytes(wid, sector):
    # A sector of write `wid` names the write and its own position, so a sector from another
    # write, or the right data in the wrong place, can never match by accident.
    head = wid.to_bytes(8, "little") + sector.to_bytes(8, "little")
    return head + bytes([(wid * 31 + sector) % 251 + 1]) * (SECTOR - 16)


def write_payload(wid, off, length):
    first = off // SECTOR
    return b"".join(sector_bytes(wid, first + i) for i in range(length // SECTOR))


class Writer:
    """Seeded writes of tagged sectors through one connection, up to 4 in flight, some FUA;
    records in `log` which were issued, acknowledged, and made durable (a completed FLUSH or
    FUA). Write ids start after `id_base`, so that several writers' logs merge."""

    def __init__(self, h, rng, log, id_base=0, lo=0, hi=None):
        self.h, self.rng, self.log, self.id_base = h, rng, log, id_base
        self.lo, self.hi = lo, hi if hi is not None else log["size"] // SECTOR
        self.writes = log["writes"]
        self.inflight = {}         # libnbd cookie -> index in writes
        self.busy = set()          # sectors with a write in flight: never two at once on a sector
        self.acked_unflushed = []  # acknowledged, not yet covered by a completed FLUSH

    def reap(self, block):
        # Completions: a write is acknowledged when libnbd reports its command complete.
        # block: until none is in flight; else until fewer than 4 are.
        deadline = time.monotonic() + 30
        while True:
            for c in [c for c in list(self.inflight) if self.h.aio_command_completed(c)]:
                w = self.writes[self.inflight.pop(c)]
                w["acked"] = True
                self.busy.difference_update(range(w["off"] // SECTOR,
                                                  (w["off"] + w["len"]) // SECTOR))
                if w["fua"]:
                    w["durable"] = True
                else:
                    self.acked_unflushed.append(w["id"] - self.id_base - 1)
            if not self.inflight or (not block and len(self.inflight) < 4):
                return
            if time.monotonic() > deadline:
                raise TimeoutError("no completion within 30 s")
            self.h.poll(1000)

    def flush(self):
        self.reap(block=True)
        covered = list(self.acked_unflushed)  # acknowledged before the FLUSH was sent
        self.h.flush()
        for i in covered:
            self.writes[i]["durable"] = True
        self.acked_unflushed.clear()
        self.log["flushes"] += 1

    def mark_all_durable(self):
        # A snapshot (durable before its reply) covers every write acknowledged before it.
        for w in self.writes:
            if w["acked"]:
                w["durable"] = True
        self.acked_unflushed.clear()

    def one_write(self, phase):
        while True:
            length = self.rng.choice([SECTOR, 4096, 4096, 8192, 65536, 3 * SECTOR])
            off = self.rng.randrange(self.lo, self.hi - length // SECTOR + 1) * SECTOR
            secs = range(off // SECTOR, (off + length) // SECTOR)
            if not any(s in self.busy for s in secs):
                break
        i = len(self.writes)
        wid = self.id_base + i + 1
        fua = self.rng.random() < 0.15
        self.writes.append({"id": wid, "off": off, "len": length, "fua": fua, "acked": False,
                            "durable": False, "phase": phase})
        self.busy.update(secs)
        c = self.h.aio_pwrite(write_payload(wid, off, length), off,
                              flags=nbd.CMD_FLAG_FUA if fua else 0)
        self.inflight[c] = i
        if len(self.inflight) >= 4:
            self.reap(block=False)


def new_log(size, seed):
    return {"size": size, "writes": [], "flushes": 0, "snapshot": {"requested": False},
            "died_at": None, "seed": seed}


def do_write(uri, ctl, snapname, log_path, strata, seed):
    h = nbd.NBD()
    try:
        h.connect_uri(uri)
    except nbd.Error as e:
        # The kill can land between the test's readiness probe and this connect: nothing was
        # written, the log the test left ("before it served") stands.
        print(f"connect: {e}", file=sys.stderr)
        return
    log = new_log(h.get_size(), seed)
    w = Writer(h, random.Random(seed), log)

    def phase(count):
        for k in range(count):
            w.one_write(log["snapshot"]["requested"] and "B" or "A")
            if k % 5 == 4:
                w.flush()
        w.flush()

    try:
        phase(40)
        w.reap(block=True)
        snap = log["snapshot"]
        snap.update({"requested": True, "name": snapname, "ok": False,
                     "before": len(log["writes"])})  # all acknowledged: none in flight
        try:
            p = subprocess.run([strata, "snapshot", "--control", ctl, snapname, "--json"],
                               capture_output=True, text=True, timeout=30)
            snap["reply"] = (p.stdout + p.stderr).strip()
            try:
                snap["ok"] = p.returncode == 0 and json.loads(p.stdout).get("ok") is True
            except ValueError:
                snap["ok"] = False
        except subprocess.TimeoutExpired:
            snap["reply"] = "no reply within 30 s"
        if snap["ok"]:
            w.mark_all_durable()
        phase(40)
        h.shutdown()
    except (nbd.Error, TimeoutError, OSError) as e:
        log["died_at"] = f"write {len(log['writes'])}: {e}"
    with open(log_path, "w") as f:
        json.dump(log, f)


def do_stream(uri, log_path, seed, id_base, stop_file, max_seconds, region=""):
    """Writes until STOP_FILE exists, MAX_SECONDS passed, or the server dies; a FLUSH every 5
    writes, then a short pause (leaving the disk some room for a merge running beside it)."""
    deadline = time.monotonic() + float(max_seconds)
    log = new_log(0, int(seed))
    h = nbd.NBD()
    try:
        h.connect_uri(uri)
        log["size"] = h.get_size()
        lo, hi = ((int(x) << 20) // SECTOR for x in region.split(":")) if region else (0, None)
        w = Writer(h, random.Random(int(seed)), log, int(id_base), lo, hi)
        k = 0
        while not os.path.exists(stop_file) and time.monotonic() < deadline:
            w.one_write("A")
            k += 1
            if k % 5 == 0:
                w.flush()
                time.sleep(0.002)
        w.flush()
        h.shutdown()
    except (nbd.Error, TimeoutError, OSError) as e:
        log["died_at"] = f"write {len(log['writes'])}: {e}"
    with open(log_path, "w") as f:
        json.dump(log, f)


def expected_snapshot(initial, log):
    img = bytearray(initial)
    for w in log["writes"][:log["snapshot"]["before"]]:
        img[w["off"]:w["off"] + w["len"]] = write_payload(w["id"], w["off"], w["len"])
    return bytes(img)


def read_export(uri, name, size):
    h = nbd.NBD()
    # The export name is the URI's path (connect_uri overrides set_export_name).
    assert uri.startswith("nbd+unix:///?")
    h.connect_uri(uri.replace("nbd+unix:///", "nbd+unix:///" + name, 1))
    if h.get_size() != size:
        raise ValueError(f"export '{name}' has size {h.get_size()}, expected {size}")
    out = bytearray()
    for off in range(0, size, 1 << 20):
        out += h.pread(min(1 << 20, size - off), off)
    h.shutdown()
    return bytes(out)


def first_diff(a, b):
    for off in range(0, len(a), SECTOR):
        if a[off:off + SECTOR] != b[off:off + SECTOR]:
            return off
    return -1


def do_verify(uri, log_path, initial_path, snapname, snaps_json):
    log = json.load(open(log_path))
    initial = open(initial_path, "rb").read()
    size = log["size"]
    bad = []
    disk = read_export(uri, "", size)
    # Per sector: the versions in the order written (0 = the initial content).
    versions = [[(0, True)] for _ in range(size // SECTOR)]
    for w in log["writes"]:
        for s in range(w["off"] // SECTOR, (w["off"] + w["len"]) // SECTOR):
            versions[s].append((w["id"], w["durable"]))
    shown = 0
    for s, vs in enumerate(versions):
        floor = max(k for k, (_, durable) in enumerate(vs) if durable)
        allowed = [wid for wid, _ in vs[floor:]]
        got = disk[s * SECTOR:(s + 1) * SECTOR]
        if any(got == (initial[s * SECTOR:(s + 1) * SECTOR] if wid == 0 else sector_bytes(wid, s))
               for wid in allowed):
            continue
        if shown < 10:
            tag = int.from_bytes(got[:8], "little"), int.from_bytes(got[8:16], "little")
            bad.append(f"sector {s} (byte {s * SECTOR}): holds {'write %d sector %d' % tag if got[16:17] != b'' else '?'}"
                       f" / {got[:4].hex()}..., allowed versions {allowed} (0 = before the run; "
                       f"{vs[floor][0]} is durable)")
        shown += 1
    if shown > 10:
        bad.append(f"... {shown} sectors wrong in all")
    snap = log["snapshot"]
    if snap.get("requested"):
        try:
            got = read_export(uri, "@" + snapname, size)
        except (nbd.Error, ValueError) as e:
            got = None
            if snap["ok"]:
                bad.append(f"snapshot {snapname} was reported created ({snap.get('reply')}) "
                           f"but its export @{snapname} does not open after the restart: {e}")
        if got is not None:
            want = expected_snapshot(initial, log)
            d = first_diff(got, want)
            if d >= 0:
                bad.append(f"snapshot {snapname} ({'reported created' if snap['ok'] else 'no reply: ' + str(snap.get('reply'))}) "
                           f"differs from the disk at the request at byte {d}")
    for name, path in json.loads(snaps_json).items():
        want = open(path, "rb").read()
        try:
            got = read_export(uri, name, size)
        except (nbd.Error, ValueError) as e:
            bad.append(f"snapshot export {name} does not open: {e}")
            continue
        d = first_diff(got, want)
        if d >= 0:
            bad.append(f"snapshot export {name} changed at byte {d}")
    acked = sum(w["acked"] for w in log["writes"])
    durable = sum(w["durable"] for w in log["writes"])
    print(f"{len(log['writes'])} writes, {acked} acknowledged, {durable} durable, "
          f"snapshot {'ok' if snap.get('ok') else 'requested, no ok' if snap.get('requested') else 'not reached'}; "
          f"server died at: {log['died_at']}")
    for b in bad:
        print(b, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "write":
        seed = int(sys.argv[7]) if len(sys.argv) > 7 else 1
        do_write(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], seed)
    elif mode == "stream":
        do_stream(*sys.argv[2:9])
    elif mode == "verify":
        sys.exit(do_verify(*sys.argv[2:7]))
    else:
        sys.exit(f"unknown mode {mode}")
