//! A PSP over HTTP or HTTPS (`--gateway http[s]://HOST:PORT`): each attempt
//! is one `POST {URL}/v1/charges` on hyper's pooled keep-alive client, run on
//! a current-thread tokio runtime of its own thread, so the worker's thread
//! keeps hundreds of payments in flight and only collects replies. https
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
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The largest response body read, in bytes.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The HTTP gateway. Dropping it stops its runtime and abandons pending
/// attempts (their orders are redelivered or retried under the same key).
pub struct HttpGateway {
    handle: tokio::runtime::Handle,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    charges: hyper::Uri,
    timeout: Duration,
    tx: mpsc::Sender<(u64, GatewayReply)>,
    rx: mpsc::Receiver<(u64, GatewayReply)>,
    /// A byte is written to `wake_tx` after each reply; the worker polls
    /// `wake_rx` with its sockets (see [`PaymentGateway::wake_fd`]).
    wake_tx: Arc<UnixStream>,
    wake_rx: UnixStream,
    pending: usize,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpGateway {
    /// A client of the PSP at `base` (`http://HOST:PORT[/PATH]`), giving
    /// each attempt `timeout` for the whole answer.
    pub fn new(base: &str, timeout: Duration) -> Result<HttpGateway> {
        let url = format!("{}/v1/charges", base.trim_end_matches('/'));
        let charges: hyper::Uri = url
            .parse()
            .map_err(|e| Error::Config(format!("--gateway {base}: not a valid URL: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| Error::Config(format!("cannot start the HTTP gateway's runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("gateway-http".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| Error::Config(format!("cannot start the HTTP gateway's thread: {e}")))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let (tx, rx) = mpsc::channel();
        let (wake_tx, wake_rx) = UnixStream::pair()
            .and_then(|(a, b)| {
                a.set_nonblocking(true)
                    .and(b.set_nonblocking(true))
                    .map(|()| (a, b))
            })
            .map_err(|e| {
                Error::Config(format!("cannot make the HTTP gateway's wake-up pipe: {e}"))
            })?;
        Ok(HttpGateway {
            wake_tx: Arc::new(wake_tx),
            wake_rx,
            handle,
            client,
            charges,
            timeout,
            tx,
            rx,
            pending: 0,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for HttpGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
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
        let client = self.client.clone();
        let tx = self.tx.clone();
        let wake = self.wake_tx.clone();
        let timeout = self.timeout;
        self.pending += 1;
        self.handle.spawn(async move {
            let attempt = async {
                let response = client.request(req).await.map_err(|e| describe(&e))?;
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
            let reply = match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok((status, retry_after, body))) => classify(status, retry_after, &body),
                Ok(Err(reason)) => GatewayReply::Transient {
                    reason,
                    retry_after: None,
                },
                Err(_) => GatewayReply::Transient {
                    reason: format!("no answer within {} ms", timeout.as_millis()),
                    retry_after: None,
                },
            };
            // The worker may be gone (stopping): nothing to tell then. A
            // full wake-up buffer already holds a wake-up: nothing lost.
            if tx.send((ticket, reply)).is_ok() {
                let _ = (&*wake).write(&[1]);
            }
        });
        None
    }

    fn poll(&mut self, _now: Instant, ready: &mut Vec<(u64, GatewayReply)>) {
        // Drain the wake-ups first: a reply sent after this is seen now or
        // wakes the next poll.
        let mut sink = [0u8; 256];
        while matches!((&self.wake_rx).read(&mut sink), Ok(n) if n > 0) {}
        while let Ok(reply) = self.rx.try_recv() {
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
        let mut g = HttpGateway::new(&url, Duration::from_secs(5)).unwrap();
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
        let mut g =
            HttpGateway::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(5)).unwrap();
        assert_eq!(g.begin(9, &REQUEST), None);
        match one_reply(&mut g) {
            GatewayReply::Transient { reason, .. } => {
                assert!(reason.starts_with("connection"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
}
