//! The reader thread: reads lines, gives each counted line its seq, parses
//! it, detects duplicate order ids and encodes jobs in batches for the
//! dispatcher; malformed lines go to the dead-letter file at once.
//!
//! With a stock file (`--stock`), the reader also runs the rules and the
//! allocator ([`crate::inventory`]) on each distinct order in line order: an
//! order that cannot have all its units is its own verdict, `out_of_stock`,
//! and never reaches a worker. After the last line it sends one `on_hand`
//! record per SKU, so the sink holds the stock table durably. A reader
//! started again (the sink came back with less) allocates again from the
//! start, so its decisions are the same.

use crate::dedup::{DigestSet, Pending};
use crate::generator::GeneratedOrder;
use crate::input::{InputSpec, LineSource, RawLine, SourceItem};
use crate::inventory::{Allocator, SkuIndex, StockTable};
use crate::ledger::SeqSet;
use crate::order::{Line, LineParser, Malformed};
use crate::protocol;
use crate::rules::{self, Outcome, Rejection};
use crate::transport::{self, SocketSpec, SocketTuning};
use crate::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

/// Appends `{"line": N, "reason": "…"}` records; opened on first use.
pub struct DeadLetter {
    path: PathBuf,
    file: Option<File>,
}

impl DeadLetter {
    /// A dead-letter file at `path`, created on the first record.
    pub fn new(path: PathBuf) -> DeadLetter {
        DeadLetter { path, file: None }
    }

    pub fn write(&mut self, line: u64, reason: &str) -> Result<()> {
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| Error::io("cannot open dead-letter file", &self.path, e))?;
            self.file = Some(f);
        }
        let mut rec = serde_json::to_string(&serde_json::json!({ "line": line, "reason": reason }))
            .expect("json");
        rec.push('\n');
        self.file
            .as_mut()
            .expect("opened")
            .write_all(rec.as_bytes())
            .map_err(|e| Error::io("cannot write dead-letter file", &self.path, e))
    }
}

/// What the reader hands the dispatcher.
pub struct Prepared {
    /// Encoded jobs back to back.
    pub jobs_bytes: Vec<u8>,
    /// `(seq, line, start, end)` of each job in `jobs_bytes`.
    pub jobs: Vec<(u64, u64, u32, u32)>,
    /// The reader's own verdicts: `(seq, line, outcome)`.
    pub locals: Vec<(u64, u64, Outcome)>,
    /// Result records the reader encoded whole (the stock file's on_hand records).
    pub records: Vec<(u64, Box<[u8]>)>,
    /// Seqs up to here have been read (the next seq).
    pub next_seq: u64,
    /// Set on the last message: the number of counted lines.
    pub total: Option<u64>,
    /// When the batch's first line was read (for the latency histogram).
    pub read_at: Instant,
}

impl Prepared {
    /// True when no line went into this batch yet.
    fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.locals.is_empty() && self.records.is_empty()
    }
}

/// The reader's stock: the allocator, and the demands of the orders whose
/// duplicate lookup is pending (reused, cleared per batch).
pub struct ReaderStock {
    allocator: Allocator,
    demand: Vec<(SkuIndex, i64)>,
}

impl ReaderStock {
    fn new(table: StockTable) -> ReaderStock {
        ReaderStock {
            allocator: Allocator::new(table),
            demand: Vec::with_capacity(64 * 1024),
        }
    }

    /// Checks the rules and records the order's demand: the range it takes
    /// in `demand`, empty when a rule rejects it (it holds nothing).
    fn demand_of(&mut self, line: &Parsed<'_>) -> (u32, u32) {
        let start = self.demand.len() as u32;
        let passes = match line {
            Parsed::Generated(g) => {
                let items = g.items.iter().map(|&(s, e, q, p)| (&g.skus[s..e], q, p));
                rules::price_items(g.currency, items.clone()).is_ok() && {
                    let units = items.map(|(sku, qty, _)| (sku, qty));
                    self.allocator.demand(units, &mut self.demand);
                    true
                }
            }
            Parsed::Line(Line::Order(order)) => {
                rules::price(order).is_ok() && {
                    let units = order.items.iter().map(|i| (&*i.sku, i.qty));
                    self.allocator.demand(units, &mut self.demand);
                    true
                }
            }
            Parsed::Line(_) => false,
        };
        if passes {
            (start, self.demand.len() as u32)
        } else {
            (start, start)
        }
    }

    /// Allocates a distinct order's demand; false when it is out of stock.
    fn allocate(&mut self, (start, end): (u32, u32)) -> bool {
        start == end
            || self
                .allocator
                .allocate(&mut self.demand[start as usize..end as usize])
    }
}

/// The reader thread's state; its input is handed to [`Reader::run`].
pub struct Reader {
    pub stock: Option<ReaderStock>,
    pub done: SeqSet,
    pub seen: DigestSet,
    pub dead_letter: DeadLetter,
    pub batch: usize,
    pub tx: mpsc::SyncSender<Prepared>,
    pub doorbell: zmq::Socket,
    pub stop: Arc<AtomicBool>,
}

/// A line as the reader sees it: parsed, or a generated order's fields.
enum Parsed<'a> {
    Line(Line<'a>),
    Generated(&'a GeneratedOrder),
}

/// The duplicate set of the first reader, sized for the input and its
/// pages backed on a thread of its own while the run id is digested and the
/// sink greeted, instead of on the reader's first inserts.
pub struct DuplicateSetWarmUp {
    thread: Option<std::thread::JoinHandle<DigestSet>>,
    orders: usize,
}

impl DuplicateSetWarmUp {
    /// Starts building the set for about `orders` distinct orders (see
    /// [`expected_total`]), sized once instead of grown (each growth
    /// copies the whole table).
    pub fn start(orders: usize) -> DuplicateSetWarmUp {
        let thread = std::thread::Builder::new()
            .name("dedup-warm-up".into())
            .spawn(move || {
                let mut seen = DigestSet::with_capacity(orders);
                seen.prefault();
                seen
            })
            .ok();
        DuplicateSetWarmUp { thread, orders }
    }

    /// The set, once built (built here if the thread could not be).
    pub fn finish(self) -> DigestSet {
        match self.thread.map(|t| t.join()) {
            Some(Ok(seen)) => seen,
            _ => DigestSet::with_capacity(self.orders),
        }
    }
}

/// The counted lines the sink may expect before the input is read: exact
/// for `--generate`, a file's estimate, none for a stream.
pub fn expected_total(input: &InputSpec) -> Option<u64> {
    match input {
        InputSpec::Generate { count, .. } => Some(*count),
        InputSpec::File(path) => estimate_lines(path).map(|n| n as u64),
        InputSpec::Stdin => None,
    }
}

/// A file's size over the average length of the lines in its first MiB.
pub fn estimate_lines(path: &std::path::Path) -> Option<usize> {
    use std::io::Read;
    let mut file = File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    let mut head = Vec::with_capacity(1 << 20);
    Read::by_ref(&mut file)
        .take(1 << 20)
        .read_to_end(&mut head)
        .ok()?;
    let lines = memchr::memchr_iter(b'\n', &head).count().max(1);
    Some((size as f64 / (head.len() as f64 / lines as f64)).ceil() as usize)
}

/// What a duplicate lookup needs to act on its answer: the line's seq and
/// number, the index of its encoded job in the batch (none when the sink
/// has it tallied already), and its range in the stock demand buffer.
type Lookup = (u64, u64, Option<usize>, (u32, u32));

/// Marks a job taken back out of a batch (its id turned out a duplicate).
const WITHDRAWN: u32 = u32::MAX;

/// The next line of `source`, numbered and parsed (a line longer than the
/// reader takes is malformed); none at the end of the input.
fn next_line<'a>(
    source: &'a mut LineSource,
    parser: &mut LineParser,
) -> Result<Option<(u64, Parsed<'a>)>> {
    let Some(item) = source.next_item()? else {
        return Ok(None);
    };
    Ok(Some(match item {
        SourceItem::Generated { number, order } => (number, Parsed::Generated(order)),
        SourceItem::Raw(RawLine {
            number,
            bytes,
            full_len,
        }) if full_len > bytes.len() => (
            number,
            Parsed::Line(Line::Malformed(Malformed::TooLong(full_len))),
        ),
        SourceItem::Raw(raw) => (raw.number, Parsed::Line(parser.parse(raw.bytes))),
    }))
}

/// Appends an order's job to the batch: its index in `out.jobs`.
fn encode_job(out: &mut Prepared, seq: u64, number: u64, line: &Parsed<'_>) -> usize {
    let bytes = &mut out.jobs_bytes;
    let start = bytes.len() as u32;
    match line {
        Parsed::Generated(g) => {
            let items = g.items.iter().map(|&(s, e, q, p)| (&g.skus[s..e], q, p));
            let fields = [&*g.order_id, &*g.customer_id, g.currency, g.payment_token];
            protocol::write_job_fields(bytes, seq, fields, items);
        }
        Parsed::Line(Line::Order(order)) => protocol::write_job(bytes, seq, order),
        Parsed::Line(_) => unreachable!("only orders get here"),
    }
    let end = bytes.len() as u32;
    out.jobs.push((seq, number, start, end));
    out.jobs.len() - 1
}

impl Reader {
    /// Reads `source` to its end, handing batches to the dispatcher, until
    /// stopped or the dispatcher is gone.
    pub fn run(mut self, mut source: LineSource) -> Result<()> {
        let mut seq = 0u64;
        let mut out = self.empty();
        // Each line's job is encoded at once and its duplicate lookup done a
        // few lines later (see crate::dedup); a duplicate's job is withdrawn.
        let mut pending: Pending<Lookup> = Pending::default();
        let mut parser = LineParser::default();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if !out.is_empty() && source.may_block() {
                // A stream went quiet: do not hold what we have.
                if !self.hand_over(&mut pending, &mut out, seq) {
                    return Ok(());
                }
            }
            let Some((number, line)) = next_line(&mut source, &mut parser)? else {
                break;
            };
            if out.is_empty() {
                // The clock starts when the batch's first line arrives, not
                // when the last batch left: a quiet stream's wait for its
                // next line is not the grid's latency.
                out.read_at = Instant::now();
            }
            let this = seq;
            let order_id: &str = match &line {
                Parsed::Line(Line::Blank) => continue,
                Parsed::Line(Line::Malformed(why)) => {
                    seq += 1;
                    self.malformed(this, number, why, &mut out)?;
                    continue;
                }
                Parsed::Line(Line::Order(order)) => &order.order_id,
                Parsed::Generated(order) => &order.order_id,
            };
            seq += 1;
            let digest = xxhash_rust::xxh3::xxh3_128(order_id.as_bytes());
            self.take_order((this, number), digest, &line, &mut out, &mut pending);
            if let Parsed::Line(Line::Order(order)) = line {
                parser.recycle(order);
            }
            if self.batch_full(&out) && !self.hand_over(&mut pending, &mut out, seq) {
                return Ok(());
            }
        }
        self.finish(pending, out, seq);
        Ok(())
    }

    /// A malformed counted line: dead-lettered and its verdict kept, unless
    /// the sink has it tallied already.
    fn malformed(
        &mut self,
        seq: u64,
        number: u64,
        why: &Malformed,
        out: &mut Prepared,
    ) -> Result<()> {
        if !self.done.contains(seq) {
            self.dead_letter.write(number, &why.to_string())?;
            out.locals.push((seq, number, Outcome::Malformed));
        }
        Ok(())
    }

    /// An order: its job encoded (unless the sink has it tallied already),
    /// its stock demand noted and its duplicate lookup queued; acts on the
    /// lookup that this one completes.
    fn take_order(
        &mut self,
        (seq, number): (u64, u64),
        digest: u128,
        line: &Parsed<'_>,
        out: &mut Prepared,
        pending: &mut Pending<Lookup>,
    ) {
        let job = (!self.done.contains(seq)).then(|| encode_job(out, seq, number, line));
        let holds = match &mut self.stock {
            Some(stock) => stock.demand_of(line),
            None => (0, 0),
        };
        if let Some(answer) = pending.push(&mut self.seen, digest, (seq, number, job, holds)) {
            Self::resolve(answer, out, &mut self.stock);
        }
    }

    /// True when the batch is big enough to hand over.
    fn batch_full(&self, out: &Prepared) -> bool {
        out.jobs.len() >= self.batch
            || out.jobs_bytes.len() >= 256 << 10
            || out.locals.len() >= self.batch
    }

    /// Finishes the batch's lookups and hands it over, seqs read up to
    /// `next_seq`, starting a new one; false when the dispatcher is gone.
    fn hand_over(
        &mut self,
        pending: &mut Pending<Lookup>,
        out: &mut Prepared,
        next_seq: u64,
    ) -> bool {
        self.resolve_all(pending, out);
        out.next_seq = next_seq;
        let full = std::mem::replace(out, self.empty());
        self.send(full)
    }

    /// After the last line: the last lookups, the stock file's on_hand
    /// records, and the last batch with the total.
    fn finish(&mut self, mut pending: Pending<Lookup>, mut out: Prepared, seq: u64) {
        self.resolve_all(&mut pending, &mut out);
        let Some(seq) = self.send_on_hand(seq, &mut out) else {
            return;
        };
        out.next_seq = seq;
        out.total = Some(seq);
        self.send(out);
    }

    /// Acts on one duplicate lookup: a repeated id's job is withdrawn from
    /// the batch and the line counted as a duplicate (unless tallied
    /// already); a new order gets its units, or is withdrawn as out of stock.
    fn resolve(
        (fresh, (seq, number, job, holds)): (bool, Lookup),
        out: &mut Prepared,
        stock: &mut Option<ReaderStock>,
    ) {
        let verdict = if !fresh {
            Outcome::Duplicate
        } else if stock.as_mut().is_some_and(|s| !s.allocate(holds)) {
            Outcome::Rejected(Rejection::OutOfStock)
        } else {
            return;
        };
        if let Some(index) = job {
            out.jobs[index].2 = WITHDRAWN;
            out.locals.push((seq, number, verdict));
        }
    }

    /// Finishes every waiting lookup and drops withdrawn jobs: before a batch leaves.
    fn resolve_all(&mut self, pending: &mut Pending<Lookup>, out: &mut Prepared) {
        while let Some(answer) = pending.pop(&mut self.seen) {
            Self::resolve(answer, out, &mut self.stock);
        }
        if let Some(stock) = &mut self.stock {
            stock.demand.clear();
        }
        out.jobs.retain(|job| job.2 != WITHDRAWN);
    }

    /// After the last line: one on_hand record per SKU of the stock file,
    /// seqs from `seq` on (those the sink has not tallied). Returns the
    /// next seq, or None when the dispatcher is gone.
    fn send_on_hand(&mut self, mut seq: u64, out: &mut Prepared) -> Option<u64> {
        let Some(stock) = &self.stock else {
            return Some(seq);
        };
        for (sku, units) in stock.allocator.table().iter() {
            if !self.done.contains(seq) {
                let mut record = Vec::with_capacity(sku.len() + 24);
                let item = std::iter::once((sku, units));
                let code = Outcome::OnHand.code();
                protocol::write_result_record(&mut record, seq, code, "", 0, item);
                out.records.push((seq, record.into_boxed_slice()));
            }
            seq += 1;
            if out.records.len() >= self.batch {
                out.next_seq = seq;
                if !self.send(std::mem::replace(out, self.empty())) {
                    return None;
                }
            }
        }
        Some(seq)
    }

    fn empty(&self) -> Prepared {
        Prepared {
            jobs_bytes: Vec::with_capacity(self.batch * 160),
            jobs: Vec::with_capacity(self.batch),
            locals: Vec::new(),
            records: Vec::new(),
            next_seq: 0,
            total: None,
            read_at: Instant::now(),
        }
    }

    /// False when the dispatcher is gone.
    fn send(&self, prepared: Prepared) -> bool {
        if self.tx.send(prepared).is_err() {
            return false;
        }
        // One pending ring is enough; a full doorbell is fine.
        let _ = self.doorbell.send(&b""[..], zmq::DONTWAIT);
        true
    }
}

/// The reader thread as the run loop holds it: its channel, its doorbell
/// (readable when a batch is ready), and the way to stop it. A sink that
/// comes back without orders it had acknowledged gets a new reader, which
/// reads the input again and hands over only what is still missing.
pub struct ReaderHandle {
    pub rx: mpsc::Receiver<Prepared>,
    pub bell: zmq::Socket,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

/// What a reader needs besides its input.
pub struct ReaderSetup<'a> {
    pub ctx: &'a zmq::Context,
    pub input: &'a InputSpec,
    pub dead_letter: &'a std::path::Path,
    pub batch: usize,
    /// The stock file, when orders are allocated units.
    pub stock: Option<&'a StockTable>,
    /// Names the doorbell's endpoint: unique per reader of this process.
    pub name: String,
}

impl ReaderHandle {
    /// Starts a reader of `source` that skips the seqs in `done` and
    /// records the order ids it sees in `seen`.
    pub fn start(
        setup: &ReaderSetup<'_>,
        source: LineSource,
        done: SeqSet,
        seen: DigestSet,
    ) -> Result<ReaderHandle> {
        let (bell, ring) = doorbell(setup.ctx, &setup.name)?;
        let (tx, rx) = mpsc::sync_channel::<Prepared>(4);
        let stop = Arc::new(AtomicBool::new(false));
        let reader = Reader {
            stock: setup.stock.cloned().map(ReaderStock::new),
            done,
            seen,
            dead_letter: DeadLetter::new(setup.dead_letter.to_path_buf()),
            batch: setup.batch,
            tx,
            doorbell: ring,
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("reader".into())
            .spawn({
                let span = tracing::Span::current();
                move || span.in_scope(|| reader.run(source))
            })
            .map_err(|e| Error::Config(format!("cannot start the reader thread: {e}")))?;
        Ok(ReaderHandle {
            rx,
            bell,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the reader (what it prepared and did not hand over is
    /// dropped) and reports how it ended.
    pub fn stop(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        // Unblocks a reader waiting on a full channel, until it ends.
        while !thread.is_finished() {
            while self.rx.try_recv().is_ok() {}
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        match thread.join() {
            Ok(result) => result,
            Err(_) => Err(Error::Internal("the reader thread panicked".into())),
        }
    }
}

/// The doorbell, a PAIR the run loop polls (bound), and the PAIR the
/// reader rings it with (connected; one pending ring at most).
fn doorbell(ctx: &zmq::Context, name: &str) -> Result<(zmq::Socket, zmq::Socket)> {
    let endpoint = format!("inproc://ventilator-doorbell-{name}");
    let spec = SocketSpec::new(zmq::PAIR, "doorbell");
    let bell = transport::bind(ctx, spec, &endpoint)?;
    let one_ring = SocketTuning {
        send_hwm: 1,
        ..spec.tuning
    };
    let ring = transport::connect(ctx, spec.tuned(one_ring), &endpoint)?;
    Ok((bell, ring))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A stream whose second line arrives only when the test releases it,
    /// and which records when it handed that line over.
    struct LateSecondLine {
        reads: usize,
        release: mpsc::Receiver<()>,
        released_at: Arc<Mutex<Option<Instant>>>,
    }

    fn order_line(id: &str) -> String {
        format!(
            "{{\"order_id\": \"{id}\", \"customer_id\": \"c-1\", \"currency\": \"USD\", \"items\": [{{\"sku\": \"SKU-1\", \"qty\": 1, \"unit_price_cents\": 100}}], \"payment_token\": \"tok_visa\"}}\n"
        )
    }

    impl Read for LateSecondLine {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.reads += 1;
            let line = match self.reads {
                1 => order_line("o-1"),
                2 => {
                    let _ = self.release.recv();
                    *self.released_at.lock().unwrap() = Some(Instant::now());
                    order_line("o-2")
                }
                _ => return Ok(0),
            };
            buf[..line.len()].copy_from_slice(line.as_bytes());
            Ok(line.len())
        }
    }

    #[test]
    fn a_quiet_streams_wait_is_not_counted_in_the_next_orders_latency() {
        let ctx = zmq::Context::new();
        let dir = std::env::temp_dir().join(format!("ordergrid-reader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (release, released) = mpsc::channel();
        let released_at = Arc::new(Mutex::new(None));
        let source = LineSource::stream(Box::new(LateSecondLine {
            reads: 0,
            release: released,
            released_at: released_at.clone(),
        }));
        let setup = ReaderSetup {
            ctx: &ctx,
            input: &InputSpec::Stdin,
            dead_letter: &dir.join("dead-letter.jsonl"),
            batch: 1024,
            stock: None,
            name: "latency-test".into(),
        };
        let seen = DigestSet::with_capacity(0);
        let mut reader = ReaderHandle::start(&setup, source, SeqSet::default(), seen).unwrap();
        let wait = Duration::from_secs(10);
        let first = reader
            .rx
            .recv_timeout(wait)
            .expect("the first line's batch");
        assert_eq!(first.jobs.len(), 1, "a quiet stream hands over what it has");
        // The stream stays quiet a while after the first batch left.
        std::thread::sleep(Duration::from_millis(20));
        release.send(()).unwrap();
        let second = reader
            .rx
            .recv_timeout(wait)
            .expect("the second line's batch");
        assert_eq!(second.jobs.len(), 1);
        let arrived = released_at
            .lock()
            .unwrap()
            .expect("the second line was read");
        assert!(
            second.read_at >= arrived,
            "the second batch's clock started {:?} before its line arrived",
            arrived - second.read_at
        );
        reader.stop().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
