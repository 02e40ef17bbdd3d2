//! The wire: a fixed header and a MessagePack body, the only code that turns
//! messages into bytes and back.
//!
//! # Format
//! Every frame starts with a 12-byte header, then the body:
//!
//! | bytes | field   | meaning                                        |
//! |-------|---------|------------------------------------------------|
//! | 0..2  | magic   | `b"OG"`                                        |
//! | 2     | version | [`VERSION`]; any other is dropped and counted  |
//! | 3     | kind    | a [`Kind`]                                     |
//! | 4..12 | run     | the [`RunId`], little-endian                   |
//!
//! Bodies are MessagePack (rmp-serde, structs as arrays):
//! - `Jobs`: `[isolate, [job, …]]`, each job `[seq, order]` (see [`JobBatch`]).
//! - `Results`: `[worker_id, [[seq, outcome, currency, amount, [[sku, qty], …]], …]]`
//!   (see [`ResultBatch`]); the ventilator sends its own outcomes (malformed,
//!   duplicate, failed poison orders) the same way with `worker_id` 0.
//! - `Hello`: [`Hello`]; `Welcome`: [`Welcome`]; `Progress`: [`Progress`];
//!   `Acks`: [`Acks`]; `Complete`, `Busy`, `RunOver`: empty arrays.
//!
//! Many orders share one frame when the stream is busy; a frame never waits
//! long for company.

use crate::order::Order;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The first two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"OG";
/// The envelope version this build speaks.
pub const VERSION: u8 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 12;
/// The largest frame any socket accepts (ZMQ_MAXMSGSIZE).
pub const MAX_FRAME_BYTES: usize = 4 << 20;

/// A run's identity: the digest of its input, or given with `--run-id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RunId(pub u64);

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for RunId {
    type Err = String;
    /// A run id is 1 to 16 hexadecimal digits, or any other text, which is hashed.
    fn from_str(s: &str) -> Result<RunId, String> {
        if s.is_empty() {
            return Err("a run id cannot be empty".into());
        }
        if s.len() <= 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return u64::from_str_radix(s, 16)
                .map(RunId)
                .map_err(|e| e.to_string());
        }
        Ok(RunId(xxhash_rust::xxh3::xxh3_64(s.as_bytes())))
    }
}

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Ventilator → worker: a batch of orders.
    Jobs = 1,
    /// Worker (or ventilator) → sink: a batch of outcomes.
    Results = 2,
    /// Ventilator → sink: "I am running this run".
    Hello = 3,
    /// Sink → ventilator: which orders of the run are already tallied.
    Welcome = 4,
    /// Ventilator → sink: how far dispatch has got, and the total once known.
    Progress = 5,
    /// Sink → ventilator: these orders are tallied and on disk.
    Acks = 6,
    /// Sink → ventilator: the run is complete and its report written.
    Complete = 7,
    /// Sink → ventilator: another run is in progress; try again later.
    Busy = 8,
    /// Sink → workers (PUB): the run is over, exit.
    RunOver = 9,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Jobs,
            2 => Kind::Results,
            3 => Kind::Hello,
            4 => Kind::Welcome,
            5 => Kind::Progress,
            6 => Kind::Acks,
            7 => Kind::Complete,
            8 => Kind::Busy,
            9 => Kind::RunOver,
            _ => return None,
        })
    }
}

/// Why a received frame was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than the header.
    TooShort(usize),
    /// Does not start with [`MAGIC`].
    BadMagic,
    /// A version this build does not speak.
    Version(u8),
    /// An unknown kind byte, or a kind this socket does not expect.
    Kind(u8),
    /// The body does not decode as the kind's message.
    Body(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooShort(n) => write!(f, "frame of {n} bytes is shorter than the header"),
            FrameError::BadMagic => write!(f, "frame does not start with the ordergrid magic"),
            FrameError::Version(v) => write!(f, "unknown envelope version {v}"),
            FrameError::Kind(k) => write!(f, "unexpected frame kind {k}"),
            FrameError::Body(e) => write!(f, "undecodable body: {e}"),
        }
    }
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub run: RunId,
}

/// Starts a frame in `buf` (cleared first): writes the header.
pub fn begin_frame(buf: &mut Vec<u8>, kind: Kind, run: RunId) {
    buf.clear();
    buf.extend_from_slice(&MAGIC);
    buf.push(VERSION);
    buf.push(kind as u8);
    buf.extend_from_slice(&run.0.to_le_bytes());
}

/// A whole frame: header and the MessagePack body of `body`.
pub fn frame<T: Serialize>(kind: Kind, run: RunId, body: &T) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    begin_frame(&mut buf, kind, run);
    encode_into(&mut buf, body);
    buf
}

/// Appends the MessagePack encoding of `value` (structs as arrays).
pub fn encode_into<T: Serialize>(buf: &mut Vec<u8>, value: &T) {
    // Writing into a Vec cannot fail, and every message type serialises.
    rmp_serde::encode::write(buf, value).expect("MessagePack encoding into memory");
}

/// Splits a frame into its header and body, checking magic, version and kind.
pub fn split_frame(frame: &[u8]) -> Result<(Header, &[u8]), FrameError> {
    if frame.len() < HEADER_LEN {
        return Err(FrameError::TooShort(frame.len()));
    }
    if frame[0..2] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    if frame[2] != VERSION {
        return Err(FrameError::Version(frame[2]));
    }
    let kind = Kind::from_byte(frame[3]).ok_or(FrameError::Kind(frame[3]))?;
    let run = RunId(u64::from_le_bytes(
        frame[4..12].try_into().expect("8 bytes"),
    ));
    Ok((Header { kind, run }, &frame[HEADER_LEN..]))
}

/// Decodes a body, borrowing strings from it where it can.
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, FrameError> {
    rmp_serde::from_slice(body).map_err(|e| FrameError::Body(e.to_string()))
}

/// One order to process: `seq` is its index among the run's counted lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job<'a> {
    pub seq: u64,
    #[serde(borrow)]
    pub order: Order<'a>,
}

/// A batch of jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobBatch<'a> {
    /// Process these orders alone, nothing else in flight: they were lost
    /// with a worker before and may be poison (see the ventilator's lanes).
    pub isolate: bool,
    #[serde(borrow)]
    pub jobs: Vec<Job<'a>>,
}

/// Writes a Jobs frame whose jobs are already encoded (`encoded_jobs` holds
/// `count` MessagePack-encoded [`Job`]s back to back).
pub fn jobs_frame<'a>(
    buf: &mut Vec<u8>,
    run: RunId,
    isolate: bool,
    count: usize,
    encoded_jobs: impl IntoIterator<Item = &'a [u8]>,
) {
    begin_frame(buf, Kind::Jobs, run);
    buf.push(0x92); // a two-element array: [isolate, jobs]
    buf.push(if isolate { 0xc3 } else { 0xc2 });
    write_array_len(buf, count);
    for job in encoded_jobs {
        buf.extend_from_slice(job);
    }
}

/// Appends one [`ResultRecord`] in its MessagePack form without building it
/// (the worker's hot path).
pub fn write_result_record<'a>(
    buf: &mut Vec<u8>,
    seq: u64,
    outcome: u8,
    currency: &str,
    amount_cents: i64,
    items: impl ExactSizeIterator<Item = (&'a str, i64)>,
) {
    // Writing into a Vec cannot fail.
    buf.push(0x95);
    let _ = rmp::encode::write_uint(buf, seq);
    let _ = rmp::encode::write_uint(buf, u64::from(outcome));
    let _ = rmp::encode::write_str(buf, currency);
    let _ = rmp::encode::write_sint(buf, amount_cents);
    write_array_len(buf, items.len());
    for (sku, qty) in items {
        buf.push(0x92);
        let _ = rmp::encode::write_str(buf, sku);
        let _ = rmp::encode::write_sint(buf, qty);
    }
}

/// Appends one [`Job`] in its MessagePack form without serde (the
/// ventilator's hot path); decodes as `Job` (structs as arrays).
pub fn write_job(buf: &mut Vec<u8>, seq: u64, order: &Order<'_>) {
    let items = order
        .items
        .iter()
        .map(|i| (&*i.sku, i.qty, i.unit_price_cents));
    let fields = [
        &*order.order_id,
        &*order.customer_id,
        &*order.currency,
        &*order.payment_token,
    ];
    write_job_fields(buf, seq, fields, items);
}

/// [`write_job`] from the order's fields: `[order_id, customer_id,
/// currency, payment_token]` and `(sku, qty, unit_price_cents)` items.
pub fn write_job_fields<'a>(
    buf: &mut Vec<u8>,
    seq: u64,
    [order_id, customer_id, currency, payment_token]: [&str; 4],
    items: impl ExactSizeIterator<Item = (&'a str, i64, i64)>,
) {
    // Writing into a Vec cannot fail.
    buf.push(0x92);
    let _ = rmp::encode::write_uint(buf, seq);
    buf.push(0x95);
    let _ = rmp::encode::write_str(buf, order_id);
    let _ = rmp::encode::write_str(buf, customer_id);
    let _ = rmp::encode::write_str(buf, currency);
    write_array_len(buf, items.len());
    for (sku, qty, unit_price_cents) in items {
        buf.push(0x93);
        let _ = rmp::encode::write_str(buf, sku);
        let _ = rmp::encode::write_sint(buf, qty);
        let _ = rmp::encode::write_sint(buf, unit_price_cents);
    }
    let _ = rmp::encode::write_str(buf, payment_token);
}

/// Writes a Results frame around `count` records already encoded in `records`.
pub fn results_frame(buf: &mut Vec<u8>, run: RunId, worker_id: u64, count: usize, records: &[u8]) {
    begin_frame(buf, Kind::Results, run);
    buf.push(0x92);
    let _ = rmp::encode::write_uint(buf, worker_id);
    write_array_len(buf, count);
    buf.extend_from_slice(records);
}

/// Writes a MessagePack array header.
pub fn write_array_len(buf: &mut Vec<u8>, len: usize) {
    if len < 16 {
        buf.push(0x90 | len as u8);
    } else if len <= u16::MAX as usize {
        buf.push(0xdc);
        buf.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        buf.push(0xdd);
        buf.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

/// One outcome as the sink tallies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultRecord<'a> {
    pub seq: u64,
    /// An [`crate::rules::Outcome`] code.
    pub outcome: u8,
    /// The currency of a paid order, otherwise empty.
    #[serde(borrow)]
    pub currency: &'a str,
    /// The captured amount of a paid order, otherwise 0.
    pub amount_cents: i64,
    /// `(sku, units taken)` of a paid order, otherwise empty.
    #[serde(borrow)]
    pub items: Vec<(&'a str, i64)>,
}

/// A batch of outcomes from one worker (`worker_id` 0: the ventilator).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultBatch<'a> {
    pub worker_id: u64,
    #[serde(borrow)]
    pub results: Vec<ResultRecord<'a>>,
}

/// Ventilator → sink: start or resume a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// What the input is, for the report (`file:…`, `generate:N:S`, `stdin`).
    pub input: String,
}

/// Sink → ventilator: one chunk of the bitmap of orders already tallied
/// (bit `seq` of word `seq / 64`). The ventilator starts once `last` arrives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub first_word: u64,
    pub words: Vec<u64>,
    pub last: bool,
}

/// Ventilator → sink, repeated: every seq below `horizon` may have been
/// dispatched; `total` is the number of counted lines once the input is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub horizon: u64,
    pub total: Option<u64>,
    /// Orders sent and not yet acknowledged, for the operator's view.
    pub in_flight: u64,
    /// Deliveries after the first, since this ventilator started.
    pub redelivered: u64,
}

/// Sink → ventilator: seq ranges `[start, start + len)` now durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Acks {
    pub ranges: Vec<(u64, u64)>,
}

impl Acks {
    /// Adds one seq, merging it into the last range when contiguous.
    pub fn push(&mut self, seq: u64) {
        if let Some((start, len)) = self.ranges.last_mut() {
            if *start + *len == seq {
                *len += 1;
                return;
            }
        }
        self.ranges.push((seq, 1));
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Every seq acknowledged.
    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges
            .iter()
            .flat_map(|&(start, len)| start..start.saturating_add(len))
    }
}

/// An empty body, for signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_rejections() {
        let f = frame(
            Kind::Progress,
            RunId(42),
            &Progress {
                horizon: 7,
                total: Some(9),
                in_flight: 3,
                redelivered: 1,
            },
        );
        let (h, body) = split_frame(&f).unwrap();
        assert_eq!(
            h,
            Header {
                kind: Kind::Progress,
                run: RunId(42)
            }
        );
        assert_eq!(
            decode::<Progress>(body).unwrap(),
            Progress {
                horizon: 7,
                total: Some(9),
                in_flight: 3,
                redelivered: 1,
            }
        );

        assert_eq!(split_frame(b"OG"), Err(FrameError::TooShort(2)));
        let mut bad = f.clone();
        bad[0] = b'X';
        assert_eq!(split_frame(&bad), Err(FrameError::BadMagic));
        let mut bad = f.clone();
        bad[2] = 9;
        assert_eq!(split_frame(&bad), Err(FrameError::Version(9)));
        let mut bad = f;
        bad[3] = 200;
        assert_eq!(split_frame(&bad), Err(FrameError::Kind(200)));
        assert!(decode::<Progress>(b"\xc1garbage").is_err());
        assert!(
            decode::<ResultBatch>(&[0x92, 0x01]).is_err(),
            "truncated body"
        );
    }

    #[test]
    fn results_borrow_from_the_body() {
        let batch = ResultBatch {
            worker_id: 3,
            results: vec![ResultRecord {
                seq: 5,
                outcome: 0,
                currency: "USD",
                amount_cents: i64::MAX,
                items: vec![("SKU-1", 2)],
            }],
        };
        let f = frame(Kind::Results, RunId(1), &batch);
        let (_, body) = split_frame(&f).unwrap();
        assert_eq!(decode::<ResultBatch>(body).unwrap(), batch);
    }

    #[test]
    fn prebuilt_jobs_frame_decodes() {
        let order = crate::order::Order {
            order_id: "o-1".into(),
            customer_id: "c".into(),
            currency: "USD".into(),
            items: vec![],
            payment_token: "t".into(),
        };
        for count in [1usize, 15, 16, 300, 70_000] {
            let mut encoded = Vec::new();
            let mut slices = Vec::new();
            for seq in 0..count as u64 {
                let mut one = Vec::new();
                encode_into(
                    &mut one,
                    &Job {
                        seq,
                        order: order.clone(),
                    },
                );
                encoded.push(one);
            }
            for e in &encoded {
                slices.push(e.as_slice());
            }
            let mut buf = Vec::new();
            jobs_frame(
                &mut buf,
                RunId(9),
                count == 1,
                count,
                slices.iter().copied(),
            );
            let (h, body) = split_frame(&buf).unwrap();
            assert_eq!(h.kind, Kind::Jobs);
            let batch: JobBatch = decode(body).unwrap();
            assert_eq!(batch.isolate, count == 1);
            assert_eq!(batch.jobs.len(), count);
            assert_eq!(batch.jobs[count - 1].seq, count as u64 - 1);
        }
    }

    #[test]
    fn hand_written_jobs_match_serde() {
        use crate::order::Item;
        let orders = [
            Order {
                order_id: "o-1".into(),
                customer_id: "c\"é".into(),
                currency: "USD".into(),
                items: vec![],
                payment_token: "t".into(),
            },
            Order {
                order_id: "x".repeat(64).into(),
                customer_id: "".into(),
                currency: "usd".into(),
                items: (0..20)
                    .map(|i| Item {
                        sku: format!("SKU-{i}").into(),
                        qty: i64::MIN + i,
                        unit_price_cents: i64::MAX - i,
                    })
                    .collect(),
                payment_token: "s".repeat(300).into(),
            },
        ];
        for (seq, order) in [0, u64::MAX].into_iter().zip(orders) {
            let mut hand = Vec::new();
            write_job(&mut hand, seq, &order);
            let mut serde = Vec::new();
            encode_into(
                &mut serde,
                &Job {
                    seq,
                    order: order.clone(),
                },
            );
            assert_eq!(decode::<Job>(&hand).unwrap(), Job { seq, order });
            assert_eq!(hand, serde, "the same bytes as serde's encoding");
        }
    }

    #[test]
    fn hand_written_results_match_serde() {
        let records = [
            ResultRecord {
                seq: 0,
                outcome: 0,
                currency: "USD",
                amount_cents: i64::MAX,
                items: vec![("A", 1), ("B", 1000)],
            },
            ResultRecord {
                seq: u64::MAX,
                outcome: 3,
                currency: "",
                amount_cents: 0,
                items: vec![],
            },
            ResultRecord {
                seq: 300,
                outcome: 8,
                currency: "",
                amount_cents: -5,
                items: vec![("C", -2)],
            },
        ];
        let mut buf = Vec::new();
        for r in &records {
            write_result_record(
                &mut buf,
                r.seq,
                r.outcome,
                r.currency,
                r.amount_cents,
                r.items.iter().copied(),
            );
        }
        let mut f = Vec::new();
        results_frame(&mut f, RunId(4), 77, records.len(), &buf);
        let (h, body) = split_frame(&f).unwrap();
        assert_eq!(
            h,
            Header {
                kind: Kind::Results,
                run: RunId(4)
            }
        );
        let batch: ResultBatch = decode(body).unwrap();
        assert_eq!(
            batch,
            ResultBatch {
                worker_id: 77,
                results: records.to_vec()
            }
        );
    }

    #[test]
    fn acks_merge_contiguous_seqs() {
        let mut a = Acks::default();
        for s in [1, 2, 3, 7, 8, 10] {
            a.push(s);
        }
        assert_eq!(a.ranges, vec![(1, 3), (7, 2), (10, 1)]);
        assert_eq!(a.seqs().collect::<Vec<_>>(), vec![1, 2, 3, 7, 8, 10]);
    }

    #[test]
    fn run_ids_parse_hex_or_hash_text() {
        assert_eq!("ff".parse::<RunId>().unwrap(), RunId(255));
        assert_eq!(
            "nightly-2026".parse::<RunId>().unwrap(),
            "nightly-2026".parse::<RunId>().unwrap()
        );
        assert!("".parse::<RunId>().is_err());
        assert_eq!(RunId(255).to_string(), "00000000000000ff");
    }
}
