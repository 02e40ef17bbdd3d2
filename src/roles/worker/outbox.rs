//! The worker's outbox: outcome records of one run gathered into results
//! frames and PUSHed to the sink through its [`Connection`], waiting (not
//! losing them) while the sink takes none. It also carries the worker's
//! best-effort notes to the sink (status, goodbye) on the same socket.

use crate::protocol::{self, Kind, RunId};
use crate::reminder::Reminder;
use crate::rules::Outcome;
use crate::shutdown::Shutdown;
use crate::transport::{self, Connection};
use crate::Result;
use std::time::{Duration, Instant};

/// How long a stopping worker then waits for a sink that takes no results
/// (their orders are redelivered if it gives up).
const UNSENT_RESULTS_GRACE: Duration = Duration::from_secs(2);

/// The longest failure reason sent to the sink, in bytes.
const MAX_REASON_BYTES: usize = 512;

/// How long results may wait for the sink before the worker says so.
const SILENT_SINK_WARNING: Duration = Duration::from_secs(5);

/// Outcome records waiting to be sent, for one run.
pub(super) struct Outbox {
    shutdown: Shutdown,
    /// PUSH to the sink: results, status and goodbyes.
    results: Connection,
    /// Names this worker in results frames.
    worker_id: u64,
    metrics: crate::metrics::Metrics,
    /// Outcomes in this frame, by code, for the metrics.
    outcomes: [u64; crate::rules::OUTCOME_CODES],
    /// The run of the records gathered.
    pub(super) run: Option<RunId>,
    records: Vec<u8>,
    /// Records gathered so far.
    pub(super) count: usize,
    frame: Vec<u8>,
    /// The sink's results endpoint, for the warning when it does not answer.
    sink: String,
}

impl Outbox {
    /// An empty outbox sending on `results` for worker `worker_id`.
    pub(super) fn new(
        results: Connection,
        worker_id: u64,
        config: &super::WorkerConfig,
        shutdown: &Shutdown,
    ) -> Outbox {
        Outbox {
            shutdown: shutdown.clone(),
            results,
            worker_id,
            metrics: config.metrics.clone(),
            outcomes: [0; crate::rules::OUTCOME_CODES],
            run: None,
            records: Vec::new(),
            count: 0,
            frame: Vec::new(),
            sink: config.results.clone(),
        }
    }

    /// Sends one message to the sink at once, best effort: a sink that does
    /// not take it hears the next one.
    pub(super) fn tell<T: serde::Serialize>(&mut self, kind: Kind, run: RunId, body: &T) {
        let _ = self.results.send(kind, run, body);
    }

    /// Starts a new frame when the run changes (sending the last run's
    /// records first, which may wait for the sink).
    pub(super) fn switch_run(&mut self, run: RunId) -> Result<()> {
        if self.run != Some(run) {
            self.flush()?;
            self.run = Some(run);
        }
        Ok(())
    }

    /// Adds a paid order's outcome: its currency, amount and items.
    pub(super) fn paid<'i>(
        &mut self,
        (run, seq): (RunId, u64),
        currency: &[u8; 3],
        amount_cents: i64,
        items: impl ExactSizeIterator<Item = (&'i str, i64)>,
    ) -> Result<()> {
        self.switch_run(run)?;
        let currency = std::str::from_utf8(currency).unwrap_or("");
        self.push(seq, Outcome::Paid, currency, amount_cents, items);
        Ok(())
    }

    /// Adds a failed payment's outcome; its reason travels in the record's
    /// currency slot (empty for every other outcome), bounded in length.
    pub(super) fn failed(&mut self, (run, seq): (RunId, u64), reason: &str) -> Result<()> {
        self.switch_run(run)?;
        let mut end = reason.len().min(MAX_REASON_BYTES);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        self.push(seq, Outcome::Failed, &reason[..end], 0, std::iter::empty());
        Ok(())
    }

    /// Adds any other outcome (nothing captured).
    pub(super) fn other(&mut self, (run, seq): (RunId, u64), outcome: Outcome) -> Result<()> {
        self.switch_run(run)?;
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
    fn warn_if_blocked(&self, since: Instant, reminder: &mut Reminder) {
        let waited = since.elapsed();
        let first = !reminder.spoken();
        if reminder.due(Instant::now(), waited) {
            if first {
                self.metrics.set_problem(Some(format!(
                    "no sink answering at {}: it takes no results",
                    self.sink
                )));
            }
            tracing::warn!(
                results = self.count,
                "no answer from the sink at {} for {} s; holding {} results until it takes them",
                self.sink,
                waited.as_secs(),
                self.count
            );
        }
    }

    /// Sends the records gathered as one results frame, if any.
    pub(super) fn flush(&mut self) -> Result<()> {
        let Some(run) = self.run else { return Ok(()) };
        if self.count == 0 {
            return Ok(());
        }
        let frame = &mut self.frame;
        protocol::results_frame(frame, run, self.worker_id, self.count, &self.records);
        if self.send_waiting()? {
            self.metrics.set_problem(None);
        }
        self.records.clear();
        self.count = 0;
        self.count_outcomes();
        Ok(())
    }

    /// Sends the frame built, waiting while the sink takes none; true when
    /// it warned that the sink is silent.
    fn send_waiting(&mut self) -> Result<bool> {
        // PUSH cannot send while the sink is away: results wait here, not
        // lost. A stop request gives up after a grace period; the orders of
        // results never sent are redelivered.
        let mut stopping_since: Option<Instant> = None;
        let blocked_since = Instant::now();
        let mut reminder = Reminder::new(SILENT_SINK_WARNING, Duration::from_secs(30));
        while !self.try_send()? {
            if self.shutdown.requested() {
                let since = *stopping_since.get_or_insert_with(Instant::now);
                if since.elapsed() > UNSENT_RESULTS_GRACE {
                    tracing::warn!(results = self.count, "stopping with results the sink did not take; their orders will be redelivered");
                    break;
                }
            }
            self.warn_if_blocked(blocked_since, &mut reminder);
            let mut items = [self.results.socket().as_poll_item(zmq::POLLOUT)];
            transport::poll(&mut items, 100)?;
        }
        Ok(reminder.spoken())
    }

    /// One try at sending the frame built: false when the sink takes none now.
    fn try_send(&mut self) -> Result<bool> {
        match self.results.send_frame(&self.frame) {
            // A failure keeps the words it always had.
            Err(crate::Error::Zmq { source, .. }) => {
                Err(crate::Error::zmq("cannot send results", source))
            }
            sent => sent,
        }
    }

    /// Counts the outcomes of the frame just sent in the metrics.
    fn count_outcomes(&mut self) {
        for (code, n) in self.outcomes.iter_mut().enumerate() {
            if let Some(outcome) = Outcome::from_code(code as u8).filter(|_| *n > 0) {
                self.metrics.count_outcome(outcome, *n);
            }
            *n = 0;
        }
    }
}
