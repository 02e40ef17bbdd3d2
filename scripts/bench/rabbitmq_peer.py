#!/usr/bin/env python3
"""The broker peer of scripts/bench.sh: the same job as the grid, done by a
RabbitMQ work queue with the reliability switched on.

- `setup`: (re)declares the two durable queues, empty.
- `publish --input FILE --count N`: reads N well-formed orders from a JSON
  Lines file made by `ordergrid-gen` (not timed), then publishes each order as
  one persistent message on the durable `orders` queue with publisher
  confirms, keeping up to --window messages unconfirmed (confirms are waited
  for in windows, never one round trip per message). Prints
  `publish: start_unix_ns=<t>` when the timed part starts.
- `work`: a consumer (run two) with a prefetch window: decodes each order,
  validates and prices it with the grid's rules, publishes one persistent,
  confirmed result on the durable `results` queue and acknowledges the order
  only once its result is confirmed (at-least-once, like the grid).
- `tally --count N`: consumes results, tallies the amount captured per
  currency and the units per SKU, acknowledges in batches, and exits after N
  results, printing `tally: done_unix_ns=<t> ...`.

Needs `pika` (bench.sh installs it in a venv under bench-out/).
"""

import argparse
import collections
import json
import sys
import time

import pika

ORDERS = "orders"
RESULTS = "results"
PERSISTENT = pika.BasicProperties(delivery_mode=2, content_type="application/json")


def params(url):
    p = pika.URLParameters(url)
    p.heartbeat = 0
    return p


def unix_ns():
    return time.time_ns()


# --- the grid's rules --------------------------------------------------------

I64_MAX = (1 << 63) - 1


def price(order):
    """(amount_cents, None) or (None, reason): the grid's checks in its order."""
    cur = order.get("currency")
    if not (isinstance(cur, str) and len(cur) == 3 and all("A" <= c <= "Z" for c in cur)):
        return None, "bad_currency"
    items = order["items"]
    if not items:
        return None, "no_items"
    if any(not (1 <= len(i["sku"].encode()) <= 64) for i in items):
        return None, "bad_sku"
    if any(not (1 <= i["qty"] <= 1000) for i in items):
        return None, "bad_quantity"
    if any(i["unit_price_cents"] < 0 for i in items):
        return None, "bad_price"
    amount = sum(i["qty"] * i["unit_price_cents"] for i in items)
    if amount > I64_MAX:
        return None, "amount_overflow"
    return amount, None


def well_formed(line):
    try:
        # Strict UTF-8, as the grid reads lines (json.loads alone lets surrogates through).
        o = json.loads(line.decode("utf-8"))
    except ValueError:
        return False
    if not isinstance(o, dict):
        return False
    try:
        if not all(isinstance(o[k], str) for k in ("order_id", "customer_id", "currency", "payment_token")):
            return False
        if not 1 <= len(o["order_id"].encode()) <= 64:
            return False
        for i in o["items"]:
            if not isinstance(i["sku"], str):
                return False
            for k in ("qty", "unit_price_cents"):
                v = i[k]
                if not isinstance(v, int) or isinstance(v, bool) or not -(1 << 63) <= v <= I64_MAX:
                    return False
    except (KeyError, TypeError):
        return False
    return True


# --- setup -------------------------------------------------------------------


def setup(args):
    conn = pika.BlockingConnection(params(args.url))
    ch = conn.channel()
    for q in (ORDERS, RESULTS):
        ch.queue_delete(queue=q)
        ch.queue_declare(queue=q, durable=True)
    conn.close()


# --- publisher ---------------------------------------------------------------


class Publisher:
    def __init__(self, args, bodies):
        self.args = args
        self.bodies = bodies
        self.next = 0
        self.confirmed = 0  # every delivery tag <= confirmed is confirmed
        self.singles = set()
        self.nacked = 0
        self.start_ns = None
        self.failed = False
        self.conn = pika.SelectConnection(
            params(args.url),
            on_open_callback=self.on_open,
            on_open_error_callback=self.on_error,
            on_close_callback=self.on_closed,
        )

    def on_error(self, conn, err):
        print(f"publish: cannot connect: {err!r}", file=sys.stderr)
        self.failed = True
        conn.ioloop.stop()

    def on_closed(self, conn, reason):
        if self.confirmed < len(self.bodies):
            print(f"publish: connection closed early: {reason!r}", file=sys.stderr)
            self.failed = True
        conn.ioloop.stop()

    def on_open(self, conn):
        conn.channel(on_open_callback=self.on_channel)

    def on_channel(self, ch):
        self.ch = ch
        ch.confirm_delivery(self.on_confirm, callback=self.on_confirm_mode)

    def on_confirm_mode(self, _frame):
        self.start_ns = unix_ns()
        print(f"publish: start_unix_ns={self.start_ns}", flush=True)
        self.pump()

    def pump(self):
        window = self.args.window
        bodies = self.bodies
        publish = self.ch.basic_publish
        while self.next < len(bodies) and self.next - self.confirmed < window:
            publish("", ORDERS, bodies[self.next], PERSISTENT)
            self.next += 1

    def on_confirm(self, frame):
        m = frame.method
        # Delivery tags count from 1 in publish order; `multiple` confirms all up to the tag.
        if isinstance(m, pika.spec.Basic.Nack):
            self.nacked += 1
        if m.multiple:
            self.confirmed = max(self.confirmed, m.delivery_tag)
        else:
            self.singles.add(m.delivery_tag)
        while self.confirmed + 1 in self.singles:
            self.confirmed += 1
            self.singles.discard(self.confirmed)
        if self.confirmed >= len(self.bodies):
            secs = (unix_ns() - self.start_ns) / 1e9
            print(
                f"publish: {len(self.bodies)} orders confirmed in {secs:.2f} s ({self.nacked} nacks)",
                file=sys.stderr,
            )
            self.conn.close()
        else:
            self.pump()

    def run(self):
        self.conn.ioloop.start()
        return 1 if self.failed or self.nacked else 0


def publish(args):
    bodies = []
    t = time.time()
    with open(args.input, "rb") as f:
        for line in f:
            line = line.rstrip(b"\r\n")
            if well_formed(line):
                bodies.append(line)
                if len(bodies) == args.count:
                    break
    if len(bodies) < args.count:
        sys.exit(f"publish: only {len(bodies)} well-formed orders in {args.input}")
    print(f"publish: {len(bodies)} orders loaded in {time.time() - t:.2f} s (not timed)", file=sys.stderr)
    return Publisher(args, bodies).run()


# --- workers -----------------------------------------------------------------


def process(order):
    """The result of one order, as the grid's worker decides it."""
    amount, reason = price(order)
    if reason is not None:
        return {"order_id": order["order_id"], "outcome": reason}
    if order["payment_token"].startswith("tok_decline"):
        return {"order_id": order["order_id"], "outcome": "declined"}
    return {
        "order_id": order["order_id"],
        "outcome": "paid",
        "currency": order["currency"],
        "amount_cents": amount,
        "items": [[i["sku"], i["qty"]] for i in order["items"]],
    }


class Worker:
    def __init__(self, args):
        self.args = args
        self.published = 0  # publish seq of the last result sent (delivery tags from 1)
        self.pending = collections.deque()  # (result seq, order delivery tag), in order
        self.singles = set()
        self.frontier = 0  # every result seq <= frontier is confirmed
        self.processed = 0
        self.stopping = False
        self.failed = False
        self.conn = pika.SelectConnection(
            params(args.url),
            on_open_callback=self.on_open,
            on_open_error_callback=self.on_error,
            on_close_callback=self.on_closed,
        )

    def on_error(self, conn, err):
        print(f"work: cannot connect: {err!r}", file=sys.stderr)
        self.failed = True
        conn.ioloop.stop()

    def on_closed(self, conn, reason):
        if not self.stopping:
            print(f"work: connection closed: {reason!r}", file=sys.stderr)
            self.failed = True
        conn.ioloop.stop()

    def on_open(self, conn):
        conn.channel(on_open_callback=self.on_channel)

    def on_channel(self, ch):
        self.ch = ch
        ch.add_on_close_callback(self.on_channel_closed)
        ch.confirm_delivery(self.on_confirm, callback=self.on_confirm_mode)

    def on_confirm_mode(self, _frame):
        self.ch.basic_qos(prefetch_count=self.args.prefetch, callback=self.on_qos)

    def on_qos(self, _frame):
        self.ch.basic_consume(ORDERS, self.on_message)

    def on_channel_closed(self, _ch, reason):
        if not self.stopping:
            print(f"work: channel closed: {reason!r}", file=sys.stderr)
            self.failed = True
        if self.conn.is_open:
            self.conn.close()

    def on_message(self, ch, method, _props, body):
        try:
            result = process(json.loads(body))
        except Exception as e:  # a bug here must not pass for the broker's fault
            print(f"work: cannot process {body[:200]!r}: {e!r}", file=sys.stderr)
            self.failed = True
            self.shutdown()
            return
        ch.basic_publish("", RESULTS, json.dumps(result, separators=(",", ":")), PERSISTENT)
        self.published += 1
        self.pending.append((self.published, method.delivery_tag))
        self.processed += 1

    def on_confirm(self, frame):
        m = frame.method
        if isinstance(m, pika.spec.Basic.Nack):
            print("work: the broker refused a result", file=sys.stderr)
            self.failed = True
            self.shutdown()
            return
        if m.multiple:
            self.frontier = max(self.frontier, m.delivery_tag)
        else:
            self.singles.add(m.delivery_tag)
        while self.frontier + 1 in self.singles:
            self.frontier += 1
            self.singles.discard(self.frontier)
        # Acknowledge the orders whose results are safely queued, in one frame.
        last = None
        while self.pending and self.pending[0][0] <= self.frontier:
            last = self.pending.popleft()[1]
        if last is not None:
            self.ch.basic_ack(delivery_tag=last, multiple=True)

    def shutdown(self):
        self.stopping = True
        if self.conn.is_open:
            self.conn.close()
        else:
            self.conn.ioloop.stop()

    def run(self):
        self.conn.ioloop.start()
        print(f"work: {self.processed} orders processed", file=sys.stderr)
        return 1 if self.failed else 0


def work(args):
    import signal

    w = Worker(args)

    def stop(*_):
        w.conn.ioloop.add_callback_threadsafe(w.shutdown)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return w.run()


# --- tally -------------------------------------------------------------------


def tally(args):
    conn = pika.BlockingConnection(params(args.url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=args.prefetch)
    captured = collections.Counter()
    stock = collections.Counter()
    outcomes = collections.Counter()
    n = 0
    first_ns = None
    unacked = 0
    for method, _props, body in ch.consume(RESULTS):
        if first_ns is None:
            first_ns = unix_ns()
        r = json.loads(body)
        outcome = r["outcome"]
        outcomes[outcome] += 1
        if outcome == "paid":
            captured[r["currency"]] += r["amount_cents"]
            for sku, qty in r["items"]:
                stock[sku] += qty
        n += 1
        unacked += 1
        if unacked >= args.ack_every or n >= args.count:
            ch.basic_ack(delivery_tag=method.delivery_tag, multiple=True)
            unacked = 0
        if n >= args.count:
            break
    done_ns = unix_ns()
    ch.cancel()
    conn.close()
    for k, v in sorted(outcomes.items()):
        print(f"tally: {k:<16} {v:>10}", file=sys.stderr)
    for k, v in sorted(captured.items()):
        print(f"tally: {k:<16} {v // 100:>16}.{v % 100:02d}", file=sys.stderr)
    print(f"tally: {len(stock)} distinct SKUs", file=sys.stderr)
    print(f"tally: done_unix_ns={done_ns} orders={n}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    sub = ap.add_subparsers(dest="role", required=True)
    sub.add_parser("setup")
    p = sub.add_parser("publish")
    p.add_argument("--input", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--window", type=int, default=1000, help="unconfirmed messages at most")
    w = sub.add_parser("work")
    w.add_argument("--prefetch", type=int, default=500)
    t = sub.add_parser("tally")
    t.add_argument("--count", type=int, required=True)
    t.add_argument("--prefetch", type=int, default=1000)
    t.add_argument("--ack-every", type=int, default=250)
    args = ap.parse_args()
    sys.exit({"setup": setup, "publish": publish, "work": work, "tally": tally}[args.role](args) or 0)


if __name__ == "__main__":
    main()
