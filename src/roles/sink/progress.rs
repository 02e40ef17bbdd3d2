//! What the sink shows while it works: the progress line (redrawn on a
//! terminal, logged otherwise), the active run's counts on the dashboard's
//! board, the journal's health in the metrics and `/healthz`, and the
//! active run announced to the workers.

use super::run::ActiveRun;
use super::{Sink, Sockets};
use crate::protocol::{self, Kind};
use std::time::{Duration, Instant};

/// How often a serving sink with no run says it is waiting.
const IDLE_REMINDER: Duration = Duration::from_secs(60);
/// How often the active run is announced to the workers.
const RUN_START_EVERY: Duration = Duration::from_millis(250);
/// How often the board gets the active run's counts.
const BOARD_EVERY: Duration = Duration::from_millis(500);
/// How often the progress line is redrawn on a terminal.
const TERMINAL_EVERY: Duration = Duration::from_millis(250);

/// When progress was last shown, and the rate since.
pub(super) struct ProgressView {
    pub terminal: bool,
    last_shown: Instant,
    last_sample: (Instant, u64),
    rate: f64,
}

impl ProgressView {
    pub fn new() -> ProgressView {
        use std::io::IsTerminal;
        ProgressView {
            terminal: std::io::stderr().is_terminal(),
            last_shown: Instant::now(),
            last_sample: (Instant::now(), 0),
            rate: 0.0,
        }
    }

    /// True (and resets the clock) when `every` has passed since last shown.
    pub fn due(&mut self, every: Duration) -> bool {
        if self.last_shown.elapsed() < every {
            return false;
        }
        self.last_shown = Instant::now();
        true
    }

    /// Orders per second, smoothed over the samples.
    pub fn rate(&mut self, done: u64) -> f64 {
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

/// The progress figures of a run, as shown.
struct Shown {
    done: u64,
    /// `~T` for an estimate, `?` for a stream.
    total: String,
    /// ` (12.3%)`, or empty without a total.
    pct: String,
    eta: String,
}

impl Shown {
    fn of(run: &ActiveRun, rate: f64) -> Shown {
        let done = run.ledger.tallied();
        let shown = run.shown_total();
        let eta = match shown {
            Some((t, _)) if rate > 0.0 => format!("{:.0}s", t.saturating_sub(done) as f64 / rate),
            _ => "?".into(),
        };
        let total = match shown {
            Some((t, true)) => format!("~{t}"),
            Some((t, false)) => t.to_string(),
            None => "?".into(),
        };
        let pct = shown.map_or(String::new(), |(t, _)| {
            format!(" ({:.1}%)", 100.0 * done as f64 / t.max(1) as f64)
        });
        Shown {
            done,
            total,
            pct,
            eta,
        }
    }
}

impl Sink {
    /// Reports progress: a line redrawn in place on a terminal, a log
    /// line every `--progress-ms` otherwise.
    pub(super) fn show_progress(&mut self, view: &mut ProgressView, final_line: bool) {
        let Some(run) = &self.active else {
            return self.show_idle(view);
        };
        let every = if view.terminal {
            TERMINAL_EVERY
        } else {
            self.config.progress_every
        };
        if !final_line && !view.due(every) {
            return;
        }
        let rate = view.rate(run.ledger.tallied());
        let Shown {
            done,
            total,
            pct,
            eta,
        } = Shown::of(run, rate);
        let (in_flight, redelivered) = (run.told.in_flight, run.told.redelivered);
        if view.terminal {
            eprint!("\r\x1b[2K{done}/{total}{pct}  {rate:.0} orders/s  in flight {in_flight}  redelivered {redelivered}  ETA {eta}");
            if final_line {
                eprintln!();
            }
        } else {
            tracing::info!(
                run = %run.id,
                done,
                total,
                orders_per_second = rate.round() as u64,
                in_flight,
                redelivered,
                duplicates = self.stats.duplicate_results,
                eta,
                "progress"
            );
        }
    }

    /// With no run: a standing sink waits for hours, and says so once a minute.
    fn show_idle(&self, view: &mut ProgressView) {
        let every = if self.config.serve {
            IDLE_REMINDER
        } else {
            self.config.progress_every
        };
        if view.due(every) && !view.terminal {
            tracing::info!(queued = self.queue.len(), "waiting for a ventilator");
        }
    }

    /// Copies the active run's counts to the board, twice a second.
    pub(super) fn refresh_board(&mut self) {
        let Some(run) = &self.active else {
            return;
        };
        if !self.board_view.due(BOARD_EVERY) {
            return;
        }
        let done = run.ledger.tallied();
        let rate = self.board_view.rate(done);
        let dead_letters = run.ledger.order_counts().failed;
        let (total, estimate) = run
            .shown_total()
            .map_or((None, false), |(t, e)| (Some(t), e));
        self.config.board.progress(|view| {
            view.done = done;
            view.total = total;
            view.total_is_estimate = estimate;
            view.orders_per_second = rate;
            view.eta_seconds = total
                .filter(|_| rate > 0.0)
                .map(|t| t.saturating_sub(done) as f64 / rate);
            view.in_flight = run.told.in_flight;
            view.redelivered = run.told.redelivered;
            view.dead_letters = dead_letters;
        });
    }

    /// Mirrors the journal writer's health into the metrics and `/healthz`.
    pub(super) fn watch_journal(&mut self) {
        let failing = self
            .active
            .as_ref()
            .and_then(|run| run.commits.health.failing());
        let metrics = &self.config.metrics;
        // Only while failing, and once when it stops.
        if failing.is_some() || metrics.journal_failing.get() != 0 {
            metrics.journal_failing.set(i64::from(failing.is_some()));
            let problem = failing.map(|why| format!("journal unwritable: {why}"));
            self.config.board.set_problem(problem.clone());
            metrics.set_problem(problem);
        }
    }

    /// Tells the workers, a few times a second, the active run and where
    /// its ventilator takes credit.
    pub(super) fn announce_run_start(&mut self, s: &mut Sockets) {
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
            jobs: run.submitter.jobs.clone(),
        };
        s.publish(&protocol::frame(Kind::RunStart, run.id, &start));
    }
}
