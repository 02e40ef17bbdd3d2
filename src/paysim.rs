//! `ordergrid-paysim`: a payment service provider to run the HTTP gateway
//! against, idempotent like a real one, with faults on demand and a ledger
//! that proves each order was charged once.
//!
//! # The API
//! - `POST /v1/charges`, header `Idempotency-Key`, body
//!   `{"order_id", "amount_cents", "currency", "payment_token"}`:
//!   201 `{"status": "captured", …}`, 402 `{"status": "declined"}`, 400 for a
//!   request without a key or with a body that is not such an object.
//!   Tokens as in the built-in simulator: `tok_decline…` is declined,
//!   `tok_flaky…` answers 503 to the first two attempts of a key, anything
//!   else is captured.
//! - A key seen before gets the stored answer again without a new charge (a
//!   *replay*); the same key with a different body gets 409 (a *conflict*).
//!   A key whose first answer is still being made durable gets 503.
//! - `GET /v1/ledger`: `{"requests", "charges", "replays", "conflicts",
//!   "declines", "captured": {"USD": {"charges", "amount_cents"}}}`, amounts
//!   as exact integers (i128: they pass i64::MAX).
//!
//! # Faults
//! `--latency-ms` delays every charge, counted from the request's arrival,
//! by that much on average (see [`Delay`]); `--fail-rate` answers that share of
//! charges 503 without charging; `--late-rate` charges, then holds the answer
//! for `--late-hold-ms` (past any client time-out: the client's retry must
//! get the stored answer, not a second charge).
//!
//! # Durability
//! With `--journal FILE`, each final answer (capture or decline) is appended
//! as one JSON line and fsynced before it is given (group commit: a writer
//! thread fsyncs whatever arrived during the previous fsync). On start the
//! journal is replayed, so a killed paysim keeps its charges and amounts
//! (the request, replay and conflict counters start again at 0). A torn last
//! line is ignored.

use crate::shutdown::Shutdown;
use crate::{Error, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// The largest request body read, in bytes.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// The longest idempotency key accepted, in bytes.
const MAX_KEY_BYTES: usize = 1024;
/// Where paysim's delay starts: tokio's timers tick in whole milliseconds
/// and round a deadline up to the next tick, and its driver rounds its wait
/// up again (a 5 ms sleep took 6.3 ms on average here). [`Delay`] learns the
/// rest from what it measures.
pub const TIMER_SLACK: Duration = Duration::from_millis(1);
/// How much of each measured error [`Delay`] corrects: 1/1024. Small,
/// because the loop is slow: with 128 charges asleep at once, each error
/// is learnt after 128 other charges chose their wake-up (a gain of 1/16
/// made the lead swing, and the mean settled 0.2 ms short).
const LEAD_GAIN_SHIFT: u32 = 10;

/// Keeps the mean delay of the charges at `--latency-ms`, however late the
/// timer wakes (its rounding, and a busy machine's scheduling, add 0.5 to
/// 1.5 ms to a 5 ms sleep). Each charge sleeps until `arrival + latency -
/// lead`; the error of each wake-up against `arrival + latency` adjusts the
/// lead by a small share, so on average answers leave at the latency asked
/// (single answers come a little early or late). Without I/O: the handler
/// passes the instants.
#[derive(Debug)]
pub struct Delay {
    latency: Duration,
    /// Nanoseconds to wake before the target, in [0, latency].
    lead_ns: std::sync::atomic::AtomicI64,
    delayed: std::sync::atomic::AtomicU64,
    total_ns: std::sync::atomic::AtomicU64,
}

impl Delay {
    pub fn new(latency: Duration) -> Delay {
        Delay {
            latency,
            lead_ns: (TIMER_SLACK.min(latency / 2).as_nanos() as i64).into(),
            delayed: 0.into(),
            total_ns: 0.into(),
        }
    }

    /// When a charge that arrived at `arrival` should wake.
    pub fn wake_at<I>(&self, arrival: I) -> I
    where
        I: std::ops::Add<Duration, Output = I> + std::ops::Sub<Duration, Output = I>,
    {
        let lead = self.lead_ns.load(std::sync::atomic::Ordering::Relaxed) as u64;
        arrival + self.latency - Duration::from_nanos(lead)
    }

    /// A charge that arrived at `arrival` woke at `woke`: learn the error.
    pub fn woke(&self, arrival: std::time::Instant, woke: std::time::Instant) {
        use std::sync::atomic::Ordering::Relaxed;
        let took = woke.saturating_duration_since(arrival);
        let error = took.as_nanos() as i64 - self.latency.as_nanos() as i64;
        let lead = self.lead_ns.load(Relaxed) + (error >> LEAD_GAIN_SHIFT);
        let most = self.latency.as_nanos() as i64;
        self.lead_ns.store(lead.clamp(0, most), Relaxed);
        self.delayed.fetch_add(1, Relaxed);
        self.total_ns.fetch_add(took.as_nanos() as u64, Relaxed);
    }

    /// Charges delayed so far, and their mean delay.
    pub fn mean(&self) -> (u64, Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let n = self.delayed.load(Relaxed);
        let total = self.total_ns.load(Relaxed);
        (n, Duration::from_nanos(total.checked_div(n).unwrap_or(0)))
    }
}

/// How many attempts of a flaky token's key answer 503.
const FLAKY_FAILURES: u8 = crate::gateway::FLAKY_FAILURES;

/// What paysim needs to run.
#[derive(Debug, Clone)]
pub struct PaysimConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: String,
    pub latency: Duration,
    pub fail_rate: f64,
    pub late_rate: f64,
    /// How long a late answer is held.
    pub late_hold: Duration,
    pub journal: Option<PathBuf>,
}

/// One charge request's body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct ChargeBody {
    order_id: String,
    amount_cents: i64,
    currency: String,
    payment_token: String,
}

/// A key's first answer, kept for replays (and, journaled, across restarts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    key: String,
    /// The body's digest: a different body under this key is a conflict.
    digest: String,
    captured: bool,
    currency: String,
    amount_cents: i64,
    #[serde(skip)]
    durable: bool,
}

/// Captures in one currency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Captured {
    pub charges: u64,
    pub amount_cents: i128,
}

/// The ledger `GET /v1/ledger` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ledger {
    pub requests: u64,
    /// Distinct keys captured.
    pub charges: u64,
    pub replays: u64,
    pub conflicts: u64,
    pub declines: u64,
    pub captured: BTreeMap<String, Captured>,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, Stored>,
    flaky: HashMap<String, u8>,
    ledger: Ledger,
    rng: u64,
}

impl State {
    fn record(&mut self, stored: Stored) {
        if stored.captured {
            self.ledger.charges += 1;
            let c = self
                .ledger
                .captured
                .entry(stored.currency.clone())
                .or_default();
            c.charges += 1;
            c.amount_cents += i128::from(stored.amount_cents);
        } else {
            self.ledger.declines += 1;
        }
        self.keys.insert(stored.key.clone(), stored);
    }

    /// A number in [0, 1).
    fn roll(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The group-committing journal writer: lines in, each answered once fsynced.
type JournalTx = mpsc::Sender<(String, tokio::sync::oneshot::Sender<bool>)>;

struct Sim {
    config: PaysimConfig,
    delay: Delay,
    state: Mutex<State>,
    journal: Option<Mutex<JournalTx>>,
}

/// Runs paysim until `shutdown`; `on_listen` gets the bound address first.
pub fn run(
    config: PaysimConfig,
    shutdown: &Shutdown,
    on_listen: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    let mut state = State {
        rng: seed(),
        ..State::default()
    };
    let journal = match &config.journal {
        Some(path) => {
            let replayed = replay(path, &mut state)?;
            tracing::info!(journal = %path.display(), answers = replayed, "journal replayed");
            Some(Mutex::new(start_journal(path)?))
        }
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| Error::Config(format!("cannot start the runtime: {e}")))?;
    let sim = Arc::new(Sim {
        delay: Delay::new(config.latency),
        config,
        state: Mutex::new(state),
        journal,
    });
    runtime.block_on(serve(sim, shutdown, on_listen))
}

async fn serve(
    sim: Arc<Sim>,
    shutdown: &Shutdown,
    on_listen: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    let listen = sim.config.listen.clone();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("cannot listen on {listen}: {e}")))?;
    on_listen(addr);
    while !shutdown.requested() {
        let accepted =
            match tokio::time::timeout(Duration::from_millis(100), listener.accept()).await {
                Err(_) => continue,
                Ok(accepted) => accepted,
            };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: wait, do not spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let sim = sim.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let sim = sim.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(sim, req).await) }
            });
            // A client that hangs up mid-answer is its own business.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    let (delayed, mean) = sim.delay.mean();
    tracing::info!(
        delayed,
        mean_delay_ms = format!("{:.3}", mean.as_secs_f64() * 1e3),
        "paysim stopped"
    );
    Ok(())
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, what: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": what }).to_string();
    json(status, body)
}

async fn handle(sim: Arc<Sim>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/v1/charges") => charge(sim, req).await,
        (&Method::GET, "/v1/ledger") => {
            let ledger = lock(&sim.state).ledger.clone();
            match serde_json::to_string(&ledger) {
                Ok(body) => json(StatusCode::OK, body),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        (_, "/v1/charges" | "/v1/ledger") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "no such resource"),
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panicking handler cannot leave the maps half-updated: every update
    // is a few plain inserts. Keep serving.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

async fn charge(sim: Arc<Sim>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let arrival = tokio::time::Instant::now();
    lock(&sim.state).ledger.requests += 1;
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_BYTES);
    let Some(key) = key else {
        return error(
            StatusCode::BAD_REQUEST,
            "missing or oversized Idempotency-Key header",
        );
    };
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}"),
            )
        }
    };
    let charge: ChargeBody = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad charge: {e}")),
    };
    if charge.amount_cents < 0 {
        return error(StatusCode::BAD_REQUEST, "bad charge: negative amount");
    }
    if !sim.config.latency.is_zero() {
        tokio::time::sleep_until(sim.delay.wake_at(arrival)).await;
        sim.delay
            .woke(arrival.into_std(), std::time::Instant::now());
    }
    let digest = format!(
        "{:032x}",
        xxhash_rust::xxh3::xxh3_128(
            format!(
                "{}\0{}\0{}\0{}",
                charge.order_id, charge.amount_cents, charge.currency, charge.payment_token
            )
            .as_bytes()
        )
    );
    let (stored, late) = {
        let mut state = lock(&sim.state);
        if state.roll() < sim.config.fail_rate {
            return error(StatusCode::SERVICE_UNAVAILABLE, "injected failure");
        }
        if let Some(stored) = state.keys.get(&key) {
            if stored.digest != digest {
                state.ledger.conflicts += 1;
                return error(
                    StatusCode::CONFLICT,
                    "this Idempotency-Key was used with a different body",
                );
            }
            if !stored.durable {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this charge is in progress",
                );
            }
            let stored = stored.clone();
            state.ledger.replays += 1;
            return answer(&stored, &charge);
        }
        let token = charge.payment_token.as_str();
        if token.starts_with(crate::gateway::FLAKY_PREFIX) {
            let attempts = state.flaky.entry(key.clone()).or_insert(0);
            *attempts = attempts.saturating_add(1);
            if *attempts <= FLAKY_FAILURES {
                return error(StatusCode::SERVICE_UNAVAILABLE, "flaky token: try again");
            }
        }
        let stored = Stored {
            key: key.clone(),
            digest,
            captured: !token.starts_with(crate::gateway::DECLINE_PREFIX),
            currency: charge.currency.clone(),
            amount_cents: charge.amount_cents,
            durable: sim.journal.is_none(),
        };
        state.record(stored.clone());
        let late = state.roll() < sim.config.late_rate;
        (stored, late)
    };
    if sim.journal.is_some() {
        // In a task of its own: a client hanging up drops this handler, and
        // the key must still become durable (or it would answer "in
        // progress" forever).
        let (sim, stored) = (sim.clone(), stored.clone());
        let durable = tokio::spawn(async move {
            let Some(journal) = &sim.journal else { return };
            if !journaled(journal, &stored).await {
                // The answer is not durable: the process cannot promise anything.
                tracing::error!("the journal failed: stopping");
                std::process::exit(1);
            }
            if let Some(s) = lock(&sim.state).keys.get_mut(&stored.key) {
                s.durable = true;
            }
        });
        let _ = durable.await;
    }
    if late {
        tokio::time::sleep(sim.config.late_hold).await;
    }
    answer(&stored, &charge)
}

fn answer(stored: &Stored, charge: &ChargeBody) -> Response<Full<Bytes>> {
    if stored.captured {
        let body = serde_json::json!({
            "id": format!("ch_{}", &stored.digest[..16]),
            "status": "captured",
            "order_id": charge.order_id,
            "amount_cents": stored.amount_cents,
            "currency": stored.currency,
        });
        json(StatusCode::CREATED, body.to_string())
    } else {
        json(
            StatusCode::PAYMENT_REQUIRED,
            r#"{"status": "declined"}"#.to_string(),
        )
    }
}

async fn journaled(journal: &Mutex<JournalTx>, stored: &Stored) -> bool {
    let Ok(line) = serde_json::to_string(stored) else {
        return false;
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sent = journal
        .lock()
        .map(|j| j.send((line, tx)).is_ok())
        .unwrap_or(false);
    sent && rx.await.unwrap_or(false)
}

/// Replays the journal into `state`; returns the number of answers read.
fn replay(path: &Path, state: &mut State) -> Result<u64> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("cannot open the journal", path, e)),
    };
    let mut lines = BufReader::new(file).split(b'\n').peekable();
    let mut n = 0;
    let mut number = 0;
    while let Some(line) = lines.next() {
        number += 1;
        let line = line.map_err(|e| Error::io("cannot read the journal", path, e))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Stored>(&line) {
            Ok(mut stored) => {
                stored.durable = true;
                state.record(stored);
                n += 1;
            }
            // A crash mid-append leaves a torn last line: that answer was never given.
            Err(_) if lines.peek().is_none() => {
                tracing::warn!(line = number, "ignoring a torn last line in the journal")
            }
            Err(e) => {
                return Err(Error::State(format!(
                    "{}: line {number} is not a journal entry: {e}",
                    path.display()
                )))
            }
        }
    }
    Ok(n)
}

/// Opens the journal for appending and starts its writer thread.
fn start_journal(path: &Path) -> Result<JournalTx> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io("cannot open the journal", path, e))?;
    // A torn last line must not swallow the next entry.
    file.write_all(b"\n")
        .and_then(|()| file.sync_data())
        .map_err(|e| Error::io("cannot write the journal", path, e))?;
    let (tx, rx) = mpsc::channel::<(String, tokio::sync::oneshot::Sender<bool>)>();
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("paysim-journal".into())
        .spawn(move || {
            let mut buf = Vec::new();
            let mut waiting = Vec::new();
            while let Ok(first) = rx.recv() {
                let mut next = Some(first);
                while let Some((line, done)) = next {
                    buf.extend_from_slice(line.as_bytes());
                    buf.push(b'\n');
                    waiting.push(done);
                    next = rx.try_recv().ok();
                }
                let ok = file.write_all(&buf).and_then(|()| file.sync_data());
                if let Err(e) = &ok {
                    tracing::error!(journal = %path.display(), error = %e, "cannot write the journal");
                }
                for done in waiting.drain(..) {
                    let _ = done.send(ok.is_ok());
                }
                buf.clear();
            }
        })
        .map_err(|e| Error::Config(format!("cannot start the journal thread: {e}")))?;
    Ok(tx)
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    xxhash_rust::xxh3::xxh3_64(format!("{}:{nanos}", std::process::id()).as_bytes()) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a Delay with a timer that wakes `late` after the 1 ms tick at
    /// or after what was asked, one charge every 40 us of a made-up clock, `asleep` charges asleep
    /// at once (each learnt only once that many later ones chose their
    /// wake-up, as under load); the delays it gave.
    fn drive(delay: &Delay, late: Duration, asleep: usize, charges: u32) -> Vec<Duration> {
        let t0 = std::time::Instant::now();
        let mut sleeping = std::collections::VecDeque::new();
        let mut took = Vec::new();
        for i in 0..charges {
            let arrival = t0 + Duration::from_micros(40) * i;
            // Like tokio's: the deadline rounded up to the next 1 ms tick.
            let asked = (delay.wake_at(arrival) - t0).as_micros() as u32;
            let tick = Duration::from_millis(1) * asked.div_ceil(1000);
            sleeping.push_back((arrival, t0 + tick + late));
            if sleeping.len() > asleep {
                let (arrival, woke) = sleeping.pop_front().unwrap();
                delay.woke(arrival, woke);
                took.push(woke - arrival);
            }
        }
        took
    }

    #[test]
    fn the_delay_learns_how_late_the_timer_wakes_and_keeps_the_mean_at_the_latency() {
        let latency = Duration::from_millis(5);
        for late_us in [0, 300, 1_000, 1_700, 3_000] {
            for asleep in [0, 128, 512] {
                let delay = Delay::new(latency);
                let took = drive(&delay, Duration::from_micros(late_us), asleep, 30_000);
                let settled = &took[took.len() - 10_000..];
                let mean = settled.iter().sum::<Duration>() / settled.len() as u32;
                let off = mean.abs_diff(latency);
                assert!(
                    off < Duration::from_micros(20),
                    "timer {late_us} us late, {asleep} asleep: mean delay {mean:?}"
                );
            }
        }
    }

    #[test]
    fn the_lead_never_passes_the_latency_however_late_the_timer() {
        let latency = Duration::from_millis(5);
        let delay = Delay::new(latency);
        let took = drive(&delay, Duration::from_millis(20), 0, 20_000);
        // Asked to wake at once, the charge still takes the timer's 20 ms.
        let last = *took.last().unwrap();
        assert!(last >= Duration::from_millis(20) && last <= Duration::from_millis(21));
        let (n, mean) = delay.mean();
        assert_eq!(n, 20_000);
        assert!(mean >= Duration::from_millis(20) && mean <= Duration::from_millis(21));
    }

    fn stored(key: &str, captured: bool, amount_cents: i64) -> Stored {
        Stored {
            key: key.into(),
            digest: "d".into(),
            captured,
            currency: "JPY".into(),
            amount_cents,
            durable: true,
        }
    }

    #[test]
    fn ledger_sums_are_exact_past_i64() {
        let mut state = State::default();
        state.record(stored("a", true, i64::MAX));
        state.record(stored("b", true, i64::MAX));
        state.record(stored("c", false, 5));
        let json = serde_json::to_string(&state.ledger).unwrap();
        assert!(
            json.contains(r#""JPY":{"charges":2,"amount_cents":18446744073709551614}"#),
            "{json}"
        );
        assert_eq!(state.ledger.charges, 2);
        assert_eq!(state.ledger.declines, 1);
    }

    #[test]
    fn the_journal_replays_and_ignores_a_torn_last_line() {
        let dir = std::env::temp_dir().join(format!("paysim-unit-{}", seed()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("journal.jsonl");
        let a = serde_json::to_string(&stored("a", true, 7)).unwrap();
        let b = serde_json::to_string(&stored("b", false, 0)).unwrap();
        std::fs::write(&path, format!("{a}\n\n{b}\n{{\"key\": \"c")).unwrap();
        let mut state = State::default();
        assert_eq!(replay(&path, &mut state).unwrap(), 2);
        assert_eq!(state.ledger.charges, 1);
        assert_eq!(state.ledger.declines, 1);
        assert!(state.keys["a"].durable);
        std::fs::write(&path, format!("garbage\n{a}\n")).unwrap();
        let e = replay(&path, &mut State::default()).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
