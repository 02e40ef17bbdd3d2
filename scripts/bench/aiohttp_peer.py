"""The HTTP gateway's peer in the benchmark: a Python asyncio + aiohttp client
paying the same orders at the same paysim with the same concurrency.

    aiohttp_peer.py --url http://127.0.0.1:8099 --input orders.jsonl --count N --concurrency C

Reads the first N lines, pays every order that parses and passes the same
rules as the worker (POST /v1/charges, Idempotency-Key = the percent-encoded
order id, up to 8 attempts on 408/425/429/5xx or a connection error, a short
back-off), and prints one JSON line: payments (captured + declined), failed,
seconds (from the first request to the last answer) and payments_per_second.
"""

import argparse
import asyncio
import json
import sys
import time
import urllib.parse

import aiohttp

TRANSIENT = {408, 425, 429} | set(range(500, 600))


def priced(line):
    """(order_id, body) of an order the worker would pay, else None."""
    try:
        o = json.loads(line)
        cur, items = o["currency"], o["items"]
        if not all(isinstance(o[k], str) for k in ("order_id", "customer_id", "payment_token")):
            return None
        if not isinstance(items, list) or not 1 <= len(o["order_id"].encode()) <= 64:
            return None
        for i in items:
            if not (isinstance(i["sku"], str) and all(
                    type(i[k]) is int for k in ("qty", "unit_price_cents"))):
                return None
        if not (isinstance(cur, str) and len(cur) == 3 and cur.isascii() and cur.isupper()):
            return None
        if not items:
            return None
        amount = 0
        for i in items:
            if not (1 <= len(i["sku"].encode()) <= 64) or not (1 <= i["qty"] <= 1000):
                return None
            if i["unit_price_cents"] < 0:
                return None
            amount += i["qty"] * i["unit_price_cents"]
        if amount > 2**63 - 1:
            return None
        body = {"order_id": o["order_id"], "amount_cents": amount, "currency": cur,
                "payment_token": o["payment_token"]}
        return o["order_id"], json.dumps(body)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


async def pay(session, url, order_id, body, sem, tally):
    key = urllib.parse.quote(order_id, safe="-._~")
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    async with sem:
        for attempt in range(8):
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    if r.status in (200, 201, 402):
                        tally["payments"] += 1
                        return
                    if r.status not in TRANSIENT:
                        break
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.005 * 2 ** attempt)
        tally["failed"] += 1


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--concurrency", type=int, default=64)
    a = ap.parse_args()
    orders, seen = [], set()
    with open(a.input, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f):
            if n >= a.count:
                break
            p = priced(line)
            if p and p[0] not in seen:
                seen.add(p[0])
                orders.append(p)
    url = a.url.rstrip("/") + "/v1/charges"
    sem = asyncio.Semaphore(a.concurrency)
    tally = {"payments": 0, "failed": 0}
    conn = aiohttp.TCPConnector(limit=a.concurrency)
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        t0 = time.monotonic()
        await asyncio.gather(*(pay(session, url, k, b, sem, tally) for k, b in orders))
        dt = time.monotonic() - t0
    tally.update(seconds=round(dt, 3), payments_per_second=round(tally["payments"] / dt, 1))
    print(json.dumps(tally))
    return 0 if tally["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
