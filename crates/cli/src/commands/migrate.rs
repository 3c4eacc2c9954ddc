//! `sitemon migrate`: create or update the schema.

use clap::Args;

use crate::args::DatabaseArgs;

/// Arguments of `sitemon migrate`.
#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    #[command(flatten)]
    db: DatabaseArgs,
}

pub(crate) async fn exec(args: MigrateArgs) -> anyhow::Result<()> {
    let pool = args.db.connect().await?;
    sitemon_core::db::migrate_with_progress(&pool, |p| {
        eprintln!(
            "moved {} of {} rows of history into the day partitions ({:.0}%)",
            p.done,
            p.total,
            100.0 * p.done as f64 / p.total.max(1) as f64
        );
    })
    .await?;
    eprintln!(
        "database {} is at schema version {}",
        args.db.config()?.target(),
        sitemon_core::db::MIGRATOR
            .iter()
            .map(|m| m.version)
            .max()
            .unwrap_or_default()
    );
    Ok(())
}
