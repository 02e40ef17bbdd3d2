//! The worker's orders: a job frame decoded, each order priced by the rules
//! and its payment started, and settled payments turned into outcomes in
//! the [`Outbox`](super::outbox::Outbox). An order answered at once by the
//! gateway goes straight from its frame to the outbox; only one that has to
//! wait is copied into an owned [`Task`].

use super::{Timeout, Worker};
use crate::gateway::PaymentRequest;
use crate::payments::{Payable, Verdict};
use crate::protocol::{self, FrameError, Header, Kind, RunId};
use crate::rules::{self, Outcome};
use crate::{transport, Result};
use std::time::{Duration, Instant};

/// An order waiting for, or at, the gateway (owned: it outlives its frame).
#[derive(Debug)]
pub(super) struct Task {
    pub(super) run: RunId,
    pub(super) seq: u64,
    order_id: String,
    token: String,
    currency: [u8; 3],
    amount_cents: i64,
    items: Vec<(String, i64)>,
}

impl Payable for Task {
    fn request(&self) -> PaymentRequest<'_> {
        PaymentRequest {
            idempotency_key: &self.order_id,
            payment_token: &self.token,
            currency: self.currency,
            amount_cents: self.amount_cents,
        }
    }
}

impl Worker<'_> {
    /// Decodes one job frame and starts its orders. A frame that does not
    /// decode is returned as the inner error (dropped and counted).
    pub(super) fn take_frame(
        &mut self,
        header: Header,
        body: &[u8],
    ) -> Result<Result<(), FrameError>> {
        if header.kind != Kind::Jobs {
            return Ok(Err(FrameError::Kind(header.kind as u8)));
        }
        let batch = match protocol::decode_jobs(body, &mut self.spare) {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        // Once per run: the log span's field is appended at each record.
        if self.credit.run() != header.run && !self.config.serve {
            crate::cli::record_run(&header.run);
        }
        self.credit.received(batch.jobs.len(), header.run);
        if batch.isolate {
            // Possibly a poison order: let everything else finish and its
            // results leave first, so a crash takes nothing else with it.
            self.finish_all()?;
        }
        // The only wait in the loop below (a run's first frame sends the
        // last run's results, and the sink may take none for a while) is
        // taken first, so one clock read dates every back-off of the frame.
        self.outbox.switch_run(header.run)?;
        let now = Instant::now();
        self.credit.heard(now);
        for job in &batch.jobs {
            self.start(now, header.run, job)?;
        }
        if batch.isolate {
            self.finish_all()?;
        }
        self.spare.recycle(batch);
        Ok(Ok(()))
    }

    /// Applies the rules to one order and starts its payment (`now`: when
    /// its frame arrived).
    fn start(&mut self, now: Instant, run: RunId, job: &protocol::Job<'_>) -> Result<()> {
        self.summary.processed += 1;
        let order = &job.order;
        let at = (run, job.seq);
        let priced = match rules::price(order) {
            Ok(p) => p,
            Err(rejection) => return self.outbox.other(at, Outcome::Rejected(rejection)),
        };
        let request = PaymentRequest {
            idempotency_key: &order.order_id,
            payment_token: &order.payment_token,
            currency: priced.currency,
            amount_cents: priced.amount_cents,
        };
        let verdict = self.payments.start(now, &request, || {
            owned_task(run, job, priced.currency, priced.amount_cents)
        });
        match verdict {
            None => Ok(()),
            // The common fast path: answered at once, nothing copied.
            Some(Verdict::Paid) => {
                self.summary.paid += 1;
                let items = order.items.iter().map(|i| (&*i.sku, i.qty));
                let (currency, amount) = (&priced.currency, priced.amount_cents);
                self.outbox.paid(at, currency, amount, items)
            }
            Some(Verdict::Declined) => self.outbox.other(at, Outcome::Declined),
            Some(Verdict::Failed(reason)) => self.outbox.failed(at, &reason),
        }
    }

    /// The poll item of the gateway's wake-up descriptor (an inert item
    /// when it has none: leave it out of the poll).
    pub(super) fn gateway_wake(&self) -> zmq::PollItem<'static> {
        match self.payments.wake_fd() {
            Some(fd) => zmq::PollItem::from_fd(fd, zmq::POLLIN),
            None => zmq::PollItem::from_fd(-1, zmq::PollEvents::empty()),
        }
    }

    /// Runs everything held to completion and sends the results.
    fn finish_all(&mut self) -> Result<()> {
        while self.busy() > 0 {
            match (self.poll_timeout(false), self.payments.wake_fd()) {
                (Timeout::Ms(0), _) => {}
                (Timeout::Ms(ms), Some(_)) => {
                    transport::poll(&mut [self.gateway_wake()], ms)?;
                }
                (Timeout::Ms(ms), None) => std::thread::sleep(Duration::from_millis(ms as u64)),
                (Timeout::Exactly(rest), _) => std::thread::sleep(rest),
            }
            self.advance()?;
        }
        self.outbox.flush()
    }

    /// Collects gateway replies, starts retries and waiting orders, and
    /// sends what settled.
    pub(super) fn advance(&mut self) -> Result<()> {
        let mut settled = std::mem::take(&mut self.settled);
        self.payments.advance(Instant::now(), &mut settled);
        let retries = self.payments.take_retries();
        if retries > 0 {
            self.summary.retries += retries;
            self.config.metrics.retries.inc_by(retries);
        }
        let mut outcome = Ok(());
        for (task, verdict) in settled.drain(..) {
            if outcome.is_ok() {
                outcome = self.complete(task, verdict);
            }
        }
        self.settled = settled;
        outcome
    }

    /// Puts the outcome of a payment that settled later in the outbox.
    fn complete(&mut self, task: Task, verdict: Verdict) -> Result<()> {
        let at = (task.run, task.seq);
        match verdict {
            Verdict::Paid => {
                self.summary.paid += 1;
                let items = task.items.iter().map(|(s, q)| (s.as_str(), *q));
                self.outbox
                    .paid(at, &task.currency, task.amount_cents, items)
            }
            Verdict::Declined => self.outbox.other(at, Outcome::Declined),
            Verdict::Failed(reason) => {
                tracing::warn!(order = %task.order_id, %reason, "payment failed");
                self.outbox.failed(at, &reason)
            }
        }
    }
}

/// An owned copy of an order that has to wait for the gateway.
fn owned_task(run: RunId, job: &protocol::Job<'_>, currency: [u8; 3], amount_cents: i64) -> Task {
    Task {
        run,
        seq: job.seq,
        order_id: job.order.order_id.to_string(),
        token: job.order.payment_token.to_string(),
        currency,
        amount_cents,
        items: job
            .order
            .items
            .iter()
            .map(|i| (i.sku.to_string(), i.qty))
            .collect(),
    }
}
