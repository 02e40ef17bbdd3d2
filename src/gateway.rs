//! The payment gateway seen by a worker: the [`PaymentGateway`] trait and the
//! default [`SimulatedGateway`].
//!
//! The trait is asynchronous in the plainest way: `begin` starts a payment and
//! either answers at once or later through `poll`, so one worker thread keeps
//! many payments in flight while a slow gateway thinks, with no runtime.
//! A network gateway would implement it over a connection pool; its calls
//! carry the order id as idempotency key, so a redelivered order is not
//! charged twice.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// What a worker asks the gateway to do.
#[derive(Debug, Clone, Copy)]
pub struct PaymentRequest<'a> {
    /// The order id: the same order is never charged twice under one key.
    pub idempotency_key: &'a str,
    pub payment_token: &'a str,
    pub currency: [u8; 3],
    pub amount_cents: i64,
}

/// The gateway's answer to one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayReply {
    Approved,
    Declined,
    /// Try again later (the worker retries with backoff).
    TransientFailure,
}

/// A payment gateway that can hold many payments in flight.
pub trait PaymentGateway {
    /// Starts one payment attempt. Returns the reply if the gateway answers at
    /// once; otherwise the reply arrives later from [`poll`](Self::poll) under `ticket`.
    fn begin(&mut self, ticket: u64, request: &PaymentRequest<'_>) -> Option<GatewayReply>;
    /// Appends the replies that have arrived by `now`.
    fn poll(&mut self, now: Instant, ready: &mut Vec<(u64, GatewayReply)>);
    /// When the next pending reply is due, if any payment is pending.
    fn next_due(&self) -> Option<Instant>;
    /// How many payments are pending.
    fn pending(&self) -> usize;
}

/// Token prefix the simulated gateway declines.
pub const DECLINE_PREFIX: &str = "tok_decline";
/// Token prefix that fails transiently on its first attempts.
pub const FLAKY_PREFIX: &str = "tok_flaky";
/// Token prefix that aborts the whole process: a stand-in for a poison order.
pub const CRASH_PREFIX: &str = "tok_crash";
/// How many attempts of a flaky token fail before one succeeds.
pub const FLAKY_FAILURES: u8 = 2;

/// The default gateway: a fixed latency per attempt, declines, transient
/// failures and poison tokens decided by the token's prefix.
#[derive(Debug)]
pub struct SimulatedGateway {
    latency: Duration,
    in_flight: VecDeque<(Instant, u64, GatewayReply)>,
    flaky_attempts: HashMap<String, u8>,
}

impl SimulatedGateway {
    /// A gateway that answers each attempt after `latency`.
    pub fn new(latency: Duration) -> SimulatedGateway {
        SimulatedGateway {
            latency,
            in_flight: VecDeque::new(),
            flaky_attempts: HashMap::new(),
        }
    }

    fn decide(&mut self, request: &PaymentRequest<'_>) -> GatewayReply {
        let token = request.payment_token;
        if token.starts_with(CRASH_PREFIX) {
            // The poison order: it takes down whatever handles it.
            std::process::abort();
        }
        if token.starts_with(DECLINE_PREFIX) {
            return GatewayReply::Declined;
        }
        if token.starts_with(FLAKY_PREFIX) {
            let attempts = self
                .flaky_attempts
                .entry(request.idempotency_key.to_owned())
                .or_insert(0);
            *attempts += 1;
            if *attempts <= FLAKY_FAILURES {
                return GatewayReply::TransientFailure;
            }
            self.flaky_attempts.remove(request.idempotency_key);
        }
        GatewayReply::Approved
    }
}

impl PaymentGateway for SimulatedGateway {
    fn begin(&mut self, ticket: u64, request: &PaymentRequest<'_>) -> Option<GatewayReply> {
        let reply = self.decide(request);
        if self.latency.is_zero() {
            return Some(reply);
        }
        // Constant latency: replies fall due in the order they were asked for.
        self.in_flight
            .push_back((Instant::now() + self.latency, ticket, reply));
        None
    }

    fn poll(&mut self, now: Instant, ready: &mut Vec<(u64, GatewayReply)>) {
        while let Some(&(due, ticket, reply)) = self.in_flight.front() {
            if due > now {
                break;
            }
            self.in_flight.pop_front();
            ready.push((ticket, reply));
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.in_flight.front().map(|&(due, _, _)| due)
    }

    fn pending(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(key: &'a str, token: &'a str) -> PaymentRequest<'a> {
        PaymentRequest {
            idempotency_key: key,
            payment_token: token,
            currency: *b"USD",
            amount_cents: 100,
        }
    }

    #[test]
    fn immediate_replies_by_token() {
        let mut g = SimulatedGateway::new(Duration::ZERO);
        assert_eq!(
            g.begin(1, &request("a", "tok_visa")),
            Some(GatewayReply::Approved)
        );
        assert_eq!(
            g.begin(2, &request("b", "tok_decline_x")),
            Some(GatewayReply::Declined)
        );
        for _ in 0..FLAKY_FAILURES {
            assert_eq!(
                g.begin(3, &request("c", "tok_flaky")),
                Some(GatewayReply::TransientFailure)
            );
        }
        assert_eq!(
            g.begin(3, &request("c", "tok_flaky")),
            Some(GatewayReply::Approved)
        );
        assert_eq!(g.pending(), 0);
    }

    #[test]
    fn latency_holds_replies_until_due() {
        let mut g = SimulatedGateway::new(Duration::from_secs(3600));
        assert_eq!(g.begin(7, &request("a", "tok_visa")), None);
        assert_eq!(g.begin(8, &request("b", "tok_decline")), None);
        assert_eq!(g.pending(), 2);
        let mut ready = Vec::new();
        g.poll(Instant::now(), &mut ready);
        assert!(ready.is_empty());
        let due = g.next_due().unwrap();
        g.poll(due + Duration::from_secs(1), &mut ready);
        assert_eq!(
            ready,
            vec![(7, GatewayReply::Approved), (8, GatewayReply::Declined)]
        );
        assert_eq!(g.pending(), 0);
    }
}
