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
            metrics.serve(role, addr, None)?;
        }
        Ok(metrics)
    }
}

/// The log format chosen at start-up, for the last words of a role.
static FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// Sets up tracing to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let _ = FORMAT.set(format);
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

/// How a role's run ended, for its exit code.
pub enum RoleEnd {
    /// Done: exit 0.
    Done,
    /// Stopped by a signal before it was done: these last words, exit 130.
    Stopped(String),
}

/// What every binary's `main` does: logs set up with `format`, `body` run
/// in the role's span, and its end mapped to an exit code (0 done, 130
/// stopped, 1 failed with one line on stderr).
pub fn run_role(
    binary: &'static str,
    role: &'static str,
    format: LogFormat,
    body: impl FnOnce() -> crate::Result<RoleEnd>,
) -> ExitCode {
    init_logging(format);
    let ended = {
        let span = role_span(role);
        let _entered = span.enter();
        body()
    };
    match ended {
        Ok(RoleEnd::Done) => ExitCode::SUCCESS,
        Ok(RoleEnd::Stopped(words)) => {
            last_words(binary, &words, false);
            ExitCode::from(130)
        }
        Err(e) => exit_code(binary, Err(e)),
    }
}

/// Prints a role's failure as one line on stderr and picks the exit code.
pub fn exit_code(binary: &str, result: Result<(), Error>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            last_words(binary, &e.to_string(), true);
            ExitCode::from(1)
        }
    }
}

/// A role's last line on stderr (a failure, or "stopped before…"): plain
/// `binary: message` in text logs, one JSON object like every other line
/// with `--log-format json`.
pub fn last_words(binary: &str, message: &str, failure: bool) {
    if FORMAT.get() == Some(&LogFormat::Json) {
        let line = serde_json::json!({
            "timestamp": unix_timestamp(),
            "level": if failure { "ERROR" } else { "WARN" },
            "fields": { "message": format!("{binary}: {message}") },
            "target": binary,
        });
        eprintln!("{line}");
    } else {
        eprintln!("{binary}: {message}");
    }
}

/// Seconds since the Unix epoch with microseconds, as logs stamp them.
fn unix_timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:06}", now.as_secs(), now.subsec_micros())
}

/// Checks, before anything is bound, that the file `flag` names can be
/// written: not a folder, in a folder that exists and takes new files.
/// Relative paths are relative to the working folder; errors name the path
/// as the user gave it.
pub fn check_output_file(flag: &str, path: &std::path::Path) -> crate::Result<()> {
    let shown = path.display();
    if path.as_os_str().is_empty() {
        return Err(Error::Config(format!("{flag}: the path is empty")));
    }
    if path.is_dir() {
        return Err(Error::Config(format!(
            "{flag} {shown}: is a folder; give a file name"
        )));
    }
    let folder = crate::journal::parent_folder(path);
    if !folder.is_dir() {
        return Err(Error::Config(format!(
            "{flag} {shown}: the folder {} does not exist",
            folder.display()
        )));
    }
    let probe = folder.join(format!(".ordergrid-probe-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(Error::Config(format!(
            "{flag} {shown}: cannot write in the folder {}: {e}",
            folder.display()
        ))),
    }
}

/// Checks, before anything is bound, that `state` is (or can be made) a
/// folder this process can write in.
pub fn check_state_folder(flag: &str, state: &std::path::Path) -> crate::Result<()> {
    let shown = state.display();
    if state.exists() && !state.is_dir() {
        return Err(Error::Config(format!("{flag} {shown}: is not a folder")));
    }
    std::fs::create_dir_all(state)
        .map_err(|e| Error::Config(format!("{flag} {shown}: cannot create the folder: {e}")))?;
    check_output_file(flag, &state.join("lock"))
}

/// clap's check of an endpoint flag: `tcp://HOST:PORT` (PORT 1-65535 or `*`),
/// `ipc://PATH` or `inproc://NAME`, so that a typo fails when the command
/// line is read (exit 2) with a message about the endpoint itself.
pub fn endpoint(text: &str) -> Result<String, String> {
    const FORMS: &str = "tcp://HOST:PORT, ipc://PATH or inproc://NAME";
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(format!("'{text}' is not an endpoint: expected {FORMS}"));
    };
    match scheme {
        "ipc" | "inproc" if !rest.is_empty() => Ok(text.to_owned()),
        "ipc" | "inproc" => Err(format!("no {scheme} address after {scheme}://")),
        "tcp" => {
            let Some((host, port)) = rest.rsplit_once(':').filter(|(h, _)| !h.is_empty()) else {
                return Err("needs a host and a port: tcp://HOST:PORT".into());
            };
            if host.contains('/') || host.contains(' ') {
                return Err(format!("'{host}' is not a host name or address"));
            }
            match port.parse::<u32>() {
                _ if port == "*" => Ok(text.to_owned()),
                Ok(1..=65535) => Ok(text.to_owned()),
                _ => Err(format!(
                    "'{port}' is not a port (1-65535, or * for any free port)"
                )),
            }
        }
        other => Err(format!("unknown transport '{other}': expected {FORMS}")),
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint;

    #[test]
    fn endpoints_are_checked_when_the_command_line_is_read() {
        for ok in [
            "tcp://127.0.0.1:5557",
            "tcp://*:5557",
            "tcp://localhost:1",
            "tcp://[::1]:9",
            "tcp://host-a:65535",
            "tcp://127.0.0.1:*",
            "ipc:///tmp/x.ipc",
            "inproc://a",
        ] {
            assert_eq!(endpoint(ok).as_deref(), Ok(ok));
        }
        for (bad, says) in [
            ("tcp://127.0.0.1:99999", "'99999' is not a port"),
            ("tcp://127.0.0.1:0", "'0' is not a port"),
            ("foo", "not an endpoint"),
            ("", "not an endpoint"),
            ("tcp://nohost", "host and a port"),
            ("tcp://:5", "host and a port"),
            ("ipc://", "no ipc address"),
            ("udp://x:1", "unknown transport 'udp'"),
        ] {
            let err = endpoint(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
