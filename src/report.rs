//! The run report: the JSON document the sink writes (a contract users script
//! against) and the human table it prints.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The whole report. `orders`, `rejected`, `payments` and `stock` are the
/// exact tally; `run` and `stats` describe this particular execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub orders: OrderCounts,
    pub rejected: RejectedCounts,
    pub payments: BTreeMap<String, CurrencyTotals>,
    pub stock: BTreeMap<String, i64>,
    /// With a stock file only: every SKU of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<BTreeMap<String, InventoryLine>>,
    pub run: RunSection,
    pub stats: SinkStats,
}

/// `paid + declined + rejected + failed + duplicate + malformed = lines`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCounts {
    pub lines: u64,
    pub paid: u64,
    pub declined: u64,
    pub rejected: u64,
    pub failed: u64,
    pub duplicate: u64,
    pub malformed: u64,
}

/// Rejections by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedCounts {
    pub bad_currency: u64,
    pub no_items: u64,
    pub bad_sku: u64,
    pub bad_quantity: u64,
    pub bad_price: u64,
    pub amount_overflow: u64,
    /// With a stock file only: orders that could not get all their units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_stock: Option<u64>,
}

/// One SKU of the stock file at the end of the run: `available = on_hand -
/// sold`, where `sold` are the units of paid orders (a declined or failed
/// order's units are available again). The `available` column is the next
/// run's stock file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryLine {
    pub on_hand: i64,
    pub sold: i64,
    pub available: i64,
}

/// Paid orders and the amount captured in one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrencyTotals {
    pub orders: u64,
    /// Exact: may exceed `i64::MAX`.
    pub captured_cents: i128,
}

/// Which run this is and how it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSection {
    /// The run id, 16 hexadecimal digits.
    pub id: String,
    /// What the ventilator read (`file:…`, `generate:N:S`, `stdin`).
    pub input: String,
    /// Seconds from the run's first hello to completion, across restarts.
    pub elapsed_seconds: f64,
    pub orders_per_second: f64,
    /// Distinct worker processes that sent results.
    pub workers_seen: u64,
    /// How many sink processes resumed the run from its journal (restarts).
    pub sink_restarts: u64,
}

/// What the sink saw besides the tally: redeliveries, bad frames, the journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkStats {
    /// Result frames received and decoded.
    pub result_frames: u64,
    /// Results received (including repeats).
    pub results_received: u64,
    /// Results for orders already tallied: redeliveries, replays. Dropped.
    pub duplicate_results: u64,
    /// Frames that failed to decode (garbage, truncated, unknown version or kind). Dropped.
    pub bad_frames: u64,
    /// Frames that failed authentication (wrong or missing key). Dropped.
    pub unauthenticated_frames: u64,
    /// Results breaking the rules of a result (bad outcome, bad paid fields). Dropped.
    pub invalid_results: u64,
    /// Results for another run than the active one. Dropped.
    pub other_run_results: u64,
    /// Results for orders never dispatched. Dropped.
    pub unknown_order_results: u64,
    /// Journal fsyncs (each covers many results).
    pub journal_syncs: u64,
    /// Journal compactions into a snapshot.
    pub journal_compactions: u64,
    /// Times a journal was found damaged between intact records on replay:
    /// the intact records were recovered, the damaged file kept aside, and
    /// the orders it held delivered again.
    #[serde(default)]
    pub journal_damage: u64,
}

/// `[(name, value)]` of the named fields of a struct, named as in the JSON.
macro_rules! named_fields {
    ($s:expr; $($field:ident),+) => {
        [$((stringify!($field), $s.$field)),+]
    };
}

/// A block of the human summary: a blank line, `heading` over "count", one
/// row per name.
fn count_rows(t: &mut String, heading: &str, rows: &[(&str, u64)]) {
    let _ = writeln!(t);
    let _ = writeln!(t, "{heading:<18} {:>14}", "count");
    for (name, n) in rows {
        let _ = writeln!(t, "{name:<18} {n:>14}");
    }
}

impl Report {
    /// The report as pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("a report always serialises");
        s.push('\n');
        s
    }

    /// The human summary: counts, payments per currency, the top SKUs by units.
    pub fn to_table(&self, top_skus: usize) -> String {
        let o = &self.orders;
        let r = &self.rejected;
        let mut t = String::new();
        let _ = writeln!(t, "run {}  ({})", self.run.id, self.run.input);
        let workers = self.run.workers_seen;
        let _ = writeln!(
            t,
            "{:.2} s, {:.0} orders/s, {workers} worker{} seen",
            self.run.elapsed_seconds,
            self.run.orders_per_second,
            if workers == 1 { "" } else { "s" }
        );
        let orders =
            named_fields!(o; lines, paid, declined, rejected, failed, duplicate, malformed);
        count_rows(&mut t, "orders", &orders);
        let mut reasons = Vec::from(named_fields!(
            r; bad_currency, no_items, bad_sku, bad_quantity, bad_price, amount_overflow
        ));
        reasons.extend(r.out_of_stock.map(|n| ("out_of_stock", n)));
        count_rows(&mut t, "rejected", &reasons);
        let _ = writeln!(t);
        let _ = writeln!(t, "{:<8} {:>12} {:>28}", "currency", "orders", "captured");
        for (currency, p) in &self.payments {
            let amount = major_units(p.captured_cents, minor_digits(currency));
            let _ = writeln!(t, "{currency:<8} {:>12} {amount:>28}", p.orders);
        }
        let mut skus: Vec<(&String, &i64)> = self.stock.iter().collect();
        skus.sort_by(|a, b| a.1.cmp(b.1).then_with(|| a.0.cmp(b.0)));
        let _ = writeln!(t);
        let _ = writeln!(t, "top SKUs by units out ({} SKUs moved)", self.stock.len());
        for (sku, units) in skus.into_iter().take(top_skus) {
            let _ = writeln!(t, "  {sku:<24} {:>10}", -units);
        }
        if let Some(inventory) = &self.inventory {
            self.inventory_table(&mut t, inventory, top_skus);
        }
        t
    }

    /// The stock lines of the table: SKUs sold out and the out_of_stock count.
    fn inventory_table(
        &self,
        t: &mut String,
        inventory: &BTreeMap<String, InventoryLine>,
        top_skus: usize,
    ) {
        let short: Vec<(&String, &InventoryLine)> =
            inventory.iter().filter(|(_, l)| l.available == 0).collect();
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "inventory: {} SKUs, {} short (available 0), {} orders out_of_stock",
            inventory.len(),
            short.len(),
            self.rejected.out_of_stock.unwrap_or(0)
        );
        for (sku, line) in short.iter().take(top_skus) {
            let _ = writeln!(
                t,
                "  {sku:<24} on hand {:>10}  sold {:>10}",
                line.on_hand, line.sold
            );
        }
        if short.len() > top_skus {
            let _ = writeln!(t, "  … and {} more", short.len() - top_skus);
        }
    }
}

/// Digits after the decimal point in `currency`'s amounts (ISO 4217): 0 for
/// the yen and the other zero-decimal currencies, 3 for the dinars, else 2.
pub fn minor_digits(currency: &str) -> u32 {
    const ZERO: [&str; 17] = [
        "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
        "VUV", "XAF", "XOF", "XPF",
    ];
    const THREE: [&str; 7] = ["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
    if ZERO.contains(&currency) {
        0
    } else if THREE.contains(&currency) {
        3
    } else {
        2
    }
}

/// An amount in minor units written in major units: `1999` with 2 digits is
/// `19.99`, with 0 digits `1999`. Exact for every i128.
pub fn major_units(minor: i128, digits: u32) -> String {
    if digits == 0 {
        return minor.to_string();
    }
    let scale = 10u128.pow(digits);
    let magnitude = minor.unsigned_abs();
    let sign = if minor < 0 { "-" } else { "" };
    format!(
        "{sign}{}.{:0width$}",
        magnitude / scale,
        magnitude % scale,
        width = digits as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_in_each_currencys_own_units() {
        assert_eq!(major_units(1999, minor_digits("USD")), "19.99");
        assert_eq!(major_units(-5, minor_digits("EUR")), "-0.05");
        assert_eq!(major_units(1999, minor_digits("JPY")), "1999");
        assert_eq!(major_units(1234, minor_digits("KWD")), "1.234");
        assert_eq!(
            major_units(i128::MIN, 2),
            "-1701411834604692317316873037158841057.28"
        );
    }

    fn report(out_of_stock: Option<u64>) -> Report {
        let n = |i: u64| i * 11;
        Report {
            orders: OrderCounts {
                lines: n(1),
                paid: n(2),
                declined: n(3),
                rejected: n(4),
                failed: n(5),
                duplicate: n(6),
                malformed: n(7),
            },
            rejected: RejectedCounts {
                bad_currency: n(8),
                no_items: n(9),
                bad_sku: n(10),
                bad_quantity: n(11),
                bad_price: n(12),
                amount_overflow: n(13),
                out_of_stock,
            },
            payments: BTreeMap::new(),
            stock: BTreeMap::new(),
            inventory: None,
            run: RunSection {
                id: "00000000000000aa".into(),
                input: "stdin".into(),
                elapsed_seconds: 1.0,
                orders_per_second: 11.0,
                workers_seen: 1,
                sink_restarts: 0,
            },
            stats: SinkStats::default(),
        }
    }

    #[test]
    fn the_tables_rows_are_the_json_fields() {
        for out_of_stock in [None, Some(7)] {
            let r = report(out_of_stock);
            let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
            let table = r.to_table(5);
            let mut rows = table.lines();
            for section in ["orders", "rejected"] {
                rows.find(|l| l.split_whitespace().eq([section, "count"]))
                    .unwrap_or_else(|| panic!("no {section} heading in\n{table}"));
                let got: BTreeMap<String, serde_json::Value> = rows
                    .by_ref()
                    .take_while(|l| !l.is_empty())
                    .map(|l| {
                        let (name, n) = l.split_once(' ').unwrap();
                        (name.to_owned(), n.trim().parse::<u64>().unwrap().into())
                    })
                    .collect();
                let want: BTreeMap<String, serde_json::Value> = json[section]
                    .as_object()
                    .unwrap()
                    .clone()
                    .into_iter()
                    .collect();
                assert_eq!(got, want, "{section} in\n{table}");
            }
        }
    }
}
