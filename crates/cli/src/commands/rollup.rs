//! `sitemon rollup rebuild`: recompute the hourly and daily rollups from the raw rows.

use clap::{Args, Subcommand};

use crate::args::DatabaseArgs;

/// `sitemon rollup ...`
#[derive(Debug, Subcommand)]
pub(crate) enum RollupCommand {
    /// Recompute the rollups of every day that still has raw rows (from --since on), one
    /// day per transaction; safe beside running syncs. Days whose raw rows the retention
    /// dropped keep their rollups.
    Rebuild(RebuildArgs),
}

/// Arguments of `sitemon rollup rebuild`.
#[derive(Debug, Args)]
pub(crate) struct RebuildArgs {
    /// Only the days from this long ago on (whole UTC days): 7d, 30d... Default: every day.
    #[arg(long, value_parser = crate::args::window)]
    since: Option<std::time::Duration>,
    #[command(flatten)]
    db: DatabaseArgs,
}

pub(crate) async fn exec(command: RollupCommand) -> anyhow::Result<()> {
    let RollupCommand::Rebuild(args) = command;
    let pool = args.db.connect().await?;
    let since = args.since.map(|s| time::OffsetDateTime::now_utc() - s);
    let days = sitemon_core::history::rebuild_rollups(&pool, since, |day, p| {
        eprintln!(
            "rebuilt the rollups of {day} ({} of {} days)",
            p.done, p.total
        );
    })
    .await?;
    eprintln!("rebuilt the rollups of {} days", days.len());
    Ok(())
}
