//! The stop request: Ctrl-C or SIGTERM sets it, every role's loop polls it
//! with a short time-out. A second signal exits at once.

use crate::{Error, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Stop signals this close to the first count as the same request.
const SAME_REQUEST: std::time::Duration = std::time::Duration::from_secs(1);

/// Cloneable handle on "a stop was requested".
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicUsize>);

impl Shutdown {
    /// A handle nothing signals but [`request`](Self::request) (for tests and embedding).
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// A handle set by SIGINT and SIGTERM; a second signal, a second or
    /// more after the first, exits the process with 130. Signals closer
    /// together are one request: GNU `timeout` signals the child and then
    /// its whole process group, which would otherwise skip the drain.
    pub fn install() -> Result<Shutdown> {
        let shutdown = Shutdown::new();
        let counter = shutdown.0.clone();
        let first = std::sync::OnceLock::<std::time::Instant>::new();
        ctrlc::set_handler(move || {
            let since = first.get_or_init(std::time::Instant::now).elapsed();
            if counter.fetch_add(1, Ordering::SeqCst) >= 1 && since >= SAME_REQUEST {
                eprintln!("second stop signal: exiting now");
                std::process::exit(130);
            }
        })
        .map_err(|e| Error::Config(format!("cannot install the signal handler: {e}")))?;
        Ok(shutdown)
    }

    /// Asks every loop holding this handle to stop.
    pub fn request(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    /// True once a stop was requested.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }
}
