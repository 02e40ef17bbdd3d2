//! The dispatch core on a fake clock: one test per rule of the module doc,
//! and a simulated grid (workers that are slow, freeze, crash on poison)
//! checked against a simple model of where every order is.

use super::*;
use std::collections::{HashMap, HashSet};

fn config() -> DispatchConfig {
    DispatchConfig {
        batch: 8,
        max_deliveries: 3,
        liveness: Duration::from_secs(3),
        quick_liveness: Duration::from_millis(750),
        ack_timeout: Duration::from_secs(4),
    }
}

fn job(seq: u64) -> Payload {
    Payload::Job {
        bytes: Arc::new(seq.to_le_bytes().to_vec()),
        start: 0,
        end: 8,
    }
}

fn credit(capacity: u64, received: u64, finished: u64, holds: Option<Vec<u64>>) -> Credit {
    Credit {
        capacity,
        received,
        finished,
        holds,
    }
}

/// Every order sent, by worker.
fn sent(actions: &[Action]) -> HashMap<Peer, Vec<u64>> {
    let mut out: HashMap<Peer, Vec<u64>> = HashMap::new();
    for a in actions {
        if let Action::Jobs { to, seqs, .. } = a {
            out.entry(*to).or_default().extend(seqs);
        }
    }
    out
}

fn ms(t0: Instant, n: u64) -> Instant {
    t0 + Duration::from_millis(n)
}

/// `orders` jobs admitted now, and sent to worker 1 on its credit of `capacity`.
fn held_by_worker_1(orders: u64, capacity: u64) -> (Instant, Dispatch, Vec<Action>) {
    let t0 = Instant::now();
    let mut d = core_with(t0, orders);
    d.on_credit(t0, 1, &credit(capacity, 0, 0, None));
    let actions = d.poll(t0);
    (t0, d, actions)
}

fn core_with(t0: Instant, orders: u64) -> Dispatch {
    let mut d = Dispatch::new(config());
    for seq in 0..orders {
        d.admit_job(t0, seq, seq + 1, job(seq));
    }
    d.on_sink_heard(t0);
    d
}

#[test]
fn credit_bounds_what_is_in_flight() {
    let (t0, mut d, first) = held_by_worker_1(100, 10);
    let first = sent(&first);
    assert_eq!(first[&1].len(), 10, "no more than the credit");
    assert!(d.poll(t0).is_empty(), "no room left");
    // Four finished: room for four more, wherever they were in transit.
    d.on_credit(ms(t0, 1), 1, &credit(10, 10, 4, None));
    assert_eq!(sent(&d.poll(ms(t0, 1)))[&1].len(), 4);
    assert_eq!(d.at_workers(), 10);
}

#[test]
fn frames_are_spread_round_robin_in_batches() {
    let t0 = Instant::now();
    let mut d = core_with(t0, 40);
    for peer in 1..=3 {
        d.on_credit(t0, peer, &credit(100, 0, 0, None));
    }
    let actions = d.poll(t0);
    assert!(actions
        .iter()
        .all(|a| matches!(a, Action::Jobs { seqs, isolate: false, .. } if seqs.len() <= 8)));
    let by = sent(&actions);
    assert_eq!(by.values().map(Vec::len).sum::<usize>(), 40);
    assert!(by.values().all(|v| v.len() >= 8), "{by:?}");
}

#[test]
fn an_order_held_by_a_live_worker_is_never_resent_however_slow() {
    let (t0, mut d, held) = held_by_worker_1(5, 5);
    let held = sent(&held)[&1].clone();
    d.on_credit(t0, 2, &credit(100, 0, 0, None));
    // An hour of heartbeats from a worker that holds all five.
    for s in 1..=14_400 {
        let now = ms(t0, s * 250);
        d.on_sink_heard(now);
        d.on_credit(now, 1, &credit(5, 5, 0, Some(held.clone())));
        assert!(d.poll(now).is_empty(), "resent at {s}");
    }
    assert_eq!(d.counts().redelivered, 0);
}

#[test]
fn a_silent_worker_is_gone_and_its_orders_are_late_not_lost() {
    let (t0, mut d, _) = held_by_worker_1(6, 6);
    let mut now = t0;
    let mut again = Vec::new();
    for s in 1..=20 {
        now = ms(t0, s * 250);
        d.on_sink_heard(now);
        d.on_credit(now, 2, &credit(100, 0, 0, None));
        again.extend(d.poll(now));
    }
    let by = sent(&again);
    assert_eq!(by[&2].len(), 6, "frozen worker's orders went to the other");
    assert!(
        again
            .iter()
            .all(|a| matches!(a, Action::Jobs { isolate: false, .. })),
        "late, not isolated"
    );
    assert_eq!(d.counts().redelivered, 6);
    assert!(now > t0 + config().liveness);
}

#[test]
fn a_sink_outage_makes_no_worker_gone() {
    let (t0, mut d, _) = held_by_worker_1(6, 6);
    d.on_credit(t0, 2, &credit(100, 0, 0, None));
    // Worker 1 blocks on its results while the sink is away: silent, not gone.
    for s in 1..=120 {
        let now = ms(t0, s * 250);
        d.on_credit(now, 2, &credit(100, 0, 0, None));
        assert!(d.poll(now).is_empty(), "resent during the outage at {s}");
    }
}

/// Worker `peer` crashes at `now`: its connection closes, the probe that
/// follows cannot be sent, and the grace passes with the sink answering and
/// nothing acknowledged; `other` (with room) is heard all along. Returns
/// what the core does then, and when.
fn crash(d: &mut Dispatch, peer: Peer, other: Peer, now: Instant) -> (Vec<Action>, Instant) {
    let mut t = now + Duration::from_millis(1);
    d.on_disconnect(t);
    let mut actions = Vec::new();
    let end = now + config().quick_liveness * 3;
    while t < end {
        t += Duration::from_millis(50);
        d.on_sink_heard(t);
        d.on_credit(t, other, &credit(1000, 0, 0, None));
        for a in d.poll(t) {
            match a {
                Action::Probe(p) if p == peer => actions.extend(d.on_unreachable(t, peer, &[])),
                Action::Probe(_) => {}
                a => actions.push(a),
            }
        }
    }
    (actions, t)
}

fn isolated(actions: &[Action]) -> Vec<Vec<u64>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Jobs {
                isolate: true,
                seqs,
                ..
            } => Some(seqs.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn lost_orders_go_out_isolated_in_groups_then_alone_then_are_poison() {
    let (t0, mut d, _) = held_by_worker_1(40, 40);
    // Worker 1 crashes: its 40 orders go out in isolated groups of at most 32.
    let (first, t1) = crash(&mut d, 1, 2, ms(t0, 10));
    let groups = isolated(&first);
    assert_eq!(groups.len(), 2, "{first:?}");
    assert!(groups.iter().all(|g| g.len() <= GROUP_SIZE));
    // Worker 2 crashes too: a second loss; then each goes alone, one at a time.
    let (second, t2) = crash(&mut d, 2, 3, t1);
    assert_eq!(isolated(&second), vec![vec![0]], "{second:?}");
    // The one alone crashes its worker: third loss, poison; the next goes alone.
    let (third, _) = crash(&mut d, 3, 4, t2);
    let reason = "poison: its worker was lost with it 3 times".to_string();
    assert!(
        third.contains(&Action::DeadLetter { line: 1, reason }),
        "{third:?}"
    );
    assert!(third.contains(&Action::Locals(vec![0])));
    assert_eq!(isolated(&third), vec![vec![1]]);
    assert_eq!(d.local(0), Some(Outcome::Failed));
    assert_eq!(d.counts().poisoned, 1);
}

#[test]
fn a_crashed_workers_orders_acknowledged_within_the_grace_are_not_lost() {
    let (t0, mut d, _) = held_by_worker_1(4, 4);
    // It finished 0 and 1 just before it crashed; their results get acknowledged.
    d.on_disconnect(ms(t0, 10));
    d.on_sink_heard(ms(t0, 10));
    d.on_unreachable(ms(t0, 10), 1, &[]);
    let mut acks = Acks::default();
    acks.push(0);
    acks.push(1);
    d.on_acks(ms(t0, 20), &acks);
    let (after, _) = crash(&mut d, 9, 2, ms(t0, 20));
    assert_eq!(isolated(&after).concat(), vec![2, 3], "{after:?}");
}

#[test]
fn an_overdue_order_of_an_isolated_group_frees_its_place() {
    let (t0, mut d, _) = held_by_worker_1(5 * GROUP_SIZE as u64, 1000);
    // Worker 1 crashes: its orders go out in five isolated groups, four at once.
    let (first, mut t) = crash(&mut d, 1, 2, ms(t0, 10));
    assert_eq!(isolated(&first).len(), GROUPS_IN_FLIGHT);
    // Worker 2 answers them all, but the sink never acknowledges them.
    let all: Vec<u64> = isolated(&first).concat();
    d.on_credit(
        t,
        2,
        &credit(1000, all.len() as u64, all.len() as u64, Some(vec![])),
    );
    let mut later = Vec::new();
    for _ in 0..200 {
        t += Duration::from_millis(50);
        d.on_sink_heard(t);
        d.on_credit(
            t,
            2,
            &credit(1000, all.len() as u64, all.len() as u64, None),
        );
        later.extend(d.poll(t));
    }
    // Overdue, they went out again, and the fifth group was not held back.
    assert_eq!(isolated(&later).len(), 1, "{later:?}");
    assert!(sent(&later)[&2].len() >= 5 * GROUP_SIZE - GROUP_SIZE);
}

#[test]
fn answered_orders_are_resent_only_when_their_ack_is_overdue_and_the_sink_answers() {
    let (t0, mut d, _) = held_by_worker_1(4, 4);
    // The worker finished them all: they are with the sink.
    d.on_credit(ms(t0, 5), 1, &credit(4, 4, 4, Some(vec![])));
    assert!(matches!(d.place(0), Some(Place::Answered { .. })));
    // The sink is silent: nothing is resent, however long.
    for s in 1..=40 {
        let now = ms(t0, 5 + s * 250);
        d.on_credit(now, 1, &credit(4, 4, 4, Some(vec![])));
        assert!(d.poll(now).is_empty());
    }
    // It answers again: it has a backlog, so they are not overdue yet...
    let back = ms(t0, 20_000);
    d.on_sink_heard(back);
    d.on_credit(back, 1, &credit(4, 4, 4, Some(vec![])));
    assert!(d.poll(back).is_empty());
    // ... until it has answered for the whole time-out without them.
    let mut again = Vec::new();
    for s in 1..=16 {
        let now = back + Duration::from_millis(s * 250);
        d.on_sink_heard(now);
        d.on_credit(now, 1, &credit(4, 4, 4, Some(vec![])));
        let actions = d.poll(now);
        assert!(actions.is_empty() || s == 16, "resent after {s} beats");
        again.extend(actions);
    }
    assert_eq!(sent(&again)[&1].len(), 4);
}

#[test]
fn acknowledged_orders_are_forgotten_and_measured() {
    let (t0, mut d, _) = held_by_worker_1(3, 3);
    let mut acks = Acks::default();
    acks.push(0);
    acks.push(1);
    let latencies = d.on_acks(ms(t0, 40), &acks);
    assert_eq!(
        latencies,
        vec![Duration::from_millis(40)],
        "seq 0 is sampled, 1 is not"
    );
    assert_eq!(d.len(), 1);
    assert_eq!(d.place(0), None);
}

#[test]
fn a_send_to_a_closed_connection_gives_the_frame_back_and_loses_the_rest() {
    let (t0, mut d, _) = held_by_worker_1(8, 4); // 0..4 held by 1
    d.on_credit(ms(t0, 1), 1, &credit(8, 0, 0, None));
    let frame = sent(&d.poll(ms(t0, 1)))[&1].clone();
    d.on_sink_heard(ms(t0, 2));
    let actions = d.on_unreachable(ms(t0, 3), 1, &frame);
    assert!(actions.is_empty());
    assert_eq!(
        d.counts().redelivered,
        0,
        "the unsent frame is not a redelivery"
    );
    let mut actions = Vec::new();
    for s in 1..=20 {
        let t = ms(t0, 3 + s * 50);
        d.on_sink_heard(t);
        d.on_credit(t, 2, &credit(100, 0, 0, None));
        actions.extend(d.poll(t));
    }
    assert_eq!(
        isolated(&actions).concat().len(),
        4,
        "the four delivered are lost: {actions:?}"
    );
    assert_eq!(sent(&actions)[&2].len(), 8);
}

#[test]
fn verdicts_go_to_the_sink_and_again_when_overdue() {
    let t0 = Instant::now();
    let mut d = Dispatch::new(config());
    d.admit_local(t0, 0, 1, Outcome::Malformed);
    d.on_sink_heard(t0);
    assert_eq!(d.poll(t0), vec![Action::Locals(vec![0])]);
    for s in 1..=15 {
        d.on_sink_heard(ms(t0, s * 250));
        assert!(d.poll(ms(t0, s * 250)).is_empty());
    }
    let late = ms(t0, 4000);
    d.on_sink_heard(late);
    assert_eq!(d.poll(late), vec![Action::Locals(vec![0])]);
}

// ---- the simulated grid against a model ----

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct SimWorker {
    capacity: u64,
    latency: u64,
    received: u64,
    finished: u64,
    /// (seq, done at ms)
    queue: Vec<(u64, u64)>,
    frozen_until: u64,
    last_beat: u64,
    /// Finished since the last heartbeat: the ventilator still counts
    /// them held (until their acknowledgement or the next `holds`).
    finished_since_beat: Vec<u64>,
    /// When it last reported at all.
    last_report: u64,
}

/// Where the model says each order is; counts the rules' evidence.
#[derive(Default)]
struct Model {
    /// seq -> worker holding it.
    held: HashMap<u64, Peer>,
    /// Times each seq was held by a worker that crashed.
    crashed_with: HashMap<u64, u32>,
    /// Times a seq's result was on its way, unacknowledged, when a crash of
    /// its worker was decided (the crash plus `quick_liveness`, at the
    /// earliest): the ventilator cannot tell those from held ones.
    maybe_lost: HashMap<u64, u32>,
    tallied: HashSet<u64>,
    duplicates: u64,
    dead: HashSet<u64>,
}

struct Sim {
    rng: Rng,
    t0: Instant,
    now: u64,
    d: Dispatch,
    workers: HashMap<Peer, SimWorker>,
    next_peer: Peer,
    model: Model,
    /// Results on their way to the sink: (ack at ms, seq).
    to_sink: Vec<(u64, u64)>,
    poison: HashSet<u64>,
    faults: bool,
    last_disconnect: u64,
}

impl Sim {
    fn new(seed: u64, orders: u64, poison: &[u64], faults: bool) -> Sim {
        let t0 = Instant::now();
        let mut d = Dispatch::new(config());
        for seq in 0..orders {
            d.admit_job(t0, seq, seq + 1, job(seq));
        }
        let mut sim = Sim {
            rng: Rng(seed),
            t0,
            now: 0,
            d,
            workers: HashMap::new(),
            next_peer: 1,
            model: Model::default(),
            to_sink: Vec::new(),
            poison: poison.iter().copied().collect(),
            faults,
            last_disconnect: 0,
        };
        for _ in 0..4 {
            sim.add_worker();
        }
        sim
    }

    fn at(&self) -> Instant {
        ms(self.t0, self.now)
    }

    fn add_worker(&mut self) {
        let peer = self.next_peer;
        self.next_peer += 1;
        let w = SimWorker {
            capacity: 1 + self.rng.below(20),
            latency: 1 + self.rng.below(300),
            received: 0,
            finished: 0,
            queue: Vec::new(),
            frozen_until: 0,
            last_beat: 0,
            finished_since_beat: Vec::new(),
            last_report: self.now,
        };
        self.workers.insert(peer, w);
    }

    fn crash(&mut self, peer: Peer) {
        let w = self.workers.remove(&peer).expect("live");
        for (seq, _) in w.queue {
            self.model.held.remove(&seq);
            *self.model.crashed_with.entry(seq).or_default() += 1;
        }
        let decided = self.now + config().quick_liveness.as_millis() as u64;
        for seq in w.finished_since_beat {
            let acked_at = self
                .to_sink
                .iter()
                .filter(|&&(_, s)| s == seq)
                .map(|&(at, _)| at)
                .max();
            // A step (5 ms) of slack either way: the model does not know to
            // the step when the ventilator decides.
            if acked_at.is_some_and(|at| at + 5 >= decided) {
                *self.model.maybe_lost.entry(seq).or_default() += 1;
            }
        }
        self.d.on_disconnect(self.at());
        self.last_disconnect = self.now;
        self.add_worker();
    }

    fn step(&mut self) {
        self.now += 5;
        let now = self.now;
        if self.faults && self.rng.below(300) == 0 {
            let peers: Vec<Peer> = self.workers.keys().copied().collect();
            let p = peers[self.rng.below(peers.len() as u64) as usize];
            if self.rng.below(2) == 0 {
                self.crash(p);
            } else if let Some(w) = self.workers.get_mut(&p) {
                w.frozen_until = now + self.rng.below(8000);
            }
        }
        self.work(now);
        self.sink(now);
        self.beat(now);
        let actions = self.d.poll(self.at());
        self.carry_out(actions, now);
    }

    /// Workers finish what is due; a poison order crashes its worker.
    fn work(&mut self, now: u64) {
        let peers: Vec<Peer> = self.workers.keys().copied().collect();
        for p in peers {
            let w = self.workers.get_mut(&p).expect("live");
            if w.frozen_until > now {
                continue;
            }
            // A poison order aborts the worker as its payment begins,
            // before anything begun with it finishes.
            if w.queue
                .iter()
                .any(|&(seq, at)| at <= now && self.poison.contains(&seq))
            {
                self.crash(p);
                continue;
            }
            let (due, rest): (Vec<_>, Vec<_>) = w.queue.drain(..).partition(|&(_, at)| at <= now);
            w.queue = rest;
            for (seq, _) in due {
                w.finished += 1;
                w.finished_since_beat.push(seq);
                self.model.held.remove(&seq);
                // Now and then a result is slow to be acknowledged (past
                // the time-out): it is sent again, and must not jam a lane.
                let slow = if self.faults && self.rng.below(100) == 0 {
                    6000
                } else {
                    0
                };
                self.to_sink
                    .push((now + 1 + self.rng.below(30) + slow, seq));
            }
        }
    }

    fn sink(&mut self, now: u64) {
        self.d.on_sink_heard(self.at());
        let (due, rest): (Vec<_>, Vec<_>) = self.to_sink.drain(..).partition(|&(at, _)| at <= now);
        self.to_sink = rest;
        let mut acks = Acks::default();
        for (_, seq) in due {
            if self.model.tallied.insert(seq) {
                acks.push(seq);
            } else {
                self.model.duplicates += 1;
            }
        }
        self.d.on_acks(self.at(), &acks);
    }

    fn beat(&mut self, now: u64) {
        let at = self.at();
        for (&p, w) in &mut self.workers {
            if w.frozen_until > now {
                continue;
            }
            let heartbeat = now - w.last_beat >= 250;
            let holds = heartbeat.then(|| w.queue.iter().map(|&(s, _)| s).collect());
            if heartbeat {
                w.last_beat = now;
                w.finished_since_beat.clear();
            }
            w.last_report = now;
            self.d
                .on_credit(at, p, &credit(w.capacity, w.received, w.finished, holds));
        }
    }

    fn carry_out(&mut self, actions: Vec<Action>, now: u64) {
        for action in actions {
            match action {
                Action::Jobs { to, isolate, seqs } => self.deliver(to, isolate, seqs, now),
                Action::Locals(seqs) => {
                    for seq in seqs {
                        self.to_sink.push((now + 1, seq));
                    }
                }
                Action::DeadLetter { line, .. } => {
                    self.model.dead.insert(line - 1);
                }
                Action::Probe(to) if !self.workers.contains_key(&to) => {
                    let actions = self.d.on_unreachable(self.at(), to, &[]);
                    self.carry_out(actions, now);
                }
                Action::Probe(_) => {}
            }
        }
    }

    fn deliver(&mut self, to: Peer, isolate: bool, seqs: Vec<u64>, now: u64) {
        // Rule: an order held by a live worker is never resent.
        for seq in &seqs {
            if let Some(holder) = self.model.held.get(seq) {
                // Live: not crashed, and heard within `liveness`.
                let liveness = config().liveness.as_millis() as u64;
                let live = self
                    .workers
                    .get(holder)
                    .is_some_and(|w| now - w.last_report <= liveness);
                assert!(
                    !live,
                    "seq {seq} resent to {to} while worker {holder} holds it (t={now})"
                );
            }
        }
        let Some(w) = self.workers.get_mut(&to) else {
            let actions = self.d.on_unreachable(self.at(), to, &seqs);
            return self.carry_out(actions, now);
        };
        let start = if isolate {
            w.queue
                .iter()
                .map(|&(_, at)| at)
                .max()
                .unwrap_or(now)
                .max(now)
        } else {
            now
        };
        for &seq in &seqs {
            w.queue.push((seq, start + w.latency));
            self.model.held.insert(seq, to);
        }
        w.received += seqs.len() as u64;
        // Rule: credit bounds what a worker holds.
        assert!(
            w.queue.len() as u64 <= w.capacity,
            "worker {to} holds {} > {}",
            w.queue.len(),
            w.capacity
        );
    }

    fn run(&mut self, orders: u64) {
        for _ in 0..2_000_000 {
            if self.d.is_empty() {
                break;
            }
            self.step();
        }
        assert!(
            self.d.is_empty(),
            "not done at t={} ms: {} left",
            self.now,
            self.d.len()
        );
        assert_eq!(
            self.model.tallied.len() as u64,
            orders,
            "every order tallied once"
        );
        // Rule: an order is given up only after `max_deliveries` losses: a
        // crash of the worker holding it, or of the worker whose result
        // for it was still unacknowledged when the crash was decided.
        for seq in &self.model.dead {
            let times = self.model.crashed_with.get(seq).copied().unwrap_or(0);
            let maybe = self.model.maybe_lost.get(seq).copied().unwrap_or(0);
            assert!(
                times + maybe >= 3,
                "seq {seq} given up after {times} crashes (and {maybe} with its result on the way)"
            );
        }
        for seq in &self.poison {
            assert!(self.model.dead.contains(seq), "poison {seq} not given up");
        }
    }
}

#[test]
fn a_fault_free_simulated_grid_resends_nothing() {
    for seed in 0..5 {
        let mut sim = Sim::new(seed, 3000, &[], false);
        sim.run(3000);
        assert_eq!(sim.d.counts().redelivered, 0, "seed {seed}");
        assert_eq!(sim.model.duplicates, 0, "seed {seed}");
    }
}

#[test]
fn a_simulated_grid_with_crashes_freezes_and_poison_agrees_with_the_model() {
    let mut gone = 0;
    for seed in 0..20 {
        let mut sim = Sim::new(seed, 2000, &[7, 500, 1999], true);
        sim.run(2000);
        gone += sim.d.counts().lost_workers;
    }
    assert!(gone > 60, "the simulation lost only {gone} workers");
}

#[test]
fn a_restarted_sink_gets_again_what_it_was_sent_but_not_what_workers_hold() {
    let t0 = Instant::now();
    let mut d = core_with(t0, 4);
    d.admit_local(t0, 4, 5, Outcome::Duplicate);
    d.on_credit(t0, 1, &credit(4, 0, 0, None));
    d.poll(t0);
    // Two answered (results sent to the old sink), two still held.
    d.on_credit(ms(t0, 5), 1, &credit(2, 4, 2, Some(vec![2, 3])));
    d.on_sink_restart(ms(t0, 10));
    d.on_credit(ms(t0, 10), 2, &credit(100, 0, 0, None));
    let actions = d.poll(ms(t0, 10));
    assert!(actions.contains(&Action::Locals(vec![4])), "{actions:?}");
    let mut again = sent(&actions)[&2].clone();
    again.sort_unstable();
    assert_eq!(again, vec![0, 1]);
}
