//! The tally: each counted line's outcome applied exactly once, keyed by its
//! seq. Applying a seq twice is a no-op, which is what makes redelivery,
//! journal replay and replayed frames harmless.
//!
//! With a stock file, the ventilator's `on_hand` records (one per SKU, after
//! the lines; see crate::inventory) are tallied here too, exactly once like
//! the rest, but kept apart from the order counts.

use crate::fasthash::FxMap;
#[cfg(test)]
use crate::protocol::ResultRecord;
use crate::protocol::ResultRef;
use crate::report::{CurrencyTotals, InventoryLine, OrderCounts, RejectedCounts};
use crate::rules::{Outcome, Rejection, MAX_QTY, MAX_SKU_BYTES, OUTCOME_CODES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The largest seq a ledger accepts (about 10^12 lines per run).
pub const MAX_SEQ: u64 = 1 << 40;

/// A growable set of seqs, one bit each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqSet {
    words: Vec<u64>,
}

impl SeqSet {
    pub fn contains(&self, seq: u64) -> bool {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        self.words.get(w).is_some_and(|word| word & (1 << b) != 0)
    }

    /// Inserts `seq`; false when it was already there.
    pub fn insert(&mut self, seq: u64) -> bool {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let was = self.words[w] & (1 << b) != 0;
        self.words[w] |= 1 << b;
        !was
    }

    /// The raw words (bit `seq % 64` of word `seq / 64`).
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Merges raw words starting at word index `first`.
    pub fn merge_words(&mut self, first: usize, words: &[u64]) {
        if self.words.len() < first + words.len() {
            self.words.resize(first + words.len(), 0);
        }
        for (dst, src) in self.words[first..].iter_mut().zip(words) {
            *dst |= src;
        }
    }
}

/// What applying one record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Tallied now.
    New,
    /// This seq was tallied before; nothing changed.
    AlreadyTallied,
    /// The record breaks the rules of a result (bad outcome code, a paid order
    /// with an invalid currency or items); nothing changed.
    Invalid(&'static str),
}

/// Per-run totals, exact (captured amounts in i128 never wrap).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    done: SeqSet,
    tallied: u64,
    counts: Vec<u64>,
    payments: FxMap<[u8; 3], (u64, i128)>,
    stock: FxMap<String, i64>,
    /// Units on hand per SKU of the stock file (empty without one).
    #[serde(default)]
    on_hand: FxMap<String, i64>,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger {
            counts: vec![0; OUTCOME_CODES],
            ..Ledger::default()
        }
    }

    /// Applies one outcome, once per seq.
    pub fn apply(&mut self, r: ResultRef<'_>) -> Applied {
        let Some(outcome) = Outcome::from_code(r.outcome) else {
            return Applied::Invalid("unknown outcome code");
        };
        if r.seq >= MAX_SEQ {
            return Applied::Invalid("seq out of range");
        }
        // Validate fully before anything else, so a bad record is always
        // counted as such, even for an order already tallied.
        let mut paid_in = None;
        if outcome == Outcome::Paid {
            let Ok(currency) = <[u8; 3]>::try_from(r.currency.as_bytes()) else {
                return Applied::Invalid("paid result without a currency");
            };
            if !currency.iter().all(u8::is_ascii_uppercase) || r.amount_cents < 0 {
                return Applied::Invalid("paid result with a bad currency or amount");
            }
            let items_ok = !r.items.is_empty()
                && r.items.iter().all(|(sku, qty)| {
                    !sku.is_empty() && sku.len() <= MAX_SKU_BYTES && (1..=MAX_QTY).contains(qty)
                });
            if !items_ok {
                return Applied::Invalid("paid result with bad items");
            }
            paid_in = Some(currency);
        }
        let on_hand = if outcome == Outcome::OnHand {
            match r.items {
                [(sku, units)] if !sku.is_empty() && sku.len() <= MAX_SKU_BYTES && *units >= 0 => {
                    Some((*sku, *units))
                }
                _ => return Applied::Invalid("on_hand record without one SKU and its units"),
            }
        } else {
            None
        };
        if self.done.contains(r.seq) {
            return Applied::AlreadyTallied;
        }
        if let Some((sku, units)) = on_hand {
            self.on_hand.insert(sku.to_owned(), units);
        }
        if let Some(currency) = paid_in {
            let entry = self.payments.entry(currency).or_insert((0, 0));
            entry.0 += 1;
            entry.1 += i128::from(r.amount_cents);
            for (sku, qty) in r.items {
                match self.stock.get_mut(*sku) {
                    Some(units) => *units -= qty,
                    None => {
                        self.stock.insert((*sku).to_owned(), -qty);
                    }
                }
            }
        }
        self.done.insert(r.seq);
        self.tallied += 1;
        self.counts[usize::from(r.outcome)] += 1;
        Applied::New
    }

    /// True when this seq is tallied.
    pub fn is_done(&self, seq: u64) -> bool {
        self.done.contains(seq)
    }

    /// How many distinct seqs are tallied.
    pub fn tallied(&self) -> u64 {
        self.tallied
    }

    /// The set of tallied seqs.
    pub fn done(&self) -> &SeqSet {
        &self.done
    }

    fn count(&self, outcome: Outcome) -> u64 {
        self.counts[usize::from(outcome.code())]
    }

    /// The report's `orders` section.
    pub fn order_counts(&self) -> OrderCounts {
        let rejected = Rejection::ALL
            .iter()
            .map(|&r| self.count(Outcome::Rejected(r)))
            .sum();
        OrderCounts {
            lines: self.tallied - self.count(Outcome::OnHand),
            paid: self.count(Outcome::Paid),
            declined: self.count(Outcome::Declined),
            rejected,
            failed: self.count(Outcome::Failed),
            duplicate: self.count(Outcome::Duplicate),
            malformed: self.count(Outcome::Malformed),
        }
    }

    /// The report's `rejected` section.
    pub fn rejected_counts(&self) -> RejectedCounts {
        let c = |r| self.count(Outcome::Rejected(r));
        RejectedCounts {
            bad_currency: c(Rejection::BadCurrency),
            no_items: c(Rejection::NoItems),
            bad_sku: c(Rejection::BadSku),
            bad_quantity: c(Rejection::BadQuantity),
            bad_price: c(Rejection::BadPrice),
            amount_overflow: c(Rejection::AmountOverflow),
            out_of_stock: self.has_stock().then(|| c(Rejection::OutOfStock)),
        }
    }

    /// True when the run has a stock file: the ventilator sent on_hand
    /// records or out_of_stock verdicts (an empty stock file with no order
    /// looks like no stock file).
    fn has_stock(&self) -> bool {
        !self.on_hand.is_empty() || self.count(Outcome::Rejected(Rejection::OutOfStock)) > 0
    }

    /// The report's `inventory` section: every SKU of the stock file, sold
    /// being the units of paid orders. None without a stock file.
    pub fn inventory(&self) -> Option<BTreeMap<String, InventoryLine>> {
        if !self.has_stock() {
            return None;
        }
        let lines = self.on_hand.iter().map(|(sku, &on_hand)| {
            let sold = self.stock.get(sku).map_or(0, |&change| -change);
            let line = InventoryLine {
                on_hand,
                sold,
                available: on_hand - sold,
            };
            (sku.clone(), line)
        });
        Some(lines.collect())
    }

    /// The report's `payments` section.
    pub fn payments(&self) -> BTreeMap<String, CurrencyTotals> {
        self.payments
            .iter()
            .map(|(c, &(orders, captured_cents))| {
                (
                    String::from_utf8_lossy(c).into_owned(),
                    CurrencyTotals {
                        orders,
                        captured_cents,
                    },
                )
            })
            .collect()
    }

    /// The report's `stock` section.
    pub fn stock(&self) -> BTreeMap<String, i64> {
        self.stock.iter().map(|(k, &v)| (k.clone(), v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paid(
        seq: u64,
        currency: &'static str,
        amount: i64,
        items: Vec<(&'static str, i64)>,
    ) -> ResultRecord<'static> {
        ResultRecord {
            seq,
            outcome: 0,
            currency,
            amount_cents: amount,
            items,
        }
    }

    #[test]
    fn each_seq_counts_once() {
        let mut l = Ledger::new();
        assert_eq!(
            l.apply(paid(1, "USD", 10, vec![("A", 2)]).as_ref()),
            Applied::New
        );
        assert_eq!(
            l.apply(paid(1, "USD", 10, vec![("A", 2)]).as_ref()),
            Applied::AlreadyTallied
        );
        let declined = ResultRecord {
            seq: 1,
            outcome: 1,
            currency: "",
            amount_cents: 0,
            items: vec![],
        };
        assert_eq!(
            l.apply(declined.as_ref()),
            Applied::AlreadyTallied,
            "first outcome wins"
        );
        assert_eq!(l.tallied(), 1);
        assert_eq!(l.order_counts().paid, 1);
        assert_eq!(l.stock()["A"], -2);
    }

    #[test]
    fn captured_cents_pass_i64_max_without_wrapping() {
        let mut l = Ledger::new();
        l.apply(paid(0, "USD", i64::MAX, vec![("A", 1)]).as_ref());
        l.apply(paid(1, "USD", i64::MAX, vec![("A", 1)]).as_ref());
        let usd = &l.payments()["USD"];
        assert_eq!(usd.orders, 2);
        assert_eq!(usd.captured_cents, 2 * i128::from(i64::MAX));
    }

    #[test]
    fn invalid_records_change_nothing() {
        let mut l = Ledger::new();
        let bad = [
            ResultRecord {
                seq: 1,
                outcome: 99,
                currency: "",
                amount_cents: 0,
                items: vec![],
            },
            paid(1, "usd", 1, vec![("A", 1)]),
            paid(1, "USD", -1, vec![("A", 1)]),
            paid(1, "USD", 1, vec![]),
            paid(1, "USD", 1, vec![("A", 0)]),
            paid(1, "USD", 1, vec![("", 1)]),
            paid(MAX_SEQ, "USD", 1, vec![("A", 1)]),
        ];
        for r in &bad {
            assert!(matches!(l.apply(r.as_ref()), Applied::Invalid(_)), "{r:?}");
        }
        assert_eq!(l, Ledger::new());
    }

    fn record(seq: u64, outcome: u8, items: Vec<(&'static str, i64)>) -> ResultRecord<'static> {
        ResultRecord {
            seq,
            outcome,
            currency: "",
            amount_cents: 0,
            items,
        }
    }

    #[test]
    fn on_hand_records_make_the_inventory_and_are_not_orders() {
        let mut l = Ledger::new();
        assert_eq!(l.inventory(), None);
        assert_eq!(l.rejected_counts().out_of_stock, None);
        let on_hand = Outcome::OnHand.code();
        let out_of_stock = Outcome::Rejected(Rejection::OutOfStock).code();
        l.apply(paid(0, "USD", 10, vec![("A", 2), ("A", 1)]).as_ref());
        l.apply(record(1, out_of_stock, vec![]).as_ref());
        assert_eq!(
            l.apply(record(2, on_hand, vec![("A", 5)]).as_ref()),
            Applied::New
        );
        l.apply(record(3, on_hand, vec![("B", 0)]).as_ref());
        assert_eq!(
            l.apply(record(3, on_hand, vec![("B", 7)]).as_ref()),
            Applied::AlreadyTallied
        );
        let bad = [
            vec![],
            vec![("C", 1), ("D", 1)],
            vec![("C", -1)],
            vec![("", 1)],
        ];
        for items in bad {
            assert!(matches!(
                l.apply(record(4, on_hand, items).as_ref()),
                Applied::Invalid(_)
            ));
        }
        let counts = l.order_counts();
        assert_eq!((counts.lines, counts.paid, counts.rejected), (2, 1, 1));
        assert_eq!(l.rejected_counts().out_of_stock, Some(1));
        let inventory = l.inventory().unwrap();
        let line = |on_hand, sold, available| InventoryLine {
            on_hand,
            sold,
            available,
        };
        assert_eq!(inventory["A"], line(5, 3, 2));
        assert_eq!(inventory["B"], line(0, 0, 0));
        assert_eq!(inventory.len(), 2);
    }

    #[test]
    fn seq_set_merges_words() {
        let mut s = SeqSet::default();
        assert!(s.insert(3));
        assert!(!s.insert(3));
        assert!(s.insert(200));
        let mut t = SeqSet::default();
        t.merge_words(0, s.words());
        assert!(t.contains(3) && t.contains(200) && !t.contains(4));
    }
}
