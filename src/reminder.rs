//! When to say that a wait goes on: the one rule every "still waiting"
//! warning follows (the sink silent, no worker connected, results the sink
//! does not take). Nothing for a wait's first stretch, one line once it
//! has lasted that long, then one line per interval while it lasts.
//!
//! Sans-IO: the caller passes the time and how long its wait has lasted,
//! and writes the line when told to.

use std::time::{Duration, Instant};

/// The rule for one kind of wait.
#[derive(Debug, Clone)]
pub struct Reminder {
    first: Duration,
    again: Duration,
    said: Option<Instant>,
}

impl Reminder {
    /// First said once the wait has lasted `first`, then every `again`.
    pub const fn new(first: Duration, again: Duration) -> Reminder {
        Reminder {
            first,
            again,
            said: None,
        }
    }

    /// Whether to say it now, the wait having lasted `lasted` at `now`.
    /// A wait shorter than the first stretch is a new wait: it starts the
    /// rule afresh.
    pub fn due(&mut self, now: Instant, lasted: Duration) -> bool {
        if lasted < self.first {
            self.said = None;
            return false;
        }
        let due = self
            .said
            .is_none_or(|at| now.saturating_duration_since(at) >= self.again);
        if due {
            self.said = Some(now);
        }
        due
    }

    /// True once this wait has been said at least once.
    pub fn spoken(&self) -> bool {
        self.said.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// The seconds, of a wait that started at 0 and is looked at every
    /// 100 ms until `until`, at which the reminder says it.
    fn said_at(reminder: &mut Reminder, t0: Instant, until: u64) -> Vec<f64> {
        (0..until * 10)
            .map(|tenth| Duration::from_millis(tenth * 100))
            .filter(|&lasted| reminder.due(t0 + lasted, lasted))
            .map(|lasted| lasted.as_secs_f64())
            .collect()
    }

    #[test]
    fn nothing_in_the_first_stretch_then_once_per_interval() {
        let mut reminder = Reminder::new(5 * S, 5 * S);
        let t0 = Instant::now();
        assert_eq!(said_at(&mut reminder, t0, 21), [5.0, 10.0, 15.0, 20.0]);
        assert!(reminder.spoken());
    }

    #[test]
    fn the_interval_may_differ_from_the_first_stretch() {
        let mut reminder = Reminder::new(2 * S, 30 * S);
        let t0 = Instant::now();
        assert_eq!(said_at(&mut reminder, t0, 70), [2.0, 32.0, 62.0]);
    }

    #[test]
    fn a_wait_that_ended_starts_the_rule_afresh() {
        let mut reminder = Reminder::new(5 * S, 5 * S);
        let t0 = Instant::now();
        assert!(reminder.due(t0 + 6 * S, 6 * S));
        // Heard at 7 s: the next wait starts then, and 3 s into it is quiet.
        assert!(!reminder.due(t0 + 10 * S, 3 * S));
        assert!(!reminder.spoken());
        // 5 s into it is said, though the last line was only 6 s ago.
        assert!(reminder.due(t0 + 12 * S, 5 * S));
    }

    #[test]
    fn a_clock_that_goes_back_says_nothing_twice() {
        let mut reminder = Reminder::new(S, S);
        let t0 = Instant::now() + 10 * S;
        assert!(reminder.due(t0, 2 * S));
        assert!(!reminder.due(t0 - S, 2 * S));
    }
}
