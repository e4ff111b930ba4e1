//! The `kiln` command line: parses arguments, builds the stage registry, runs one command,
//! and turns errors into messages and exit codes in one place.
//!
//! Exit codes: 0 success; 1 a run or query failed; 2 bad input (spec errors, bad arguments);
//! 130 interrupted.
#![deny(missing_docs)]

mod args;
mod commands;
mod output;
mod reporter;

use std::process::ExitCode;

use clap::Parser;

pub use args::Cli;

/// An error that carries its own exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    /// The code.
    pub code: u8,
    /// What to print (may be empty when the command printed already).
    pub message: String,
}

/// Runs `kiln` with the process's arguments and returns its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kiln: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(commands::execute(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(exit) = err.downcast_ref::<Exit>() {
                if !exit.message.is_empty() {
                    eprintln!("{}", exit.message);
                }
                return ExitCode::from(exit.code);
            }
            let spec = err.chain().any(|e| {
                e.downcast_ref::<kiln_core::SpecErrors>().is_some()
                    || matches!(
                        e.downcast_ref::<kiln_core::Error>(),
                        Some(kiln_core::Error::Spec(_))
                    )
            });
            eprintln!("error: {err:#}");
            ExitCode::from(if spec { 2 } else { 1 })
        }
    }
}

fn init_tracing(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        args::LogFormat::Json => builder.json().init(),
        args::LogFormat::Text => builder.init(),
    }
}
