//! The run the sink is tallying: its ledger and journal, what its
//! ventilator has told, and who submitted it; how it is loaded (created, or
//! replayed from its journal after a restart) and the report it ends with.

use super::commits::Commits;
use super::{now_unix, Sink};
use crate::journal::{self, JournalWriter, RunDir, RunMeta, Snapshot};
use crate::ledger::Ledger;
use crate::protocol::{Progress, ResultsView, RunId};
use crate::report::{Report, RunSection};
use crate::{Error, Result};
use std::collections::HashSet;
use std::fs;
use std::sync::mpsc;
use std::time::Instant;

pub(super) struct ActiveRun {
    pub id: RunId,
    pub dir: RunDir,
    pub meta: RunMeta,
    pub ledger: Ledger,
    /// Workers whose results were tallied (they are asked for a goodbye).
    pub workers: HashSet<u64>,
    /// Sink processes that took this run over from an earlier one.
    pub restarts: u64,
    pub commits: Commits,
    pub told: Told,
    pub submitter: Submitter,
}

/// What the run's ventilator has said of its progress.
#[derive(Default)]
pub(super) struct Told {
    /// Every seq below it may have been dispatched.
    pub horizon: u64,
    /// False after a restart until the ventilator's first progress report.
    pub horizon_known: bool,
    /// The counted lines, once the input is read.
    pub total: Option<u64>,
    /// What the ventilator expected before reading (`true`: an estimate),
    /// shown until `total` is known.
    pub expected: Option<(u64, bool)>,
    /// Orders at workers, and deliveries after the first.
    pub in_flight: u64,
    pub redelivered: u64,
}

/// The ventilator that submitted the run.
pub(super) struct Submitter {
    /// Its ROUTER identity, once heard.
    pub identity: Option<Vec<u8>>,
    /// False after a restart until it says hello to this sink process:
    /// acknowledgements it saw from an earlier one are not to be trusted
    /// (the journal may have come back with less), so it is told to say
    /// hello again and gets the bitmap of what is really tallied.
    pub greeted: bool,
    /// Its `--advertise`d jobs endpoint (empty: the workers' own).
    pub jobs: String,
    /// It asked for the report to be sent back (`--report`).
    pub want_report: bool,
    /// When it was last heard from.
    pub heard: Instant,
}

impl ActiveRun {
    /// Takes in the ventilator's progress report.
    pub fn heard_progress(&mut self, progress: &Progress) {
        let told = &mut self.told;
        told.horizon = told.horizon.max(progress.horizon);
        told.horizon_known = true;
        if progress.total.is_some() {
            told.total = progress.total;
        }
        told.in_flight = progress.in_flight;
        told.redelivered = progress.redelivered;
    }

    /// The total to show: the true one once the input is read, until then
    /// what the ventilator expected (`true`: an estimate).
    pub fn shown_total(&self) -> Option<(u64, bool)> {
        self.told.total.map(|t| (t, false)).or(self.told.expected)
    }

    /// Results for seqs at or past this are for orders never dispatched.
    pub fn seq_limit(&self) -> u64 {
        let told = &self.told;
        if told.horizon_known {
            told.total.unwrap_or(told.horizon).min(told.horizon)
        } else {
            told.total.unwrap_or(crate::ledger::MAX_SEQ)
        }
    }

    /// Every order tallied, and all of it durable.
    pub fn is_complete(&self) -> bool {
        self.told.total == Some(self.ledger.tallied()) && self.commits.settled()
    }

    /// The whole tally, encoded for the journal.
    pub fn snapshot(&self) -> Result<Vec<u8>> {
        Snapshot {
            ledger: self.ledger.clone(),
            workers: self.workers.iter().copied().collect(),
        }
        .encode()
    }
}

/// A run's state read back from its folder.
struct Replayed {
    ledger: Ledger,
    workers: HashSet<u64>,
    /// The journal generation to go on writing.
    generation: u64,
    /// Journal records read.
    records: u64,
}

/// What [`Sink::activate`] found.
pub(super) enum Activation {
    Active,
    /// The run was completed before: its stored report.
    Completed(Vec<u8>),
}

impl Sink {
    /// Makes `id` the active run: loads it from its journal, or creates it.
    pub(super) fn activate(&mut self, id: RunId, input: Option<&str>) -> Result<Activation> {
        let dir = RunDir::new(&self.config.state, &id.to_string());
        if let Some(report) = dir.report()? {
            let _ = fs::remove_file(self.active_file());
            return Ok(Activation::Completed(report));
        }
        let resumed = dir.exists();
        if !resumed {
            self.create_run(&dir, id, input)?;
        }
        journal::write_atomic(&self.active_file(), format!("{id}\n").as_bytes())?;
        // A serving sink has many runs: its lines name theirs (a span
        // field recorded again would be appended, not replaced).
        if !self.config.serve {
            crate::cli::record_run(&id);
        }
        let meta = dir.meta()?;
        let Replayed {
            ledger,
            workers,
            generation,
            records,
        } = self.replay(&dir, id)?;
        let restarts = if resumed { dir.count_restart()? } else { 0 };
        if resumed {
            tracing::info!(run = %id, generation, replayed = records, tallied = ledger.tallied(), restarts, "replayed the journal");
        }
        let (tx, rx) = mpsc::channel();
        let notifier = self.tickets.writer_end(&self.ctx)?;
        let writer = JournalWriter::start(&dir, generation, notifier, tx)?;
        // Compaction counts what earlier sink processes wrote too.
        let commits = Commits::new(writer, rx, dir.journal_len(generation));
        self.config
            .board
            .run_started(&id.to_string(), &meta.input, meta.started_unix);
        self.active = Some(ActiveRun {
            id,
            dir,
            meta,
            ledger,
            workers,
            restarts,
            commits,
            // A resumed run trusts results until the ventilator says how far
            // it got: they may be in flight from before the restart.
            told: Told {
                horizon_known: !resumed,
                ..Told::default()
            },
            submitter: Submitter {
                identity: None,
                greeted: !resumed,
                jobs: String::new(),
                want_report: false,
                heard: Instant::now(),
            },
        });
        Ok(Activation::Active)
    }

    /// A new run's folder, for the input its ventilator named.
    fn create_run(&self, dir: &RunDir, id: RunId, input: Option<&str>) -> Result<()> {
        let Some(input) = input else {
            return Err(Error::State(format!(
                "{} names run {id}, which has no journal",
                self.active_file().display()
            )));
        };
        dir.create(&RunMeta {
            input: input.to_owned(),
            started_unix: now_unix(),
        })
    }

    /// The run's tally and workers from its snapshot and journal.
    fn replay(&mut self, dir: &RunDir, id: RunId) -> Result<Replayed> {
        let state = std::cell::RefCell::new((Ledger::new(), HashSet::new()));
        let replayed = dir.replay(
            |snapshot| {
                let s = Snapshot::decode(snapshot)
                    .map_err(|e| Error::State(format!("run {id}: {e}")))?;
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
        if replayed.damage.is_some() {
            self.stats.journal_damage += 1;
        }
        let (ledger, workers) = state.into_inner();
        Ok(Replayed {
            ledger,
            workers,
            generation: replayed.generation,
            records: replayed.records,
        })
    }

    pub(super) fn build_report(&self, run: &ActiveRun) -> Report {
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
}
