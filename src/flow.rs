//! The worker's side of flow control: how many orders it asks the
//! ventilator for (its credit), and the heartbeat that says it is alive.
//! Without I/O: the worker's loop asks [`CreditReporter::due`] after each
//! round and sends the [`Credit`] it returns on its jobs socket.
//!
//! A worker can hold its payments in flight (`concurrency`) plus a
//! prefetch: enough queued orders for `prefetch` of work at its measured
//! pace, at least one round (`concurrency`), at most [`MAX_PREFETCH`]. A
//! slow gateway thus gets a short queue (nothing waits long at a worker),
//! a fast one a long queue (the ventilator's answer is never waited for).

use crate::protocol::{Credit, RunId};
use crate::reminder::Reminder;
use std::time::{Duration, Instant};

/// A report at least this often, with the seqs held: the heartbeat.
pub const HEARTBEAT: Duration = Duration::from_millis(250);
/// The most orders a worker queues beyond its payments in flight.
pub const MAX_PREFETCH: u64 = 8192;
/// The pace is measured over windows this long at least.
const PACE_WINDOW: Duration = Duration::from_millis(100);
/// A silent ventilator is reported after this long...
pub const SILENCE_FIRST: Duration = Duration::from_secs(5);
/// ... and then this often.
pub const SILENCE_AGAIN: Duration = Duration::from_secs(30);

/// Counts what a worker received and finished, and says when to report.
#[derive(Debug, Clone)]
pub struct CreditReporter {
    concurrency: u64,
    prefetch: Duration,
    received: u64,
    finished: u64,
    /// Orders finished per second, smoothed.
    pace: f64,
    pace_since: (Instant, u64),
    last_report: Option<(Instant, u64, u64)>,
    run: RunId,
    /// When the ventilator last sent anything (it answers every heartbeat),
    /// and when its silence was last reported.
    heard: Instant,
    silence: Reminder,
    /// Stopping: asks for nothing more.
    closed: bool,
    /// Orders held but parked: backing off before a retry. They keep no
    /// gateway slot busy, so they do not take room from new work.
    parked: u64,
}

impl CreditReporter {
    pub fn new(concurrency: usize, prefetch: Duration, now: Instant) -> CreditReporter {
        CreditReporter {
            concurrency: concurrency.max(1) as u64,
            prefetch,
            received: 0,
            finished: 0,
            pace: 0.0,
            pace_since: (now, 0),
            last_report: None,
            run: RunId(0),
            heard: now,
            silence: Reminder::new(SILENCE_FIRST, SILENCE_AGAIN),
            parked: 0,
            closed: false,
        }
    }

    /// The worker is stopping: from now on it reports no room, at once.
    pub fn close(&mut self) {
        self.closed = true;
        self.last_report = None;
    }

    /// The jobs connection is new: the next report is due at once, so a
    /// ventilator that binds now hears of this worker's room without
    /// waiting for the heartbeat.
    pub fn reconnected(&mut self) {
        self.last_report = None;
    }

    /// A frame came from the ventilator.
    pub fn heard(&mut self, now: Instant) {
        self.heard = now;
    }

    /// How long the ventilator has been silent.
    pub fn silence(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.heard)
    }

    /// The silence to report now, if a warning is due: after
    /// [`SILENCE_FIRST`], then every [`SILENCE_AGAIN`].
    pub fn silence_warning(&mut self, now: Instant) -> Option<Duration> {
        let silent = self.silence(now);
        self.silence.due(now, silent).then_some(silent)
    }

    /// `n` orders of `run` arrived.
    pub fn received(&mut self, n: usize, run: RunId) {
        self.received += n as u64;
        self.run = run;
    }

    /// The run of the last job received (0 before any): the credit frame's run.
    pub fn run(&self) -> RunId {
        self.run
    }

    /// How many held orders are backing off before a retry (they are held,
    /// so never sent elsewhere, but use no gateway slot).
    pub fn set_parked(&mut self, parked: usize) {
        self.parked = parked as u64;
    }

    /// Orders this worker can hold now: its payments in flight, the
    /// prefetch, and the orders parked in back-off on top (a slow PSP's
    /// retries must not starve the gateway slots of new work).
    pub fn capacity(&self) -> u64 {
        if self.closed {
            return 0;
        }
        let ahead = (self.pace * self.prefetch.as_secs_f64()) as u64;
        let ahead = ahead.clamp(self.concurrency, MAX_PREFETCH.max(self.concurrency));
        self.concurrency + ahead + self.parked
    }

    /// The report to send now, if one is due: when a quarter of the
    /// capacity was finished since the last one, or at every heartbeat
    /// (then with the seqs held, from `holds`). `held` is how many orders
    /// the worker holds (received and no result sent yet).
    pub fn due(
        &mut self,
        now: Instant,
        held: usize,
        holds: impl FnOnce() -> Vec<u64>,
    ) -> Option<Credit> {
        self.finished = self.received.saturating_sub(held as u64);
        self.measure(now);
        let capacity = self.capacity();
        let heartbeat = self
            .last_report
            .is_none_or(|(at, _, _)| now.saturating_duration_since(at) >= HEARTBEAT);
        let freed = self.last_report.is_some_and(|(_, finished, cap)| {
            self.finished - finished >= (capacity / 4).max(1) || capacity > cap
        });
        if !heartbeat && !freed {
            return None;
        }
        self.last_report = Some((now, self.finished, capacity));
        Some(Credit {
            capacity,
            received: self.received,
            finished: self.finished,
            holds: heartbeat.then(holds),
        })
    }

    fn measure(&mut self, now: Instant) {
        let (since, finished) = self.pace_since;
        let elapsed = now.saturating_duration_since(since);
        if elapsed < PACE_WINDOW {
            return;
        }
        let sample = (self.finished - finished) as f64 / elapsed.as_secs_f64();
        self.pace = if self.pace == 0.0 {
            sample
        } else {
            0.5 * self.pace + 0.5 * sample
        };
        self.pace_since = (now, self.finished);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_call_reports_with_holds_then_only_when_room_grew_or_at_heartbeat() {
        let t0 = Instant::now();
        let mut c = CreditReporter::new(8, Duration::from_millis(20), t0);
        let first = c.due(t0, 0, Vec::new).unwrap();
        assert_eq!(first.capacity, 16, "one round of payments plus one queued");
        assert_eq!(first.holds, Some(vec![]));
        c.received(16, RunId(3));
        assert_eq!(c.due(t0, 16, || vec![1]), None, "nothing freed yet");
        let freed = c.due(t0 + Duration::from_millis(1), 12, Vec::new).unwrap();
        assert_eq!((freed.received, freed.finished), (16, 4));
        assert_eq!(freed.holds, None, "not a heartbeat");
        let beat = c
            .due(t0 + Duration::from_millis(1) + HEARTBEAT, 12, || {
                vec![7; 12]
            })
            .unwrap();
        assert_eq!(beat.holds.map(|h| h.len()), Some(12));
    }

    #[test]
    fn a_silent_ventilator_is_reported_after_5_s_then_every_30_s() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut c = CreditReporter::new(8, Duration::from_millis(20), t0);
        assert_eq!(c.silence_warning(s(4)), None);
        assert_eq!(c.silence_warning(s(5)), Some(Duration::from_secs(5)));
        assert_eq!(c.silence_warning(s(20)), None);
        assert_eq!(c.silence_warning(s(35)), Some(Duration::from_secs(35)));
        c.heard(s(36));
        assert_eq!(c.silence(s(37)), Duration::from_secs(1));
        assert_eq!(c.silence_warning(s(40)), None);
    }

    #[test]
    fn a_new_connection_is_told_the_room_at_once_not_at_the_next_heartbeat() {
        let t0 = Instant::now();
        let mut c = CreditReporter::new(8, Duration::from_millis(20), t0);
        c.due(t0, 0, Vec::new).unwrap();
        let soon = t0 + Duration::from_millis(1);
        assert_eq!(
            c.due(soon, 0, Vec::new),
            None,
            "idle: the heartbeat is 250 ms away"
        );
        c.reconnected();
        let report = c.due(soon, 0, Vec::new).unwrap();
        assert_eq!((report.capacity, report.holds), (16, Some(vec![])));
        assert_eq!(
            c.due(soon, 0, Vec::new),
            None,
            "once, then at the heartbeat again"
        );
    }

    #[test]
    fn a_closed_reporter_says_at_once_that_it_takes_nothing() {
        let t0 = Instant::now();
        let mut c = CreditReporter::new(8, Duration::from_millis(20), t0);
        c.due(t0, 0, Vec::new);
        c.close();
        let last = c.due(t0, 3, || vec![1, 2, 3]).unwrap();
        assert_eq!((last.capacity, last.holds), (0, Some(vec![1, 2, 3])));
    }

    #[test]
    fn capacity_follows_the_pace_within_bounds() {
        let t0 = Instant::now();
        let mut c = CreditReporter::new(64, Duration::from_millis(20), t0);
        // A slow gateway: 320 orders/s is 6 orders per 20 ms, less than a round.
        c.received(32, RunId(1));
        c.due(t0 + Duration::from_millis(100), 0, Vec::new);
        assert_eq!(c.capacity(), 128);
        // A fast one: a million a second is capped.
        c.received(1_000_000, RunId(1));
        c.due(t0 + Duration::from_millis(1100), 0, Vec::new);
        assert_eq!(c.capacity(), 64 + MAX_PREFETCH);
    }

    #[test]
    fn orders_parked_in_back_off_do_not_take_room_from_new_work() {
        let t0 = Instant::now();
        let mut c = CreditReporter::new(16, Duration::from_millis(20), t0);
        let base = c.capacity();
        c.set_parked(40);
        assert_eq!(c.capacity(), base + 40);
        c.close();
        assert_eq!(c.capacity(), 0, "a closing worker asks for nothing");
    }
}
