//! `sitemon remove-site`: remove a site and its history.

use clap::Args;

use crate::args::DatabaseArgs;

/// Arguments of `sitemon remove-site`.
#[derive(Debug, Args)]
pub(crate) struct RemoveSiteArgs {
    /// The site's id, as `add-site` printed it or `list-sites` shows it.
    #[arg(allow_negative_numbers = true)]
    id: i64,
    #[command(flatten)]
    db: DatabaseArgs,
}

pub(crate) async fn exec(args: RemoveSiteArgs) -> anyhow::Result<()> {
    let pool = args.db.connect().await?;
    sitemon_core::db::delete_site(&pool, args.id).await?;
    eprintln!("removed site {} and its history", args.id);
    Ok(())
}
