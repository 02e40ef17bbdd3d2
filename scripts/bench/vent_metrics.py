#!/usr/bin/env python3
"""Reads a ventilator's Prometheus metrics, for scripts/bench.sh and
stream_feeder.py: finds the address it logs (`metrics=http://…/metrics`)
and reads one value.

    vent_metrics.py VENT_LOG NAME    prints NAME's value (empty if absent)
"""

import os
import re
import sys
import time
import urllib.request


def metrics_url(vent_log, deadline):
    pat = re.compile(r"metrics=(http://[^\s\x1b]+/metrics)")
    while time.monotonic() < deadline:
        try:
            m = pat.search(open(vent_log, errors="replace").read())
        except OSError:
            m = None
        if m:
            return m.group(1)
        time.sleep(0.05)
    sys.exit(f"{os.path.basename(sys.argv[0])}: the ventilator never logged its metrics address in {vent_log}")


def scrape(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def value(text, name):
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


if __name__ == "__main__":
    url = metrics_url(sys.argv[1], time.monotonic() + 10)
    v = value(scrape(url), sys.argv[2])
    print("" if v is None else int(v) if v == int(v) else v)
