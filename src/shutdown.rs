//! The stop request: Ctrl-C or SIGTERM sets it, every role's loop polls it
//! with a short time-out. A second signal exits at once.

use crate::{Error, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Cloneable handle on "a stop was requested".
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicUsize>);

impl Shutdown {
    /// A handle nothing signals but [`request`](Self::request) (for tests and embedding).
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// A handle set by SIGINT and SIGTERM; the second signal exits the process with 130.
    pub fn install() -> Result<Shutdown> {
        let shutdown = Shutdown::new();
        let counter = shutdown.0.clone();
        ctrlc::set_handler(move || {
            if counter.fetch_add(1, Ordering::SeqCst) >= 1 {
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
