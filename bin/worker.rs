//! `ordergrid-worker`: takes orders from the ventilator, pays them, sends outcomes to the sink.

use clap::Parser;
use ordergrid::cli::{self, CommonArgs};
use ordergrid::gateway::http::HttpGateway;
use ordergrid::gateway::{GatewayChoice, PaymentGateway, SimulatedGateway};
use ordergrid::payments::RetryPolicy;
use ordergrid::roles::worker::{self, WorkerConfig};
use ordergrid::shutdown::Shutdown;
use std::process::ExitCode;
use std::time::Duration;

/// Order grid worker: connects to the ventilator's jobs and the sink's results and control.
/// Exits 0 when the sink says the run is over (or, with --serve, when stopped by a signal).
/// Every flag can also be set with the ORDERGRID_* variable shown.
#[derive(Parser, Debug)]
#[command(name = "ordergrid-worker", version)]
struct Args {
    /// The ventilator's jobs endpoint (DEALER, connects): jobs in, credit out.
    #[arg(long, env = "ORDERGRID_JOBS", default_value = ordergrid::DEFAULT_JOBS, value_parser = cli::endpoint)]
    jobs: String,
    /// The sink's results endpoint (PUSH, connects).
    #[arg(long, env = "ORDERGRID_RESULTS", default_value = ordergrid::DEFAULT_RESULTS, value_parser = cli::endpoint)]
    results: String,
    /// The sink's control endpoint (SUB, connects): the sink says here when the run is over.
    #[arg(long, env = "ORDERGRID_CONTROL", default_value = ordergrid::DEFAULT_CONTROL, value_parser = cli::endpoint)]
    control: String,
    /// Payments in flight at the gateway at once.
    #[arg(long, env = "ORDERGRID_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    concurrency: u32,
    /// The payment gateway: `sim` (the built-in simulator) or a PSP's base URL,
    /// http://HOST:PORT (charges are POSTed to URL/v1/charges).
    #[arg(long, env = "ORDERGRID_GATEWAY", default_value = "sim")]
    gateway: GatewayChoice,
    /// The simulated gateway's delay per payment attempt, in milliseconds.
    #[arg(long, env = "ORDERGRID_GATEWAY_LATENCY_MS", default_value_t = 0)]
    gateway_latency_ms: u64,
    /// HTTP gateway: time for one attempt's whole answer, in milliseconds.
    #[arg(long, env = "ORDERGRID_GATEWAY_TIMEOUT_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    gateway_timeout_ms: u64,
    /// Attempts of a transiently failing payment before the order counts as failed.
    #[arg(long, alias = "max-attempts", env = "ORDERGRID_GATEWAY_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    gateway_attempts: u32,
    /// Back-off after the first failed attempt, doubled after each further one
    /// (with jitter), in milliseconds [default: sim 5, http 1000].
    #[arg(long, env = "ORDERGRID_GATEWAY_BACKOFF_MS", value_parser = clap::value_parser!(u64).range(1..=600_000))]
    gateway_backoff_ms: Option<u64>,
    /// Job frames queued towards this worker (ZMQ_RCVHWM); low keeps orders from piling up here.
    #[arg(long, env = "ORDERGRID_RECV_HWM", default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..=1_000_000))]
    recv_hwm: i32,
    /// Orders queued beyond the payments in flight: enough for this many milliseconds
    /// of work at this worker's measured pace (at least one round of --concurrency).
    #[arg(long, env = "ORDERGRID_PREFETCH_MS", default_value_t = 20)]
    prefetch_ms: u64,
    /// Stay up after a run and take the next, from wherever the sink says the run's
    /// ventilator is (without it: exit when the sink says the run is over).
    #[arg(long, env = "ORDERGRID_SERVE")]
    serve: bool,
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::run_role("ordergrid-worker", "worker", args.common.log_format, || {
        run(args).map(|()| cli::RoleEnd::Done)
    })
}

fn run(args: Args) -> ordergrid::Result<()> {
    let shutdown = Shutdown::install()?;
    let metrics = args.common.metrics("worker")?;
    let wire = args
        .common
        .wire(&[&args.jobs, &args.results, &args.control])?;
    let retry = retry_policy(&args);
    let config = WorkerConfig {
        jobs: args.jobs,
        results: args.results,
        control: args.control,
        concurrency: args.concurrency as usize,
        retry,
        recv_hwm: args.recv_hwm,
        prefetch: Duration::from_millis(args.prefetch_ms),
        metrics,
        wire,
        serve: args.serve,
        ..WorkerConfig::default()
    };
    let mut gateway: Box<dyn PaymentGateway> = match &args.gateway {
        GatewayChoice::Simulated => Box::new(SimulatedGateway::new(Duration::from_millis(
            args.gateway_latency_ms,
        ))),
        GatewayChoice::Http(url) => {
            tracing::info!(gateway = %url, timeout_ms = args.gateway_timeout_ms, "paying through an HTTP gateway");
            Box::new(HttpGateway::new(
                url,
                Duration::from_millis(args.gateway_timeout_ms),
                args.concurrency as usize,
            )?)
        }
    };
    worker::run(&config, gateway.as_mut(), &shutdown)?;
    Ok(())
}

/// Attempts and back-off: short for the simulator (its failures are
/// scripted), long enough over HTTP that a PSP down for a minute makes
/// orders late, not failed (waits of 1, 2, 4 … 60 s, half of each jittered).
fn retry_policy(args: &Args) -> RetryPolicy {
    let (base, cap) = match args.gateway {
        GatewayChoice::Simulated => (5, 320),
        GatewayChoice::Http(_) => (1000, 60_000),
    };
    let base = args.gateway_backoff_ms.unwrap_or(base);
    RetryPolicy {
        max_attempts: args.gateway_attempts,
        base: Duration::from_millis(base),
        cap: Duration::from_millis(cap.max(base)),
    }
}
