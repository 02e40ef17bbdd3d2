//! The worker's rules: validation and pricing of a well-formed order, as pure
//! functions, and the outcome codes every role agrees on.
//!
//! Checks run in a fixed order and the first that fails rejects the order:
//! currency, items, sku, quantity, price, amount overflow.

use crate::order::Order;

/// Why a well-formed order is rejected, in the order the checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// `currency` is not exactly three ASCII capital letters.
    BadCurrency,
    /// `items` is empty.
    NoItems,
    /// Some item's `sku` is not 1..=64 bytes.
    BadSku,
    /// Some item's `qty` is not in 1..=1000.
    BadQuantity,
    /// Some item's `unit_price_cents` is negative.
    BadPrice,
    /// The sum of `qty × unit_price_cents` exceeds `i64::MAX`.
    AmountOverflow,
    /// With a stock file: some SKU of the order has fewer units left than it
    /// needs (decided by the ventilator, in line order; see crate::inventory).
    OutOfStock,
}

impl Rejection {
    /// Every reason, in check order (out of stock is decided last, after payment rules pass).
    pub const ALL: [Rejection; 7] = [
        Rejection::BadCurrency,
        Rejection::NoItems,
        Rejection::BadSku,
        Rejection::BadQuantity,
        Rejection::BadPrice,
        Rejection::AmountOverflow,
        Rejection::OutOfStock,
    ];

    /// The reason's name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Rejection::BadCurrency => "bad_currency",
            Rejection::NoItems => "no_items",
            Rejection::BadSku => "bad_sku",
            Rejection::BadQuantity => "bad_quantity",
            Rejection::BadPrice => "bad_price",
            Rejection::AmountOverflow => "amount_overflow",
            Rejection::OutOfStock => "out_of_stock",
        }
    }
}

/// The longest `sku`, in bytes.
pub const MAX_SKU_BYTES: usize = 64;
/// The largest `qty` of one item.
pub const MAX_QTY: i64 = 1000;

/// A validated order's price: its currency and the amount to capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priced {
    pub currency: [u8; 3],
    pub amount_cents: i64,
}

/// Runs the checks in order; the first that fails rejects the order.
pub fn price(order: &Order<'_>) -> Result<Priced, Rejection> {
    let items = order
        .items
        .iter()
        .map(|i| (&*i.sku, i.qty, i.unit_price_cents));
    price_items(&order.currency, items)
}

/// [`price`] over an order's fields: its currency and `(sku, qty,
/// unit_price_cents)` items (the ventilator checks generated orders too).
pub fn price_items<'a, I>(currency: &str, items: I) -> Result<Priced, Rejection>
where
    I: Iterator<Item = (&'a str, i64, i64)> + Clone,
{
    let currency: [u8; 3] = currency
        .as_bytes()
        .try_into()
        .ok()
        .filter(|c: &[u8; 3]| c.iter().all(u8::is_ascii_uppercase))
        .ok_or(Rejection::BadCurrency)?;
    if items.clone().next().is_none() {
        return Err(Rejection::NoItems);
    }
    if items
        .clone()
        .any(|(sku, _, _)| sku.is_empty() || sku.len() > MAX_SKU_BYTES)
    {
        return Err(Rejection::BadSku);
    }
    if items
        .clone()
        .any(|(_, qty, _)| !(1..=MAX_QTY).contains(&qty))
    {
        return Err(Rejection::BadQuantity);
    }
    if items.clone().any(|(_, _, price)| price < 0) {
        return Err(Rejection::BadPrice);
    }
    // Every term is at most 1000 × i64::MAX and there are at most a few
    // thousand items in a 64 KiB line, so the i128 sum cannot overflow.
    let amount: i128 = items
        .map(|(_, qty, price)| i128::from(qty) * i128::from(price))
        .sum();
    let amount_cents = i64::try_from(amount).map_err(|_| Rejection::AmountOverflow)?;
    Ok(Priced {
        currency,
        amount_cents,
    })
}

/// The final outcome of one counted input line: what the sink tallies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Paid,
    Declined,
    Rejected(Rejection),
    /// A poison order given up after repeated deliveries, or a payment that
    /// kept failing transiently.
    Failed,
    Duplicate,
    Malformed,
    /// Not an order: one SKU's units on hand from the stock file, which the
    /// ventilator sends after the input's lines (items: `[[sku, on_hand]]`).
    OnHand,
}

impl Outcome {
    /// The one-byte code used on the wire and in the journal.
    pub fn code(self) -> u8 {
        match self {
            Outcome::Paid => 0,
            Outcome::Declined => 1,
            Outcome::Rejected(Rejection::OutOfStock) => 11,
            Outcome::Rejected(r) => 2 + r as u8,
            Outcome::Failed => 8,
            Outcome::Duplicate => 9,
            Outcome::Malformed => 10,
            Outcome::OnHand => 12,
        }
    }

    /// The outcome with that code, if any.
    pub fn from_code(code: u8) -> Option<Outcome> {
        Some(match code {
            0 => Outcome::Paid,
            1 => Outcome::Declined,
            2..=7 => Outcome::Rejected(Rejection::ALL[usize::from(code - 2)]),
            8 => Outcome::Failed,
            9 => Outcome::Duplicate,
            10 => Outcome::Malformed,
            11 => Outcome::Rejected(Rejection::OutOfStock),
            12 => Outcome::OnHand,
            _ => return None,
        })
    }

    /// Outcomes only the ventilator decides (workers never send these).
    pub fn is_ventilator_only(self) -> bool {
        matches!(
            self,
            Outcome::Duplicate
                | Outcome::Malformed
                | Outcome::OnHand
                | Outcome::Rejected(Rejection::OutOfStock)
        )
    }
}

/// How many distinct outcome codes there are.
pub const OUTCOME_CODES: usize = 13;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::Item;

    fn order(currency: &str, items: &[(&str, i64, i64)]) -> Order<'static> {
        Order {
            order_id: "o-1".into(),
            customer_id: "c-1".into(),
            currency: currency.to_owned().into(),
            items: items
                .iter()
                .map(|&(sku, qty, unit_price_cents)| Item {
                    sku: sku.to_owned().into(),
                    qty,
                    unit_price_cents,
                })
                .collect(),
            payment_token: "tok_visa".into(),
        }
    }

    #[test]
    fn prices_a_good_order() {
        let p = price(&order("USD", &[("A", 2, 1999), ("B", 1, 2)])).unwrap();
        assert_eq!(
            p,
            Priced {
                currency: *b"USD",
                amount_cents: 4000
            }
        );
        assert_eq!(
            price(&order("EUR", &[("A", 1, 0)])).unwrap().amount_cents,
            0
        );
    }

    #[test]
    fn currency_must_be_three_ascii_capitals() {
        for bad in ["usd", "US", "USDX", "", "U$D", "ÉUR", "US ", "Usd"] {
            assert_eq!(
                price(&order(bad, &[("A", 1, 1)])),
                Err(Rejection::BadCurrency),
                "{bad}"
            );
        }
    }

    #[test]
    fn each_check_in_order() {
        let sku65 = "s".repeat(65);
        let sku64 = "s".repeat(64);
        assert_eq!(price(&order("usd", &[])), Err(Rejection::BadCurrency));
        assert_eq!(price(&order("USD", &[])), Err(Rejection::NoItems));
        assert_eq!(price(&order("USD", &[("", 0, -1)])), Err(Rejection::BadSku));
        assert_eq!(
            price(&order("USD", &[(&sku65, 1, 1)])),
            Err(Rejection::BadSku)
        );
        assert!(price(&order("USD", &[(&sku64, 1, 1)])).is_ok());
        assert_eq!(
            price(&order("USD", &[("A", 0, -1)])),
            Err(Rejection::BadQuantity)
        );
        assert_eq!(
            price(&order("USD", &[("A", 1001, 1)])),
            Err(Rejection::BadQuantity)
        );
        assert_eq!(
            price(&order("USD", &[("A", -1, 1)])),
            Err(Rejection::BadQuantity)
        );
        assert!(price(&order("USD", &[("A", 1000, 1)])).is_ok());
        assert_eq!(
            price(&order("USD", &[("A", 1, -1)])),
            Err(Rejection::BadPrice)
        );
        assert_eq!(
            price(&order("USD", &[("A", 2, i64::MAX), ("B", 1, -1)])),
            Err(Rejection::BadPrice)
        );
        assert_eq!(
            price(&order("USD", &[("A", 2, i64::MAX)])),
            Err(Rejection::AmountOverflow)
        );
        assert_eq!(
            price(&order("USD", &[("A", 1, i64::MAX), ("B", 1, 1)])),
            Err(Rejection::AmountOverflow)
        );
        assert_eq!(
            price(&order("USD", &[("A", 1, i64::MAX)]))
                .unwrap()
                .amount_cents,
            i64::MAX
        );
    }

    #[test]
    fn outcome_codes_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for code in 0..=255u8 {
            if let Some(o) = Outcome::from_code(code) {
                assert_eq!(o.code(), code);
                seen.insert(code);
            }
        }
        assert_eq!(seen.len(), OUTCOME_CODES);
    }
}
