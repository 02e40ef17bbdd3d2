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

use crate::flow::CreditReporter;
use crate::gateway::{PaymentGateway, PaymentRequest};
use crate::payments::{Payable, Payments, RetryPolicy, Verdict};
use crate::protocol::{self, FrameError, Kind, RunId};
use crate::rules::{self, Outcome};
use crate::seal::RejectLog;
use crate::shutdown::Shutdown;
use crate::transport::{self, SocketTuning, Wire};
use crate::Result;
use std::time::{Duration, Instant};

/// How long a stop request waits for what the worker holds.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a stopping worker then waits for a sink that takes no results
/// (their orders are redelivered if it gives up).
const UNSENT_RESULTS_GRACE: Duration = Duration::from_secs(2);

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

/// An order waiting for, or at, the gateway (owned: it outlives its frame).
#[derive(Debug)]
struct Task {
    run: RunId,
    seq: u64,
    order_id: String,
    token: String,
    currency: [u8; 3],
    amount_cents: i64,
    items: Vec<(String, i64)>,
}

impl Payable for Task {
    fn request(&self) -> PaymentRequest<'_> {
        PaymentRequest {
            idempotency_key: &self.order_id,
            payment_token: &self.token,
            currency: self.currency,
            amount_cents: self.amount_cents,
        }
    }
}

/// The longest failure reason sent to the sink, in bytes.
const MAX_REASON_BYTES: usize = 512;

/// Outcome records waiting to be sent, for one run.
/// How long results may wait for the sink before the worker says so.
const SILENT_SINK_WARNING: Duration = Duration::from_secs(5);

struct Outbox {
    shutdown: Shutdown,
    wire: Wire,
    seal_buf: Vec<u8>,
    metrics: crate::metrics::Metrics,
    /// Outcomes in this frame, by code, for the metrics.
    outcomes: [u64; crate::rules::OUTCOME_CODES],
    run: Option<RunId>,
    records: Vec<u8>,
    count: usize,
    frame: Vec<u8>,
    /// The sink's results endpoint, for the warning when it does not answer.
    sink: String,
}

impl Outbox {
    /// Starts a new frame when the run changes.
    fn switch_run(&mut self, results: &zmq::Socket, worker_id: u64, run: RunId) -> Result<()> {
        if self.run != Some(run) {
            self.flush(results, worker_id)?;
            self.run = Some(run);
        }
        Ok(())
    }

    /// Adds a paid order's outcome: its currency, amount and items.
    fn paid<'i>(
        &mut self,
        results: &zmq::Socket,
        worker_id: u64,
        (run, seq): (RunId, u64),
        currency: &[u8; 3],
        amount_cents: i64,
        items: impl ExactSizeIterator<Item = (&'i str, i64)>,
    ) -> Result<()> {
        self.switch_run(results, worker_id, run)?;
        let currency = std::str::from_utf8(currency).unwrap_or("");
        self.push(seq, Outcome::Paid, currency, amount_cents, items);
        Ok(())
    }

    /// Adds a failed payment's outcome; its reason travels in the record's
    /// currency slot (empty for every other outcome), bounded in length.
    fn failed(
        &mut self,
        results: &zmq::Socket,
        worker_id: u64,
        (run, seq): (RunId, u64),
        reason: &str,
    ) -> Result<()> {
        self.switch_run(results, worker_id, run)?;
        let mut end = reason.len().min(MAX_REASON_BYTES);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        self.push(seq, Outcome::Failed, &reason[..end], 0, std::iter::empty());
        Ok(())
    }

    /// Adds any other outcome (nothing captured).
    fn other(
        &mut self,
        results: &zmq::Socket,
        worker_id: u64,
        (run, seq): (RunId, u64),
        outcome: Outcome,
    ) -> Result<()> {
        self.switch_run(results, worker_id, run)?;
        self.push(seq, outcome, "", 0, std::iter::empty());
        Ok(())
    }

    /// Appends one record to the frame being built, counting its outcome
    /// for the metrics (counted when the frame is sent).
    fn push<'i>(
        &mut self,
        seq: u64,
        outcome: Outcome,
        currency: &str,
        amount_cents: i64,
        items: impl ExactSizeIterator<Item = (&'i str, i64)>,
    ) {
        let code = outcome.code();
        protocol::write_result_record(&mut self.records, seq, code, currency, amount_cents, items);
        self.count += 1;
        self.outcomes[usize::from(code)] += 1;
    }

    /// Says so when the sink has not taken results for a while: after
    /// [`SILENT_SINK_WARNING`], then every 30 s.
    fn warn_if_blocked(&self, since: Instant, warned_at: &mut Option<Instant>) {
        let waited = since.elapsed();
        let due = match warned_at {
            None => waited >= SILENT_SINK_WARNING,
            Some(t) => t.elapsed() >= Duration::from_secs(30),
        };
        if due {
            if warned_at.is_none() {
                self.metrics.set_problem(Some(format!(
                    "no sink answering at {}: it takes no results",
                    self.sink
                )));
            }
            *warned_at = Some(Instant::now());
            tracing::warn!(
                results = self.count,
                "no answer from the sink at {} for {} s; holding {} results until it takes them",
                self.sink,
                waited.as_secs(),
                self.count
            );
        }
    }

    fn flush(&mut self, results: &zmq::Socket, worker_id: u64) -> Result<()> {
        let Some(run) = self.run else { return Ok(()) };
        if self.count == 0 {
            return Ok(());
        }
        protocol::results_frame(&mut self.frame, run, worker_id, self.count, &self.records);
        // PUSH cannot send while the sink is away: results wait here, not
        // lost. A stop request gives up after a grace period; the orders of
        // results never sent are redelivered.
        let mut stopping_since: Option<Instant> = None;
        let blocked_since = Instant::now();
        let mut warned_at: Option<Instant> = None;
        loop {
            let bytes = self.wire.outgoing(&self.frame, &mut self.seal_buf);
            match results.send(bytes, zmq::DONTWAIT) {
                Ok(()) => break,
                Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => {
                    if self.shutdown.requested() {
                        let since = *stopping_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > UNSENT_RESULTS_GRACE {
                            tracing::warn!(results = self.count, "stopping with results the sink did not take; their orders will be redelivered");
                            break;
                        }
                    }
                    self.warn_if_blocked(blocked_since, &mut warned_at);
                    let mut items = [results.as_poll_item(zmq::POLLOUT)];
                    transport::poll(&mut items, 100)?;
                }
                Err(e) => return Err(crate::Error::zmq("cannot send results", e)),
            }
        }
        if warned_at.is_some() {
            self.metrics.set_problem(None);
        }
        self.records.clear();
        self.count = 0;
        for (code, n) in self.outcomes.iter_mut().enumerate() {
            if let Some(outcome) = Outcome::from_code(code as u8).filter(|_| *n > 0) {
                self.metrics.count_outcome(outcome, *n);
            }
            *n = 0;
        }
        Ok(())
    }
}

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
    /// Job frames that failed to open, logged once in a while.
    rejected: RejectLog,
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
    // DEALER: jobs in, credit out (see crate::flow).
    let mut jobs = connect_jobs(&ctx, config, &config.jobs)?;
    let results = transport::connect(
        &ctx,
        zmq::PUSH,
        &config.results,
        SocketTuning::default(),
        "results",
    )?;
    let control = transport::connect(
        &ctx,
        zmq::SUB,
        &config.control,
        SocketTuning::default(),
        "control",
    )?;
    control
        .set_subscribe(b"")
        .map_err(|e| crate::Error::zmq("cannot subscribe to control", e))?;

    let id = new_worker_id();
    tracing::info!(worker = format!("{id:016x}"), jobs = %config.jobs, results = %config.results, concurrency = config.concurrency, "worker started");
    let mut worker = Worker {
        id,
        config: config.clone(),
        payments: Payments::new(gateway, config.retry, config.concurrency, id),
        settled: Vec::new(),
        outbox: Outbox {
            shutdown: shutdown.clone(),
            wire: config.wire.clone(),
            seal_buf: Vec::new(),
            metrics: config.metrics.clone(),
            outcomes: [0; crate::rules::OUTCOME_CODES],
            run: None,
            records: Vec::new(),
            count: 0,
            frame: Vec::new(),
            sink: config.results.clone(),
        },
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
        rejected: RejectLog::new(Duration::from_secs(5)),
    };
    let served = worker.serve(&ctx, &mut jobs, &results, &control, shutdown);
    if let Some(summary) = worker.rejected.flush() {
        tracing::warn!("job frames: {summary}");
    }
    served?;
    tracing::info!(processed = worker.summary.processed, "worker stopped");
    Ok(worker.summary)
}

/// The jobs DEALER, connected to `endpoint`: jobs in, credit out (see crate::flow).
fn connect_jobs(ctx: &zmq::Context, config: &WorkerConfig, endpoint: &str) -> Result<zmq::Socket> {
    transport::connect(
        ctx,
        zmq::DEALER,
        endpoint,
        SocketTuning {
            send_hwm: 1000,
            recv_hwm: config.recv_hwm,
        },
        "jobs",
    )
}

impl Worker<'_> {
    fn busy(&self) -> usize {
        self.payments.busy()
    }

    /// Tells the ventilator how much room this worker has, when due; says
    /// so when the ventilator stays silent.
    fn report_credit(&mut self, jobs: &zmq::Socket) -> Result<()> {
        let now = Instant::now();
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
        let frame = protocol::frame(Kind::Credit, self.credit.run(), &credit);
        let mut buf = Vec::new();
        // Not taken (the ventilator is away): the next report says the same.
        transport::send_frame(jobs, &self.config.wire, &frame, &mut buf, "jobs")?;
        Ok(())
    }

    fn serve(
        &mut self,
        ctx: &zmq::Context,
        jobs: &mut zmq::Socket,
        results: &zmq::Socket,
        control: &zmq::Socket,
        shutdown: &Shutdown,
    ) -> Result<()> {
        let mut msg = zmq::Message::new();
        let mut draining: Option<Instant> = None;
        let wire = self.config.wire.clone();
        let mut last_bad_log = Instant::now() - Duration::from_secs(60);
        loop {
            if shutdown.requested() && draining.is_none() {
                tracing::info!(
                    holding = self.busy(),
                    "stop requested: finishing what this worker holds"
                );
                draining = Some(Instant::now());
                self.credit.close();
                self.report_credit(jobs)?;
            }
            if let Some(since) = draining {
                if self.busy() == 0 {
                    self.outbox.flush(results, self.id)?;
                    return Ok(());
                }
                if since.elapsed() > STOP_GRACE {
                    tracing::warn!(
                        holding = self.busy(),
                        "stopping without finishing: those orders will be redelivered"
                    );
                    return Ok(());
                }
            }
            let draining_now = draining.is_some();
            // The ventilator sends no more than this worker's credit.
            let take_jobs = !draining_now;
            let timeout = self.poll_timeout(take_jobs);
            let (jobs_ready, control_ready) = {
                let mut items = [
                    jobs.as_poll_item(if take_jobs {
                        zmq::POLLIN
                    } else {
                        zmq::PollEvents::empty()
                    }),
                    control.as_poll_item(zmq::POLLIN),
                    self.gateway_wake(),
                ];
                let polled = if self.payments.wake_fd().is_some() {
                    3
                } else {
                    2
                };
                transport::poll(&mut items[..polled], timeout)?;
                (items[0].is_readable(), items[1].is_readable())
            };
            if control_ready {
                while transport::try_recv(control, &mut msg, "control")? {
                    let Ok(plain) = wire.incoming(&mut msg) else {
                        // Not from our sink: ignored (a forged "run over" must not stop us).
                        self.summary.bad_frames += 1;
                        continue;
                    };
                    let Ok((h, body)) = protocol::split_frame(plain) else {
                        continue;
                    };
                    match h.kind {
                        Kind::RunOver if !self.config.serve => {
                            // Every order of the run is tallied: whatever this
                            // worker still holds is a repeat. Exit now.
                            tracing::info!(run = %h.run, holding = self.busy(), "the sink says the run is over");
                            self.summary.run_over = true;
                            self.say_goodbye(h.run, results);
                            return Ok(());
                        }
                        Kind::RunOver => {
                            // Said a few times: the goodbye each time, the log once.
                            self.say_goodbye(h.run, results);
                            if self.serving.over != Some(h.run) {
                                self.serving.over = Some(h.run);
                                tracing::info!(run = %h.run, processed = self.summary.processed, "the sink says the run is over; waiting for the next");
                            }
                            if self.serving.active == Some(h.run) {
                                self.serving.active = None;
                                self.serving.idle_said = Some(Instant::now());
                            }
                        }
                        Kind::RunStart if self.config.serve => {
                            if let Ok(start) = protocol::decode::<protocol::RunStart>(body) {
                                self.on_run_start(ctx, jobs, h.run, &start.jobs)?;
                            }
                        }
                        _ => {}
                    }
                }
            }
            if jobs_ready {
                while !draining_now && transport::try_recv(jobs, &mut msg, "jobs")? {
                    let plain = match wire.incoming(&mut msg) {
                        Ok(plain) => plain,
                        Err(e) => {
                            self.summary.bad_frames += 1;
                            self.config.metrics.bad_frames.inc();
                            if let Some(summary) = self.rejected.record(e) {
                                tracing::warn!("job frames: {summary}");
                            }
                            continue;
                        }
                    };
                    if let Err(e) = self.take_frame(plain, results)? {
                        self.config.metrics.bad_frames.inc();
                        self.summary.bad_frames += 1;
                        if last_bad_log.elapsed() > Duration::from_secs(5) {
                            tracing::warn!(error = %e, dropped_so_far = self.summary.bad_frames, "dropped a job frame");
                            last_bad_log = Instant::now();
                        }
                    }
                    if self.outbox.count >= self.config.batch {
                        self.outbox.flush(results, self.id)?;
                    }
                }
            }
            self.advance(results)?;
            self.config
                .metrics
                .in_flight
                .set(self.payments.at_gateway() as i64);
            // Nothing more to read right now: do not hold results back.
            self.outbox.flush(results, self.id)?;
            self.report_credit(jobs)?;
            self.report_status(results);
        }
    }

    /// The sink announced run `run`, its jobs at `endpoint` (empty: this
    /// worker's own `--jobs`): connects there if not already.
    fn on_run_start(
        &mut self,
        ctx: &zmq::Context,
        jobs: &mut zmq::Socket,
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
        self.credit.heard(Instant::now());
        if self.serving.jobs != endpoint {
            *jobs = connect_jobs(ctx, &self.config, endpoint)?;
            self.serving.jobs = endpoint.to_owned();
        }
        tracing::info!(run = %run, jobs = %endpoint, "the sink started a run; taking its jobs");
        Ok(())
    }

    /// Tells the sink, once a second, this worker's line on the dashboard.
    /// Best effort: a sink that does not take it hears the next one.
    fn report_status(&mut self, results: &zmq::Socket) {
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
        let frame = protocol::frame(Kind::WorkerStatus, run, &status);
        let mut sealed = Vec::new();
        let _ = results.send(
            self.config.wire.outgoing(&frame, &mut sealed),
            zmq::DONTWAIT,
        );
    }

    /// Tells the sink this worker heard the run is over, so it can exit
    /// without waiting. Best effort: a sink that does not hear it waits a
    /// little longer.
    fn say_goodbye(&mut self, run: RunId, results: &zmq::Socket) {
        let bye = protocol::frame(Kind::Bye, run, &protocol::Bye { worker_id: self.id });
        let mut sealed = Vec::new();
        let _ = results.send(self.config.wire.outgoing(&bye, &mut sealed), zmq::DONTWAIT);
    }

    fn poll_timeout(&self, take_jobs: bool) -> i64 {
        let now = Instant::now();
        let next = self.payments.next_due();
        // Short enough to notice a stop request or new work promptly.
        let cap = if take_jobs { 100 } else { 20 };
        match next {
            Some(due) if due <= now => 0,
            Some(due) if due - now < Duration::from_millis(1) => {
                // ZeroMQ polls in whole milliseconds: rounding a reply due in
                // 0.2 ms up to 1 ms would idle the gateway slots ~10% of the
                // time at 5 ms latency. Sleep the exact rest instead.
                std::thread::sleep(due - now);
                0
            }
            Some(due) => (((due - now).as_micros() / 1000) as i64).clamp(1, cap),
            None => cap,
        }
    }

    /// Decodes one job frame and starts its orders. A frame that does not
    /// decode is returned as the inner error (dropped and counted).
    fn take_frame(
        &mut self,
        frame: &[u8],
        results: &zmq::Socket,
    ) -> Result<Result<(), FrameError>> {
        let (header, body) = match protocol::split_frame(frame) {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        if header.kind != Kind::Jobs {
            return Ok(Err(FrameError::Kind(header.kind as u8)));
        }
        let batch = match protocol::decode_jobs(body, &mut self.spare) {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        if self.outbox.run != Some(header.run) && !self.config.serve {
            crate::cli::record_run(&header.run);
        }
        self.credit.received(batch.jobs.len(), header.run);
        self.credit.heard(Instant::now());
        if batch.isolate {
            // Possibly a poison order: let everything else finish and its
            // results leave first, so a crash takes nothing else with it.
            self.finish_all(results)?;
        }
        for job in &batch.jobs {
            self.start(header.run, job, results)?;
        }
        if batch.isolate {
            self.finish_all(results)?;
        }
        self.spare.recycle(batch);
        Ok(Ok(()))
    }

    /// Applies the rules to one order and starts its payment.
    fn start(&mut self, run: RunId, job: &protocol::Job<'_>, results: &zmq::Socket) -> Result<()> {
        self.summary.processed += 1;
        let order = &job.order;
        let priced = match rules::price(order) {
            Ok(p) => p,
            Err(rejection) => {
                return self.outbox.other(
                    results,
                    self.id,
                    (run, job.seq),
                    Outcome::Rejected(rejection),
                );
            }
        };
        let request = PaymentRequest {
            idempotency_key: &order.order_id,
            payment_token: &order.payment_token,
            currency: priced.currency,
            amount_cents: priced.amount_cents,
        };
        let verdict = self.payments.start(Instant::now(), &request, || {
            owned_task(run, job, priced.currency, priced.amount_cents)
        });
        match verdict {
            None => Ok(()),
            // The common fast path: answered at once, nothing copied.
            Some(Verdict::Paid) => {
                self.summary.paid += 1;
                let items = order.items.iter().map(|i| (&*i.sku, i.qty));
                self.outbox.paid(
                    results,
                    self.id,
                    (run, job.seq),
                    &priced.currency,
                    priced.amount_cents,
                    items,
                )
            }
            Some(Verdict::Declined) => {
                self.outbox
                    .other(results, self.id, (run, job.seq), Outcome::Declined)
            }
            Some(Verdict::Failed(reason)) => {
                self.outbox
                    .failed(results, self.id, (run, job.seq), &reason)
            }
        }
    }

    /// The poll item of the gateway's wake-up descriptor (an inert item
    /// when it has none: leave it out of the poll).
    fn gateway_wake(&self) -> zmq::PollItem<'static> {
        match self.payments.wake_fd() {
            Some(fd) => zmq::PollItem::from_fd(fd, zmq::POLLIN),
            None => zmq::PollItem::from_fd(-1, zmq::PollEvents::empty()),
        }
    }

    /// Runs everything held to completion and sends the results.
    fn finish_all(&mut self, results: &zmq::Socket) -> Result<()> {
        while self.busy() > 0 {
            let timeout = self.poll_timeout(false);
            if timeout > 0 {
                match self.payments.wake_fd() {
                    Some(_) => {
                        transport::poll(&mut [self.gateway_wake()], timeout)?;
                    }
                    None => std::thread::sleep(Duration::from_millis(timeout as u64)),
                }
            }
            self.advance(results)?;
        }
        self.outbox.flush(results, self.id)
    }

    /// Collects gateway replies, starts retries and waiting orders, and
    /// sends what settled.
    fn advance(&mut self, results: &zmq::Socket) -> Result<()> {
        let mut settled = std::mem::take(&mut self.settled);
        self.payments.advance(Instant::now(), &mut settled);
        let retries = self.payments.take_retries();
        if retries > 0 {
            self.summary.retries += retries;
            self.config.metrics.retries.inc_by(retries);
        }
        let mut outcome = Ok(());
        for (task, verdict) in settled.drain(..) {
            if outcome.is_ok() {
                outcome = self.complete(task, verdict, results);
            }
        }
        self.settled = settled;
        outcome
    }

    fn complete(&mut self, task: Task, verdict: Verdict, results: &zmq::Socket) -> Result<()> {
        let at = (task.run, task.seq);
        match verdict {
            Verdict::Paid => {
                self.summary.paid += 1;
                let items = task.items.iter().map(|(s, q)| (s.as_str(), *q));
                self.outbox.paid(
                    results,
                    self.id,
                    at,
                    &task.currency,
                    task.amount_cents,
                    items,
                )
            }
            Verdict::Declined => self.outbox.other(results, self.id, at, Outcome::Declined),
            Verdict::Failed(reason) => {
                tracing::warn!(order = %task.order_id, %reason, "payment failed");
                self.outbox.failed(results, self.id, at, &reason)
            }
        }
    }
}

fn owned_task(run: RunId, job: &protocol::Job<'_>, currency: [u8; 3], amount_cents: i64) -> Task {
    Task {
        run,
        seq: job.seq,
        order_id: job.order.order_id.to_string(),
        token: job.order.payment_token.to_string(),
        currency,
        amount_cents,
        items: job
            .order
            .items
            .iter()
            .map(|i| (i.sku.to_string(), i.qty))
            .collect(),
    }
}
