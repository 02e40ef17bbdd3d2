//! The ventilator: reads the input, gives each counted line a seq, sends
//! orders to workers in batches and its own verdicts (malformed, duplicate,
//! poison) to the sink, and keeps a bounded window of what is not yet
//! acknowledged, redelivering what times out.
//!
//! Two threads: the *reader* parses lines, detects duplicates and encodes
//! jobs; the *dispatcher* owns the sockets, the window and the timers.
//!
//! # Redelivery lanes
//! An order whose result does not come back in time (an adaptive time-out,
//! RFC 6298 style, from the measured acknowledgement delay) was lost with a
//! worker. Lost orders are narrowed down like a group test, so that a poison
//! order takes nothing innocent down with it for good:
//! - first delivery: with the stream, in ordinary batches;
//! - after a loss: in small *isolated* groups (the worker finishes everything
//!   else first and processes the group alone), a few groups at a time;
//! - on the last delivery: *alone*, isolated, one in the whole grid at a time.
//!
//! After `max_deliveries` deliveries with no result the order is written to
//! the dead-letter file and tallied as `failed`. A time-out only counts as a
//! loss while the sink is acknowledging other orders: a sink outage costs
//! nothing.

use crate::dedup::{DigestSet, Pending};
use crate::fasthash::SeqMap;
use crate::generator::GeneratedOrder;
use crate::input::{InputSpec, LineSource, RawLine, SourceItem};
use crate::ledger::SeqSet;
use crate::order::{self, Line, Malformed};
use crate::protocol::{self, Acks, Hello, Kind, Progress, RunId, Welcome};
use crate::rules::Outcome;
use crate::seal::{OpenError, RejectLog};
use crate::shutdown::Shutdown;
use crate::transport::{self, SocketTuning, Wire};
use crate::{Error, Result};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

/// What a ventilator needs to run.
#[derive(Debug, Clone)]
pub struct VentilatorConfig {
    pub input: InputSpec,
    pub jobs: String,
    pub acks: String,
    /// The run id; by default the digest of the input.
    pub run_id: Option<RunId>,
    pub dead_letter: PathBuf,
    /// Orders per job frame at most.
    pub batch: usize,
    /// Orders sent and not yet acknowledged, at most.
    pub window: usize,
    /// Job frames queued towards each worker (ZMQ_SNDHWM).
    pub send_hwm: i32,
    /// Deliveries without a result before an order is given up as poison.
    pub max_deliveries: u8,
    /// Bounds of the adaptive redelivery time-out.
    pub min_timeout: Duration,
    pub max_timeout: Duration,
    /// Counters and gauges (served with `--metrics`).
    pub metrics: crate::metrics::Metrics,
    /// Plain or sealed frames.
    pub wire: Wire,
}

impl Default for VentilatorConfig {
    fn default() -> Self {
        VentilatorConfig {
            input: InputSpec::Stdin,
            jobs: crate::DEFAULT_JOBS.into(),
            acks: crate::DEFAULT_ACKS.into(),
            run_id: None,
            dead_letter: crate::DEFAULT_DEAD_LETTER.into(),
            batch: 1024,
            window: 32_768,
            send_hwm: 8,
            max_deliveries: 3,
            min_timeout: Duration::from_secs(1),
            max_timeout: Duration::from_secs(30),
            metrics: crate::metrics::Metrics::default(),
            wire: Wire::plain(),
        }
    }
}

/// How a ventilator's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VentilatorExit {
    /// The sink reports the run complete.
    Complete {
        run: RunId,
        lines: u64,
        redelivered: u64,
        poisoned: u64,
    },
    /// Stopped by a signal; start again with the same input to resume.
    Stopped { run: RunId },
}

type FastMap<K, V> = SeqMap<K, V>;

/// Appends `{"line": N, "reason": "…"}` records; opened on first use.
struct DeadLetter {
    path: PathBuf,
    file: Option<File>,
}

impl DeadLetter {
    fn write(&mut self, line: u64, reason: &str) -> Result<()> {
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
struct Prepared {
    /// Encoded jobs back to back.
    jobs_bytes: Vec<u8>,
    /// `(seq, line, start, end)` of each job in `jobs_bytes`.
    jobs: Vec<(u64, u64, u32, u32)>,
    /// The reader's own verdicts: `(seq, line, outcome)`.
    locals: Vec<(u64, u64, Outcome)>,
    /// Seqs up to here have been read (the next seq).
    next_seq: u64,
    /// Set on the last message: the number of counted lines.
    total: Option<u64>,
}

struct Reader {
    source: LineSource,
    done: SeqSet,
    seen: DigestSet,
    dead_letter: DeadLetter,
    batch: usize,
    tx: mpsc::SyncSender<Prepared>,
    doorbell: zmq::Socket,
    stop: Arc<AtomicBool>,
}

/// Counts a frame that failed to open and logs it once in a while.
fn note_rejected(log: &mut RejectLog, metrics: &crate::metrics::Metrics, error: OpenError) {
    metrics.bad_frames.inc();
    if let Some(summary) = log.record(error) {
        tracing::warn!("{summary}");
    }
}

/// A line as the reader sees it: parsed, or a generated order's fields.
enum Parsed<'a> {
    Line(Line<'a>),
    Generated(&'a GeneratedOrder),
}

/// About how many distinct orders the input holds, to size the duplicate
/// set once instead of growing it (each growth copies the whole table).
fn expected_orders(input: &InputSpec) -> usize {
    match input {
        InputSpec::Generate { count, .. } => *count as usize,
        InputSpec::File(path) => estimate_lines(path).unwrap_or(0),
        InputSpec::Stdin => 0,
    }
}

/// A file's size over the average length of the lines in its first MiB.
fn estimate_lines(path: &std::path::Path) -> Option<usize> {
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
/// number, and the index of its encoded job in the batch (none when the
/// sink has it tallied already).
type Lookup = (u64, u64, Option<usize>);

/// Marks a job taken back out of a batch (its id turned out a duplicate).
const WITHDRAWN: u32 = u32::MAX;

impl Reader {
    fn run(mut self) -> Result<()> {
        let mut seq = 0u64;
        let mut out = self.empty();
        // Each line's job is encoded at once and its duplicate lookup done a
        // few lines later (see crate::dedup); a duplicate's job is withdrawn.
        let mut pending: Pending<Lookup> = Pending::default();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if (!out.jobs.is_empty() || !out.locals.is_empty()) && self.source.may_block() {
                // A stream went quiet: do not hold what we have.
                Self::resolve_all(&mut pending, &mut self.seen, &mut out);
                out.next_seq = seq;
                let full = std::mem::replace(&mut out, self.empty());
                if !self.send(full) {
                    return Ok(());
                }
            }
            let Some(item) = self.source.next_item()? else {
                break;
            };
            let (number, line) = match item {
                SourceItem::Generated { number, order } => (number, Parsed::Generated(order)),
                SourceItem::Raw(RawLine {
                    number,
                    bytes,
                    full_len,
                }) if full_len > bytes.len() => (
                    number,
                    Parsed::Line(Line::Malformed(Malformed::TooLong(full_len))),
                ),
                SourceItem::Raw(raw) => (raw.number, Parsed::Line(order::parse_line(raw.bytes))),
            };
            let this = seq;
            let order_id: &str = match &line {
                Parsed::Line(Line::Blank) => continue,
                Parsed::Line(Line::Malformed(why)) => {
                    seq += 1;
                    if !self.done.contains(this) {
                        self.dead_letter.write(number, &why.to_string())?;
                        out.locals.push((this, number, Outcome::Malformed));
                    }
                    continue;
                }
                Parsed::Line(Line::Order(order)) => &order.order_id,
                Parsed::Generated(order) => &order.order_id,
            };
            seq += 1;
            let digest = xxhash_rust::xxh3::xxh3_128(order_id.as_bytes());
            let job = if self.done.contains(this) {
                None
            } else {
                let bytes = &mut out.jobs_bytes;
                let start = bytes.len() as u32;
                match &line {
                    Parsed::Generated(g) => {
                        let items = g.items.iter().map(|&(s, e, q, p)| (&g.skus[s..e], q, p));
                        let fields = [&*g.order_id, &*g.customer_id, g.currency, g.payment_token];
                        protocol::write_job_fields(bytes, this, fields, items);
                    }
                    Parsed::Line(Line::Order(order)) => protocol::write_job(bytes, this, order),
                    Parsed::Line(_) => unreachable!("only orders get here"),
                }
                let end = bytes.len() as u32;
                out.jobs.push((this, number, start, end));
                Some(out.jobs.len() - 1)
            };
            if let Some(answer) = pending.push(&mut self.seen, digest, (this, number, job)) {
                Self::resolve(answer, &mut out);
            }
            if out.jobs.len() >= self.batch
                || out.jobs_bytes.len() >= 256 << 10
                || out.locals.len() >= self.batch
            {
                Self::resolve_all(&mut pending, &mut self.seen, &mut out);
                out.next_seq = seq;
                let full = std::mem::replace(&mut out, self.empty());
                if !self.send(full) {
                    return Ok(());
                }
            }
        }
        Self::resolve_all(&mut pending, &mut self.seen, &mut out);
        out.next_seq = seq;
        out.total = Some(seq);
        self.send(out);
        Ok(())
    }

    /// Acts on one duplicate lookup: a repeated id's job is withdrawn from
    /// the batch and the line counted as a duplicate (unless tallied already).
    fn resolve((fresh, (seq, number, job)): (bool, Lookup), out: &mut Prepared) {
        if fresh {
            return;
        }
        if let Some(index) = job {
            out.jobs[index].2 = WITHDRAWN;
            out.locals.push((seq, number, Outcome::Duplicate));
        }
    }

    /// Finishes every waiting lookup and drops withdrawn jobs: before a batch leaves.
    fn resolve_all(pending: &mut Pending<Lookup>, seen: &mut DigestSet, out: &mut Prepared) {
        while let Some(answer) = pending.pop(seen) {
            Self::resolve(answer, out);
        }
        out.jobs.retain(|job| job.2 != WITHDRAWN);
    }

    fn empty(&self) -> Prepared {
        Prepared {
            jobs_bytes: Vec::with_capacity(self.batch * 160),
            jobs: Vec::with_capacity(self.batch),
            locals: Vec::new(),
            next_seq: 0,
            total: None,
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

/// The adaptive redelivery time-out (RFC 6298's estimator), and the
/// in-flight limit that keeps orders from queueing at workers.
struct Timeout {
    srtt: Option<f64>,
    rttvar: f64,
    min: Duration,
    max: Duration,
    /// The smallest delay seen lately (seconds) and since when it stands.
    min_rtt: Option<(f64, Instant)>,
}

/// How long a smallest delay stands before a newer sample replaces it.
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);

impl Timeout {
    /// One acknowledgement delay, measured at `now`.
    fn sample(&mut self, rtt: Duration, now: Instant) {
        let r = rtt.as_secs_f64();
        let stale = self
            .min_rtt
            .is_none_or(|(m, at)| r <= m || now.duration_since(at) > MIN_RTT_WINDOW);
        if stale {
            self.min_rtt = Some((r, now));
        }
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2.0;
            }
            Some(s) => {
                self.rttvar = 0.75 * self.rttvar + 0.25 * (s - r).abs();
                self.srtt = Some(0.875 * s + 0.125 * r);
            }
        }
    }

    /// True when orders wait much longer than the grid needs: they queue at
    /// workers (a slow gateway, a slow link), which the in-flight limit
    /// should not feed. Queued orders make time-outs long, so an order on a
    /// vanished host would be noticed late.
    fn queueing(&self) -> bool {
        match (self.srtt, self.min_rtt) {
            (Some(s), Some((m, _))) => s > 4.0 * m + 0.05,
            _ => false,
        }
    }

    /// The time-out for an order lost `losses` times before (doubling per loss).
    fn current(&self, losses: u8) -> Duration {
        let base = self.srtt.map_or(1.0, |s| s + 4.0 * self.rttvar);
        let t = Duration::from_secs_f64(base).clamp(self.min, self.max);
        (t * (1u32 << losses.min(5))).min(self.max)
    }
}

enum Payload {
    Job {
        bytes: Arc<Vec<u8>>,
        start: u32,
        end: u32,
    },
    Local(Outcome),
}

struct Slot {
    line: u64,
    payload: Payload,
    losses: u8,
    /// Increases at every send; a time-out entry with an older tag is stale.
    tag: u32,
    sent_at: Option<Instant>,
}

/// Which lane an order was last sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// With the stream.
    Fresh,
    /// Again with the stream, after a time-out that was not a loss.
    Retry,
    /// In an isolated group, after a loss.
    Group,
    /// Alone, on its last delivery.
    Single,
}

/// Orders per isolated group.
const GROUP_SIZE: usize = 32;
/// Isolated groups in flight at once.
const GROUPS_IN_FLIGHT: usize = 4;

/// Job frames ready to go, each with the seqs it carries.
struct Outgoing {
    frame: Vec<u8>,
    seqs: Vec<u64>,
    lane: Lane,
}

struct Dispatcher {
    config: VentilatorConfig,
    run: RunId,
    window: FastMap<u64, Slot>,
    fresh: VecDeque<Outgoing>,
    /// Timed out but not lost (no worker went away): sent again with the stream.
    retry: VecDeque<u64>,
    /// Lost once or more, waiting for an isolated group.
    groups: VecDeque<u64>,
    /// Groups in flight: their unresolved member counts by group number.
    groups_in_flight: FastMap<u64, usize>,
    group_of: FastMap<u64, u64>,
    next_group: u64,
    /// On their last delivery, waiting to go alone.
    singles: VecDeque<u64>,
    single_in_flight: Option<u64>,
    locals_out: Vec<u64>,
    timeouts: VecDeque<(Instant, u64, u32)>,
    timeout: Timeout,
    /// The in-flight limit now (at most `config.window`): shrinks while
    /// orders queue at workers, grows back when they do not.
    limit: usize,
    /// Doubling the limit each tick until orders first queue.
    slow_start: bool,
    last_heard: Option<Instant>,
    /// When a worker's connection to the jobs socket last closed.
    last_disconnect: Option<Instant>,
    horizon: u64,
    total: Option<u64>,
    reader_done: bool,
    dead_letter: DeadLetter,
    redelivered: u64,
    poisoned: u64,
    frame: Vec<u8>,
    seal_buf: Vec<u8>,
    rejected: RejectLog,
}

/// Runs a ventilator until the sink reports the run complete or a stop is requested.
pub fn run(config: &VentilatorConfig, shutdown: &Shutdown) -> Result<VentilatorExit> {
    let (source, digest) = LineSource::open(&config.input)?;
    let run = match (config.run_id, digest) {
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => {
            let id = RunId(crate::roles::worker::new_worker_id());
            tracing::warn!(run = %id, "reading a stream without --run-id: this run cannot be resumed after a ventilator restart");
            id
        }
    };
    crate::cli::record_run(&run);
    let ctx = zmq::Context::new();
    let jobs = transport::bind(
        &ctx,
        zmq::PUSH,
        &config.jobs,
        SocketTuning {
            send_hwm: config.send_hwm,
            recv_hwm: 1000,
        },
        "jobs",
    )?;
    let sink = transport::connect(
        &ctx,
        zmq::DEALER,
        &config.acks,
        SocketTuning {
            send_hwm: 10_000,
            recv_hwm: 10_000,
        },
        "acks",
    )?;
    tracing::info!(run = %run, input = %config.input.describe(), jobs = %config.jobs, acks = %config.acks, "ventilator started");

    // Hello until the sink answers with what is already tallied.
    let hello = protocol::frame(
        Kind::Hello,
        run,
        &Hello {
            input: config.input.describe(),
        },
    );
    let mut done = SeqSet::default();
    let mut msg = zmq::Message::new();
    let mut last_hello: Option<Instant> = None;
    let mut told_busy = false;
    let mut seal_buf = Vec::new();
    let mut rejected = RejectLog::new(Duration::from_secs(5));
    loop {
        if shutdown.requested() {
            return Ok(VentilatorExit::Stopped { run });
        }
        if last_hello.is_none_or(|t| t.elapsed() > Duration::from_millis(250)) {
            transport::send_frame(&sink, &config.wire, &hello, &mut seal_buf, "acks")?;
            last_hello = Some(Instant::now());
        }
        let mut items = [sink.as_poll_item(zmq::POLLIN)];
        transport::poll(&mut items, 100)?;
        let mut welcomed = false;
        while transport::try_recv(&sink, &mut msg, "acks")? {
            let plain = match config.wire.incoming(&mut msg) {
                Ok(plain) => plain,
                Err(e) => {
                    note_rejected(&mut rejected, &config.metrics, e);
                    continue;
                }
            };
            let Ok((h, body)) = protocol::split_frame(plain) else {
                config.metrics.bad_frames.inc();
                continue;
            };
            if h.run != run {
                continue;
            }
            match h.kind {
                Kind::Welcome => {
                    if let Ok(w) = protocol::decode::<Welcome>(body) {
                        done.merge_words(w.first_word as usize, &w.words);
                        welcomed |= w.last;
                    }
                }
                Kind::Complete => {
                    tracing::info!(run = %run, "the sink reports this run complete");
                    return Ok(VentilatorExit::Complete {
                        run,
                        lines: 0,
                        redelivered: 0,
                        poisoned: 0,
                    });
                }
                Kind::Busy if !told_busy => {
                    tracing::warn!(run = %run, "the sink is busy with another run; waiting");
                    told_busy = true;
                }
                _ => {}
            }
        }
        if welcomed {
            break;
        }
    }
    let already = done
        .words()
        .iter()
        .map(|w| u64::from(w.count_ones()))
        .sum::<u64>();
    tracing::info!(run = %run, already_tallied = already, "the sink accepted the run");

    // Worker connections closing (a crash closes them at once) tell a lost
    // order from a late one.
    let monitor_ep = format!("inproc://ventilator-jobs-monitor-{run}");
    jobs.monitor(&monitor_ep, zmq::SocketEvent::DISCONNECTED as i32)
        .map_err(|e| Error::zmq("cannot monitor the jobs socket", e))?;
    let monitor = ctx
        .socket(zmq::PAIR)
        .map_err(|e| Error::zmq("cannot create the jobs monitor", e))?;
    monitor
        .connect(&monitor_ep)
        .map_err(|e| Error::zmq("cannot connect the jobs monitor", e))?;

    // The reader thread.
    let (tx, rx) = mpsc::sync_channel::<Prepared>(4);
    let doorbell_ep = format!("inproc://ventilator-doorbell-{run}");
    let doorbell = ctx
        .socket(zmq::PAIR)
        .map_err(|e| Error::zmq("cannot create the doorbell", e))?;
    doorbell
        .bind(&doorbell_ep)
        .map_err(|e| Error::zmq("cannot bind the doorbell", e))?;
    let ring = ctx
        .socket(zmq::PAIR)
        .map_err(|e| Error::zmq("cannot create the doorbell", e))?;
    ring.set_sndhwm(1)
        .map_err(|e| Error::zmq("cannot set the doorbell's HWM", e))?;
    ring.connect(&doorbell_ep)
        .map_err(|e| Error::zmq("cannot connect the doorbell", e))?;
    let stop = Arc::new(AtomicBool::new(false));
    let reader = Reader {
        source,
        done,
        seen: DigestSet::with_capacity(expected_orders(&config.input)),
        dead_letter: DeadLetter {
            path: config.dead_letter.clone(),
            file: None,
        },
        batch: config.batch,
        tx,
        doorbell: ring,
        stop: stop.clone(),
    };
    let reader_thread = thread::Builder::new()
        .name("reader".into())
        .spawn({
            let span = tracing::Span::current();
            move || span.in_scope(|| reader.run())
        })
        .map_err(|e| Error::Config(format!("cannot start the reader thread: {e}")))?;

    let mut dispatcher = Dispatcher {
        config: config.clone(),
        run,
        window: FastMap::default(),
        fresh: VecDeque::new(),
        retry: VecDeque::new(),
        groups: VecDeque::new(),
        groups_in_flight: FastMap::default(),
        group_of: FastMap::default(),
        next_group: 0,
        singles: VecDeque::new(),
        single_in_flight: None,
        locals_out: Vec::new(),
        timeouts: VecDeque::new(),
        // Slow start: grow while orders do not queue.
        limit: (4 * config.batch).min(config.window),
        slow_start: true,
        timeout: Timeout {
            srtt: None,
            rttvar: 0.0,
            min: config.min_timeout,
            max: config.max_timeout,
            min_rtt: None,
        },
        last_heard: None,
        last_disconnect: None,
        horizon: 0,
        total: None,
        reader_done: false,
        dead_letter: DeadLetter {
            path: config.dead_letter.clone(),
            file: None,
        },
        redelivered: 0,
        poisoned: 0,
        frame: Vec::new(),
        seal_buf: Vec::new(),
        rejected: RejectLog::new(Duration::from_secs(5)),
    };
    let sockets = DispatchSockets {
        jobs,
        sink,
        doorbell,
        monitor,
    };
    let result = dispatcher.serve(&sockets, &rx, &hello, shutdown);
    stop.store(true, Ordering::Relaxed);
    drop(rx);
    match reader_thread.join() {
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(Error::Config("the reader thread panicked".into())),
        Ok(Ok(())) => {}
    }
    result
}

/// The dispatcher's sockets: jobs to workers, the sink, the reader's
/// doorbell, and the jobs socket's connection monitor.
struct DispatchSockets {
    jobs: zmq::Socket,
    sink: zmq::Socket,
    doorbell: zmq::Socket,
    monitor: zmq::Socket,
}

impl Dispatcher {
    fn serve(
        &mut self,
        sockets: &DispatchSockets,
        rx: &mpsc::Receiver<Prepared>,
        hello: &[u8],
        shutdown: &Shutdown,
    ) -> Result<VentilatorExit> {
        let DispatchSockets {
            jobs,
            sink,
            doorbell,
            monitor,
        } = sockets;
        let mut msg = zmq::Message::new();
        let mut last_progress = Instant::now() - Duration::from_secs(1);
        let mut last_hello = Instant::now();
        let mut last_log = Instant::now();
        let mut last_adapt = Instant::now();
        loop {
            if shutdown.requested() {
                tracing::info!(run = %self.run, unacknowledged = self.window.len(), "stop requested; start again with the same input to resume");
                return Ok(VentilatorExit::Stopped { run: self.run });
            }
            // Take what the reader prepared while the window has room.
            let mut took = false;
            while !self.reader_done && self.window.len() < self.limit {
                match rx.try_recv() {
                    Ok(p) => {
                        self.take(p);
                        took = true;
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        // The reader stopped early: only on an error, which join reports.
                        return Err(Error::Config("the input reader stopped".into()));
                    }
                }
            }
            if last_adapt.elapsed() >= Duration::from_millis(100) {
                last_adapt = Instant::now();
                self.adapt_limit();
                self.config.metrics.in_flight.set(self.window.len() as i64);
                self.config.metrics.in_flight_limit.set(self.limit as i64);
            }
            if took || last_progress.elapsed() >= Duration::from_millis(100) {
                // Announce a window ahead, so the sink knows every seq this
                // ventilator may send before any result for it can arrive.
                let progress = Progress {
                    horizon: self.horizon + self.config.window as u64,
                    total: self.total,
                    in_flight: self.window.len() as u64,
                    redelivered: self.redelivered,
                };
                let frame = protocol::frame(Kind::Progress, self.run, &progress);
                transport::send_frame(sink, &self.config.wire, &frame, &mut self.seal_buf, "acks")?;
                last_progress = Instant::now();
            }
            self.send_locals(sink)?;
            let blocked = !self.send_jobs(jobs)?;
            self.expire();

            let wants_out = blocked;
            let mut items = [
                sink.as_poll_item(zmq::POLLIN),
                doorbell.as_poll_item(zmq::POLLIN),
                jobs.as_poll_item(if wants_out {
                    zmq::POLLOUT
                } else {
                    zmq::PollEvents::empty()
                }),
                monitor.as_poll_item(zmq::POLLIN),
            ];
            let timeout = if took { 0 } else { self.poll_timeout() };
            transport::poll(&mut items, timeout)?;
            if items[1].is_readable() {
                while transport::try_recv(doorbell, &mut msg, "doorbell")? {}
            }
            if items[3].is_readable() {
                // Each event is two frames: event and address.
                let mut went = 0;
                while transport::try_recv(monitor, &mut msg, "jobs monitor")? {
                    if !msg.get_more() {
                        went += 1;
                    }
                }
                if went > 0 {
                    self.last_disconnect = Some(Instant::now());
                    tracing::info!(run = %self.run, connections = went, unacknowledged = self.window.len(), "a worker went away");
                }
            }
            while transport::try_recv(sink, &mut msg, "acks")? {
                let plain = match self.config.wire.incoming(&mut msg) {
                    Ok(plain) => plain,
                    Err(e) => {
                        note_rejected(&mut self.rejected, &self.config.metrics, e);
                        continue;
                    }
                };
                let Ok((h, body)) = protocol::split_frame(plain) else {
                    self.config.metrics.bad_frames.inc();
                    continue;
                };
                if h.run != self.run {
                    continue;
                }
                // The sink answers every progress report: it is alive.
                self.last_heard = Some(Instant::now());
                match h.kind {
                    Kind::Acks => {
                        if let Ok(acks) = protocol::decode::<Acks>(body) {
                            self.acknowledge(&acks);
                        }
                    }
                    Kind::Welcome => {
                        // After a re-hello: bits set are tallied.
                        if let Ok(w) = protocol::decode::<Welcome>(body) {
                            let mut acks = Acks::default();
                            for (i, word) in w.words.iter().enumerate() {
                                for bit in 0..64 {
                                    if word & (1 << bit) != 0 {
                                        acks.push((w.first_word + i as u64) * 64 + bit);
                                    }
                                }
                            }
                            self.acknowledge(&acks);
                        }
                    }
                    Kind::Busy if last_hello.elapsed() > Duration::from_secs(1) => {
                        transport::send_frame(
                            sink,
                            &self.config.wire,
                            hello,
                            &mut self.seal_buf,
                            "acks",
                        )?;
                        last_hello = Instant::now();
                    }
                    Kind::Complete => {
                        let lines = self.total.unwrap_or(self.horizon);
                        tracing::info!(run = %self.run, lines, redelivered = self.redelivered, poisoned = self.poisoned, "the sink reports the run complete");
                        return Ok(VentilatorExit::Complete {
                            run: self.run,
                            lines,
                            redelivered: self.redelivered,
                            poisoned: self.poisoned,
                        });
                    }
                    _ => {}
                }
            }
            if last_log.elapsed() >= Duration::from_secs(5) {
                last_log = Instant::now();
                tracing::info!(run = %self.run, dispatched = self.horizon, unacknowledged = self.window.len(), redelivered = self.redelivered, timeout_ms = self.timeout.current(0).as_millis() as u64, in_flight_limit = self.limit, "progress");
            }
        }
    }

    /// Every tick: shrink the in-flight limit while orders queue, grow it otherwise.
    fn adapt_limit(&mut self) {
        let floor = 2 * self.config.batch;
        // Grow only on evidence: delays measured, and the limit actually
        // reached (as TCP grows its window only when the window is full).
        let measured = self.timeout.srtt.is_some();
        let full = self.window.len() * 4 >= self.limit * 3;
        self.limit = if self.timeout.queueing() {
            self.slow_start = false;
            (self.limit * 3 / 4).max(floor)
        } else if !measured || !full {
            self.limit
        } else if self.slow_start {
            self.limit * 2
        } else {
            self.limit + self.limit / 8 + self.config.batch
        }
        .min(self.config.window);
    }

    fn poll_timeout(&self) -> i64 {
        let now = Instant::now();
        let next = self.timeouts.front().map(|t| t.0);
        match next {
            Some(due) if due <= now => 0,
            Some(due) => ((due - now).as_millis() as i64 + 1).min(100),
            None => 100,
        }
    }

    fn take(&mut self, p: Prepared) {
        self.config
            .metrics
            .lines_read
            .inc_by((p.locals.len() + p.jobs.len()) as u64);
        for &(seq, line, outcome) in &p.locals {
            self.window.insert(
                seq,
                Slot {
                    line,
                    payload: Payload::Local(outcome),
                    losses: 0,
                    tag: 0,
                    sent_at: None,
                },
            );
            self.locals_out.push(seq);
        }
        if !p.jobs.is_empty() {
            let jobs_bytes = Arc::new(p.jobs_bytes);
            let mut seqs = Vec::with_capacity(p.jobs.len());
            for &(seq, line, start, end) in &p.jobs {
                self.window.insert(
                    seq,
                    Slot {
                        line,
                        payload: Payload::Job {
                            bytes: jobs_bytes.clone(),
                            start,
                            end,
                        },
                        losses: 0,
                        tag: 0,
                        sent_at: None,
                    },
                );
                seqs.push(seq);
            }
            let mut frame = Vec::with_capacity(jobs_bytes.len() + 32);
            let encoded: usize = p.jobs.iter().map(|j| (j.3 - j.2) as usize).sum();
            if encoded == jobs_bytes.len() {
                protocol::jobs_frame(
                    &mut frame,
                    self.run,
                    false,
                    p.jobs.len(),
                    std::iter::once(&jobs_bytes[..]),
                );
            } else {
                // Some jobs were withdrawn (duplicates): copy the others.
                let slices = p
                    .jobs
                    .iter()
                    .map(|j| &jobs_bytes[j.2 as usize..j.3 as usize]);
                protocol::jobs_frame(&mut frame, self.run, false, p.jobs.len(), slices);
            }
            self.fresh.push_back(Outgoing {
                frame,
                seqs,
                lane: Lane::Fresh,
            });
        }
        self.horizon = self.horizon.max(p.next_seq);
        if let Some(total) = p.total {
            self.total = Some(total);
            self.reader_done = true;
            tracing::info!(run = %self.run, total, "input read to the end");
        }
    }

    fn job_slice(slot: &Slot) -> Option<&[u8]> {
        match &slot.payload {
            Payload::Job { bytes, start, end } => Some(&bytes[*start as usize..*end as usize]),
            Payload::Local(_) => None,
        }
    }

    /// Builds an isolated frame from orders in the window.
    fn isolated(&self, seqs: Vec<u64>, lane: Lane) -> Option<Outgoing> {
        let slices: Vec<&[u8]> = seqs
            .iter()
            .filter_map(|s| self.window.get(s).and_then(Self::job_slice))
            .collect();
        if slices.len() != seqs.len() || seqs.is_empty() {
            return None;
        }
        let mut frame = Vec::new();
        protocol::jobs_frame(
            &mut frame,
            self.run,
            true,
            slices.len(),
            slices.iter().copied(),
        );
        Some(Outgoing { frame, seqs, lane })
    }

    /// The next frame to send: a single when nothing else isolated is out,
    /// else a group, else the stream.
    fn next_outgoing(&mut self) -> Option<Outgoing> {
        let still_a_job = |w: &FastMap<u64, Slot>, seq: &u64| {
            w.get(seq)
                .is_some_and(|s| matches!(s.payload, Payload::Job { .. }))
        };
        while self.single_in_flight.is_none() && self.groups_in_flight.is_empty() {
            let Some(seq) = self.singles.pop_front() else {
                break;
            };
            if still_a_job(&self.window, &seq) {
                return self.isolated(vec![seq], Lane::Single);
            }
        }
        if self.single_in_flight.is_none()
            && self.singles.is_empty()
            && self.groups_in_flight.len() < GROUPS_IN_FLIGHT
        {
            let mut seqs = Vec::new();
            while seqs.len() < GROUP_SIZE {
                let Some(seq) = self.groups.pop_front() else {
                    break;
                };
                if still_a_job(&self.window, &seq) {
                    seqs.push(seq);
                }
            }
            if !seqs.is_empty() {
                return self.isolated(seqs, Lane::Group);
            }
        }
        if !self.retry.is_empty() {
            let mut seqs = Vec::new();
            while seqs.len() < self.config.batch {
                let Some(seq) = self.retry.pop_front() else {
                    break;
                };
                if still_a_job(&self.window, &seq) {
                    seqs.push(seq);
                }
            }
            let slices: Vec<&[u8]> = seqs
                .iter()
                .filter_map(|s| self.window.get(s).and_then(Self::job_slice))
                .collect();
            if !slices.is_empty() {
                let mut frame = Vec::new();
                protocol::jobs_frame(
                    &mut frame,
                    self.run,
                    false,
                    slices.len(),
                    slices.iter().copied(),
                );
                return Some(Outgoing {
                    frame,
                    seqs,
                    lane: Lane::Retry,
                });
            }
        }
        self.fresh.pop_front()
    }

    /// Sends job frames until none is ready or the jobs socket is full
    /// (then returns false).
    fn send_jobs(&mut self, jobs: &zmq::Socket) -> Result<bool> {
        loop {
            let Some(next) = self.next_outgoing() else {
                return Ok(true);
            };
            if !transport::send_frame(
                jobs,
                &self.config.wire,
                &next.frame,
                &mut self.seal_buf,
                "jobs",
            )? {
                // Put it back in front of its lane.
                match next.lane {
                    Lane::Single => self.singles.push_front(next.seqs[0]),
                    Lane::Group => {
                        for &s in next.seqs.iter().rev() {
                            self.groups.push_front(s);
                        }
                    }
                    Lane::Retry => {
                        for &s in next.seqs.iter().rev() {
                            self.retry.push_front(s);
                        }
                    }
                    Lane::Fresh => self.fresh.push_front(next),
                }
                return Ok(false);
            }
            let now = Instant::now();
            let timeout = self.timeout.current(0);
            match next.lane {
                Lane::Single => self.single_in_flight = Some(next.seqs[0]),
                Lane::Group => {
                    let group = self.next_group;
                    self.next_group += 1;
                    self.groups_in_flight.insert(group, next.seqs.len());
                    for &seq in &next.seqs {
                        self.group_of.insert(seq, group);
                    }
                }
                Lane::Fresh | Lane::Retry => {}
            }
            self.config
                .metrics
                .dispatched
                .inc_by(next.seqs.len() as u64);
            for seq in next.seqs {
                if let Some(slot) = self.window.get_mut(&seq) {
                    slot.tag += 1;
                    slot.sent_at = Some(now);
                    if slot.tag > 1 {
                        self.redelivered += 1;
                        self.config.metrics.redelivered.inc();
                    }
                    // Back off per delivery, late or lost alike.
                    let backoff = 1u32 << slot.tag.saturating_sub(1).min(5);
                    let due = now + (timeout * backoff).min(self.config.max_timeout);
                    self.timeouts.push_back((due, seq, slot.tag));
                }
            }
        }
    }

    /// An isolated order was answered or lost: free its place in its lane.
    fn resolve_isolated(&mut self, seq: u64) {
        if self.single_in_flight == Some(seq) {
            self.single_in_flight = None;
        }
        if let Some(group) = self.group_of.remove(&seq) {
            if let Some(left) = self.groups_in_flight.get_mut(&group) {
                *left -= 1;
                if *left == 0 {
                    self.groups_in_flight.remove(&group);
                }
            }
        }
    }

    /// Sends the ventilator's own outcomes to the sink.
    fn send_locals(&mut self, sink: &zmq::Socket) -> Result<()> {
        while !self.locals_out.is_empty() {
            let take = self.locals_out.len().min(self.config.batch.max(64));
            let seqs: Vec<u64> = self.locals_out.drain(..take).collect();
            let mut records = Vec::new();
            let mut count = 0;
            for &seq in &seqs {
                if let Some(Slot {
                    payload: Payload::Local(outcome),
                    ..
                }) = self.window.get(&seq)
                {
                    protocol::write_result_record(
                        &mut records,
                        seq,
                        outcome.code(),
                        "",
                        0,
                        std::iter::empty(),
                    );
                    count += 1;
                }
            }
            protocol::results_frame(&mut self.frame, self.run, 0, count, &records);
            if !transport::send_frame(
                sink,
                &self.config.wire,
                &self.frame,
                &mut self.seal_buf,
                "acks",
            )? {
                let rest: Vec<u64> = self.locals_out.drain(..).collect();
                self.locals_out = seqs;
                self.locals_out.extend(rest);
                return Ok(());
            }
            let now = Instant::now();
            for seq in seqs {
                if let Some(slot) = self.window.get_mut(&seq) {
                    slot.tag += 1;
                    slot.sent_at = Some(now);
                    self.timeouts
                        .push_back((now + self.timeout.current(0), seq, slot.tag));
                }
            }
        }
        Ok(())
    }

    fn acknowledge(&mut self, acks: &Acks) {
        let now = Instant::now();
        let before = self.window.len();
        for (seq, reason) in &acks.failures {
            // Only for an order still held: an order already acknowledged
            // was dead-lettered (or tallied) before.
            let Some(line) = self.window.get(seq).map(|slot| slot.line) else {
                continue;
            };
            if let Err(e) = self.dead_letter.write(line, reason) {
                tracing::error!(error = %e, "cannot write the dead-letter file");
            }
        }
        for seq in acks.seqs() {
            let Some(slot) = self.window.remove(&seq) else {
                continue;
            };
            self.resolve_isolated(seq);
            // Karn: only orders delivered once measure the delay.
            if slot.tag == 1 && matches!(slot.payload, Payload::Job { .. }) {
                if let Some(sent) = slot.sent_at {
                    self.timeout.sample(now.duration_since(sent), now);
                }
            }
        }
        self.config
            .metrics
            .acked
            .inc_by((before - self.window.len()) as u64);
    }

    /// Handles orders whose time-out passed.
    fn expire(&mut self) {
        let now = Instant::now();
        while let Some(&(due, seq, tag)) = self.timeouts.front() {
            if due > now {
                break;
            }
            self.timeouts.pop_front();
            let max = self.config.max_deliveries;
            let last_heard = self.last_heard;
            let last_disconnect = self.last_disconnect;
            if self.window.get(&seq).is_none_or(|slot| slot.tag != tag) {
                continue; // answered, or sent again since
            }
            self.resolve_isolated(seq);
            let slot = self.window.get_mut(&seq).expect("checked above");
            if let Payload::Local(_) = slot.payload {
                self.locals_out.push(seq);
                continue;
            }
            // Lost only if the sink was heard from since it was sent (it
            // answers every progress report): otherwise the sink is away and
            // nothing is to blame.
            let sink_alive = matches!((last_heard, slot.sent_at), (Some(a), Some(s)) if a > s);
            // And only if some worker went away since it was sent: a crash
            // always closes the connection, while a slow or frozen worker
            // does not, and its orders are only late.
            let worker_gone =
                matches!((last_disconnect, slot.sent_at), (Some(d), Some(s)) if d > s);
            let lost = sink_alive && worker_gone;
            if lost {
                slot.losses += 1;
            }
            if slot.losses >= max {
                let line = slot.line;
                slot.payload = Payload::Local(Outcome::Failed);
                self.poisoned += 1;
                self.config.metrics.poisoned.inc();
                let reason = format!("poison: no result after {max} deliveries");
                tracing::warn!(run = %self.run, line, seq, "{reason}; giving it up as failed");
                if let Err(e) = self.dead_letter.write(line, &reason) {
                    tracing::error!(error = %e, "cannot write the dead-letter file");
                }
                self.locals_out.push(seq);
            } else if !lost {
                // Late, not lost: send it again with the stream.
                self.retry.push_back(seq);
            } else if slot.losses + 1 >= max {
                self.singles.push_back(seq);
            } else {
                self.groups.push_back(seq);
            }
        }
    }
}
