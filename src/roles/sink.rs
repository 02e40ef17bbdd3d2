//! The sink: PULLs outcomes, tallies each order exactly once into a
//! [`Ledger`], makes every tally durable in the run's journal before it
//! acknowledges it to the ventilator, and when the run is complete writes the
//! report, tells the workers and exits.
//!
//! One sink serves one run at a time; its state folder keeps every run's
//! journal apart (`runs/<run id>/`), so a restarted sink resumes the run it
//! was serving (`active` names it) and a completed run's report is reprinted
//! when its input is run again.
//!
//! With `--serve` the sink stays up run after run: a ventilator that says
//! hello while another run is active waits in a first-come queue (it is
//! told its place, and leaves the queue when it stops saying hello), and
//! the workers are told each active run's jobs endpoint ([`Kind::RunStart`]).

use crate::dashboard::{Board, WorkerInfo};
use crate::journal::{self, JournalHealth, JournalWriter, RunDir, RunMeta, Synced};
use crate::ledger::{Applied, Ledger};
use crate::protocol::{self, Acks, FrameError, Hello, Kind, Progress, ResultsView, RunId, Welcome};
use crate::report::{Report, RunSection, SinkStats};
use crate::rules::Outcome;
use crate::seal::{OpenError, RejectLog};
use crate::shutdown::Shutdown;
use crate::transport::{self, SocketTuning, Wire};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};
use std::fs;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What a sink needs to run.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub results: String,
    pub acks: String,
    pub control: String,
    /// Where durable state lives.
    pub state: PathBuf,
    /// Where the report goes (default: `STATE/report.json`).
    pub report: Option<PathBuf>,
    /// Journal bytes after which the tally is checkpointed into a snapshot.
    pub compact_bytes: u64,
    /// How often a progress line is logged.
    pub progress_every: Duration,
    /// How long the sink waits, at the end of a run, for workers it has
    /// heard from to confirm the end (they normally do at once).
    pub run_over_for: Duration,
    /// Print the human table on stdout at the end.
    pub print_table: bool,
    /// Counters and gauges (served with `--metrics`).
    pub metrics: crate::metrics::Metrics,
    /// Plain or sealed frames.
    pub wire: Wire,
    /// The live status the dashboard and `/api/status` show.
    pub board: Arc<Board>,
    /// Stay up after a run and serve the next (`--serve`).
    pub serve: bool,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            results: crate::DEFAULT_RESULTS.into(),
            acks: crate::DEFAULT_ACKS.into(),
            control: crate::DEFAULT_CONTROL.into(),
            state: crate::DEFAULT_STATE.into(),
            report: None,
            compact_bytes: 64 << 20,
            progress_every: Duration::from_secs(5),
            run_over_for: Duration::from_millis(1500),
            print_table: true,
            metrics: crate::metrics::Metrics::default(),
            wire: Wire::plain(),
            board: Board::new(false),
            serve: false,
        }
    }
}

/// How a sink's run ended.
#[derive(Debug)]
pub enum SinkExit {
    /// The run is complete; its report.
    Complete(Box<Report>),
    /// Stopped by a signal; everything acknowledged is durable, restart to resume.
    Stopped,
    /// Serving (`--serve`), stopped by a signal with no run active.
    Idle,
}

/// A ventilator that waits while the sink holds one ventilator silent this
/// long leaves the queue: it gave up.
const QUEUE_SILENCE: Duration = Duration::from_secs(5);
/// While others wait, an active run whose ventilator is silent this long is
/// set aside (its journal kept: it resumes when its ventilator is back).
const ACTIVE_SILENCE: Duration = Duration::from_secs(10);
/// How often a serving sink with no run says it is waiting.
const IDLE_REMINDER: Duration = Duration::from_secs(60);
/// How often the active run is announced to the workers (`--serve`).
const RUN_START_EVERY: Duration = Duration::from_millis(250);

/// A ventilator waiting for its turn.
struct Waiting {
    id: RunId,
    input: String,
    since_unix: f64,
    last_heard: Instant,
}

/// The snapshot payload: the whole tally and the workers seen.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    ledger: Ledger,
    workers: Vec<u64>,
}

struct ActiveRun {
    id: RunId,
    dir: RunDir,
    meta: RunMeta,
    ledger: Ledger,
    workers: HashSet<u64>,
    writer: JournalWriter,
    synced: mpsc::Receiver<Synced>,
    pending_records: Vec<u8>,
    pending_acks: Acks,
    issued: u64,
    durable: u64,
    waiting_acks: VecDeque<(u64, Acks)>,
    horizon: u64,
    /// False after a restart until the ventilator's first progress report.
    horizon_known: bool,
    total: Option<u64>,
    /// What the ventilator expected before reading (`true`: an estimate),
    /// shown until `total` is known.
    expected: Option<(u64, bool)>,
    /// The ventilator's last word on orders in flight and redeliveries.
    in_flight: u64,
    redelivered: u64,
    ventilator: Option<Vec<u8>>,
    journal_bytes: u64,
    /// Sink processes that took this run over from an earlier one.
    restarts: u64,
    /// False after a restart until the ventilator says hello to this sink
    /// process: acknowledgements it saw from an earlier one are not to be
    /// trusted (the journal may have come back with less), so it is told
    /// to say hello again and gets the bitmap of what is really tallied.
    greeted: bool,
    journal: Arc<JournalHealth>,
    /// Its ventilator's `--advertise`d jobs endpoint (empty: the workers' own).
    jobs: String,
    /// Its ventilator asked for the report to be sent back (`--report`).
    want_report: bool,
    /// When its ventilator was last heard from.
    ventilator_heard: Instant,
}

struct Sockets {
    results: zmq::Socket,
    acks: zmq::Socket,
    control: zmq::Socket,
    notify: zmq::Socket,
    wire: Wire,
}

struct Sink {
    config: SinkConfig,
    rejected: RejectLog,
    ctx: zmq::Context,
    active: Option<ActiveRun>,
    stats: SinkStats,
    last_bad_log: Option<Instant>,
    notify_seq: u64,
    /// When the board was last refreshed with the active run's counts, and its rate.
    board_view: ProgressView,
    /// Runs waiting for their turn, first come first served (`--serve`).
    queue: Vec<Waiting>,
    /// When the active run was last announced to the workers.
    announced: Option<Instant>,
}

/// When progress was last shown, and the rate since.
struct ProgressView {
    terminal: bool,
    last_shown: Instant,
    last_sample: (Instant, u64),
    rate: f64,
}

impl ProgressView {
    fn new() -> ProgressView {
        use std::io::IsTerminal;
        ProgressView {
            terminal: std::io::stderr().is_terminal(),
            last_shown: Instant::now(),
            last_sample: (Instant::now(), 0),
            rate: 0.0,
        }
    }

    /// True (and resets the clock) when `every` has passed since last shown.
    fn due(&mut self, every: Duration) -> bool {
        if self.last_shown.elapsed() < every {
            return false;
        }
        self.last_shown = Instant::now();
        true
    }

    /// Orders per second, smoothed over the samples.
    fn rate(&mut self, done: u64) -> f64 {
        let (at, before) = self.last_sample;
        let secs = at.elapsed().as_secs_f64();
        if secs > 0.0 && done >= before {
            let now = (done - before) as f64 / secs;
            self.rate = if self.rate == 0.0 {
                now
            } else {
                0.7 * now + 0.3 * self.rate
            };
        }
        self.last_sample = (Instant::now(), done);
        self.rate
    }
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Runs the sink until its run is complete or a stop is requested.
pub fn run(config: &SinkConfig, shutdown: &Shutdown) -> Result<SinkExit> {
    fs::create_dir_all(&config.state)
        .map_err(|e| Error::io("cannot create state folder", &config.state, e))?;
    // Held until this process exits: one sink per state folder.
    let _lock = crate::statelock::StateLock::acquire(&config.state)?;
    let ctx = zmq::Context::new();
    let tuning = SocketTuning {
        send_hwm: 10_000,
        recv_hwm: 10_000,
    };
    let sockets = Sockets {
        results: transport::bind(&ctx, zmq::PULL, &config.results, tuning, "results")?,
        acks: transport::bind(&ctx, zmq::ROUTER, &config.acks, tuning, "acks")?,
        control: transport::bind(&ctx, zmq::PUB, &config.control, tuning, "control")?,
        notify: ctx
            .socket(zmq::PAIR)
            .map_err(|e| Error::zmq("cannot create the journal notify socket", e))?,
        wire: config.wire.clone(),
    };
    let mut sink = Sink {
        config: config.clone(),
        rejected: RejectLog::new(Duration::from_secs(5)),
        ctx,
        active: None,
        stats: SinkStats::default(),
        last_bad_log: None,
        notify_seq: 0,
        board_view: ProgressView::new(),
        queue: Vec::new(),
        announced: None,
    };
    let notify_ep = sink.next_notify_endpoint();
    sockets
        .notify
        .bind(&notify_ep)
        .map_err(|e| Error::zmq("cannot bind the journal notify socket", e))?;
    tracing::info!(results = %config.results, acks = %config.acks, control = %config.control, state = %config.state.display(), serve = config.serve, "sink started");
    if let Some(id) = sink.read_active()? {
        match sink.activate(id, None, &notify_ep)? {
            Activation::Active => tracing::info!(run = %id, "resuming the run in progress"),
            Activation::Completed(_) => {}
        }
    }
    let exit = sink.run_loop(&sockets, &notify_ep, shutdown);
    if let Some(summary) = sink.rejected.flush() {
        tracing::warn!("{summary}");
    }
    exit
}

enum Activation {
    Active,
    Completed(Vec<u8>),
}

impl Sink {
    fn next_notify_endpoint(&mut self) -> String {
        self.notify_seq += 1;
        format!("inproc://journal-{}", self.notify_seq)
    }

    fn active_file(&self) -> PathBuf {
        self.config.state.join("active")
    }

    fn read_active(&self) -> Result<Option<RunId>> {
        let path = self.active_file();
        match fs::read_to_string(&path) {
            Ok(text) => {
                text.trim().parse().map(Some).map_err(|e| {
                    Error::State(format!("{} does not name a run: {e}", path.display()))
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("cannot read", &path, e)),
        }
    }

    /// Makes `id` the active run: loads it from its journal, or creates it.
    fn activate(&mut self, id: RunId, input: Option<&str>, notify_ep: &str) -> Result<Activation> {
        let dir = RunDir::new(&self.config.state, &id.to_string());
        if let Some(report) = dir.report()? {
            let _ = fs::remove_file(self.active_file());
            return Ok(Activation::Completed(report));
        }
        let resumed = dir.exists();
        if !resumed {
            let Some(input) = input else {
                return Err(Error::State(format!(
                    "{} names run {id}, which has no journal",
                    self.active_file().display()
                )));
            };
            dir.create(&RunMeta {
                input: input.to_owned(),
                started_unix: now_unix(),
            })?;
        }
        journal::write_atomic(&self.active_file(), format!("{id}\n").as_bytes())?;
        // A serving sink has many runs: its lines name theirs (a span
        // field recorded again would be appended, not replaced).
        if !self.config.serve {
            crate::cli::record_run(&id);
        }
        let meta = dir.meta()?;
        let state = std::cell::RefCell::new((Ledger::new(), HashSet::new()));
        let replayed = dir.replay(
            |snapshot| {
                let s: Snapshot = rmp_serde::from_slice(snapshot).map_err(|e| {
                    Error::State(format!("run {id}: snapshot does not decode: {e}"))
                })?;
                *state.borrow_mut() = (s.ledger, s.workers.into_iter().collect());
                Ok(())
            },
            |payload| {
                if let Ok(batch) = ResultsView::decode(payload) {
                    let (ledger, workers) = &mut *state.borrow_mut();
                    if batch.worker_id != 0 {
                        workers.insert(batch.worker_id);
                    }
                    for r in batch.iter() {
                        ledger.apply(r);
                    }
                }
            },
        )?;
        let (ledger, workers) = state.into_inner();
        let generation = replayed.generation;
        let restarts = if resumed { dir.count_restart()? } else { 0 };
        if resumed {
            tracing::info!(run = %id, generation, replayed = replayed.records, tallied = ledger.tallied(), restarts, "replayed the journal");
        }
        if replayed.damage.is_some() {
            self.stats.journal_damage += 1;
        }
        let (tx, rx) = mpsc::channel();
        let notifier = self
            .ctx
            .socket(zmq::PAIR)
            .map_err(|e| Error::zmq("cannot create the journal notify socket", e))?;
        notifier
            .connect(notify_ep)
            .map_err(|e| Error::zmq("cannot connect the journal notify socket", e))?;
        let writer = JournalWriter::start(&dir, generation, notifier, tx)?;
        let journal = writer.health();
        let journal_bytes = dir.journal_len(generation);
        self.config
            .board
            .run_started(&id.to_string(), &meta.input, meta.started_unix);
        self.active = Some(ActiveRun {
            id,
            dir,
            meta,
            ledger,
            workers,
            writer,
            synced: rx,
            pending_records: Vec::new(),
            pending_acks: Acks::default(),
            issued: 0,
            durable: 0,
            waiting_acks: VecDeque::new(),
            horizon: 0,
            // A resumed run trusts results until the ventilator says how far
            // it got: they may be in flight from before the restart.
            horizon_known: !resumed,
            total: None,
            expected: None,
            in_flight: 0,
            redelivered: 0,
            ventilator: None,
            // Compaction counts what earlier sink processes wrote too.
            journal_bytes,
            restarts,
            greeted: !resumed,
            journal,
            jobs: String::new(),
            want_report: false,
            ventilator_heard: Instant::now(),
        });
        Ok(Activation::Active)
    }

    fn bad_frame(&mut self, what: &str, error: &FrameError) {
        self.stats.bad_frames += 1;
        self.config.metrics.bad_frames.inc();
        self.log_dropped(what, &error.to_string());
    }

    /// Logs a dropped frame at most once every few seconds.
    fn log_dropped(&mut self, what: &str, why: &str) {
        if self
            .last_bad_log
            .is_none_or(|t| t.elapsed() > Duration::from_secs(5))
        {
            self.last_bad_log = Some(Instant::now());
            tracing::warn!(
                socket = what,
                reason = why,
                bad_frames = self.stats.bad_frames,
                other_run = self.stats.other_run_results,
                unknown_orders = self.stats.unknown_order_results,
                invalid = self.stats.invalid_results,
                "dropped input (logged once in a while)"
            );
        }
    }

    fn run_loop(&mut self, s: &Sockets, notify_ep: &str, shutdown: &Shutdown) -> Result<SinkExit> {
        let mut msg = zmq::Message::new();
        let mut identity = zmq::Message::new();
        let mut view = ProgressView::new();
        loop {
            if shutdown.requested() {
                return self.stop();
            }
            let mut items = [
                s.results.as_poll_item(zmq::POLLIN),
                s.acks.as_poll_item(zmq::POLLIN),
                s.notify.as_poll_item(zmq::POLLIN),
            ];
            transport::poll(&mut items, 100)?;
            let ready = [
                items[0].is_readable(),
                items[1].is_readable(),
                items[2].is_readable(),
            ];
            if ready[2] {
                while transport::try_recv(&s.notify, &mut msg, "journal notify")? {
                    if let Ok(ticket) = <[u8; 8]>::try_from(&msg[..]) {
                        self.durable(u64::from_le_bytes(ticket), s)?;
                    }
                }
            }
            // The ventilator's socket first: its progress tells which results are real.
            if ready[1] {
                for _ in 0..256 {
                    if !transport::try_recv(&s.acks, &mut identity, "acks")? {
                        break;
                    }
                    if !identity.get_more() || !transport::try_recv(&s.acks, &mut msg, "acks")? {
                        continue;
                    }
                    // Drop any further parts of a multi-part message.
                    let mut extra = msg.get_more();
                    while extra {
                        let mut rest = zmq::Message::new();
                        if !transport::try_recv(&s.acks, &mut rest, "acks")? {
                            break;
                        }
                        extra = rest.get_more();
                    }
                    let plain = match s.wire.incoming(&mut msg) {
                        Ok(plain) => plain,
                        Err(e) => {
                            self.unauthenticated("acks", e);
                            continue;
                        }
                    };
                    if let Some(done) = self.on_ventilator_frame(&identity, plain, s, notify_ep)? {
                        return Ok(done);
                    }
                }
            }
            if ready[0] {
                // Bounded, so the ventilator's socket is served too.
                for _ in 0..256 {
                    if !transport::try_recv(&s.results, &mut msg, "results")? {
                        break;
                    }
                    match s.wire.incoming(&mut msg) {
                        Ok(plain) if protocol::frame_kind(plain) == Some(Kind::WorkerStatus) => {
                            self.on_worker_status(plain)
                        }
                        Ok(plain) => self.on_results_frame(plain, false),
                        Err(e) => self.unauthenticated("results", e),
                    }
                }
            }
            self.hand_over(s)?;
            self.watch_journal();
            self.show_progress(&mut view, false);
            self.refresh_board();
            if self.config.serve {
                self.tend_queue()?;
                self.announce_run_start(s);
            }
            if self.is_complete() {
                if view.terminal {
                    self.show_progress(&mut view, true);
                }
                let report = self.finish(s)?;
                if !self.config.serve {
                    return Ok(SinkExit::Complete(Box::new(report)));
                }
                view = ProgressView::new();
                self.board_view = ProgressView::new();
                tracing::info!(queued = self.queue.len(), "serving: ready for the next run");
            }
        }
    }

    /// Drops from the queue the ventilators that stopped saying hello, and
    /// sets aside an active run whose ventilator went silent while others
    /// wait; mirrors the queue on the board.
    fn tend_queue(&mut self) -> Result<()> {
        let before = self.queue.len();
        self.queue.retain(|w| {
            let keep = w.last_heard.elapsed() < QUEUE_SILENCE;
            if !keep {
                tracing::info!(run = %w.id, "a queued ventilator stopped saying hello; it left the queue");
            }
            keep
        });
        let stale = self
            .active
            .as_ref()
            .is_some_and(|run| run.ventilator_heard.elapsed() >= ACTIVE_SILENCE);
        if stale && !self.queue.is_empty() {
            self.set_aside()?;
        }
        if before != self.queue.len() || stale {
            self.show_queue();
        }
        Ok(())
    }

    /// The queue on the board.
    fn show_queue(&self) {
        let queue = self
            .queue
            .iter()
            .enumerate()
            .map(|(i, w)| crate::dashboard::QueuedRun {
                id: w.id.to_string(),
                input: w.input.clone(),
                position: i + 1,
                since_unix: w.since_unix,
            })
            .collect();
        self.config.board.set_queue(queue);
    }

    /// The active run's ventilator is gone and others wait: its journal is
    /// made durable and kept (it resumes when its ventilator says hello
    /// again, in the queue like any other), and the next run may start.
    fn set_aside(&mut self) -> Result<()> {
        let Some(mut run) = self.active.take() else {
            return Ok(());
        };
        if !run.pending_records.is_empty() {
            let records = std::mem::take(&mut run.pending_records);
            run.writer.append(records)?;
        }
        run.writer.close()?;
        let _ = fs::remove_file(self.active_file());
        self.config.board.update(|b| b.active = None);
        tracing::warn!(run = %run.id, tallied = run.ledger.tallied(), silent_seconds = run.ventilator_heard.elapsed().as_secs(), queued = self.queue.len(), "the active run's ventilator went silent while others wait: set aside (its journal is kept; it resumes when its ventilator says hello again)");
        Ok(())
    }

    /// Tells the workers, a few times a second, the active run and where
    /// its ventilator takes credit.
    fn announce_run_start(&mut self, s: &Sockets) {
        let Some(run) = &self.active else {
            return;
        };
        if self
            .announced
            .is_some_and(|t| t.elapsed() < RUN_START_EVERY)
        {
            return;
        }
        self.announced = Some(Instant::now());
        let start = protocol::RunStart {
            jobs: run.jobs.clone(),
        };
        let frame = protocol::frame(Kind::RunStart, run.id, &start);
        let mut sealed = Vec::new();
        let _ = s
            .control
            .send(s.wire.outgoing(&frame, &mut sealed), zmq::DONTWAIT);
    }

    /// Mirrors the journal writer's health into the metrics and `/healthz`.
    fn watch_journal(&mut self) {
        let failing = self.active.as_ref().and_then(|run| run.journal.failing());
        let metrics = &self.config.metrics;
        // Only while failing, and once when it stops.
        if failing.is_some() || metrics.journal_failing.get() != 0 {
            metrics.journal_failing.set(i64::from(failing.is_some()));
            let problem = failing.map(|why| format!("journal unwritable: {why}"));
            self.config.board.set_problem(problem.clone());
            metrics.set_problem(problem);
        }
    }

    /// Copies the active run's counts to the board, twice a second.
    fn refresh_board(&mut self) {
        let Some(run) = &self.active else {
            return;
        };
        if !self.board_view.due(Duration::from_millis(500)) {
            return;
        }
        let done = run.ledger.tallied();
        let rate = self.board_view.rate(done);
        let dead_letters = run.ledger.order_counts().failed;
        self.config.board.progress(|view| {
            let (total, estimate) = match (run.total, run.expected) {
                (Some(t), _) => (Some(t), false),
                (None, Some((t, e))) => (Some(t), e),
                (None, None) => (None, false),
            };
            view.done = done;
            view.total = total;
            view.total_is_estimate = estimate;
            view.orders_per_second = rate;
            view.eta_seconds = total
                .filter(|_| rate > 0.0)
                .map(|t| t.saturating_sub(done) as f64 / rate);
            view.in_flight = run.in_flight;
            view.redelivered = run.redelivered;
            view.dead_letters = dead_letters;
        });
    }

    /// Reports progress: a line redrawn in place on a terminal, a log
    /// line every `--progress-ms` otherwise.
    fn show_progress(&mut self, view: &mut ProgressView, final_line: bool) {
        let Some(run) = &self.active else {
            // A standing sink waits for hours: it says so once a minute.
            let every = if self.config.serve {
                IDLE_REMINDER
            } else {
                self.config.progress_every
            };
            if view.due(every) && !view.terminal {
                tracing::info!(queued = self.queue.len(), "waiting for a ventilator");
            }
            return;
        };
        let every = if view.terminal {
            Duration::from_millis(250)
        } else {
            self.config.progress_every
        };
        if !final_line && !view.due(every) {
            return;
        }
        let done = run.ledger.tallied();
        let rate = view.rate(done);
        // The true total once the input is read; until then what the
        // ventilator expected (`~` marks an estimate).
        let shown = run.total.map(|t| (t, false)).or(run.expected);
        let eta = match (shown, rate) {
            (Some((t, _)), r) if r > 0.0 => {
                format!("{:.0}s", t.saturating_sub(done) as f64 / r)
            }
            _ => "?".into(),
        };
        let total = match shown {
            Some((t, true)) => format!("~{t}"),
            Some((t, false)) => t.to_string(),
            None => "?".into(),
        };
        if view.terminal {
            let pct = shown.map_or(String::new(), |(t, _)| {
                format!(" ({:.1}%)", 100.0 * done as f64 / t.max(1) as f64)
            });
            eprint!(
                "\r\x1b[2K{done}/{total}{pct}  {rate:.0} orders/s  in flight {}  redelivered {}  ETA {eta}",
                run.in_flight, run.redelivered
            );
            if final_line {
                eprintln!();
            }
        } else {
            tracing::info!(
                run = %run.id,
                done,
                total,
                orders_per_second = rate.round() as u64,
                in_flight = run.in_flight,
                redelivered = run.redelivered,
                duplicates = self.stats.duplicate_results,
                eta,
                "progress"
            );
        }
    }

    /// Tallies one results frame (from a worker, or the ventilator's own outcomes).
    fn on_results_frame(&mut self, frame: &[u8], from_ventilator: bool) {
        let (header, body) = match protocol::split_frame(frame) {
            Ok(x) => x,
            Err(e) => return self.bad_frame("results", &e),
        };
        if header.kind != Kind::Results {
            return self.bad_frame("results", &FrameError::Kind(header.kind as u8));
        }
        let batch = match ResultsView::decode(body) {
            Ok(b) => b,
            Err(e) => return self.bad_frame("results", &e),
        };
        let Some(run) = self.active.as_mut().filter(|r| r.id == header.run) else {
            self.stats.other_run_results += batch.len() as u64;
            self.config
                .metrics
                .drop_result("other_run", batch.len() as u64);
            return self.log_dropped("results", "result for a run that is not active");
        };
        self.stats.result_frames += 1;
        self.stats.results_received += batch.len() as u64;
        let metrics = &self.config.metrics;
        metrics.results_received.inc_by(batch.len() as u64);
        let mut tallied = [0u64; crate::rules::OUTCOME_CODES];
        let mut duplicates = 0;
        let limit = if run.horizon_known {
            run.total.unwrap_or(run.horizon).min(run.horizon)
        } else {
            run.total.unwrap_or(crate::ledger::MAX_SEQ)
        };
        let mut new = false;
        let mut unknown = 0;
        let mut invalid = 0;
        for r in batch.iter() {
            if r.seq >= limit {
                unknown += 1;
                continue;
            }
            let ventilator_only =
                Outcome::from_code(r.outcome).is_some_and(|o| o.is_ventilator_only());
            if ventilator_only && !from_ventilator {
                invalid += 1;
                continue;
            }
            match run.ledger.apply(r) {
                Applied::New => {
                    new = true;
                    tallied[usize::from(r.outcome)] += 1;
                    run.pending_acks.push(r.seq);
                    // A worker's failed payment carries its reason in the
                    // currency slot: the ventilator dead-letters it.
                    if r.outcome == Outcome::Failed.code() && !r.currency.is_empty() {
                        let reason = (r.seq, r.currency.to_string());
                        run.pending_acks.failures.push(reason);
                    }
                }
                Applied::AlreadyTallied => {
                    duplicates += 1;
                    run.pending_acks.push(r.seq);
                }
                Applied::Invalid(_) => invalid += 1,
            }
        }
        if batch.worker_id != 0 && !from_ventilator {
            self.config.board.update(|status| {
                let id = format!("{:016x}", batch.worker_id);
                match status.workers.iter_mut().find(|w| w.id == id) {
                    Some(w) => w.last_heard_unix = now_unix(),
                    None => status.workers.push(WorkerInfo {
                        id,
                        last_heard_unix: now_unix(),
                        ..WorkerInfo::default()
                    }),
                }
            });
        }
        if new {
            if batch.worker_id != 0 {
                run.workers.insert(batch.worker_id);
            }
            journal::push_record(&mut run.pending_records, body);
        }
        for (code, &n) in tallied.iter().enumerate() {
            if let Some(outcome) = Outcome::from_code(code as u8).filter(|_| n > 0) {
                metrics.count_outcome(outcome, n);
            }
        }
        self.stats.duplicate_results += duplicates;
        metrics.duplicate_results.inc_by(duplicates);
        if unknown > 0 {
            metrics.drop_result("unknown_order", unknown);
        }
        if invalid > 0 {
            metrics.drop_result("invalid", invalid);
        }
        self.stats.unknown_order_results += unknown;
        self.stats.invalid_results += invalid;
        if unknown > 0 {
            self.log_dropped("results", "result for an order never dispatched");
        }
        if invalid > 0 {
            self.log_dropped("results", "result breaking the rules of a result");
        }
    }

    /// A worker's line on the dashboard.
    fn on_worker_status(&mut self, frame: &[u8]) {
        let status = protocol::split_frame(frame)
            .and_then(|(_, body)| protocol::decode::<protocol::WorkerStatus>(body));
        match status {
            Ok(w) => self.config.board.worker_heard(WorkerInfo {
                id: format!("{:016x}", w.worker_id),
                host: w.host,
                last_heard_unix: now_unix(),
                orders_processed: w.processed,
                payments_in_flight: w.payments_in_flight,
            }),
            Err(e) => self.bad_frame("results", &e),
        }
    }

    /// Counts a frame that failed to open; logs once in a while.
    fn unauthenticated(&mut self, what: &str, error: OpenError) {
        self.stats.unauthenticated_frames += 1;
        self.config.metrics.drop_result("unauthenticated", 1);
        if let Some(summary) = self.rejected.record(error) {
            tracing::warn!(socket = what, "{summary}");
        }
    }

    fn send_to_ventilator(s: &Sockets, identity: &[u8], frame: &[u8]) -> Result<()> {
        // ROUTER drops messages to peers that are gone; the ventilator asks again.
        let mut sealed = Vec::new();
        let frame = s.wire.outgoing(frame, &mut sealed);
        let sent = s
            .acks
            .send(identity, zmq::SNDMORE | zmq::DONTWAIT)
            .and_then(|()| s.acks.send(frame, zmq::DONTWAIT));
        match sent {
            Ok(()) | Err(zmq::Error::EAGAIN) | Err(zmq::Error::EHOSTUNREACH) => Ok(()),
            Err(e) => Err(Error::zmq("cannot send to the ventilator", e)),
        }
    }

    /// Handles one frame from the ventilator. Returns `Some` when the sink is done.
    fn on_ventilator_frame(
        &mut self,
        identity: &[u8],
        frame: &[u8],
        s: &Sockets,
        notify_ep: &str,
    ) -> Result<Option<SinkExit>> {
        let (header, body) = match protocol::split_frame(frame) {
            Ok(x) => x,
            Err(e) => {
                self.bad_frame("acks", &e);
                return Ok(None);
            }
        };
        match header.kind {
            Kind::Results => {
                if let Some(run) = self.active.as_mut().filter(|r| r.id == header.run) {
                    run.ventilator = Some(identity.to_vec());
                    run.ventilator_heard = Instant::now();
                }
                self.on_results_frame(frame, true);
            }
            Kind::Hello => {
                let hello: Hello = match protocol::decode(body) {
                    Ok(h) => h,
                    Err(e) => {
                        self.bad_frame("acks", &e);
                        return Ok(None);
                    }
                };
                return self.on_hello(identity, header.run, &hello, s, notify_ep);
            }
            Kind::Progress => {
                let progress: Progress = match protocol::decode(body) {
                    Ok(p) => p,
                    Err(e) => {
                        self.bad_frame("acks", &e);
                        return Ok(None);
                    }
                };
                match self.active.as_mut() {
                    Some(run) if run.id == header.run && !run.greeted => {
                        // A ventilator from before this sink started: it must
                        // say hello and learn what is really tallied.
                        let again = protocol::frame(Kind::Busy, run.id, &protocol::Empty);
                        Self::send_to_ventilator(s, identity, &again)?;
                    }
                    Some(run) if run.id == header.run => {
                        run.ventilator = Some(identity.to_vec());
                        run.ventilator_heard = Instant::now();
                        run.horizon = run.horizon.max(progress.horizon);
                        run.horizon_known = true;
                        if progress.total.is_some() {
                            run.total = progress.total;
                            if let Some(t) = progress.total {
                                self.config.metrics.total.set(t as i64);
                            }
                        }
                        run.in_flight = progress.in_flight;
                        run.redelivered = progress.redelivered;
                        // An empty ack: "alive", so the ventilator can tell a
                        // lost order from a sink outage.
                        let alive = protocol::frame(Kind::Acks, run.id, &Acks::default());
                        Self::send_to_ventilator(s, identity, &alive)?;
                    }
                    _ => {
                        // A ventilator of a run this sink is not serving: tell it what to do.
                        let dir = RunDir::new(&self.config.state, &header.run.to_string());
                        let kind = if dir.report()?.is_some() {
                            Kind::Complete
                        } else {
                            Kind::Busy
                        };
                        // Busy also tells a ventilator whose sink restarted without
                        // its run to say hello again.
                        let reply = protocol::frame(kind, header.run, &protocol::Empty);
                        Self::send_to_ventilator(s, identity, &reply)?;
                    }
                }
            }
            other => self.bad_frame("acks", &FrameError::Kind(other as u8)),
        }
        Ok(None)
    }

    fn on_hello(
        &mut self,
        identity: &[u8],
        id: RunId,
        hello: &Hello,
        s: &Sockets,
        notify_ep: &str,
    ) -> Result<Option<SinkExit>> {
        let dir = RunDir::new(&self.config.state, &id.to_string());
        if let Some(active) = &self.active {
            if active.id != id {
                let stored = dir.report()?;
                if stored.is_none() && self.config.serve {
                    self.queue_up(identity, id, hello, s)?;
                    return Ok(None);
                }
                if stored.is_none() {
                    tracing::warn!(run = %id, active = %active.id, "a ventilator of another run said hello; this sink is busy");
                    let busy = protocol::frame(Kind::Busy, id, &protocol::Empty);
                    Self::send_to_ventilator(s, identity, &busy)?;
                    return Ok(None);
                }
                let report = stored.filter(|_| hello.want_report);
                return self
                    .reply_complete(s, identity, id, report.as_deref())
                    .map(|()| None);
            }
        } else {
            if self.config.serve {
                if let Some(report) = dir.report()? {
                    tracing::info!(run = %id, "this run is already complete: sending its report");
                    let report = Some(report).filter(|_| hello.want_report);
                    return self
                        .reply_complete(s, identity, id, report.as_deref())
                        .map(|()| None);
                }
                // First come, first served: a hello out of turn waits.
                let head = self.queue.first().map(|w| w.id);
                if head.is_some_and(|head| head != id) {
                    self.queue_up(identity, id, hello, s)?;
                    return Ok(None);
                }
                self.queue.retain(|w| w.id != id);
                self.show_queue();
            }
            match self.activate(id, Some(&hello.input), notify_ep)? {
                Activation::Active => {
                    tracing::info!(run = %id, input = %hello.input, "run started")
                }
                Activation::Completed(stored) => {
                    tracing::info!(run = %id, "this run is already complete: reprinting its report");
                    let report: Report = serde_json::from_slice(&stored).map_err(|e| {
                        Error::State(format!("run {id}: stored report does not parse: {e}"))
                    })?;
                    self.publish_report(&report)?;
                    let sent = Some(stored).filter(|_| hello.want_report);
                    self.reply_complete(s, identity, id, sent.as_deref())?;
                    self.announce_run_over(id, s, &HashSet::new())?;
                    return Ok(Some(SinkExit::Complete(Box::new(report))));
                }
            }
        }
        let run = self.active.as_mut().expect("active");
        run.ventilator = Some(identity.to_vec());
        run.ventilator_heard = Instant::now();
        run.jobs = hello.jobs.clone();
        run.want_report = hello.want_report;
        // Workers hear of the run (and where its jobs are) at once.
        self.announced = None;
        run.greeted = true;
        run.expected = hello.expected.map(|n| (n, hello.expected_is_estimate));
        let words = run.ledger.done().words();
        let chunks: Vec<&[u64]> = if words.is_empty() {
            vec![&[][..]]
        } else {
            words.chunks(8192).collect()
        };
        let n = chunks.len();
        let mut first = 0u64;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let welcome = Welcome {
                first_word: first,
                words: chunk.to_vec(),
                last: i + 1 == n,
            };
            first += chunk.len() as u64;
            let frame = protocol::frame(Kind::Welcome, id, &welcome);
            let mut sealed = Vec::new();
            let frame = s.wire.outgoing(&frame, &mut sealed);
            s.acks
                .send(identity, zmq::SNDMORE)
                .and_then(|()| s.acks.send(frame, 0))
                .map_err(|e| Error::zmq("cannot send to the ventilator", e))?;
        }
        Ok(None)
    }

    /// A ventilator out of turn: it joins the queue (or is heard again in
    /// it) and is told its place.
    fn queue_up(&mut self, identity: &[u8], id: RunId, hello: &Hello, s: &Sockets) -> Result<()> {
        let behind = self
            .active
            .as_ref()
            .map(|a| a.id)
            .or_else(|| self.queue.first().map(|w| w.id))
            .unwrap_or(id);
        let position = match self.queue.iter().position(|w| w.id == id) {
            Some(i) => {
                self.queue[i].last_heard = Instant::now();
                i + 1
            }
            None => {
                self.queue.push(Waiting {
                    id,
                    input: hello.input.clone(),
                    since_unix: now_unix(),
                    last_heard: Instant::now(),
                });
                tracing::info!(run = %id, input = %hello.input, behind = %behind, position = self.queue.len(), "a ventilator joined the queue");
                self.show_queue();
                self.queue.len()
            }
        };
        let queued = protocol::Queued {
            position: position as u32,
            behind,
        };
        Self::send_to_ventilator(s, identity, &protocol::frame(Kind::Queued, id, &queued))
    }

    /// Tells a ventilator its run is complete, sending the report first
    /// when it asked for it (`--report`).
    fn reply_complete(
        &self,
        s: &Sockets,
        identity: &[u8],
        id: RunId,
        report: Option<&[u8]>,
    ) -> Result<()> {
        if let Some(json) = report {
            let text = protocol::ReportText {
                json: String::from_utf8_lossy(json).into_owned(),
            };
            Self::send_to_ventilator(s, identity, &protocol::frame(Kind::Report, id, &text))?;
        }
        Self::send_to_ventilator(
            s,
            identity,
            &protocol::frame(Kind::Complete, id, &protocol::Empty),
        )
    }

    /// Hands tallied records to the journal writer, and releases acks that
    /// need nothing new written.
    fn hand_over(&mut self, s: &Sockets) -> Result<()> {
        let compact_bytes = self.config.compact_bytes;
        let Some(run) = self.active.as_mut() else {
            return Ok(());
        };
        let idle = run.issued == run.durable;
        if !run.pending_records.is_empty() {
            if !idle {
                return Ok(()); // group commit: the next sync takes all of it
            }
            let records = std::mem::take(&mut run.pending_records);
            run.journal_bytes += records.len() as u64;
            run.issued = run.writer.append(records)?;
            let acks = std::mem::take(&mut run.pending_acks);
            run.waiting_acks.push_back((run.issued, acks));
            if run.journal_bytes >= compact_bytes {
                let snapshot = Snapshot {
                    ledger: run.ledger.clone(),
                    workers: run.workers.iter().copied().collect(),
                };
                let bytes = rmp_serde::to_vec(&snapshot)
                    .map_err(|e| Error::State(format!("cannot encode snapshot: {e}")))?;
                run.issued = run.writer.compact(bytes)?;
                run.journal_bytes = 0;
                self.stats.journal_compactions += 1;
                tracing::info!(run = %run.id, tallied = run.ledger.tallied(), compactions = self.stats.journal_compactions, "journal compacted into a snapshot");
            }
        } else if !run.pending_acks.is_empty() {
            // Only repeats: they are durable once what is being written now is.
            let acks = std::mem::take(&mut run.pending_acks);
            if idle {
                if let Some(v) = run.ventilator.clone() {
                    Self::send_to_ventilator(s, &v, &protocol::frame(Kind::Acks, run.id, &acks))?;
                }
            } else {
                run.waiting_acks.push_back((run.issued, acks));
            }
        }
        Ok(())
    }

    /// The writer made everything up to `ticket` durable: release those acks.
    fn durable(&mut self, ticket: u64, s: &Sockets) -> Result<()> {
        let Some(run) = self.active.as_mut() else {
            return Ok(());
        };
        run.durable = run.durable.max(ticket);
        while let Ok(synced) = run.synced.try_recv() {
            self.stats.journal_syncs = synced.syncs;
            self.config
                .metrics
                .fsync_seconds
                .observe(synced.sync_time.as_secs_f64());
        }
        let mut merged = Acks::default();
        while run
            .waiting_acks
            .front()
            .is_some_and(|(t, _)| *t <= run.durable)
        {
            let (_, acks) = run.waiting_acks.pop_front().expect("front");
            merged.ranges.extend(acks.ranges);
            merged.failures.extend(acks.failures);
        }
        if !merged.is_empty() {
            if let Some(v) = run.ventilator.clone() {
                Self::send_to_ventilator(s, &v, &protocol::frame(Kind::Acks, run.id, &merged))?;
            }
        }
        self.hand_over(s)
    }

    fn is_complete(&self) -> bool {
        self.active.as_ref().is_some_and(|run| {
            run.total == Some(run.ledger.tallied())
                && run.pending_records.is_empty()
                && run.issued == run.durable
        })
    }

    fn build_report(&self, run: &ActiveRun) -> Report {
        let elapsed = (now_unix() - run.meta.started_unix).max(1e-6);
        let orders = run.ledger.order_counts();
        Report {
            orders,
            rejected: run.ledger.rejected_counts(),
            payments: run.ledger.payments(),
            stock: run.ledger.stock(),
            inventory: run.ledger.inventory(),
            run: RunSection {
                id: run.id.to_string(),
                input: run.meta.input.clone(),
                elapsed_seconds: elapsed,
                orders_per_second: orders.lines as f64 / elapsed,
                workers_seen: run.workers.len() as u64,
                sink_restarts: run.restarts,
            },
            stats: self.stats,
        }
    }

    fn publish_report(&self, report: &Report) -> Result<()> {
        let path = self
            .config
            .report
            .clone()
            .unwrap_or_else(|| self.config.state.join("report.json"));
        journal::write_atomic(&path, report.to_json().as_bytes())?;
        if self.config.print_table {
            print!("{}", report.to_table(10));
        }
        tracing::info!(report = %path.display(), lines = report.orders.lines, "report written");
        Ok(())
    }

    fn finish(&mut self, s: &Sockets) -> Result<Report> {
        let run = self.active.take().expect("active run");
        let report = self.build_report(&run);
        journal::write_atomic(&run.dir.report_path(), report.to_json().as_bytes())?;
        let _ = fs::remove_file(self.active_file());
        run.writer.close()?;
        self.config.board.run_finished(&report);
        self.publish_report(&report)?;
        tracing::info!(run = %run.id, lines = report.orders.lines, seconds = format!("{:.2}", report.run.elapsed_seconds), "run complete");
        if let Some(v) = run.ventilator.as_deref() {
            let json = report.to_json();
            let sent = Some(json.as_bytes()).filter(|_| run.want_report);
            self.reply_complete(s, v, run.id, sent)?;
        }
        self.announce_run_over(run.id, s, &run.workers)?;
        Ok(report)
    }

    /// Tells the workers the run is over, and waits until
    /// every worker in `workers` has said goodbye (they do at once), or for
    /// `run_over_for` at most for those that stay silent. Meanwhile a
    /// ventilator still asking is answered.
    fn announce_run_over(&mut self, id: RunId, s: &Sockets, workers: &HashSet<u64>) -> Result<()> {
        let complete = protocol::frame(Kind::Complete, id, &protocol::Empty);
        let over = protocol::frame(Kind::RunOver, id, &protocol::Empty);
        let mut waiting = workers.clone();
        let deadline = Instant::now() + self.config.run_over_for;
        let mut last_published: Option<Instant> = None;
        let mut identity = zmq::Message::new();
        let mut msg = zmq::Message::new();
        loop {
            if last_published.is_none_or(|t| t.elapsed() >= Duration::from_millis(100)) {
                let mut sealed = Vec::new();
                let _ = s
                    .control
                    .send(s.wire.outgoing(&over, &mut sealed), zmq::DONTWAIT);
                last_published = Some(Instant::now());
            }
            while transport::try_recv(&s.acks, &mut identity, "acks")? {
                if identity.get_more() && transport::try_recv(&s.acks, &mut msg, "acks")? {
                    if Self::wants_report(&s.wire, &mut msg, id) {
                        let dir = RunDir::new(&self.config.state, &id.to_string());
                        let stored = dir.report()?;
                        self.reply_complete(s, &identity, id, stored.as_deref())?;
                    } else {
                        Self::send_to_ventilator(s, &identity, &complete)?;
                    }
                }
            }
            while transport::try_recv(&s.results, &mut msg, "results")? {
                if let Some(worker) = Self::goodbye(&s.wire, &mut msg, id) {
                    waiting.remove(&worker);
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                tracing::info!(run = %id, silent_workers = waiting.len(), "exiting without a goodbye from every worker (they may have gone)");
                return Ok(());
            }
            let mut items = [
                s.results.as_poll_item(zmq::POLLIN),
                s.acks.as_poll_item(zmq::POLLIN),
            ];
            transport::poll(&mut items, 20)?;
        }
    }

    /// True when `msg` is a hello for run `id` that asks for the report.
    fn wants_report(wire: &Wire, msg: &mut zmq::Message, id: RunId) -> bool {
        let Ok(plain) = wire.incoming(msg) else {
            return false;
        };
        let Ok((header, body)) = protocol::split_frame(plain) else {
            return false;
        };
        header.kind == Kind::Hello
            && header.run == id
            && protocol::decode::<Hello>(body).is_ok_and(|h| h.want_report)
    }

    /// The worker id of a worker's goodbye for run `id`, if `msg` is one.
    fn goodbye(wire: &Wire, msg: &mut zmq::Message, id: RunId) -> Option<u64> {
        let plain = wire.incoming(msg).ok()?;
        let (header, body) = protocol::split_frame(plain).ok()?;
        if header.kind != Kind::Bye || header.run != id {
            return None;
        }
        protocol::decode::<protocol::Bye>(body)
            .ok()
            .map(|b| b.worker_id)
    }

    /// Stop requested: make what was tallied durable, then exit.
    fn stop(&mut self) -> Result<SinkExit> {
        if let Some(mut run) = self.active.take() {
            if !run.pending_records.is_empty() {
                let records = std::mem::take(&mut run.pending_records);
                run.writer.append(records)?;
            }
            run.writer.close()?;
            tracing::info!(run = %run.id, tallied = run.ledger.tallied(), "stopped; the journal is durable, restart to resume");
            return Ok(SinkExit::Stopped);
        }
        if self.config.serve {
            tracing::info!("stopped; no run was active");
            return Ok(SinkExit::Idle);
        }
        Ok(SinkExit::Stopped)
    }
}
