//! Every input line: the JSON Lines parser, and the rules for what parses.
//! Neither may panic; the parser (with its fast path) says exactly what the
//! serde_json reference says; a parsed order obeys the parser's limits,
//! survives the trip to a worker (MessagePack) unchanged, and prices the same
//! after it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ordergrid::order::{self, Line, MAX_LINE_BYTES, MAX_ORDER_ID_BYTES};
use ordergrid::protocol::{self, Job};
use ordergrid::rules;

fuzz_target!(|data: &[u8]| {
    let line = order::parse_line(data);
    assert_eq!(
        line,
        order::parse_line_reference(data),
        "the fast path disagrees with serde_json"
    );
    match line {
        Line::Blank => assert!(order::is_blank(order::trim_newline(data))),
        Line::Malformed(why) => {
            let _ = why.to_string();
        }
        Line::Order(order) => {
            assert!(order::trim_newline(data).len() <= MAX_LINE_BYTES);
            assert!((1..=MAX_ORDER_ID_BYTES).contains(&order.order_id.len()));
            let priced = rules::price(&order);
            if let Ok(p) = priced {
                assert!(p.amount_cents >= 0, "a valid order never costs less than 0");
            }

            let job = Job { seq: 7, order };
            let mut wire = Vec::new();
            protocol::encode_into(&mut wire, &job);
            let back: Job = protocol::decode(&wire).expect("an encoded job decodes");
            assert_eq!(back, job, "the job changes on the wire");
            assert_eq!(rules::price(&back.order), priced);
        }
    }
});
