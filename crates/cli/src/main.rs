//! The `sitemon` binary: parses the command line and calls the library crates.

mod cli;
mod commands;
mod output;
mod shutdown;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
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

/// Prints `--help` and `--version` as clap does; any other parse error as one line on stderr
/// with the exit status 2.
fn usage_error(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        return ExitCode::from(if error.use_stderr() { 2 } else { 0 });
    }
    let rendered = error.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|line| {
            !line.is_empty()
                && !line.starts_with("Usage:")
                && !line.starts_with("For more information")
        })
        .collect();
    eprintln!("{} (see --help)", message.join(" "));
    ExitCode::from(2)
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
