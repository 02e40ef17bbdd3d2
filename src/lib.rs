//! ordergrid: an order-processing grid over ZeroMQ.
//!
//! A **ventilator** reads orders (JSON Lines) and sends them in batches to any
//! number of **workers**, each as many as it has room for (its credit), which
//! validate and price each order and take its payment through a
//! [`gateway::PaymentGateway`]. Workers PUSH outcomes to the **sink**, which
//! tallies them exactly once into a durable journal and acknowledges them to
//! the ventilator, which sends again what a worker that is gone held.
//!
//! ```text
//!              ROUTER <-jobs/credit-> DEALER             PUSH --results--> PULL
//!   ventilator  (bind :5557)       worker x N (connect)                   sink (bind :5558)
//!      DEALER (connect) <----------------- acks / hello / progress ------> ROUTER (bind :5559)
//!                                  SUB (connect) <------- control -------  PUB (bind :5560)
//! ```
//!
//! # Layout
//! - [`order`]: the order model and the JSON Lines parser (no I/O).
//! - [`rules`]: validation and pricing, pure functions.
//! - [`inventory`]: the stock file and the in-line-order allocator (`--stock`).
//! - [`gateway`]: the payment gateway trait, the simulated gateway and the HTTP client.
//! - [`payments`]: the worker's payment state machine: concurrency, retries, back-off, verdicts.
//! - [`paysim`]: `ordergrid-paysim`, a PSP simulator over HTTP with an idempotent, journaled ledger.
//! - [`generator`]: deterministic synthetic orders (`ordergrid-gen`, `--generate`).
//! - [`protocol`]: the versioned wire envelope and every message's encoding.
//! - [`transport`]: ZeroMQ socket setup with the options every socket needs.
//! - [`ledger`]: the tally, idempotent per order.
//! - [`report`]: the report (JSON contract) and the human table.
//! - [`journal`]: the sink's durable journal: append, group fsync, replay, compaction,
//!   damage recovery, retrying through a full disk.
//! - [`statelock`]: one sink per state folder (an exclusive lock naming its holder).
//! - [`input`]: where the ventilator's lines come from (file, stdin, generator).
//! - [`dedup`]: the ventilator's duplicate detector (order-id digests, looked up with prefetch).
//! - [`seal`]: the pre-shared key: key files, sealing and opening frames (XChaCha20-Poly1305).
//! - [`roles`]: `ventilator`, `worker` and `sink`: each a `run(config, shutdown)`.
//! - [`dashboard`]: the sink's live status board (`/api/status`, the web page).
//! - [`metrics`]: Prometheus counters and gauges, served with `--metrics ADDR`.
//! - [`shutdown`]: the signal-driven stop request every loop polls.
//! - [`fasthash`]: hashers for the hot maps.
//! - [`flow`]: the worker's credit (how many orders it can take) and heartbeat.
//! - [`cli`]: what the thin binaries share: logging set-up and exit codes.

pub mod cli;
pub mod dashboard;
pub mod dedup;
pub mod error;
pub mod fasthash;
pub mod flow;
pub mod gateway;
pub mod generator;
pub mod input;
pub mod inventory;
pub mod journal;
pub mod ledger;
pub mod metrics;
pub mod order;
pub mod payments;
pub mod paysim;
pub mod protocol;
pub mod reminder;
pub mod report;
pub mod roles;
pub mod rules;
pub mod seal;
pub mod shutdown;
pub mod statelock;
pub mod transport;

pub use error::{Error, Result};

/// Where the ventilator binds its ROUTER socket for jobs (and worker credit).
pub const DEFAULT_JOBS: &str = "tcp://127.0.0.1:5557";
/// Where the sink binds its PULL socket for results.
pub const DEFAULT_RESULTS: &str = "tcp://127.0.0.1:5558";
/// Where the sink binds its ROUTER socket for the ventilator (acks, hello, progress).
pub const DEFAULT_ACKS: &str = "tcp://127.0.0.1:5559";
/// Where the sink binds its PUB socket that tells workers the run is over.
pub const DEFAULT_CONTROL: &str = "tcp://127.0.0.1:5560";
/// The sink's default state folder.
pub const DEFAULT_STATE: &str = "./ordergrid-state";
/// The ventilator's default dead-letter file, in its working folder.
pub const DEFAULT_DEAD_LETTER: &str = "./ordergrid-dead-letter.jsonl";
