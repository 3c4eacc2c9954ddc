//! The `sitemon` binary: parses the command line and calls the library crates.

mod args;
mod cli;
mod commands;
mod nofile;
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
    let nofile = nofile::raise();
    tracing::debug!("open-file limit: {nofile:?}");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return report(&anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    match runtime.block_on(cli.command.exec()) {
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
    if let Some(message) = invalid_value(error) {
        eprintln!("error: {message} (see --help)");
        return ExitCode::from(2);
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

/// A value our own parser refused, as `invalid --FLAG: REASON` (the words of every other
/// setting error), instead of clap's longer sentence.
fn invalid_value(error: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if error.kind() != ErrorKind::ValueValidation {
        return None;
    }
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let flag = arg.split_whitespace().next()?;
    let reason = std::error::Error::source(error)?.downcast_ref::<args::InvalidValue>()?;
    Some(format!("invalid {flag}: {reason}"))
}

/// The error and its causes as one line. Our errors often say their cause already ("PostgreSQL
/// failed while removing the site: …"): a cause whose words are there is not repeated.
fn one_line(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        let text = sitemon_core::mask::bound_text(&text, sitemon_core::mask::MAX_MESSAGE_BYTES);
        if text.is_empty() || message.contains(&*text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

/// Prints the error as one line on stderr and picks the exit status: 2 when the
/// configuration given was unusable, 1 for everything that failed at run time.
fn report(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {}", one_line(error));
    let usage = error.chain().any(|cause| cause.is::<args::Usage>());
    ExitCode::from(if usage { 2 } else { 1 })
}

#[cfg(test)]
mod tests {
    /// An error that says its cause in its own message, as sitemon's do.
    #[derive(Debug, thiserror::Error)]
    #[error("PostgreSQL failed while removing the site: {0}")]
    struct Failed(#[source] std::io::Error);

    #[test]
    fn a_cause_already_said_is_not_repeated() {
        let cause = std::io::Error::other("connection reset\n   by peer");
        let error = anyhow::Error::new(Failed(cause)).context("cannot remove site 3");
        assert_eq!(
            super::one_line(&error),
            "cannot remove site 3: PostgreSQL failed while removing the site: connection \
             reset by peer"
        );
        let error = anyhow::Error::new(std::io::Error::other("disk full")).context("cannot write");
        assert_eq!(super::one_line(&error), "cannot write: disk full");
    }
}
