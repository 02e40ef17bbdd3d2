//! Tallying a results frame: each result is checked against what the run's
//! ventilator may have dispatched and against the rules of a result, then
//! applied to the ledger once; new tallies go to the journal's pending
//! records and their acks wait for it, repeats are acked again.

use super::run::ActiveRun;
use super::{now_unix, Sink};
use crate::dashboard::WorkerInfo;
use crate::journal;
use crate::ledger::Applied;
use crate::protocol::{self, FrameError, Header, Kind, ResultsView};
use crate::rules::{Outcome, OUTCOME_CODES};

/// What one batch did to the tally.
#[derive(Default)]
struct BatchTally {
    /// New tallies by outcome code.
    new: [u64; OUTCOME_CODES],
    /// Results for orders already tallied (acked again).
    duplicates: u64,
    /// Results for seqs never dispatched.
    unknown: u64,
    /// Results breaking the rules (a ventilator-only outcome from a worker,
    /// a result the ledger refuses).
    invalid: u64,
}

impl BatchTally {
    fn any_new(&self) -> bool {
        self.new.iter().any(|&n| n > 0)
    }
}

/// Applies `batch` to `run`'s ledger, queueing the acks.
fn tally(run: &mut ActiveRun, batch: &ResultsView<'_>, from_ventilator: bool) -> BatchTally {
    let mut t = BatchTally::default();
    let limit = run.seq_limit();
    for r in batch.iter() {
        if r.seq >= limit {
            t.unknown += 1;
            continue;
        }
        let ventilator_only = Outcome::from_code(r.outcome).is_some_and(|o| o.is_ventilator_only());
        if ventilator_only && !from_ventilator {
            t.invalid += 1;
            continue;
        }
        let acks = &mut run.commits.pending_acks;
        match run.ledger.apply(r) {
            Applied::New => {
                t.new[usize::from(r.outcome)] += 1;
                acks.push(r.seq);
                // A worker's failed payment carries its reason in the
                // currency slot: the ventilator dead-letters it.
                if r.outcome == Outcome::Failed.code() && !r.currency.is_empty() {
                    acks.failures.push((r.seq, r.currency.to_string()));
                }
            }
            Applied::AlreadyTallied => {
                t.duplicates += 1;
                acks.push(r.seq);
            }
            Applied::Invalid(_) => t.invalid += 1,
        }
    }
    t
}

impl Sink {
    /// Tallies one results frame (from a worker, or the ventilator's own outcomes).
    pub(super) fn on_results(&mut self, header: Header, body: &[u8], from_ventilator: bool) {
        if header.kind != Kind::Results {
            return self.bad_frame("results", &FrameError::Kind(header.kind as u8));
        }
        let batch = match ResultsView::decode(body) {
            Ok(b) => b,
            Err(e) => return self.bad_frame("results", &e),
        };
        let Some(run) = self.active.as_mut().filter(|r| r.id == header.run) else {
            let n = batch.len() as u64;
            self.stats.other_run_results += n;
            self.config.metrics.drop_result("other_run", n);
            return self.log_dropped("results", "result for a run that is not active");
        };
        self.stats.result_frames += 1;
        self.stats.results_received += batch.len() as u64;
        self.config
            .metrics
            .results_received
            .inc_by(batch.len() as u64);
        let t = tally(run, &batch, from_ventilator);
        if t.any_new() {
            if batch.worker_id != 0 {
                run.workers.insert(batch.worker_id);
            }
            journal::push_record(&mut run.commits.pending_records, body);
        }
        if batch.worker_id != 0 && !from_ventilator {
            self.worker_heard(batch.worker_id);
        }
        self.account(&t);
    }

    /// Counts a batch's tally in the metrics and the report's stats.
    fn account(&mut self, t: &BatchTally) {
        let metrics = &self.config.metrics;
        for (code, &n) in t.new.iter().enumerate() {
            if let Some(outcome) = Outcome::from_code(code as u8).filter(|_| n > 0) {
                metrics.count_outcome(outcome, n);
            }
        }
        self.stats.duplicate_results += t.duplicates;
        metrics.duplicate_results.inc_by(t.duplicates);
        self.stats.unknown_order_results += t.unknown;
        self.stats.invalid_results += t.invalid;
        if t.unknown > 0 {
            metrics.drop_result("unknown_order", t.unknown);
            self.log_dropped("results", "result for an order never dispatched");
        }
        if t.invalid > 0 {
            self.config.metrics.drop_result("invalid", t.invalid);
            self.log_dropped("results", "result breaking the rules of a result");
        }
    }

    /// A worker's results arrived: it is alive, on the board.
    fn worker_heard(&self, worker_id: u64) {
        self.config.board.update(|status| {
            let id = format!("{worker_id:016x}");
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

    /// A worker's line on the dashboard.
    pub(super) fn on_worker_status(&mut self, body: &[u8]) {
        match protocol::decode::<protocol::WorkerStatus>(body) {
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
}
