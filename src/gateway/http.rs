//! A PSP over HTTP or HTTPS (`--gateway http[s]://HOST:PORT`): each attempt
//! is one `POST {URL}/v1/charges` on hyper's pooled keep-alive client, run on
//! a current-thread tokio runtime of its own thread, so the worker's thread
//! keeps hundreds of payments in flight and only collects replies. That
//! thread also keeps the `--concurrency` limit: the worker hands it every
//! attempt at once and it starts the next the moment a reply frees a slot,
//! so no slot idles while the worker's thread is busy or descheduled. https
//! goes through rustls (ring), the server checked against Mozilla's roots
//! (webpki-roots); a failed handshake is a connection error: transient.
//!
//! # The request
//! `Content-Type: application/json`, `Idempotency-Key:` the order id
//! percent-encoded ([`super::idempotency_key`]), the same on every attempt,
//! redelivery and worker; body
//! `{"order_id": "…", "amount_cents": 1234, "currency": "USD", "payment_token": "…"}`.
//!
//! # The mapping ([`classify`])
//! | answer | reply |
//! |---|---|
//! | 200, 201 with a JSON object body | approved |
//! | 402 | declined |
//! | 408, 425, 429, 5xx, a 200/201 whose body is not a JSON object, a refused or reset connection, no complete answer within the time-out | transient (`Retry-After` in seconds honoured) |
//! | any other status | refused: failed at once, the status in the reason |
//!
//! A time-out is the one ambiguous case: the PSP may have captured and only
//! the answer was lost. Retrying under the same key is what makes that safe.

use super::{idempotency_key, GatewayReply, PaymentGateway, PaymentRequest};
use crate::{Error, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{header, Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The largest response body read, in bytes.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The HTTP gateway. Dropping it stops its runtime and abandons pending
/// attempts (their orders are redelivered or retried under the same key).
pub struct HttpGateway {
    charges: hyper::Uri,
    /// Attempts for the runtime's thread (see [`dispatch`]); dropping it
    /// ends that thread.
    queue: Option<tokio::sync::mpsc::UnboundedSender<(u64, Charge)>>,
    /// The `concurrency` slots at the PSP; closed on drop, so the thread
    /// does not wait for a slot to free first.
    slots: Arc<tokio::sync::Semaphore>,
    replies: mpsc::Receiver<(u64, GatewayReply)>,
    /// Rung after each reply; the worker polls `wake_rx` with its sockets
    /// (see [`PaymentGateway::wake_fd`]).
    wake: Arc<WakeUp>,
    wake_rx: UnixStream,
    pending: usize,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Charge = Request<Full<Bytes>>;

/// What the runtime's thread makes attempts with.
struct Caller {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    replies: mpsc::Sender<(u64, GatewayReply)>,
    wake: Arc<WakeUp>,
}

impl HttpGateway {
    /// A client of the PSP at `base` (`http://HOST:PORT[/PATH]`) with at
    /// most `concurrency` attempts in flight, giving each attempt `timeout`
    /// for the whole answer from the moment it is sent.
    pub fn new(base: &str, timeout: Duration, concurrency: usize) -> Result<HttpGateway> {
        let url = format!("{}/v1/charges", base.trim_end_matches('/'));
        let charges: hyper::Uri = url
            .parse()
            .map_err(|e| Error::Config(format!("--gateway {base}: not a valid URL: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| Error::Config(format!("cannot start the HTTP gateway's runtime: {e}")))?;
        let (wake_tx, wake_rx) = UnixStream::pair()
            .and_then(|(a, b)| {
                a.set_nonblocking(true)
                    .and(b.set_nonblocking(true))
                    .map(|()| (a, b))
            })
            .map_err(|e| {
                Error::Config(format!("cannot make the HTTP gateway's wake-up pipe: {e}"))
            })?;
        let wake = Arc::new(WakeUp {
            tx: wake_tx,
            rung: AtomicBool::new(false),
        });
        let (replies_tx, replies) = mpsc::channel();
        let caller = Caller {
            client: pooled_client(timeout),
            timeout,
            replies: replies_tx,
            wake: wake.clone(),
        };
        let (queue, attempts) = tokio::sync::mpsc::unbounded_channel();
        let slots = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let thread_slots = slots.clone();
        let thread = std::thread::Builder::new()
            .name("gateway-http".into())
            .spawn(move || runtime.block_on(dispatch(attempts, caller, thread_slots)))
            .map_err(|e| Error::Config(format!("cannot start the HTTP gateway's thread: {e}")))?;
        Ok(HttpGateway {
            charges,
            queue: Some(queue),
            slots,
            replies,
            wake,
            wake_rx,
            pending: 0,
            thread: Some(thread),
        })
    }
}

/// hyper's keep-alive pool over plain TCP or rustls, no Nagle delay.
fn pooled_client(timeout: Duration) -> Client<HttpsConnector<HttpConnector>, Full<Bytes>> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// The runtime's thread: takes the attempts in order and starts each as
/// soon as one of the slots is free. A reply frees its slot here,
/// so the next attempt starts without waiting for the worker's thread to
/// see that reply; and a burst of attempts from the worker wakes this
/// thread once, not once each. Ends when the gateway is dropped.
async fn dispatch(
    mut attempts: tokio::sync::mpsc::UnboundedReceiver<(u64, Charge)>,
    caller: Caller,
    slots: Arc<tokio::sync::Semaphore>,
) {
    let caller = Arc::new(caller);
    while let Some((ticket, charge)) = attempts.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let caller = caller.clone();
        tokio::spawn(async move {
            let reply = caller.attempt(charge).await;
            drop(slot);
            // The worker may be gone (stopping): nothing to tell then.
            if caller.replies.send((ticket, reply)).is_ok() {
                caller.wake.ring();
            }
        });
    }
}

impl Caller {
    /// One attempt, to its reply.
    async fn attempt(&self, charge: Charge) -> GatewayReply {
        let exchange = async {
            let response = self
                .client
                .request(charge)
                .await
                .map_err(|e| describe(&e))?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the answer to HTTP {}: {e}", status.as_u16()))?
                .to_bytes();
            Ok::<_, String>((status, retry_after, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok((status, retry_after, body))) => classify(status, retry_after, &body),
            Ok(Err(reason)) => GatewayReply::Transient {
                reason,
                retry_after: None,
            },
            Err(_) => GatewayReply::Transient {
                reason: format!("no answer within {} ms", self.timeout.as_millis()),
                retry_after: None,
            },
        }
    }
}

/// Wakes the worker's poll when replies arrive: one byte per batch of
/// replies rather than one per reply, so a busy worker is not woken (nor a
/// system call made) for each of hundreds of replies.
struct WakeUp {
    tx: UnixStream,
    /// A byte is written and the worker has not drained it yet.
    rung: AtomicBool,
}

impl WakeUp {
    /// After a reply is queued: writes a byte unless one is already waiting
    /// (a full buffer also holds one: nothing is lost).
    fn ring(&self) {
        if !self.rung.swap(true, Ordering::SeqCst) {
            let _ = (&self.tx).write(&[1]);
        }
    }
}

impl Drop for HttpGateway {
    fn drop(&mut self) {
        // The runtime's thread ends when its queue closes; the attempts in
        // flight are abandoned with the runtime.
        self.queue.take();
        self.slots.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The JSON body of one charge.
pub fn charge_body(request: &PaymentRequest<'_>) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let currency = String::from_utf8_lossy(&request.currency);
    format!(
        "{{\"order_id\": {}, \"amount_cents\": {}, \"currency\": {}, \"payment_token\": {}}}",
        quote(request.idempotency_key),
        request.amount_cents,
        quote(&currency),
        quote(request.payment_token),
    )
}

impl PaymentGateway for HttpGateway {
    fn begin(&mut self, ticket: u64, request: &PaymentRequest<'_>) -> Option<GatewayReply> {
        let built = Request::builder()
            .method(Method::POST)
            .uri(self.charges.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", idempotency_key(request.idempotency_key))
            .body(Full::new(Bytes::from(charge_body(request))));
        let req = match built {
            Ok(req) => req,
            Err(e) => {
                return Some(GatewayReply::Refused(format!(
                    "cannot build the request: {e}"
                )))
            }
        };
        let queued = self
            .queue
            .as_ref()
            .is_some_and(|q| q.send((ticket, req)).is_ok());
        if !queued {
            return Some(GatewayReply::Transient {
                reason: "the HTTP gateway's thread is gone".into(),
                retry_after: None,
            });
        }
        self.pending += 1;
        None
    }

    fn poll(&mut self, _now: Instant, ready: &mut Vec<(u64, GatewayReply)>) {
        // Drain the wake-up, then re-arm it, then take the replies: a reply
        // queued after the re-arming rings again, so none waits unseen.
        let mut sink = [0u8; 256];
        while matches!((&self.wake_rx).read(&mut sink), Ok(n) if n > 0) {}
        self.wake.rung.store(false, Ordering::SeqCst);
        while let Ok(reply) = self.replies.try_recv() {
            self.pending = self.pending.saturating_sub(1);
            ready.push(reply);
        }
    }

    /// Never: replies wake the worker through [`wake_fd`](Self::wake_fd).
    fn next_due(&self) -> Option<Instant> {
        None
    }

    fn pending(&self) -> usize {
        self.pending
    }

    fn wake_fd(&self) -> Option<RawFd> {
        Some(self.wake_rx.as_raw_fd())
    }

    fn limits_itself(&self) -> bool {
        true
    }
}

/// A client error as one line: hyper-util's error, then its causes.
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = format!("connection: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Retry-After` in seconds (an HTTP date is not honoured: the back-off applies).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The exact mapping of one answer to a reply (see the module's table).
pub fn classify(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> GatewayReply {
    let code = status.as_u16();
    let reason = || match status.canonical_reason() {
        Some(text) => format!("HTTP {code} {text}"),
        None => format!("HTTP {code}"),
    };
    match code {
        200 | 201 => {
            if serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body).is_ok() {
                GatewayReply::Approved
            } else {
                GatewayReply::Transient {
                    reason: format!("{} with a body that is not a JSON object", reason()),
                    retry_after,
                }
            }
        }
        402 => GatewayReply::Declined,
        408 | 425 | 429 | 500..=599 => GatewayReply::Transient {
            reason: reason(),
            retry_after,
        },
        _ => GatewayReply::Refused(reason()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).unwrap()
    }

    #[test]
    fn statuses_map_exactly() {
        let json = br#"{"status": "captured"}"#;
        assert_eq!(classify(status(200), None, json), GatewayReply::Approved);
        assert_eq!(classify(status(201), None, json), GatewayReply::Approved);
        assert_eq!(classify(status(402), None, b""), GatewayReply::Declined);
        for code in [408, 425, 429, 500, 502, 503, 504, 599] {
            assert!(
                matches!(
                    classify(status(code), None, b""),
                    GatewayReply::Transient { .. }
                ),
                "{code}"
            );
        }
        for code in [204, 301, 400, 401, 403, 404, 409, 422] {
            match classify(status(code), None, json) {
                GatewayReply::Refused(reason) => {
                    assert!(reason.starts_with(&format!("HTTP {code}")), "{reason}")
                }
                other => panic!("{code}: {other:?}"),
            }
        }
        assert_eq!(
            classify(status(400), None, b""),
            GatewayReply::Refused("HTTP 400 Bad Request".into())
        );
    }

    #[test]
    fn a_body_that_is_not_a_json_object_is_transient() {
        for body in [&b"captured"[..], b"", b"[1]", b"{\"a\": ", b"\"ok\""] {
            match classify(status(200), None, body) {
                GatewayReply::Transient { reason, .. } => {
                    assert!(reason.contains("not a JSON object"), "{reason}")
                }
                other => panic!("{body:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn retry_after_in_seconds_is_carried() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(
            classify(status(503), parse_retry_after("2"), b""),
            GatewayReply::Transient {
                reason: "HTTP 503 Service Unavailable".into(),
                retry_after: Some(Duration::from_secs(2)),
            }
        );
    }

    #[test]
    fn the_body_is_json_with_exact_amounts_and_escaped_strings() {
        let body = charge_body(&PaymentRequest {
            idempotency_key: "o-\"1\"",
            payment_token: "tok_visa",
            currency: *b"JPY",
            amount_cents: i64::MAX,
        });
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["order_id"], "o-\"1\"");
        assert_eq!(v["amount_cents"].as_i64(), Some(i64::MAX));
        assert_eq!(v["currency"], "JPY");
        assert_eq!(v["payment_token"], "tok_visa");
    }

    /// Waits (bounded) for the one reply of ticket 9.
    fn one_reply(g: &mut HttpGateway) -> GatewayReply {
        let mut ready = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let fd = g.wake_fd().unwrap();
        while ready.is_empty() && Instant::now() < deadline {
            let mut items = [zmq::PollItem::from_fd(fd, zmq::POLLIN)];
            zmq::poll(&mut items, 100).unwrap();
            g.poll(Instant::now(), &mut ready);
        }
        assert_eq!(ready.len(), 1, "{ready:?}");
        assert_eq!(g.pending(), 0);
        let (ticket, reply) = ready.remove(0);
        assert_eq!(ticket, 9);
        reply
    }

    const REQUEST: PaymentRequest<'static> = PaymentRequest {
        idempotency_key: "o-1",
        payment_token: "tok_visa",
        currency: *b"USD",
        amount_cents: 1,
    };

    #[test]
    fn https_to_a_server_that_does_not_speak_tls_is_transient() {
        // A server that answers plain HTTP to whatever it is sent.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let url = format!("https://localhost:{port}");
        let mut g = HttpGateway::new(&url, Duration::from_secs(5), 8).unwrap();
        assert_eq!(g.begin(9, &REQUEST), None);
        match one_reply(&mut g) {
            GatewayReply::Transient { reason, .. } => {
                assert!(reason.starts_with("connection"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refused_connection_is_transient() {
        // Bind then drop a listener: nothing answers on that port now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let mut g = HttpGateway::new(
            &format!("http://127.0.0.1:{port}"),
            Duration::from_secs(5),
            8,
        )
        .unwrap();
        assert_eq!(g.begin(9, &REQUEST), None);
        match one_reply(&mut g) {
            GatewayReply::Transient { reason, .. } => {
                assert!(reason.starts_with("connection"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// A PSP that holds each request a while and records the most it held
    /// at once; answers 200 with keep-alive.
    fn holding_psp(hold: Duration) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::BufRead;
        use std::sync::atomic::AtomicUsize;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let seen = most.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (open, most) = (open.clone(), most.clone());
                std::thread::spawn(move || {
                    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                    let mut writer = stream;
                    loop {
                        let mut length = 0;
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            let lower = line.to_ascii_lowercase();
                            if let Some(v) = lower.strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap();
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body).unwrap();
                        let now_open = open.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now_open, Ordering::SeqCst);
                        std::thread::sleep(hold);
                        open.fetch_sub(1, Ordering::SeqCst);
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
                        if writer.write_all(answer).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, seen)
    }

    #[test]
    fn never_more_attempts_at_the_psp_than_the_concurrency() {
        let (port, most) = holding_psp(Duration::from_millis(20));
        let url = format!("http://127.0.0.1:{port}");
        let mut g = HttpGateway::new(&url, Duration::from_secs(5), 2).unwrap();
        assert!(g.limits_itself());
        // All eight are handed over at once; the gateway queues six.
        for ticket in 0..8 {
            assert_eq!(g.begin(ticket, &REQUEST), None);
        }
        assert_eq!(g.pending(), 8);
        let mut ready = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while ready.len() < 8 && Instant::now() < deadline {
            let mut items = [zmq::PollItem::from_fd(g.wake_fd().unwrap(), zmq::POLLIN)];
            zmq::poll(&mut items, 100).unwrap();
            g.poll(Instant::now(), &mut ready);
        }
        let mut tickets: Vec<u64> = ready.iter().map(|r| r.0).collect();
        tickets.sort_unstable();
        assert_eq!(tickets, (0..8).collect::<Vec<_>>());
        assert!(
            ready.iter().all(|r| r.1 == GatewayReply::Approved),
            "{ready:?}"
        );
        let most = most.load(Ordering::SeqCst);
        assert!((1..=2).contains(&most), "{most} requests held at once");
    }
}
