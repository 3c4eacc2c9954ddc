//! The `sitemon` binary: parses the command line and calls the library crates.

mod cli;
mod commands;
mod output;
mod shutdown;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    cli.global.init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return report(&anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    match runtime.block_on(commands::exec(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

/// Prints the error as one line on stderr and picks the exit status: 2 when the
/// configuration given was unusable, 1 for everything that failed at run time.
fn report(error: &anyhow::Error) -> ExitCode {
    let message = format!("{error:#}");
    eprintln!(
        "error: {}",
        message.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    let usage = error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<sitemon_core::Error>(),
            Some(sitemon_core::Error::Config { .. })
        )
    });
    ExitCode::from(if usage { 2 } else { 1 })
}
