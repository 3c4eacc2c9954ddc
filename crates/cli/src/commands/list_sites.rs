//! `sitemon list-sites`: the registered sites.

use clap::Args;

use crate::args::DatabaseArgs;
use crate::output::Table;

/// Arguments of `sitemon list-sites`.
#[derive(Debug, Args)]
pub(crate) struct ListSitesArgs {
    /// Print a JSON array of objects (`id`, `url`, `check_interval`, `up_regex`) for scripts.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    db: DatabaseArgs,
}

pub(crate) async fn exec(args: ListSitesArgs) -> anyhow::Result<()> {
    let pool = args.db.connect().await?;
    let sites = sitemon_core::db::list_sites(&pool).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&sites)?);
        return Ok(());
    }
    let mut table = Table::new(["ID", "INTERVAL", "URL", "REGEX"]);
    for site in &sites {
        table.row([
            site.id.to_string(),
            format!("{}s", site.check_interval),
            site.url.clone(),
            site.up_regex.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    print!("{table}");
    Ok(())
}
