//! The ventilator's handshake with the sink: `Hello` until the sink answers
//! with the bitmap of orders already tallied (`Welcome`), says the run is
//! complete (with its report, when asked for), says it is busy with another
//! run, or (a serving sink) says where this run waits in its queue; then
//! wait and say hello again.

use crate::ledger::SeqSet;
use crate::protocol::{self, Kind, Queued, ReportText, RunId, Welcome};
use crate::reminder::Reminder;
use crate::shutdown::Shutdown;
use crate::transport::{self, Connection};
use crate::Result;
use std::time::{Duration, Instant};

/// How often a hello is repeated while the sink does not answer.
const HELLO_EVERY: Duration = Duration::from_millis(250);
/// The first "no answer" warning comes after this long, then this often.
pub const SILENCE_WARNING: Duration = Duration::from_secs(5);

/// The rule of the ventilator's "still waiting" warnings: after
/// [`SILENCE_WARNING`], then every [`SILENCE_WARNING`] (each use is a fresh
/// one).
pub const SILENCE_REMINDER: Reminder = Reminder::new(SILENCE_WARNING, SILENCE_WARNING);
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
    let mut hs = Handshake::new(want_report);
    loop {
        if shutdown.requested() {
            return Ok(Greeting::Stopped);
        }
        if hs.last_hello.is_none_or(|t| t.elapsed() > HELLO_EVERY) {
            sink.send_frame(hello)?;
            hs.last_hello = Some(Instant::now());
        }
        if let Some(complete) = hs.report_wait_over() {
            return Ok(complete);
        }
        hs.warn_if_silent(acks, metrics);
        let mut items = [sink.socket().as_poll_item(zmq::POLLIN)];
        transport::poll(&mut items, 100)?;
        while let Some((h, body)) = sink.recv()? {
            if h.run != run {
                continue;
            }
            hs.heard = Instant::now();
            metrics.peer_silence.set(0);
            if let Some(greeting) = hs.on_frame(h.kind, body) {
                return Ok(greeting);
            }
        }
    }
}

/// What the ventilator has said and heard while greeting the sink.
struct Handshake {
    want_report: bool,
    /// The `Welcome` chunks so far.
    done: SeqSet,
    last_hello: Option<Instant>,
    told_busy: bool,
    /// Where the run waits in a serving sink's queue, and when that was said.
    place: Option<(Queued, Instant)>,
    report: Option<String>,
    /// When the sink said the run is complete, the report not yet come.
    complete_since: Option<Instant>,
    started: Instant,
    heard: Instant,
    silence: Reminder,
}

impl Handshake {
    /// Nothing said or heard yet.
    fn new(want_report: bool) -> Handshake {
        let started = Instant::now();
        Handshake {
            want_report,
            done: SeqSet::default(),
            last_hello: None,
            told_busy: false,
            place: None,
            report: None,
            complete_since: None,
            started,
            heard: started,
            silence: SILENCE_REMINDER,
        }
    }

    /// The end of the handshake for a complete run once its report came,
    /// or waiting for it took too long.
    fn report_wait_over(&mut self) -> Option<Greeting> {
        let since = self.complete_since?;
        if self.report.is_none() && since.elapsed() < REPORT_WAIT {
            return None;
        }
        if self.report.is_none() {
            tracing::warn!("the sink says the run is complete but sent no report");
        }
        Some(Greeting::Complete(self.report.take()))
    }

    /// Says so, after a while and then periodically, when the sink is silent.
    fn warn_if_silent(&mut self, acks: &str, metrics: &crate::metrics::Metrics) {
        let silent = self.heard.elapsed();
        if self.silence.due(Instant::now(), silent) {
            metrics.peer_silence.set(silent.as_secs() as i64);
            tracing::warn!(
                "no answer from the sink at {acks} for {} s; still saying hello",
                silent.as_secs()
            );
        }
    }

    /// One frame of this run from the sink; the end of the handshake, if it is.
    fn on_frame(&mut self, kind: Kind, body: &[u8]) -> Option<Greeting> {
        match kind {
            Kind::Welcome if merge_welcome(&mut self.done, body) => {
                if self.place.is_some() {
                    tracing::info!(
                        waited_seconds = self.started.elapsed().as_secs(),
                        "our turn: the sink took the run"
                    );
                }
                return Some(Greeting::Welcomed(std::mem::take(&mut self.done)));
            }
            Kind::Report => {
                if let Ok(text) = protocol::decode::<ReportText>(body) {
                    self.report = Some(text.json);
                }
            }
            Kind::Complete if !self.want_report || self.report.is_some() => {
                return Some(Greeting::Complete(self.report.take()));
            }
            Kind::Complete => {
                self.complete_since.get_or_insert_with(Instant::now);
            }
            Kind::Queued => self.on_queued(body),
            Kind::Busy if !self.told_busy => {
                tracing::warn!("the sink is busy with another run; waiting");
                self.told_busy = true;
            }
            _ => {}
        }
        None
    }

    /// A serving sink says where the run waits: logged when it changes,
    /// and every [`QUEUED_REMINDER`].
    fn on_queued(&mut self, body: &[u8]) {
        let Ok(queued) = protocol::decode::<Queued>(body) else {
            return;
        };
        let say = self
            .place
            .is_none_or(|(was, at)| was != queued || at.elapsed() >= QUEUED_REMINDER);
        if say {
            tracing::info!(
                "queued behind run {}, position {}",
                queued.behind,
                queued.position
            );
            self.place = Some((queued, Instant::now()));
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
    tracing::warn!("the sink says the run is complete but sent no report");
    Ok(None)
}
