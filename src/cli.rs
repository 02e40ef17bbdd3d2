//! What the thin binaries share: the common flags, logging set-up and the
//! mapping of a role's result to an exit code (0 done, 1 run-time failure;
//! clap exits 2 on a bad command line).

use crate::Error;
use std::io::IsTerminal;
use std::process::ExitCode;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (tracing's JSON formatter), with the role and run id.
    Json,
}

/// Flags every role takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Log format on stderr; the level comes from RUST_LOG (default: info).
    #[arg(long, env = "ORDERGRID_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9101).
    #[arg(long, env = "ORDERGRID_METRICS", value_name = "ADDR")]
    pub metrics: Option<String>,
    #[command(flatten)]
    pub key: crate::seal::KeyArgs,
    /// Allow non-loopback endpoints without a key (frames then travel unsealed:
    /// anyone on the network can read and forge them).
    #[arg(long, env = "ORDERGRID_INSECURE")]
    pub insecure: bool,
}

impl CommonArgs {
    /// The wire for these endpoints: sealed with the key files, or plain,
    /// which is refused off loopback unless `--insecure`.
    pub fn wire(&self, endpoints: &[&str]) -> crate::Result<crate::transport::Wire> {
        if let Some((sealer, warnings)) = self.key.load()? {
            for warning in warnings {
                tracing::warn!("{warning}");
            }
            tracing::info!(key_id = %sealer.sealing_key_id(), keys = sealer.key_ids().count(), "frames are sealed");
            return Ok(crate::transport::Wire::sealed(sealer));
        }
        if !self.insecure {
            if let Some(ep) = endpoints
                .iter()
                .find(|ep| !crate::transport::is_local_endpoint(ep))
            {
                return Err(Error::Config(format!(
                    "refusing to use {ep} without a key: off loopback, unsealed frames can be read and forged; \
                     give --key-file FILE (ordergrid-keygen FILE writes one) or --insecure"
                )));
            }
        }
        Ok(crate::transport::Wire::plain())
    }

    /// The role's metrics, served when `--metrics` was given.
    pub fn metrics(&self, role: &'static str) -> crate::Result<crate::metrics::Metrics> {
        let metrics = crate::metrics::Metrics::default();
        if let Some(addr) = &self.metrics {
            metrics.serve(role, addr)?;
        }
        Ok(metrics)
    }
}

/// Sets up tracing to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_target(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

/// The span every log line of a role carries: its role, and its run id once
/// known (recorded with [`record_run`]).
pub fn role_span(role: &'static str) -> tracing::Span {
    tracing::info_span!("ordergrid", role, run = tracing::field::Empty)
}

/// Records the run id on the current role span.
pub fn record_run(run: &crate::protocol::RunId) {
    tracing::Span::current().record("run", tracing::field::display(run));
}

/// Prints a role's failure as one line on stderr and picks the exit code.
pub fn exit_code(binary: &str, result: Result<(), Error>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{binary}: {e}");
            ExitCode::from(1)
        }
    }
}
