//! The ventilator's handshake with the sink: `Hello` until the sink answers
//! with the bitmap of orders already tallied (`Welcome`), says the run is
//! complete, or says it is busy with another run (then wait and retry).

use crate::ledger::SeqSet;
use crate::protocol::{self, Kind, RunId, Welcome};
use crate::shutdown::Shutdown;
use crate::transport::{self, Connection};
use crate::Result;
use std::time::{Duration, Instant};

/// How often a hello is repeated while the sink does not answer.
const HELLO_EVERY: Duration = Duration::from_millis(250);
/// The first "no answer" warning comes after this long, then this often.
pub const SILENCE_WARNING: Duration = Duration::from_secs(5);

/// How the handshake ended.
pub enum Greeting {
    /// The sink serves the run; these orders are tallied already.
    Welcomed(SeqSet),
    /// The sink has the run complete.
    Complete,
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

/// Says hello until the sink answers.
pub fn greet(
    sink: &mut Connection,
    run: RunId,
    hello: &[u8],
    acks: &str,
    shutdown: &Shutdown,
    metrics: &crate::metrics::Metrics,
) -> Result<Greeting> {
    let mut done = SeqSet::default();
    let mut last_hello: Option<Instant> = None;
    let mut told_busy = false;
    let started = Instant::now();
    let mut warned = started;
    loop {
        if shutdown.requested() {
            return Ok(Greeting::Stopped);
        }
        if last_hello.is_none_or(|t| t.elapsed() > HELLO_EVERY) {
            sink.send_frame(hello)?;
            last_hello = Some(Instant::now());
        }
        if warned.elapsed() >= SILENCE_WARNING {
            warned = Instant::now();
            metrics.peer_silence.set(started.elapsed().as_secs() as i64);
            tracing::warn!(run = %run, "no answer from the sink at {acks} for {} s; still saying hello", started.elapsed().as_secs());
        }
        let mut items = [sink.socket().as_poll_item(zmq::POLLIN)];
        transport::poll(&mut items, 100)?;
        while let Some((h, body)) = sink.recv()? {
            if h.run != run {
                continue;
            }
            metrics.peer_silence.set(0);
            match h.kind {
                Kind::Welcome if merge_welcome(&mut done, body) => {
                    return Ok(Greeting::Welcomed(done));
                }
                Kind::Complete => return Ok(Greeting::Complete),
                Kind::Busy if !told_busy => {
                    tracing::warn!(run = %run, "the sink is busy with another run; waiting");
                    told_busy = true;
                }
                _ => {}
            }
        }
    }
}
