//! The built-in simulated gateway (`--gateway sim`, the default): a fixed
//! latency per attempt, declines, transient failures and poison tokens decided
//! by the token's prefix. No network: the worker's benchmarks and contract
//! tests run on it.

use super::{GatewayReply, PaymentGateway, PaymentRequest};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

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
                return GatewayReply::Transient {
                    reason: "simulated transient failure".into(),
                    retry_after: None,
                };
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
        while self
            .in_flight
            .front()
            .is_some_and(|&(due, _, _)| due <= now)
        {
            if let Some((_, ticket, reply)) = self.in_flight.pop_front() {
                ready.push((ticket, reply));
            }
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
                Some(GatewayReply::Transient {
                    reason: "simulated transient failure".into(),
                    retry_after: None
                })
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
