//! The order model and the JSON Lines parser: from one input line to a
//! [`Line`] (blank, malformed with its reason, or a well-formed [`Order`]).
//!
//! No I/O here. The same [`Order`] type is what travels to workers (encoded
//! with MessagePack by [`crate::protocol`]), borrowing its strings from the
//! line or the frame it came from wherever the input needs no unescaping.
//!
//! Parsing has two paths. serde_json is the reference: it defines what a line
//! means and writes the message a malformed line is dead-lettered with. In
//! front of it, a hand-written fast path takes the common line at about a
//! third of serde_json's cost (which dominated the ventilator's reader
//! thread): first as the fixed text of the usual layout around the values,
//! else as one object with the five fields in any order, any JSON
//! whitespace, strings without escapes or control characters, plain
//! integers, and unknown fields only with simple values. The fast path never
//! judges a line malformed: on anything it is not certain about it gives up
//! and the reference decides, so both give the same [`Line`] for every input
//! (the tests and the `order_line` fuzz target compare them on mutated
//! lines).

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;

/// The longest line accepted, in bytes, not counting its newline.
pub const MAX_LINE_BYTES: usize = 65_536;
/// The longest `order_id`, in bytes.
pub const MAX_ORDER_ID_BYTES: usize = 64;

/// One e-commerce order as the input states it (before any rule is checked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order<'a> {
    #[serde(borrow)]
    pub order_id: Cow<'a, str>,
    #[serde(borrow)]
    pub customer_id: Cow<'a, str>,
    #[serde(borrow)]
    pub currency: Cow<'a, str>,
    #[serde(borrow)]
    pub items: Vec<Item<'a>>,
    #[serde(borrow)]
    pub payment_token: Cow<'a, str>,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item<'a> {
    #[serde(borrow)]
    pub sku: Cow<'a, str>,
    pub qty: i64,
    pub unit_price_cents: i64,
}

/// What one input line is.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// Empty or only spaces, tabs and `\r`: ignored, not counted.
    Blank,
    /// Counted, never processed; written to the dead-letter file.
    Malformed(Malformed),
    /// A well-formed order (it may still be rejected by the rules).
    Order(Order<'a>),
}

/// Why a line is malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// Longer than [`MAX_LINE_BYTES`] (the length is given).
    TooLong(usize),
    /// Not valid UTF-8.
    NotUtf8,
    /// Not a single JSON object with the five fields of the right types
    /// (the JSON parser's message says which).
    Shape(String),
    /// `order_id` is not 1..=64 bytes long (its length is given).
    OrderIdLength(usize),
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::TooLong(n) => {
                write!(f, "line is {n} bytes, over the {MAX_LINE_BYTES}-byte limit")
            }
            Malformed::NotUtf8 => write!(f, "line is not valid UTF-8"),
            Malformed::Shape(msg) => write!(f, "not an order object: {msg}"),
            Malformed::OrderIdLength(n) => {
                write!(f, "order_id is {n} bytes, not 1..={MAX_ORDER_ID_BYTES}")
            }
        }
    }
}

/// Strips the line terminator: a trailing `\n` and then one `\r` before it.
pub fn trim_newline(mut line: &[u8]) -> &[u8] {
    if let [rest @ .., b'\n'] = line {
        line = rest;
    }
    if let [rest @ .., b'\r'] = line {
        line = rest;
    }
    line
}

/// True when the line holds only spaces, tabs and `\r` (or nothing).
pub fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r'))
}

/// Classifies one input line (its newline may be present or not).
pub fn parse_line(raw: &[u8]) -> Line<'_> {
    parse_line_into(raw, &mut Vec::new())
}

/// Parses lines one after another, reusing one allocation for every line's
/// items (a fresh `Vec` per line was malloc and free on every order of the
/// reader's hot loop). Hand each order back with [`recycle`](Self::recycle)
/// once done with it, and the next line's items go where its were.
#[derive(Default)]
pub struct LineParser {
    spare: Vec<Item<'static>>,
}

impl LineParser {
    /// [`parse_line`], with the spare allocation for the items.
    pub fn parse<'a>(&mut self, raw: &'a [u8]) -> Line<'a> {
        let mut items = emptied(std::mem::take(&mut self.spare));
        let line = parse_line_into(raw, &mut items);
        // Still here if the line was no order, or serde_json read it.
        self.spare = emptied(items);
        line
    }

    /// Takes back an order's items allocation for the next line.
    pub fn recycle(&mut self, order: Order<'_>) {
        if order.items.capacity() > self.spare.capacity() {
            self.spare = emptied(order.items);
        }
    }
}

/// `items` emptied, its allocation kept, for items borrowing from another
/// line. An empty `Vec` collected into a `Vec` of a type of the same size
/// and alignment reuses its allocation (std's in-place collection), so
/// this costs nothing; the tests check that the capacity survives.
fn emptied<'b>(mut items: Vec<Item<'_>>) -> Vec<Item<'b>> {
    items.clear();
    items
        .into_iter()
        .map(|_| unreachable!("the vector was emptied"))
        .collect()
}

/// [`parse_line`], the fast path collecting the items into `items`.
fn parse_line_into<'a>(raw: &'a [u8], items: &mut Vec<Item<'a>>) -> Line<'a> {
    let line = match line_bytes(raw) {
        Err(line) => return line,
        Ok(line) => line,
    };
    if let Some(order) = parse_fast(line, items) {
        return Line::Order(order);
    }
    match utf8_text(line) {
        Err(line) => line,
        Ok(text) => parse_with_serde(text),
    }
}

/// [`parse_line`] with serde_json alone, without the fast path: the meaning
/// of a line that the fast path must reproduce. Public only for the fuzz
/// target's differential check.
#[doc(hidden)]
pub fn parse_line_reference(raw: &[u8]) -> Line<'_> {
    match line_text(raw) {
        Err(line) => line,
        Ok(text) => parse_with_serde(text),
    }
}

/// The checks every line goes through before its JSON is looked at: the
/// line without its terminator, or what the line is without parsing it.
/// Whether it is UTF-8 is checked by the parser that reads it: the fast
/// path checks each string it reads (every other byte it accepts is
/// ASCII), the reference the whole line.
fn line_bytes(raw: &[u8]) -> Result<&[u8], Line<'static>> {
    let line = trim_newline(raw);
    if is_blank(line) {
        return Err(Line::Blank);
    }
    if line.len() > MAX_LINE_BYTES {
        return Err(Line::Malformed(Malformed::TooLong(line.len())));
    }
    Ok(line)
}

/// [`line_bytes`], then the whole line checked to be UTF-8.
fn line_text(raw: &[u8]) -> Result<&str, Line<'static>> {
    utf8_text(line_bytes(raw)?)
}

/// The line as text, or [`Malformed::NotUtf8`].
fn utf8_text(line: &[u8]) -> Result<&str, Line<'static>> {
    std::str::from_utf8(line).map_err(|_| Line::Malformed(Malformed::NotUtf8))
}

/// The reference parser: serde_json, then the `order_id` length.
fn parse_with_serde(text: &str) -> Line<'_> {
    match serde_json::from_str::<Order<'_>>(text) {
        Err(e) => Line::Malformed(Malformed::Shape(e.to_string())),
        Ok(_) if !objects_all_the_way(text) => Line::Malformed(Malformed::Shape(
            "an order and each of its items must be JSON objects, not arrays".into(),
        )),
        Ok(order) => {
            let n = order.order_id.len();
            if n == 0 || n > MAX_ORDER_ID_BYTES {
                Line::Malformed(Malformed::OrderIdLength(n))
            } else {
                Line::Order(order)
            }
        }
    }
}

/// serde reads a struct from a JSON array as well as from an object; the
/// contract wants objects. Checked only for the lines serde accepted (the
/// fast path never accepts an array), so the cost of reading the line again
/// is paid on the rare lines that need the reference parser.
fn objects_all_the_way(text: &str) -> bool {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(order)) => order
            .get("items")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|items| items.iter().all(serde_json::Value::is_object)),
        _ => false,
    }
}

/// The fast path: `Some` only when `text` is certainly a well-formed order
/// (valid UTF-8 included) and this is the order serde_json would read
/// (strings borrowed from `text`, items collected in `items`); `None` for
/// everything else, including many well-formed lines
/// (escapes, floats or nested values in unknown fields, the array form of a
/// struct that serde accepts, ...), which the reference then parses.
///
/// It accepts a strict subset of what serde_json accepts, so it needs no
/// error reporting of its own: the first surprise is a `None`.
fn parse_fast<'a>(text: &'a [u8], items: &mut Vec<Item<'a>>) -> Option<Order<'a>> {
    parse_usual_layout(text, items).or_else(|| parse_any_layout(text, items))
}

/// An `order_id` of 1..=64 bytes; outside that the reference says
/// [`Malformed::OrderIdLength`], so the fast path declines.
fn order_id(value: &str) -> Option<&str> {
    (1..=MAX_ORDER_ID_BYTES)
        .contains(&value.len())
        .then_some(value)
}

/// The layout of nearly every line (the contract's example, and what the
/// generator writes): the five fields in the contract's order, the items'
/// three in theirs, no unknown fields, and one space after every colon and
/// comma. Between the values everything is then fixed text, so the line
/// is a run of comparisons with it, several times cheaper than parsing
/// whatever layout. Any difference is `None`, and [`parse_any_layout`]
/// tries.
fn parse_usual_layout<'a>(text: &'a [u8], items: &mut Vec<Item<'a>>) -> Option<Order<'a>> {
    let mut cur = Cursor { text, pos: 0 };
    cur.literal(br#"{"order_id": ""#)?;
    let order_id = order_id(cur.rest_of_string()?)?;
    cur.literal(br#", "customer_id": ""#)?;
    let customer_id = cur.rest_of_string()?;
    cur.literal(br#", "currency": ""#)?;
    let currency = cur.rest_of_string()?;
    cur.literal(br#", "items": ["#)?;
    items.clear();
    if cur.literal(b"]").is_none() {
        items.reserve(ITEMS_CAPACITY);
        loop {
            cur.literal(br#"{"sku": ""#)?;
            let sku = Cow::Borrowed(cur.rest_of_string()?);
            cur.literal(br#", "qty": "#)?;
            let qty = cur.integer()?;
            cur.literal(br#", "unit_price_cents": "#)?;
            let unit_price_cents = cur.integer()?;
            cur.literal(b"}")?;
            items.push(Item {
                sku,
                qty,
                unit_price_cents,
            });
            if cur.literal(b", ").is_none() {
                cur.literal(b"]")?;
                break;
            }
        }
    }
    cur.literal(br#", "payment_token": ""#)?;
    let payment_token = cur.rest_of_string()?;
    cur.literal(b"}")?;
    cur.skip_ws();
    if !cur.at_end() {
        return None;
    }
    Some(Order {
        order_id: Cow::Borrowed(order_id),
        customer_id: Cow::Borrowed(customer_id),
        currency: Cow::Borrowed(currency),
        items: std::mem::take(items),
        payment_token: Cow::Borrowed(payment_token),
    })
}

/// One object with the five fields in any order, with any JSON whitespace,
/// and unknown fields with simple values (see [`Cursor::skip_simple_value`]).
fn parse_any_layout<'a>(text: &'a [u8], items: &mut Vec<Item<'a>>) -> Option<Order<'a>> {
    let mut cur = Cursor { text, pos: 0 };
    let mut fields = OrderFields::default();
    cur.object(|cur, key| fields.read(cur, key, items))?;
    cur.skip_ws();
    if !cur.at_end() {
        return None;
    }
    fields.finish()
}

/// The top-level fields seen so far: each may be set once (serde_json
/// rejects a repeated field, so a repeat sends the line to the reference).
#[derive(Default)]
struct OrderFields<'a> {
    order_id: Option<&'a str>,
    customer_id: Option<&'a str>,
    currency: Option<&'a str>,
    items: Option<Vec<Item<'a>>>,
    payment_token: Option<&'a str>,
}

impl<'a> OrderFields<'a> {
    /// Reads the value of `key` (the cursor is on its first byte), the
    /// items into `items`.
    fn read(&mut self, cur: &mut Cursor<'a>, key: Key, items: &mut Vec<Item<'a>>) -> Option<()> {
        match key {
            Key::OrderId => set_once(&mut self.order_id, order_id(cur.string()?)?),
            Key::CustomerId => set_once(&mut self.customer_id, cur.string()?),
            Key::Currency => set_once(&mut self.currency, cur.string()?),
            Key::PaymentToken => set_once(&mut self.payment_token, cur.string()?),
            Key::Items => set_once(&mut self.items, cur.items(items)?),
            // An item's keys are unknown fields of the order.
            Key::Sku | Key::Qty | Key::UnitPriceCents | Key::Other => cur.skip_simple_value(),
        }
    }

    fn finish(self) -> Option<Order<'a>> {
        Some(Order {
            order_id: Cow::Borrowed(self.order_id?),
            customer_id: Cow::Borrowed(self.customer_id?),
            currency: Cow::Borrowed(self.currency?),
            items: self.items?,
            payment_token: Cow::Borrowed(self.payment_token?),
        })
    }
}

/// The fields of one item seen so far, each at most once.
#[derive(Default)]
struct ItemFields<'a> {
    sku: Option<&'a str>,
    qty: Option<i64>,
    unit_price_cents: Option<i64>,
}

impl<'a> ItemFields<'a> {
    fn read(&mut self, cur: &mut Cursor<'a>, key: Key) -> Option<()> {
        match key {
            Key::Sku => set_once(&mut self.sku, cur.string()?),
            Key::Qty => set_once(&mut self.qty, cur.integer()?),
            Key::UnitPriceCents => set_once(&mut self.unit_price_cents, cur.integer()?),
            _ => cur.skip_simple_value(),
        }
    }

    fn finish(self) -> Option<Item<'a>> {
        Some(Item {
            sku: Cow::Borrowed(self.sku?),
            qty: self.qty?,
            unit_price_cents: self.unit_price_cents?,
        })
    }
}

/// An object key, as far as the fast path cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    OrderId,
    CustomerId,
    Currency,
    Items,
    PaymentToken,
    Sku,
    Qty,
    UnitPriceCents,
    /// Any other key without escapes: an unknown field.
    Other,
}

impl Key {
    /// The known key that `rest` (just after a key's opening quote) starts
    /// with, and its length with the closing quote. The quote is part of the
    /// match, so `"order_idx"` is not `order_id`; and a known key's bytes
    /// hold no backslash or control character, so nothing else needs
    /// checking. This is much cheaper than finding the key's end first.
    fn known(rest: &[u8]) -> Option<(Key, usize)> {
        // Inlined with a constant each time, `starts_with` is a few word
        // compares; the first byte picks the one or two to make.
        let is = |key: Key, quoted: &'static [u8]| {
            rest.starts_with(quoted).then_some((key, quoted.len()))
        };
        match rest.first()? {
            b'o' => is(Key::OrderId, b"order_id\""),
            b'c' => {
                is(Key::CustomerId, b"customer_id\"").or_else(|| is(Key::Currency, b"currency\""))
            }
            b'i' => is(Key::Items, b"items\""),
            b'p' => is(Key::PaymentToken, b"payment_token\""),
            b's' => is(Key::Sku, b"sku\""),
            b'q' => is(Key::Qty, b"qty\""),
            b'u' => is(Key::UnitPriceCents, b"unit_price_cents\""),
            _ => None,
        }
    }
}

/// Stores a field's value; `None` if the field was already there.
fn set_once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

/// A position in the line's bytes. Every read is checked (`get`, never
/// indexing), so no input can make it panic. The bytes are not known to be
/// UTF-8: what the cursor accepts outside strings is ASCII, and each string
/// is checked as it is read ([`plain_str`]).
struct Cursor<'a> {
    text: &'a [u8],
    pos: usize,
}

/// The most digits an i64 has; [`Cursor::integer`] declines longer ones.
const MAX_I64_DIGITS: usize = 19;

/// Room for this many items from the start: most orders have fewer, and a
/// direct allocation is cheaper than growing from empty (which would
/// reach the same capacity on the first push anyway).
const ITEMS_CAPACITY: usize = 4;

/// What [`Cursor::peek`] gives at the end of the text. A NUL is never
/// valid where the fast path looks (JSON has no NUL outside strings, and
/// strings are scanned otherwise), so the end needs no case of its own: it
/// is one more unexpected byte, which makes the fast path decline.
const END: u8 = 0;

impl<'a> Cursor<'a> {
    /// The next byte, or [`END`].
    fn peek(&self) -> u8 {
        self.text.get(self.pos).copied().unwrap_or(END)
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    /// Consumes `byte` if it is next; `None` otherwise.
    fn eat(&mut self, byte: u8) -> Option<()> {
        if self.peek() != byte {
            return None;
        }
        self.pos += 1;
        Some(())
    }

    /// JSON's whitespace, exactly: space, tab, `\n`, `\r`.
    fn skip_ws(&mut self) {
        while let b' ' | b'\t' | b'\n' | b'\r' = self.peek() {
            self.pos += 1;
        }
    }

    /// After a value in a list: `Some(true)` past a `,` (another entry
    /// follows), `Some(false)` past `close`, `None` on anything else.
    fn comma_or(&mut self, close: u8) -> Option<bool> {
        self.skip_ws();
        let next = self.peek();
        if next != b',' && next != close {
            return None;
        }
        self.pos += 1;
        Some(next == b',')
    }

    /// `{ "key": value, ... }` with `value` read by `field` (which gets the
    /// cursor on the value's first byte), then the cursor after the `}`.
    /// An empty object is `None`: it cannot hold the required fields.
    fn object(&mut self, mut field: impl FnMut(&mut Self, Key) -> Option<()>) -> Option<()> {
        self.skip_ws();
        self.eat(b'{')?;
        loop {
            self.skip_ws();
            let key = self.key()?;
            self.skip_ws();
            self.eat(b':')?;
            self.skip_ws();
            field(self, key)?;
            if !self.comma_or(b'}')? {
                return Some(());
            }
        }
    }

    /// The `items` array: `[]` or `[item, ...]`, each item an object,
    /// collected in `items` (emptied first) and taken from it.
    fn items(&mut self, items: &mut Vec<Item<'a>>) -> Option<Vec<Item<'a>>> {
        self.eat(b'[')?;
        items.clear();
        self.skip_ws();
        if self.eat(b']').is_some() {
            return Some(std::mem::take(items));
        }
        items.reserve(ITEMS_CAPACITY);
        loop {
            let mut fields = ItemFields::default();
            self.object(|cur, key| fields.read(cur, key))?;
            items.push(fields.finish()?);
            if !self.comma_or(b']')? {
                return Some(std::mem::take(items));
            }
        }
    }

    /// An object key: a known one, or [`Key::Other`] for any other string
    /// with nothing to unescape.
    fn key(&mut self) -> Option<Key> {
        self.eat(b'"')?;
        let rest = self.text.get(self.pos..)?;
        if let Some((key, len)) = Key::known(rest) {
            self.pos += len;
            return Some(key);
        }
        self.pos += plain_str(rest)?.len() + 1;
        Some(Key::Other)
    }

    /// A string with nothing to unescape, borrowed from the line: `None` if
    /// it holds a backslash or a control character (which serde_json
    /// rejects), or is not UTF-8.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        self.rest_of_string()
    }

    /// [`string`](Self::string) after its opening quote.
    #[inline]
    fn rest_of_string(&mut self) -> Option<&'a str> {
        let string = plain_str(self.text.get(self.pos..)?)?;
        self.pos += string.len() + 1;
        Some(string)
    }

    /// Consumes `fixed` if the text goes on with it; `None` otherwise.
    /// Inlined, so that each comparison is with a constant of known length
    /// (a few word compares, no call to memcmp).
    #[inline(always)]
    fn literal(&mut self, fixed: &[u8]) -> Option<()> {
        let rest = self.text.get(self.pos..)?;
        if !rest.starts_with(fixed) {
            return None;
        }
        self.pos += fixed.len();
        Some(())
    }

    /// A plain JSON integer that serde_json reads as this same i64: `0`, or
    /// an optional `-` and digits without a leading zero, in range, not
    /// followed by a fraction or an exponent. `-0` is `None` (serde_json
    /// reads it as the float -0.0, which is not an i64).
    fn integer(&mut self) -> Option<i64> {
        let negative = self.eat(b'-').is_some();
        let rest = self.text.get(self.pos..)?;
        let mut len = 0;
        let mut magnitude: u64 = 0;
        while let Some(&digit @ b'0'..=b'9') = rest.get(len) {
            if len == MAX_I64_DIGITS {
                return None;
            }
            // Any 19 digits fit a u64: no overflow check per digit.
            magnitude = magnitude * 10 + u64::from(digit - b'0');
            len += 1;
        }
        // "01" is invalid JSON; "1.5", "1e3" are floats to serde_json.
        let leading_zero = rest.first() == Some(&b'0') && (len > 1 || negative);
        let float = matches!(rest.get(len), Some(b'.' | b'e' | b'E'));
        if len == 0 || leading_zero || float {
            return None;
        }
        let value = if negative {
            // Down to i64::MIN, whose magnitude is one more than i64::MAX.
            0i64.checked_sub_unsigned(magnitude)?
        } else {
            i64::try_from(magnitude).ok()?
        };
        self.pos += len;
        Some(value)
    }

    /// The value of an unknown field, which serde_json checks and ignores:
    /// a plain string, integer, `true`, `false` or `null`. Anything else
    /// (nested values, floats, escapes) is `None`, not worth handling here.
    fn skip_simple_value(&mut self) -> Option<()> {
        match self.peek() {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.integer().map(drop),
            _ => [&b"true"[..], b"false", b"null"]
                .into_iter()
                .find(|word| self.rest().starts_with(word))
                .map(|word| self.pos += word.len()),
        }
    }

    fn rest(&self) -> &'a [u8] {
        self.text.get(self.pos..).unwrap_or(&[])
    }
}

/// The contents of a string with nothing to unescape, `rest` starting just
/// after its opening quote: `None` if a backslash or a control character
/// comes before the closing quote, or there is none, or the contents are
/// not UTF-8 (the line was not checked as a whole: see [`line_bytes`]).
#[inline]
fn plain_str(rest: &[u8]) -> Option<&str> {
    let (len, ascii) = plain_string_len(rest)?;
    let contents = rest.get(..len)?;
    if ascii {
        // SAFETY: ASCII is valid UTF-8. (std's check, called on each short
        // string, cost more than on the whole line: it is not inlined.)
        Some(unsafe { std::str::from_utf8_unchecked(contents) })
    } else {
        std::str::from_utf8(contents).ok()
    }
}

/// The length of a string's contents, `rest` starting just after its opening
/// quote: the bytes up to the closing `"`, or `None` if a backslash or a
/// control character (below 0x20) comes first, or no quote at all; and
/// whether those bytes are all ASCII.
///
/// Strings are most of a line, so this looks at 8 bytes at a time: each
/// word is tested for the three kinds of byte at once with the classic
/// "has a zero byte" bit trick (Hacker's Delight 6-1), and only the first
/// byte it flags matters (that one is exact; flags above it may be borrows).
/// A byte of 0x80 or more is never flagged, nor makes a borrow: the high
/// bits of the words before the end are kept apart to tell ASCII.
#[inline]
fn plain_string_len(rest: &[u8]) -> Option<(usize, bool)> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // High bit set in each byte that is zero, exact up to the first one.
    let zero_bytes = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS;
    let mut at = 0;
    let mut high_bits = 0;
    while let Some(chunk) = rest.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().ok()?);
        let below_space = word.wrapping_sub(0x20 * ONES) & !word & HIGHS;
        let flags = zero_bytes(word ^ (b'"' as u64 * ONES))
            | zero_bytes(word ^ (b'\\' as u64 * ONES))
            | below_space;
        if flags != 0 {
            // Little-endian: the lowest flagged bit is the first such byte.
            let first = flags.trailing_zeros() / 8;
            let before_first = (1u64 << (first * 8)) - 1;
            high_bits |= word & before_first & HIGHS;
            let end = at + first as usize;
            return (rest.get(end) == Some(&b'"')).then_some((end, high_bits == 0));
        }
        high_bits |= word & HIGHS;
        at += 8;
    }
    let tail = rest.get(at..)?;
    let end = tail
        .iter()
        .position(|&b| matches!(b, b'"' | b'\\' | 0x00..=0x1F))?;
    let ascii = high_bits == 0 && tail.get(..end)?.is_ascii();
    (tail.get(end) == Some(&b'"')).then_some((at + end, ascii))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"order_id": "o-1", "customer_id": "c-9", "currency": "USD", "items": [{"sku": "SKU-1", "qty": 2, "unit_price_cents": 1999}], "payment_token": "tok_visa"}"#;

    fn malformed(line: &str) -> bool {
        matches!(parse_line(line.as_bytes()), Line::Malformed(_))
    }

    #[test]
    fn parses_the_contract_example() {
        let Line::Order(o) = parse_line(GOOD.as_bytes()) else {
            panic!("not an order")
        };
        assert_eq!(o.order_id, "o-1");
        assert_eq!(o.customer_id, "c-9");
        assert_eq!(o.currency, "USD");
        assert_eq!(o.payment_token, "tok_visa");
        assert_eq!(
            o.items,
            vec![Item {
                sku: "SKU-1".into(),
                qty: 2,
                unit_price_cents: 1999
            }]
        );
        assert!(
            matches!(o.order_id, Cow::Borrowed(_)),
            "plain strings borrow"
        );
    }

    #[test]
    fn blank_lines_and_line_endings() {
        for blank in ["", " ", "\t", "\r", " \t \r", "\n", "\r\n", "  \r\n"] {
            assert_eq!(parse_line(blank.as_bytes()), Line::Blank, "{blank:?}");
        }
        for ending in ["\n", "\r\n", ""] {
            let line = format!("{GOOD}{ending}");
            assert!(matches!(parse_line(line.as_bytes()), Line::Order(_)));
        }
        assert!(matches!(
            parse_line(format!("  {GOOD}\t").as_bytes()),
            Line::Order(_)
        ));
    }

    #[test]
    fn unknown_fields_are_ignored_and_escapes_unescaped() {
        let line = r#"{"note": {"deep": [1, 2]}, "order_id": "o-\u00e9", "customer_id": "c\"9", "currency": "USD", "items": [{"sku": "S", "qty": 1, "unit_price_cents": 0, "color": "red"}], "payment_token": "t"}"#;
        let Line::Order(o) = parse_line(line.as_bytes()) else {
            panic!("not an order")
        };
        assert_eq!(o.order_id, "o-é");
        assert_eq!(o.customer_id, "c\"9");
    }

    #[test]
    fn length_limits() {
        let pad = |n: usize| {
            let base = GOOD.replacen('{', "{\"x\": \"\", ", 1);
            let fill = n - base.len();
            base.replacen(
                "\"x\": \"\"",
                &format!("\"x\": \"{}\"", "a".repeat(fill)),
                1,
            )
        };
        let at_limit = pad(MAX_LINE_BYTES);
        assert_eq!(at_limit.len(), MAX_LINE_BYTES);
        assert!(matches!(parse_line(at_limit.as_bytes()), Line::Order(_)));
        assert!(matches!(
            parse_line(format!("{at_limit}\r\n").as_bytes()),
            Line::Order(_)
        ));
        let over = pad(MAX_LINE_BYTES + 1);
        assert_eq!(
            parse_line(over.as_bytes()),
            Line::Malformed(Malformed::TooLong(MAX_LINE_BYTES + 1))
        );
        let id = |n: usize| GOOD.replace("\"o-1\"", &format!("\"{}\"", "i".repeat(n)));
        assert!(matches!(parse_line(id(1).as_bytes()), Line::Order(_)));
        assert!(matches!(parse_line(id(64).as_bytes()), Line::Order(_)));
        assert_eq!(
            parse_line(id(0).as_bytes()),
            Line::Malformed(Malformed::OrderIdLength(0))
        );
        assert_eq!(
            parse_line(id(65).as_bytes()),
            Line::Malformed(Malformed::OrderIdLength(65))
        );
        // 64 bytes of two-byte characters is 32 characters: bytes count, not characters.
        let wide = GOOD.replace("\"o-1\"", &format!("\"{}\"", "é".repeat(33)));
        assert_eq!(
            parse_line(wide.as_bytes()),
            Line::Malformed(Malformed::OrderIdLength(66))
        );
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        let mut line = GOOD.as_bytes().to_vec();
        line[18] = 0xFF;
        assert_eq!(parse_line(&line), Line::Malformed(Malformed::NotUtf8));
    }

    #[test]
    fn the_fast_path_checks_utf8_in_every_string_it_reads() {
        // Every byte the fast path accepts outside a string is ASCII, so it
        // checks only the strings: invalid bytes in a value or an unknown
        // key, at the start, middle or end of a word, make it decline.
        let unknown_key = GOOD.replace(r#""currency""#, r#""note": 1, "currency""#);
        for (line, at) in [
            (GOOD.to_string(), r#""c-9""#),
            (GOOD.to_string(), r#""SKU-1""#),
            (unknown_key, r#""note""#),
        ] {
            let start = line.find(at).unwrap() + 1;
            for offset in 0..at.len() - 2 {
                for bad in [&[0xFFu8][..], &[0xC3], &[0xE2, 0x82]] {
                    let mut bytes = line.as_bytes()[..start + offset].to_vec();
                    bytes.extend_from_slice(bad);
                    bytes.extend_from_slice(&line.as_bytes()[start + offset..]);
                    assert!(fast(&bytes).is_none(), "{bytes:?}");
                    assert_eq!(parse_line(&bytes), Line::Malformed(Malformed::NotUtf8));
                }
            }
        }
        // Valid non-ASCII text, short or longer than a word, stays on it.
        for text in ["é", "Zoë Ånström-Łukasz 東京"] {
            assert_fast(&GOOD.replace("c-9", text));
        }
    }

    #[test]
    fn a_line_parser_reuses_one_allocation_for_the_items() {
        let mut parser = LineParser::default();
        let mut first = GOOD.to_string();
        let Line::Order(order) = parser.parse(first.as_bytes()) else {
            panic!("not an order")
        };
        let allocation = order.items.as_ptr() as usize;
        parser.recycle(order);
        first.clear(); // the next line lives elsewhere
        let second = GOOD.replace("o-1", "o-2");
        let Line::Order(order) = parser.parse(second.as_bytes()) else {
            panic!("not an order")
        };
        assert_eq!(order.items.as_ptr() as usize, allocation);
        assert_eq!(
            order,
            match parse_line(second.as_bytes()) {
                Line::Order(o) => o,
                other => panic!("{other:?}"),
            }
        );
    }

    #[test]
    fn every_malformed_shape() {
        let two = format!("{GOOD}{GOOD}");
        let trailing = format!("{GOOD} x");
        let whole_lines = [
            "garbage",
            "{",
            r#"{"order_id": "o-1""#,
            "[1, 2]",
            "\"str\"",
            "42",
            "null",
            &two,
            &trailing,
        ];
        // Pieces of the good line whose absence makes it malformed.
        let required = [
            r#""order_id": "o-1", "#,
            r#""customer_id": "c-9", "#,
            r#""currency": "USD", "#,
            r#", "payment_token": "tok_visa""#,
            r#""items": [{"sku": "SKU-1", "qty": 2, "unit_price_cents": 1999}], "#,
            r#""sku": "SKU-1", "#,
            r#""qty": 2, "#,
            r#", "unit_price_cents": 1999"#,
        ];
        // A piece of the good line, and values of the wrong type or range for it.
        let items = r#"[{"sku": "SKU-1", "qty": 2, "unit_price_cents": 1999}]"#;
        let wrong: [(&str, &[&str]); 8] = [
            ("2,", &["2.0,", "1e3,", "\"2\",", "true,", "null,"]),
            ("1999", &["9223372036854775808", "-9223372036854775809"]),
            ("\"USD\"", &["5", "null"]),
            ("\"c-9\"", &["[\"c\"]"]),
            ("\"tok_visa\"", &["{}"]),
            ("\"o-1\"", &["1"]),
            (items, &["{}", "[1]", "null"]),
            (r#""SKU-1""#, &["7"]),
        ];
        let mut cases: Vec<String> = whole_lines.iter().map(|l| l.to_string()).collect();
        cases.extend(required.iter().map(|piece| GOOD.replace(piece, "")));
        for (piece, values) in wrong {
            assert!(GOOD.contains(piece), "{piece}");
            cases.extend(values.iter().map(|v| GOOD.replace(piece, v)));
        }
        for case in &cases {
            assert_ne!(case, GOOD);
            assert!(malformed(case), "should be malformed: {case}");
        }
    }

    #[test]
    fn orders_and_items_written_as_arrays_are_malformed() {
        // serde_json reads a struct from an array too; the contract does not.
        assert!(malformed(r#"["o-1", "c-9", "USD", [], "tok_visa"]"#));
        assert!(malformed(&GOOD.replace(
            r#"{"sku": "SKU-1", "qty": 2, "unit_price_cents": 1999}"#,
            r#"["SKU-1", 2, 1999]"#
        )));
        let mixed = GOOD.replace(
            r#"{"sku": "SKU-1", "qty": 2, "unit_price_cents": 1999}"#,
            r#"{"sku": "SKU-1", "qty": 2, "unit_price_cents": 1999}, ["SKU-2", 1, 5]"#,
        );
        assert!(malformed(&mixed));
        // Escapes send a line to the reference parser, which still accepts objects.
        assert!(matches!(
            parse_line(GOOD.replace("o-1", r"o\u002d1").as_bytes()),
            Line::Order(_)
        ));
    }

    #[test]
    fn minus_zero_reads_as_a_float_and_is_malformed() {
        // serde_json reads `-0` as the float -0.0, like `-0.0`: not an integer.
        assert!(malformed(&GOOD.replace("\"qty\": 2", "\"qty\": -0")));
    }

    #[test]
    fn integer_edges_are_well_formed() {
        for (from, to) in [
            ("1999", "9223372036854775807"),
            ("1999", "-9223372036854775808"),
        ] {
            let line = GOOD.replace(from, to);
            assert!(
                matches!(parse_line(line.as_bytes()), Line::Order(_)),
                "{line}"
            );
        }
    }

    /// The fast path's own verdict on a line, after the checks every line
    /// goes through (as [`parse_line`] would call it).
    fn fast(line: &[u8]) -> Option<Order<'_>> {
        let line = trim_newline(line);
        if is_blank(line) || line.len() > MAX_LINE_BYTES {
            return None;
        }
        parse_fast(line, &mut Vec::new())
    }

    /// Asserts the fast path takes `line` itself, giving the reference's order.
    fn assert_fast(line: &str) {
        let Some(order) = fast(line.as_bytes()) else {
            panic!("the fast path declines {line:?}")
        };
        assert_eq!(
            parse_line_reference(line.as_bytes()),
            Line::Order(order.clone()),
            "{line:?}"
        );
        assert!(matches!(order.order_id, Cow::Borrowed(_)));
        assert!(order
            .items
            .iter()
            .all(|i| matches!(i.sku, Cow::Borrowed(_))));
    }

    #[test]
    fn the_fast_path_takes_plain_orders() {
        let lines = [
            GOOD.to_string(),
            format!("{GOOD}\r\n"),
            // Keys in another order, items' keys too.
            r#"{"payment_token": "t", "items": [{"unit_price_cents": -5, "sku": "S", "qty": 0}], "currency": "", "customer_id": "c", "order_id": "o"}"#.into(),
            // Compact, and every kind of JSON whitespace everywhere.
            GOOD.replace(' ', ""),
            GOOD.replace(' ', " \t\r\n "),
            format!(" \t{}\t ", GOOD.replace(':', "\n:\r").replace(',', "\t,\n")),
            GOOD.replace("{\"sku", "\r{ \"sku").replace("}]", " } ]"),
            // No items, several items.
            GOOD.replace(r#"[{"sku": "SKU-1", "qty": 2, "unit_price_cents": 1999}]"#, "[ ]"),
            GOOD.replace("1999}", "1999}, {\"sku\": \"\", \"qty\": 0, \"unit_price_cents\": 0}"),
            // Non-ASCII and `/` (which JSON may escape but need not) as they are.
            GOOD.replace("o-1", "o-é日本🦀/\u{7f}"),
            // Unknown fields with simple values, at both levels.
            GOOD.replacen('{', r#"{"note": "gift", "n": -3, "a": true, "b": false, "c": null, "": "", "#, 1),
            GOOD.replace("1999}", r#"1999, "color": "red", "gift_wrap": true}"#),
            // Integer edges.
            GOOD.replace("1999", "9223372036854775807"),
            GOOD.replace("1999", "-9223372036854775808"),
            GOOD.replace("\"qty\": 2", "\"qty\": 0"),
            // order_id at its length limits.
            GOOD.replace("\"o-1\"", "\"i\""),
            GOOD.replace("\"o-1\"", &format!("\"{}\"", "i".repeat(64))),
            GOOD.replace("\"o-1\"", &format!("\"{}\"", "é".repeat(32))),
        ];
        for line in &lines {
            assert_fast(line);
        }
    }

    #[test]
    fn the_fast_path_leaves_the_unusual_to_the_reference() {
        // Each of these is an order to serde_json, but not one the fast path
        // is sure of: it must decline, and parse_line still gives the order.
        let lines = [
            GOOD.replace("o-1", r"o-\u0031"),
            GOOD.replace("o-1", r#"o-\"1"#),
            GOOD.replace("\"order_id\"", r#""order\u005fid""#),
            GOOD.replacen('{', r#"{"note": {"deep": [1, 2]}, "#, 1),
            GOOD.replacen('{', r#"{"ratio": 1.5e0, "#, 1),
            GOOD.replacen('{', r#"{"z": -0, "#, 1),
            GOOD.replacen('{', r#"{"big": 9223372036854775808, "#, 1),
            GOOD.replace("1999}", r#"1999, "tags": []}"#),
        ];
        for line in &lines {
            assert!(fast(line.as_bytes()).is_none(), "{line}");
            assert!(
                matches!(parse_line(line.as_bytes()), Line::Order(_)),
                "{line}"
            );
        }
        // And what is malformed the fast path leaves to the reference to say so.
        for line in [
            // serde reads a struct from an array of its fields; the contract does not.
            r#"["o-1", "c", "USD", [["S", 1, 2]], "t"]"#.into(),
            GOOD.replace(
                r#"{"sku": "SKU-1", "qty": 2, "unit_price_cents": 1999}"#,
                r#"["S", 1, 2]"#,
            ),
            GOOD.replace("\"qty\": 2", "\"qty\": -0"),
            GOOD.replace("\"qty\": 2", "\"qty\": 02"),
            GOOD.replace("\"qty\": 2", "\"qty\": 2.0"),
            GOOD.replace("\"qty\": 2", "\"qty\": 2e0"),
            GOOD.replace("1999", "9223372036854775808"),
            GOOD.replace("1999", "-9223372036854775809"),
            GOOD.replace("o-1", "o\t1"),
            GOOD.replace("\"o-1\"", "\"\""),
            GOOD.replace("\"o-1\"", &format!("\"{}\"", "i".repeat(65))),
            GOOD.replace("\"c-9\"", "\"c-9\", \"customer_id\": \"c-9\""),
            GOOD.replace("\"qty\": 2", "\"qty\": 2, \"qty\": 2"),
            GOOD.replace("}]", "},]"),
            GOOD.replace("}]", "}],"),
            GOOD.replace("\"USD\"", "\"USD\" \"x\""),
            GOOD.replacen('{', "{\"a\": tru, ", 1),
            format!("{GOOD}x"),
            format!("{GOOD}{{}}"),
            format!("\u{feff}{GOOD}"),
        ] {
            assert!(fast(line.as_bytes()).is_none(), "{line}");
            assert!(
                matches!(parse_line(line.as_bytes()), Line::Malformed(_)),
                "{line}"
            );
        }
    }

    #[test]
    fn string_ends_and_ascii_are_found_at_every_offset() {
        // The word-at-a-time scan against a byte-at-a-time one: every byte
        // value at every offset of the first two words and the tail, among
        // fillers next to the special values (ASCII and UTF-8 bytes).
        let naive = |rest: &[u8]| {
            let end = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
            (rest[end] == b'"').then_some((end, rest[..end].is_ascii()))
        };
        let fillers = [
            b'a', b' ', b'!', b'#', b'[', b']', 0x7F, 0x80, 0xBF, 0xC3, 0xFF,
        ];
        for len in 0..20 {
            for filler in fillers {
                for byte in 0..=255u8 {
                    for tail in [&b"\""[..], b"", b"xx\"", b"\\\""] {
                        let mut rest = vec![filler; len];
                        rest.push(byte);
                        rest.extend_from_slice(tail);
                        assert_eq!(plain_string_len(&rest), naive(&rest), "{rest:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn keys_are_recognised_exactly() {
        let known = [
            ("order_id", Key::OrderId),
            ("customer_id", Key::CustomerId),
            ("currency", Key::Currency),
            ("items", Key::Items),
            ("payment_token", Key::PaymentToken),
            ("sku", Key::Sku),
            ("qty", Key::Qty),
            ("unit_price_cents", Key::UnitPriceCents),
        ];
        for (name, key) in known {
            let text = format!("\"{name}\": 1");
            let mut cur = Cursor {
                text: text.as_bytes(),
                pos: 0,
            };
            assert_eq!(cur.key(), Some(key));
            assert_eq!(cur.rest(), b": 1");
            // A longer or shorter name, another case, an escape or no closing quote: not this key.
            for other in [
                format!("\"{name}x\": 1"),
                format!("\"{}\": 1", &name[..name.len() - 1]),
                format!("\"{}\": 1", name.to_uppercase()),
                format!("\"{name}\\u0041\": 1"),
                format!("\"{name}"),
            ] {
                let mut cur = Cursor {
                    text: other.as_bytes(),
                    pos: 0,
                };
                assert!(!known.iter().any(|&(_, k)| cur.key() == Some(k)), "{other}");
            }
        }
    }

    /// What the fast path is meant to take: an order to the reference, with
    /// no escape anywhere and unknown fields (at either level) holding only
    /// strings, i64 integers, booleans or null.
    fn plainly_an_order(line: &[u8]) -> bool {
        use serde_json::Value;
        let simple = |v: &Value| match v {
            Value::Number(n) => n.is_i64(),
            Value::String(_) | Value::Bool(_) | Value::Null => true,
            Value::Array(_) | Value::Object(_) => false,
        };
        let unknowns_simple = |v: &Value, known: &[&str]| {
            v.as_object().is_some_and(|o| {
                o.iter()
                    .all(|(k, v)| known.contains(&k.as_str()) || simple(v))
            })
        };
        let order = [
            "order_id",
            "customer_id",
            "currency",
            "items",
            "payment_token",
        ];
        let item = ["sku", "qty", "unit_price_cents"];
        matches!(parse_line_reference(line), Line::Order(_))
            && !line.contains(&b'\\')
            && serde_json::from_slice::<Value>(line).is_ok_and(|v| {
                unknowns_simple(&v, &order)
                    && v["items"]
                        .as_array()
                        .is_some_and(|items| items.iter().all(|i| unknowns_simple(i, &item)))
            })
    }

    #[test]
    fn the_fast_path_takes_every_plain_generated_order() {
        let mut generator = crate::generator::Generator::new(10_000, 42);
        let (mut line, mut plain, mut usual) = (Vec::new(), 0, 0);
        while generator.next_line(&mut line) {
            if plainly_an_order(&line) {
                plain += 1;
                let text = std::str::from_utf8(&line).expect("an order is UTF-8");
                assert_fast(text);
                usual +=
                    usize::from(parse_usual_layout(text.as_bytes(), &mut Vec::new()).is_some());
            } else {
                assert!(fast(&line).is_none(), "{}", String::from_utf8_lossy(&line));
            }
            assert_eq!(parse_line(&line), parse_line_reference(&line));
            line.clear();
        }
        // About 97% of generated lines are orders, ~2% with unknown fields.
        assert!(plain > 9_400, "only {plain} of 10,000 taken");
        // All but ~1% of those are in the usual layout, matched as such.
        assert!(usual > 9_300, "only {usual} of 10,000 in the usual layout");
    }

    /// The generator's splitmix64: deterministic, and plenty for picking mutations.
    use crate::generator::Rng;

    /// Bits of JSON that change what a line means when dropped in anywhere.
    const TOKENS: &[&str] = &[
        "\\",
        "\"",
        ",",
        ":",
        "{",
        "}",
        "[",
        "]",
        " ",
        "\t",
        "\r",
        "\n",
        "-",
        "0",
        "-0",
        "1.0",
        "1e3",
        "01",
        "\\u0041",
        "\\\"",
        "\\n",
        "true",
        "null",
        "\"\"",
        "é",
        "\u{0}",
        "\u{1f}",
        "\u{7f}",
        // Whitespace to other readers, not to JSON.
        "\u{b}",
        "\u{c}",
        "\u{a0}",
        "\u{feff}",
        ".",
        "e",
        "E",
        "+",
        "1E3",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "18446744073709551615",
        "18446744073709551616",
        "\"order_id\": \"o-2\", ",
        "\"items\": [], ",
        "\"note\": 1, ",
        "\"sku\": \"S\", ",
        "\"qty\": 3, ",
        "{\"sku\": \"S\", \"qty\": 1, \"unit_price_cents\": 1}, ",
    ];
    const STRINGS: &[&str] = &[
        "o-1",
        "c-9",
        "USD",
        "SKU-1",
        "tok_visa",
        "",
        "é",
        "日本🦀",
        "a b",
        "a\\\"b",
        "\\u0041",
        "\\/",
        "tab\there",
        "\u{7f}",
        "iiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiii",
        "iiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiii",
    ];
    const INTEGERS: &[&str] = &[
        "0",
        "1",
        "2",
        "-1",
        "1999",
        "1000",
        "9223372036854775807",
        "-9223372036854775808",
        "9223372036854775808",
        "-9223372036854775809",
        "18446744073709551616",
        "-0",
        "01",
        "00",
        "-01",
        "1.0",
        "1.",
        "1e3",
        "1E+3",
        "2.5e-1",
        "-",
        "\"2\"",
        "true",
        "null",
        "[1]",
    ];
    const UNKNOWN_VALUES: &[&str] = &[
        "1",
        "-7",
        "\"red\"",
        "true",
        "false",
        "null",
        "\"\"",
        "1.5e0",
        "-0",
        "{\"a\": [1, 2]}",
        "[]",
        "{}",
        "tru",
        "nul",
        "\"a\\\"b\"",
        "9223372036854775808",
        // Not JSON numbers, even where the value is ignored.
        "01",
        "-",
        "1.",
        "1e",
        ".5",
        "+1",
    ];

    /// JSON whitespace, usually none or one space.
    fn ws(rng: &mut Rng) -> String {
        match rng.index(8) {
            0..=2 => String::new(),
            3..=5 => " ".into(),
            _ => (0..rng.index(4))
                .map(|_| rng.pick(&[" ", "\t", "\r", "\n"]))
                .collect(),
        }
    }

    /// `{"k": v, ...}` with random whitespace; the fields are shuffled, and
    /// now and then one is dropped, repeated or joined by an unknown one.
    fn object(rng: &mut Rng, mut fields: Vec<(String, String)>) -> String {
        for i in (1..fields.len()).rev() {
            fields.swap(i, rng.index(i + 1));
        }
        if rng.one_in(25) && !fields.is_empty() {
            fields.remove(rng.index(fields.len()));
        }
        if rng.one_in(25) && !fields.is_empty() {
            let again = fields[rng.index(fields.len())].clone();
            fields.insert(rng.index(fields.len() + 1), again);
        }
        if rng.one_in(6) {
            let name = rng
                .pick(&["note", "color", "", "Order_id", "sku"])
                .to_string();
            let value = rng.pick(UNKNOWN_VALUES).to_string();
            fields.insert(rng.index(fields.len() + 1), (name, value));
        }
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{}\"{k}\"{}:{}{v}{}", ws(rng), ws(rng), ws(rng), ws(rng)))
            .collect();
        format!("{{{}}}", body.join(","))
    }

    /// A value of the right kind most of the time, else anything from `odd`.
    fn value(rng: &mut Rng, plain: String, odd: &[&str]) -> String {
        if rng.one_in(30) {
            rng.pick(odd).to_string()
        } else {
            plain
        }
    }

    fn string(rng: &mut Rng, plain: &str) -> String {
        let s = if rng.one_in(8) {
            rng.pick(STRINGS)
        } else {
            plain
        };
        value(rng, format!("\"{s}\""), INTEGERS)
    }

    fn integer(rng: &mut Rng) -> String {
        let n = if rng.one_in(20) {
            rng.pick(INTEGERS).to_string()
        } else {
            (rng.next_u64() % 100_000).to_string()
        };
        value(rng, n, STRINGS)
    }

    /// A random order line, mostly well-formed.
    fn random_order(rng: &mut Rng) -> String {
        let items: Vec<String> = (0..rng.index(4))
            .map(|_| {
                let fields = vec![
                    ("sku".into(), string(rng, "SKU-1")),
                    ("qty".into(), integer(rng)),
                    ("unit_price_cents".into(), integer(rng)),
                ];
                object(rng, fields)
            })
            .collect();
        let items = format!("[{}{}]", ws(rng), items.join(&format!("{},", ws(rng))));
        let id = format!("o-{}", rng.next_u64() % 1000);
        let fields = vec![
            ("order_id".into(), string(rng, &id)),
            ("customer_id".into(), string(rng, "c-9")),
            ("currency".into(), string(rng, "USD")),
            (
                "items".into(),
                value(rng, items, &["[]", "{}", "null", "[1]", "[[]]"]),
            ),
            ("payment_token".into(), string(rng, "tok_visa")),
        ];
        format!("{}{}{}", ws(rng), object(rng, fields), ws(rng))
    }

    /// A position in `line`, half the time next to a structural character
    /// (where a token changes the most).
    fn position(rng: &mut Rng, line: &[u8]) -> usize {
        let at = rng.index(line.len() + 1);
        if rng.one_in(2) {
            let structural = |b: &u8| b"{}[],:\"".contains(b);
            if let Some(i) = line.iter().skip(at).position(structural) {
                return at + i + rng.index(2);
            }
        }
        at
    }

    /// One random edit of the bytes of `line`.
    fn mutate(rng: &mut Rng, line: &mut Vec<u8>) {
        let at = position(rng, line);
        let len = rng.index(8) + 1;
        let end = (at + len).min(line.len());
        match rng.index(6) {
            0 if at < line.len() => {
                line[at] = if rng.one_in(3) {
                    rng.next_u64() as u8
                } else {
                    0x20 + rng.index(95) as u8
                };
            }
            1 => {
                line.splice(at..end, []);
            }
            2 => {
                line.splice(at..end, rng.pick(TOKENS).bytes());
            }
            3 => {
                // Splice in a piece of the line itself: repeats a field or a part of one.
                let from = rng.index(line.len() + 1);
                let piece = line[from..(from + rng.index(48)).min(line.len())].to_vec();
                line.splice(at..at, piece);
            }
            4 if rng.one_in(4) => line.truncate(at),
            _ => {
                line.splice(at..at, rng.pick(TOKENS).bytes());
            }
        }
    }

    #[test]
    fn the_fast_path_agrees_with_the_reference_on_mutated_lines() {
        const CASES: usize = 200_000;
        let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
        let mut generated = Vec::new();
        let mut generator = crate::generator::Generator::new(2_000, 7);
        let mut line = Vec::new();
        while generator.next_line(&mut line) {
            generated.push(std::mem::take(&mut line));
        }
        // Outcomes: taken by the fast path, orders left to the reference, malformed, blank.
        let (mut taken, mut declined, mut malformed, mut blank) = (0, 0, 0, 0);
        for _ in 0..CASES {
            let mut line = match rng.index(4) {
                0 | 1 => random_order(&mut rng).into_bytes(),
                2 => generated[rng.index(generated.len())].clone(),
                _ => GOOD.as_bytes().to_vec(),
            };
            // Half the lines stay as they are (the random orders vary
            // enough), so that the fast path gets its share.
            let edits = if rng.one_in(2) { 0 } else { 1 + rng.index(3) };
            for _ in 0..edits {
                mutate(&mut rng, &mut line);
            }
            if rng.one_in(8) {
                line.extend_from_slice(rng.pick(&["\n", "\r\n", "\r", " \n", "\n\n"]).as_bytes());
            }
            let want = parse_line_reference(&line);
            let got = parse_line(&line);
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&line));
            match (&want, fast(&line)) {
                (Line::Order(_), Some(_)) => taken += 1,
                (Line::Order(_), None) => declined += 1,
                (Line::Malformed(_), _) => malformed += 1,
                (Line::Blank, _) => blank += 1,
            }
        }
        // The cases must exercise both paths, not only one of them.
        let outcomes =
            format!("{taken} taken, {declined} declined, {malformed} malformed, {blank} blank");
        assert_eq!(taken + declined + malformed + blank, CASES);
        assert!(
            taken > CASES / 5 && declined > CASES / 50 && malformed > CASES / 5,
            "{outcomes}"
        );
        eprintln!("differential: {CASES} lines: {outcomes}");
    }
}
