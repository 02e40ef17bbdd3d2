//! The sink's live status board: what `/api/status` returns and the
//! dashboard page draws. The sink's loop writes it (a run started, its
//! progress, the queue, a worker heard from, a run finished); the HTTP
//! thread reads a copy. Nothing here holds an order's content, a key or a
//! token: only counts, run ids, inputs as the ventilator named them, and
//! worker ids and host names.
//!
//! The board is a `Mutex` touched a few times a second by the sink (never
//! per order), so it costs nothing on the hot path.

pub mod http;

use crate::report::Report;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Completed runs kept on the board (the state folder keeps every report).
pub const COMPLETED_KEPT: usize = 50;
/// Rate samples kept for the active run's chart (one a second at most).
pub const RATE_POINTS_KEPT: usize = 600;
/// Workers not heard from for this long leave the board.
pub const WORKER_FORGET_SECONDS: f64 = 60.0;

/// Everything `/api/status` returns.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub sink: SinkInfo,
    /// The run being tallied, if any.
    pub active: Option<ActiveRun>,
    /// Ventilators waiting for their turn, first come first served.
    pub queue: Vec<QueuedRun>,
    /// Runs completed by this sink process, newest first.
    pub completed: Vec<CompletedRun>,
    /// Workers heard from in the last minute, by id.
    pub workers: Vec<WorkerInfo>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SinkInfo {
    /// When this sink process started (seconds since the Unix epoch).
    pub started_unix: f64,
    /// True with `--serve`: the sink stays up run after run.
    pub serving: bool,
    /// False while the sink cannot work (its reason in `problem`).
    pub healthy: bool,
    pub problem: Option<String>,
    /// When this status was taken.
    pub now_unix: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ActiveRun {
    pub id: String,
    pub input: String,
    pub started_unix: f64,
    /// Orders tallied so far.
    pub done: u64,
    /// The run's counted lines once the input is read; until then what the
    /// ventilator expected (`total_is_estimate` for a file's estimate);
    /// `None` for a stream.
    pub total: Option<u64>,
    pub total_is_estimate: bool,
    pub orders_per_second: f64,
    pub eta_seconds: Option<f64>,
    pub in_flight: u64,
    pub redelivered: u64,
    /// Orders tallied failed (their lines go to the ventilator's dead letter).
    pub dead_letters: u64,
    /// (seconds since the Unix epoch, orders/s), oldest first.
    pub rate_history: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct QueuedRun {
    pub id: String,
    pub input: String,
    /// 1 is next.
    pub position: usize,
    pub since_unix: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompletedRun {
    pub id: String,
    pub input: String,
    pub finished_unix: f64,
    pub elapsed_seconds: f64,
    pub orders_per_second: f64,
    /// Orders by outcome: lines, paid, declined, rejected, failed, duplicate, malformed.
    pub orders: crate::report::OrderCounts,
    /// Per currency: paid orders and the amount captured, in the currency's
    /// units as an exact decimal string (amounts may pass what a
    /// JavaScript number holds exactly).
    pub payments: BTreeMap<String, PaymentSummary>,
    /// With a stock file: orders refused for want of stock, and the SKUs
    /// left with nothing available.
    pub out_of_stock_orders: Option<u64>,
    pub sold_out_skus: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PaymentSummary {
    pub orders: u64,
    pub captured: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerInfo {
    /// 16 hexadecimal digits.
    pub id: String,
    pub host: String,
    pub last_heard_unix: f64,
    pub orders_processed: u64,
    pub payments_in_flight: u64,
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Sold-out SKUs listed on the board at most (the report has them all).
const SOLD_OUT_SHOWN: usize = 20;

impl CompletedRun {
    /// The board's summary of a finished run's report.
    pub fn from_report(report: &Report, finished_unix: f64) -> CompletedRun {
        let payments = report
            .payments
            .iter()
            .map(|(currency, t)| {
                let summary = PaymentSummary {
                    orders: t.orders,
                    captured: crate::report::major_units(
                        t.captured_cents,
                        crate::report::minor_digits(currency),
                    ),
                };
                (currency.clone(), summary)
            })
            .collect();
        let sold_out_skus = report.inventory.as_ref().map_or_else(Vec::new, |inv| {
            inv.iter()
                .filter(|(_, line)| line.available <= 0)
                .take(SOLD_OUT_SHOWN)
                .map(|(sku, _)| sku.clone())
                .collect()
        });
        CompletedRun {
            id: report.run.id.clone(),
            input: report.run.input.clone(),
            finished_unix,
            elapsed_seconds: report.run.elapsed_seconds,
            orders_per_second: report.run.orders_per_second,
            orders: report.orders,
            payments,
            out_of_stock_orders: report.rejected.out_of_stock,
            sold_out_skus,
        }
    }
}

/// The board, shared between the sink's loop and the HTTP thread.
#[derive(Debug, Default)]
pub struct Board {
    status: Mutex<Status>,
}

impl Board {
    pub fn new(serving: bool) -> Arc<Board> {
        let status = Status {
            sink: SinkInfo {
                started_unix: now_unix(),
                serving,
                healthy: true,
                ..SinkInfo::default()
            },
            ..Status::default()
        };
        Arc::new(Board {
            status: Mutex::new(status),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Status> {
        // A panic elsewhere never leaves the status half-written in a way
        // that matters: it is a view, rebuilt by the next update.
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the status as of now, with workers long silent left out.
    pub fn snapshot(&self) -> Status {
        let now = now_unix();
        let mut status = self.lock().clone();
        status.sink.now_unix = now;
        status
            .workers
            .retain(|w| now - w.last_heard_unix < WORKER_FORGET_SECONDS);
        status
    }

    /// Changes the status under the lock.
    pub fn update(&self, change: impl FnOnce(&mut Status)) {
        change(&mut self.lock());
    }

    /// A run became active.
    pub fn run_started(&self, id: &str, input: &str, started_unix: f64) {
        self.update(|s| {
            s.active = Some(ActiveRun {
                id: id.to_owned(),
                input: input.to_owned(),
                started_unix,
                ..ActiveRun::default()
            });
            s.queue.retain(|q| q.id != id);
        });
    }

    /// The active run's progress; `change` fills the counts. A rate sample
    /// is kept at most once a second for the chart.
    pub fn progress(&self, change: impl FnOnce(&mut ActiveRun)) {
        self.update(|s| {
            let Some(run) = s.active.as_mut() else {
                return;
            };
            change(run);
            let now = now_unix();
            if run.rate_history.last().is_none_or(|(t, _)| now - t >= 1.0) {
                if run.rate_history.len() >= RATE_POINTS_KEPT {
                    run.rate_history.remove(0);
                }
                run.rate_history.push((now, run.orders_per_second));
            }
        });
    }

    /// The active run finished with `report`: it moves to the completed list.
    pub fn run_finished(&self, report: &Report) {
        let done = CompletedRun::from_report(report, now_unix());
        self.update(|s| {
            if s.active.as_ref().is_some_and(|a| a.id == done.id) {
                s.active = None;
            }
            s.completed.retain(|c| c.id != done.id);
            s.completed.insert(0, done);
            s.completed.truncate(COMPLETED_KEPT);
        });
    }

    /// The waiting ventilators, in the order they will run.
    pub fn set_queue(&self, queue: Vec<QueuedRun>) {
        self.update(|s| s.queue = queue);
    }

    /// A worker was heard from (inserted, or its line replaced).
    pub fn worker_heard(&self, worker: WorkerInfo) {
        self.update(|s| match s.workers.iter_mut().find(|w| w.id == worker.id) {
            Some(line) => *line = worker,
            None => {
                s.workers.push(worker);
                s.workers.sort_by(|a, b| a.id.cmp(&b.id));
            }
        });
    }

    /// The role's health, as `/healthz` reports it.
    pub fn set_problem(&self, problem: Option<String>) {
        self.update(|s| {
            s.sink.healthy = problem.is_none();
            s.sink.problem = problem;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_moves_from_queue_to_active_to_completed() {
        let board = Board::new(true);
        board.set_queue(vec![QueuedRun {
            id: "00000000000000aa".into(),
            input: "file:a.jsonl".into(),
            position: 1,
            since_unix: 1.0,
        }]);
        board.run_started("00000000000000aa", "file:a.jsonl", 2.0);
        let s = board.snapshot();
        assert!(s.queue.is_empty());
        assert_eq!(
            s.active.as_ref().map(|a| a.id.as_str()),
            Some("00000000000000aa")
        );
        board.progress(|run| {
            run.done = 5;
            run.orders_per_second = 10.0;
        });
        board.progress(|run| run.done = 6);
        let s = board.snapshot();
        let active = s.active.expect("active");
        assert_eq!(active.done, 6);
        // Two updates within a second: one chart point.
        assert_eq!(active.rate_history.len(), 1);
    }

    #[test]
    fn workers_are_replaced_by_id_and_forgotten_when_silent() {
        let board = Board::new(false);
        let now = now_unix();
        for (id, heard, processed) in [("b", now, 1), ("a", now, 2), ("b", now, 3)] {
            board.worker_heard(WorkerInfo {
                id: id.into(),
                host: "h".into(),
                last_heard_unix: heard,
                orders_processed: processed,
                payments_in_flight: 0,
            });
        }
        board.worker_heard(WorkerInfo {
            id: "c".into(),
            last_heard_unix: now - WORKER_FORGET_SECONDS - 1.0,
            ..WorkerInfo::default()
        });
        let ids: Vec<(String, u64)> = board
            .snapshot()
            .workers
            .into_iter()
            .map(|w| (w.id, w.orders_processed))
            .collect();
        assert_eq!(ids, vec![("a".into(), 2), ("b".into(), 3)]);
    }
}
