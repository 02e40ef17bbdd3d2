//! `ordergrid-paysim`: a PSP simulator over HTTP to run `--gateway http://…` against.

use clap::Parser;
use ordergrid::cli::{self, LogFormat};
use ordergrid::paysim::{self, PaysimConfig};
use ordergrid::shutdown::Shutdown;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// PSP simulator: POST /v1/charges (idempotent by the Idempotency-Key header), GET /v1/ledger.
/// Prints `listening on ADDR` on stdout once it accepts connections.
/// Every flag can also be set with the ORDERGRID_PAYSIM_* variable shown.
#[derive(Parser, Debug)]
#[command(name = "ordergrid-paysim", version)]
struct Args {
    /// Address to listen on (port 0: any free port, printed on stdout).
    #[arg(
        long,
        env = "ORDERGRID_PAYSIM_LISTEN",
        default_value = "127.0.0.1:8099"
    )]
    listen: String,
    /// Delay before answering each charge, in milliseconds.
    #[arg(long, env = "ORDERGRID_PAYSIM_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// Share of charges answered 503 without charging (0 to 1).
    #[arg(long, env = "ORDERGRID_PAYSIM_FAIL_RATE", default_value_t = 0.0, value_parser = rate)]
    fail_rate: f64,
    /// Share of charges captured, then answered only after --late-hold-ms (0 to 1).
    #[arg(long, env = "ORDERGRID_PAYSIM_LATE_RATE", default_value_t = 0.0, value_parser = rate)]
    late_rate: f64,
    /// How long a late answer is held, in milliseconds (past any client time-out).
    #[arg(long, env = "ORDERGRID_PAYSIM_LATE_HOLD_MS", default_value_t = 60_000)]
    late_hold_ms: u64,
    /// Append every answer here, fsynced before it is given; replayed on start.
    #[arg(long, env = "ORDERGRID_PAYSIM_JOURNAL")]
    journal: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, env = "ORDERGRID_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s}: expected a number from 0 to 1")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_logging(args.log_format);
    cli::exit_code("ordergrid-paysim", run(args))
}

fn run(args: Args) -> ordergrid::Result<()> {
    let span = cli::role_span("paysim");
    let _entered = span.enter();
    let shutdown = Shutdown::install()?;
    let config = PaysimConfig {
        listen: args.listen,
        latency: Duration::from_millis(args.latency_ms),
        fail_rate: args.fail_rate,
        late_rate: args.late_rate,
        late_hold: Duration::from_millis(args.late_hold_ms),
        journal: args.journal,
    };
    paysim::run(config, &shutdown, |addr| {
        tracing::info!(%addr, "paysim listening");
        let mut out = std::io::stdout();
        let _ = writeln!(out, "listening on {addr}").and_then(|()| out.flush());
    })
}
