//! The end of a run: the report (in the run's folder, at `--report`, on the
//! board, back to a ventilator that asked), "run over" to the workers until
//! each one heard from has said goodbye, and stopping on a signal with the
//! journal durable.

use super::{Sink, SinkExit, Sockets};
use crate::journal::{self, RunDir};
use crate::protocol::{self, Header, Hello, Kind, RunId};
use crate::report::Report;
use crate::{transport, Result};
use std::collections::HashSet;
use std::fs;
use std::time::{Duration, Instant};

/// How often "run over" is published while the sink waits for goodbyes.
const RUN_OVER_EVERY: Duration = Duration::from_millis(100);

impl Sink {
    /// The active run is complete: its report everywhere it goes, and the
    /// workers told.
    pub(super) fn finish(&mut self, s: &mut Sockets) -> Result<Report> {
        let run = self.active.take().expect("active run");
        let report = self.build_report(&run);
        journal::write_atomic(&run.dir.report_path(), report.to_json().as_bytes())?;
        let _ = fs::remove_file(self.active_file());
        let (id, workers, submitter) = (run.id, run.workers, run.submitter);
        run.commits.close()?;
        self.config.board.run_finished(&report);
        self.publish_report(&report)?;
        tracing::info!(run = %id, lines = report.orders.lines, seconds = format!("{:.2}", report.run.elapsed_seconds), "run complete");
        if let Some(v) = submitter.identity.as_deref() {
            let json = report.to_json();
            let sent = Some(json.as_bytes()).filter(|_| submitter.want_report);
            self.reply_complete(s, v, id, sent)?;
        }
        self.announce_run_over(id, s, &workers)?;
        Ok(report)
    }

    /// Writes the report to `--report` (or `STATE/report.json`) and prints its table.
    pub(super) fn publish_report(&self, report: &Report) -> Result<()> {
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

    /// Tells the workers the run is over, and waits until every worker in
    /// `workers` has said goodbye (they do at once), or for `run_over_for`
    /// at most for those that stay silent. Meanwhile a ventilator still
    /// asking is answered.
    pub(super) fn announce_run_over(
        &mut self,
        id: RunId,
        s: &mut Sockets,
        workers: &HashSet<u64>,
    ) -> Result<()> {
        let over = protocol::frame(Kind::RunOver, id, &protocol::Empty);
        let mut waiting = workers.clone();
        let deadline = Instant::now() + self.config.run_over_for;
        let mut last_published: Option<Instant> = None;
        loop {
            if last_published.is_none_or(|t| t.elapsed() >= RUN_OVER_EVERY) {
                s.publish(&over);
                last_published = Some(Instant::now());
            }
            self.answer_late_ventilators(id, s)?;
            while let Some((header, body)) = s.results.recv()? {
                if let Some(worker) = goodbye(header, body, id) {
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
                s.results.socket().as_poll_item(zmq::POLLIN),
                s.acks.socket().as_poll_item(zmq::POLLIN),
            ];
            transport::poll(&mut items, 20)?;
        }
    }

    /// While the sink waits for goodbyes: whatever a ventilator of run
    /// `id` sends is answered "complete" (with the report if it asks).
    fn answer_late_ventilators(&mut self, id: RunId, s: &mut Sockets) -> Result<()> {
        let mut identity = zmq::Message::new();
        while let Some((header, body)) = s.acks.recv_routed(&mut identity)? {
            let report = if wants_report(header, body, id) {
                RunDir::new(&self.config.state, &id.to_string()).report()?
            } else {
                None
            };
            self.reply_complete(s, &identity, id, report.as_deref())?;
        }
        Ok(())
    }

    /// Stop requested: make what was tallied durable, then exit.
    pub(super) fn stop(&mut self) -> Result<SinkExit> {
        if let Some(run) = self.active.take() {
            let (id, tallied) = (run.id, run.ledger.tallied());
            run.commits.close()?;
            tracing::info!(run = %id, tallied, "stopped; the journal is durable, restart to resume");
            return Ok(SinkExit::Stopped);
        }
        if self.config.serve {
            tracing::info!("stopped; no run was active");
            return Ok(SinkExit::Idle);
        }
        Ok(SinkExit::Stopped)
    }
}

/// True when `msg` is a hello for run `id` that asks for the report.
fn wants_report(header: Header, body: &[u8], id: RunId) -> bool {
    header.kind == Kind::Hello
        && header.run == id
        && protocol::decode::<Hello>(body).is_ok_and(|h| h.want_report)
}

/// The worker id of a worker's goodbye for run `id`, if this frame is one.
fn goodbye(header: Header, body: &[u8], id: RunId) -> Option<u64> {
    if header.kind != Kind::Bye || header.run != id {
        return None;
    }
    protocol::decode::<protocol::Bye>(body)
        .ok()
        .map(|b| b.worker_id)
}
