//! The ventilator: reads the input, gives each counted line a seq, sends
//! orders to the workers that have room for them and its own verdicts
//! (malformed, duplicate, poison) to the sink, and sends an order again only
//! when the worker holding it is gone.
//!
//! - [`reader`]: the reader thread (parse, dedup, encode).
//! - [`handshake`]: `Hello` until the sink says what is tallied already.
//! - [`dispatch`]: the sans-IO core: worker credit, lanes, isolation of
//!   lost orders, poison, liveness. Its module doc states the rules.
//! - this file: the run loop, which only moves bytes between the sockets,
//!   the reader and the core.
//!
//! Poison: an order is given up (dead-lettered, tallied `failed`) after its
//! worker was lost with it `max_deliveries` times, a loss being a worker
//! gone after a jobs connection closed while the sink was answering.

pub mod dispatch;
pub mod handshake;
pub mod reader;
mod slots;

use crate::dedup::DigestSet;
use crate::fasthash::SeqMap;
use crate::input::{InputSpec, LineSource};
use crate::inventory::StockTable;
use crate::ledger::SeqSet;
use crate::protocol::{self, Acks, Credit, Hello, Kind, Progress, RunId};
use crate::reminder::Reminder;
use crate::shutdown::Shutdown;
use crate::transport::{self, Connection, SocketSpec, SocketTuning, Wire};
use crate::{Error, Result};
use dispatch::{Action, Dispatch, DispatchConfig, Payload, Peer};
use handshake::Greeting;
use reader::{DeadLetter, DuplicateSetWarmUp, Prepared, ReaderHandle, ReaderSetup};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// What a ventilator needs to run.
#[derive(Debug, Clone)]
pub struct VentilatorConfig {
    pub input: InputSpec,
    pub jobs: String,
    pub acks: String,
    /// The run id; by default the digest of the input (and of the stock file).
    pub run_id: Option<RunId>,
    /// The stock file (`--stock`): orders are allocated units in line order.
    pub stock: Option<PathBuf>,
    pub dead_letter: PathBuf,
    /// How orders are dispatched: frame size, window, credit, liveness.
    pub tuning: DispatchTuning,
    /// Counters and gauges (served with `--metrics`).
    pub metrics: crate::metrics::Metrics,
    /// Plain or sealed frames.
    pub wire: Wire,
    /// Where workers reach the jobs socket, told to a serving sink's
    /// workers (`--advertise`); by default `jobs` unless it binds a wildcard.
    pub advertise: Option<String>,
    /// Ask the sink to send the report back when the run completes.
    pub want_report: bool,
}

/// The ventilator's dispatch knobs (`--batch`, `--window`, …).
#[derive(Debug, Clone)]
pub struct DispatchTuning {
    /// Orders per job frame at most.
    pub batch: usize,
    /// Orders read and not yet acknowledged, at most (memory).
    pub window: usize,
    /// Job frames queued towards each worker (ZMQ_SNDHWM); credit bounds them.
    pub send_hwm: i32,
    /// Times an order's worker may be lost with it before it is given up as poison.
    pub max_deliveries: u8,
    /// An answered order or a verdict not acknowledged this long is sent again.
    pub min_timeout: Duration,
    /// A worker silent this long while the sink answers is gone.
    pub liveness: Duration,
}

impl Default for DispatchTuning {
    fn default() -> Self {
        DispatchTuning {
            batch: 1024,
            window: 32_768,
            send_hwm: 1000,
            max_deliveries: 3,
            min_timeout: Duration::from_secs(1),
            liveness: Duration::from_secs(3),
        }
    }
}

impl Default for VentilatorConfig {
    fn default() -> Self {
        VentilatorConfig {
            input: InputSpec::Stdin,
            jobs: crate::DEFAULT_JOBS.into(),
            acks: crate::DEFAULT_ACKS.into(),
            run_id: None,
            stock: None,
            dead_letter: crate::DEFAULT_DEAD_LETTER.into(),
            tuning: DispatchTuning::default(),
            metrics: crate::metrics::Metrics::default(),
            wire: Wire::plain(),
            advertise: None,
            want_report: false,
        }
    }
}

impl VentilatorConfig {
    /// The jobs endpoint told to workers: `--advertise`, else `--jobs`
    /// when it names one address (a wildcard cannot be connected to: then
    /// none, and workers use their own `--jobs`).
    pub fn advertised_jobs(&self) -> String {
        if let Some(a) = &self.advertise {
            return a.clone();
        }
        let wildcard = ["tcp://*:", "tcp://0.0.0.0:", "tcp://[::]:", "tcp://[*]:"]
            .iter()
            .any(|w| self.jobs.starts_with(w));
        if wildcard {
            String::new()
        } else {
            self.jobs.clone()
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
        /// The report as the sink wrote it (JSON), when asked for.
        report: Option<String>,
    },
    /// Stopped by a signal; start again with the same input to resume.
    Stopped { run: RunId },
}

/// The sockets of the run loop.
struct Sockets {
    /// ROUTER: job frames out, credit in.
    jobs: Connection,
    /// DEALER to the sink.
    sink: Connection,
    /// Connection closures on the jobs socket.
    monitor: zmq::Socket,
    /// For the doorbell of a reader started again.
    ctx: zmq::Context,
}

/// Runs a ventilator until the sink reports the run complete or a stop is requested.
pub fn run(config: &VentilatorConfig, shutdown: &Shutdown) -> Result<VentilatorExit> {
    // A file's size is estimated once, for the duplicate sets and the hello.
    let expected = reader::expected_total(&config.input);
    let orders = expected.map_or(0, |n| n as usize);
    let seen = DuplicateSetWarmUp::start(orders);
    let (stock, source, run) = open_input(config)?;
    crate::cli::record_run(&run);
    let ctx = zmq::Context::new();
    let tuning = SocketTuning {
        send_hwm: 10_000,
        recv_hwm: 10_000,
    };
    let acks = SocketSpec::new(zmq::DEALER, "acks").tuned(tuning);
    let sink = transport::connect(&ctx, acks, &config.acks)?;
    let mut sink = Connection::new(sink, config.wire.clone(), "acks", &config.metrics);
    tracing::info!(input = %config.input.describe(), jobs = %config.jobs, acks = %config.acks, "ventilator started");
    let hello = hello_frame(config, run, expected);
    let m = &config.metrics;
    let want = config.want_report;
    let greeting = handshake::greet(&mut sink, run, &hello, want, &config.acks, shutdown, m)?;
    let done = match greeting {
        Greeting::Welcomed(done) => done,
        Greeting::Stopped => return Ok(VentilatorExit::Stopped { run }),
        Greeting::Complete(report) => return Ok(complete_already(run, report)),
    };
    let already: u64 = done.words().iter().map(|w| u64::from(w.count_ones())).sum();
    tracing::info!(already_tallied = already, "the sink accepted the run");
    // Bound only now: queued ventilators on one host take turns on one port.
    let jobs = bind_jobs(&ctx, config, shutdown)?;
    let monitor = monitor_jobs(&ctx, &jobs, run)?;
    let jobs = Connection::new(jobs, config.wire.clone(), "jobs", &config.metrics);
    if let Some(table) = &stock {
        tracing::info!(skus = table.len(), "allocating stock in line order");
    }
    let setup = reader_setup(&ctx, config, stock.as_ref(), run, 0);
    let reader = ReaderHandle::start(&setup, source, done, seen.finish())?;
    let mut sockets = Sockets {
        jobs,
        sink,
        monitor,
        ctx: ctx.clone(),
    };
    let mut lp = Loop::new(config, run, hello, reader, stock, orders);
    let result = lp.serve(&mut sockets, shutdown);
    lp.reader.stop()?;
    result
}

/// The stock file, the input and the run id: `--run-id`, else the digest
/// of the input (and of the stock file), else a fresh one for a stream.
fn open_input(config: &VentilatorConfig) -> Result<(Option<StockTable>, LineSource, RunId)> {
    let stock = match &config.stock {
        Some(path) => Some(StockTable::load(path).map_err(|e| Error::Config(e.to_string()))?),
        None => None,
    };
    let (source, digest) = LineSource::open(&config.input)?;
    // The stock file is part of the run's identity.
    let digest = digest.map(|d| stock.as_ref().map_or(d, |t| with_stock(d, t)));
    let run = match (config.run_id, digest) {
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => {
            let id = stream_run_id();
            tracing::warn!(run = %id, "reading a stream without --run-id: this run cannot be resumed after a ventilator restart");
            id
        }
    };
    Ok((stock, source, run))
}

/// The `Hello` frame that asks the sink for the run.
/// `expected` as [`reader::expected_total`] gives it.
fn hello_frame(config: &VentilatorConfig, run: RunId, expected: Option<u64>) -> Vec<u8> {
    protocol::frame(
        Kind::Hello,
        run,
        &Hello {
            input: config.input.describe(),
            expected,
            expected_is_estimate: matches!(config.input, InputSpec::File(_)),
            jobs: config.advertised_jobs(),
            want_report: config.want_report,
        },
    )
}

/// The exit of a run the sink had complete before it started.
fn complete_already(run: RunId, report: Option<String>) -> VentilatorExit {
    let lines = report.as_deref().map_or(0, report_lines);
    tracing::info!(lines, "the sink reports this run complete");
    VentilatorExit::Complete {
        run,
        lines,
        redelivered: 0,
        poisoned: 0,
        report,
    }
}

/// The run id of an input run with a stock file: both digests mixed.
fn with_stock(input: RunId, stock: &StockTable) -> RunId {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&input.0.to_le_bytes());
    bytes[8..].copy_from_slice(&stock.digest().to_le_bytes());
    RunId(xxhash_rust::xxh3::xxh3_64(&bytes))
}

fn reader_setup<'a>(
    ctx: &'a zmq::Context,
    config: &'a VentilatorConfig,
    stock: Option<&'a StockTable>,
    run: RunId,
    generation: u32,
) -> ReaderSetup<'a> {
    ReaderSetup {
        ctx,
        input: &config.input,
        dead_letter: &config.dead_letter,
        batch: config.tuning.batch,
        stock,
        name: format!("{run}-{generation}"),
    }
}

/// A fresh run id for a stream given without `--run-id`: this process
/// and the time, hashed.
fn stream_run_id() -> RunId {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!("stream:{}:{nanos}", std::process::id());
    RunId(xxhash_rust::xxh3::xxh3_64(seed.as_bytes()))
}

/// The counted lines of a report (0 when it does not parse).
fn report_lines(json: &str) -> u64 {
    serde_json::from_str::<crate::report::Report>(json).map_or(0, |r| r.orders.lines)
}

/// How long the jobs endpoint may stay in use (the ventilator of the run
/// before, exiting) before binding it is an error.
const BIND_PATIENCE: Duration = Duration::from_secs(10);

/// The jobs ROUTER, bound; sends to a worker that is gone fail at once.
/// An endpoint in use is tried again for a while: the previous run's
/// ventilator on this host may still be exiting.
fn bind_jobs(
    ctx: &zmq::Context,
    config: &VentilatorConfig,
    shutdown: &Shutdown,
) -> Result<zmq::Socket> {
    let tuning = SocketTuning {
        send_hwm: config.tuning.send_hwm,
        recv_hwm: 1000,
    };
    let started = Instant::now();
    let mut said = false;
    let jobs = loop {
        let attempt = if ipc_in_use(&config.jobs) {
            Err(Error::zmq(
                format!("cannot bind the jobs socket to {}", config.jobs),
                zmq::Error::EADDRINUSE,
            ))
        } else {
            transport::bind(
                ctx,
                SocketSpec::new(zmq::ROUTER, "jobs").tuned(tuning),
                &config.jobs,
            )
        };
        match attempt {
            Ok(jobs) => break jobs,
            Err(Error::Zmq {
                source: zmq::Error::EADDRINUSE,
                ..
            }) if started.elapsed() < BIND_PATIENCE && !shutdown.requested() => {
                if !said {
                    tracing::info!(jobs = %config.jobs, "the jobs endpoint is in use (the previous run's ventilator exiting?); trying again for up to {} s", BIND_PATIENCE.as_secs());
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    };
    jobs.set_router_mandatory(true)
        .map_err(|e| Error::zmq("cannot set ZMQ_ROUTER_MANDATORY on the jobs socket", e))?;
    Ok(jobs)
}

/// True when `endpoint` is an ipc path another process listens on.
/// ZeroMQ binds ipc by unlinking the path first, and unlinks it again on
/// close: binding while the previous run's ventilator still listens would
/// let its exit remove the new socket's path.
fn ipc_in_use(endpoint: &str) -> bool {
    match endpoint.strip_prefix("ipc://") {
        Some(path) if !path.starts_with('@') => {
            std::os::unix::net::UnixStream::connect(path).is_ok()
        }
        _ => false,
    }
}

/// A PAIR that receives the jobs socket's connection closures (a crashed
/// worker's connection closes at once; a frozen one's does not).
fn monitor_jobs(ctx: &zmq::Context, jobs: &zmq::Socket, run: RunId) -> Result<zmq::Socket> {
    let endpoint = format!("inproc://ventilator-jobs-monitor-{run}");
    jobs.monitor(&endpoint, zmq::SocketEvent::DISCONNECTED as i32)
        .map_err(|e| Error::zmq("cannot monitor the jobs socket", e))?;
    transport::connect(ctx, SocketSpec::new(zmq::PAIR, "jobs monitor"), &endpoint)
}

/// ROUTER identities of the workers, as the core's [`Peer`] numbers.
#[derive(Default)]
struct Peers {
    by_identity: std::collections::HashMap<Vec<u8>, Peer>,
    identities: SeqMap<Peer, Vec<u8>>,
}

impl Peers {
    fn peer(&mut self, identity: &[u8]) -> Peer {
        if let Some(&p) = self.by_identity.get(identity) {
            return p;
        }
        let p = self.identities.len() as Peer + 1;
        self.by_identity.insert(identity.to_vec(), p);
        self.identities.insert(p, identity.to_vec());
        p
    }
}

/// The run loop's state: the core and what the bytes need.
struct Loop {
    config: VentilatorConfig,
    run: RunId,
    hello: Vec<u8>,
    core: Dispatch,
    peers: Peers,
    reader: ReaderHandle,
    /// The stock file, for a reader started again.
    stock: Option<StockTable>,
    input: InputState,
    dead_letter: DeadLetter,
    frame: Vec<u8>,
    timers: Timers,
    /// The run's report, once the sink sent it (`--report`).
    report: Option<String>,
}

/// How far the input has been read, and a sink's bitmap being received.
#[derive(Default)]
struct InputState {
    /// The next seq the reader will hand over, and the total once read.
    horizon: u64,
    total: Option<u64>,
    /// After a hello sent again (the sink came back): its `Welcome`
    /// chunks so far. None when no hello is waiting for an answer, so that
    /// the answers to the hellos that queued up while the sink was not yet
    /// there, arriving after the first was taken, are ignored.
    rewelcome: Option<SeqSet>,
    /// Readers started so far.
    generation: u32,
    /// The horizon and total last told to the sink.
    announced: Option<(u64, Option<u64>)>,
    /// The horizon the sink said it knows: no batch reaching past it is
    /// admitted (the sink would drop its results as never dispatched).
    confirmed: u64,
    /// A batch taken from the reader that reaches past `confirmed`.
    parked: Option<Prepared>,
    /// About how many distinct orders the input holds, estimated at the
    /// start: the size of a restarted reader's duplicate set.
    expected_orders: usize,
}

impl InputState {
    /// The seq the input reaches: the next one the reader hands over, or
    /// past the batch that waits for the sink to confirm the horizon.
    fn reach(&self) -> u64 {
        self.parked
            .as_ref()
            .map_or(self.horizon, |p| p.next_seq.max(self.horizon))
    }
}

/// When the loop last did its periodic chores.
struct Timers {
    progress: Instant,
    hello: Instant,
    log: Instant,
    sink_heard: Instant,
    sink_silence: Reminder,
    /// When a live worker was last seen, or orders last had none to wait for.
    worker_seen: Instant,
    no_workers: Reminder,
}

impl Loop {
    fn new(
        config: &VentilatorConfig,
        run: RunId,
        hello: Vec<u8>,
        reader: ReaderHandle,
        stock: Option<StockTable>,
        expected_orders: usize,
    ) -> Loop {
        let now = Instant::now();
        let core = Dispatch::new(DispatchConfig {
            batch: config.tuning.batch,
            max_deliveries: config.tuning.max_deliveries,
            liveness: config.tuning.liveness,
            quick_liveness: crate::flow::HEARTBEAT * 3,
            ack_timeout: (config.tuning.min_timeout * 4).max(Duration::from_millis(200)),
        });
        Loop {
            config: config.clone(),
            run,
            hello,
            core,
            peers: Peers::default(),
            reader,
            stock,
            input: InputState {
                expected_orders,
                ..InputState::default()
            },
            dead_letter: DeadLetter::new(config.dead_letter.clone()),
            frame: Vec::new(),
            timers: Timers {
                progress: now - Duration::from_secs(1),
                hello: now,
                log: now,
                sink_heard: now,
                sink_silence: handshake::SILENCE_REMINDER,
                worker_seen: now,
                no_workers: handshake::SILENCE_REMINDER,
            },
            report: None,
        }
    }

    fn serve(&mut self, s: &mut Sockets, shutdown: &Shutdown) -> Result<VentilatorExit> {
        let mut msg = zmq::Message::new();
        loop {
            if shutdown.requested() {
                tracing::info!(
                    unacknowledged = self.core.len(),
                    "stop requested; start again with the same input to resume"
                );
                return Ok(VentilatorExit::Stopped { run: self.run });
            }
            let took = self.take_prepared()?;
            self.chores(s, took)?;
            let actions = self.core.poll(Instant::now());
            self.carry_out(s, actions)?;
            let mut items = [
                s.sink.socket().as_poll_item(zmq::POLLIN),
                self.reader.bell.as_poll_item(zmq::POLLIN),
                s.jobs.socket().as_poll_item(zmq::POLLIN),
                s.monitor.as_poll_item(zmq::POLLIN),
            ];
            transport::poll(&mut items, if took { 0 } else { self.poll_timeout() })?;
            let ready = [1, 3].map(|i| items[i].is_readable());
            if ready[0] {
                while transport::try_recv(&self.reader.bell, &mut msg, "doorbell")? {}
            }
            if ready[1] {
                self.on_monitor(s, &mut msg)?;
            }
            self.on_credits(s)?;
            if let Some(exit) = self.on_sink(s)? {
                return Ok(exit);
            }
        }
    }

    /// Takes what the reader prepared while the window has room, up to
    /// the horizon the sink knows.
    fn take_prepared(&mut self) -> Result<bool> {
        let mut took = false;
        while self.input.total.is_none() && self.core.len() < self.config.tuning.window {
            let next = match self.input.parked.take() {
                Some(p) => Ok(p),
                None => self.reader.rx.try_recv(),
            };
            match next {
                Ok(p) if p.next_seq > self.input.confirmed => {
                    self.input.parked = Some(p);
                    break;
                }
                Ok(p) => {
                    self.admit(p);
                    took = true;
                }
                Err(mpsc::TryRecvError::Empty) => break,
                // The reader stopped early: only on an error, which join reports.
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err(Error::Config("the input reader stopped".into()))
                }
            }
        }
        Ok(took)
    }

    fn admit(&mut self, p: Prepared) {
        let m = &self.config.metrics;
        m.lines_read.inc_by((p.locals.len() + p.jobs.len()) as u64);
        for &(seq, line, outcome) in &p.locals {
            self.core.admit_local(p.read_at, seq, line, outcome);
        }
        for (seq, record) in p.records {
            self.core.admit_record(p.read_at, seq, record);
        }
        let bytes = Arc::new(p.jobs_bytes);
        for &(seq, line, start, end) in &p.jobs {
            let payload = Payload::Job {
                bytes: bytes.clone(),
                start,
                end,
            };
            self.core.admit_job(p.read_at, seq, line, payload);
        }
        self.input.horizon = self.input.horizon.max(p.next_seq);
        if let Some(total) = p.total {
            self.input.total = Some(total);
            tracing::info!(total, "input read to the end");
        }
    }

    /// Progress to the sink, metrics, the periodic log line, the silence warning.
    fn chores(&mut self, s: &mut Sockets, took: bool) -> Result<()> {
        let now = Instant::now();
        if self.progress_due(now, took) {
            // A window ahead of what is read (and of a batch waiting for
            // the sink's word), so that batches seldom wait for its answer.
            let progress = Progress {
                horizon: self.input.reach() + self.config.tuning.window as u64,
                total: self.input.total,
                in_flight: self.core.at_workers(),
                redelivered: self.core.counts().redelivered,
            };
            let frame = protocol::frame(Kind::Progress, self.run, &progress);
            if self.send_to_sink(s, &frame)? {
                self.input.announced = Some((progress.horizon, progress.total));
            }
            self.timers.progress = now;
            self.publish_metrics(now);
        }
        if now.duration_since(self.timers.log) >= Duration::from_secs(5) {
            self.timers.log = now;
            let c = self.core.counts();
            tracing::info!(
                read = self.input.horizon,
                unacknowledged = self.core.len(),
                at_workers = self.core.at_workers(),
                workers = self.core.workers(),
                credit = self.core.capacity(),
                redelivered = c.redelivered,
                "progress"
            );
        }
        self.warn_if_silent(now);
        self.warn_if_no_workers(now);
        Ok(())
    }

    /// Progress is told every 100 ms (the sink's "alive" answer and its
    /// dashboard), and at once when a batch taken from the reader comes
    /// within three quarters of a window of the horizon last told, or the
    /// total is newly known: the sink's answer, which confirms the horizon,
    /// comes before the reader gets there, and a batch does not cost a
    /// frame each way.
    fn progress_due(&self, now: Instant, took: bool) -> bool {
        if now.duration_since(self.timers.progress) >= Duration::from_millis(100) {
            return true;
        }
        let margin = self.config.tuning.window as u64 * 3 / 4;
        let moved = took || self.input.parked.is_some();
        moved
            && self.input.announced.is_none_or(|(horizon, total)| {
                total != self.input.total || horizon < self.input.reach() + margin
            })
    }

    fn publish_metrics(&self, now: Instant) {
        let m = &self.config.metrics;
        let c = self.core.counts();
        m.in_flight.set(self.core.len() as i64);
        m.in_flight_limit.set(self.core.capacity() as i64);
        let silent = now.duration_since(self.timers.sink_heard).as_secs();
        m.peer_silence
            .set(if silent >= 1 { silent as i64 } else { 0 });
        let silent_long = silent >= handshake::SILENCE_WARNING.as_secs();
        if silent_long != m.problem().is_some() {
            m.set_problem(
                silent_long.then(|| format!("no sink answering at {}", self.config.acks)),
            );
        }
        let (d, r, p) = (m.dispatched.get(), m.redelivered.get(), m.poisoned.get());
        m.dispatched.inc_by(c.dispatched.saturating_sub(d));
        m.redelivered.inc_by(c.redelivered.saturating_sub(r));
        m.poisoned.inc_by(c.poisoned.saturating_sub(p));
    }

    /// Says so, after a few seconds and then periodically, when the sink is silent.
    fn warn_if_silent(&mut self, now: Instant) {
        let silent = now.duration_since(self.timers.sink_heard);
        if self.timers.sink_silence.due(now, silent) {
            tracing::warn!(
                "no answer from the sink at {} for {} s; still holding {} orders",
                self.config.acks,
                silent.as_secs(),
                self.core.len()
            );
        }
    }

    /// Says so, after a few seconds and then periodically, when orders
    /// wait and no worker is connected to take them.
    fn warn_if_no_workers(&mut self, now: Instant) {
        if self.core.workers() > 0 || self.core.is_empty() {
            self.timers.worker_seen = now;
            return;
        }
        let waited = now.duration_since(self.timers.worker_seen);
        if self.timers.no_workers.due(now, waited) {
            tracing::warn!(
                "no worker connected to {} for {} s; {} orders wait for one",
                self.config.jobs,
                waited.as_secs(),
                self.core.len()
            );
        }
    }

    fn poll_timeout(&self) -> i64 {
        let now = Instant::now();
        match self.core.next_due() {
            Some(due) if due <= now => 0,
            Some(due) => ((due - now).as_millis() as i64 + 1).min(100),
            None => 100,
        }
    }

    fn send_to_sink(&mut self, s: &mut Sockets, frame: &[u8]) -> Result<bool> {
        s.sink.send_frame(frame)
    }

    fn carry_out(&mut self, s: &mut Sockets, actions: Vec<Action>) -> Result<()> {
        for action in actions {
            match action {
                Action::Jobs { to, isolate, seqs } => self.send_jobs(s, to, isolate, seqs)?,
                Action::Probe(to) => self.send_jobs(s, to, false, Vec::new())?,
                Action::Locals(seqs) => self.send_locals(s, &seqs)?,
                Action::DeadLetter { line, reason } => {
                    tracing::warn!(line, "{reason}; giving it up as failed");
                    if let Err(e) = self.dead_letter.write(line, &reason) {
                        tracing::error!(error = %e, "cannot write the dead-letter file");
                    }
                }
            }
        }
        Ok(())
    }

    /// One job frame to one worker (an empty one probes its connection); a
    /// worker gone or full gives the orders back.
    fn send_jobs(
        &mut self,
        s: &mut Sockets,
        to: Peer,
        isolate: bool,
        seqs: Vec<u64>,
    ) -> Result<()> {
        let slices: Vec<&[u8]> = seqs.iter().filter_map(|&seq| self.core.job(seq)).collect();
        protocol::jobs_frame(&mut self.frame, self.run, isolate, slices.len(), slices);
        let Some(identity) = self.peers.identities.get(&to) else {
            self.core.unsend(to, &seqs);
            return Ok(());
        };
        match s.jobs.send_routed(identity, &self.frame) {
            Ok(()) => Ok(()),
            Err(zmq::Error::EHOSTUNREACH) => {
                let actions = self.core.on_unreachable(Instant::now(), to, &seqs);
                self.carry_out(s, actions)
            }
            Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => {
                self.core.unsend(to, &seqs);
                Ok(())
            }
            Err(e) => Err(Error::zmq("cannot send on the jobs socket", e)),
        }
    }

    /// The ventilator's own outcomes, to the sink.
    fn send_locals(&mut self, s: &mut Sockets, seqs: &[u64]) -> Result<()> {
        for chunk in seqs.chunks(self.config.tuning.batch.max(64)) {
            let mut records = Vec::new();
            let mut count = 0;
            for &seq in chunk {
                if let Some(outcome) = self.core.local(seq) {
                    let none = std::iter::empty();
                    protocol::write_result_record(&mut records, seq, outcome.code(), "", 0, none);
                    count += 1;
                } else if let Some(record) = self.core.record(seq) {
                    records.extend_from_slice(record);
                    count += 1;
                }
            }
            let mut frame = Vec::new();
            protocol::results_frame(&mut frame, self.run, 0, count, &records);
            // Not taken now: sent again when its acknowledgement is overdue.
            self.send_to_sink(s, &frame)?;
        }
        Ok(())
    }

    fn on_monitor(&mut self, s: &mut Sockets, msg: &mut zmq::Message) -> Result<()> {
        // Each event is two frames: event and address.
        let mut went = 0;
        while transport::try_recv(&s.monitor, msg, "jobs monitor")? {
            if !msg.get_more() {
                went += 1;
            }
        }
        if went > 0 {
            self.core.on_disconnect(Instant::now());
            tracing::info!(
                connections = went,
                unacknowledged = self.core.len(),
                "a worker connection closed"
            );
        }
        Ok(())
    }

    /// Credit reports from workers: `[identity, frame]`.
    fn on_credits(&mut self, s: &mut Sockets) -> Result<()> {
        let mut identity = zmq::Message::new();
        while let Some((h, body)) = s.jobs.recv_routed(&mut identity)? {
            let credit = match h.kind {
                Kind::Credit => protocol::decode::<Credit>(body).ok(),
                _ => None,
            };
            let Some(credit) = credit else {
                self.config.metrics.bad_frames.inc();
                continue;
            };
            let peer = self.peers.peer(&identity);
            self.core.on_credit(Instant::now(), peer, &credit);
            if credit.holds.is_some() {
                // A heartbeat: an empty frame answers it (the worker knows
                // the ventilator is there), and probes the connection.
                self.send_jobs(s, peer, false, Vec::new())?;
            }
        }
        Ok(())
    }

    /// Frames from the sink: acknowledgements, a re-welcome, busy, complete.
    fn on_sink(&mut self, s: &mut Sockets) -> Result<Option<VentilatorExit>> {
        while let Some((h, body)) = s.sink.recv()? {
            if h.run != self.run {
                continue;
            }
            // The sink answers every progress report: it is alive.
            let now = Instant::now();
            self.core.on_sink_heard(now);
            self.timers.sink_heard = now;
            let mut came_back = false;
            match h.kind {
                Kind::Acks => {
                    if let Ok(acks) = protocol::decode::<Acks>(body) {
                        if let Some(horizon) = acks.horizon {
                            self.input.confirmed = self.input.confirmed.max(horizon);
                        }
                        self.acknowledge(now, &acks);
                    }
                }
                Kind::Welcome => match self.input.rewelcome.as_mut() {
                    // The answer to a hello sent again: a sink that came back.
                    Some(bitmap) => came_back = handshake::merge_welcome(bitmap, body),
                    None => tracing::debug!("a welcome for a hello already answered; ignored"),
                },
                Kind::Busy if now.duration_since(self.timers.hello) > Duration::from_secs(1) => {
                    s.sink.send_frame(&self.hello)?;
                    self.timers.hello = now;
                    // Chunks of an earlier answer are kept: each is the same
                    // bitmap or a newer one.
                    self.input.rewelcome.get_or_insert_with(SeqSet::default);
                }
                Kind::Report => {
                    if let Ok(text) = protocol::decode::<protocol::ReportText>(body) {
                        self.report = Some(text.json);
                    }
                }
                Kind::Complete => {
                    if self.config.want_report && self.report.is_none() {
                        let never = Shutdown::default();
                        self.report =
                            handshake::fetch_report(&mut s.sink, self.run, &self.hello, &never)?;
                    }
                    return Ok(Some(self.complete()));
                }
                _ => {}
            }
            if came_back {
                self.on_sink_restart(s)?;
            }
        }
        Ok(None)
    }

    /// A sink came back with this bitmap of what it holds. Its earlier
    /// acknowledgements are not trusted: whatever it lacks is sent again,
    /// reading the input again if needed.
    fn on_sink_restart(&mut self, s: &mut Sockets) -> Result<()> {
        let bitmap = self.input.rewelcome.take().unwrap_or_default();
        // A sink that came back knows no horizon: the next batch tells it.
        self.input.announced = None;
        let now = Instant::now();
        self.acknowledge(now, &bitmap_acks(&bitmap));
        self.core.on_sink_restart(now);
        let missing = (0..self.input.horizon)
            .filter(|&seq| !bitmap.contains(seq) && self.core.place(seq).is_none())
            .count();
        tracing::info!(
            tallied = bitmap_acks(&bitmap).seqs().count(),
            missing,
            "the sink came back"
        );
        if missing == 0 {
            return Ok(());
        }
        if matches!(self.config.input, InputSpec::Stdin) {
            return Err(Error::State(format!("the sink came back without {missing} orders it had acknowledged, and a stream (--input -) cannot be read again; run it again with --run-id to resume")));
        }
        tracing::warn!(missing, "the sink came back without orders it had acknowledged; reading the input again to send them");
        self.restart_reader(s, bitmap)
    }

    /// Replaces the reader with one that hands over what neither the sink
    /// nor the core holds.
    fn restart_reader(&mut self, s: &mut Sockets, bitmap: SeqSet) -> Result<()> {
        self.input.generation += 1;
        let setup = reader_setup(
            &s.ctx,
            &self.config,
            self.stock.as_ref(),
            self.run,
            self.input.generation,
        );
        // Stop the old one first: what it had not handed over, or what was
        // handed over and not admitted, is read again.
        self.reader.stop()?;
        self.input.parked = None;
        let mut done = bitmap;
        for seq in self.core.seqs() {
            done.insert(seq);
        }
        let (source, _) = LineSource::open(&self.config.input)?;
        let seen = DigestSet::with_capacity(self.input.expected_orders);
        self.reader = ReaderHandle::start(&setup, source, done, seen)?;
        self.input.total = None;
        Ok(())
    }

    fn acknowledge(&mut self, now: Instant, acks: &Acks) {
        for (seq, reason) in &acks.failures {
            // Only for an order still held: one acknowledged already was
            // dead-lettered (or tallied) before.
            let Some(line) = self.core.line(*seq) else {
                continue;
            };
            if let Err(e) = self.dead_letter.write(line, reason) {
                tracing::error!(error = %e, "cannot write the dead-letter file");
            }
        }
        let before = self.core.counts().acked;
        for latency in self.core.on_acks(now, acks) {
            self.config
                .metrics
                .ack_latency_seconds
                .observe(latency.as_secs_f64());
        }
        let acked = self.core.counts().acked - before;
        self.config.metrics.acked.inc_by(acked);
    }

    fn complete(&mut self) -> VentilatorExit {
        let lines = self.input.total.unwrap_or(self.input.horizon);
        let c = self.core.counts();
        tracing::info!(
            lines,
            redelivered = c.redelivered,
            poisoned = c.poisoned,
            "the sink reports the run complete"
        );
        VentilatorExit::Complete {
            run: self.run,
            lines,
            redelivered: c.redelivered,
            poisoned: c.poisoned,
            report: self.report.take(),
        }
    }
}

/// The seqs a sink's bitmap says are tallied.
fn bitmap_acks(bitmap: &SeqSet) -> Acks {
    let mut acks = Acks::default();
    for (i, word) in bitmap.words().iter().enumerate() {
        for bit in 0..64 {
            if word & (1 << bit) != 0 {
                acks.push(i as u64 * 64 + bit);
            }
        }
    }
    acks
}
