//! The dispatch core, without I/O: which orders go to which worker, when,
//! and what happens to an order whose worker is gone. Its methods take
//! `now` and an event and return [`Action`]s; the run loop in `mod.rs`
//! moves the bytes.
//!
//! # Credit
//! Jobs travel on a ROUTER (ventilator, binds) ↔ DEALER (workers, connect)
//! pair rather than PUSH/PULL: the ventilator must address one worker (the
//! one with room), and hear back from each on the same connection. Each
//! worker reports [`Credit`]: how many orders it can hold (`capacity`), how
//! many it has received and finished. The ventilator counts what it sent
//! to it, so `capacity - (sent - finished)` is the room left, counting
//! orders still on the way. Orders in flight are thus what the workers can
//! hold, never a guess from acknowledgement delays.
//!
//! # Where an order is
//! [`Place`]: queued in a lane; held by a worker; *answered* (the worker no
//! longer holds it, per its last `holds` list: its result is on the way to
//! the sink); or, for the ventilator's own verdicts, sent to the sink.
//!
//! # Rules (each has a unit test below)
//! - An order held by a live worker is never resent, however slow it is.
//! - A worker is gone when it is silent past `liveness` while the sink
//!   answers, or when its connection is closed; its orders are then sent
//!   again. The jobs socket says that *a* connection closed, not whose: the
//!   core then asks for a [`Action::Probe`] of each worker silent past
//!   `quick_liveness`, and a probe that cannot be sent (ROUTER_MANDATORY)
//!   names the crashed worker ([`Dispatch::on_unreachable`]).
//! - A *loss* is an order whose worker's connection closed (a crash closes
//!   it; a frozen worker's stays open) while the sink was answering. A gone
//!   worker's orders are first *suspects* for `quick_liveness` of the sink
//!   answering: the worker may have finished some since its last `holds`,
//!   and their acknowledgements clear them; only the rest go out again
//!   (so an order whose result is on the way, unacknowledged after that
//!   grace, counts as lost too: it cannot be told from one held). Lost
//!   orders go out again in small *isolated* groups (the
//!   worker finishes everything else first), on their last delivery alone
//!   in the grid; after `max_deliveries` losses the order is poison:
//!   dead-lettered and tallied `failed`. Orders of a frozen worker are
//!   only late: sent again with the stream, not counted.
//! - An answered order (or a verdict) not acknowledged within
//!   `ack_timeout` while the sink answers is sent again (its result was
//!   lost on the way), with the stream.

use super::slots::SeqSlots;
use crate::fasthash::SeqMap;
use crate::protocol::{Acks, Credit};
use crate::rules::Outcome;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A worker, as the run loop names it (it maps ROUTER identities to these).
pub type Peer = u64;

/// Orders per isolated group.
pub const GROUP_SIZE: usize = 32;
/// Isolated groups in flight at once.
pub const GROUPS_IN_FLIGHT: usize = 4;
/// One order in this many (by seq) is timed for the latency histogram.
pub const LATENCY_SAMPLE: u64 = 16;
/// The seqs the order table's ring spans (four default windows, about
/// 10 MiB); older orders still held move to a map (see [`SeqSlots`]).
const RING_SPAN: usize = 1 << 17;

/// The core's tuning.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Orders per job frame at most.
    pub batch: usize,
    /// Losses before an order is given up as poison.
    pub max_deliveries: u8,
    /// A worker silent this long (while the sink answers) is gone.
    pub liveness: Duration,
    /// ... or this long once a jobs connection closed after it was heard.
    pub quick_liveness: Duration,
    /// An answered order or verdict not acknowledged this long is resent.
    pub ack_timeout: Duration,
}

/// What an order is: a job for a worker, or the ventilator's own verdict.
#[derive(Debug, Clone)]
pub enum Payload {
    /// Encoded job `bytes[start..end]` (bytes shared by one reader batch).
    Job {
        bytes: Arc<Vec<u8>>,
        start: u32,
        end: u32,
    },
    Local(Outcome),
    /// A result record the reader encoded whole (an on_hand record).
    Record(Box<[u8]>),
}

/// Where an order is (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Queued,
    Held {
        peer: Peer,
        /// The worker's count of orders sent to it before this one.
        index: u64,
        sent_at: Instant,
    },
    Answered {
        since: Instant,
    },
    /// Its worker is gone; sent again after a grace unless acknowledged.
    Suspect {
        lost: bool,
    },
    /// A verdict sent to the sink.
    Told {
        at: Instant,
    },
}

#[derive(Debug, Clone)]
struct Slot {
    line: u64,
    payload: Payload,
    place: Place,
    /// Sends so far (1 after the first).
    deliveries: u32,
    losses: u8,
    read_at: Instant,
    group: Option<u64>,
}

/// One worker's account.
#[derive(Debug, Clone)]
struct Account {
    capacity: u64,
    received: u64,
    finished: u64,
    /// Orders sent to it (counted from its `received` when first heard).
    sent: u64,
    last_heard: Instant,
    /// Seqs sent to it that may still be held (pruned on `holds`).
    assigned: Vec<u64>,
    /// Probed since it was last heard.
    probed: bool,
}

impl Account {
    fn room(&self) -> u64 {
        self.capacity
            .saturating_sub(self.sent.saturating_sub(self.finished))
    }
}

/// What the run loop must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send these orders to `to` in one job frame.
    Jobs {
        to: Peer,
        isolate: bool,
        seqs: Vec<u64>,
    },
    /// Send these verdicts to the sink.
    Locals(Vec<u64>),
    /// Write a poison order to the dead-letter file.
    DeadLetter { line: u64, reason: String },
    /// Send `to` an empty job frame: if its connection is closed, the send
    /// fails and [`Dispatch::on_unreachable`] says so.
    Probe(Peer),
}

/// Counters for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub dispatched: u64,
    pub redelivered: u64,
    pub poisoned: u64,
    pub acked: u64,
    pub lost_workers: u64,
}

/// The dispatch core.
pub struct Dispatch {
    config: DispatchConfig,
    orders: SeqSlots<Slot>,
    workers: SeqMap<Peer, Account>,
    lanes: Lanes,
    /// Answered orders and told verdicts, by the time they were last touched.
    waiting_acks: VecDeque<(Instant, u64)>,
    /// Orders of gone workers, by the time they became suspects.
    suspects: VecDeque<(Instant, u64)>,
    last_sink: Option<Instant>,
    /// When the sink last answered again after a silence: overdue
    /// acknowledgements are counted from then (it has a backlog first).
    sink_back: Option<Instant>,
    last_disconnect: Option<Instant>,
    counts: Counts,
    next_group: u64,
    /// Round-robin start among workers.
    cursor: usize,
}

/// Orders waiting to be sent, by lane.
#[derive(Debug, Default)]
struct Lanes {
    fresh: VecDeque<u64>,
    /// Late, not lost: sent again with the stream, ahead of it.
    retry: VecDeque<u64>,
    groups: VecDeque<u64>,
    singles: VecDeque<u64>,
    locals: Vec<u64>,
    /// Groups in flight: their unresolved member counts.
    groups_in_flight: SeqMap<u64, usize>,
    single_in_flight: Option<u64>,
}

impl Dispatch {
    pub fn new(config: DispatchConfig) -> Dispatch {
        Dispatch {
            config,
            orders: SeqSlots::new(RING_SPAN),
            workers: SeqMap::default(),
            lanes: Lanes::default(),
            waiting_acks: VecDeque::new(),
            suspects: VecDeque::new(),
            last_sink: None,
            sink_back: None,
            last_disconnect: None,
            counts: Counts::default(),
            next_group: 0,
            cursor: 0,
        }
    }

    /// Orders not yet acknowledged.
    pub fn len(&self) -> usize {
        self.orders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Live workers.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Orders at workers or on their way there.
    pub fn at_workers(&self) -> u64 {
        self.workers
            .values()
            .map(|a| a.sent.saturating_sub(a.finished))
            .sum()
    }

    /// The room every live worker reported.
    pub fn capacity(&self) -> u64 {
        self.workers.values().map(|a| a.capacity).sum()
    }

    /// A job read from the input, queued with the stream.
    pub fn admit_job(&mut self, now: Instant, seq: u64, line: u64, payload: Payload) {
        self.insert(now, seq, line, payload);
        self.lanes.fresh.push_back(seq);
    }

    /// A verdict of the ventilator's own, to tell the sink.
    pub fn admit_local(&mut self, now: Instant, seq: u64, line: u64, outcome: Outcome) {
        self.insert(now, seq, line, Payload::Local(outcome));
        self.lanes.locals.push(seq);
    }

    /// A result record of the ventilator's own (the stock file's on_hand), to tell the sink.
    pub fn admit_record(&mut self, now: Instant, seq: u64, record: Box<[u8]>) {
        self.insert(now, seq, 0, Payload::Record(record));
        self.lanes.locals.push(seq);
    }

    fn insert(&mut self, now: Instant, seq: u64, line: u64, payload: Payload) {
        let slot = Slot {
            line,
            payload,
            place: Place::Queued,
            deliveries: 0,
            losses: 0,
            read_at: now,
            group: None,
        };
        self.orders.insert(seq, slot);
    }

    /// The encoded job of `seq`, while it is not acknowledged.
    pub fn job(&self, seq: u64) -> Option<&[u8]> {
        match &self.orders.get(&seq)?.payload {
            Payload::Job { bytes, start, end } => Some(&bytes[*start as usize..*end as usize]),
            Payload::Local(_) | Payload::Record(_) => None,
        }
    }

    /// The verdict of `seq`, while it is not acknowledged.
    pub fn local(&self, seq: u64) -> Option<Outcome> {
        match self.orders.get(&seq)?.payload {
            Payload::Local(o) => Some(o),
            Payload::Job { .. } | Payload::Record(_) => None,
        }
    }

    /// The input line of `seq`, while it is not acknowledged.
    pub fn line(&self, seq: u64) -> Option<u64> {
        self.orders.get(&seq).map(|slot| slot.line)
    }

    /// The whole result record of `seq`, while it is not acknowledged.
    pub fn record(&self, seq: u64) -> Option<&[u8]> {
        match &self.orders.get(&seq)?.payload {
            Payload::Record(r) => Some(r),
            _ => None,
        }
    }

    /// Every order not yet acknowledged.
    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.orders.keys()
    }

    /// The sink came back as a new incarnation: what it was told, or what
    /// workers sent it and it has not acknowledged, may be lost with the old
    /// one. Sends those again now; what workers hold will reach the new one.
    pub fn on_sink_restart(&mut self, now: Instant) {
        self.last_sink = Some(now);
        for (seq, slot) in self.orders.iter_mut() {
            match slot.place {
                Place::Answered { .. } => self.lanes.retry.push_back(seq),
                Place::Told { .. } => self.lanes.locals.push(seq),
                Place::Queued | Place::Held { .. } | Place::Suspect { .. } => continue,
            }
            slot.place = Place::Queued;
            self.lanes.resolve_isolated(seq, slot.group.take());
        }
    }

    /// Where `seq` is (none once acknowledged).
    pub fn place(&self, seq: u64) -> Option<Place> {
        self.orders.get(&seq).map(|s| s.place)
    }

    /// The sink answered (anything for this run).
    pub fn on_sink_heard(&mut self, now: Instant) {
        if !self.sink_answering(now) {
            self.sink_back = Some(now);
        }
        self.last_sink = Some(now);
    }

    /// A connection to the jobs socket closed (which worker's is unknown).
    pub fn on_disconnect(&mut self, now: Instant) {
        self.last_disconnect = Some(now);
    }

    /// A worker's credit report.
    pub fn on_credit(&mut self, now: Instant, peer: Peer, credit: &Credit) {
        let account = self.workers.entry(peer).or_insert_with(|| Account {
            capacity: 0,
            received: credit.received,
            finished: credit.received,
            sent: credit.received,
            last_heard: now,
            assigned: Vec::new(),
            probed: false,
        });
        account.capacity = credit.capacity;
        account.received = account.received.max(credit.received);
        account.finished = account.finished.max(credit.finished);
        account.last_heard = now;
        account.probed = false;
        if let Some(holds) = &credit.holds {
            self.prune(now, peer, holds);
        }
    }

    /// Orders the worker received and no longer holds are with the sink.
    fn prune(&mut self, now: Instant, peer: Peer, holds: &[u64]) {
        let Some(account) = self.workers.get_mut(&peer) else {
            return;
        };
        let held: std::collections::HashSet<u64> = holds.iter().copied().collect();
        let received = account.received;
        let orders = &mut self.orders;
        let waiting = &mut self.waiting_acks;
        account.assigned.retain(|seq| {
            let Some(slot) = orders.get_mut(seq) else {
                return false;
            };
            match slot.place {
                Place::Held { peer: p, index, .. } if p == peer => {
                    if index < received && !held.contains(seq) {
                        slot.place = Place::Answered { since: now };
                        waiting.push_back((now, *seq));
                        false
                    } else {
                        true
                    }
                }
                _ => false,
            }
        });
    }

    /// The sink acknowledged these orders. Returns the delay from line read
    /// to acknowledged of one job in [`LATENCY_SAMPLE`] (by seq), for the
    /// histogram: a sample, so that it costs nothing per order.
    pub fn on_acks(&mut self, now: Instant, acks: &Acks) -> Vec<Duration> {
        let mut latencies = Vec::new();
        for seq in acks.seqs() {
            let Some(slot) = self.orders.remove(&seq) else {
                continue;
            };
            self.counts.acked += 1;
            self.lanes.resolve_isolated(seq, slot.group);
            if seq % LATENCY_SAMPLE == 0 && matches!(slot.payload, Payload::Job { .. }) {
                latencies.push(now.saturating_duration_since(slot.read_at));
            }
        }
        latencies
    }

    /// A send to `peer` failed because its connection is gone: it is gone,
    /// crashed, and these undelivered orders go back to their lanes.
    pub fn on_unreachable(&mut self, now: Instant, peer: Peer, seqs: &[u64]) -> Vec<Action> {
        self.unsend(peer, seqs);
        self.last_disconnect = Some(now);
        self.worker_gone(now, peer, true);
        self.settle(now)
    }

    /// Orders of a frame that could not be sent now go back, not counted.
    pub fn unsend(&mut self, peer: Peer, seqs: &[u64]) {
        if let Some(account) = self.workers.get_mut(&peer) {
            account.sent = account.sent.saturating_sub(seqs.len() as u64);
        }
        for &seq in seqs.iter().rev() {
            let Some(slot) = self.orders.get_mut(&seq) else {
                continue;
            };
            slot.place = Place::Queued;
            slot.deliveries = slot.deliveries.saturating_sub(1);
            self.counts.dispatched = self.counts.dispatched.saturating_sub(1);
            if slot.deliveries > 0 {
                self.counts.redelivered = self.counts.redelivered.saturating_sub(1);
            }
            let group = slot.group.take();
            let losses = slot.losses;
            self.lanes.resolve_isolated(seq, group);
            let lane = if losses == 0 {
                &mut self.lanes.retry
            } else if losses + 1 >= self.config.max_deliveries {
                &mut self.lanes.singles
            } else {
                &mut self.lanes.groups
            };
            lane.push_front(seq);
        }
    }

    /// Everything due at `now`: workers gone, acknowledgements overdue,
    /// and what to send where.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = self.probes(now);
        for peer in self.silent_workers(now) {
            self.worker_gone(now, peer, false);
        }
        actions.extend(self.settle(now));
        self.overdue(now);
        if !self.lanes.locals.is_empty() {
            let seqs = std::mem::take(&mut self.lanes.locals);
            for &seq in &seqs {
                if let Some(slot) = self.orders.get_mut(&seq) {
                    slot.place = Place::Told { at: now };
                    self.waiting_acks.push_back((now, seq));
                }
            }
            actions.push(Action::Locals(seqs));
        }
        self.schedule(now, &mut actions);
        actions
    }

    /// When `poll` has something to do next at the latest.
    pub fn next_due(&self) -> Option<Instant> {
        let acks = self
            .waiting_acks
            .front()
            .map(|&(t, _)| t + self.config.ack_timeout);
        let workers = self
            .workers
            .values()
            .map(|a| a.last_heard + self.config.quick_liveness)
            .min();
        let suspects = self
            .suspects
            .front()
            .map(|&(t, _)| t + self.config.quick_liveness);
        acks.into_iter().chain(workers).chain(suspects).min()
    }

    fn sink_answering(&self, now: Instant) -> bool {
        self.last_sink
            .is_some_and(|t| now.saturating_duration_since(t) < self.config.liveness / 2)
    }

    /// Workers silent since a connection closed: is it theirs?
    fn probes(&mut self, now: Instant) -> Vec<Action> {
        let Some(closed) = self.last_disconnect else {
            return Vec::new();
        };
        let quick = self.config.quick_liveness;
        let mut probes = Vec::new();
        for (&peer, a) in self.workers.iter_mut() {
            let silent = now.saturating_duration_since(a.last_heard) > quick;
            if silent && closed > a.last_heard && !a.probed {
                a.probed = true;
                probes.push(Action::Probe(peer));
            }
        }
        probes
    }

    /// Workers silent past the liveness deadline while the sink answers.
    fn silent_workers(&self, now: Instant) -> Vec<Peer> {
        if !self.sink_answering(now) {
            return Vec::new();
        }
        let liveness = self.config.liveness;
        let silent = |a: &Account| now.saturating_duration_since(a.last_heard) > liveness;
        self.workers
            .iter()
            .filter(|(_, a)| silent(a))
            .map(|(&p, _)| p)
            .collect()
    }

    /// Forgets `peer`; what it held becomes suspect.
    fn worker_gone(&mut self, now: Instant, peer: Peer, crashed: bool) {
        let Some(account) = self.workers.remove(&peer) else {
            return;
        };
        self.counts.lost_workers += 1;
        let mut held = 0;
        for seq in account.assigned {
            let Some(slot) = self.orders.get_mut(&seq) else {
                continue;
            };
            let sent_at = match slot.place {
                Place::Held {
                    peer: p, sent_at, ..
                } if p == peer => sent_at,
                _ => continue,
            };
            held += 1;
            let lost = crashed && self.last_sink.is_some_and(|t| t > sent_at);
            slot.place = Place::Suspect { lost };
            self.suspects.push_back((now, seq));
        }
        tracing::info!(
            worker = peer,
            crashed,
            held,
            "a worker is gone; its orders go out again unless acknowledged"
        );
    }

    /// Suspects not acknowledged within the grace (of the sink answering)
    /// go back to a lane.
    fn settle(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if !self.sink_answering(now) {
            return actions;
        }
        let grace = self.config.quick_liveness;
        while let Some((_, seq)) = pop_due(&mut self.suspects, now, self.sink_back, grace) {
            if let Some(Place::Suspect { lost }) = self.orders.get(&seq).map(|s| s.place) {
                actions.extend(self.requeue(seq, lost));
            }
        }
        actions
    }

    /// An order its worker no longer holds goes back to a lane: with the
    /// stream when late, isolated when lost, given up after too many losses.
    fn requeue(&mut self, seq: u64, lost: bool) -> Option<Action> {
        let slot = self.orders.get_mut(&seq)?;
        slot.place = Place::Queued;
        let group = slot.group.take();
        self.lanes.resolve_isolated(seq, group);
        if !lost {
            self.lanes.retry.push_back(seq);
            return None;
        }
        slot.losses += 1;
        let max = self.config.max_deliveries;
        if slot.losses + 1 < max {
            self.lanes.groups.push_back(seq);
            return None;
        }
        if slot.losses + 1 == max {
            self.lanes.singles.push_back(seq);
            return None;
        }
        let reason = format!("poison: its worker was lost with it {} times", slot.losses);
        slot.payload = Payload::Local(Outcome::Failed);
        self.counts.poisoned += 1;
        self.lanes.locals.push(seq);
        Some(Action::DeadLetter {
            line: slot.line,
            reason,
        })
    }

    /// Answered orders and verdicts whose acknowledgement is overdue.
    fn overdue(&mut self, now: Instant) {
        if !self.sink_answering(now) {
            return;
        }
        let wait = self.config.ack_timeout;
        while let Some((at, seq)) = pop_due(&mut self.waiting_acks, now, self.sink_back, wait) {
            let Some(slot) = self.orders.get_mut(&seq) else {
                continue;
            };
            match slot.place {
                Place::Answered { since } if since == at => {
                    slot.place = Place::Queued;
                    self.lanes.resolve_isolated(seq, slot.group.take());
                    self.lanes.retry.push_back(seq);
                }
                Place::Told { at: told } if told == at => {
                    slot.place = Place::Queued;
                    self.lanes.locals.push(seq);
                }
                _ => {}
            }
        }
    }

    /// Fills every worker's room, round robin, from the lanes.
    fn schedule(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let mut peers: Vec<Peer> = self.workers.keys().copied().collect();
        if peers.is_empty() {
            return;
        }
        peers.sort_unstable();
        let start = self.cursor % peers.len();
        peers.rotate_left(start);
        self.cursor = self.cursor.wrapping_add(1);
        loop {
            let mut sent_any = false;
            for &peer in &peers {
                let room = self.workers.get(&peer).map_or(0, Account::room) as usize;
                if room == 0 {
                    continue;
                }
                let Some((isolate, seqs)) = self.next_frame(room) else {
                    return;
                };
                self.mark_sent(now, peer, isolate, &seqs);
                actions.push(Action::Jobs {
                    to: peer,
                    isolate,
                    seqs,
                });
                sent_any = true;
            }
            if !sent_any {
                return;
            }
        }
    }

    /// The next frame of at most `room` orders: a single when nothing else
    /// isolated is out, else a group, else the stream.
    fn next_frame(&mut self, room: usize) -> Option<(bool, Vec<u64>)> {
        let orders = &self.orders;
        let live = |seq: &u64| {
            orders.get(seq).is_some_and(|s| {
                s.place == Place::Queued && matches!(s.payload, Payload::Job { .. })
            })
        };
        let lanes = &mut self.lanes;
        if lanes.single_in_flight.is_none() && lanes.groups_in_flight.is_empty() {
            while let Some(seq) = lanes.singles.pop_front() {
                if live(&seq) {
                    lanes.single_in_flight = Some(seq);
                    return Some((true, vec![seq]));
                }
            }
        }
        if lanes.single_in_flight.is_none()
            && lanes.singles.is_empty()
            && lanes.groups_in_flight.len() < GROUPS_IN_FLIGHT
        {
            let seqs = take_live(&mut lanes.groups, room.min(GROUP_SIZE), live);
            if !seqs.is_empty() {
                return Some((true, seqs));
            }
        }
        let take = room.min(self.config.batch);
        let mut seqs = take_live(&mut lanes.retry, take, live);
        if seqs.len() < take {
            seqs.extend(take_live(&mut lanes.fresh, take - seqs.len(), live));
        }
        (!seqs.is_empty()).then_some((false, seqs))
    }

    fn mark_sent(&mut self, now: Instant, peer: Peer, isolate: bool, seqs: &[u64]) {
        let single = isolate && seqs.len() == 1 && self.lanes.single_in_flight == Some(seqs[0]);
        let group = (isolate && !single).then(|| {
            let g = self.next_group;
            self.next_group += 1;
            self.lanes.groups_in_flight.insert(g, seqs.len());
            g
        });
        let Some(account) = self.workers.get_mut(&peer) else {
            return;
        };
        for &seq in seqs {
            let Some(slot) = self.orders.get_mut(&seq) else {
                continue;
            };
            slot.place = Place::Held {
                peer,
                index: account.sent,
                sent_at: now,
            };
            slot.group = group;
            account.sent += 1;
            account.assigned.push(seq);
            if slot.deliveries > 0 {
                self.counts.redelivered += 1;
            }
            slot.deliveries += 1;
            self.counts.dispatched += 1;
        }
    }
}

impl Lanes {
    /// An isolated order was answered, lost or taken back: free its place.
    fn resolve_isolated(&mut self, seq: u64, group: Option<u64>) {
        if self.single_in_flight == Some(seq) {
            self.single_in_flight = None;
        }
        let Some(group) = group else { return };
        if let Some(left) = self.groups_in_flight.get_mut(&group) {
            *left -= 1;
            if *left == 0 {
                self.groups_in_flight.remove(&group);
            }
        }
    }
}

/// Up to `n` seqs from the front of `lane` that are still to be sent.
fn take_live(lane: &mut VecDeque<u64>, n: usize, live: impl Fn(&u64) -> bool) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(n.min(lane.len()));
    while seqs.len() < n {
        let Some(seq) = lane.pop_front() else { break };
        if live(&seq) {
            seqs.push(seq);
        }
    }
    seqs
}

/// The front of a queue of (since, seq), oldest first, once it has waited
/// `wait`; the clock of an entry from before the sink came `back` starts then.
fn pop_due(
    queue: &mut VecDeque<(Instant, u64)>,
    now: Instant,
    back: Option<Instant>,
    wait: Duration,
) -> Option<(Instant, u64)> {
    let &(at, seq) = queue.front()?;
    let since = back.map_or(at, |b| b.max(at));
    if now.saturating_duration_since(since) < wait {
        return None;
    }
    queue.pop_front();
    Some((at, seq))
}

#[cfg(test)]
#[path = "dispatch_tests.rs"]
mod tests;
