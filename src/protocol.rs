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
//!   `Acks`: [`Acks`]; `Complete`, `Busy`, `RunOver`: empty arrays;
//!   `Bye`: [`Bye`].
//! - `Credit`: [`Credit`], worker → ventilator on the jobs socket (ROUTER
//!   ↔ DEALER since version 2): how many orders it can hold, how many it
//!   has received and finished, and now and then which seqs it holds. The
//!   run field is the run of the last job received (0 before any).
//!
//! Many orders share one frame when the stream is busy; a frame never waits
//! long for company.

use crate::order::{Item, Order};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The first two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"OG";
/// The envelope version this build speaks.
/// 2: jobs on ROUTER/DEALER with worker credit ([`Kind::Credit`]).
/// 3: the sink's answer to a progress report says the horizon it knows
/// ([`Acks::horizon`]); the ventilator sends nothing past it.
pub const VERSION: u8 = 3;
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
    /// Worker → ventilator: room for more orders, and liveness.
    Credit = 10,
    /// Worker → sink (results socket): heard the run is over, exiting; the
    /// sink exits as soon as every worker it has heard from said so.
    Bye = 20,
    /// Worker → sink (results socket), every second: who and where it is,
    /// what it has done, for the dashboard's workers table.
    WorkerStatus = 21,
    /// Sink → ventilator (`--serve`): another run is active; this one waits
    /// in the queue at [`Queued::position`].
    Queued = 22,
    /// Sink → workers (PUB), a few times a second while a run is active:
    /// which run, and where its ventilator's jobs socket is (a worker of one
    /// run only learns that the ventilator binds now).
    RunStart = 23,
    /// Sink → ventilator: the finished run's report (for `--report`).
    Report = 24,
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
            10 => Kind::Credit,
            20 => Kind::Bye,
            21 => Kind::WorkerStatus,
            22 => Kind::Queued,
            23 => Kind::RunStart,
            24 => Kind::Report,
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

/// The kind of a well-formed frame, without decoding its body.
pub fn frame_kind(frame: &[u8]) -> Option<Kind> {
    split_frame(frame).ok().map(|(h, _)| h.kind)
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
    put_uint(buf, seq);
    put_uint(buf, u64::from(outcome));
    put_str(buf, currency);
    put_sint(buf, amount_cents);
    write_array_len(buf, items.len());
    for (sku, qty) in items {
        buf.push(0x92);
        put_str(buf, sku);
        put_sint(buf, qty);
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
    put_uint(buf, seq);
    buf.push(0x95);
    put_str(buf, order_id);
    put_str(buf, customer_id);
    put_str(buf, currency);
    write_array_len(buf, items.len());
    for (sku, qty, unit_price_cents) in items {
        buf.push(0x93);
        put_str(buf, sku);
        put_sint(buf, qty);
        put_sint(buf, unit_price_cents);
    }
    put_str(buf, payment_token);
}

/// Writes a Results frame around `count` records already encoded in `records`.
pub fn results_frame(buf: &mut Vec<u8>, run: RunId, worker_id: u64, count: usize, records: &[u8]) {
    begin_frame(buf, Kind::Results, run);
    buf.push(0x92);
    put_uint(buf, worker_id);
    write_array_len(buf, count);
    buf.extend_from_slice(records);
}

/// Appends `v` as MessagePack in its shortest form, byte for byte what
/// `rmp::encode::write_uint` writes (which goes through `io::Write` and a
/// `memcpy` call per byte: a fifth of the job encoder's time, measured).
#[inline]
fn put_uint(buf: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        buf.push(v as u8);
    } else if v <= u8::MAX as u64 {
        buf.extend_from_slice(&[0xcc, v as u8]);
    } else if v <= u16::MAX as u64 {
        buf.push(0xcd);
        buf.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v <= u32::MAX as u64 {
        buf.push(0xce);
        buf.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        buf.push(0xcf);
        buf.extend_from_slice(&v.to_be_bytes());
    }
}

/// Appends `v` as `rmp::encode::write_sint` does: a non-negative value as
/// [`put_uint`], a negative one in the shortest signed form.
#[inline]
fn put_sint(buf: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        put_uint(buf, v as u64);
    } else if v >= -32 {
        buf.push(v as i8 as u8);
    } else if v >= i8::MIN as i64 {
        buf.extend_from_slice(&[0xd0, v as i8 as u8]);
    } else if v >= i16::MIN as i64 {
        buf.push(0xd1);
        buf.extend_from_slice(&(v as i16).to_be_bytes());
    } else if v >= i32::MIN as i64 {
        buf.push(0xd2);
        buf.extend_from_slice(&(v as i32).to_be_bytes());
    } else {
        buf.push(0xd3);
        buf.extend_from_slice(&v.to_be_bytes());
    }
}

/// Appends `s` as `rmp::encode::write_str` does: the shortest header, then
/// the bytes.
#[inline]
fn put_str(buf: &mut Vec<u8>, s: &str) {
    let n = s.len();
    if n < 32 {
        buf.push(0xa0 | n as u8);
    } else if n <= u8::MAX as usize {
        buf.extend_from_slice(&[0xd9, n as u8]);
    } else if n <= u16::MAX as usize {
        buf.push(0xda);
        buf.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        buf.push(0xdb);
        buf.extend_from_slice(&(n as u32).to_be_bytes());
    }
    buf.extend_from_slice(s.as_bytes());
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

/// One outcome as the tally reads it, borrowed from a frame or a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultRef<'a> {
    pub seq: u64,
    pub outcome: u8,
    pub currency: &'a str,
    pub amount_cents: i64,
    pub items: &'a [(&'a str, i64)],
}

impl ResultRecord<'_> {
    /// The borrowed view the tally takes.
    pub fn as_ref(&self) -> ResultRef<'_> {
        ResultRef {
            seq: self.seq,
            outcome: self.outcome,
            currency: self.currency,
            amount_cents: self.amount_cents,
            items: &self.items,
        }
    }
}

/// A Results body decoded without serde: the records' fixed fields and all
/// their items in two flat vectors, strings borrowed from the body. This is
/// the sink's hot path (two allocations per frame instead of one per
/// record); it accepts exactly the encoding [`write_result_record`] and
/// serde produce for [`ResultBatch`] (structs as arrays), nothing more.
#[derive(Debug)]
pub struct ResultsView<'a> {
    pub worker_id: u64,
    records: Vec<(u64, u8, &'a str, i64, std::ops::Range<usize>)>,
    items: Vec<(&'a str, i64)>,
}

impl<'a> ResultsView<'a> {
    /// Decodes a whole body, or nothing: a frame is applied all or not at all.
    pub fn decode(body: &'a [u8]) -> Result<ResultsView<'a>, FrameError> {
        let mut r = MsgReader::new(body);
        r.expect_array(2)?;
        let worker_id = r.uint()?;
        let count = r.array_len()?;
        let mut view = ResultsView {
            worker_id,
            records: Vec::with_capacity(count.min(r.remaining())),
            items: Vec::with_capacity(count.min(r.remaining())),
        };
        for _ in 0..count {
            r.expect_array(5)?;
            let seq = r.uint()?;
            let outcome = u8::try_from(r.uint()?).map_err(|_| r.error("outcome code"))?;
            let currency = r.str()?;
            let amount_cents = r.sint()?;
            let n = r.array_len()?;
            let start = view.items.len();
            for _ in 0..n {
                r.expect_array(2)?;
                let sku = r.str()?;
                let qty = r.sint()?;
                view.items.push((sku, qty));
            }
            let range = start..view.items.len();
            view.records
                .push((seq, outcome, currency, amount_cents, range));
        }
        r.finish()?;
        Ok(view)
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records in order.
    pub fn iter(&self) -> impl Iterator<Item = ResultRef<'_>> + '_ {
        self.records
            .iter()
            .map(|(seq, outcome, currency, amount_cents, range)| ResultRef {
                seq: *seq,
                outcome: *outcome,
                currency,
                amount_cents: *amount_cents,
                items: &self.items[range.clone()],
            })
    }
}

/// Decodes a Jobs body without serde: the worker's hot path. Accepts
/// exactly the encoding [`jobs_frame`]/[`write_job`] and serde produce for
/// [`JobBatch`] (structs as arrays), all or nothing; strings are borrowed
/// from the body. Vectors come from `spare` (give the batch back with
/// [`JobVecs::recycle`]), so a warm worker allocates nothing per order.
pub fn decode_jobs<'a>(body: &'a [u8], spare: &mut JobVecs) -> Result<JobBatch<'a>, FrameError> {
    let mut r = MsgReader::new(body);
    r.expect_array(2)?;
    let isolate = r.bool()?;
    let count = r.array_len()?;
    let mut jobs: Vec<Job<'a>> = reuse(std::mem::take(&mut spare.jobs));
    jobs.reserve(count.min(r.remaining()));
    let read = (0..count)
        .try_for_each(|_| read_job(&mut r, spare).map(|job| jobs.push(job)))
        .and_then(|()| r.finish());
    let batch = JobBatch { isolate, jobs };
    match read {
        Ok(()) => Ok(batch),
        Err(e) => {
            spare.recycle(batch);
            Err(e)
        }
    }
}

/// One `[seq, order]` of a Jobs body, its items in a spare vector.
fn read_job<'a>(r: &mut MsgReader<'a>, spare: &mut JobVecs) -> Result<Job<'a>, FrameError> {
    r.expect_array(2)?;
    let seq = r.uint()?;
    r.expect_array(5)?;
    let order_id = r.str()?;
    let customer_id = r.str()?;
    let currency = r.str()?;
    let n = r.array_len()?;
    let mut items: Vec<Item<'a>> = reuse(spare.items.pop().unwrap_or_default());
    items.reserve(n.min(r.remaining()));
    for _ in 0..n {
        r.expect_array(3)?;
        let sku = r.str()?;
        let qty = r.sint()?;
        let unit_price_cents = r.sint()?;
        items.push(Item {
            sku: sku.into(),
            qty,
            unit_price_cents,
        });
    }
    let payment_token = r.str()?;
    Ok(Job {
        seq,
        order: Order {
            order_id: order_id.into(),
            customer_id: customer_id.into(),
            currency: currency.into(),
            items,
            payment_token: payment_token.into(),
        },
    })
}

/// Spare vectors for [`decode_jobs`]: a frame's job list and each order's
/// item list, kept from one frame to the next.
#[derive(Debug, Default)]
pub struct JobVecs {
    jobs: Vec<Job<'static>>,
    items: Vec<Vec<Item<'static>>>,
}

impl JobVecs {
    /// Takes back the vectors of a batch that is done with.
    pub fn recycle(&mut self, batch: JobBatch<'_>) {
        let mut jobs = batch.jobs;
        for job in jobs.drain(..) {
            self.items.push(reuse(job.order.items));
        }
        self.jobs = reuse(jobs);
    }
}

/// Empties a vector and returns its allocation typed for another lifetime
/// (collecting in place keeps the buffer when the layouts are the same).
fn reuse<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter()
        .map(|_| unreachable!("the vector is empty"))
        .collect()
}

/// Reads MessagePack values off a body, borrowing strings from it.
struct MsgReader<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> MsgReader<'a> {
    fn new(body: &'a [u8]) -> MsgReader<'a> {
        MsgReader { body, at: 0 }
    }

    fn remaining(&self) -> usize {
        self.body.len() - self.at
    }

    fn error(&self, what: &str) -> FrameError {
        FrameError::Body(format!("bad {what} at byte {}", self.at))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.remaining() < n {
            return Err(FrameError::Body(format!(
                "truncated: {n} bytes wanted at byte {}, {} left",
                self.at,
                self.remaining()
            )));
        }
        let bytes = &self.body[self.at..self.at + n];
        self.at += n;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    fn be(&mut self, n: usize) -> Result<u64, FrameError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn array_len(&mut self) -> Result<usize, FrameError> {
        match self.byte()? {
            m @ 0x90..=0x9f => Ok(usize::from(m & 0x0f)),
            0xdc => Ok(self.be(2)? as usize),
            0xdd => Ok(self.be(4)? as usize),
            _ => Err(self.error("array")),
        }
    }

    fn expect_array(&mut self, len: usize) -> Result<(), FrameError> {
        if self.array_len()? == len {
            Ok(())
        } else {
            Err(self.error("array length"))
        }
    }

    fn bool(&mut self) -> Result<bool, FrameError> {
        match self.byte()? {
            0xc2 => Ok(false),
            0xc3 => Ok(true),
            _ => Err(self.error("boolean")),
        }
    }

    /// Any MessagePack integer, as an i128 (every encoding fits).
    fn int(&mut self) -> Result<i128, FrameError> {
        let m = self.byte()?;
        Ok(match m {
            0x00..=0x7f => i128::from(m),
            0xe0..=0xff => i128::from(m as i8),
            0xcc => i128::from(self.be(1)?),
            0xcd => i128::from(self.be(2)?),
            0xce => i128::from(self.be(4)?),
            0xcf => i128::from(self.be(8)?),
            0xd0 => i128::from(self.be(1)? as u8 as i8),
            0xd1 => i128::from(self.be(2)? as u16 as i16),
            0xd2 => i128::from(self.be(4)? as u32 as i32),
            0xd3 => i128::from(self.be(8)? as i64),
            _ => return Err(self.error("integer")),
        })
    }

    fn uint(&mut self) -> Result<u64, FrameError> {
        let v = self.int()?;
        u64::try_from(v).map_err(|_| self.error("unsigned integer"))
    }

    fn sint(&mut self) -> Result<i64, FrameError> {
        let v = self.int()?;
        i64::try_from(v).map_err(|_| self.error("signed integer"))
    }

    fn str(&mut self) -> Result<&'a str, FrameError> {
        let len = match self.byte()? {
            m @ 0xa0..=0xbf => usize::from(m & 0x1f),
            0xd9 => self.be(1)? as usize,
            0xda => self.be(2)? as usize,
            0xdb => self.be(4)? as usize,
            _ => return Err(self.error("string")),
        };
        let bytes = self.take(len)?;
        if bytes.is_ascii() {
            // SAFETY: ASCII is valid UTF-8. Almost every string on the wire
            // is ASCII, and this inline check costs a fraction of the call
            // to the general validator below (a third of the decoding time).
            return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
        std::str::from_utf8(bytes).map_err(|_| self.error("UTF-8 string"))
    }

    /// Every byte must have been read.
    fn finish(&self) -> Result<(), FrameError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(self.error("trailing data"))
        }
    }
}

/// Ventilator → sink: start or resume a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// What the input is, for the report (`file:…`, `generate:N:S`, `stdin`).
    pub input: String,
    /// Counted lines expected, known before the input is read: exact for
    /// `--generate`, estimated for a file (`expected_is_estimate`: show it
    /// as `~T`), none for a stream. The run's true total still comes with
    /// [`Progress::total`].
    #[serde(default)]
    pub expected: Option<u64>,
    #[serde(default)]
    pub expected_is_estimate: bool,
    /// Where workers reach this ventilator's jobs socket (`--advertise`);
    /// empty: at their own `--jobs`.
    #[serde(default)]
    pub jobs: String,
    /// True with `--report`: send the report back when the run completes.
    #[serde(default)]
    pub want_report: bool,
}

/// Sink → ventilator: this run waits behind the active one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// 1 for the next run to start.
    pub position: u32,
    /// The run being tallied now.
    pub behind: RunId,
}

/// Sink → workers: the active run's ventilator takes credit at `jobs`
/// (empty: at the worker's own `--jobs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStart {
    pub jobs: String,
}

/// Sink → ventilator: a completed run's report, as the JSON the sink wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportText {
    pub json: String,
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
    /// Orders at workers or on their way there (what their credit allows),
    /// for the operator's view.
    pub in_flight: u64,
    /// Deliveries after the first, since this ventilator started.
    pub redelivered: u64,
}

/// Sink → ventilator: seq ranges `[start, start + len)` now durable, and
/// why the payments among them that a worker gave up on failed (for the
/// ventilator's dead letter, which knows each seq's line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Acks {
    pub ranges: Vec<(u64, u64)>,
    /// `(seq, reason)` of each newly tallied `failed` worker result that
    /// carried a reason (in its currency slot). Absent in older frames.
    #[serde(default)]
    pub failures: Vec<(u64, String)>,
    /// In the sink's answer to a progress report: the horizon it now
    /// knows. Results for seqs at or past it are dropped as never
    /// dispatched, so the ventilator admits none there until the sink
    /// said so (its progress and the workers' results travel on
    /// different connections, and may arrive in either order).
    #[serde(default)]
    pub horizon: Option<u64>,
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

/// Worker → ventilator: the worker's room and liveness. The ventilator
/// never has more orders at a worker than `capacity`: it counts what it sent
/// and the worker counts what it `received` and `finished` (its result
/// written), so orders still on the way are counted too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Credit {
    /// Orders this worker can hold at once (payments in flight plus a
    /// prefetch): it grows with the worker's measured pace.
    pub capacity: u64,
    /// Orders received since this worker started.
    pub received: u64,
    /// Orders whose result this worker has sent to the sink.
    pub finished: u64,
    /// Now and then (every heartbeat): the seqs the worker holds, so that
    /// orders it no longer holds are known to be with the sink.
    pub holds: Option<Vec<u64>>,
}

/// An empty body, for signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty;

/// Worker → sink: this worker heard "run over" and exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bye {
    pub worker_id: u64,
}

/// Worker → sink: this worker's line on the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub worker_id: u64,
    /// The host name the worker runs on.
    pub host: String,
    /// Orders this worker process has finished, every run counted.
    pub processed: u64,
    /// Payments at the gateway right now.
    pub payments_in_flight: u64,
}

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
    fn the_hand_writers_write_what_rmp_writes_at_every_width() {
        let mut ints: Vec<i64> = vec![0, i64::MIN, i64::MAX];
        for bits in [5u32, 7, 8, 15, 16, 31, 32, 63] {
            // 1 << 63 wraps to i64::MIN: the edges around it wrap too.
            let edge = 1i64 << bits;
            ints.extend([-1, 0, 1].map(|d| edge.wrapping_add(d)));
            ints.extend([-1, 0, 1].map(|d| edge.wrapping_neg().wrapping_add(d)));
        }
        for v in ints {
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            put_sint(&mut ours, v);
            rmp::encode::write_sint(&mut theirs, v).unwrap();
            assert_eq!(ours, theirs, "sint {v}");
            if v >= 0 {
                let (mut ours, mut theirs) = (Vec::new(), Vec::new());
                put_uint(&mut ours, v as u64);
                rmp::encode::write_uint(&mut theirs, v as u64).unwrap();
                assert_eq!(ours, theirs, "uint {v}");
            }
        }
        for v in [u64::MAX, u64::MAX - 1, 1 << 63, u32::MAX as u64 + 1] {
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            put_uint(&mut ours, v);
            rmp::encode::write_uint(&mut theirs, v).unwrap();
            assert_eq!(ours, theirs, "uint {v}");
        }
        for n in [0, 1, 31, 32, 33, 255, 256, 65_535, 65_536, 70_000] {
            let s = "é".repeat(n / 2) + &"x".repeat(n % 2);
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            put_str(&mut ours, &s);
            rmp::encode::write_str(&mut theirs, &s).unwrap();
            assert_eq!(ours, theirs, "a string of {} bytes", s.len());
        }
    }

    #[test]
    fn acks_carry_failure_reasons_and_read_frames_without_them() {
        let mut acks = Acks::default();
        acks.push(4);
        acks.push(5);
        acks.failures.push((5, "HTTP 400 Bad Request".into()));
        let body = rmp_serde::to_vec(&acks).unwrap();
        assert_eq!(decode::<Acks>(&body).unwrap(), acks);
        // An Acks body from before the failures field: `[ranges]`.
        let old = rmp_serde::to_vec(&(vec![(7u64, 2u64)],)).unwrap();
        let read = decode::<Acks>(&old).unwrap();
        assert_eq!(read.seqs().collect::<Vec<_>>(), vec![7, 8]);
        assert!(read.failures.is_empty());
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
    fn hand_decoders_agree_with_serde() {
        let records = [
            ResultRecord {
                seq: u64::MAX,
                outcome: 0,
                currency: "USD",
                amount_cents: i64::MAX,
                items: vec![("A", 1), ("B", -1000)],
            },
            ResultRecord {
                seq: 70_000,
                outcome: 200,
                currency: "é",
                amount_cents: i64::MIN,
                items: vec![],
            },
        ];
        let batch = ResultBatch {
            worker_id: 1 << 40,
            results: records.to_vec(),
        };
        let f = frame(Kind::Results, RunId(1), &batch);
        let (_, body) = split_frame(&f).unwrap();
        let view = ResultsView::decode(body).unwrap();
        assert_eq!(view.worker_id, batch.worker_id);
        let refs: Vec<ResultRef> = view.iter().collect();
        let want: Vec<ResultRef> = records.iter().map(ResultRecord::as_ref).collect();
        assert_eq!(refs, want);

        let order = |id: &'static str, items| Order {
            order_id: id.into(),
            customer_id: "c".repeat(40).into(),
            currency: "EUR".into(),
            items,
            payment_token: "tok".into(),
        };
        let item = |qty, price| crate::order::Item {
            sku: "S".into(),
            qty,
            unit_price_cents: price,
        };
        let jobs = JobBatch {
            isolate: true,
            jobs: (0..20)
                .map(|i| Job {
                    seq: i * 1_000_000_007,
                    order: order("o", vec![item(i as i64 - 10, i64::MIN); i as usize % 3]),
                })
                .collect(),
        };
        let f = frame(Kind::Jobs, RunId(1), &jobs);
        let (_, body) = split_frame(&f).unwrap();
        assert_eq!(decode_jobs(body, &mut JobVecs::default()).unwrap(), jobs);
    }

    #[test]
    fn hand_decoders_never_accept_what_serde_rejects_or_reads_otherwise() {
        // Mutate valid bodies byte by byte: whatever the hand decoders
        // accept, serde must decode to the same values.
        let mut results = Vec::new();
        for seq in [1u64, 300, 70_000] {
            write_result_record(
                &mut results,
                seq,
                0,
                "USD",
                1999,
                [("SKU-1", 2)].into_iter(),
            );
        }
        let mut f = Vec::new();
        results_frame(&mut f, RunId(1), 9, 3, &results);
        let results_body = f[HEADER_LEN..].to_vec();
        let mut jobs = Vec::new();
        let order = Order {
            order_id: "o-1".into(),
            customer_id: "c".into(),
            currency: "USD".into(),
            items: vec![crate::order::Item {
                sku: "SKU-1".into(),
                qty: 2,
                unit_price_cents: 1999,
            }],
            payment_token: "tok_visa".into(),
        };
        write_job(&mut jobs, 5, &order);
        write_job(&mut jobs, 6, &order);
        let mut f = Vec::new();
        jobs_frame(&mut f, RunId(1), false, 2, [&jobs[..]]);
        let jobs_body = f[HEADER_LEN..].to_vec();

        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut accepted, mut rejected) = (0, 0);
        for round in 0..20_000 {
            let base = if round % 2 == 0 {
                &results_body
            } else {
                &jobs_body
            };
            let mut body = base.clone();
            for _ in 0..=next() % 3 {
                let at = (next() as usize) % body.len();
                match next() % 3 {
                    0 => body[at] = next() as u8,
                    1 => body.truncate(at),
                    _ => body.insert(at, next() as u8),
                }
                if body.is_empty() {
                    break;
                }
            }
            if round % 2 == 0 {
                match ResultsView::decode(&body) {
                    Ok(view) => {
                        accepted += 1;
                        let batch: ResultBatch = decode(&body).expect("serde accepts it too");
                        assert_eq!(view.worker_id, batch.worker_id);
                        let want: Vec<ResultRef> =
                            batch.results.iter().map(ResultRecord::as_ref).collect();
                        assert_eq!(view.iter().collect::<Vec<_>>(), want);
                    }
                    Err(_) => rejected += 1,
                }
            } else {
                match decode_jobs(&body, &mut JobVecs::default()) {
                    Ok(batch) => {
                        accepted += 1;
                        assert_eq!(
                            decode::<JobBatch>(&body).expect("serde accepts it too"),
                            batch
                        );
                    }
                    Err(_) => rejected += 1,
                }
            }
        }
        assert!(
            accepted > 100 && rejected > 100,
            "{accepted} accepted, {rejected} rejected"
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
