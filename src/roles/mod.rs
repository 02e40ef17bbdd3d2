//! The three roles. Each exposes a config struct and
//! `run(config, shutdown) -> Result<Summary>`; the binaries only parse flags
//! into the config, so tests and embedders can drive a role directly.

pub mod sink;
pub mod ventilator;
pub mod worker;
