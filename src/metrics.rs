//! Prometheus metrics: every role keeps its counters here, and with
//! `--metrics ADDR` serves them as text on `http://ADDR/metrics`.
//!
//! The encoding is the `prometheus-client` crate's; `tiny_http` serves it
//! from one background thread. Counters are atomics bumped once per frame,
//! not per order, so keeping them costs nothing measurable.

use crate::{Error, Result};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};

/// An outcome label (`paid`, `declined`, `bad_currency`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// A reason label for dropped input.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Every metric a role may keep; each role registers the ones it uses.
#[derive(Clone)]
pub struct Metrics {
    /// Ventilator: counted lines read from the input.
    pub lines_read: Counter,
    /// Ventilator: orders sent to workers (first deliveries and again).
    pub dispatched: Counter,
    /// Ventilator: orders acknowledged by the sink.
    pub acked: Counter,
    /// Ventilator: deliveries after the first.
    pub redelivered: Counter,
    /// Ventilator: orders given up as poison.
    pub poisoned: Counter,
    /// Ventilator: orders sent and not acknowledged; worker: payments at the gateway.
    pub in_flight: Gauge,
    /// Ventilator: the adaptive in-flight limit.
    pub in_flight_limit: Gauge,
    /// Worker: orders processed, by outcome; sink: orders tallied, by outcome.
    pub orders: Family<OutcomeLabel, Counter>,
    /// Worker: payment attempts retried after a transient failure.
    pub retries: Counter,
    /// Sink: results received (repeats included).
    pub results_received: Counter,
    /// Sink: results for orders already tallied.
    pub duplicate_results: Counter,
    /// All roles: frames dropped because they did not decode.
    pub bad_frames: Counter,
    /// Sink: results dropped, by reason.
    pub dropped_results: Family<ReasonLabel, Counter>,
    /// Sink: seconds per journal fsync.
    pub fsync_seconds: Histogram,
    /// Sink: the run's counted lines, once known.
    pub total: Gauge,
    /// Sink: 1 while journal writes are failing (a full disk) and retried.
    pub journal_failing: Gauge,
    /// Why the role cannot work right now (`/healthz` answers 503 with it).
    problem: Arc<Mutex<Option<String>>>,
    /// Ventilator and worker: seconds since the sink (or, for a worker,
    /// the ventilator) was last heard from; 0 while it answers.
    pub peer_silence: Gauge,
    /// Ventilator: seconds from a line read to its order acknowledged (one order in 16, by seq).
    pub ack_latency_seconds: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics { .. }")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            lines_read: Counter::default(),
            dispatched: Counter::default(),
            acked: Counter::default(),
            redelivered: Counter::default(),
            poisoned: Counter::default(),
            in_flight: Gauge::default(),
            in_flight_limit: Gauge::default(),
            orders: Family::default(),
            retries: Counter::default(),
            results_received: Counter::default(),
            duplicate_results: Counter::default(),
            bad_frames: Counter::default(),
            dropped_results: Family::default(),
            // 100 µs to ~6.5 s.
            fsync_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            total: Gauge::default(),
            journal_failing: Gauge::default(),
            problem: Arc::default(),
            peer_silence: Gauge::default(),
            // 1 ms to ~65 s.
            ack_latency_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
        }
    }
}

impl Metrics {
    /// The registry of what `role` exports.
    fn registry(&self, role: &str) -> Registry {
        let mut r = Registry::with_prefix("ordergrid");
        match role {
            "ventilator" => {
                r.register(
                    "lines_read",
                    "Counted input lines read",
                    self.lines_read.clone(),
                );
                r.register(
                    "orders_dispatched",
                    "Orders sent to workers, redeliveries included",
                    self.dispatched.clone(),
                );
                r.register(
                    "orders_acked",
                    "Orders acknowledged by the sink (durable)",
                    self.acked.clone(),
                );
                r.register(
                    "orders_redelivered",
                    "Deliveries after the first",
                    self.redelivered.clone(),
                );
                r.register(
                    "orders_poisoned",
                    "Orders given up after repeated deliveries",
                    self.poisoned.clone(),
                );
                r.register(
                    "orders_in_flight",
                    "Orders sent and not yet acknowledged",
                    self.in_flight.clone(),
                );
                r.register(
                    "in_flight_limit",
                    "Orders the live workers can hold (their credit)",
                    self.in_flight_limit.clone(),
                );
                r.register(
                    "sink_silence_seconds",
                    "Seconds since the sink last answered (0 while it answers)",
                    self.peer_silence.clone(),
                );
                r.register(
                    "ack_latency_seconds",
                    "Seconds from a line read to its order acknowledged (one order in 16)",
                    self.ack_latency_seconds.clone(),
                );
            }
            "worker" => {
                r.register(
                    "orders_processed",
                    "Orders processed, by outcome",
                    self.orders.clone(),
                );
                r.register(
                    "payments_in_flight",
                    "Payment attempts at the gateway now (at most --concurrency)",
                    self.in_flight.clone(),
                );
                r.register(
                    "payment_retries",
                    "Payment attempts retried after a transient failure",
                    self.retries.clone(),
                );
                r.register(
                    "ventilator_silence_seconds",
                    "Seconds since the ventilator last sent anything (0 while it does)",
                    self.peer_silence.clone(),
                );
            }
            _ => {
                r.register(
                    "orders_tallied",
                    "Orders tallied (durable once acknowledged), by outcome",
                    self.orders.clone(),
                );
                r.register(
                    "results_received",
                    "Results received, repeats included",
                    self.results_received.clone(),
                );
                r.register(
                    "duplicate_results",
                    "Results for orders already tallied (redeliveries)",
                    self.duplicate_results.clone(),
                );
                r.register(
                    "dropped_results",
                    "Results dropped, by reason",
                    self.dropped_results.clone(),
                );
                r.register(
                    "journal_fsync_seconds",
                    "Time per journal fsync",
                    self.fsync_seconds.clone(),
                );
                r.register(
                    "orders_expected",
                    "Counted lines of the run, once the input is read",
                    self.total.clone(),
                );
                r.register(
                    "journal_failing",
                    "1 while journal writes fail (e.g. a full disk) and are retried; nothing new is acknowledged meanwhile",
                    self.journal_failing.clone(),
                );
                for reason in DROP_REASONS {
                    self.drop_result(reason, 0);
                }
            }
        }
        r.register(
            "bad_frames",
            "Frames dropped because they did not decode",
            self.bad_frames.clone(),
        );
        r
    }

    /// Says why the role cannot work right now (`None`: it can).
    pub fn set_problem(&self, problem: Option<String>) {
        if let Ok(mut p) = self.problem.lock() {
            *p = problem;
        }
    }

    /// Why the role cannot work right now, if it cannot.
    pub fn problem(&self) -> Option<String> {
        self.problem.lock().ok().and_then(|p| p.clone())
    }

    /// Serves `role`'s metrics on `http://addr/metrics` (and `/healthz`)
    /// from a background thread, with `pages` (the sink's dashboard) on the
    /// same listener. `:9101` listens on every interface; port 0 takes a
    /// free port, logged with the address.
    pub fn serve(
        &self,
        role: &'static str,
        addr: &str,
        pages: Option<Box<dyn Pages>>,
    ) -> Result<()> {
        let addr = if addr.starts_with(':') {
            format!("0.0.0.0{addr}")
        } else {
            addr.to_owned()
        };
        let server = tiny_http::Server::http(&addr)
            .map_err(|e| Error::Config(format!("cannot serve metrics on {addr}: {e}")))?;
        let bound = server
            .server_addr()
            .to_ip()
            .map_or_else(|| addr.clone(), |a| a.to_string());
        if role != "ventilator" {
            let codes = 0..crate::rules::OUTCOME_CODES as u8;
            for outcome in codes.filter_map(crate::rules::Outcome::from_code) {
                self.count_outcome(outcome, 0);
            }
        }
        let registry = Arc::new(self.registry(role));
        let problem = self.problem.clone();
        match &pages {
            Some(_) => {
                tracing::info!(dashboard = %format!("http://{bound}/"), metrics = %format!("http://{bound}/metrics"), healthz = %format!("http://{bound}/healthz"), "serving the dashboard and metrics")
            }
            None => {
                tracing::info!(metrics = %format!("http://{bound}/metrics"), healthz = %format!("http://{bound}/healthz"), "serving metrics")
            }
        }
        std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                for request in server.incoming_requests() {
                    let response = pages
                        .as_ref()
                        .and_then(|p| p.answer(&request))
                        .unwrap_or_else(|| {
                            answer_metrics(&request, &registry, &problem, pages.as_deref())
                        });
                    let _ = request.respond(response);
                }
            })
            .map_err(|e| Error::Config(format!("cannot start the metrics thread: {e}")))?;
        Ok(())
    }

    /// Counts `n` orders of `outcome`.
    pub fn count_outcome(&self, outcome: crate::rules::Outcome, n: u64) {
        self.orders
            .get_or_create(&OutcomeLabel {
                outcome: outcome_name(outcome),
            })
            .inc_by(n);
    }

    /// Counts a dropped result.
    pub fn drop_result(&self, reason: &'static str, n: u64) {
        self.dropped_results
            .get_or_create(&ReasonLabel { reason })
            .inc_by(n);
    }
}

/// A response with its body in memory, as every page here is.
pub type HttpResponse = tiny_http::Response<std::io::Cursor<Vec<u8>>>;

/// More pages on the metrics listener (the sink's dashboard).
pub trait Pages: Send + 'static {
    /// The response for `request`, or `None` if it is not one of these pages.
    fn answer(&self, request: &tiny_http::Request) -> Option<HttpResponse>;
    /// These pages' paths, for the not-found message ("/, /api/status, ").
    fn paths(&self) -> &'static str;
}

/// `/metrics`, `/healthz`, or not found.
fn answer_metrics(
    request: &tiny_http::Request,
    registry: &Registry,
    problem: &Mutex<Option<String>>,
    pages: Option<&dyn Pages>,
) -> HttpResponse {
    let path = request.url().split('?').next().unwrap_or("");
    if path == "/healthz" {
        return match problem.lock().ok().and_then(|p| p.clone()) {
            None => tiny_http::Response::from_string("ok\n"),
            Some(why) => tiny_http::Response::from_string(format!("{why}\n")).with_status_code(503),
        };
    }
    if path == "/metrics" || (path == "/" && pages.is_none()) {
        let mut body = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut body, registry);
        let header = tiny_http::Header::from_bytes(
            &b"Content-Type"[..],
            &b"application/openmetrics-text; version=1.0.0; charset=utf-8"[..],
        )
        .expect("a valid header");
        return tiny_http::Response::from_string(body).with_header(header);
    }
    let others = pages.map_or("", |p| p.paths());
    tiny_http::Response::from_string(format!("not found: try {others}/metrics or /healthz\n"))
        .with_status_code(404)
}

/// Every reason a sink drops a result for (exported at 0 from the start).
const DROP_REASONS: [&str; 4] = ["other_run", "unknown_order", "invalid", "unauthenticated"];

/// The label of an outcome.
pub fn outcome_name(outcome: crate::rules::Outcome) -> &'static str {
    use crate::rules::Outcome;
    match outcome {
        Outcome::Paid => "paid",
        Outcome::Declined => "declined",
        Outcome::Rejected(r) => r.name(),
        Outcome::Failed => "failed",
        Outcome::Duplicate => "duplicate",
        Outcome::Malformed => "malformed",
        Outcome::OnHand => "on_hand",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Outcome;

    #[test]
    fn encodes_what_the_role_registers() {
        let m = Metrics::default();
        m.count_outcome(Outcome::Paid, 3);
        m.drop_result("other_run", 1);
        m.fsync_seconds.observe(0.004);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry("sink")).unwrap();
        assert!(
            text.contains("ordergrid_orders_tallied_total{outcome=\"paid\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("ordergrid_dropped_results_total{reason=\"other_run\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ordergrid_journal_fsync_seconds_count 1"),
            "{text}"
        );
        assert!(!text.contains("orders_dispatched"), "{text}");
    }

    #[test]
    fn serves_over_http() {
        let m = Metrics::default();
        m.dispatched.inc_by(42);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        m.serve("ventilator", &addr, None).unwrap();
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        assert!(
            body.contains("ordergrid_orders_dispatched_total 42"),
            "{body}"
        );
    }
}
