//! A serving sink's first-come queue (`--serve`): ventilators that say
//! hello while another run is active wait here and are told their place;
//! one that stops saying hello leaves it; an active run whose ventilator
//! went silent while others wait is set aside, its journal kept.

use super::{now_unix, Sink, Sockets};
use crate::dashboard::QueuedRun;
use crate::protocol::{self, Hello, Kind, RunId};
use crate::Result;
use std::fs;
use std::time::{Duration, Instant};

/// A ventilator that waits while the sink holds one ventilator silent this
/// long leaves the queue: it gave up.
const QUEUE_SILENCE: Duration = Duration::from_secs(5);
/// While others wait, an active run whose ventilator is silent this long is
/// set aside (its journal kept: it resumes when its ventilator is back).
const ACTIVE_SILENCE: Duration = Duration::from_secs(10);

/// A ventilator waiting for its turn.
pub(super) struct Waiting {
    pub id: RunId,
    pub input: String,
    pub since_unix: f64,
    pub last_heard: Instant,
}

impl Sink {
    /// Drops from the queue the ventilators that stopped saying hello, and
    /// sets aside an active run whose ventilator went silent while others
    /// wait; mirrors the queue on the board.
    pub(super) fn tend_queue(&mut self) -> Result<()> {
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
            .is_some_and(|run| run.submitter.heard.elapsed() >= ACTIVE_SILENCE);
        if stale && !self.queue.is_empty() {
            self.set_aside()?;
        }
        if before != self.queue.len() || stale {
            self.show_queue();
        }
        Ok(())
    }

    /// The queue on the board.
    pub(super) fn show_queue(&self) {
        let queue = self
            .queue
            .iter()
            .enumerate()
            .map(|(i, w)| QueuedRun {
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
        let Some(run) = self.active.take() else {
            return Ok(());
        };
        let (id, tallied) = (run.id, run.ledger.tallied());
        let silent_seconds = run.submitter.heard.elapsed().as_secs();
        run.commits.close()?;
        let _ = fs::remove_file(self.active_file());
        self.config.board.update(|b| b.active = None);
        tracing::warn!(run = %id, tallied, silent_seconds, queued = self.queue.len(), "the active run's ventilator went silent while others wait: set aside (its journal is kept; it resumes when its ventilator says hello again)");
        Ok(())
    }

    /// A ventilator out of turn: it joins the queue (or is heard again in
    /// it) and is told its place.
    pub(super) fn queue_up(
        &mut self,
        identity: &[u8],
        id: RunId,
        hello: &Hello,
        s: &mut Sockets,
    ) -> Result<()> {
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
        s.send_to_ventilator(identity, &protocol::frame(Kind::Queued, id, &queued))
    }
}
