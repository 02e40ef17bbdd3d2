//! The naive ZeroMQ Guide pipeline: the benchmark baseline of `scripts/bench.sh`.
//!
//! This is a plain Rust port of the Guide's "divide and conquer" example
//! (`taskvent`, `taskwork2`, `tasksink2`) carrying the same orders the grid
//! carries: a ventilator PUSHes **one MessagePack order per ZeroMQ message**,
//! workers PULL, decode, validate and price each order and PUSH **one
//! MessagePack result per message**, and a sink PULLs the results, decodes
//! them and tallies the amount captured per currency and the units taken per
//! SKU. There are no acknowledgements, no deduplication, no journal and no
//! redelivery: an order lost in a crash is simply lost.
//!
//! # Why it is kept
//! It is what "just use ZeroMQ" gives for this job, and so the yardstick of
//! the grid's promise "reliability for free": the grid, with acks, dedup and
//! the fsynced journal all on, must be at least as fast as this pipeline
//! measured in the same benchmark run. `scripts/bench.sh` runs it next to the
//! grid and prints the ratio.
//!
//! It is honestly naive but not sabotaged: owned `String`s decoded and
//! encoded per message with `rmp-serde` (structs as arrays), the default
//! high-water marks, no batching; but no needless copies or syscalls either
//! (a worker only polls its kill socket when its jobs queue is empty).
//!
//! # Running it
//! ```text
//! cargo run --release --example naive_pipeline -- sink   --results ipc:///tmp/np-res --control ipc:///tmp/np-ctl --count 2000000
//! cargo run --release --example naive_pipeline -- worker --jobs ipc:///tmp/np-jobs --results ipc:///tmp/np-res --control ipc:///tmp/np-ctl   # x W
//! cargo run --release --example naive_pipeline -- vent   --count 2000000 --workers 2 --jobs ipc:///tmp/np-jobs --sink ipc:///tmp/np-res --control ipc:///tmp/np-ctl
//! ```
//! Start them in any order. The ventilator first builds its `--count` orders
//! in memory (from [`ordergrid::generator::Generator`], the lines that
//! `ordergrid-gen` writes, parsed with serde_json; malformed lines are skipped
//! so that exactly `--count` orders travel), which is not timed. It then waits
//! until `--workers` workers have connected (a socket monitor, where the Guide
//! asks the user to press Enter), sends the start signal to the sink (an empty
//! message on the sink's results socket, as in the Guide) and streams the
//! orders. The sink's clock starts at that signal and stops at the
//! `--count`-th result; it prints elapsed seconds and orders/s, then
//! publishes `KILL` on its control socket so that the workers exit (the
//! Guide's `tasksink2`).
//!
//! For the benchmark harness both ends print a machine-readable line:
//! `vent: start_unix_ns=<t>` when the start signal goes out and
//! `sink: done_unix_ns=<t> ...` when the last result is tallied.

use clap::{Parser, Subcommand};
use ordergrid::generator::Generator;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The naive ZeroMQ Guide pipeline (ventilator → workers → sink, one
/// MessagePack order per message, no acks, no journal): the baseline that
/// scripts/bench.sh measures the grid against.
#[derive(Parser, Debug)]
#[command(name = "naive_pipeline")]
struct Args {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Build COUNT orders in memory, wait for WORKERS workers, signal the sink and PUSH one order per message.
    Vent {
        /// How many orders to send.
        #[arg(long)]
        count: u64,
        /// How many workers to wait for before starting.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Where to bind the jobs socket (PUSH).
        #[arg(long, default_value = "tcp://127.0.0.1:5557")]
        jobs: String,
        /// The sink's results endpoint, for the start signal (PUSH, connects).
        #[arg(long, default_value = "tcp://127.0.0.1:5558")]
        sink: String,
        /// The sink's control endpoint (SUB, connects): the ventilator stays
        /// up until the sink's KILL (or --linger-s), see `vent`.
        #[arg(long, default_value = "tcp://127.0.0.1:5560")]
        control: String,
        /// Seconds to stay up after sending, at most, waiting for the KILL.
        #[arg(long, default_value_t = 60)]
        linger_s: u64,
        /// Seed of the synthetic orders (as `ordergrid-gen --seed`).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// PULL orders, decode, validate and price each, PUSH one result per message; exit on KILL.
    Worker {
        /// The ventilator's jobs endpoint (PULL, connects).
        #[arg(long, default_value = "tcp://127.0.0.1:5557")]
        jobs: String,
        /// The sink's results endpoint (PUSH, connects).
        #[arg(long, default_value = "tcp://127.0.0.1:5558")]
        results: String,
        /// The sink's control endpoint (SUB, connects): KILL ends the worker.
        #[arg(long, default_value = "tcp://127.0.0.1:5560")]
        control: String,
    },
    /// Bind the results socket, wait for the start signal, tally COUNT results, print the rate, KILL the workers.
    Sink {
        /// Where to bind the results socket (PULL).
        #[arg(long, default_value = "tcp://127.0.0.1:5558")]
        results: String,
        /// Where to bind the control socket (PUB) that tells workers to exit.
        #[arg(long, default_value = "tcp://127.0.0.1:5560")]
        control: String,
        /// How many results make the run complete.
        #[arg(long)]
        count: u64,
        /// Give up when no result has come for this many seconds after the
        /// start: with no redelivery, a lost message would stall it for ever.
        #[arg(long, default_value_t = 30)]
        idle_timeout_s: u64,
    },
}

/// One order, as the grid's input states it (owned: the naive way).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    order_id: String,
    customer_id: String,
    currency: String,
    items: Vec<Item>,
    payment_token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Item {
    sku: String,
    qty: i64,
    unit_price_cents: i64,
}

/// What a worker sends the sink for one order.
#[derive(Debug, Serialize, Deserialize)]
struct OrderResult {
    order_id: String,
    /// "paid", "declined" or the rejection reason.
    outcome: String,
    /// The currency of a paid order, otherwise empty.
    currency: String,
    /// The amount captured, 0 unless paid.
    amount_cents: i64,
    /// (sku, units) of a paid order, otherwise empty.
    items: Vec<(String, i64)>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = match args.role {
        Role::Vent {
            count,
            workers,
            jobs,
            sink,
            control,
            linger_s,
            seed,
        } => vent(count, workers, &jobs, &sink, &control, linger_s, seed),
        Role::Worker {
            jobs,
            results,
            control,
        } => worker(&jobs, &results, &control),
        Role::Sink {
            results,
            control,
            count,
            idle_timeout_s,
        } => sink(&results, &control, count, idle_timeout_s),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("naive_pipeline: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// `count` orders from the grid's generator, malformed lines skipped.
fn make_orders(count: u64, seed: u64) -> Vec<Order> {
    // Ask for a little more than needed: about 1% of the lines are malformed.
    let mut generator = Generator::new(count + count / 20 + 1_000, seed);
    let mut orders = Vec::with_capacity(count as usize);
    let mut line = Vec::new();
    while (orders.len() as u64) < count {
        line.clear();
        if !generator.next_line(&mut line) {
            break;
        }
        if let Ok(order) = serde_json::from_slice::<Order>(&line) {
            orders.push(order);
        }
    }
    orders
}

fn vent(
    count: u64,
    workers: usize,
    jobs_ep: &str,
    sink_ep: &str,
    control_ep: &str,
    linger_s: u64,
    seed: u64,
) -> Result<()> {
    let built = Instant::now();
    let orders = make_orders(count, seed);
    if (orders.len() as u64) < count {
        return Err(format!("the generator gave only {} orders", orders.len()).into());
    }
    eprintln!(
        "vent: {} orders built in memory in {:.2} s (not timed)",
        orders.len(),
        built.elapsed().as_secs_f64()
    );

    let ctx = zmq::Context::new();
    let jobs = ctx.socket(zmq::PUSH)?;
    // Count workers as their connections complete the ZMTP handshake.
    let monitor_ep = format!("inproc://naive-vent-monitor-{}", std::process::id());
    jobs.monitor(&monitor_ep, zmq::SocketEvent::HANDSHAKE_SUCCEEDED as i32)?;
    let monitor = ctx.socket(zmq::PAIR)?;
    monitor.connect(&monitor_ep)?;
    jobs.bind(jobs_ep)?;
    let to_sink = ctx.socket(zmq::PUSH)?;
    to_sink.connect(sink_ep)?;
    let control = ctx.socket(zmq::SUB)?;
    control.connect(control_ep)?;
    control.set_subscribe(b"")?;

    eprintln!("vent: waiting for {workers} worker(s) on {jobs_ep}");
    let mut connected = 0;
    while connected < workers {
        // Two frames per event: (event id, value) and the endpoint.
        let event = monitor.recv_bytes(0)?;
        while monitor.get_rcvmore()? {
            monitor.recv_bytes(0)?;
        }
        let id = u16::from_le_bytes([event[0], event[1]]);
        if id == zmq::SocketEvent::HANDSHAKE_SUCCEEDED as u16 {
            connected += 1;
        }
    }

    // The start signal: the sink's clock starts here.
    to_sink.send("", 0)?;
    println!("vent: start_unix_ns={}", unix_ns());
    let started = Instant::now();
    for order in &orders {
        let body = rmp_serde::to_vec(order)?;
        jobs.send(body, 0)?;
    }
    eprintln!(
        "vent: {} orders sent in {:.2} s",
        orders.len(),
        started.elapsed().as_secs_f64()
    );
    // Stay up until the sink has everything. Exiting at once loses orders
    // now and then (a few hundred of 2,000,000 when the workers lag behind),
    // linger or not: the Guide's taskvent sleeps a second here for the same
    // reason; waiting for the sink's KILL is the sure way.
    let mut items = [control.as_poll_item(zmq::POLLIN)];
    let linger_ms = i64::try_from(linger_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    if zmq::poll(&mut items, linger_ms)? == 0 {
        eprintln!("vent: no KILL from the sink within {linger_s} s; exiting");
    }
    Ok(())
}

/// Validates and prices one order, the grid's rules in the grid's order.
fn price(order: &Order) -> std::result::Result<i64, &'static str> {
    if order.currency.len() != 3 || !order.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err("bad_currency");
    }
    if order.items.is_empty() {
        return Err("no_items");
    }
    if order
        .items
        .iter()
        .any(|i| i.sku.is_empty() || i.sku.len() > 64)
    {
        return Err("bad_sku");
    }
    if order.items.iter().any(|i| !(1..=1000).contains(&i.qty)) {
        return Err("bad_quantity");
    }
    if order.items.iter().any(|i| i.unit_price_cents < 0) {
        return Err("bad_price");
    }
    let amount: i128 = order
        .items
        .iter()
        .map(|i| i128::from(i.qty) * i128::from(i.unit_price_cents))
        .sum();
    i64::try_from(amount).map_err(|_| "amount_overflow")
}

fn process(order: Order) -> OrderResult {
    let mut result = OrderResult {
        order_id: order.order_id.clone(),
        outcome: String::new(),
        currency: String::new(),
        amount_cents: 0,
        items: Vec::new(),
    };
    match price(&order) {
        Err(reason) => result.outcome = reason.to_string(),
        // The simulated gateway's rule, answered at once.
        Ok(_) if order.payment_token.starts_with("tok_decline") => {
            result.outcome = "declined".to_string()
        }
        Ok(amount) => {
            result.outcome = "paid".to_string();
            result.currency = order.currency;
            result.amount_cents = amount;
            result.items = order.items.into_iter().map(|i| (i.sku, i.qty)).collect();
        }
    }
    result
}

fn worker(jobs_ep: &str, results_ep: &str, control_ep: &str) -> Result<()> {
    let ctx = zmq::Context::new();
    let jobs = ctx.socket(zmq::PULL)?;
    jobs.connect(jobs_ep)?;
    let results = ctx.socket(zmq::PUSH)?;
    results.connect(results_ep)?;
    let control = ctx.socket(zmq::SUB)?;
    control.connect(control_ep)?;
    control.set_subscribe(b"")?;

    let mut processed: u64 = 0;
    let mut msg = zmq::Message::new();
    loop {
        match jobs.recv(&mut msg, zmq::DONTWAIT) {
            Ok(()) => {
                let order: Order = rmp_serde::from_slice(&msg)?;
                let body = rmp_serde::to_vec(&process(order))?;
                results.send(body, 0)?;
                processed += 1;
            }
            Err(zmq::Error::EAGAIN) => {
                // Idle: wait for a job or the sink's KILL.
                let mut items = [
                    jobs.as_poll_item(zmq::POLLIN),
                    control.as_poll_item(zmq::POLLIN),
                ];
                zmq::poll(&mut items, -1)?;
                if items[1].is_readable() {
                    break;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    eprintln!("worker: {processed} orders processed");
    Ok(())
}

fn sink(results_ep: &str, control_ep: &str, count: u64, idle_timeout_s: u64) -> Result<()> {
    let ctx = zmq::Context::new();
    let results = ctx.socket(zmq::PULL)?;
    results.bind(results_ep)?;
    let control = ctx.socket(zmq::PUB)?;
    control.bind(control_ep)?;

    let mut captured: HashMap<String, i128> = HashMap::new();
    let mut stock: HashMap<String, i64> = HashMap::new();
    let mut outcomes: HashMap<String, u64> = HashMap::new();
    let mut msg = zmq::Message::new();
    let mut started: Option<Instant> = None;
    let mut tallied: u64 = 0;
    let idle_ms = i64::try_from(idle_timeout_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    while tallied < count {
        match results.recv(&mut msg, zmq::DONTWAIT) {
            Ok(()) => {}
            Err(zmq::Error::EAGAIN) => {
                let mut items = [results.as_poll_item(zmq::POLLIN)];
                let wait = if started.is_some() { idle_ms } else { -1 };
                if zmq::poll(&mut items, wait)? == 0 {
                    // Tell the workers anyway, so that they print their counts.
                    control.send("KILL", 0)?;
                    std::thread::sleep(Duration::from_millis(200));
                    return Err(format!(
                        "stuck: {tallied} of {count} results tallied and none for {idle_timeout_s} s; \
                         the pipeline has no redelivery, so a lost message stalls it"
                    )
                    .into());
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        if msg.is_empty() {
            // The ventilator's start signal.
            started.get_or_insert_with(Instant::now);
            continue;
        }
        started.get_or_insert_with(Instant::now);
        let r: OrderResult = rmp_serde::from_slice(&msg)?;
        if r.outcome == "paid" {
            *captured.entry(r.currency).or_insert(0) += i128::from(r.amount_cents);
            for (sku, qty) in r.items {
                *stock.entry(sku).or_insert(0) += qty;
            }
        }
        *outcomes.entry(r.outcome).or_insert(0) += 1;
        tallied += 1;
    }
    let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
    let done_ns = unix_ns();
    let secs = elapsed.as_secs_f64().max(1e-9);

    let mut by_outcome: Vec<_> = outcomes.into_iter().collect();
    by_outcome.sort();
    for (outcome, n) in by_outcome {
        eprintln!("sink: {outcome:<16} {n:>10}");
    }
    let mut by_currency: Vec<_> = captured.into_iter().collect();
    by_currency.sort();
    for (currency, cents) in by_currency {
        eprintln!(
            "sink: {currency:<16} {:>16}.{:02}",
            cents / 100,
            cents % 100
        );
    }
    eprintln!("sink: {} distinct SKUs", stock.len());
    println!(
        "sink: done_unix_ns={done_ns} orders={tallied} elapsed_s={secs:.3} orders_per_s={:.0}",
        tallied as f64 / secs
    );

    // Tell the workers to exit, as the Guide's tasksink2 does, and give
    // ZeroMQ a moment to deliver it.
    control.send("KILL", 0)?;
    std::thread::sleep(Duration::from_millis(200));
    Ok(())
}
