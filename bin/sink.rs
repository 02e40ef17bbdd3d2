//! `ordergrid-sink`: tallies outcomes durably, acknowledges them, writes the report.

use clap::Parser;
use ordergrid::cli::{self, CommonArgs};
use ordergrid::roles::sink::{self, SinkConfig, SinkExit};
use ordergrid::shutdown::Shutdown;
use std::path::PathBuf;
use std::process::ExitCode;

/// Order grid sink: binds the results, acks and control endpoints and keeps the tally in --state.
/// Exits 0 when the run is complete and its report written; 130 when stopped by a signal
/// before that (start it again with the same --state to resume). With --serve it stays up
/// run after run and exits 0 when stopped with no run active.
/// Every flag can also be set with the ORDERGRID_* variable shown.
#[derive(Parser, Debug)]
#[command(name = "ordergrid-sink", version)]
struct Args {
    /// Where to bind the results socket (PULL) that workers push outcomes to.
    #[arg(long, env = "ORDERGRID_RESULTS", default_value = ordergrid::DEFAULT_RESULTS, value_parser = cli::endpoint)]
    results: String,
    /// Where to bind the acks socket (ROUTER) the ventilator connects to.
    #[arg(long, env = "ORDERGRID_ACKS", default_value = ordergrid::DEFAULT_ACKS, value_parser = cli::endpoint)]
    acks: String,
    /// Where to bind the control socket (PUB) that tells workers the run is over.
    #[arg(long, env = "ORDERGRID_CONTROL", default_value = ordergrid::DEFAULT_CONTROL, value_parser = cli::endpoint)]
    control: String,
    /// Folder of the durable state (journal, snapshots, reports of past runs).
    #[arg(long, env = "ORDERGRID_STATE", default_value = ordergrid::DEFAULT_STATE)]
    state: PathBuf,
    /// Where to write the report as JSON (default: STATE/report.json).
    #[arg(long, env = "ORDERGRID_REPORT")]
    report: Option<PathBuf>,
    /// Journal size in MiB after which the tally is checkpointed and the journal restarted.
    #[arg(long, env = "ORDERGRID_COMPACT_MIB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    compact_mib: u64,
    /// How often a progress line is logged, in milliseconds.
    #[arg(long, env = "ORDERGRID_PROGRESS_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..))]
    progress_ms: u64,
    /// Stay up after a run and serve the next: ventilators that arrive while a run is active
    /// wait in a first-come queue. Every run's report stays in STATE/runs/<id>/report.json.
    #[arg(long, env = "ORDERGRID_SERVE")]
    serve: bool,
    /// Serve the dashboard on http://ADDR/ (its JSON on /api/status) beside /metrics and
    /// /healthz, on one listener (e.g. 127.0.0.1:9100). Off loopback it needs --http-token
    /// or --insecure.
    #[arg(long, env = "ORDERGRID_HTTP", value_name = "ADDR")]
    http: Option<String>,
    /// A file holding the dashboard's bearer token (one word, at least 16 characters): the
    /// page asks for it once, /api/status wants `Authorization: Bearer TOKEN`.
    #[arg(
        long,
        env = "ORDERGRID_HTTP_TOKEN_FILE",
        value_name = "FILE",
        requires = "http"
    )]
    http_token: Option<PathBuf>,
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::run_role("ordergrid-sink", "sink", args.common.log_format, || {
        Ok(match run(args)? {
            SinkExit::Complete(_) | SinkExit::Idle => cli::RoleEnd::Done,
            SinkExit::Stopped => cli::RoleEnd::Stopped(
                "stopped before the run was complete; start it again with the same --state to resume".into(),
            ),
        })
    })
}

fn run(args: Args) -> ordergrid::Result<SinkExit> {
    cli::check_state_folder("--state", &args.state)?;
    if let Some(report) = &args.report {
        cli::check_output_file("--report", report)?;
    }
    let shutdown = Shutdown::install()?;
    let board = ordergrid::dashboard::Board::new(args.serve);
    let metrics = listener(&args, &board)?;
    let wire = args
        .common
        .wire(&[&args.results, &args.acks, &args.control])?;
    let config = SinkConfig {
        endpoints: sink::SinkEndpoints {
            results: args.results,
            acks: args.acks,
            control: args.control,
        },
        state: args.state,
        report: args.report,
        compact_bytes: args.compact_mib << 20,
        progress_every: std::time::Duration::from_millis(args.progress_ms),
        metrics,
        wire,
        serve: args.serve,
        board,
        ..SinkConfig::default()
    };
    sink::run(&config, &shutdown)
}

/// The metrics, served with the dashboard when `--http` was given.
fn listener(
    args: &Args,
    board: &std::sync::Arc<ordergrid::dashboard::Board>,
) -> ordergrid::Result<ordergrid::metrics::Metrics> {
    let Some(addr) = &args.http else {
        return args.common.metrics("sink");
    };
    if let Some(other) = args.common.metrics.as_ref().filter(|m| *m != addr) {
        return Err(ordergrid::Error::Config(format!(
            "--metrics {other} and --http {addr}: the sink has one listener, and --http serves /metrics too; give one of them"
        )));
    }
    let token = match &args.http_token {
        Some(path) => Some(ordergrid::dashboard::http::read_token(path)?),
        None => None,
    };
    let dashboard = ordergrid::dashboard::http::Dashboard::new(
        board.clone(),
        addr,
        token,
        args.common.insecure,
    );
    let metrics = ordergrid::metrics::Metrics::default();
    metrics.serve("sink", addr, Some(Box::new(dashboard)))?;
    Ok(metrics)
}
