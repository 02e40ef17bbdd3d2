#!/usr/bin/env python3
"""Feeds a ventilator's `--input -` at a steady rate and reads its latency.

For scripts/bench.sh's latency rows: writes the first --count lines of
--input to --fifo (the ventilator's stdin) at --rate lines per second, in
ticks of 10 ms on an absolute schedule (a late tick catches up, so the mean
rate holds). Once every line is written it keeps the stream open and polls
the ventilator's metrics (the address it logs in --vent-log) until every
line is read and nothing is in flight, then reads the histogram of the
seconds from a line read to its order acknowledged
(`ordergrid_ack_latency_seconds`) and writes p50/p99 as JSON to --out.
Closing the stream then ends the run.
"""

import argparse
import json
import re
import time

from vent_metrics import metrics_url, scrape, value

TICK = 0.01


def buckets(text):
    """[(upper bound, cumulative count)] of the ack latency histogram."""
    out = []
    for m in re.finditer(r'^ordergrid_ack_latency_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.M):
        le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
        out.append((le, float(m.group(2))))
    return sorted(out)


def quantile(bks, q):
    """Prometheus' histogram_quantile: linear within the bucket, in ms."""
    total = bks[-1][1] if bks else 0
    if total == 0:
        return None
    rank = q * total
    lo, below = 0.0, 0.0
    for le, cum in bks:
        if cum >= rank:
            if le == float("inf"):
                return lo * 1000
            inside = cum - below
            frac = (rank - below) / inside if inside else 1.0
            return (lo + (le - lo) * frac) * 1000
        lo, below = le, cum
    return lo * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--fifo", required=True)
    ap.add_argument("--rate", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--vent-log", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    with open(a.input, "rb") as f:
        lines = [next(f) for _ in range(a.count)]
    per_tick = max(1, round(a.rate * TICK))
    out = open(a.fifo, "wb", buffering=0)  # blocks until the ventilator opens it
    start = time.monotonic()
    i = 0
    while i < len(lines):
        out.write(b"".join(lines[i : i + per_tick]))
        i += per_tick
        due = start + (i / per_tick) * TICK
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    fed_s = time.monotonic() - start
    deadline = time.monotonic() + 120
    url = metrics_url(a.vent_log, deadline)
    stable, last = 0, None
    while time.monotonic() < deadline and stable < 3:
        time.sleep(0.1)
        text = scrape(url)
        read = value(text, "ordergrid_lines_read_total") or 0
        acked = value(text, "ordergrid_orders_acked_total")
        idle = (value(text, "ordergrid_orders_in_flight") or 0) == 0
        stable = stable + 1 if read >= a.count and idle and acked == last else 0
        last = acked
    bks = buckets(text)
    result = {
        "rate": a.rate,
        "lines": a.count,
        "fed_seconds": round(fed_s, 3),
        "fed_per_s": round(a.count / fed_s, 1) if fed_s > 0 else None,
        "samples": int(bks[-1][1]) if bks else 0,
        "p50_ms": quantile(bks, 0.50),
        "p99_ms": quantile(bks, 0.99),
        "settled": stable >= 3,
        # The histogram itself: [upper bound in ms ("+Inf" last), cumulative count].
        "buckets": [["+Inf" if le == float("inf") else le * 1000, int(c)] for le, c in bks],
    }
    with open(a.out, "w") as f:
        json.dump(result, f)
    out.close()


if __name__ == "__main__":
    main()
