//! The worker's payment state machine: starts payments at a
//! [`PaymentGateway`] with at most `concurrency` in flight, queues the rest,
//! retries transient failures with exponential back-off and jitter (at least
//! what the gateway's `Retry-After` asks), and settles each payment as
//! [`Verdict::Paid`], [`Verdict::Declined`] or [`Verdict::Failed`] with its
//! reason. It owns no socket: the worker feeds it orders and the clock and
//! carries the verdicts out, so both gateways plug into the same logic and
//! the tests below drive it with a scripted gateway.
//!
//! # States of one payment
//! ```text
//!  start ──▶ waiting ──▶ in flight ──▶ Approved / Declined / Refused ──▶ settled
//!              ▲            │
//!              │            └─ Transient, attempts < max ──▶ backing off ──┐
//!              └───────────────────────────────────────────────────────────┘
//!                  Transient at the last attempt ──▶ Failed("gave up after N attempts: …")
//! ```

use crate::fasthash::SeqMap;
use crate::gateway::{GatewayReply, PaymentGateway, PaymentRequest};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

/// The longest `Retry-After` honoured: a gateway asking for more gets this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// How a payment is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (the first one included) before a transient failure
    /// becomes [`Verdict::Failed`].
    pub max_attempts: u32,
    /// Back-off after the first failed attempt, doubled after each further one.
    pub base: Duration,
    /// The longest back-off.
    pub cap: Duration,
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempts` (1-based): half of
    /// `min(cap, base × 2^(attempts-1))` plus `jitter` (0..1) of the other
    /// half ("equal jitter": retries of many payments spread out, and none
    /// comes back sooner than half its nominal wait), and never less than
    /// the gateway's `retry_after` (itself at most [`MAX_RETRY_AFTER`]).
    pub fn backoff(&self, attempts: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let doublings = attempts.saturating_sub(1).min(30);
        let nominal = self
            .base
            .saturating_mul(1u32 << doublings)
            .min(self.cap.max(self.base));
        let half = nominal / 2;
        let wait = half + half.mul_f64(jitter.clamp(0.0, 1.0));
        wait.max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER))
    }
}

/// How a payment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Paid,
    Declined,
    /// Failed for good; the reason is what the dead letter says.
    Failed(String),
}

/// A task the state machine can pay: it gives the request of each attempt.
pub trait Payable {
    fn request(&self) -> PaymentRequest<'_>;
}

/// A task and the attempts made for it so far.
#[derive(Debug)]
struct Entry<T> {
    task: T,
    attempts: u32,
}

/// What to do with one attempt's reply.
enum Decision {
    Settle(Verdict),
    RetryAfter(Duration),
}

/// Payments in flight, waiting for a slot, or backing off.
pub struct Payments<'g, T> {
    gateway: &'g mut dyn PaymentGateway,
    policy: RetryPolicy,
    concurrency: usize,
    /// How many attempts the gateway is given at once: `concurrency`, or
    /// all of them for a gateway that queues them itself.
    handed_over: usize,
    next_ticket: u64,
    in_flight: SeqMap<u64, Entry<T>>,
    waiting: VecDeque<Entry<T>>,
    backing_off: BinaryHeap<Reverse<(Instant, u64)>>,
    retrying: SeqMap<u64, Entry<T>>,
    ready: Vec<(u64, GatewayReply)>,
    /// xorshift64 state for the jitter.
    rng: u64,
    /// Retries scheduled since the last [`take_retries`](Self::take_retries).
    retries: u64,
}

impl<'g, T: Payable> Payments<'g, T> {
    /// At most `concurrency` (at least 1) attempts in flight at `gateway`;
    /// `seed` varies the jitter from one worker to the next. A gateway that
    /// [limits itself](PaymentGateway::limits_itself) is handed every
    /// attempt at once and keeps the limit itself.
    pub fn new(
        gateway: &'g mut dyn PaymentGateway,
        policy: RetryPolicy,
        concurrency: usize,
        seed: u64,
    ) -> Payments<'g, T> {
        let concurrency = concurrency.max(1);
        let handed_over = if gateway.limits_itself() {
            usize::MAX
        } else {
            concurrency
        };
        Payments {
            gateway,
            policy,
            concurrency,
            handed_over,
            next_ticket: 0,
            in_flight: SeqMap::default(),
            waiting: VecDeque::new(),
            backing_off: BinaryHeap::new(),
            retrying: SeqMap::default(),
            ready: Vec::new(),
            rng: seed | 1,
            retries: 0,
        }
    }

    /// Payments held: in flight, waiting or backing off.
    pub fn busy(&self) -> usize {
        self.in_flight.len() + self.waiting.len() + self.retrying.len()
    }

    /// Every task held: in flight, waiting or backing off.
    pub fn tasks(&self) -> impl Iterator<Item = &T> + '_ {
        let in_flight = self.in_flight.values();
        let retrying = self.retrying.values();
        in_flight
            .chain(self.waiting.iter())
            .chain(retrying)
            .map(|e| &e.task)
    }

    /// The gateway's wake-up descriptor, if it has one (see
    /// [`PaymentGateway::wake_fd`]).
    pub fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        self.gateway.wake_fd()
    }

    /// Payment attempts at the gateway now (at most the concurrency; a
    /// gateway that limits itself queues the others).
    pub fn at_gateway(&self) -> usize {
        self.in_flight.len().min(self.concurrency)
    }

    /// Payments backing off before their next attempt.
    pub fn backing_off(&self) -> usize {
        self.retrying.len()
    }

    /// Payments waiting for a slot at the gateway.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Retries scheduled since the last call (for the metrics).
    pub fn take_retries(&mut self) -> u64 {
        std::mem::take(&mut self.retries)
    }

    /// When [`advance`](Self::advance) has something to do next: a gateway
    /// reply, or the first back-off ending plus the [slack](Self::slack).
    pub fn next_due(&self) -> Option<Instant> {
        let retry = self.backing_off.peek().map(|r| r.0 .0 + self.slack());
        [self.gateway.next_due(), retry].into_iter().flatten().min()
    }

    /// How late a back-off may end, so that those ending close together
    /// start at one wake-up rather than one each (timer slack): a quarter
    /// of the policy's base back-off, 1.25 ms at the worker's default 5 ms.
    /// The jitter spreads a burst of retries over half the nominal wait;
    /// the slack groups them in about two steps there, and none starts
    /// before its back-off is over.
    fn slack(&self) -> Duration {
        self.policy.base / 4
    }

    /// Starts paying `request`. The fast path: a slot is free and the gateway
    /// answers at once with a final answer, which is returned and nothing is
    /// copied. Otherwise `own` makes the owned task, which is held until
    /// [`advance`](Self::advance) settles it.
    pub fn start(
        &mut self,
        now: Instant,
        request: &PaymentRequest<'_>,
        own: impl FnOnce() -> T,
    ) -> Option<Verdict> {
        if self.in_flight.len() >= self.handed_over {
            self.waiting.push_back(Entry {
                task: own(),
                attempts: 0,
            });
            return None;
        }
        let ticket = self.ticket();
        match self.gateway.begin(ticket, request) {
            Some(reply) => match self.decide(1, reply) {
                Decision::Settle(verdict) => Some(verdict),
                Decision::RetryAfter(wait) => {
                    let entry = Entry {
                        task: own(),
                        attempts: 1,
                    };
                    self.back_off(now, entry, wait);
                    None
                }
            },
            None => {
                let entry = Entry {
                    task: own(),
                    attempts: 1,
                };
                self.in_flight.insert(ticket, entry);
                None
            }
        }
    }

    /// Collects the gateway's replies, ends back-offs that are due and starts
    /// waiting payments while slots are free; appends what settled to `done`.
    pub fn advance(&mut self, now: Instant, done: &mut Vec<(T, Verdict)>) {
        while let Some(&Reverse((due, key))) = self.backing_off.peek() {
            if due > now {
                break;
            }
            self.backing_off.pop();
            if let Some(entry) = self.retrying.remove(&key) {
                self.waiting.push_front(entry);
            }
        }
        loop {
            let mut replies = std::mem::take(&mut self.ready);
            replies.clear();
            self.gateway.poll(now, &mut replies);
            let had = !replies.is_empty();
            for (ticket, reply) in replies.drain(..) {
                if let Some(entry) = self.in_flight.remove(&ticket) {
                    self.settle_or_retry(now, entry, reply, done);
                }
            }
            self.ready = replies;
            let mut started = false;
            while self.in_flight.len() < self.handed_over {
                let Some(mut entry) = self.waiting.pop_front() else {
                    break;
                };
                let ticket = self.ticket();
                entry.attempts += 1;
                match self.gateway.begin(ticket, &entry.task.request()) {
                    Some(reply) => self.settle_or_retry(now, entry, reply, done),
                    None => {
                        self.in_flight.insert(ticket, entry);
                    }
                }
                started = true;
            }
            if !had && !started {
                return;
            }
        }
    }

    fn settle_or_retry(
        &mut self,
        now: Instant,
        entry: Entry<T>,
        reply: GatewayReply,
        done: &mut Vec<(T, Verdict)>,
    ) {
        match self.decide(entry.attempts, reply) {
            Decision::Settle(verdict) => done.push((entry.task, verdict)),
            Decision::RetryAfter(wait) => self.back_off(now, entry, wait),
        }
    }

    /// The exact mapping of one attempt's reply.
    fn decide(&mut self, attempts: u32, reply: GatewayReply) -> Decision {
        match reply {
            GatewayReply::Approved => Decision::Settle(Verdict::Paid),
            GatewayReply::Declined => Decision::Settle(Verdict::Declined),
            GatewayReply::Refused(reason) => Decision::Settle(Verdict::Failed(reason)),
            GatewayReply::Transient {
                reason,
                retry_after,
            } => {
                if attempts >= self.policy.max_attempts {
                    Decision::Settle(Verdict::Failed(format!(
                        "gave up after {attempts} attempts: {reason}"
                    )))
                } else {
                    let jitter = self.jitter();
                    Decision::RetryAfter(self.policy.backoff(attempts, retry_after, jitter))
                }
            }
        }
    }

    fn back_off(&mut self, now: Instant, entry: Entry<T>, wait: Duration) {
        self.retries += 1;
        let key = self.ticket();
        self.backing_off.push(Reverse((now + wait, key)));
        self.retrying.insert(key, entry);
    }

    fn ticket(&mut self) -> u64 {
        let t = self.next_ticket;
        self.next_ticket += 1;
        t
    }

    /// A number in [0, 1) (xorshift64: spreading retries needs no more).
    fn jitter(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A gateway that answers each key from a script, after `latency` (0: at once).
    struct Scripted {
        script: HashMap<String, VecDeque<GatewayReply>>,
        latency: Duration,
        pending: VecDeque<(Instant, u64, GatewayReply)>,
        attempts: Vec<String>,
        now: Instant,
        /// Says it keeps its own limit (as the HTTP gateway does).
        limits_itself: bool,
    }

    impl Scripted {
        fn new(now: Instant, latency: Duration) -> Scripted {
            Scripted {
                script: HashMap::new(),
                latency,
                pending: VecDeque::new(),
                attempts: Vec::new(),
                now,
                limits_itself: false,
            }
        }
        fn answer(mut self, key: &str, replies: Vec<GatewayReply>) -> Scripted {
            self.script.insert(key.into(), replies.into());
            self
        }
    }

    impl PaymentGateway for Scripted {
        fn begin(&mut self, ticket: u64, r: &PaymentRequest<'_>) -> Option<GatewayReply> {
            self.attempts.push(r.idempotency_key.to_string());
            let reply = self
                .script
                .get_mut(r.idempotency_key)
                .and_then(VecDeque::pop_front)
                .unwrap_or(GatewayReply::Approved);
            if self.latency.is_zero() {
                return Some(reply);
            }
            self.pending
                .push_back((self.now + self.latency, ticket, reply));
            None
        }
        fn poll(&mut self, now: Instant, ready: &mut Vec<(u64, GatewayReply)>) {
            self.now = now;
            while self.pending.front().is_some_and(|p| p.0 <= now) {
                if let Some((_, t, r)) = self.pending.pop_front() {
                    ready.push((t, r));
                }
            }
        }
        fn next_due(&self) -> Option<Instant> {
            self.pending.front().map(|p| p.0)
        }
        fn pending(&self) -> usize {
            self.pending.len()
        }
        fn limits_itself(&self) -> bool {
            self.limits_itself
        }
    }

    struct Task(String);
    impl Payable for Task {
        fn request(&self) -> PaymentRequest<'_> {
            PaymentRequest {
                idempotency_key: &self.0,
                payment_token: "tok_visa",
                currency: *b"USD",
                amount_cents: 1,
            }
        }
    }

    fn transient(reason: &str) -> GatewayReply {
        GatewayReply::Transient {
            reason: reason.into(),
            retry_after: None,
        }
    }

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(100),
        cap: Duration::from_secs(1),
    };

    /// Runs simulated time forward until nothing is held; returns the verdicts.
    fn run_out(p: &mut Payments<'_, Task>, mut now: Instant) -> (Vec<(String, Verdict)>, Instant) {
        let mut done = Vec::new();
        for _ in 0..10_000 {
            p.advance(now, &mut done);
            if p.busy() == 0 {
                break;
            }
            now = p.next_due().expect("something is due while busy").max(now);
        }
        let verdicts = done.into_iter().map(|(t, v)| (t.0, v)).collect();
        (verdicts, now)
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_equal_jitter_and_honours_retry_after() {
        let ms = Duration::from_millis;
        assert_eq!(POLICY.backoff(1, None, 0.0), ms(50));
        assert_eq!(POLICY.backoff(1, None, 1.0), ms(100));
        assert_eq!(POLICY.backoff(2, None, 0.0), ms(100));
        assert_eq!(POLICY.backoff(3, None, 0.5), ms(300));
        assert_eq!(POLICY.backoff(20, None, 1.0), ms(1000));
        assert_eq!(POLICY.backoff(1000, None, 1.0), ms(1000));
        assert_eq!(POLICY.backoff(1, Some(ms(700)), 0.0), ms(700));
        assert_eq!(
            POLICY.backoff(1, Some(Duration::from_secs(3600)), 0.0),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn immediate_final_answers_take_the_fast_path() {
        let now = Instant::now();
        let mut g = Scripted::new(now, Duration::ZERO)
            .answer("d", vec![GatewayReply::Declined])
            .answer("r", vec![GatewayReply::Refused("HTTP 400".into())]);
        let mut p: Payments<'_, Task> = Payments::new(&mut g, POLICY, 4, 7);
        let own = |k: &str| Task(k.to_string());
        assert_eq!(
            p.start(now, &own("a").request(), || panic!(
                "no copy on the fast path"
            )),
            Some(Verdict::Paid)
        );
        assert_eq!(
            p.start(now, &own("d").request(), || own("d")),
            Some(Verdict::Declined)
        );
        assert_eq!(
            p.start(now, &own("r").request(), || own("r")),
            Some(Verdict::Failed("HTTP 400".into()))
        );
        assert_eq!(p.busy(), 0);
    }

    #[test]
    fn transient_failures_retry_then_pay_or_give_up_with_the_reason() {
        let now = Instant::now();
        let mut g = Scripted::new(now, Duration::from_millis(5))
            .answer("flaky", vec![transient("HTTP 503"), transient("HTTP 503")])
            .answer(
                "dead",
                vec![transient("a"), transient("b"), transient("HTTP 502")],
            );
        let mut p = Payments::new(&mut g, POLICY, 8, 7);
        for k in ["flaky", "dead", "ok"] {
            let t = Task(k.into());
            assert_eq!(p.start(now, &t.request(), || Task(k.into())), None);
        }
        let (mut verdicts, end) = run_out(&mut p, now);
        assert_eq!(p.take_retries(), 4);
        drop(p);
        verdicts.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            verdicts,
            vec![
                (
                    "dead".into(),
                    Verdict::Failed("gave up after 3 attempts: HTTP 502".into())
                ),
                ("flaky".into(), Verdict::Paid),
                ("ok".into(), Verdict::Paid),
            ]
        );
        // Three attempts each for flaky and dead, one for ok, all under one key each.
        assert_eq!(g.attempts.iter().filter(|k| *k == "dead").count(), 3);
        assert_eq!(g.attempts.iter().filter(|k| *k == "flaky").count(), 3);
        // Two back-offs of at least 50 and 100 ms passed in simulated time.
        assert!(end - now >= Duration::from_millis(150), "{:?}", end - now);
    }

    #[test]
    fn never_more_than_concurrency_in_flight() {
        let now = Instant::now();
        let mut g = Scripted::new(now, Duration::from_millis(5));
        let mut p = Payments::new(&mut g, POLICY, 3, 1);
        for i in 0..10 {
            let t = Task(format!("k{i}"));
            assert_eq!(p.start(now, &t.request(), || Task(format!("k{i}"))), None);
            assert!(p.gateway.pending() <= 3);
        }
        assert_eq!(p.waiting(), 7);
        let mut done = Vec::new();
        let mut t = now;
        while p.busy() > 0 {
            t = p.next_due().unwrap();
            p.advance(t, &mut done);
            assert!(p.gateway.pending() <= 3);
        }
        assert_eq!(done.len(), 10);
        // Four rounds of 5 ms: 3 + 3 + 3 + 1.
        assert_eq!(t - now, Duration::from_millis(20));
    }

    #[test]
    fn a_gateway_that_limits_itself_is_handed_every_attempt() {
        let now = Instant::now();
        let mut g = Scripted::new(now, Duration::from_millis(5));
        g.limits_itself = true;
        let mut p = Payments::new(&mut g, POLICY, 3, 1);
        for i in 0..10 {
            let t = Task(format!("k{i}"));
            assert_eq!(p.start(now, &t.request(), || Task(format!("k{i}"))), None);
        }
        assert_eq!(p.waiting(), 0);
        assert_eq!(p.gateway.pending(), 10);
        assert_eq!(
            p.at_gateway(),
            3,
            "the gateway queues what is over the limit"
        );
        let (done, _) = run_out(&mut p, now);
        assert_eq!(done.len(), 10);
    }

    #[test]
    fn back_offs_ending_close_together_start_at_one_wake_up() {
        let now = Instant::now();
        let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
        let mut g = Scripted::new(now, Duration::ZERO);
        for k in &keys {
            g = g.answer(k, vec![transient("HTTP 503")]);
        }
        let mut p = Payments::new(&mut g, POLICY, 64, 3);
        for k in &keys {
            assert_eq!(
                p.start(now, &Task(k.clone()).request(), || Task(k.clone())),
                None
            );
        }
        let (mut done, mut wake_ups, mut t) = (Vec::new(), Vec::new(), now);
        while p.busy() > 0 {
            t = p.next_due().expect("backing off");
            let before = p.backing_off();
            p.advance(t, &mut done);
            wake_ups.push((t - now, before - p.backing_off()));
        }
        assert_eq!(done.len(), 40);
        // The jitter spreads the 40 back-offs over 50-100 ms; a slack of
        // 25 ms takes them in at most 3 wake-ups, none before 50 ms.
        assert!(wake_ups.len() <= 3, "{wake_ups:?}");
        assert!(wake_ups[0].0 >= Duration::from_millis(50), "{wake_ups:?}");
        assert!(t - now <= Duration::from_millis(125), "{wake_ups:?}");
    }

    #[test]
    fn retry_after_delays_the_next_attempt() {
        let now = Instant::now();
        let mut g = Scripted::new(now, Duration::ZERO).answer(
            "k",
            vec![GatewayReply::Transient {
                reason: "HTTP 429".into(),
                retry_after: Some(Duration::from_secs(5)),
            }],
        );
        let mut p = Payments::new(&mut g, POLICY, 1, 1);
        let t = Task("k".into());
        assert_eq!(p.start(now, &t.request(), || Task("k".into())), None);
        let mut done = Vec::new();
        p.advance(now + Duration::from_millis(4999), &mut done);
        assert!(done.is_empty());
        let slack = POLICY.base / 4;
        assert_eq!(p.next_due(), Some(now + Duration::from_secs(5) + slack));
        p.advance(now + Duration::from_secs(5), &mut done);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].1, Verdict::Paid);
    }
}
