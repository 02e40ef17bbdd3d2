//! `ordergrid-ventilator`: reads orders and sends them to the workers until the sink has tallied all.

use clap::Parser;
use ordergrid::cli::{self, CommonArgs};
use ordergrid::input::InputSpec;
use ordergrid::protocol::RunId;
use ordergrid::roles::ventilator::{self, VentilatorConfig, VentilatorExit};
use ordergrid::shutdown::Shutdown;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Order grid ventilator: binds the jobs endpoint, connects to the sink's acks endpoint.
/// Exits 0 once the sink has tallied every order of the run; 130 when stopped by a signal
/// before that (start it again with the same input to resume).
/// Every flag can also be set with the ORDERGRID_* variable shown.
#[derive(Parser, Debug)]
#[command(name = "ordergrid-ventilator", version)]
#[command(group(clap::ArgGroup::new("source").args(["input", "generate"]).required(true)))]
struct Args {
    /// JSON Lines file of orders; `-` reads standard input.
    /// One of --input and --generate is required.
    #[arg(long, env = "ORDERGRID_INPUT", conflicts_with = "generate")]
    input: Option<String>,
    /// Stream N synthetic orders (as `ordergrid-gen --count N --seed S` would write) instead of --input.
    #[arg(long, env = "ORDERGRID_GENERATE", value_name = "N")]
    generate: Option<u64>,
    /// Seed of the synthetic orders.
    #[arg(
        long,
        env = "ORDERGRID_SEED",
        default_value_t = 1,
        requires = "generate"
    )]
    seed: u64,
    /// Synthetic poison orders (tok_crash: they abort the worker that pays them).
    #[arg(
        long,
        env = "ORDERGRID_POISON",
        default_value_t = 0,
        requires = "generate"
    )]
    poison: u64,
    /// Where to bind the jobs socket (ROUTER: jobs out, worker credit in).
    #[arg(long, env = "ORDERGRID_JOBS", default_value = ordergrid::DEFAULT_JOBS, value_parser = cli::endpoint)]
    jobs: String,
    /// The sink's acks endpoint (DEALER, connects).
    #[arg(long, env = "ORDERGRID_ACKS", default_value = ordergrid::DEFAULT_ACKS, value_parser = cli::endpoint)]
    acks: String,
    /// The run's identity (16 hex digits, or any text, which is hashed). Default: the input's digest.
    /// Give one with `--input -` so that a restarted ventilator resumes the run.
    #[arg(long, env = "ORDERGRID_RUN_ID")]
    run_id: Option<RunId>,
    /// Stock file (JSON Lines: {"sku": "…", "on_hand": N}): each distinct order gets all its
    /// units in line order or is rejected out_of_stock. Part of the run's identity.
    #[arg(long, env = "ORDERGRID_STOCK", value_name = "FILE")]
    stock: Option<PathBuf>,
    /// Where malformed lines and poison orders are written (JSON Lines: line, reason).
    #[arg(long, env = "ORDERGRID_DEAD_LETTER", default_value = ordergrid::DEFAULT_DEAD_LETTER)]
    dead_letter: PathBuf,
    /// Orders per job frame at most.
    #[arg(long, env = "ORDERGRID_BATCH", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65_535))]
    batch: u32,
    /// Orders sent and not yet acknowledged, at most.
    #[arg(long, env = "ORDERGRID_WINDOW", default_value_t = 32_768, value_parser = clap::value_parser!(u32).range(1..))]
    window: u32,
    /// Job frames queued towards each worker (ZMQ_SNDHWM); worker credit bounds them.
    #[arg(long, env = "ORDERGRID_SEND_HWM", default_value_t = 64, value_parser = clap::value_parser!(i32).range(1..=1_000_000))]
    send_hwm: i32,
    /// Times an order's worker may be lost with it (its connection closed) before
    /// the order is given up as poison (failed).
    #[arg(long, env = "ORDERGRID_MAX_DELIVERIES", default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=50))]
    max_deliveries: u8,
    /// An order whose worker has sent its result, or a verdict of the ventilator's own,
    /// is sent again when not acknowledged within 4x this many milliseconds.
    #[arg(long, env = "ORDERGRID_MIN_TIMEOUT_MS", default_value_t = 1000)]
    min_timeout_ms: u64,
    /// A worker silent this many milliseconds (while the sink answers) is gone, and
    /// its orders are sent to others.
    #[arg(long, env = "ORDERGRID_LIVENESS_MS", default_value_t = 3000, value_parser = clap::value_parser!(u64).range(500..))]
    liveness_ms: u64,
    /// The jobs endpoint as workers on other hosts reach it, told to a serving sink's workers
    /// (e.g. tcp://10.0.0.5:5557). Default: --jobs, unless it binds a wildcard (* or 0.0.0.0):
    /// then workers use their own --jobs.
    #[arg(long, env = "ORDERGRID_ADVERTISE", value_name = "ENDPOINT", value_parser = cli::endpoint)]
    advertise: Option<String>,
    /// Have the sink send the finished run's report back: it is written to FILE (JSON) and its
    /// summary table printed, wherever this ventilator runs.
    #[arg(long, env = "ORDERGRID_VENTILATOR_REPORT", value_name = "FILE")]
    report: Option<PathBuf>,
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::run_role(
        "ordergrid-ventilator",
        "ventilator",
        args.common.log_format,
        || {
            Ok(match run(args)? {
            VentilatorExit::Complete { .. } => cli::RoleEnd::Done,
            VentilatorExit::Stopped { run } => cli::RoleEnd::Stopped(format!(
                "stopped before run {run} was complete; start it again with the same input to resume"
            )),
        })
        },
    )
}

fn run(args: Args) -> ordergrid::Result<VentilatorExit> {
    cli::check_output_file("--dead-letter", &args.dead_letter)?;
    if let Some(report) = &args.report {
        cli::check_output_file("--report", report)?;
    }
    let shutdown = Shutdown::install()?;
    let metrics = args.common.metrics("ventilator")?;
    let wire = args.common.wire(&[&args.jobs, &args.acks])?;
    let input = match (args.input, args.generate) {
        (Some(path), _) if path == "-" => InputSpec::Stdin,
        (Some(path), _) => InputSpec::File(PathBuf::from(path)),
        (None, Some(count)) => InputSpec::Generate {
            count,
            seed: args.seed,
            poison: args.poison,
        },
        (None, None) => unreachable!("clap requires --input or --generate"),
    };
    let config = VentilatorConfig {
        input,
        jobs: args.jobs,
        acks: args.acks,
        run_id: args.run_id,
        stock: args.stock,
        dead_letter: args.dead_letter,
        tuning: ventilator::DispatchTuning {
            batch: args.batch as usize,
            window: args.window as usize,
            send_hwm: args.send_hwm,
            max_deliveries: args.max_deliveries,
            min_timeout: Duration::from_millis(args.min_timeout_ms),
            liveness: Duration::from_millis(args.liveness_ms),
        },
        metrics,
        wire,
        advertise: args.advertise,
        want_report: args.report.is_some(),
    };
    let exit = ventilator::run(&config, &shutdown)?;
    if let (Some(path), VentilatorExit::Complete { run, report, .. }) = (&args.report, &exit) {
        write_report(path, *run, report.as_deref())?;
    }
    Ok(exit)
}

/// Writes the report the sink sent back and prints its summary table.
fn write_report(path: &std::path::Path, run: RunId, json: Option<&str>) -> ordergrid::Result<()> {
    let json = json.ok_or_else(|| {
        ordergrid::Error::State(format!(
            "run {run} is complete but the sink sent no report (it is in the sink's STATE/runs/{run}/report.json)"
        ))
    })?;
    let report: ordergrid::report::Report = serde_json::from_str(json).map_err(|e| {
        ordergrid::Error::State(format!(
            "run {run}: the report the sink sent does not parse: {e}"
        ))
    })?;
    ordergrid::journal::write_atomic(path, json.as_bytes())?;
    print!("{}", report.to_table(10));
    tracing::info!(run = %run, report = %path.display(), lines = report.orders.lines, "report written");
    Ok(())
}
