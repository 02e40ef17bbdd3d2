//! The sink: PULLs outcomes, tallies each order exactly once into a
//! [`Ledger`](crate::ledger::Ledger), makes every tally durable in the run's
//! journal before it acknowledges it to the ventilator, and when the run is
//! complete writes the report, tells the workers and exits.
//!
//! One sink serves one run at a time; its state folder keeps every run's
//! journal apart (`runs/<run id>/`), so a restarted sink resumes the run it
//! was serving (`active` names it) and a completed run's report is reprinted
//! when its input is run again.
//!
//! With `--serve` the sink stays up run after run: a ventilator that says
//! hello while another run is active waits in a first-come queue (it is
//! told its place, and leaves the queue when it stops saying hello), and
//! the workers are told each active run's jobs endpoint ([`Kind::RunStart`];
//! without `--serve` the announcement only tells waiting workers to reach
//! for their ventilator now).
//!
//! This module holds the run loop, which only moves bytes; the rest is in
//! - `run.rs`: the active run, loading it (new or replayed), its report;
//! - `commits.rs`: group commit, acks released once durable;
//! - `results.rs`: tallying a results frame;
//! - `ventilator.rs`: the conversation with ventilators (hello, progress);
//! - `queue.rs`: the first-come queue of a serving sink;
//! - `progress.rs`: the progress line, the board, the run announcements;
//! - `finish.rs`: the report, the workers' goodbyes, stopping.

mod commits;
mod finish;
mod progress;
mod queue;
mod results;
mod run;
mod ventilator;

use crate::dashboard::Board;
use crate::journal::Tickets;
use crate::protocol::{FrameError, Kind};
use crate::report::{Report, SinkStats};
use crate::shutdown::Shutdown;
use crate::transport::{self, Connection, Dropped, SocketSpec, SocketTuning, Wire};
use crate::{Error, Result};
use commits::HandOver;
use progress::ProgressView;
use queue::Waiting;
use run::{Activation, ActiveRun};
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where a sink binds.
#[derive(Debug, Clone)]
pub struct SinkEndpoints {
    /// PULL: workers push outcomes here.
    pub results: String,
    /// ROUTER: the ventilator's hellos, progress and own outcomes; acks back.
    pub acks: String,
    /// PUB: run announcements and "run over" to the workers.
    pub control: String,
}

impl Default for SinkEndpoints {
    fn default() -> Self {
        SinkEndpoints {
            results: crate::DEFAULT_RESULTS.into(),
            acks: crate::DEFAULT_ACKS.into(),
            control: crate::DEFAULT_CONTROL.into(),
        }
    }
}

/// What a sink needs to run.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub endpoints: SinkEndpoints,
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
            endpoints: SinkEndpoints::default(),
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

/// Messages taken from one socket before the others are served.
const BURST: usize = 256;

/// The sink's sockets. Every frame goes in and out through their
/// [`Connection`]s, which seal, open, split and count what they drop:
/// nothing in the sink does it by hand.
struct Sockets {
    /// PULL: workers' results, statuses and goodbyes.
    results: Connection,
    /// ROUTER: ventilators' hellos and progress; acks, welcomes and reports back.
    acks: Connection,
    /// PUB: run announcements to the workers.
    control: Connection,
    /// The last ventilator frame, copied out of its connection so that
    /// the sink can answer on the same socket while it reads it.
    from_ventilator: Vec<u8>,
}

impl Sockets {
    fn bind(ctx: &zmq::Context, config: &SinkConfig) -> Result<Sockets> {
        let tuning = SocketTuning {
            send_hwm: 10_000,
            recv_hwm: 10_000,
        };
        let ep = &config.endpoints;
        let open = |kind, endpoint: &str, what: &'static str| -> Result<Connection> {
            let socket = transport::bind(ctx, SocketSpec::new(kind, what).tuned(tuning), endpoint)?;
            Ok(Connection::new(
                socket,
                config.wire.clone(),
                what,
                &config.metrics,
            ))
        };
        Ok(Sockets {
            results: open(zmq::PULL, &ep.results, "results")?,
            acks: open(zmq::ROUTER, &ep.acks, "acks")?,
            control: open(zmq::PUB, &ep.control, "control")?,
            from_ventilator: Vec::new(),
        })
    }

    /// Sends `frame` to the ventilator named `identity`, without blocking.
    /// ROUTER drops messages to peers that are gone (or full); the
    /// ventilator asks again.
    fn send_to_ventilator(&mut self, identity: &[u8], frame: &[u8]) -> Result<()> {
        match self.acks.send_routed(identity, frame) {
            Ok(()) | Err(zmq::Error::EAGAIN) | Err(zmq::Error::EHOSTUNREACH) => Ok(()),
            Err(e) => Err(Error::zmq("cannot send to the ventilator", e)),
        }
    }

    /// Sends `frame` to the ventilator, waiting for room (the welcome's
    /// bitmap must arrive whole).
    fn send_whole_to_ventilator(&mut self, identity: &[u8], frame: &[u8]) -> Result<()> {
        self.acks.send_routed_whole(identity, frame)
    }

    /// Publishes `frame` to the workers; a worker not listening misses it
    /// (every announcement is repeated).
    fn publish(&mut self, frame: &[u8]) {
        let _ = self.control.send_frame(frame);
    }

    /// What the sockets that receive have dropped.
    fn dropped(&self) -> Dropped {
        let (r, a) = (self.results.dropped(), self.acks.dropped());
        Dropped {
            unopened: r.unopened + a.unopened,
            malformed: r.malformed + a.malformed,
        }
    }
}

struct Sink {
    config: SinkConfig,
    ctx: zmq::Context,
    active: Option<ActiveRun>,
    stats: SinkStats,
    /// What the connections had dropped when last counted in `stats`.
    counted_drops: Dropped,
    /// When a dropped frame was last logged.
    last_bad_log: Option<Instant>,
    /// What the active run's journal writer made durable.
    tickets: Tickets,
    /// When the board was last refreshed with the active run's counts, and its rate.
    board_view: ProgressView,
    /// Runs waiting for their turn, first come first served (`--serve`).
    queue: Vec<Waiting>,
    /// When the active run was last announced to the workers.
    announced: Option<Instant>,
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
    let mut sockets = Sockets::bind(&ctx, config)?;
    let tickets = Tickets::bind(&ctx)?;
    let mut sink = Sink {
        config: config.clone(),
        ctx,
        active: None,
        stats: SinkStats::default(),
        counted_drops: Dropped::default(),
        last_bad_log: None,
        tickets,
        board_view: ProgressView::new(),
        queue: Vec::new(),
        announced: None,
    };
    let ep = &config.endpoints;
    tracing::info!(results = %ep.results, acks = %ep.acks, control = %ep.control, state = %config.state.display(), serve = config.serve, "sink started");
    if let Some(id) = sink.read_active()? {
        if let Activation::Active = sink.activate(id, None)? {
            tracing::info!(run = %id, "resuming the run in progress");
        }
    }
    sink.run_loop(&mut sockets, shutdown)
}

impl Sink {
    fn active_file(&self) -> PathBuf {
        self.config.state.join("active")
    }

    fn read_active(&self) -> Result<Option<crate::protocol::RunId>> {
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

    /// Polls the sockets and hands what arrives to the handlers, until the
    /// run is complete (one-run sink) or a stop is requested.
    fn run_loop(&mut self, s: &mut Sockets, shutdown: &Shutdown) -> Result<SinkExit> {
        let mut msg = zmq::Message::new();
        let mut view = ProgressView::new();
        loop {
            if shutdown.requested() {
                return self.stop();
            }
            let mut items = [
                s.results.socket().as_poll_item(zmq::POLLIN),
                s.acks.socket().as_poll_item(zmq::POLLIN),
                self.tickets.socket().as_poll_item(zmq::POLLIN),
            ];
            transport::poll(&mut items, 100)?;
            let ready = items.map(|item| item.is_readable());
            if ready[2] {
                self.receive_tickets(s, &mut msg)?;
            }
            // The ventilator's socket first: its progress tells which results are real.
            if ready[1] {
                if let Some(done) = self.receive_from_ventilators(s)? {
                    return Ok(done);
                }
            }
            if ready[0] {
                self.receive_results(s)?;
            }
            self.count_drops(s);
            self.hand_over(s)?;
            self.chores(s, &mut view)?;
            if self.active.as_ref().is_some_and(ActiveRun::is_complete) {
                if let Some(done) = self.complete(s, &mut view)? {
                    return Ok(done);
                }
            }
        }
    }

    /// The journal writer's tickets: what it made durable.
    fn receive_tickets(&mut self, s: &mut Sockets, msg: &mut zmq::Message) -> Result<()> {
        while let Some(ticket) = self.tickets.try_recv(msg)? {
            self.durable(ticket, s)?;
        }
        Ok(())
    }

    /// Up to [`BURST`] messages from ventilators; `Some` when the sink is done.
    fn receive_from_ventilators(&mut self, s: &mut Sockets) -> Result<Option<SinkExit>> {
        let mut identity = zmq::Message::new();
        let mut frame = std::mem::take(&mut s.from_ventilator);
        let mut done = None;
        for _ in 0..BURST {
            let Some((header, body)) = s.acks.recv_routed(&mut identity)? else {
                break;
            };
            frame.clear();
            frame.extend_from_slice(body);
            done = self.on_ventilator_frame(&identity, header, &frame, s)?;
            if done.is_some() {
                break;
            }
        }
        s.from_ventilator = frame;
        Ok(done)
    }

    /// Up to [`BURST`] messages from workers (bounded, so the ventilator's
    /// socket is served too).
    fn receive_results(&mut self, s: &mut Sockets) -> Result<()> {
        for _ in 0..BURST {
            match s.results.recv()? {
                None => break,
                Some((header, body)) if header.kind == Kind::WorkerStatus => {
                    self.on_worker_status(body)
                }
                Some((header, body)) => self.on_results(header, body, false),
            }
        }
        Ok(())
    }

    /// Adds what the connections dropped since last time to the report's
    /// stats and the metrics (the connections log it).
    fn count_drops(&mut self, s: &Sockets) {
        let now = s.dropped();
        let unopened = now.unopened - self.counted_drops.unopened;
        if unopened > 0 {
            self.stats.unauthenticated_frames += unopened;
            self.config.metrics.drop_result("unauthenticated", unopened);
        }
        self.stats.bad_frames += now.malformed - self.counted_drops.malformed;
        self.counted_drops = now;
    }

    /// Hands tallied records to the journal writer (checkpointing the tally
    /// when the journal has grown), and releases acks that need nothing new
    /// written.
    fn hand_over(&mut self, s: &mut Sockets) -> Result<()> {
        let compact_bytes = self.config.compact_bytes;
        let Some(run) = self.active.as_mut() else {
            return Ok(());
        };
        match run.commits.hand_over()? {
            HandOver::Nothing => {}
            HandOver::Release(acks) => {
                if let Some(v) = run.submitter.identity.as_deref() {
                    s.send_to_ventilator(v, &crate::protocol::frame(Kind::Acks, run.id, &acks))?;
                }
            }
            HandOver::Written if run.commits.bytes >= compact_bytes => {
                run.commits.compact(run.snapshot()?)?;
                self.stats.journal_compactions += 1;
                tracing::info!(run = %run.id, tallied = run.ledger.tallied(), compactions = self.stats.journal_compactions, "journal compacted into a snapshot");
            }
            HandOver::Written => {}
        }
        Ok(())
    }

    /// The writer made everything up to `ticket` durable: release those acks.
    fn durable(&mut self, ticket: u64, s: &mut Sockets) -> Result<()> {
        let Some(run) = self.active.as_mut() else {
            return Ok(());
        };
        while let Ok(synced) = run.commits.synced.try_recv() {
            self.stats.journal_syncs = synced.syncs;
            self.config
                .metrics
                .fsync_seconds
                .observe(synced.sync_time.as_secs_f64());
        }
        let acks = run.commits.made_durable(ticket);
        if !acks.is_empty() {
            if let Some(v) = run.submitter.identity.as_deref() {
                s.send_to_ventilator(v, &crate::protocol::frame(Kind::Acks, run.id, &acks))?;
            }
        }
        self.hand_over(s)
    }

    /// What is done every turn of the loop, whatever arrived.
    fn chores(&mut self, s: &mut Sockets, view: &mut ProgressView) -> Result<()> {
        self.watch_journal();
        self.show_progress(view, false);
        self.refresh_board();
        if self.config.serve {
            self.tend_queue()?;
        }
        self.announce_run_start(s);
        Ok(())
    }

    /// The active run is complete: report it; `Some` when the sink is done
    /// (a serving sink goes on to the next run).
    fn complete(&mut self, s: &mut Sockets, view: &mut ProgressView) -> Result<Option<SinkExit>> {
        if view.terminal {
            self.show_progress(view, true);
        }
        let report = self.finish(s)?;
        if !self.config.serve {
            return Ok(Some(SinkExit::Complete(Box::new(report))));
        }
        *view = ProgressView::new();
        self.board_view = ProgressView::new();
        tracing::info!(queued = self.queue.len(), "serving: ready for the next run");
        Ok(None)
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
}
