//! `ordergrid-keygen`: writes a fresh pre-shared key file for `--key-file`.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Write a fresh pre-shared key file for the grid's --key-file.
///
/// The file holds 32 random bytes as 64 hexadecimal characters and a newline,
/// and is readable and writable by its owner only (mode 0600). An existing
/// file is never overwritten. Give the same file to every role with
/// --key-file (or ORDERGRID_KEY_FILE); the key itself is never printed.
#[derive(Parser, Debug)]
#[command(name = "ordergrid-keygen", version)]
struct Args {
    /// Where to write the key; must not exist yet.
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match ordergrid::seal::generate_key_file(&args.file) {
        Ok(()) => {
            eprintln!("wrote a new key to {} (mode 0600)", args.file.display());
            ExitCode::SUCCESS
        }
        Err(e) => ordergrid::cli::exit_code("ordergrid-keygen", Err(e)),
    }
}
