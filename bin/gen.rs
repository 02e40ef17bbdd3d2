//! `ordergrid-gen`: writes a deterministic stream of synthetic orders (JSON Lines)
//! to stdout, for feeding the ventilator or for tests and benchmarks.

use std::io::{self, BufWriter, Write};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use ordergrid::generator::Generator;

/// Write N synthetic orders as JSON Lines to stdout. The same --count and --seed
/// always give the same bytes. About 1% of the lines are rejected orders, 1%
/// malformed lines and 0.5% duplicate order ids.
#[derive(Parser, Debug)]
#[command(name = "ordergrid-gen", version)]
struct Args {
    /// How many lines to write.
    #[arg(long, env = "ORDERGRID_COUNT")]
    count: u64,

    /// Seed of the stream.
    #[arg(long, env = "ORDERGRID_SEED", default_value_t = 1)]
    seed: u64,

    /// How many poison orders (payment_token "tok_crash", which abort a worker)
    /// to spread over the stream in place of ordinary ones.
    #[arg(long, env = "ORDERGRID_POISON", default_value_t = 0)]
    poison: u64,

    /// Also write a stock file for these orders to FILE (one {"sku", "on_hand"} per line):
    /// --stock-ratio times each SKU's demand, a few SKUs missing, the 3 most wanted short.
    #[arg(long, env = "ORDERGRID_STOCK_OUT", value_name = "FILE")]
    stock_out: Option<std::path::PathBuf>,

    /// Units on hand relative to demand in the --stock-out file.
    #[arg(
        long,
        env = "ORDERGRID_STOCK_RATIO",
        default_value_t = 0.9,
        requires = "stock_out"
    )]
    stock_ratio: f64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.poison > args.count {
        Args::command()
            .error(
                clap::error::ErrorKind::ValueValidation,
                format!(
                    "--poison ({}) must not exceed --count ({})",
                    args.poison, args.count
                ),
            )
            .exit();
    }
    if !(args.stock_ratio >= 0.0 && args.stock_ratio.is_finite()) {
        Args::command()
            .error(
                clap::error::ErrorKind::ValueValidation,
                format!("--stock-ratio ({}) must be a number >= 0", args.stock_ratio),
            )
            .exit();
    }
    if let Some(path) = &args.stock_out {
        if let Err(e) = write_stock(&args, path) {
            let _ = writeln!(
                io::stderr(),
                "ordergrid-gen: cannot write {}: {e}",
                path.display()
            );
            return ExitCode::FAILURE;
        }
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (e.g. `| head`): that is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io::stderr(), "ordergrid-gen: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_stock(args: &Args, path: &std::path::Path) -> io::Result<()> {
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    let generator = Generator::new(args.count, args.seed).with_poison(args.poison);
    ordergrid::generator::write_stock(generator, args.stock_ratio, &mut out)?;
    out.flush()
}

fn run(args: &Args) -> io::Result<()> {
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
    let mut generator = Generator::new(args.count, args.seed).with_poison(args.poison);
    let mut line = Vec::with_capacity(1 << 12);
    loop {
        line.clear();
        if !generator.next_line(&mut line) {
            break;
        }
        line.push(b'\n');
        out.write_all(&line)?;
    }
    out.flush()
}
