//! The order model and the JSON Lines parser: from one input line to a
//! [`Line`] (blank, malformed with its reason, or a well-formed [`Order`]).
//!
//! No I/O here. The same [`Order`] type is what travels to workers (encoded
//! with MessagePack by [`crate::protocol`]), borrowing its strings from the
//! line or the frame it came from wherever the input needs no unescaping.

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
    let line = trim_newline(raw);
    if is_blank(line) {
        return Line::Blank;
    }
    if line.len() > MAX_LINE_BYTES {
        return Line::Malformed(Malformed::TooLong(line.len()));
    }
    let Ok(text) = std::str::from_utf8(line) else {
        return Line::Malformed(Malformed::NotUtf8);
    };
    match serde_json::from_str::<Order<'_>>(text) {
        Err(e) => Line::Malformed(Malformed::Shape(e.to_string())),
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
    fn every_malformed_shape() {
        let cases = [
            "garbage",
            "{",
            r#"{"order_id": "o-1""#,
            "[1, 2]",
            "\"str\"",
            "42",
            "null",
            &format!("{GOOD}{GOOD}"),
            &format!("{GOOD} x"),
            &GOOD.replace(r#""order_id": "o-1", "#, ""),
            &GOOD.replace(r#""customer_id": "c-9", "#, ""),
            &GOOD.replace(r#""currency": "USD", "#, ""),
            &GOOD.replace(r#", "payment_token": "tok_visa""#, ""),
            &GOOD.replace(
                r#""items": [{"sku": "SKU-1", "qty": 2, "unit_price_cents": 1999}], "#,
                "",
            ),
            &GOOD.replace("\"qty\": 2", "\"qty\": 2.0"),
            &GOOD.replace("\"qty\": 2", "\"qty\": 1e3"),
            &GOOD.replace("\"qty\": 2", "\"qty\": \"2\""),
            &GOOD.replace("\"qty\": 2", "\"qty\": true"),
            &GOOD.replace("\"qty\": 2", "\"qty\": null"),
            &GOOD.replace("1999", "9223372036854775808"),
            &GOOD.replace("1999", "-9223372036854775809"),
            &GOOD.replace("\"USD\"", "5"),
            &GOOD.replace("\"USD\"", "null"),
            &GOOD.replace("\"c-9\"", "[\"c\"]"),
            &GOOD.replace("\"tok_visa\"", "{}"),
            &GOOD.replace("\"o-1\"", "1"),
            &GOOD.replace(
                r#"[{"sku": "SKU-1", "qty": 2, "unit_price_cents": 1999}]"#,
                "{}",
            ),
            &GOOD.replace(
                r#"[{"sku": "SKU-1", "qty": 2, "unit_price_cents": 1999}]"#,
                "[1]",
            ),
            &GOOD.replace(
                r#"[{"sku": "SKU-1", "qty": 2, "unit_price_cents": 1999}]"#,
                "null",
            ),
            &GOOD.replace(r#""sku": "SKU-1", "#, ""),
            &GOOD.replace(r#""qty": 2, "#, ""),
            &GOOD.replace(r#", "unit_price_cents": 1999"#, ""),
            &GOOD.replace(r#""sku": "SKU-1""#, r#""sku": 7"#),
        ];
        for case in cases {
            assert!(malformed(case), "should be malformed: {case}");
        }
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
}
