//! The worker: receives job batches from the ventilator (DEALER; it reports
//! its credit there, see [`crate::flow`]), applies the rules, takes payments through a
//! [`PaymentGateway`] with up to `concurrency` in flight, and PUSHes outcomes
//! to the sink in batches. It holds no durable state: whatever it loses by
//! dying, the ventilator delivers again. Retries, back-off and giving up are
//! [`crate::payments`]' business; a payment that failed for good goes to the
//! sink as `failed` with its reason, which reaches the ventilator's dead
//! letter with the sink's acknowledgement.
//!
//! Without `--serve` a worker exits when the sink says the run is over;
//! with it, it says goodbye and waits for the next run, taking jobs from
//! wherever the sink says the active run's ventilator is ([`Kind::RunStart`]).
//!
//! - [`orders`]: a job frame's orders priced, paid and settled.
//! - [`outbox`]: outcomes gathered into results frames for the sink.
//! - this file: the sockets and the serve loop (wait, control, jobs, chores).

mod orders;
mod outbox;

use crate::flow::CreditReporter;
use crate::gateway::PaymentGateway;
use crate::payments::{Payments, RetryPolicy, Verdict};
use crate::protocol::{self, FrameError, Kind, RunId};
use crate::shutdown::Shutdown;
use crate::transport::{self, Connection, SocketSpec, SocketTuning, Wire};
use crate::Result;
use orders::Task;
use outbox::Outbox;
use std::time::{Duration, Instant};

/// How long a stop request waits for what the worker holds.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What a worker needs to run.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub jobs: String,
    pub results: String,
    pub control: String,
    /// Payments in flight at the gateway at once.
    pub concurrency: usize,
    /// Attempts of a payment that fails transiently before it counts as
    /// failed; the back-off between them (see [`RetryPolicy`]).
    pub retry: RetryPolicy,
    /// Job batches queued towards this worker (ZMQ_RCVHWM).
    pub recv_hwm: i32,
    /// Orders queued beyond the payments in flight: this long of work at
    /// the measured pace (see [`crate::flow`]).
    pub prefetch: Duration,
    /// Results per frame at most.
    pub batch: usize,
    /// Counters and gauges (served with `--metrics`).
    pub metrics: crate::metrics::Metrics,
    /// Plain or sealed frames.
    pub wire: Wire,
    /// Stay up after a run and take the next (`--serve`).
    pub serve: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            jobs: crate::DEFAULT_JOBS.into(),
            results: crate::DEFAULT_RESULTS.into(),
            control: crate::DEFAULT_CONTROL.into(),
            concurrency: 64,
            retry: RetryPolicy {
                max_attempts: 8,
                base: Duration::from_millis(5),
                cap: Duration::from_millis(320),
            },
            recv_hwm: 4,
            prefetch: Duration::from_millis(20),
            batch: 1024,
            metrics: crate::metrics::Metrics::default(),
            wire: Wire::plain(),
            serve: false,
        }
    }
}

/// What a worker did.
#[derive(Debug, Clone, Default)]
pub struct WorkerSummary {
    pub worker_id: u64,
    pub processed: u64,
    pub paid: u64,
    pub retries: u64,
    pub bad_frames: u64,
    /// True when the sink said the run is over (false: stopped by a signal).
    pub run_over: bool,
}

/// This machine's host name (empty if it cannot be read).
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// A fresh id for this worker process.
pub fn new_worker_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!("{}:{nanos}", std::process::id());
    // 0 is the ventilator's own id.
    xxhash_rust::xxh3::xxh3_64(seed.as_bytes()).max(1)
}

/// Runs a worker until the sink says the run is over or a stop is requested.
pub fn run(
    config: &WorkerConfig,
    gateway: &mut dyn PaymentGateway,
    shutdown: &Shutdown,
) -> Result<WorkerSummary> {
    let ctx = zmq::Context::new();
    let jobs = connect_jobs(&ctx, config, &config.jobs)?;
    let results = connect_results(&ctx, config)?;
    let control = connect_control(&ctx, config)?;
    let id = new_worker_id();
    tracing::info!(worker = format!("{id:016x}"), jobs = %config.jobs, results = %config.results, concurrency = config.concurrency, "worker started");
    let outbox = Outbox::new(results, id, config, shutdown);
    let mut worker = Worker::new(id, config, gateway, outbox);
    let mut sockets = Sockets { jobs, control };
    let served = worker.serve(&ctx, &mut sockets, shutdown);
    worker.summary.bad_frames += sockets.jobs.dropped().total() + sockets.control.dropped().total();
    served?;
    tracing::info!(processed = worker.summary.processed, "worker stopped");
    Ok(worker.summary)
}

/// The jobs DEALER, connected to `endpoint`: jobs in, credit out (see crate::flow).
fn connect_jobs(ctx: &zmq::Context, config: &WorkerConfig, endpoint: &str) -> Result<Connection> {
    let tuning = SocketTuning {
        send_hwm: 1000,
        recv_hwm: config.recv_hwm,
    };
    let socket = transport::connect(
        ctx,
        SocketSpec::new(zmq::DEALER, "jobs").tuned(tuning),
        endpoint,
    )?;
    Ok(Connection::new(
        socket,
        config.wire.clone(),
        "jobs",
        &config.metrics,
    ))
}

/// The results PUSH to the sink: results, status and goodbyes out.
fn connect_results(ctx: &zmq::Context, config: &WorkerConfig) -> Result<Connection> {
    let socket = transport::connect(ctx, SocketSpec::new(zmq::PUSH, "results"), &config.results)?;
    let wire = config.wire.clone();
    Ok(Connection::new(socket, wire, "results", &config.metrics))
}

/// The control SUB, subscribed to everything the sink announces.
fn connect_control(ctx: &zmq::Context, config: &WorkerConfig) -> Result<Connection> {
    let control = transport::connect(ctx, SocketSpec::new(zmq::SUB, "control"), &config.control)?;
    control
        .set_subscribe(b"")
        .map_err(|e| crate::Error::zmq("cannot subscribe to control", e))?;
    let wire = config.wire.clone();
    Ok(Connection::new(control, wire, "control", &config.metrics))
}

/// The sockets the serve loop reads. The results PUSH is the outbox's.
/// Frames that fail to open or split are dropped, counted and logged by
/// the [`Connection`]s; a frame from a stranger never reaches the worker.
struct Sockets {
    /// DEALER: jobs in, credit out.
    jobs: Connection,
    /// SUB: the sink's run announcements.
    control: Connection,
}

/// How often a job frame that opened but did not decode is logged at most.
const UNDECODED_LOG_EVERY: Duration = Duration::from_secs(5);

struct Worker<'g> {
    id: u64,
    config: WorkerConfig,
    payments: Payments<'g, Task>,
    /// Payments settled by the last [`Payments::advance`].
    settled: Vec<(Task, Verdict)>,
    outbox: Outbox,
    summary: WorkerSummary,
    /// Vectors kept from one job frame to the next.
    spare: protocol::JobVecs,
    /// What this worker tells the ventilator it can take.
    credit: CreditReporter,
    /// When this worker last told the sink its status (for the dashboard).
    status_sent: Option<Instant>,
    host: String,
    /// Serving: the run the sink says is active, and the jobs endpoint
    /// this worker is connected to.
    serving: Serving,
    /// When a job frame that did not decode was last logged.
    undecoded_logged: Option<Instant>,
}

/// What a serving worker knows of the runs.
struct Serving {
    active: Option<RunId>,
    /// The last run this worker heard is over.
    over: Option<RunId>,
    jobs: String,
    /// When it last said it is waiting for a run.
    idle_said: Option<Instant>,
}

/// A serving worker with no run says so this often.
const IDLE_REMINDER: Duration = Duration::from_secs(60);

/// How often a worker tells the sink its status.
const STATUS_EVERY: Duration = Duration::from_secs(1);

impl<'g> Worker<'g> {
    /// A worker holding nothing yet, paying through `gateway`.
    fn new(
        id: u64,
        config: &WorkerConfig,
        gateway: &'g mut dyn PaymentGateway,
        outbox: Outbox,
    ) -> Worker<'g> {
        Worker {
            id,
            config: config.clone(),
            payments: Payments::new(gateway, config.retry, config.concurrency, id),
            settled: Vec::new(),
            outbox,
            summary: WorkerSummary {
                worker_id: id,
                ..WorkerSummary::default()
            },
            spare: protocol::JobVecs::default(),
            credit: CreditReporter::new(config.concurrency, config.prefetch, Instant::now()),
            status_sent: None,
            host: host_name(),
            serving: Serving {
                active: None,
                over: None,
                jobs: config.jobs.clone(),
                idle_said: None,
            },
            undecoded_logged: None,
        }
    }
}

impl Worker<'_> {
    fn busy(&self) -> usize {
        self.payments.busy()
    }

    /// Takes jobs, pays and settles, until the sink says the run is over
    /// (without `--serve`) or a stop request is carried out.
    fn serve(&mut self, ctx: &zmq::Context, s: &mut Sockets, shutdown: &Shutdown) -> Result<()> {
        let mut draining: Option<Instant> = None;
        loop {
            if shutdown.requested() && draining.is_none() {
                draining = Some(self.begin_drain(&mut s.jobs)?);
            }
            if let Some(since) = draining {
                if self.drained(since)? {
                    return Ok(());
                }
            }
            // The ventilator sends no more than this worker's credit.
            let take_jobs = draining.is_none();
            let (jobs_ready, control_ready) = self.wait(s, take_jobs)?;
            if control_ready && self.on_control(ctx, s)? {
                return Ok(());
            }
            if jobs_ready && take_jobs {
                self.take_jobs(s)?;
            }
            self.chores(&mut s.jobs)?;
        }
    }

    /// A stop was requested: no more credit from now on. Returns when.
    fn begin_drain(&mut self, jobs: &mut Connection) -> Result<Instant> {
        tracing::info!(
            holding = self.busy(),
            "stop requested: finishing what this worker holds"
        );
        let since = Instant::now();
        self.credit.close();
        self.report_credit(jobs)?;
        Ok(since)
    }

    /// Stopping since `since`: true once everything held is sent, or the
    /// grace period is over (what is left is redelivered).
    fn drained(&mut self, since: Instant) -> Result<bool> {
        if self.busy() == 0 {
            self.outbox.flush()?;
            return Ok(true);
        }
        if since.elapsed() > STOP_GRACE {
            tracing::warn!(
                holding = self.busy(),
                "stopping without finishing: those orders will be redelivered"
            );
            return Ok(true);
        }
        Ok(false)
    }

    /// Waits for jobs (when taking them), the control socket or the
    /// gateway, at most until a payment is due; says which socket is readable.
    fn wait(&self, s: &Sockets, take_jobs: bool) -> Result<(bool, bool)> {
        let (timeout, then_sleep) = match self.poll_timeout(take_jobs) {
            Timeout::Ms(ms) => (ms, None),
            Timeout::Exactly(rest) => (0, Some(rest)),
        };
        let jobs_events = if take_jobs {
            zmq::POLLIN
        } else {
            zmq::PollEvents::empty()
        };
        let mut items = [
            s.jobs.socket().as_poll_item(jobs_events),
            s.control.socket().as_poll_item(zmq::POLLIN),
            self.gateway_wake(),
        ];
        let polled = if self.payments.wake_fd().is_some() {
            3
        } else {
            2
        };
        let ready = transport::poll(&mut items[..polled], timeout)?;
        if let (0, Some(rest)) = (ready, then_sleep) {
            // Nothing to read: sleep out the rest before a payment is due.
            std::thread::sleep(rest);
        }
        Ok((items[0].is_readable(), items[1].is_readable()))
    }

    /// The sink's announcements waiting on the control socket; true when
    /// the run is over and this worker (not serving) exits now.
    fn on_control(&mut self, ctx: &zmq::Context, s: &mut Sockets) -> Result<bool> {
        // A frame not from our sink never gets here (a forged "run over"
        // must not stop us): the connection drops it.
        while let Some((h, body)) = s.control.recv()? {
            match h.kind {
                Kind::RunOver if !self.config.serve => {
                    // Every order of the run is tallied: whatever this
                    // worker still holds is a repeat. Exit now.
                    tracing::info!(run = %h.run, holding = self.busy(), "the sink says the run is over");
                    self.summary.run_over = true;
                    self.say_goodbye(h.run);
                    return Ok(true);
                }
                Kind::RunOver => self.on_run_over(h.run),
                Kind::RunStart => {
                    if let Ok(start) = protocol::decode::<protocol::RunStart>(body) {
                        // A worker of one run keeps its own --jobs: the
                        // announcement only says its ventilator binds now.
                        let jobs = if self.config.serve {
                            &start.jobs[..]
                        } else {
                            ""
                        };
                        self.on_run_start(ctx, &mut s.jobs, h.run, jobs)?;
                    }
                }
                _ => {}
            }
        }
        Ok(false)
    }

    /// Serving: the sink says run `run` is over; this worker waits for the next.
    fn on_run_over(&mut self, run: RunId) {
        // Said a few times: the goodbye each time, the log once.
        self.say_goodbye(run);
        if self.serving.over != Some(run) {
            self.serving.over = Some(run);
            tracing::info!(run = %run, processed = self.summary.processed, "the sink says the run is over; waiting for the next");
        }
        if self.serving.active == Some(run) {
            self.serving.active = None;
            self.serving.idle_said = Some(Instant::now());
        }
    }

    /// The job frames waiting (opened in place, without a copy): their
    /// orders started.
    fn take_jobs(&mut self, s: &mut Sockets) -> Result<()> {
        while let Some((header, body)) = s.jobs.recv()? {
            if let Err(e) = self.take_frame(header, body)? {
                self.undecoded(&e);
            }
            if self.outbox.count >= self.config.batch {
                self.outbox.flush()?;
            }
        }
        Ok(())
    }

    /// Counts a job frame that opened but did not decode, and logs it at
    /// most every 5 s.
    fn undecoded(&mut self, e: &FrameError) {
        self.config.metrics.bad_frames.inc();
        self.summary.bad_frames += 1;
        if self
            .undecoded_logged
            .is_none_or(|t| t.elapsed() >= UNDECODED_LOG_EVERY)
        {
            tracing::warn!(error = %e, dropped_so_far = self.summary.bad_frames, "dropped a job frame");
            self.undecoded_logged = Some(Instant::now());
        }
    }

    /// After each wake-up: settles payments, sends results, reports credit
    /// and status.
    fn chores(&mut self, jobs: &mut Connection) -> Result<()> {
        self.advance()?;
        self.config
            .metrics
            .in_flight
            .set(self.payments.at_gateway() as i64);
        // Nothing more to read right now: do not hold results back.
        self.outbox.flush()?;
        self.report_credit(jobs)?;
        self.report_status();
        Ok(())
    }

    /// Tells the ventilator how much room this worker has, when due.
    fn report_credit(&mut self, jobs: &mut Connection) -> Result<()> {
        self.watch_silence(Instant::now());
        let busy = self.busy();
        let payments = &self.payments;
        let run = self.credit.run();
        // The seqs of every order of the run this worker holds.
        let holds = || {
            payments
                .tasks()
                .filter(|t| t.run == run)
                .map(|t| t.seq)
                .collect()
        };
        self.credit.set_parked(payments.backing_off());
        let Some(credit) = self.credit.due(Instant::now(), busy, holds) else {
            return Ok(());
        };
        // Not taken (the ventilator is away): the next report says the same.
        jobs.send(Kind::Credit, self.credit.run(), &credit)?;
        Ok(())
    }

    /// The ventilator's silence in the metrics, and said when it lasts; a
    /// serving worker between runs says instead that it waits for the sink.
    fn watch_silence(&mut self, now: Instant) {
        let silence = self.credit.silence(now).as_secs();
        self.config
            .metrics
            .peer_silence
            .set(if silence >= 1 { silence as i64 } else { 0 });
        // A serving worker between runs waits for the sink, not a ventilator.
        let between_runs = self.config.serve && self.serving.active.is_none();
        if between_runs {
            self.credit.heard(now);
            if self
                .serving
                .idle_said
                .is_none_or(|t| t.elapsed() >= IDLE_REMINDER)
            {
                self.serving.idle_said = Some(now);
                tracing::info!(sink = %self.config.control, "serving: waiting for the sink to start a run");
            }
        }
        if let Some(silent) = self.credit.silence_warning(now) {
            tracing::warn!(
                holding = self.busy(),
                "no answer from the ventilator at {} for {} s",
                self.config.jobs,
                silent.as_secs()
            );
        }
    }

    /// The sink announced run `run`, its jobs at `endpoint` (empty: this
    /// worker's own `--jobs`): connects there if not already.
    fn on_run_start(
        &mut self,
        ctx: &zmq::Context,
        jobs: &mut Connection,
        run: RunId,
        endpoint: &str,
    ) -> Result<()> {
        if self.serving.active == Some(run) || self.serving.over == Some(run) {
            return Ok(());
        }
        let endpoint = if endpoint.is_empty() {
            self.config.jobs.as_str()
        } else {
            endpoint
        };
        self.serving.active = Some(run);
        let now = Instant::now();
        // A connection that has found no ventilator for a while tries
        // again only every RECONNECT_MAX_MS; a fresh one tries at once,
        // then every 10 ms, so the run's ventilator, binding about now, is
        // reached in milliseconds. An idle worker loses nothing by it.
        let waiting = self.credit.silence(now) >= crate::flow::HEARTBEAT && self.busy() == 0;
        self.credit.heard(now);
        if self.serving.jobs != endpoint || waiting {
            let old = std::mem::replace(jobs, connect_jobs(ctx, &self.config, endpoint)?);
            self.credit.reconnected();
            self.summary.bad_frames += old.dropped().total();
            self.serving.jobs = endpoint.to_owned();
        }
        tracing::info!(run = %run, jobs = %endpoint, "the sink started a run; taking its jobs");
        Ok(())
    }

    /// Tells the sink, once a second, this worker's line on the dashboard.
    /// Best effort: a sink that does not take it hears the next one.
    fn report_status(&mut self) {
        if self.status_sent.is_some_and(|t| t.elapsed() < STATUS_EVERY) {
            return;
        }
        self.status_sent = Some(Instant::now());
        let status = protocol::WorkerStatus {
            worker_id: self.id,
            host: self.host.clone(),
            processed: self.summary.processed,
            payments_in_flight: self.payments.at_gateway() as u64,
        };
        let run = self.outbox.run.unwrap_or(RunId(0));
        self.outbox.tell(Kind::WorkerStatus, run, &status);
    }

    /// Tells the sink this worker heard the run is over, so it can exit
    /// without waiting. Best effort: a sink that does not hear it waits a
    /// little longer.
    fn say_goodbye(&mut self, run: RunId) {
        let bye = protocol::Bye { worker_id: self.id };
        self.outbox.tell(Kind::Bye, run, &bye);
    }

    /// How long to wait for sockets and the gateway: until the next
    /// payment is due, at most 100 ms (20 ms when not taking jobs).
    fn poll_timeout(&self, take_jobs: bool) -> Timeout {
        let now = Instant::now();
        // Short enough to notice a stop request or new work promptly.
        let cap = if take_jobs { 100 } else { 20 };
        match self.payments.next_due() {
            Some(due) if due <= now => Timeout::Ms(0),
            // ZeroMQ polls in whole milliseconds: rounding a reply due in
            // 0.2 ms up to 1 ms would idle the gateway slots ~10% of the
            // time at 5 ms latency.
            Some(due) if due - now < Duration::from_millis(1) => Timeout::Exactly(due - now),
            Some(due) => Timeout::Ms((((due - now).as_micros() / 1000) as i64).clamp(1, cap)),
            None => Timeout::Ms(cap),
        }
    }
}

/// How long [`Worker::wait`] waits.
enum Timeout {
    /// A ZeroMQ poll of this many milliseconds.
    Ms(i64),
    /// Less than a millisecond: a poll that does not wait, then, when
    /// nothing is readable, a sleep of exactly this long.
    Exactly(Duration),
}
