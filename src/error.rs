//! The crate's error type: what went wrong and where (which file, which endpoint).
//!
//! Expected conditions (a malformed line, an undecodable frame, a time-out) are
//! values elsewhere, not errors; this type is for what stops a role.

use std::fmt;
use std::io;
use std::path::Path;

/// A failure that stops a role; its `Display` is the one line the binary prints.
#[derive(Debug)]
pub enum Error {
    /// A file or folder could not be read or written.
    Io { what: String, source: io::Error },
    /// A ZeroMQ call failed (bind, connect, socket option).
    Zmq { what: String, source: zmq::Error },
    /// A setting is invalid (bad endpoint, conflicting flags).
    Config(String),
    /// The durable state cannot be used (corrupt snapshot, wrong format).
    State(String),
    /// A thread of this process failed (a bug: please report it).
    Internal(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`, doing `doing` ("cannot read", "cannot create").
    pub fn io(doing: &str, path: &Path, source: io::Error) -> Error {
        Error::Io {
            what: format!("{doing} {}", path.display()),
            source,
        }
    }

    /// A ZeroMQ error while doing `what`.
    pub fn zmq(what: impl Into<String>, source: zmq::Error) -> Error {
        Error::Zmq {
            what: what.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::Zmq { what, source } => write!(f, "{what}: {source}"),
            Error::Config(msg) => write!(f, "{msg}"),
            Error::State(msg) => write!(f, "{msg}"),
            Error::Internal(msg) => write!(f, "{msg} (a bug in ordergrid)"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Zmq { source, .. } => Some(source),
            _ => None,
        }
    }
}
