#!/usr/bin/env python3
"""An independent calculation of an ordergrid report's tallies.

Reads a JSON Lines input (a file, or - for stdin) and prints the report's
exact sections (orders, rejected, payments, stock) as JSON, following the
contract in README.md, written separately from the Rust implementation so
that the tests compare two readings of the contract. Poison orders
(tok_crash...) count as failed.

With a stock file (second argument), each distinct order that passes the
rules, in line order, gets all the units it asks for (a SKU twice in one
order needs both quantities) or none and is rejected out_of_stock; units of
declined and failed orders stay allocated for the rest of the run. The
output then also has rejected.out_of_stock and the inventory section.
"""
import json
import sys

I64_MAX = 2**63 - 1
I64_MIN = -(2**63)
REASONS = ["bad_currency", "no_items", "bad_sku", "bad_quantity", "bad_price", "amount_overflow"]
FIELDS = ["order_id", "customer_id", "currency", "items", "payment_token"]


class Malformed(Exception):
    pass


def no_constants(name):
    raise Malformed("non-standard constant " + name)


def pairs_hook(pairs):
    # serde rejects a repeated known field; unknown ones may repeat.
    seen = set()
    for k, _ in pairs:
        if k in seen and k in FIELDS + ["sku", "qty", "unit_price_cents"]:
            raise Malformed("duplicate field " + k)
        seen.add(k)
    return dict(pairs)


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and I64_MIN <= v <= I64_MAX


def parse(line):
    if len(line) > 65536:
        raise Malformed("too long")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("utf-8")
    try:
        obj = json.loads(text, parse_constant=no_constants, object_pairs_hook=pairs_hook)
    except ValueError:
        raise Malformed("json")
    if not isinstance(obj, dict):
        raise Malformed("not an object")
    for f in FIELDS:
        if f not in obj:
            raise Malformed("missing " + f)
    for f in ["order_id", "customer_id", "currency", "payment_token"]:
        if not isinstance(obj[f], str):
            raise Malformed("type " + f)
    if not isinstance(obj["items"], list):
        raise Malformed("items")
    for item in obj["items"]:
        if not isinstance(item, dict):
            raise Malformed("item")
        for f in ["sku", "qty", "unit_price_cents"]:
            if f not in item:
                raise Malformed("item field")
        if not isinstance(item["sku"], str) or not is_int(item["qty"]) or not is_int(item["unit_price_cents"]):
            raise Malformed("item type")
    n = len(obj["order_id"].encode("utf-8"))
    if n < 1 or n > 64:
        raise Malformed("order_id length")
    return obj


def rejection(o):
    c = o["currency"]
    if not (len(c) == 3 and all("A" <= ch <= "Z" for ch in c)):
        return "bad_currency"
    items = o["items"]
    if not items:
        return "no_items"
    if any(not (1 <= len(i["sku"].encode("utf-8")) <= 64) for i in items):
        return "bad_sku"
    if any(not (1 <= i["qty"] <= 1000) for i in items):
        return "bad_quantity"
    if any(i["unit_price_cents"] < 0 for i in items):
        return "bad_price"
    if sum(i["qty"] * i["unit_price_cents"] for i in items) > I64_MAX:
        return "amount_overflow"
    return None


def read_stock(path):
    on_hand = {}
    with open(path, "rb") as f:
        for raw in f.read().split(b"\n"):
            if all(b in b" \t\r" for b in raw):
                continue
            entry = json.loads(raw)
            on_hand[entry["sku"]] = entry["on_hand"]
    return on_hand


def allocate(free, items):
    need = {}
    for i in items:
        need[i["sku"]] = need.get(i["sku"], 0) + i["qty"]
    if any(free.get(sku, 0) < n for sku, n in need.items()):
        return False
    for sku, n in need.items():
        free[sku] -= n
    return True


def tally(stream, on_hand=None):
    orders = dict(lines=0, paid=0, declined=0, rejected=0, failed=0, duplicate=0, malformed=0)
    rejected = {r: 0 for r in REASONS}
    free = None
    if on_hand is not None:
        rejected["out_of_stock"] = 0
        free = dict(on_hand)
    payments = {}
    stock = {}
    seen = set()
    data = stream.read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for raw in lines:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if all(b in b" \t\r" for b in raw):
            continue
        orders["lines"] += 1
        try:
            o = parse(raw)
        except Malformed:
            orders["malformed"] += 1
            continue
        if o["order_id"] in seen:
            orders["duplicate"] += 1
            continue
        seen.add(o["order_id"])
        reason = rejection(o)
        if reason:
            orders["rejected"] += 1
            rejected[reason] += 1
            continue
        if free is not None and not allocate(free, o["items"]):
            orders["rejected"] += 1
            rejected["out_of_stock"] += 1
            continue
        token = o["payment_token"]
        if token.startswith("tok_crash"):
            orders["failed"] += 1
        elif token.startswith("tok_decline"):
            orders["declined"] += 1
        else:
            orders["paid"] += 1
            p = payments.setdefault(o["currency"], {"orders": 0, "captured_cents": 0})
            p["orders"] += 1
            p["captured_cents"] += sum(i["qty"] * i["unit_price_cents"] for i in o["items"])
            for i in o["items"]:
                stock[i["sku"]] = stock.get(i["sku"], 0) - i["qty"]
    result = {"orders": orders, "rejected": rejected, "payments": payments, "stock": stock}
    if on_hand is not None:
        result["inventory"] = {
            sku: {"on_hand": n, "sold": -stock.get(sku, 0), "available": n + stock.get(sku, 0)}
            for sku, n in on_hand.items()
        }
    return result


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "-"
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")
    on_hand = read_stock(sys.argv[2]) if len(sys.argv) > 2 else None
    json.dump(tally(stream, on_hand), sys.stdout, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
