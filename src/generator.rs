//! Deterministic synthetic order generator.
//!
//! This module owns the JSON Lines test input of the grid: a [`Generator`] streams
//! `count` order lines that depend only on `(count, seed, poison)`, byte for byte,
//! forever (no `rand` crate: a splitmix64 mixer seeded per line). It is used by the
//! `ordergrid-gen` binary and by the ventilator's `--generate N --seed S`.
//!
//! The mix (percentages of all lines, approximate):
//! - ~97.5% ordinary valid orders, of which ~3% of all lines carry a
//!   `tok_decline_*` token and ~1% a `tok_flaky_*` token; ~2% of them have an
//!   unknown extra field (some nested), ~0.5% of items an extra field, ~0.5% are
//!   written compactly (no spaces), ~0.5% with the fields in another order, and
//!   about 1 in 10,000 has a `\"` or `\u00e9` escape in `customer_id`;
//! - ~1% well-formed but rejected orders, one reason each: bad currency, no items,
//!   bad sku, bad quantity, bad (negative) price, amount overflow;
//! - ~1% malformed lines: not JSON, not an object, two objects, a missing field,
//!   a field of the wrong type, an `order_id` of 0 or 65 bytes, invalid UTF-8;
//!   plus one line longer than 65,536 bytes per 200,000 lines (at least one
//!   whenever `count >= 1000`);
//! - ~0.5% repeats of an earlier ordinary order's `order_id`, either byte-exact
//!   or with other content;
//! - with [`Generator::with_poison`], exactly that many otherwise valid orders
//!   whose token is `tok_crash`, evenly spread; never otherwise.
//!
//! Ordinary order ids are `o-<6 base-36 chars from the seed>-<line number>`, so
//! they are unique within a stream and differ between seeds.
//!
//! # One order model
//!
//! Every order is built once as a [`GeneratedOrder`], the fields that parsing
//! its line gives (what the ventilator's `--generate` takes without any JSON).
//! A line is rendered from those fields and a [`Form`]: its layout (compact,
//! field order, unknown fields), which parsing does not see. A malformed line
//! is a valid order rendered with one [`Flaw`] (a field left out or given a
//! raw value), or one of a few whole-line shapes (truncated, wrapped, two
//! objects, fixed garbage). Rejected orders are valid ones with one field's
//! value changed. Strings are escaped as JSON (non-ASCII as `\uXXXX`),
//! integers written with `itoa`.

/// Lines longer than this are malformed for the reader.
const MAX_LINE: u64 = 65_536;
/// One giant line per block of this many lines.
const GIANT_BLOCK: u64 = 200_000;
/// A block shorter than this gets no giant line.
const GIANT_MIN_BLOCK: u64 = 1_000;

/// Rates in lines per million.
const REJECT_PPM: u64 = 10_000;
const MALFORMED_PPM: u64 = 10_000;
const DUPLICATE_PPM: u64 = 5_000;

/// Earlier ordinary lines remembered for duplicates: the most recent ones, and a
/// uniform reservoir sample of all of them (for far-back repeats).
const RECENT_CAP: usize = 4_096;
const RESERVOIR_CAP: usize = 1_024;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// A line's independent random streams (the numbers seed them: changing one
/// changes every generated file).
#[derive(Debug, Clone, Copy)]
enum Stream {
    /// Whether the line is ordinary, rejected, malformed or a duplicate.
    Kind = 1,
    /// The order itself.
    Content = 2,
    /// What a rejected or altered copy changes.
    Altered = 3,
}

/// The token of a poison order.
const POISON_TOKEN: &str = "tok_crash";

/// A generated order as fields, exactly as parsing its JSON line would give
/// them (escapes undone, unknown fields dropped). Buffers are reused.
#[derive(Debug, Default, Clone)]
pub struct GeneratedOrder {
    pub order_id: String,
    pub customer_id: String,
    pub currency: &'static str,
    pub payment_token: &'static str,
    /// Every item's sku, back to back; `items` holds their byte ranges.
    pub skus: String,
    /// `(sku start, sku end, qty, unit_price_cents)`.
    pub items: Vec<(usize, usize, i64, i64)>,
}

impl GeneratedOrder {
    /// Appends an item whose sku `sku` appends to `skus`.
    fn push_item(&mut self, sku: impl FnOnce(&mut String), qty: i64, price: i64) {
        let start = self.skus.len();
        sku(&mut self.skus);
        self.items.push((start, self.skus.len(), qty, price));
    }

    /// Keeps the first `n` items, or adds `SKU-00001` x 1 at 0 up to `n`.
    fn resize_items(&mut self, n: usize) {
        self.items.truncate(n);
        self.skus.truncate(self.items.last().map_or(0, |it| it.1));
        while self.items.len() < n {
            self.push_item(|s| s.push_str("SKU-00001"), 1, 0);
        }
    }

    /// Replaces item `n`'s sku.
    fn set_sku(&mut self, n: usize, sku: &str) {
        let (start, end, ..) = self.items[n];
        self.skus.replace_range(start..end, sku);
        let shift = |at: usize| at + sku.len() - (end - start);
        self.items[n].1 = start + sku.len();
        for it in &mut self.items[n + 1..] {
            (it.0, it.1) = (shift(it.0), shift(it.1));
        }
    }

    fn set_qty(&mut self, n: usize, qty: i64) {
        self.items[n].2 = qty;
    }

    fn set_price(&mut self, n: usize, price: i64) {
        self.items[n].3 = price;
    }
}

/// Appends `n` in decimal.
fn push_int(s: &mut String, n: impl itoa::Integer) {
    s.push_str(itoa::Buffer::new().format(n));
}

/// A deterministic stream of synthetic order lines (see the module docs).
pub struct Generator {
    count: u64,
    next: u64,
    key: u64,
    /// `o-<6 base-36 chars>-`: the start of every ordinary order id.
    id_head: String,
    poison: u64,
    poison_k: u64,
    poison_at: u64,
    giant_at: u64,
    recent: Box<[u64; RECENT_CAP]>,
    recent_len: u64,
    reservoir: Box<[u64; RESERVOIR_CAP]>,
    reservoir_seen: u64,
    /// The order [`next_line`](Self::next_line) renders (buffers reused;
    /// boxed, as a `LineSource` holds a generator by value).
    scratch: Box<GeneratedOrder>,
}

/// What [`Generator::produce`] made of one line.
enum Made {
    /// The line is written out (a malformed one).
    Written,
    /// A plainly well-formed order, in the fields, to be laid out as this.
    Order(Form),
}

impl Generator {
    /// `count` lines, deterministic for (count, seed).
    pub fn new(count: u64, seed: u64) -> Generator {
        let key = mix64(seed ^ 0x6F72_6465_7267_7269); // "ordergri"
        let mut id_head = String::from("o-");
        let mut p = mix64(key ^ GOLDEN);
        for _ in 0..6 {
            id_head.push(char::from(
                b"0123456789abcdefghijklmnopqrstuvwxyz"[(p % 36) as usize],
            ));
            p /= 36;
        }
        id_head.push('-');
        Generator {
            count,
            next: 0,
            key,
            id_head,
            poison: 0,
            poison_k: 0,
            poison_at: u64::MAX,
            giant_at: u64::MAX,
            recent: Box::new([0; RECENT_CAP]),
            recent_len: 0,
            reservoir: Box::new([0; RESERVOIR_CAP]),
            reservoir_seen: 0,
            scratch: Box::default(),
        }
    }

    /// Also emit `poison` orders whose payment_token starts with `tok_crash` (they abort a worker),
    /// spread deterministically over the stream (they replace ordinary lines; count stays the same).
    ///
    /// `poison` is capped at `count`. Call it before the first [`next_line`](Self::next_line).
    pub fn with_poison(mut self, poison: u64) -> Generator {
        self.poison = poison.min(self.count);
        self.poison_k = 0;
        self.poison_at = self.poison_position(0);
        self
    }

    /// Appends the next line WITHOUT its trailing newline to `out` (does not clear it); false when all `count` lines are out.
    pub fn next_line(&mut self, out: &mut Vec<u8>) -> bool {
        let mut order = std::mem::take(&mut *self.scratch);
        let made = self.produce(out, &mut order);
        if let Some(Made::Order(form)) = &made {
            write_json(out, &order, form, None);
        }
        *self.scratch = order;
        made.is_some()
    }

    /// The next line as [`next_line`](Self::next_line) would write it, but a
    /// plainly well-formed order comes as fields in `order` instead of JSON
    /// (what parsing its line would give), so a ventilator need not write
    /// and parse JSON it made itself. `Some(true)`: `order` holds it;
    /// `Some(false)`: `line` holds the line; `None`: the end.
    pub fn next_record(&mut self, line: &mut Vec<u8>, order: &mut GeneratedOrder) -> Option<bool> {
        match self.produce(line, order)? {
            Made::Written => Some(false),
            Made::Order(_) => Some(true),
        }
    }

    /// The next line: a malformed one is written to `out`, an order's fields
    /// filled in `o`.
    fn produce(&mut self, out: &mut Vec<u8>, o: &mut GeneratedOrder) -> Option<Made> {
        if self.next >= self.count {
            return None;
        }
        let i = self.next;
        self.next += 1;

        if i.is_multiple_of(GIANT_BLOCK) {
            self.giant_at = self.giant_position(i / GIANT_BLOCK);
        }

        let head = &self.id_head;
        let mut content = Rng::for_line(self.key, i, Stream::Content);
        if i == self.poison_at {
            self.poison_k += 1;
            self.poison_at = self.poison_position(self.poison_k);
            let form = ordinary(&mut content, i, head, o);
            o.payment_token = POISON_TOKEN;
            return Some(Made::Order(form));
        }
        if i == self.giant_at {
            let mut form = ordinary(&mut content, i, head, o);
            form.extra = Extra::Padding(MAX_LINE as usize + content.below(20_000) as usize);
            form.extra_pos = content.below(6) as u8;
            write_json(out, o, &form, None);
            return Some(Made::Written);
        }

        let mut k = Rng::for_line(self.key, i, Stream::Kind);
        let r = k.below(1_000_000);
        if r < REJECT_PPM {
            Some(Made::Order(rejected(&mut k, &mut content, i, head, o)))
        } else if r < REJECT_PPM + MALFORMED_PPM {
            self.malformed(&mut k, &mut content, i, o, out);
            Some(Made::Written)
        } else if let Some(j) = (r < REJECT_PPM + MALFORMED_PPM + DUPLICATE_PPM)
            .then(|| self.earlier(&mut k))
            .flatten()
        {
            let form = if k.below(10) < 6 {
                // Byte-exact repeat: line j was written from exactly this.
                ordinary(&mut Rng::for_line(self.key, j, Stream::Content), j, head, o)
            } else {
                ordinary(&mut Rng::for_line(self.key, i, Stream::Altered), j, head, o)
            };
            Some(Made::Order(form))
        } else {
            let form = ordinary(&mut content, i, head, o);
            self.remember(i, &mut k);
            Some(Made::Order(form))
        }
    }
    /// Line index of poison order `k` (u64::MAX past the last): the middles of
    /// `poison` equal slices of the stream, strictly increasing and `< count`.
    fn poison_position(&self, k: u64) -> u64 {
        if k >= self.poison {
            return u64::MAX;
        }
        ((2 * k as u128 + 1) * self.count as u128 / (2 * self.poison as u128)) as u64
    }

    fn is_poison_position(&self, i: u64) -> bool {
        if self.poison == 0 {
            return false;
        }
        let k = (i as u128 * self.poison as u128 / self.count as u128) as u64;
        (k.saturating_sub(1)..=k + 1).any(|k| self.poison_position(k) == i)
    }

    /// Line index of the giant line of block `b` (u64::MAX for none): a
    /// seed-derived slot of the block that is not taken by a poison order.
    fn giant_position(&self, b: u64) -> u64 {
        let start = b * GIANT_BLOCK;
        let len = (self.count - start).min(GIANT_BLOCK);
        if len < GIANT_MIN_BLOCK {
            return u64::MAX;
        }
        let first = mix64(self.key ^ mix64(b ^ 0x6769_616E_7421)) % len;
        (0..len)
            .map(|step| start + (first + step) % len)
            .find(|&i| !self.is_poison_position(i))
            .unwrap_or(u64::MAX)
    }

    /// Records ordinary line `i` as a candidate for later duplicates.
    fn remember(&mut self, i: u64, k: &mut Rng) {
        self.recent[(self.recent_len % RECENT_CAP as u64) as usize] = i;
        self.recent_len += 1;
        self.reservoir_seen += 1;
        if self.reservoir_seen <= RESERVOIR_CAP as u64 {
            self.reservoir[(self.reservoir_seen - 1) as usize] = i;
        } else {
            let slot = k.below(self.reservoir_seen);
            if slot < RESERVOIR_CAP as u64 {
                self.reservoir[slot as usize] = i;
            }
        }
    }

    /// An earlier ordinary line to repeat: a recent one or one from anywhere before.
    fn earlier(&self, k: &mut Rng) -> Option<u64> {
        if self.recent_len == 0 {
            return None;
        }
        if k.below(2) == 0 {
            let n = self.recent_len.min(RECENT_CAP as u64);
            let back = k.below(n);
            let idx = (self.recent_len - 1 - back) % RECENT_CAP as u64;
            Some(self.recent[idx as usize])
        } else {
            let n = self.reservoir_seen.min(RESERVOIR_CAP as u64);
            Some(self.reservoir[k.below(n) as usize])
        }
    }

    /// Writes one malformed line: every shape the reader must refuse. Each
    /// starts from ordinary order `i`; most spoil it with one [`Flaw`].
    fn malformed(
        &self,
        k: &mut Rng,
        content: &mut Rng,
        i: u64,
        o: &mut GeneratedOrder,
        out: &mut Vec<u8>,
    ) {
        let mut form = ordinary(content, i, &self.id_head, o);
        let variant = k.below(MALFORMED_VARIANTS);
        if variant < 12 {
            return self.not_an_order(variant, k, content, i, o, &form, out);
        }
        let item =
            |content: &mut Rng, o: &GeneratedOrder| content.below(o.items.len() as u64) as usize;
        let mut raw = Vec::new();
        let flaw = match variant {
            // A missing field, each in turn.
            v @ 12..=16 => (At::Field(FIELDS_NORMAL[v as usize - 12]), Patch::Omit),
            // Wrong types.
            v @ 17..=20 => {
                let bad = [b"2.0" as &[u8], b"1e3", b"\"2\"", b"true"][v as usize - 17];
                (
                    At::ItemField(item(content, o), ItemField::Qty),
                    Patch::Raw(bad),
                )
            }
            21 => {
                let bad = k.pick(&[b"9223372036854775808" as &[u8], b"-9223372036854775809"]);
                (
                    At::ItemField(item(content, o), ItemField::Price),
                    Patch::Raw(bad),
                )
            }
            22 => (At::Field(Field::Currency), Patch::Raw(b"5")),
            23 => (At::Field(Field::Items), Patch::Raw(b"{}")),
            24 => (At::Field(Field::Items), Patch::Raw(b"[1]")),
            25 => {
                // A non-object among object items.
                let n = o.items.len().clamp(2, 3);
                o.resize_items(n);
                let bad = k.pick(&[b"1" as &[u8], b"null", b"\"SKU-00001\"", b"[]"]);
                (At::Item(content.below(n as u64) as usize), Patch::Raw(bad))
            }
            v @ 26..=28 => {
                let field = [ItemField::Sku, ItemField::Qty, ItemField::Price][v as usize - 26];
                (At::ItemField(item(content, o), field), Patch::Omit)
            }
            29 => {
                o.order_id.clear();
                return write_json(out, o, &form, None);
            }
            30 => {
                // 65 bytes.
                o.order_id.push('-');
                while o.order_id.len() < 65 {
                    o.order_id.push('x');
                }
                return write_json(out, o, &form, None);
            }
            31 => {
                if k.below(2) == 0 {
                    raw.extend_from_slice(itoa::Buffer::new().format(i + 1).as_bytes());
                    (At::Field(Field::OrderId), Patch::Raw(&raw))
                } else {
                    let bad = k.pick(&[b"null" as &[u8], b"7", b"[\"tok_visa\"]"]);
                    (At::Field(Field::PaymentToken), Patch::Raw(bad))
                }
            }
            // Invalid UTF-8 inside a string.
            _ => {
                let bad = k.pick(INVALID_UTF8);
                let at = match k.below(3) {
                    0 => {
                        // The customer's number (what follows the last '-'), unescaped.
                        let number = o.customer_id.rsplit('-').next().unwrap_or_default();
                        raw.extend_from_slice(b"\"c-");
                        raw.extend_from_slice(number.as_bytes());
                        At::Field(Field::CustomerId)
                    }
                    1 => {
                        raw.extend_from_slice(b"\"SKU-00042");
                        At::ItemField(item(content, o), ItemField::Sku)
                    }
                    _ => {
                        form.extra = Extra::InvalidNote(bad);
                        form.extra_pos = content.below(6) as u8;
                        return write_json(out, o, &form, None);
                    }
                };
                raw.extend_from_slice(bad);
                raw.push(b'"');
                (at, Patch::Raw(&raw))
            }
        };
        write_json(out, o, &form, Some(flaw));
    }

    /// The malformed lines that are no order with a flaw: not JSON, not an
    /// object, two objects.
    #[allow(clippy::too_many_arguments)]
    fn not_an_order(
        &self,
        variant: u64,
        k: &mut Rng,
        content: &mut Rng,
        i: u64,
        o: &mut GeneratedOrder,
        form: &Form,
        out: &mut Vec<u8>,
    ) {
        match variant {
            // Not JSON.
            0 | 1 => {
                // Truncated: a proper prefix of an object (no closing brace).
                let start = out.len();
                write_json(out, o, form, None);
                let cut = 1 + content.below((out.len() - start) as u64 - 1);
                out.truncate(start + cut as usize);
            }
            2 => out.extend_from_slice(b"garbage"),
            3 => out.extend_from_slice(k.pick(GARBAGE)),
            4 => {
                // A trailing comma inside the object.
                write_json(out, o, form, None);
                out.pop();
                out.extend_from_slice(b",}");
            }
            // Not an object.
            5 => out.extend_from_slice(b"[1,2]"),
            6 => out.extend_from_slice(b"\"str\""),
            7 => out.extend_from_slice(b"42"),
            8 => out.extend_from_slice(b"null"),
            9 => out.extend_from_slice(k.pick(NOT_OBJECT)),
            10 => {
                out.push(b'[');
                write_json(out, o, form, None);
                out.push(b']');
            }
            // Two objects on one line.
            _ => {
                write_json(out, o, form, None);
                if k.below(2) == 0 {
                    out.push(b' ');
                }
                let altered = &mut Rng::for_line(self.key, i, Stream::Altered);
                let form = ordinary(altered, i, &self.id_head, o);
                write_json(out, o, &form, None);
            }
        }
    }
}
const MALFORMED_VARIANTS: u64 = 34;
const GARBAGE: &[&[u8]] = &[
    b"garbage",
    b"not json at all",
    b"{order_id: o-1}",
    b"{'order_id': 'o-1'}",
    b"}{",
    b"{\"order_id\" \"o-1\"}",
    b"<order id=\"o-1\"/>",
];
const NOT_OBJECT: &[&[u8]] = &[
    b"true",
    b"[]",
    b"-7.5",
    b"\"{\\\"order_id\\\": \\\"o-1\\\"}\"",
];
const INVALID_UTF8: &[&[u8]] = &[
    b"\xFF",
    b"\xFE\xFF",
    b"\xC3\x28",
    b"\xC0\xAF",
    b"\xED\xA0\x80",
    b"\x80",
];

const REJECT_VARIANTS: u64 = 15;
const BAD_CURRENCIES: [&str; 5] = ["usd", "US", "EURO", "U$D", ""];
/// A well-formed order refused for exactly one reason.
fn rejected(k: &mut Rng, content: &mut Rng, i: u64, head: &str, o: &mut GeneratedOrder) -> Form {
    let form = ordinary(content, i, head, o);
    let bad = content.below(o.items.len() as u64) as usize;
    let huge = |content: &mut Rng| (1i64 << 62) + content.below(1_000_000_000) as i64;
    match k.below(REJECT_VARIANTS) {
        v @ 0..=4 => o.currency = BAD_CURRENCIES[v as usize],
        5 => o.resize_items(0),
        6 => o.set_sku(bad, ""),
        7 => o.set_sku(bad, LONG_SKU),
        8 => o.set_qty(bad, 0),
        9 => o.set_qty(bad, -1),
        10 => o.set_qty(bad, 1001),
        11 => o.set_price(bad, -(content.range(1, 200_000) as i64)),
        12 => {
            o.set_qty(bad, 1000);
            o.set_price(bad, i64::MAX);
        }
        13 => {
            // Each line total fits; their sum does not.
            o.resize_items(2);
            for n in 0..2 {
                o.set_qty(n, 1);
                o.set_price(n, huge(content));
            }
        }
        _ => {
            o.set_qty(bad, 2);
            o.set_price(bad, huge(content));
        }
    }
    form
}

/// 65 bytes: one too many.
const LONG_SKU: &str = "SKU-XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX";

/// Builds ordinary valid order `line` into `o` from `rng` only (so that a
/// byte-exact duplicate can rebuild it later), and returns its layout.
fn ordinary(rng: &mut Rng, line: u64, head: &str, o: &mut GeneratedOrder) -> Form {
    // A fifth of the orders come from the first thousand (repeat) customers.
    let (regular, c) = rng.two(5, 100_000);
    let cust = 1 + if regular == 0 { c % 1_000 } else { c };
    let (style, cur) = rng.two(20_000, 100);
    o.order_id.clear();
    o.order_id.push_str(head);
    push_int(&mut o.order_id, line + 1);
    o.customer_id.clear();
    o.customer_id.push_str(match style {
        0 => "c-\"vip\"-",
        1 => "c-caf\u{e9}-",
        _ => "c-",
    });
    push_int(&mut o.customer_id, cust);
    o.currency = CURRENCY_NAMES[CURRENCY_TABLE[cur as usize] as usize];
    let (ni, tok) = rng.two(100, 1_000);
    let n_items = 1 + N_ITEMS_TABLE[ni as usize] as usize;
    o.skus.clear();
    o.items.clear();
    let mut item_extra = [None; 4];
    for extra in &mut item_extra[..n_items] {
        *extra = ordinary_item(rng, o);
    }
    o.payment_token = TOKEN_NAMES[TOKEN_TABLE[tok as usize] as usize];
    let (ex, shape) = rng.two(1_000, 1_000);
    let (extra, extra_pos) = if ex < 20 {
        let (pick, pos) = rng.two(EXTRA_FIELDS.len() as u32, 6);
        let (key, value) = EXTRA_FIELDS[pick as usize];
        (Extra::Field(key, value), pos as u8)
    } else {
        (Extra::None, 0)
    };
    let fields = match shape {
        5..=7 => &FIELDS_REVERSED,
        8..=9 => &FIELDS_MIXED,
        _ => &FIELDS_NORMAL,
    };
    Form {
        compact: shape < 5,
        fields,
        extra,
        extra_pos,
        item_extra,
    }
}

/// Appends an ordinary item to `o`; returns its unknown field, if any.
fn ordinary_item(rng: &mut Rng, o: &mut GeneratedOrder) -> Option<(&'static [u8], &'static [u8])> {
    // Square-law skew: SKU-00001 is the most popular, the top 100 take ~14%.
    let (r, q) = rng.two(5_000, 100);
    let sku = r * r / 5_000 + 1;
    let qty = 1 + QTY_TABLE[q as usize] as i64;
    let (tier, x) = rng.two(1_000, u32::MAX);
    let tier = PRICE_TIER_TABLE[tier as usize] as usize;
    let price = PRICE_TIER_LO[tier] + ((x as u64 * PRICE_TIER_SPAN[tier]) >> 32);
    // Most prices end in 99 or 00.
    let (round, ex) = rng.two(4, 1_000);
    let price = if price >= 100 {
        let base = price / 100 * 100;
        [base + 99, base + 99, base, price][round as usize].min(200_000)
    } else {
        price
    };
    let write_sku = |s: &mut String| {
        // SKU-<5 digits, zero-padded>.
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(sku);
        s.push_str(&"SKU-00000"[..9 - digits.len()]);
        s.push_str(digits);
    };
    o.push_item(write_sku, qty, price as i64);
    (ex < 5).then(|| EXTRA_ITEM_FIELDS[ex as usize % EXTRA_ITEM_FIELDS.len()])
}
// ---------------------------------------------------------------------------
// Ordinary orders. Weighted choices go through lookup tables (one draw, no
// branches) and most draws take two 32-bit halves of one 64-bit output.

const CURRENCY_NAMES: [&str; 8] = ["USD", "EUR", "GBP", "JPY", "CAD", "AUD", "CHF", "SEK"];
/// Percent of ordinary orders per currency.
const CURRENCY_TABLE: [u8; 100] = table(&[40, 25, 10, 7, 6, 5, 4, 3]);

const TOKEN_NAMES: [&str; 12] = [
    "tok_visa",
    "tok_mastercard",
    "tok_amex",
    "tok_discover",
    "tok_paypal",
    "tok_decline_insufficient_funds",
    "tok_decline_expired_card",
    "tok_decline_stolen_card",
    "tok_decline_do_not_honor",
    "tok_flaky_timeout",
    "tok_flaky_gateway_503",
    "tok_flaky_rate_limited",
];
/// Per mille of ordinary orders per token: 3.1% declined, 1% flaky.
const TOKEN_TABLE: [u8; 1000] = table(&[432, 288, 115, 77, 47, 8, 8, 8, 7, 4, 3, 3]);

/// Percent of orders with 1, 2, 3, 4 items.
const N_ITEMS_TABLE: [u8; 100] = table(&[50, 30, 15, 5]);
/// Percent of items with qty 1..=10.
const QTY_TABLE: [u8; 100] = table(&[60, 20, 12, 2, 1, 1, 1, 1, 1, 1]);
/// Per mille of items per price tier: free, cheap, mid, expensive.
const PRICE_TIER_TABLE: [u8; 1000] = table(&[5, 600, 300, 95]);
const PRICE_TIER_LO: [u64; 4] = [0, 99, 10_000, 50_001];
const PRICE_TIER_SPAN: [u64; 4] = [1, 9_901, 40_001, 150_000];

/// Unknown order fields (key, raw JSON value), to be ignored by the reader.
const EXTRA_FIELDS: [(&[u8], &[u8]); 5] = [
    (b"note", b"\"gift\""),
    (b"channel", b"\"web\""),
    (b"coupon", b"null"),
    (b"priority", b"2"),
    (
        b"meta",
        b"{\"source\": \"app\", \"tags\": [\"a\", \"b\"], \"ratio\": 1.5e0, \"ok\": true}",
    ),
];
/// Unknown item fields (key, raw JSON value).
const EXTRA_ITEM_FIELDS: [(&[u8], &[u8]); 3] = [
    (b"gift_wrap", b"true"),
    (b"discount", b"{\"code\": \"SPRING\", \"pct\": 10}"),
    (b"color", b"\"blue\""),
];

/// A lookup table of `N` slots holding `i` in `weights[i]` of them.
const fn table<const N: usize>(weights: &[u64]) -> [u8; N] {
    let mut t = [0u8; N];
    let mut slot = 0;
    let mut i = 0;
    while i < weights.len() {
        let mut w = 0;
        while w < weights[i] {
            t[slot] = i as u8;
            slot += 1;
            w += 1;
        }
        i += 1;
    }
    assert!(slot == N, "weights must fill the table");
    t
}

// ---------------------------------------------------------------------------
// Layouts, flaws and the JSON written from the fields.

/// How an order's line is laid out beyond its fields: what parsing it does
/// not notice (or, for the giant and invalid-note lines, where it breaks).
#[derive(Clone, Copy)]
struct Form {
    /// No spaces after `,` and `:`.
    compact: bool,
    fields: &'static [Field; 5],
    extra: Extra,
    /// Before which field (0..=5) the extra field goes.
    extra_pos: u8,
    /// Each item's unknown field.
    item_extra: [Option<(&'static [u8], &'static [u8])>; 4],
}

/// An order field the contract knows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    OrderId,
    CustomerId,
    Currency,
    Items,
    PaymentToken,
}

impl Field {
    fn key(self) -> &'static [u8] {
        match self {
            Field::OrderId => b"order_id",
            Field::CustomerId => b"customer_id",
            Field::Currency => b"currency",
            Field::Items => b"items",
            Field::PaymentToken => b"payment_token",
        }
    }
}

const FIELDS_NORMAL: [Field; 5] = [
    Field::OrderId,
    Field::CustomerId,
    Field::Currency,
    Field::Items,
    Field::PaymentToken,
];
const FIELDS_REVERSED: [Field; 5] = [
    Field::PaymentToken,
    Field::Items,
    Field::Currency,
    Field::CustomerId,
    Field::OrderId,
];
const FIELDS_MIXED: [Field; 5] = [
    Field::Currency,
    Field::OrderId,
    Field::Items,
    Field::PaymentToken,
    Field::CustomerId,
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum ItemField {
    Sku,
    Qty,
    Price,
}

impl ItemField {
    fn key(self) -> &'static [u8] {
        match self {
            ItemField::Sku => b"sku",
            ItemField::Qty => b"qty",
            ItemField::Price => b"unit_price_cents",
        }
    }
}

/// The unknown order field a line carries.
#[derive(Clone, Copy)]
enum Extra {
    None,
    /// Key and raw JSON value.
    Field(&'static [u8], &'static [u8]),
    /// `"note": "gift<bad bytes>"`.
    InvalidNote(&'static [u8]),
    /// `"padding": "xxx…"` with this many x.
    Padding(usize),
}

/// The one thing wrong with a malformed order's JSON: where, and what.
type Flaw<'a> = Option<(At, Patch<'a>)>;

/// A place in an order's JSON.
#[derive(Clone, Copy, PartialEq, Eq)]
enum At {
    Field(Field),
    /// The whole of item `n`.
    Item(usize),
    ItemField(usize, ItemField),
}

#[derive(Clone, Copy)]
enum Patch<'a> {
    /// Left out (with its key).
    Omit,
    /// This raw JSON instead of the value.
    Raw(&'a [u8]),
}

/// The flaw's patch when it is at `at`.
#[inline(always)]
fn patch_at<'a>(flaw: Flaw<'a>, at: At) -> Option<Patch<'a>> {
    flaw.filter(|&(place, _)| place == at)
        .map(|(_, patch)| patch)
}

/// The comma state of one JSON object being written; `C` is compact (no spaces).
struct Obj<const C: bool> {
    first: bool,
}

impl<const C: bool> Obj<C> {
    const COMMA: &'static [u8] = if C { b"," } else { b", " };
    const COLON: &'static [u8] = if C { b":" } else { b": " };

    fn new() -> Self {
        Obj { first: true }
    }

    #[inline(always)]
    fn key(&mut self, out: &mut Vec<u8>, name: &[u8]) {
        if !self.first {
            out.extend_from_slice(Self::COMMA);
        }
        self.first = false;
        out.push(b'"');
        out.extend_from_slice(name);
        out.push(b'"');
        out.extend_from_slice(Self::COLON);
    }
}

/// Appends the JSON line of order `o` laid out as `form`, spoilt by `flaw`.
fn write_json(out: &mut Vec<u8>, o: &GeneratedOrder, form: &Form, flaw: Flaw) {
    out.reserve(512);
    if form.compact {
        write_order::<true>(out, o, form, flaw);
    } else {
        write_order::<false>(out, o, form, flaw);
    }
}

fn write_order<const C: bool>(out: &mut Vec<u8>, o: &GeneratedOrder, form: &Form, flaw: Flaw) {
    let mut obj = Obj::<C>::new();
    out.push(b'{');
    for (pos, &field) in form.fields.iter().enumerate() {
        if pos == form.extra_pos as usize {
            write_extra(out, &mut obj, form.extra);
        }
        let patch = patch_at(flaw, At::Field(field));
        if let Some(Patch::Omit) = patch {
            continue;
        }
        obj.key(out, field.key());
        match (patch, field) {
            (Some(Patch::Raw(raw)), _) => out.extend_from_slice(raw),
            (_, Field::OrderId) => write_str(out, &o.order_id),
            (_, Field::CustomerId) => write_str(out, &o.customer_id),
            (_, Field::Currency) => write_str(out, o.currency),
            (_, Field::Items) => write_items::<C>(out, o, form, flaw),
            (_, Field::PaymentToken) => write_str(out, o.payment_token),
        }
    }
    if form.extra_pos as usize >= form.fields.len() {
        write_extra(out, &mut obj, form.extra);
    }
    out.push(b'}');
}

#[inline]
fn write_extra<const C: bool>(out: &mut Vec<u8>, obj: &mut Obj<C>, extra: Extra) {
    match extra {
        Extra::None => {}
        Extra::Field(key, value) => {
            obj.key(out, key);
            out.extend_from_slice(value);
        }
        Extra::InvalidNote(bad) => {
            obj.key(out, b"note");
            out.extend_from_slice(b"\"gift");
            out.extend_from_slice(bad);
            out.push(b'"');
        }
        Extra::Padding(n) => {
            obj.key(out, b"padding");
            out.push(b'"');
            out.resize(out.len() + n, b'x');
            out.push(b'"');
        }
    }
}

#[inline]
fn write_items<const C: bool>(out: &mut Vec<u8>, o: &GeneratedOrder, form: &Form, flaw: Flaw) {
    out.push(b'[');
    for (n, &(start, end, qty, price)) in o.items.iter().enumerate() {
        if n > 0 {
            out.extend_from_slice(Obj::<C>::COMMA);
        }
        if let Some(Patch::Raw(raw)) = patch_at(flaw, At::Item(n)) {
            out.extend_from_slice(raw);
            continue;
        }
        let mut obj = Obj::<C>::new();
        out.push(b'{');
        for field in [ItemField::Sku, ItemField::Qty, ItemField::Price] {
            let patch = patch_at(flaw, At::ItemField(n, field));
            if let Some(Patch::Omit) = patch {
                continue;
            }
            obj.key(out, field.key());
            match (patch, field) {
                (Some(Patch::Raw(raw)), _) => out.extend_from_slice(raw),
                (_, ItemField::Sku) => write_str(out, &o.skus[start..end]),
                (_, ItemField::Qty) => write_int(out, qty),
                (_, ItemField::Price) => write_int(out, price),
            }
        }
        if let Some((key, value)) = form.item_extra[n] {
            obj.key(out, key);
            out.extend_from_slice(value);
        }
        out.push(b'}');
    }
    out.push(b']');
}

/// The bytes a JSON string holds as they are: printable ASCII but `"` and `\`.
const PLAIN: [bool; 256] = {
    let mut plain = [false; 256];
    let mut b = b' ';
    while b <= b'~' {
        plain[b as usize] = b != b'"' && b != b'\\';
        b += 1;
    }
    plain
};

/// Appends `s` as a JSON string: `"` and `\` escaped, and every character
/// outside printable ASCII as `\uXXXX` (lowercase hex).
#[inline(always)]
fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    if s.bytes().all(|b| PLAIN[b as usize]) {
        out.extend_from_slice(s.as_bytes());
    } else {
        for c in s.chars() {
            match c {
                '"' | '\\' => out.extend_from_slice(&[b'\\', c as u8]),
                ' '..='~' => out.push(c as u8),
                _ => {
                    for unit in c.encode_utf16(&mut [0; 2]) {
                        let hex = |shift: u16| b"0123456789abcdef"[(*unit >> shift & 0xF) as usize];
                        out.extend_from_slice(&[b'\\', b'u', hex(12), hex(8), hex(4), hex(0)]);
                    }
                }
            }
        }
    }
    out.push(b'"');
}

#[inline]
fn write_int(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

// ---------------------------------------------------------------------------
// PRNG: splitmix64, one independent stream per (line, purpose). The tests
// that need random data use it too.

#[inline]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(crate) struct Rng(u64);

impl Rng {
    /// A stream from any seed.
    #[cfg(test)]
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    #[inline]
    fn for_line(key: u64, line: u64, stream: Stream) -> Rng {
        let stream = stream as u64;
        Rng(key ^ mix64(line.wrapping_mul(GOLDEN) ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03)))
    }

    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix64(self.0)
    }

    /// Uniform-enough in `0..n` (0 when n is 0).
    #[inline]
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// [`below`](Self::below) for a length or an index.
    #[cfg(test)]
    pub(crate) fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    #[cfg(test)]
    pub(crate) fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    #[inline]
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    #[inline]
    pub(crate) fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }

    /// Two draws from one output: uniform-enough in `0..n1` and `0..n2`.
    #[inline]
    fn two(&mut self, n1: u32, n2: u32) -> (u32, u32) {
        let x = self.next_u64();
        (
            (((x & 0xFFFF_FFFF) * n1 as u64) >> 32) as u32,
            (((x >> 32) * n2 as u64) >> 32) as u32,
        )
    }
}

/// A stock file for the orders of `generator` (one `{"sku", "on_hand"}` line
/// per SKU, sorted by SKU): `ratio` times each SKU's demand (the units its
/// well-formed orders ask for), rounded down, except that about 1 SKU in 100
/// is missing (orders for it are out of stock), the 3 most wanted SKUs get a
/// tenth of that (a flash sale: they run out early), and 3 SKUs nobody orders
/// are listed with 10 units.
pub fn write_stock(
    mut generator: Generator,
    ratio: f64,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    let demand = demand_by_sku(&mut generator);
    let mut hot: Vec<(&String, &i64)> = demand.iter().collect();
    hot.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    let hot: Vec<&String> = hot.into_iter().take(3).map(|(s, _)| s).collect();
    let mut skus: Vec<(String, i64)> = demand
        .iter()
        .filter(|(sku, _)| !mix64(fnv(sku.as_bytes())).is_multiple_of(100))
        .map(|(sku, &units)| {
            let share = if hot.contains(&sku) {
                ratio / 10.0
            } else {
                ratio
            };
            (
                sku.clone(),
                (units as f64 * share).floor().clamp(0.0, i64::MAX as f64) as i64,
            )
        })
        .collect();
    skus.extend((1..=3).map(|i| (format!("SKU-UNSOLD-{i}"), 10)));
    skus.sort();
    for (sku, on_hand) in skus {
        let sku = serde_json::Value::String(sku);
        writeln!(out, "{{\"sku\": {sku}, \"on_hand\": {on_hand}}}")?;
    }
    Ok(())
}

/// Units asked per SKU by the well-formed orders of a stream (valid SKUs only).
fn demand_by_sku(generator: &mut Generator) -> std::collections::BTreeMap<String, i64> {
    let mut demand = std::collections::BTreeMap::new();
    let mut line = Vec::new();
    let mut order = GeneratedOrder::default();
    loop {
        line.clear();
        let items: Vec<(String, i64)> = match generator.next_record(&mut line, &mut order) {
            None => break,
            Some(true) => order
                .items
                .iter()
                .map(|&(s, e, q, _)| (order.skus[s..e].to_owned(), q))
                .collect(),
            Some(false) => match crate::order::parse_line(&line) {
                crate::order::Line::Order(o) => {
                    o.items.iter().map(|i| (i.sku.to_string(), i.qty)).collect()
                }
                _ => continue,
            },
        };
        for (sku, qty) in items {
            if (1..=64).contains(&sku.len()) && (1..=1000).contains(&qty) {
                *demand.entry(sku).or_insert(0i64) += qty;
            }
        }
    }
    demand
}

/// FNV-1a: a SKU's stable hash (which SKUs a stock file leaves out).
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::collections::{BTreeMap, HashMap, HashSet};

    fn lines(count: u64, seed: u64, poison: u64) -> Vec<Vec<u8>> {
        let mut g = Generator::new(count, seed).with_poison(poison);
        let mut v = Vec::new();
        let mut buf = Vec::new();
        while {
            buf.clear();
            g.next_line(&mut buf)
        } {
            v.push(buf.clone());
        }
        v
    }

    fn stream(count: u64, seed: u64, poison: u64) -> Vec<u8> {
        let mut g = Generator::new(count, seed).with_poison(poison);
        let mut out = Vec::new();
        while g.next_line(&mut out) {
            out.push(b'\n');
        }
        out
    }

    /// What a line is, by its shape, independently of the generator's own labels.
    fn classify(line: &[u8]) -> String {
        if line.len() as u64 > MAX_LINE {
            return "too_long".into();
        }
        if std::str::from_utf8(line).is_err() {
            return "invalid_utf8".into();
        }
        let mut it = serde_json::Deserializer::from_slice(line).into_iter::<Value>();
        let v = match it.next() {
            Some(Ok(v)) => v,
            Some(Err(e)) if e.is_eof() => return "not_json_truncated".into(),
            Some(Err(_)) => return "not_json".into(),
            None => return "empty".into(),
        };
        match it.next() {
            None => {}
            Some(Ok(w)) if v.is_object() && w.is_object() => return "two_objects".into(),
            Some(_) => return "not_json_trailing".into(),
        }
        let obj = match v {
            Value::Object(m) => m,
            Value::Array(_) => return "not_object_array".into(),
            Value::String(_) => return "not_object_string".into(),
            Value::Number(_) => return "not_object_number".into(),
            Value::Null => return "not_object_null".into(),
            Value::Bool(_) => return "not_object_bool".into(),
        };
        for f in [
            "order_id",
            "customer_id",
            "currency",
            "items",
            "payment_token",
        ] {
            if !obj.contains_key(f) {
                return format!("missing_{f}");
            }
        }
        let Some(id) = obj["order_id"].as_str() else {
            return "order_id_not_string".into();
        };
        if id.is_empty() {
            return "order_id_empty".into();
        }
        if id.len() > 64 {
            return format!("order_id_len_{}", id.len());
        }
        if !obj["customer_id"].is_string() {
            return "customer_id_not_string".into();
        }
        let Some(currency) = obj["currency"].as_str() else {
            return "currency_not_string".into();
        };
        if !obj["payment_token"].is_string() {
            return "token_not_string".into();
        }
        let items = match &obj["items"] {
            Value::Array(a) => a,
            Value::Object(_) => return "items_object".into(),
            _ => return "items_not_array".into(),
        };
        let mut parsed = Vec::new();
        for item in items {
            let Some(item) = item.as_object() else {
                return "item_not_object".into();
            };
            for f in ["sku", "qty", "unit_price_cents"] {
                if !item.contains_key(f) {
                    return format!("item_missing_{f}");
                }
            }
            let Some(sku) = item["sku"].as_str() else {
                return "sku_not_string".into();
            };
            let qty = match &item["qty"] {
                Value::Number(n) if n.is_i64() => n.as_i64().unwrap(),
                Value::Number(n) if n.is_f64() => return format!("qty_float_{}", n),
                Value::Number(_) => return "qty_too_big".into(),
                Value::String(_) => return "qty_string".into(),
                Value::Bool(_) => return "qty_bool".into(),
                _ => return "qty_other".into(),
            };
            let price = match &item["unit_price_cents"] {
                Value::Number(n) if n.is_i64() => n.as_i64().unwrap(),
                Value::Number(n) if n.is_u64() => return "price_above_i64".into(),
                Value::Number(n) if n.is_f64() => return "price_float".into(),
                _ => return "price_other".into(),
            };
            parsed.push((sku.len(), qty, price));
        }
        // Well-formed: is it valid?
        let ok_currency = ["USD", "EUR", "GBP", "JPY", "CAD", "AUD", "CHF", "SEK"];
        if !ok_currency.contains(&currency) {
            return format!("bad_currency_{currency:?}");
        }
        if parsed.is_empty() {
            return "no_items".into();
        }
        let mut total: i64 = 0;
        let mut overflow = None;
        for &(sku_len, qty, price) in &parsed {
            if sku_len == 0 {
                return "bad_sku_empty".into();
            }
            if sku_len > 64 {
                return format!("bad_sku_len_{sku_len}");
            }
            if !(1..=1000).contains(&qty) {
                return format!("bad_quantity_{qty}");
            }
            if price < 0 {
                return "bad_price".into();
            }
            match qty.checked_mul(price) {
                None => overflow = overflow.or(Some("amount_overflow_mul")),
                Some(line) => match total.checked_add(line) {
                    None => overflow = overflow.or(Some("amount_overflow_sum")),
                    Some(t) => total = t,
                },
            }
        }
        if let Some(o) = overflow {
            return o.into();
        }
        let token = obj["payment_token"].as_str().unwrap();
        if token.starts_with("tok_crash") {
            "valid_poison".into()
        } else if token.starts_with("tok_decline_") {
            "valid_decline".into()
        } else if token.starts_with("tok_flaky_") {
            "valid_flaky".into()
        } else {
            "valid".into()
        }
    }

    #[test]
    fn records_equal_what_parsing_the_lines_gives() {
        use crate::order::{parse_line, Line};
        let mut lines = Generator::new(50_000, 5).with_poison(2);
        let mut records = Generator::new(50_000, 5).with_poison(2);
        let (mut a, mut b, mut g) = (Vec::new(), Vec::new(), GeneratedOrder::default());
        let mut direct = 0;
        while lines.next_line(&mut a) {
            b.clear();
            let is_order = records.next_record(&mut b, &mut g).expect("same length");
            if is_order {
                direct += 1;
                let Line::Order(o) = parse_line(&a) else {
                    panic!("not an order: {}", String::from_utf8_lossy(&a))
                };
                assert_eq!(o.order_id, g.order_id);
                assert_eq!(o.customer_id, g.customer_id);
                assert_eq!(o.currency, g.currency);
                assert_eq!(o.payment_token, g.payment_token);
                let items: Vec<_> = g
                    .items
                    .iter()
                    .map(|&(s, e, q, p)| (&g.skus[s..e], q, p))
                    .collect();
                let parsed: Vec<_> = o
                    .items
                    .iter()
                    .map(|i| (&*i.sku, i.qty, i.unit_price_cents))
                    .collect();
                assert_eq!(items, parsed);
            } else {
                assert_eq!(a, b);
            }
            a.clear();
        }
        assert!(records.next_record(&mut b, &mut g).is_none());
        assert!(direct > 48_000, "most orders skip JSON: {direct}");
    }

    #[test]
    fn deterministic_for_count_and_seed() {
        let a = stream(20_000, 7, 0);
        assert_eq!(a, stream(20_000, 7, 0));
        assert_ne!(a, stream(20_000, 8, 0));
        assert_eq!(stream(5_000, 7, 3), stream(5_000, 7, 3));
    }

    /// The bytes for a given (count, seed, poison) must never drift: tests,
    /// benchmarks and recorded runs depend on them. Change this only on purpose.
    #[test]
    fn output_is_pinned() {
        let fnv1a = |bytes: &[u8]| {
            bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
            })
        };
        let first = lines(1, 1, 0);
        assert_eq!(
            String::from_utf8_lossy(&first[0]),
            r#"{"order_id": "o-siauot-1", "customer_id": "c-81011", "currency": "GBP", "items": [{"sku": "SKU-00005", "qty": 3, "unit_price_cents": 2100}, {"sku": "SKU-03035", "qty": 1, "unit_price_cents": 9000}], "payment_token": "tok_visa"}"#
        );
        assert_eq!(fnv1a(&stream(20_000, 1, 3)), 0xa5d6_a2e9_629d_0a76);
    }

    /// The fields handed over by [`Generator::next_record`] are pinned too,
    /// and so is a second seed without poison.
    #[test]
    fn records_are_pinned() {
        let mut g = Generator::new(20_000, 42);
        let (mut line, mut o) = (Vec::new(), GeneratedOrder::default());
        let mut all = Vec::new();
        while let Some(is_order) = g.next_record(&mut line, &mut o) {
            if is_order {
                let fields = [&*o.order_id, &*o.customer_id, o.currency, o.payment_token];
                for f in fields {
                    all.extend_from_slice(f.as_bytes());
                    all.push(b'|');
                }
                for &(s, e, q, p) in &o.items {
                    all.extend_from_slice(format!("{}:{q}:{p};", &o.skus[s..e]).as_bytes());
                }
            } else {
                all.extend_from_slice(&line);
            }
            all.push(b'\n');
            line.clear();
        }
        assert_eq!(fnv(&all), 0xbf97_347b_8da3_1a35);
        assert_eq!(fnv(&stream(20_000, 7, 0)), 0xf9d5_d73a_7b38_4924);
    }

    #[test]
    fn exact_line_count_no_newline_no_blank() {
        for count in [0u64, 1, 2, 999, 1_000, 12_345] {
            let ls = lines(count, 3, 0);
            assert_eq!(ls.len() as u64, count);
            for l in &ls {
                assert!(!l.is_empty());
                assert!(!l.contains(&b'\n'));
                assert!(!l.contains(&b'\r'));
            }
            let s = stream(count, 3, 0);
            assert_eq!(s.iter().filter(|&&b| b == b'\n').count() as u64, count);
        }
    }

    #[test]
    fn next_line_appends_and_stops() {
        let mut g = Generator::new(2, 9);
        let mut out = b"keep:".to_vec();
        assert!(g.next_line(&mut out));
        assert!(out.starts_with(b"keep:{"));
        let n = out.len();
        assert!(g.next_line(&mut out));
        assert!(out.len() > n);
        let n = out.len();
        assert!(!g.next_line(&mut out));
        assert!(!g.next_line(&mut out));
        assert_eq!(out.len(), n);
    }

    #[test]
    fn poison_count_is_exact_and_spread() {
        assert!(!stream(200_000, 5, 0).windows(9).any(|w| w == b"tok_crash"));
        for (count, poison) in [(1_000u64, 10u64), (100_000, 7), (50, 50), (10, 25), (3, 1)] {
            let ls = lines(count, 11, poison);
            assert_eq!(ls.len() as u64, count);
            let at: Vec<usize> = ls
                .iter()
                .enumerate()
                .filter(|(_, l)| l.windows(9).any(|w| w == b"tok_crash"))
                .map(|(n, _)| n)
                .collect();
            assert_eq!(at.len() as u64, poison.min(count), "count {count}");
            for &n in &at {
                assert_eq!(classify(&ls[n]), "valid_poison");
            }
            if poison == 10 {
                // Evenly spread: one per 100-line slice.
                for (k, &n) in at.iter().enumerate() {
                    assert_eq!(n / 100, k);
                }
            }
        }
    }

    #[test]
    fn giant_line_when_count_at_least_1000() {
        for seed in 0..20 {
            let ls = lines(1_000, seed, 0);
            let giants = ls.iter().filter(|l| l.len() as u64 > MAX_LINE).count();
            assert_eq!(giants, 1, "seed {seed}");
            // Also when poison takes many slots.
            let ls = lines(1_000, seed, 900);
            assert!(ls.iter().any(|l| l.len() as u64 > MAX_LINE), "seed {seed}");
        }
        assert!(lines(999, 1, 0).iter().all(|l| l.len() as u64 <= MAX_LINE));
    }

    #[test]
    fn every_reason_and_shape_appears() {
        for seed in [7u64, 123] {
            let ls = lines(200_000, seed, 0);
            let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
            let mut first_by_id: HashMap<String, Vec<u8>> = HashMap::new();
            let (mut exact_dups, mut altered_dups) = (0, 0);
            for l in &ls {
                let kind = classify(l);
                if kind.starts_with("valid") {
                    let v: Value = serde_json::from_slice(l).unwrap();
                    let id = v["order_id"].as_str().unwrap().to_string();
                    match first_by_id.get(&id) {
                        None => {
                            first_by_id.insert(id, l.clone());
                        }
                        Some(first) if first == l => exact_dups += 1,
                        Some(_) => altered_dups += 1,
                    }
                }
                *kinds.entry(kind).or_default() += 1;
            }
            let expected = [
                // Rejected, every reason.
                "bad_currency_\"usd\"",
                "bad_currency_\"US\"",
                "bad_currency_\"EURO\"",
                "bad_currency_\"U$D\"",
                "bad_currency_\"\"",
                "no_items",
                "bad_sku_empty",
                "bad_sku_len_65",
                "bad_quantity_0",
                "bad_quantity_-1",
                "bad_quantity_1001",
                "bad_price",
                "amount_overflow_mul",
                "amount_overflow_sum",
                // Malformed, every shape.
                "not_json_truncated",
                "not_json",
                "not_object_array",
                "not_object_string",
                "not_object_number",
                "not_object_null",
                "two_objects",
                "missing_order_id",
                "missing_customer_id",
                "missing_currency",
                "missing_items",
                "missing_payment_token",
                "qty_float_2.0",
                "qty_float_1000.0",
                "qty_string",
                "qty_bool",
                "price_above_i64",
                "currency_not_string",
                "items_object",
                "item_not_object",
                "item_missing_sku",
                "item_missing_qty",
                "item_missing_unit_price_cents",
                "order_id_empty",
                "order_id_len_65",
                "invalid_utf8",
                "too_long",
                // Valid.
                "valid",
                "valid_decline",
                "valid_flaky",
            ];
            for e in expected {
                assert!(kinds.contains_key(e), "seed {seed}: no {e}; got {kinds:#?}");
            }
            assert!(!kinds.contains_key("valid_poison"));
            assert!(!kinds.contains_key("empty"));
            assert_eq!(kinds["too_long"], 1);

            let n = ls.len() as f64;
            let share = |prefix: &str| {
                kinds
                    .iter()
                    .filter(|(k, _)| k.starts_with(prefix))
                    .map(|(_, v)| *v)
                    .sum::<u64>() as f64
                    / n
            };
            let valid = share("valid");
            assert!(valid > 0.96 && valid < 0.99, "valid share {valid}");
            let decline = share("valid_decline");
            assert!(
                decline > 0.025 && decline < 0.035,
                "decline share {decline}"
            );
            let flaky = share("valid_flaky");
            assert!(flaky > 0.007 && flaky < 0.013, "flaky share {flaky}");
            let rejected = ["bad_", "no_items", "amount_overflow"]
                .iter()
                .map(|p| share(p))
                .sum::<f64>();
            assert!(rejected > 0.008 && rejected < 0.012, "rejected {rejected}");

            // Duplicates: ~0.5%, both byte-exact and altered.
            assert!(
                exact_dups > 300 && altered_dups > 200,
                "{exact_dups} {altered_dups}"
            );
            assert!(exact_dups + altered_dups < 1_500);

            // Marker substrings of the rarer features.
            let has = |m: &[u8]| ls.iter().any(|l| l.windows(m.len()).any(|w| w == m));
            let rare_valid: [&[u8]; 8] = [
                b"\"note\": \"gift\"",
                b"\"meta\": {",
                b"\"gift_wrap\": true",
                b"\"customer_id\": \"c-\\\"vip\\\"-",
                b"c-caf\\u00e9-",
                b"\"unit_price_cents\": 0}",
                b"{\"order_id\":\"o-",         // compact
                b"{\"payment_token\": \"tok_", // reordered
            ];
            let rare_invalid: [&[u8]; 7] = [
                b"\"qty\": 1000, \"unit_price_cents\": 9223372036854775807",
                b"\"unit_price_cents\": 9223372036854775808",
                b"\"qty\": 1e3",
                b"\"items\": [1]",
                b"\"items\": []",
                b"\xFF",
                b"garbage",
            ];
            for marker in rare_valid.iter().chain(&rare_invalid) {
                let text = String::from_utf8_lossy(marker);
                assert!(has(marker), "no line has {text}");
            }
        }
    }

    #[test]
    fn ordinary_orders_are_realistic() {
        let ls = lines(100_000, 42, 0);
        let mut currencies: HashMap<String, u64> = HashMap::new();
        let mut skus = HashSet::new();
        let mut customers = HashSet::new();
        let (mut max_qty, mut max_price, mut zero_price) = (0, 0, 0);
        for l in &ls {
            if !classify(l).starts_with("valid") {
                continue;
            }
            let v: Value = serde_json::from_slice(l).unwrap();
            *currencies
                .entry(v["currency"].as_str().unwrap().into())
                .or_default() += 1;
            customers.insert(v["customer_id"].as_str().unwrap().to_string());
            let items = v["items"].as_array().unwrap();
            assert!((1..=4).contains(&items.len()));
            for it in items {
                let sku = it["sku"].as_str().unwrap();
                assert!(sku.len() == 9 && sku.starts_with("SKU-"), "{sku}");
                skus.insert(sku.to_string());
                let q = it["qty"].as_i64().unwrap();
                assert!((1..=10).contains(&q));
                max_qty = max_qty.max(q);
                let p = it["unit_price_cents"].as_i64().unwrap();
                assert!((0..=200_000).contains(&p));
                max_price = max_price.max(p);
                zero_price += (p == 0) as u64;
            }
        }
        assert_eq!(currencies.len(), 8);
        assert!(currencies["USD"] > currencies["EUR"]);
        assert!(currencies["EUR"] > currencies["GBP"]);
        assert!(skus.len() > 3_000, "{}", skus.len());
        assert!(customers.len() > 30_000, "{}", customers.len());
        assert_eq!(max_qty, 10);
        assert!(max_price > 190_000);
        assert!(zero_price > 0);
    }
}
