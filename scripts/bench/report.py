#!/usr/bin/env python3
"""Turns bench-out/results.jsonl (one JSON line per run, from collect.py) into
the benchmark table: printed, written as docs/bench/results.md, and drawn as
docs/bench/throughput.svg (a hand-written horizontal bar chart, no plotting
library). Used by scripts/bench.sh; can be rerun on the same results.
"""

import argparse
import datetime
import html
import json
import os
import platform
import statistics
import subprocess

GATEWAY_IDEAL = 2 * 64 / 0.005  # 2 workers x 64 in flight / 5 ms = 25,600 orders/s


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def build_info(results_path):
    """What bench.sh wrote when it built: commit, dirty, started."""
    info = {}
    try:
        for line in open(os.path.join(os.path.dirname(results_path), "build.txt")):
            k, _, v = line.strip().partition("=")
            info[k] = v
    except OSError:
        pass
    return info


def machine_facts(root, results_path):
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    zmq = sh(f"grep -A1 'name = \"zeromq-src\"' '{root}/Cargo.lock' | sed -n 's/version = \"\\(.*\\)\"/\\1/p'")
    build = build_info(results_path)
    if "commit" in build:
        commit, dirty = build["commit"], build.get("dirty", "0") not in ("", "0")
    else:
        commit = sh(f"git -C '{root}' rev-parse --short HEAD")
        dirty = bool(sh(f"git -C '{root}' status --porcelain --untracked-files=no -- src bin Cargo.toml"))
    ended = datetime.datetime.fromtimestamp(os.path.getmtime(results_path), datetime.timezone.utc)
    return {
        "date": (build["started"] + " to " if "started" in build else "") + ended.strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "rustc": sh("rustc --version"),
        "libzmq": (zmq.split("+")[-1] if zmq else "?") + " (vendored by zmq-sys)",
        "rabbitmq": sh("dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null") or "not installed",
        "commit built": commit + (" with uncommitted changes in src/, bin/ or Cargo.*" if dirty else ""),
    }


# (label, system, scenario, workers): the table's rows, in order.
ROWS = [
    ("naive Guide pipeline (baseline)", "naive", "naive", 2),
    ("grid --generate, 2 workers", "grid", "grid-generate", 2),
    ("grid --input (JSON Lines file), 2 workers", "grid", "grid-file", 2),
    ("grid --input + stock file, 2 workers", "grid", "grid-file-stock", 2),
    ("grid flash sale (1 hot SKU in every order), 2 workers", "grid", "grid-flash", 2),
    ("grid --input + 1M-SKU stock file, peak RSS run", "grid", "grid-stock-rss", 2),
    ("grid --generate, 1 worker", "grid", "grid-generate", 1),
    ("grid --generate, 2 workers (= above)", "grid", "grid-generate", 2),
    ("grid --generate, 4 workers", "grid", "grid-generate", 4),
    ("grid, gateway 5 ms, 64 in flight/worker", "grid", "grid-gateway", 2),
    ("grid, gateway 5 ms, 1 worker", "grid", "grid-gateway", 1),
    ("grid, gateway 5 ms, 4 workers", "grid", "grid-gateway", 4),
    ("grid, gateway 200 ms, 3 workers x 64 (bound 960/s)", "grid", "grid-gateway200", 3),
    ("grid, gateway 5 ms, 40 workers x 8 (bound 64,000/s)", "grid", "grid-many", 40),
    ("grid, sink frozen mid-run, 2 workers x 64 at 5 ms", "grid", "grid-cutoff", 2),
    ("grid over HTTP (paysim 0 ms), 1 worker x 64", "grid", "grid-http-0ms", 1),
    ("grid over HTTP (paysim 5 ms), 64 in flight/worker", "grid", "grid-http-5ms", 2),
    ("Python aiohttp peer, 64 in flight (0 ms), payments/s", "aiohttp", "aiohttp-0ms", 1),
    ("Python aiohttp peer, 128 in flight (5 ms), payments/s", "aiohttp", "aiohttp-5ms", 2),
    ("grid, --input - fed at 10,000 lines/s (latency run)", "grid", "stream-10k", 2),
    ("grid, --input - fed at 100,000 lines/s (latency run)", "grid", "stream-100k", 2),
    ("grid --generate, 2 workers, peak RSS run", "grid", "grid-rss", 2),
    ("RabbitMQ: durable, confirms, acks", "rabbitmq", "rabbitmq", 2),
]


def mib(kib):
    return f"{kib / 1024:.0f}" if kib else "–"


def fmt(x):
    return f"{x:,.0f}" if x is not None else "–"


def summarise(runs):
    good = [r for r in runs if r["ok"] and r.get("orders_per_s")]
    rates = [r["orders_per_s"] for r in good]
    rss = {}
    for r in runs:
        for k, v in r.get("peak_rss_kib", {}).items():
            rss[k] = max(rss.get(k, 0), v)
    others = [r.get("others_cpu_pct", 0) for r in runs]
    sink_exit = [r["orders_per_s_to_sink_exit"] for r in good if r.get("orders_per_s_to_sink_exit")]
    dups = [r["report"]["stats"].get("duplicate_results", 0) for r in good if r.get("report")]
    walls = [r["wall_seconds"] for r in good if r.get("wall_seconds")]
    resent = [r["redelivered"] for r in good if r.get("redelivered") is not None]
    frozen = [r["freeze"] for r in good if r.get("freeze") and r["freeze"].get("in_flight") is not None]
    lat = [r["latency"] for r in good if r.get("latency") and r["latency"].get("p50_ms") is not None]
    return {
        "runs": len(runs),
        "good": len(good),
        "median": statistics.median(rates) if rates else None,
        "min": min(rates) if rates else None,
        "max": max(rates) if rates else None,
        "median_to_sink_exit": statistics.median(sink_exit) if sink_exit else None,
        "rss": rss,
        "others_max": max(others) if others else 0,
        "orders": runs[0]["orders"] if runs else 0,
        "notes": sorted({r["note"] for r in runs if r.get("note")}),
        "duplicates": statistics.median(dups) if dups else None,
        "wall": statistics.median(walls) if walls else None,
        "resent": statistics.median(resent) if resent else None,
        "resent_max": max(resent) if resent else None,
        "in_flight_at_freeze": statistics.median(f["in_flight"] for f in frozen) if frozen else None,
        "frozen_seconds": frozen[0]["frozen_seconds"] if frozen else None,
        "p50_ms": statistics.median(l["p50_ms"] for l in lat) if lat else None,
        "p99_ms": statistics.median(l["p99_ms"] for l in lat) if lat else None,
        "p99_max_ms": max(l["p99_ms"] for l in lat) if lat else None,
        "fed_per_s": statistics.median(l["fed_per_s"] for l in lat) if lat else None,
        "samples": sum(l["samples"] for l in lat) if lat else 0,
    }


def build(results, quick, nruns):
    rows = []
    for label, system, scenario, workers in ROWS:
        runs = [r for r in results if r["system"] == system and r["scenario"] == scenario and r["workers"] == workers]
        if not runs:
            continue
        rows.append((label, system, scenario, workers, summarise(runs)))
    return rows


def table_lines(rows, naive):
    head = [
        "scenario",
        "orders",
        "workers",
        "orders/s median [min–max]",
        "vs naive",
        "peak RSS MiB sink / vent / worker",
        "runs ok",
        "others' CPU",
        "dup. results (median)",
        "resent (median)",
        "whole run s (median)",
    ]
    out = []
    for label, system, scenario, workers, s in rows:
        rate = (
            f"{fmt(s['median'])} [{fmt(s['min'])}–{fmt(s['max'])}]" if s["median"] is not None else "FAILED"
        )
        ratio = f"{s['median'] / naive:.2f}×" if naive and s["median"] else "–"
        rss = s["rss"]
        rss_cell = f"{mib(rss.get('sink'))} / {mib(rss.get('vent'))} / {mib(rss.get('worker'))}"
        if "broker" in rss:
            rss_cell += f" (+ broker {mib(rss['broker'])})"
        out.append(
            [
                label,
                f"{s['orders']:,}",
                str(workers),
                rate,
                ratio,
                rss_cell,
                f"{s['good']}/{s['runs']}",
                f"≤{s['others_max']:.0f}%",
                fmt(s["duplicates"]),
                fmt(s["resent"]),
                f"{s['wall']:.2f}" if s.get("wall") else "–",
            ]
        )
    return head, out


def latency_lines(rows):
    """The latency table: rows whose runs measured it."""
    head = ["stream", "fed lines/s (median)", "p50 ms (median)", "p99 ms (median, max)", "samples", "runs ok"]
    out = []
    for label, _, _, _, s in rows:
        if s.get("p50_ms") is None:
            continue
        out.append(
            [
                label,
                fmt(s["fed_per_s"]),
                f"{s['p50_ms']:.2f}",
                f"{s['p99_ms']:.2f} ({s['p99_max_ms']:.2f})",
                f"{s['samples']:,}",
                f"{s['good']}/{s['runs']}",
            ]
        )
    return head, out


def print_table(head, body):
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
    print(line)
    print("-" * len(line))
    for r in body:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def findings(rows, naive, quick):
    by = {(sc, w): s for _, _, sc, w, s in rows}
    lines = []

    def med(key):
        s = by.get(key)
        return s["median"] if s else None

    grid = med(("grid-generate", 2))
    if grid and naive:
        r = grid / naive
        verdict = "meets the goal of 1.5×" if r >= 1.5 else ("at least as fast: met" if r >= 1.0 else "NOT met")
        lines.append(
            f"Reliability for free: grid --generate with 2 workers runs at {r:.2f}× the naive pipeline "
            f"({fmt(grid)} vs {fmt(naive)} orders/s); must be ≥ 1.0×, goal 1.5×: {verdict}."
        )
    f = med(("grid-file", 2))
    if f:
        lines.append(
            f"From a file: {fmt(f)} orders/s through the whole grid; must be ≥ 1,000,000: "
            f"{'met' if f >= 1e6 else 'NOT met'}."
        )
    rb = med(("rabbitmq", 2))
    if rb and grid:
        lines.append(
            f"Broker: the grid (--generate, 2 workers) is {grid / rb:.0f}× the RabbitMQ work queue "
            f"({fmt(grid)} vs {fmt(rb)} orders/s; the broker ran {by[('rabbitmq', 2)]['orders']:,} orders, "
            f"with a Python (pika) client)."
        )
    g = med(("grid-gateway", 2))
    if g:
        lines.append(
            f"Slow gateway: {fmt(g)} orders/s = {g / GATEWAY_IDEAL:.1%} of the ideal 2 × 64 / 5 ms = 25,600/s; "
            f"must be ≥ 80%: {'met' if g >= 0.8 * GATEWAY_IDEAL else 'NOT met'}."
        )
    slow = by.get(("grid-gateway200", 3))
    if slow and slow["median"]:
        share = slow["median"] / 960
        met = share >= 0.9 and not slow["duplicates"]
        lines.append(
            f"Slow payment provider (200 ms, 3 workers x 64): {fmt(slow['median'])} orders/s = {share:.1%} of the "
            f"960/s bound, {fmt(slow['duplicates'])} duplicate results; must be ≥ 90% with none: "
            f"{'met' if met else 'NOT met'}."
        )
    many = by.get(("grid-many", 40))
    if many and many["median"]:
        share = many["median"] / 64000
        lines.append(
            f"Many workers (40 x 8 at 5 ms, default flags): {fmt(many['median'])} orders/s = {share:.1%} of the "
            f"64,000/s bound, {fmt(many['duplicates'])} duplicate results; must be ≥ 60%: "
            f"{'met' if share >= 0.6 else 'NOT met'}."
        )
    c = by.get(("grid-cutoff", 2))
    if c and c.get("in_flight_at_freeze") is not None and c.get("resent") is not None:
        met = c["resent_max"] < c["in_flight_at_freeze"]
        lines.append(
            f"Sink cut off (SIGSTOP) for {c['frozen_seconds']:.0f} s mid-run: {fmt(c['resent'])} orders resent "
            f"(median; at most {fmt(c['resent_max'])}) against {fmt(c['in_flight_at_freeze'])} in flight when it "
            f"went away (median), {fmt(c['duplicates'])} duplicate results; must be fewer: {'met' if met else 'NOT met'}."
        )
    h0 = med(("grid-http-0ms", 1))
    if h0:
        lines.append(
            f"HTTP gateway, 1 worker at 0 ms: {fmt(h0)} orders/s through paysim (~97% of them payments); "
            f"goal ≥ 20,000 payments/s per worker: {'met' if 0.97 * h0 >= 20000 else 'NOT met'}."
        )
    h5 = med(("grid-http-5ms", 2))
    if h5:
        lines.append(
            f"HTTP gateway, 2 workers x 64 at 5 ms: {fmt(h5)} orders/s = {h5 / GATEWAY_IDEAL:.1%} of 25,600/s; "
            f"goal ≥ 80%: {'met' if h5 >= 0.8 * GATEWAY_IDEAL else 'NOT met'}."
        )
    p0, p5 = med(("aiohttp-0ms", 1)), med(("aiohttp-5ms", 2))
    if p0 or p5:
        lines.append(
            "Python asyncio + aiohttp peer against the same paysim: "
            + ", ".join(x for x in [p0 and f"{fmt(p0)} payments/s with 64 in flight at 0 ms",
                                    p5 and f"{fmt(p5)} with 128 at 5 ms"] if x)
            + "."
        )
    s = by.get(("grid-rss", 2))
    if s:
        rss = s["rss"]
        lines.append(
            f"Bounded memory: for {s['orders']:,} orders the peak RSS was sink {mib(rss.get('sink'))} MiB, "
            f"ventilator {mib(rss.get('vent'))} MiB, worker {mib(rss.get('worker'))} MiB."
        )
    sc = [(w, med(("grid-generate", w))) for w in (1, 2, 4)]
    sc = [(w, m) for w, m in sc if m]
    if sc:
        lines.append(
            "Scaling, CPU-bound (--generate): "
            + ", ".join(f"{w} worker{'s' if w > 1 else ''}: {fmt(m)}/s" for w, m in sc)
            + ": the two cores are used up with one worker, more workers only add processes to schedule."
        )
    gw = [(w, med(("grid-gateway", w))) for w in (1, 2, 4)]
    gw = [(w, m) for w, m in gw if m]
    if len(gw) > 1:
        lines.append(
            "Scaling, gateway-bound (5 ms, 64 in flight per worker): "
            + ", ".join(
                f"{w} worker{'s' if w > 1 else ''}: {fmt(m)}/s ({m / (w * GATEWAY_IDEAL / 2):.0%} of {w} × 12,800)"
                for w, m in gw
            )
            + "."
        )
    sink = by.get(("grid-generate", 2))
    if sink and sink.get("median_to_sink_exit"):
        lines.append(
            f"Counted to the sink's own exit instead of the ventilator's (it exits once its workers said goodbye), "
            f"grid --generate with 2 workers gives {fmt(sink['median_to_sink_exit'])} orders/s."
        )
    if quick:
        lines.append("This was a --quick run (fewer orders, one run each): the goals above are stated for the full run.")
    return lines


def svg_chart(rows):
    bars = [
        (f"{label} ({s['orders']:,})", s) for label, _, _, _, s in rows if s["median"] and "(= above)" not in label
    ]
    sys_of = {f"{label} ({s['orders']:,})": system for label, system, _, _, s in rows}
    if not bars:
        return '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    left, right, top, bar_h, gap = 360, 150, 40, 22, 10
    plot_w = 480
    width = left + plot_w + right
    height = top + len(bars) * (bar_h + gap) + 40
    vmax = max(s["max"] or s["median"] for _, s in bars)
    # Round ticks: a step of 1, 2, 2.5 or 5 times a power of ten, about 5 of them.
    raw = vmax / 5
    power = 10 ** (len(str(int(raw))) - 1) if raw >= 1 else 1
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    ticks = int(-(-vmax // step))
    axis = step * ticks
    x = lambda v: left + plot_w * v / axis  # noqa: E731
    colours = {"naive": "#9e9e9e", "grid": "#1f77b4", "rabbitmq": "#ff7f0e"}
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="20" font-size="14" font-weight="bold">Orders/s by scenario '
        f"(median; whiskers: min–max; orders per run in brackets)</text>",
    ]
    for i in range(ticks + 1):
        v = step * i
        xv = x(v)
        tick = f"{v / 1e6:g}M" if v >= 1e6 else (f"{v / 1e3:g}k" if v else "0")
        out.append(f'<line x1="{xv:.1f}" y1="{top - 5}" x2="{xv:.1f}" y2="{height - 30}" stroke="#e0e0e0"/>')
        out.append(f'<text x="{xv:.1f}" y="{height - 15}" text-anchor="middle" fill="#555">{tick}</text>')
    for i, (label, s) in enumerate(bars):
        y = top + i * (bar_h + gap)
        colour = colours.get(sys_of[label], "#1f77b4")
        out.append(
            f'<text x="{left - 8}" y="{y + bar_h * 0.7:.1f}" text-anchor="end">{html.escape(label)}</text>'
        )
        out.append(
            f'<rect x="{left}" y="{y}" width="{max(1.0, x(s["median"]) - left):.1f}" height="{bar_h}" fill="{colour}"/>'
        )
        if s["min"] is not None and s["max"] is not None and s["max"] > s["min"]:
            ym = y + bar_h / 2
            out.append(
                f'<line x1="{x(s["min"]):.1f}" y1="{ym}" x2="{x(s["max"]):.1f}" y2="{ym}" stroke="black"/>'
            )
            for v in (s["min"], s["max"]):
                out.append(f'<line x1="{x(v):.1f}" y1="{y + 5}" x2="{x(v):.1f}" y2="{y + bar_h - 5}" stroke="black"/>')
        out.append(
            f'<text x="{x(s["max"] or s["median"]) + 6:.1f}" y="{y + bar_h * 0.7:.1f}">{fmt(s["median"])}/s</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", required=True)
    ap.add_argument("--docs", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--nice", type=int, default=0)
    a = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    results = [json.loads(l) for l in open(a.results) if l.strip()]
    rows = build(results, a.quick, a.runs)
    naive_rows = [s for _, sys_, _, _, s in rows if sys_ == "naive"]
    naive = naive_rows[0]["median"] if naive_rows else None
    head, body = table_lines(rows, naive)
    facts = machine_facts(root, a.results)
    notes = findings(rows, naive, a.quick)

    print()
    print_table(head, body)
    lat_head, lat_body = latency_lines(rows)
    if lat_body:
        print()
        print_table(lat_head, lat_body)
    print()
    for n in notes:
        print("- " + n)
    failures = [(label, s["notes"]) for label, _, _, _, s in rows if s["notes"] or s["good"] < s["runs"]]
    for label, ns in failures:
        print(f"! {label}: " + "; ".join(ns))

    os.makedirs(a.docs, exist_ok=True)
    md = [
        "# Throughput benchmark",
        "",
        "Made by `scripts/bench.sh`" + (" --quick" if a.quick else "") + f", {facts['date']}: "
        f"each scenario run {a.runs} time(s) (the peak-RSS run once); orders/s is the median with min and max.",
        "",
        "| " + " | ".join(head) + " |",
        "| " + " | ".join("---" if i == 0 else "---:" for i in range(len(head))) + " |",
    ]
    for r in body:
        md.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    if lat_body:
        md += [
            "",
            "Latency under a steady stream: from a line read to its order acknowledged (tallied and durable "
            "at the sink), one order in 16 timed, quantiles interpolated within the histogram's buckets.",
            "",
            "| " + " | ".join(lat_head) + " |",
            "| " + " | ".join("---" if i == 0 else "---:" for i in range(len(lat_head))) + " |",
        ]
        md += ["| " + " | ".join(r) + " |" for r in lat_body]
    md += ["", "![orders/s by scenario](throughput.svg)", ""]
    md += ["## What it shows", ""] + [f"- {n}" for n in notes]
    if failures:
        md += ["", "## Failed runs", ""] + [f"- {label}: " + "; ".join(ns) for label, ns in failures]
    md += [
        "",
        "## How it is measured",
        "",
        "- All roles run on this one machine, over ZeroMQ `ipc://` endpoints; each grid run has a fresh "
        "`--state` folder on the repo's disk, so the sink's journal fsyncs for real. Acknowledgements, "
        "deduplication and the journal are always on in the grid.",
        "- Grid: seconds from starting the ventilator to its exit, which comes once the sink has tallied every "
        "order, closed its journal and written the report (the sink exits once its workers said goodbye; "
        "the figure counted to the sink's exit is in the findings and the raw data). \"whole run s\" is what a "
        "user waits for: the first process started (the sink) to the last one exited.",
        "- \"dup. results\" is the sink's count of results it had tallied already (each a second gateway call "
        "for a paid order); \"resent\" the orders the ventilator sent a second time (its `redelivered`).",
        "- Naive Guide pipeline (`examples/naive_pipeline.rs`): one MessagePack order per ZeroMQ message, "
        "workers decode, validate, price and encode one result per message, the sink decodes and tallies per "
        "currency and SKU; no acks, no journal. Its orders are built in memory first (not timed); seconds from "
        "the ventilator's start signal to the last result tallied.",
        "- RabbitMQ (`scripts/bench/rabbitmq_peer.py`, Debian's rabbitmq-server, Python pika client): durable "
        "queues, persistent messages, publisher confirms (up to 1,000 unconfirmed), 2 consumer processes with a "
        "prefetch of 500 that publish a persistent, confirmed result and acknowledge the order once the result "
        "is confirmed, and a tallying consumer that acknowledges in batches. Orders are read from an "
        "`ordergrid-gen` file first (not timed); seconds from the first publish to the last result tallied. "
        "It runs fewer orders because it is much slower.",
        "- Peak RSS is GNU time's maximum resident set size of each process (the largest worker's); the "
        "naive ventilator holds all its orders in memory by design. The broker's is its VmHWM.",
        "- The slow-gateway scenario runs `--gateway-latency-ms 5 --concurrency 64` on each of 2 workers; its "
        "ideal is 2 × 64 / 5 ms = 25,600 orders/s. The same with 1 and 4 workers shows how workers scale when "
        "they wait for the gateway rather than for the CPU (ideal: workers × 12,800 orders/s).",
        "- Issue 11's rows, with default dispatch flags: a slow payment provider (`--gateway-latency-ms 200`, "
        "3 workers x 64: a 960/s bound), many small workers (40 x `--concurrency 8` at 5 ms: 64,000/s), and "
        "the sink cut off: 200,000 orders at 2 x 64 x 5 ms, the sink SIGSTOPped 2 s into the run for 15 s, "
        "the ventilator's orders in flight (sent, not acknowledged) read from its metrics just before.",
        "- Over HTTP: each run has its own `ordergrid-paysim` on a free loopback port; workers retry with "
        "`--gateway-backoff-ms 5`. paysim keeps its mean delay at `--latency-ms` (it logs the mean when it "
        "stops: 5.00 ms at 5 ms), so 2 x 64 / 5 ms = 25,600/s is the true bound. The Python peer "
        "(`scripts/bench/aiohttp_peer.py`) pays the same orders with the same concurrency, nothing else.",
        "- Latency: `scripts/bench/stream_feeder.py` feeds `--input -` at a fixed rate in 10 ms ticks, 2 "
        "workers, no gateway delay; the ventilator's `ordergrid_ack_latency_seconds` histogram (one order in "
        "16, from its line read to its acknowledgement, i.e. durable at the sink) gives p50 and p99, "
        "interpolated within buckets of 1, 2, 4, 8 … ms as Prometheus' histogram_quantile does.",
        "- \"others' CPU\" is the largest share of the machine's CPU used by processes outside the benchmark "
        "during a run of that row; the script waits for a quiet machine before each run, but the numbers of a "
        "run with a high share are pessimistic.",
        "",
        "## Machine",
        "",
    ]
    facts["niceness of the benchmarked processes"] = a.nice
    md += [f"- {k}: {v}" for k, v in facts.items()]
    md.append("")
    with open(os.path.join(a.docs, "results.md"), "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(a.docs, "throughput.svg"), "w") as f:
        f.write(svg_chart(rows))
    print(f"\nwrote {os.path.join(a.docs, 'results.md')} and {os.path.join(a.docs, 'throughput.svg')}")


if __name__ == "__main__":
    main()
