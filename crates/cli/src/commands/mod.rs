//! One module per subcommand, each holding its arguments and its `exec`.

pub(crate) mod add_site;
pub(crate) mod check;
pub(crate) mod list_sites;
pub(crate) mod migrate;
pub(crate) mod remove_site;
pub(crate) mod run;
pub(crate) mod status;
pub(crate) mod sync;
pub(crate) mod topic;

use sitemon_core::db::PgPool;

use crate::cli::{Command, DatabaseArgs};

/// Runs a parsed command.
pub(crate) async fn exec(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Migrate(args) => migrate::exec(args).await,
        Command::AddSite(args) => add_site::exec(args).await,
        Command::RemoveSite(args) => remove_site::exec(args).await,
        Command::ListSites(args) => list_sites::exec(args).await,
        Command::Topic(command) => topic::exec(command).await,
        Command::Status(args) => status::exec(args).await,
        Command::Check(args) => check::exec(args).await,
        Command::Sync(args) => sync::exec(args).await,
        Command::Run(args) => run::exec(args).await,
    }
}

/// Connects to the database the arguments name, with a small pool.
pub(crate) async fn connect_db(args: &DatabaseArgs) -> anyhow::Result<PgPool> {
    let config = args.config()?;
    sitemon_core::db::connect(&config, 2).await.map_err(|e| {
        anyhow::anyhow!("{e} (check DATABASE_URL; `scripts/services up` starts a local PostgreSQL)")
    })
}
