#!/usr/bin/env python3
"""One benchmark run as one JSON line, for scripts/bench.sh (stdout).

Reads each role's GNU time file (`%M %e %U %S`: peak RSS KiB, wall, user,
system seconds) in --dir, the sink's report for the grid, and the CPU
snapshots taken around the run to tell how much CPU other processes used.
"""

import argparse
import glob
import json
import os
import re


def read_time(path):
    """(peak RSS KiB, wall s, cpu s) from the last line of a GNU time file, or None."""
    try:
        lines = [l for l in open(path).read().splitlines() if l.strip()]
    except OSError:
        return None
    for line in reversed(lines):
        parts = line.split()
        if len(parts) == 4 and re.fullmatch(r"\d+", parts[0]):
            return int(parts[0]), float(parts[1]), float(parts[2]) + float(parts[3])
    return None


def main():
    ap = argparse.ArgumentParser()
    for a in ("scenario", "system", "dir", "note", "report", "broker-pid", "snap0", "snap1", "latency", "freeze"):
        ap.add_argument("--" + a, default="")
    for a in ("orders", "workers", "run", "start-ns", "end-ns", "end2-ns", "wall-start-ns", "wall-end-ns", "ok", "busy-before"):
        ap.add_argument("--" + a, type=int, default=0)
    a = ap.parse_args()
    tick = os.sysconf("SC_CLK_TCK")
    ncpu = os.cpu_count() or 1

    rec = {
        "scenario": a.scenario,
        "system": a.system,
        "orders": a.orders,
        "workers": a.workers,
        "run": a.run,
        "dir": a.dir,
        "ok": bool(a.ok),
        "note": a.note.strip().rstrip(";"),
    }
    secs = (a.end_ns - a.start_ns) / 1e9
    rec["seconds"] = round(secs, 4)
    rec["orders_per_s"] = round(a.orders / secs, 1) if secs > 0 else None
    secs2 = (a.end2_ns - a.start_ns) / 1e9
    rec["seconds_to_sink_exit"] = round(secs2, 4)
    rec["orders_per_s_to_sink_exit"] = round(a.orders / secs2, 1) if secs2 > 0 else None
    if a.wall_start_ns and a.wall_end_ns:
        # What a user waits for: the first process started to the last exited.
        rec["wall_seconds"] = round((a.wall_end_ns - a.wall_start_ns) / 1e9, 4)

    rss = {}
    cpu = 0.0
    for path in sorted(glob.glob(os.path.join(a.dir, "*.time"))):
        role = os.path.basename(path)[: -len(".time")]
        t = read_time(path)
        if t is None:
            continue
        kind = "worker" if role.startswith("worker") else role
        rss[kind] = max(rss.get(kind, 0), t[0])
        cpu += t[2]
        rec.setdefault("cpu_s", {})[role] = round(t[2], 2)
    rec["peak_rss_kib"] = rss

    if a.snap0 and a.snap1:
        b0, k0, n0 = (int(x) for x in a.snap0.split(","))
        b1, k1, n1 = (int(x) for x in a.snap1.split(","))
        window = (n1 - n0) / 1e9
        machine = (b1 - b0) / tick
        ours = cpu + (k1 - k0) / tick
        if k1 > k0:
            rec.setdefault("cpu_s", {})["broker"] = round((k1 - k0) / tick, 2)
        if window > 0:
            rec["others_cpu_pct"] = round(max(0.0, machine - ours) / (window * ncpu) * 100, 1)
    rec["busy_before_pct"] = a.busy_before

    if a.broker_pid:
        try:
            for line in open(f"/proc/{a.broker_pid}/status"):
                if line.startswith("VmHWM:"):
                    rss["broker"] = int(line.split()[1])
        except OSError:
            pass

    if a.system in ("naive", "rabbitmq"):
        try:
            m = re.search(r"done_unix_ns=\d+ orders=(\d+)", open(os.path.join(a.dir, "sink.out")).read())
        except OSError:
            m = None
        tallied = int(m.group(1)) if m else None
        if tallied != a.orders:
            rec["ok"] = False
            rec["note"] = (rec["note"] + "; " if rec["note"] else "") + f"the sink tallied {tallied}, not {a.orders}"

    if a.report:
        try:
            report = json.load(open(a.report))
            lines = report["orders"]["lines"]
            rec["report"] = {
                "lines": lines,
                "orders_per_s": round(report["run"]["orders_per_second"], 1),
                "workers_seen": report["run"].get("workers_seen"),
                "stats": report.get("stats", {}),
            }
            if lines != a.orders:
                rec["ok"] = False
                rec["note"] = (rec["note"] + "; " if rec["note"] else "") + f"report has {lines} lines, not {a.orders}"
        except (OSError, ValueError, KeyError) as e:
            rec["ok"] = False
            rec["note"] = (rec["note"] + "; " if rec["note"] else "") + f"no report: {e}"
    # Orders the ventilator sent again (its last line: "... redelivered=N").
    try:
        done = re.findall(r"run complete.*?redelivered=(\d+)", open(os.path.join(a.dir, "vent.err"), errors="replace").read())
        if done:
            rec["redelivered"] = int(done[-1])
    except OSError:
        pass
    if a.freeze and os.path.exists(a.freeze):
        try:
            rec["freeze"] = json.load(open(a.freeze))
        except (OSError, ValueError):
            pass
    if a.latency:
        try:
            rec["latency"] = json.load(open(a.latency))
            if not rec["latency"].get("settled"):
                rec["ok"] = False
                rec["note"] = (rec["note"] + "; " if rec["note"] else "") + "the stream never settled"
        except (OSError, ValueError) as e:
            rec["ok"] = False
            rec["note"] = (rec["note"] + "; " if rec["note"] else "") + f"no latency: {e}"
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
