//! Inventory: the stock file, and the allocator that decides, in line order,
//! which orders get their units.
//!
//! # The stock file
//! JSON Lines, one `{"sku": "SKU-1", "on_hand": 120}` per line. Blank lines
//! are ignored and unknown fields too; `on_hand` is a JSON integer in
//! `0..=i64::MAX`, a SKU is 1..=64 bytes and listed once. Anything else is a
//! [`StockError`] naming the file, the line and what is wrong.
//!
//! # Allocation
//! The ventilator's reader feeds every distinct order that passes the six
//! rules to [`Allocator::allocate`], in line order. An order gets every unit
//! it asks for (a SKU listed twice needs both quantities at once) or none:
//! then it is rejected `out_of_stock` and never reaches a worker. A SKU not
//! in the file has no units. Allocated units stay allocated whatever the
//! payment does (a declined or failed order's units come back only when the
//! run is over), so every decision is a function of the input and the stock
//! file alone: redeliveries, worker crashes and restarts cannot allocate
//! twice, and no decision depends on which worker finished first.
//!
//! # How the sink learns `on_hand`
//! After the input's last line, the ventilator sends one more record per SKU
//! of the file, in file order, with seqs following the lines': outcome
//! [`Outcome::OnHand`](crate::rules::Outcome::OnHand), items `[[sku, on_hand]]`.
//! They travel, are journaled, acknowledged and redelivered like any other
//! record, so the sink holds them exactly once and durably with no other
//! machinery; the ledger keeps them apart from the order counts.

use crate::fasthash::FxMap;
use crate::rules::MAX_SKU_BYTES;
use serde_json::Value;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::{xxh3_128, Xxh3};

/// The stock file, parsed: SKUs in file order with their units on hand, and
/// the map from a SKU to its index.
///
/// Built to hold millions of SKUs in little memory: the names back to back
/// in one string, and the map keyed by each name's 128-bit digest (xxh3).
/// Two distinct SKUs with one digest are possible in principle (about
/// 10^-27 for 10^6 SKUs), as for order ids.
#[derive(Debug, Clone, Default)]
pub struct StockTable {
    /// Every SKU, back to back, in file order.
    names: String,
    /// Where each SKU ends in `names`.
    ends: Vec<u32>,
    on_hand: Vec<i64>,
    /// Keyed by [`key`]: two u64 halves pack into 24-byte entries, not 32.
    index: FxMap<(u64, u64), SkuIndex>,
    /// xxh3 of the file's bytes: part of the run's identity.
    digest: u64,
}

/// Why a stock file is refused: `stock file F: line N: what`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockError {
    pub path: PathBuf,
    /// 1-based; 0 when the file itself cannot be read.
    pub line: u64,
    pub what: String,
}

impl fmt::Display for StockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "stock file {}: {}", self.path.display(), self.what)
        } else {
            write!(
                f,
                "stock file {}: line {}: {}",
                self.path.display(),
                self.line,
                self.what
            )
        }
    }
}

impl std::error::Error for StockError {}

impl StockTable {
    /// Reads and checks a stock file, a line at a time.
    pub fn load(path: &Path) -> Result<StockTable, StockError> {
        let error = |line, what| StockError {
            path: path.to_owned(),
            line,
            what,
        };
        let file = std::fs::File::open(path).map_err(|e| error(0, format!("cannot read: {e}")))?;
        let size = file.metadata().map_or(0, |m| m.len());
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let mut table = StockTable::default();
        // Sized once from the head's line length: growing a map of millions
        // of SKUs would hold the old table and the new one at once.
        if let Ok(head) = reader.fill_buf() {
            let lines = memchr::memchr_iter(b'\n', head).count().max(1);
            let estimate = size as f64 / (head.len().max(1) as f64 / lines as f64);
            table.reserve(estimate.ceil() as usize);
        }
        let mut hasher = Xxh3::new();
        let mut line = Vec::new();
        for number in 1u64.. {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| error(0, format!("cannot read: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&line);
            let raw = line.strip_suffix(b"\n").unwrap_or(&line);
            table.add_line(raw).map_err(|what| error(number, what))?;
        }
        table.digest = hasher.digest();
        Ok(table)
    }

    /// Parses a stock file's bytes; an error is `(line number, what is wrong)`.
    pub fn parse(bytes: &[u8]) -> Result<StockTable, (u64, String)> {
        let mut table = StockTable {
            digest: xxhash_rust::xxh3::xxh3_64(bytes),
            ..StockTable::default()
        };
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            table.add_line(raw).map_err(|what| (i as u64 + 1, what))?;
        }
        Ok(table)
    }

    /// Room for about `skus` SKUs (at most 2^26 ahead of time).
    fn reserve(&mut self, skus: usize) {
        let skus = skus.min(1 << 26);
        self.index.reserve(skus);
        self.ends.reserve(skus);
        self.on_hand.reserve(skus);
    }

    /// One line of the file (without its newline): blank, or one more SKU.
    fn add_line(&mut self, raw: &[u8]) -> Result<(), String> {
        if raw.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
            return Ok(());
        }
        let (sku, on_hand) = parse_entry(raw)?;
        let index = SkuIndex::try_from(self.ends.len())
            .ok()
            .filter(|&i| i != UNKNOWN)
            .ok_or("more SKUs than a stock file may hold")?;
        if self.names.len() + sku.len() > u32::MAX as usize {
            return Err("more SKU bytes than a stock file may hold".into());
        }
        if self.index.insert(key(&sku), index).is_some() {
            return Err(format!("SKU {sku:?} is listed twice"));
        }
        self.names.push_str(&sku);
        self.ends.push(self.names.len() as u32);
        self.on_hand.push(on_hand);
        Ok(())
    }

    /// How many SKUs the file lists.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// `(sku, on_hand)` in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i64)> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .map(|(start, &end)| &self.names[start as usize..end as usize])
            .zip(self.on_hand.iter().copied())
    }

    /// The index of a SKU, [`UNKNOWN`] if the file does not list it.
    pub fn index_of(&self, sku: &str) -> SkuIndex {
        self.index.get(&key(sku)).copied().unwrap_or(UNKNOWN)
    }

    /// The digest of the file's bytes.
    pub fn digest(&self) -> u64 {
        self.digest
    }
}

/// A SKU's key in the index: its 128-bit digest.
fn key(sku: &str) -> (u64, u64) {
    let digest = xxh3_128(sku.as_bytes());
    ((digest >> 64) as u64, digest as u64)
}

/// One non-blank line: `{"sku": "…", "on_hand": N, …}`.
fn parse_entry(raw: &[u8]) -> Result<(String, i64), String> {
    let value: Value =
        serde_json::from_slice(raw).map_err(|e| format!("not a JSON object ({e})"))?;
    let Value::Object(mut fields) = value else {
        return Err("not a JSON object".into());
    };
    let sku = match fields.remove("sku") {
        None => return Err("no \"sku\" field".into()),
        Some(Value::String(s)) => s,
        Some(_) => return Err("\"sku\" is not a string".into()),
    };
    if sku.is_empty() || sku.len() > MAX_SKU_BYTES {
        return Err(format!(
            "\"sku\" is {} bytes long, not 1..={MAX_SKU_BYTES}",
            sku.len()
        ));
    }
    let on_hand = match fields.get("on_hand") {
        None => return Err("no \"on_hand\" field".into()),
        Some(Value::Number(n)) => n,
        Some(_) => return Err("\"on_hand\" is not a number".into()),
    };
    let on_hand = if let Some(n) = on_hand.as_i64() {
        n
    } else if on_hand.is_u64() {
        return Err(format!("\"on_hand\" {on_hand} is over {}", i64::MAX));
    } else {
        return Err(format!("\"on_hand\" {on_hand} is not an integer"));
    };
    if on_hand < 0 {
        return Err(format!("\"on_hand\" {on_hand} is negative"));
    }
    Ok((sku, on_hand))
}

/// A SKU's index in the table; [`UNKNOWN`] for a SKU not in the file.
pub type SkuIndex = u32;
/// The index of every SKU the stock file does not list (it has 0 units).
pub const UNKNOWN: SkuIndex = SkuIndex::MAX;

/// Units still unallocated per SKU, decided in line order.
///
/// The hot path allocates nothing: the SKU map is built once, and an order's
/// demand is a slice of `(index, qty)` in a buffer the caller reuses.
#[derive(Debug, Clone)]
pub struct Allocator {
    table: StockTable,
    free: Vec<i64>,
}

impl Allocator {
    /// Every SKU of the table with all its units free.
    pub fn new(table: StockTable) -> Allocator {
        let free = table.on_hand.clone();
        Allocator { table, free }
    }

    /// The stock file this allocator decides from.
    pub fn table(&self) -> &StockTable {
        &self.table
    }

    /// Appends an order's items to `demand` as `(index, qty)`.
    pub fn demand<'a>(
        &self,
        items: impl Iterator<Item = (&'a str, i64)>,
        demand: &mut Vec<(SkuIndex, i64)>,
    ) {
        for (sku, qty) in items {
            demand.push((self.table.index_of(sku), qty));
        }
    }

    /// All or nothing: if every SKU in `demand` has at least the sum of its
    /// quantities free, takes them and returns true; otherwise changes
    /// nothing and returns false. Quantities are positive (the rules ran);
    /// `demand` is reordered.
    pub fn allocate(&mut self, demand: &mut [(SkuIndex, i64)]) -> bool {
        demand.sort_unstable_by_key(|&(i, _)| i);
        let mut fits = true;
        for_each_sku(demand, |i, need| {
            fits &= i != UNKNOWN && self.free[i as usize] >= need;
        });
        if fits {
            for_each_sku(demand, |i, need| self.free[i as usize] -= need);
        }
        fits
    }

    /// Units of the SKU at `index` not allocated so far.
    pub fn free(&self, index: SkuIndex) -> Option<i64> {
        self.free.get(index as usize).copied()
    }

    /// The index of a SKU, [`UNKNOWN`] if the file does not list it.
    pub fn index_of(&self, sku: &str) -> SkuIndex {
        self.table.index_of(sku)
    }
}

/// Calls `f(index, total qty)` once per SKU of a demand sorted by index.
/// Totals saturate at `i64::MAX` (more than any stock can hold).
fn for_each_sku(sorted: &[(SkuIndex, i64)], mut f: impl FnMut(SkuIndex, i64)) {
    let mut rest = sorted;
    while let Some(&(i, _)) = rest.first() {
        let n = rest.iter().take_while(|&&(j, _)| j == i).count();
        let need = rest[..n]
            .iter()
            .fold(0i64, |sum, &(_, q)| sum.saturating_add(q));
        f(i, need);
        rest = &rest[n..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> StockTable {
        StockTable::parse(text.as_bytes()).unwrap()
    }

    fn order(a: &mut Allocator, items: &[(&str, i64)]) -> bool {
        let mut demand = Vec::new();
        a.demand(items.iter().copied(), &mut demand);
        a.allocate(&mut demand)
    }

    fn free(a: &Allocator, sku: &str) -> i64 {
        a.free(a.index_of(sku)).unwrap()
    }

    #[test]
    fn parses_entries_in_file_order() {
        let t = table(
            "{\"sku\": \"B\", \"on_hand\": 3}\n\n  \r\n{\"on_hand\": 0, \"sku\": \"A\", \"x\": [1]}\r\n{\"sku\":\"C\",\"on_hand\":9223372036854775807}",
        );
        let entries: Vec<_> = t.iter().collect();
        assert_eq!(entries, [("B", 3), ("A", 0), ("C", i64::MAX)]);
        assert!(table("").is_empty() && table("\n \n").is_empty());
        assert_ne!(
            table("{\"sku\":\"A\",\"on_hand\":1}").digest(),
            table("{\"sku\":\"A\",\"on_hand\":2}").digest()
        );
    }

    #[test]
    fn refuses_bad_lines_with_their_number() {
        let good = "{\"sku\": \"A\", \"on_hand\": 1}\n";
        let cases = [
            ("[1]", "not a JSON object"),
            ("{\"sku\": \"A\"", "not a JSON object"),
            ("\"A\"", "not a JSON object"),
            ("{\"on_hand\": 1}", "no \"sku\""),
            ("{\"sku\": \"B\"}", "no \"on_hand\""),
            ("{\"sku\": 1, \"on_hand\": 1}", "\"sku\" is not a string"),
            ("{\"sku\": \"B\", \"on_hand\": \"1\"}", "not a number"),
            ("{\"sku\": \"B\", \"on_hand\": 1.5}", "not an integer"),
            ("{\"sku\": \"B\", \"on_hand\": 2.0}", "not an integer"),
            ("{\"sku\": \"B\", \"on_hand\": 1e3}", "not an integer"),
            ("{\"sku\": \"B\", \"on_hand\": -1}", "negative"),
            ("{\"sku\": \"B\", \"on_hand\": 9223372036854775808}", "over"),
            ("{\"sku\": \"\", \"on_hand\": 1}", "0 bytes"),
            ("{\"sku\": \"A\", \"on_hand\": 1}", "listed twice"),
        ];
        for (line, what) in cases {
            let text = format!("{good}\n{line}\n{good}");
            let (number, message) = StockTable::parse(text.as_bytes()).unwrap_err();
            assert_eq!(number, 3, "{line}");
            assert!(message.contains(what), "{line}: {message}");
        }
        let long = format!("{{\"sku\": \"{}\", \"on_hand\": 1}}", "s".repeat(65));
        assert!(StockTable::parse(long.as_bytes())
            .unwrap_err()
            .1
            .contains("65 bytes"));
        let fine = format!("{{\"sku\": \"{}\", \"on_hand\": 1}}", "s".repeat(64));
        assert_eq!(table(&fine).len(), 1);
    }

    #[test]
    fn error_names_file_and_line() {
        let e = StockError {
            path: "s.jsonl".into(),
            line: 4,
            what: "\"on_hand\" -1 is negative".into(),
        };
        assert_eq!(
            e.to_string(),
            "stock file s.jsonl: line 4: \"on_hand\" -1 is negative"
        );
        let missing = StockTable::load(Path::new("/nonexistent/stock.jsonl")).unwrap_err();
        assert!(missing
            .to_string()
            .starts_with("stock file /nonexistent/stock.jsonl: cannot read"));
    }

    #[test]
    fn load_reads_a_file_as_parse_reads_its_bytes() {
        let text = "{\"sku\": \"B\", \"on_hand\": 3}\n\n{\"sku\": \"A\", \"on_hand\": 0}";
        let path = std::env::temp_dir().join(format!("og-stock-{}.jsonl", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let loaded = StockTable::load(&path);
        let bad = format!("{text}\n{{\"sku\": \"B\", \"on_hand\": 1}}\n");
        std::fs::write(&path, bad).unwrap();
        let refused = StockTable::load(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        let (loaded, parsed) = (loaded.unwrap(), table(text));
        assert_eq!(
            loaded.iter().collect::<Vec<_>>(),
            parsed.iter().collect::<Vec<_>>()
        );
        assert_eq!(loaded.digest(), parsed.digest());
        assert_eq!(
            (
                loaded.index_of("A"),
                loaded.index_of("B"),
                loaded.index_of("C")
            ),
            (1, 0, UNKNOWN)
        );
        assert_eq!(refused.line, 4);
        assert!(refused.what.contains("listed twice"), "{refused}");
    }

    #[test]
    fn a_sku_twice_in_one_order_needs_both_quantities() {
        let mut a = Allocator::new(table("{\"sku\":\"A\",\"on_hand\":5}"));
        assert!(!order(&mut a, &[("A", 3), ("A", 3)]));
        assert_eq!(free(&a, "A"), 5);
        assert!(order(&mut a, &[("A", 3), ("A", 2)]));
        assert_eq!(free(&a, "A"), 0);
    }

    #[test]
    fn multi_sku_orders_are_all_or_nothing() {
        let mut a = Allocator::new(table(
            "{\"sku\":\"A\",\"on_hand\":10}\n{\"sku\":\"B\",\"on_hand\":1}",
        ));
        assert!(!order(&mut a, &[("A", 4), ("B", 2)]));
        assert_eq!((free(&a, "A"), free(&a, "B")), (10, 1));
        assert!(order(&mut a, &[("B", 1), ("A", 4)]));
        assert_eq!((free(&a, "A"), free(&a, "B")), (6, 0));
        assert!(order(&mut a, &[("A", 6)]));
        assert!(!order(&mut a, &[("A", 1)]));
    }

    #[test]
    fn units_held_by_an_earlier_order_are_not_offered_again() {
        // The first order's payment may be declined later: its units stay
        // allocated for the rest of the run, so the next order cannot have them.
        let mut a = Allocator::new(table("{\"sku\":\"A\",\"on_hand\":2}"));
        assert!(order(&mut a, &[("A", 2)]));
        assert!(!order(&mut a, &[("A", 1)]));
    }

    #[test]
    fn skus_not_in_the_file_have_no_units() {
        let mut a = Allocator::new(table("{\"sku\":\"A\",\"on_hand\":2}"));
        assert!(!order(&mut a, &[("A", 1), ("Z", 1)]));
        assert_eq!(free(&a, "A"), 2);
        assert_eq!(a.index_of("Z"), UNKNOWN);
        let mut empty = Allocator::new(table(""));
        assert!(!order(&mut empty, &[("A", 1)]));
        // A SKU on hand at 0 is listed, and still has nothing.
        let mut zero = Allocator::new(table("{\"sku\":\"A\",\"on_hand\":0}"));
        assert!(!order(&mut zero, &[("A", 1)]));
    }

    #[test]
    fn i64_limits_neither_overflow_nor_wrap() {
        let mut a = Allocator::new(table(
            "{\"sku\":\"A\",\"on_hand\":9223372036854775807}\n{\"sku\":\"B\",\"on_hand\":9223372036854775806}",
        ));
        // Demand sums saturate instead of wrapping to a negative need.
        assert!(!order(&mut a, &[("B", i64::MAX), ("B", i64::MAX)]));
        assert!(order(&mut a, &[("A", i64::MAX - 1)]));
        assert!(order(&mut a, &[("A", 1)]));
        assert!(!order(&mut a, &[("A", 1)]));
        assert!(order(&mut a, &[("B", i64::MAX - 1)]));
        assert_eq!((free(&a, "A"), free(&a, "B")), (0, 0));
    }

    #[test]
    fn the_demand_buffer_is_reused() {
        let mut a = Allocator::new(table("{\"sku\":\"A\",\"on_hand\":1000}"));
        let mut demand = Vec::with_capacity(8);
        let cap = demand.capacity();
        for _ in 0..100 {
            demand.clear();
            a.demand([("A", 1), ("A", 2)].into_iter(), &mut demand);
            assert!(a.allocate(&mut demand));
        }
        assert_eq!(demand.capacity(), cap);
        assert_eq!(free(&a, "A"), 700);
    }
}
