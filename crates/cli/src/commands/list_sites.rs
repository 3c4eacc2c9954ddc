//! `sitemon list-sites`: the registered sites.

use clap::Args;
use sitemon_core::mask::mask_url;

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

/// A site as `--json` prints it (the shape scripts have read since the first version;
/// `sitemon export` prints every setting).
#[derive(Debug, serde::Serialize)]
struct Listed<'a> {
    id: i32,
    /// Masked (`sitemon_core::mask::mask_url`): `export` prints it whole.
    url: String,
    check_interval: i64,
    up_regex: Option<&'a str>,
}

pub(crate) async fn exec(args: ListSitesArgs) -> anyhow::Result<()> {
    let pool = args.db.connect().await?;
    let sites = sitemon_core::db::list_sites(&pool).await?;
    if args.json {
        let listed: Vec<Listed<'_>> = sites
            .iter()
            .map(|site| Listed {
                id: site.id,
                url: mask_url(&site.settings.url),
                check_interval: site.settings.interval,
                up_regex: site.settings.regex.as_deref(),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(());
    }
    let mut table = Table::new(["ID", "INTERVAL", "URL", "REGEX"]);
    for site in &sites {
        table.row([
            site.id.to_string(),
            format!("{}s", site.settings.interval),
            mask_url(&site.settings.url),
            site.settings.regex.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    print!("{table}");
    Ok(())
}
