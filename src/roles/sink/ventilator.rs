//! The sink's side of the conversation with ventilators, on the acks
//! ROUTER: a hello starts (or resumes) a run, queues it, or is answered
//! with the stored report; progress reports move the horizon and are
//! answered "alive"; a ventilator's own outcomes are tallied as results.

use super::run::Activation;
use super::{Sink, SinkExit, Sockets};
use crate::journal::RunDir;
use crate::protocol::{self, Acks, FrameError, Header, Hello, Kind, Progress, RunId, Welcome};
use crate::report::Report;
use crate::{Error, Result};
use std::collections::HashSet;
use std::time::Instant;

/// Bitmap words per welcome frame.
const WELCOME_WORDS: usize = 8192;

impl Sink {
    /// Handles one frame from a ventilator. Returns `Some` when the sink is done.
    pub(super) fn on_ventilator_frame(
        &mut self,
        identity: &[u8],
        header: Header,
        body: &[u8],
        s: &mut Sockets,
    ) -> Result<Option<SinkExit>> {
        match header.kind {
            Kind::Results => {
                if let Some(run) = self.active.as_mut().filter(|r| r.id == header.run) {
                    run.submitter.identity = Some(identity.to_vec());
                    run.submitter.heard = Instant::now();
                }
                self.on_results(header, body, true);
            }
            Kind::Hello => match protocol::decode::<Hello>(body) {
                Ok(hello) => return self.on_hello(identity, header.run, &hello, s),
                Err(e) => self.bad_frame("acks", &e),
            },
            Kind::Progress => match protocol::decode::<Progress>(body) {
                Ok(progress) => self.on_progress(identity, header.run, &progress, s)?,
                Err(e) => self.bad_frame("acks", &e),
            },
            other => self.bad_frame("acks", &FrameError::Kind(other as u8)),
        }
        Ok(None)
    }

    /// A ventilator's progress report: for the active run, taken in and
    /// answered "alive"; otherwise the ventilator is told what to do.
    fn on_progress(
        &mut self,
        identity: &[u8],
        id: RunId,
        progress: &Progress,
        s: &mut Sockets,
    ) -> Result<()> {
        match self.active.as_mut() {
            Some(run) if run.id == id && !run.submitter.greeted => {
                // A ventilator from before this sink started: it must
                // say hello and learn what is really tallied.
                s.send_to_ventilator(identity, &protocol::frame(Kind::Busy, id, &protocol::Empty))
            }
            Some(run) if run.id == id => {
                run.submitter.identity = Some(identity.to_vec());
                run.submitter.heard = Instant::now();
                run.heard_progress(progress);
                if let Some(t) = progress.total {
                    self.config.metrics.total.set(t as i64);
                }
                // An empty ack: "alive", so the ventilator can tell a lost
                // order from a sink outage, and the horizon now known.
                let answer = Acks {
                    horizon: Some(run.told.horizon),
                    ..Acks::default()
                };
                s.send_to_ventilator(identity, &protocol::frame(Kind::Acks, id, &answer))
            }
            _ => {
                // A ventilator of a run this sink is not serving. Busy also
                // tells a ventilator whose sink restarted without its run
                // to say hello again.
                let dir = RunDir::new(&self.config.state, &id.to_string());
                let kind = if dir.report()?.is_some() {
                    Kind::Complete
                } else {
                    Kind::Busy
                };
                s.send_to_ventilator(identity, &protocol::frame(kind, id, &protocol::Empty))
            }
        }
    }

    /// A ventilator's hello: its run starts, resumes, waits in the queue,
    /// or is answered with its stored report.
    fn on_hello(
        &mut self,
        identity: &[u8],
        id: RunId,
        hello: &Hello,
        s: &mut Sockets,
    ) -> Result<Option<SinkExit>> {
        match self.active.as_ref().map(|a| a.id) {
            Some(active) if active != id => {
                self.hello_while_busy(identity, id, active, hello, s)?;
                return Ok(None);
            }
            Some(_) => {}
            None => {
                if !self.take_turn(identity, id, hello, s)? {
                    return Ok(None);
                }
                if let Activation::Completed(stored) = self.activate(id, Some(&hello.input))? {
                    return self.reprint(identity, id, hello, stored, s).map(Some);
                }
                tracing::info!(run = %id, input = %hello.input, "run started");
            }
        }
        self.greet(identity, hello, s)?;
        Ok(None)
    }

    /// A hello for another run than the active one: queued (`--serve`),
    /// answered with its report if it is complete, or told the sink is busy.
    fn hello_while_busy(
        &mut self,
        identity: &[u8],
        id: RunId,
        active: RunId,
        hello: &Hello,
        s: &mut Sockets,
    ) -> Result<()> {
        let dir = RunDir::new(&self.config.state, &id.to_string());
        match dir.report()? {
            Some(report) => {
                let report = Some(report).filter(|_| hello.want_report);
                self.reply_complete(s, identity, id, report.as_deref())
            }
            None if self.config.serve => self.queue_up(identity, id, hello, s),
            None => {
                tracing::warn!(run = %id, active = %active, "a ventilator of another run said hello; this sink is busy");
                s.send_to_ventilator(identity, &protocol::frame(Kind::Busy, id, &protocol::Empty))
            }
        }
    }

    /// With no run active, whether this hello's run may start now. A
    /// serving sink answers a completed run with its report, and keeps a
    /// hello out of turn waiting (first come, first served).
    fn take_turn(
        &mut self,
        identity: &[u8],
        id: RunId,
        hello: &Hello,
        s: &mut Sockets,
    ) -> Result<bool> {
        if !self.config.serve {
            return Ok(true);
        }
        let dir = RunDir::new(&self.config.state, &id.to_string());
        if let Some(report) = dir.report()? {
            tracing::info!(run = %id, "this run is already complete: sending its report");
            let report = Some(report).filter(|_| hello.want_report);
            self.reply_complete(s, identity, id, report.as_deref())?;
            return Ok(false);
        }
        let head = self.queue.first().map(|w| w.id);
        if head.is_some_and(|head| head != id) {
            self.queue_up(identity, id, hello, s)?;
            return Ok(false);
        }
        self.queue.retain(|w| w.id != id);
        self.show_queue();
        Ok(true)
    }

    /// A one-run sink asked for a run it completed before: it writes the
    /// stored report again, answers, and is done.
    fn reprint(
        &mut self,
        identity: &[u8],
        id: RunId,
        hello: &Hello,
        stored: Vec<u8>,
        s: &mut Sockets,
    ) -> Result<SinkExit> {
        tracing::info!(run = %id, "this run is already complete: reprinting its report");
        let report: Report = serde_json::from_slice(&stored)
            .map_err(|e| Error::State(format!("run {id}: stored report does not parse: {e}")))?;
        self.publish_report(&report)?;
        let sent = Some(stored).filter(|_| hello.want_report);
        self.reply_complete(s, identity, id, sent.as_deref())?;
        self.announce_run_over(id, s, &HashSet::new())?;
        Ok(SinkExit::Complete(Box::new(report)))
    }

    /// The active run's ventilator said hello: it is the submitter, and it
    /// is sent the bitmap of what is tallied (it resends the rest).
    fn greet(&mut self, identity: &[u8], hello: &Hello, s: &mut Sockets) -> Result<()> {
        let run = self.active.as_mut().expect("an active run to greet");
        run.submitter.identity = Some(identity.to_vec());
        run.submitter.heard = Instant::now();
        run.submitter.jobs = hello.jobs.clone();
        run.submitter.want_report = hello.want_report;
        run.submitter.greeted = true;
        run.told.expected = hello.expected.map(|n| (n, hello.expected_is_estimate));
        // Workers hear of the run (and where its jobs are) at once.
        self.announced = None;
        let id = run.id;
        let words = run.ledger.done().words();
        let chunks: Vec<&[u64]> = if words.is_empty() {
            vec![&[][..]]
        } else {
            words.chunks(WELCOME_WORDS).collect()
        };
        let n = chunks.len();
        let mut first = 0u64;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let welcome = Welcome {
                first_word: first,
                words: chunk.to_vec(),
                last: i + 1 == n,
            };
            first += chunk.len() as u64;
            s.send_whole_to_ventilator(identity, &protocol::frame(Kind::Welcome, id, &welcome))?;
        }
        Ok(())
    }

    /// Tells a ventilator its run is complete, sending the report first
    /// when it asked for it (`--report`).
    pub(super) fn reply_complete(
        &self,
        s: &mut Sockets,
        identity: &[u8],
        id: RunId,
        report: Option<&[u8]>,
    ) -> Result<()> {
        if let Some(json) = report {
            let text = protocol::ReportText {
                json: String::from_utf8_lossy(json).into_owned(),
            };
            s.send_to_ventilator(identity, &protocol::frame(Kind::Report, id, &text))?;
        }
        s.send_to_ventilator(
            identity,
            &protocol::frame(Kind::Complete, id, &protocol::Empty),
        )
    }
}
