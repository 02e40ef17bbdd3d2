//! The active run's group commit: tallied records wait in `pending`, go to
//! the journal writer (its own thread) whenever it is idle, and their
//! acknowledgements are released only once the writer says the records are
//! durable (its ticket arrives on the inproc notify socket). Repeats (results
//! already tallied) need nothing written: their acks go out as soon as
//! everything written before them is durable.

use crate::journal::{JournalHealth, JournalWriter, Synced};
use crate::protocol::Acks;
use crate::Result;
use std::collections::VecDeque;
use std::sync::{mpsc, Arc};

/// What a run has handed to its journal, and the acks waiting on it.
pub(super) struct Commits {
    pub writer: JournalWriter,
    /// Sync reports from the writer (count, time per fsync).
    pub synced: mpsc::Receiver<Synced>,
    /// Whether writes fail (a full disk), for the metrics and `/healthz`.
    pub health: Arc<JournalHealth>,
    /// Records tallied and not yet handed to the writer.
    pub pending_records: Vec<u8>,
    /// Acks for what is in `pending_records` (and repeats).
    pub pending_acks: Acks,
    /// The writer's ticket for the last hand-over, and the last made durable.
    pub issued: u64,
    pub durable: u64,
    /// Acks released when their ticket is durable, oldest first.
    pub waiting_acks: VecDeque<(u64, Acks)>,
    /// Journal bytes since the last snapshot (earlier sink processes' too).
    pub bytes: u64,
}

/// What [`Commits::hand_over`] did.
pub(super) enum HandOver {
    /// Nothing to do, or the writer is busy (the next sync takes it all).
    Nothing,
    /// Records went to the writer; their acks wait for its ticket.
    Written,
    /// Only repeats, and nothing is being written: these acks may go now.
    Release(Acks),
}

impl Commits {
    pub fn new(writer: JournalWriter, synced: mpsc::Receiver<Synced>, bytes: u64) -> Commits {
        Commits {
            health: writer.health(),
            writer,
            synced,
            pending_records: Vec::new(),
            pending_acks: Acks::default(),
            issued: 0,
            durable: 0,
            waiting_acks: VecDeque::new(),
            bytes,
        }
    }

    /// True while nothing handed over is waiting for its sync.
    pub fn idle(&self) -> bool {
        self.issued == self.durable
    }

    /// True when everything tallied is durable.
    pub fn settled(&self) -> bool {
        self.pending_records.is_empty() && self.idle()
    }

    /// Hands pending records to the writer if it is idle (group commit).
    pub fn hand_over(&mut self) -> Result<HandOver> {
        if !self.pending_records.is_empty() {
            if !self.idle() {
                return Ok(HandOver::Nothing);
            }
            let records = std::mem::take(&mut self.pending_records);
            self.bytes += records.len() as u64;
            self.issued = self.writer.append(records)?;
            let acks = std::mem::take(&mut self.pending_acks);
            self.waiting_acks.push_back((self.issued, acks));
            return Ok(HandOver::Written);
        }
        if self.pending_acks.is_empty() {
            return Ok(HandOver::Nothing);
        }
        let acks = std::mem::take(&mut self.pending_acks);
        if self.idle() {
            return Ok(HandOver::Release(acks));
        }
        self.waiting_acks.push_back((self.issued, acks));
        Ok(HandOver::Nothing)
    }

    /// Replaces the journal with `snapshot` (the whole tally).
    pub fn compact(&mut self, snapshot: Vec<u8>) -> Result<()> {
        self.issued = self.writer.compact(snapshot)?;
        self.bytes = 0;
        Ok(())
    }

    /// The writer made everything up to `ticket` durable: the acks that
    /// may go now (empty if none).
    pub fn made_durable(&mut self, ticket: u64) -> Acks {
        self.durable = self.durable.max(ticket);
        let mut merged = Acks::default();
        while self
            .waiting_acks
            .front()
            .is_some_and(|(t, _)| *t <= self.durable)
        {
            let (_, acks) = self.waiting_acks.pop_front().expect("front");
            merged.ranges.extend(acks.ranges);
            merged.failures.extend(acks.failures);
        }
        merged
    }

    /// Writes what is pending and closes the journal (stop, set aside).
    pub fn close(mut self) -> Result<()> {
        if !self.pending_records.is_empty() {
            let records = std::mem::take(&mut self.pending_records);
            self.writer.append(records)?;
        }
        self.writer.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{RunDir, RunMeta};

    /// A writer on a fresh run folder, and the PAIR its tickets arrive on.
    fn commits(name: &str) -> (Commits, zmq::Socket, zmq::Context, std::path::PathBuf) {
        let state = std::env::temp_dir().join(format!("og-commits-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        let dir = RunDir::new(&state, "00000000000000aa");
        dir.create(&RunMeta {
            input: "test".into(),
            started_unix: 0.0,
        })
        .unwrap();
        let ctx = zmq::Context::new();
        let tickets = ctx.socket(zmq::PAIR).unwrap();
        let ep = format!("inproc://commits-{name}");
        tickets.bind(&ep).unwrap();
        let notifier = ctx.socket(zmq::PAIR).unwrap();
        notifier.connect(&ep).unwrap();
        let (tx, rx) = mpsc::channel();
        let writer = JournalWriter::start(&dir, 0, notifier, tx).unwrap();
        (Commits::new(writer, rx, 0), tickets, ctx, state)
    }

    /// The next ticket the writer made durable (fails after 10 s).
    fn next_ticket(tickets: &zmq::Socket) -> u64 {
        tickets.set_rcvtimeo(10_000).unwrap();
        let msg = tickets.recv_bytes(0).expect("a ticket within 10 s");
        u64::from_le_bytes(msg[..8].try_into().unwrap())
    }

    fn acked(acks: &Acks) -> Vec<(u64, u64)> {
        acks.ranges.clone()
    }

    #[test]
    fn acks_wait_for_the_sync_that_covers_their_records() {
        let (mut c, tickets, _ctx, state) = commits("group");
        crate::journal::push_record(&mut c.pending_records, b"first");
        c.pending_acks.push(1);
        c.pending_acks.push(2);
        assert!(matches!(c.hand_over().unwrap(), HandOver::Written));
        assert!(!c.idle());

        // The writer is busy: the next records wait for the next sync.
        crate::journal::push_record(&mut c.pending_records, b"second");
        c.pending_acks.push(3);
        assert!(matches!(c.hand_over().unwrap(), HandOver::Nothing));
        assert!(!c.pending_records.is_empty());

        // The first sync releases the first acks only.
        let first = next_ticket(&tickets);
        assert_eq!(acked(&c.made_durable(first)), vec![(1, 2)]);
        assert!(c.idle() && !c.settled());
        assert!(matches!(c.hand_over().unwrap(), HandOver::Written));
        let second = next_ticket(&tickets);
        assert_eq!(acked(&c.made_durable(second)), vec![(3, 1)]);
        assert!(c.settled());
        c.close().unwrap();
        let _ = std::fs::remove_dir_all(&state);
    }

    #[test]
    fn repeats_go_at_once_when_nothing_is_being_written_and_wait_otherwise() {
        let (mut c, tickets, _ctx, state) = commits("repeats");
        c.pending_acks.push(7);
        match c.hand_over().unwrap() {
            HandOver::Release(acks) => assert_eq!(acked(&acks), vec![(7, 1)]),
            _ => panic!("repeats with nothing written should go at once"),
        }
        // While a write is in progress, a repeat may be of an order whose
        // tally is in it: it waits for that sync.
        crate::journal::push_record(&mut c.pending_records, b"new");
        c.pending_acks.push(8);
        assert!(matches!(c.hand_over().unwrap(), HandOver::Written));
        c.pending_acks.push(9);
        assert!(matches!(c.hand_over().unwrap(), HandOver::Nothing));
        let ticket = next_ticket(&tickets);
        assert_eq!(acked(&c.made_durable(ticket)), vec![(8, 1), (9, 1)]);
        assert!(matches!(c.hand_over().unwrap(), HandOver::Nothing));
        c.close().unwrap();
        let _ = std::fs::remove_dir_all(&state);
    }
}
