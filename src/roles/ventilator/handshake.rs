//! The ventilator's handshake with the sink: `Hello` until the sink answers
//! with the bitmap of orders already tallied (`Welcome`), says the run is
//! complete (with its report, when asked for), says it is busy with another
//! run, or (a serving sink) says where this run waits in its queue; then
//! wait and say hello again.

use crate::ledger::SeqSet;
use crate::protocol::{self, Kind, Queued, ReportText, RunId, Welcome};
use crate::shutdown::Shutdown;
use crate::transport::{self, Connection};
use crate::Result;
use std::time::{Duration, Instant};

/// How often a hello is repeated while the sink does not answer.
const HELLO_EVERY: Duration = Duration::from_millis(250);
/// The first "no answer" warning comes after this long, then this often.
pub const SILENCE_WARNING: Duration = Duration::from_secs(5);
/// While queued, the place is logged when it changes and this often.
const QUEUED_REMINDER: Duration = Duration::from_secs(30);
/// How long a ventilator that asked for the report waits for it after the
/// sink said the run is complete.
const REPORT_WAIT: Duration = Duration::from_secs(5);

/// How the handshake ended.
pub enum Greeting {
    /// The sink serves the run; these orders are tallied already.
    Welcomed(SeqSet),
    /// The sink has the run complete; its report when asked for and sent.
    Complete(Option<String>),
    /// A stop was requested first.
    Stopped,
}

/// Collects `Welcome` chunks into the bitmap; true once the last came.
pub fn merge_welcome(done: &mut SeqSet, body: &[u8]) -> bool {
    match protocol::decode::<Welcome>(body) {
        Ok(w) => {
            done.merge_words(w.first_word as usize, &w.words);
            w.last
        }
        Err(_) => false,
    }
}

/// Says hello until the sink answers. With `want_report`, a run the sink
/// has complete waits (a little) for its report too.
pub fn greet(
    sink: &mut Connection,
    run: RunId,
    hello: &[u8],
    want_report: bool,
    acks: &str,
    shutdown: &Shutdown,
    metrics: &crate::metrics::Metrics,
) -> Result<Greeting> {
    let mut done = SeqSet::default();
    let mut last_hello: Option<Instant> = None;
    let mut told_busy = false;
    let mut place: Option<(Queued, Instant)> = None;
    let mut report: Option<String> = None;
    let mut complete_since: Option<Instant> = None;
    let started = Instant::now();
    let mut heard = started;
    let mut warned = started;
    loop {
        if shutdown.requested() {
            return Ok(Greeting::Stopped);
        }
        if last_hello.is_none_or(|t| t.elapsed() > HELLO_EVERY) {
            sink.send_frame(hello)?;
            last_hello = Some(Instant::now());
        }
        if let Some(since) = complete_since {
            if report.is_some() || since.elapsed() >= REPORT_WAIT {
                if report.is_none() {
                    tracing::warn!(run = %run, "the sink says the run is complete but sent no report");
                }
                return Ok(Greeting::Complete(report));
            }
        }
        if heard.elapsed() >= SILENCE_WARNING && warned.elapsed() >= SILENCE_WARNING {
            warned = Instant::now();
            metrics.peer_silence.set(heard.elapsed().as_secs() as i64);
            tracing::warn!(run = %run, "no answer from the sink at {acks} for {} s; still saying hello", heard.elapsed().as_secs());
        }
        let mut items = [sink.socket().as_poll_item(zmq::POLLIN)];
        transport::poll(&mut items, 100)?;
        while let Some((h, body)) = sink.recv()? {
            if h.run != run {
                continue;
            }
            heard = Instant::now();
            metrics.peer_silence.set(0);
            match h.kind {
                Kind::Welcome if merge_welcome(&mut done, body) => {
                    if place.is_some() {
                        tracing::info!(run = %run, waited_seconds = started.elapsed().as_secs(), "our turn: the sink took the run");
                    }
                    return Ok(Greeting::Welcomed(done));
                }
                Kind::Report => {
                    if let Ok(text) = protocol::decode::<ReportText>(body) {
                        report = Some(text.json);
                    }
                }
                Kind::Complete if !want_report || report.is_some() => {
                    return Ok(Greeting::Complete(report));
                }
                Kind::Complete => {
                    complete_since.get_or_insert_with(Instant::now);
                }
                Kind::Queued => {
                    let Ok(queued) = protocol::decode::<Queued>(body) else {
                        continue;
                    };
                    let say = place
                        .is_none_or(|(was, at)| was != queued || at.elapsed() >= QUEUED_REMINDER);
                    if say {
                        tracing::info!(run = %run, "queued behind run {}, position {}", queued.behind, queued.position);
                        place = Some((queued, Instant::now()));
                    }
                }
                Kind::Busy if !told_busy => {
                    tracing::warn!(run = %run, "the sink is busy with another run; waiting");
                    told_busy = true;
                }
                _ => {}
            }
        }
    }
}

/// The sink said the run is complete before its report came: ask again
/// (a hello for a completed run is answered with the report) for a while.
pub fn fetch_report(
    sink: &mut Connection,
    run: RunId,
    hello: &[u8],
    shutdown: &Shutdown,
) -> Result<Option<String>> {
    let started = Instant::now();
    let mut last_hello: Option<Instant> = None;
    while started.elapsed() < REPORT_WAIT && !shutdown.requested() {
        if last_hello.is_none_or(|t| t.elapsed() > HELLO_EVERY) {
            sink.send_frame(hello)?;
            last_hello = Some(Instant::now());
        }
        let mut items = [sink.socket().as_poll_item(zmq::POLLIN)];
        transport::poll(&mut items, 100)?;
        while let Some((h, body)) = sink.recv()? {
            if h.run == run && h.kind == Kind::Report {
                if let Ok(text) = protocol::decode::<ReportText>(body) {
                    return Ok(Some(text.json));
                }
            }
        }
    }
    tracing::warn!(run = %run, "the sink says the run is complete but sent no report");
    Ok(None)
}
