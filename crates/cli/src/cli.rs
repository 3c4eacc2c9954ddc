//! The command line: one root [`Cli`] and one [`Command`] per subcommand, each run by the
//! `exec` of its module in `commands/`. The argument groups several subcommands share live
//! in `args.rs`. Every setting is a flag with an environment variable.

use clap::{Parser, Subcommand};

use crate::args::GlobalArgs;
use crate::commands;

/// Watches websites: checks each on its own interval, publishes every check to Apache Kafka,
/// and keeps the history in PostgreSQL.
#[derive(Debug, Parser)]
#[command(
    name = "sitemon",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create or update the database schema (safe to run again).
    Migrate(commands::migrate::MigrateArgs),
    /// Register a site to check; prints its id alone on stdout.
    AddSite(commands::add_site::AddSiteArgs),
    /// Change a site's settings (only the options given).
    UpdateSite(commands::update_site::UpdateSiteArgs),
    /// Remove a site and all its history.
    RemoveSite(commands::remove_site::RemoveSiteArgs),
    /// Make the registered sites what a YAML sites file says, in one transaction.
    Apply(commands::apply::ApplyArgs),
    /// Print the registered sites as a sites file (YAML or JSON) that `apply` reads.
    Export(commands::export::ExportArgs),
    /// List the registered sites.
    ListSites(commands::list_sites::ListSitesArgs),
    /// Every site's state: last check, up or down, uptime and response times over a window.
    Status(commands::status::StatusArgs),
    /// One site's history bucket by bucket: checks, uptime, p50/p95/p99, top error kind.
    History(commands::history::HistoryArgs),
    /// Recompute the hourly and daily rollups from the raw rows.
    #[command(subcommand)]
    Rollup(commands::rollup::RollupCommand),
    /// Create or delete the Kafka topic of the check events.
    #[command(subcommand)]
    Topic(commands::topic::TopicCommand),
    /// Check every site on its interval and publish one event per check to Kafka.
    Check(commands::check::CheckArgs),
    /// Consume the check events from Kafka into PostgreSQL, exactly once.
    Sync(commands::sync::SyncArgs),
    /// Tell people when a site goes down and comes back: state machines over the check
    /// events, incidents, and notifications to every channel, exactly once per change.
    Alert(commands::alert::AlertArgs),
    /// Migrate, then check and sync in one process (still through Kafka): sitemon, small.
    // Boxed: the largest of the arguments by far (every part's settings).
    Run(Box<commands::run::RunArgs>),
    /// Serve the dashboard, the JSON API and the badges (read-only), until SIGINT/SIGTERM.
    Serve(commands::serve::ServeArgs),
    /// Add, list, remove or test the channels alert notifications go to.
    #[command(subcommand)]
    Channel(commands::channel::ChannelCommand),
    /// Add, list or remove maintenance windows (checks go on; no incident opens).
    #[command(subcommand)]
    Maintenance(commands::maintenance::MaintenanceCommand),
    /// Incidents: duration, locations and the delivery state of their notifications.
    Alerts(commands::alerts::AlertsArgs),
}

impl Command {
    /// Runs the subcommand.
    pub(crate) async fn exec(self) -> anyhow::Result<()> {
        match self {
            Self::Migrate(args) => commands::migrate::exec(args).await,
            Self::AddSite(args) => commands::add_site::exec(args).await,
            Self::UpdateSite(args) => commands::update_site::exec(args).await,
            Self::RemoveSite(args) => commands::remove_site::exec(args).await,
            Self::Apply(args) => commands::apply::exec(args).await,
            Self::Export(args) => commands::export::exec(args).await,
            Self::ListSites(args) => commands::list_sites::exec(args).await,
            Self::Topic(command) => commands::topic::exec(command).await,
            Self::Status(args) => commands::status::exec(args).await,
            Self::History(args) => commands::history::exec(args).await,
            Self::Rollup(command) => commands::rollup::exec(command).await,
            Self::Check(args) => commands::check::exec(args).await,
            Self::Sync(args) => commands::sync::exec(args).await,
            Self::Alert(args) => commands::alert::exec(args).await,
            Self::Run(args) => commands::run::exec(*args).await,
            Self::Serve(args) => commands::serve::exec(args).await,
            Self::Channel(command) => commands::channel::exec(command).await,
            Self::Maintenance(command) => commands::maintenance::exec(command).await,
            Self::Alerts(args) => commands::alerts::exec(args).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
