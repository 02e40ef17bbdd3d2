//! The payment gateway seen by a worker: the [`PaymentGateway`] trait, what a
//! payment attempt asks ([`PaymentRequest`]) and answers ([`GatewayReply`]),
//! and how `--gateway` picks an implementation ([`GatewayChoice`]).
//!
//! The trait is asynchronous in the plainest way: `begin` starts one attempt
//! and either answers at once or later through `poll`, so one worker thread
//! keeps many payments in flight while a slow gateway thinks. Retrying,
//! back-off and giving up belong to [`crate::payments`], not to a gateway: a
//! gateway only says what one attempt did.
//!
//! - [`sim`]: the built-in simulated gateway (`--gateway sim`, the default).
//! - [`http`]: a PSP over HTTP or HTTPS (`--gateway http[s]://HOST:PORT`):
//!   hyper's pooled keep-alive client on a tokio runtime of its own thread,
//!   TLS by rustls.
//!
//! Every attempt carries the order id as its idempotency key, the same on
//! every retry, redelivery and worker, so a PSP charges an order once.

pub mod http;
pub mod sim;

pub use sim::{SimulatedGateway, CRASH_PREFIX, DECLINE_PREFIX, FLAKY_FAILURES, FLAKY_PREFIX};

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayReply {
    /// Captured: the order is paid.
    Approved,
    /// The payment method was declined (a final answer, not a failure).
    Declined,
    /// This attempt failed but another may succeed (the worker retries with
    /// back-off); `retry_after` is the gateway's own hint, if it gave one.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Failed for good: no retry can help. The reason goes to the dead letter.
    Refused(String),
}

/// A payment gateway that can hold many payments in flight.
pub trait PaymentGateway {
    /// Starts one payment attempt. Returns the reply if the gateway answers at
    /// once; otherwise the reply arrives later from [`poll`](Self::poll) under `ticket`.
    fn begin(&mut self, ticket: u64, request: &PaymentRequest<'_>) -> Option<GatewayReply>;
    /// Appends the replies that have arrived by `now`.
    fn poll(&mut self, now: Instant, ready: &mut Vec<(u64, GatewayReply)>);
    /// When the worker should poll again, if any payment is pending.
    fn next_due(&self) -> Option<Instant>;
    /// How many payments are pending.
    fn pending(&self) -> usize;
    /// A descriptor that becomes readable when a reply arrives, for a
    /// gateway whose replies come from another thread: the worker polls it
    /// with its sockets instead of waking up on a timer.
    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// True for a gateway that keeps its own limit of attempts in flight and
    /// queues the rest: the state machine then hands it every attempt at
    /// once, so a slot freed by a reply is filled in the gateway's own
    /// thread, without waiting for the worker's thread to see the reply.
    fn limits_itself(&self) -> bool {
        false
    }
}

/// Which gateway `--gateway` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayChoice {
    /// The built-in simulated gateway.
    Simulated,
    /// A PSP over HTTP or HTTPS at this base URL (no trailing slash).
    Http(String),
}

impl std::str::FromStr for GatewayChoice {
    type Err = String;

    /// `sim`, or an `http[s]://HOST:PORT[/PATH]` base URL.
    fn from_str(s: &str) -> Result<GatewayChoice, String> {
        if s == "sim" {
            return Ok(GatewayChoice::Simulated);
        }
        let Some(rest) = s
            .strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"))
        else {
            return Err(format!(
                "{s}: expected `sim` or an http[s]://HOST[:PORT] URL"
            ));
        };
        let authority = rest.split('/').next().unwrap_or("");
        if authority.is_empty() {
            return Err(format!("{s}: the URL has no host"));
        }
        let base = s.trim_end_matches('/').to_string();
        base.parse::<::http::Uri>()
            .map_err(|e| format!("{s}: not a valid URL: {e}"))?;
        Ok(GatewayChoice::Http(base))
    }
}

/// The idempotency key of an order id: RFC 3986 percent-encoding, the
/// unreserved characters (`A-Z a-z 0-9 - . _ ~`) kept as they are, every
/// other byte of the UTF-8 as `%XX` (upper-case hex).
pub fn idempotency_key(order_id: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(order_id.len());
    for &b in order_id.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_unreserved_and_encode_the_rest() {
        assert_eq!(idempotency_key("o-1.a_b~Z9"), "o-1.a_b~Z9");
        assert_eq!(idempotency_key("a b/c%"), "a%20b%2Fc%25");
        assert_eq!(idempotency_key("é"), "%C3%A9");
        assert_eq!(idempotency_key("x\r\ny"), "x%0D%0Ay");
    }

    #[test]
    fn gateway_choices() {
        assert_eq!("sim".parse(), Ok(GatewayChoice::Simulated));
        assert_eq!(
            "http://127.0.0.1:8099/".parse(),
            Ok(GatewayChoice::Http("http://127.0.0.1:8099".into()))
        );
        assert_eq!(
            "https://psp.example/api".parse(),
            Ok(GatewayChoice::Http("https://psp.example/api".into()))
        );
        assert!("ftp://x".parse::<GatewayChoice>().is_err());
        assert!("http://".parse::<GatewayChoice>().is_err());
    }
}
