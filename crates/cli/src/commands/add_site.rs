//! `sitemon add-site`: register a site.

use clap::Args;
use sitemon_core::NewSite;
use sitemon_core::site::DEFAULT_INTERVAL_SECS;

use crate::args::DatabaseArgs;

/// Arguments of `sitemon add-site`.
#[derive(Debug, Args)]
pub(crate) struct AddSiteArgs {
    /// The URL to GET: absolute http:// or https://, at most 2048 bytes.
    url: String,
    /// Seconds between the starts of two checks, 1 to 86400.
    #[arg(long, default_value_t = DEFAULT_INTERVAL_SECS.into(), allow_negative_numbers = true)]
    interval: i64,
    /// A regex (Rust `regex` syntax) the body must match for the site to count as up.
    #[arg(long)]
    regex: Option<String>,
    #[command(flatten)]
    db: DatabaseArgs,
}

pub(crate) async fn exec(args: AddSiteArgs) -> anyhow::Result<()> {
    // Validate everything before touching the database.
    let site = NewSite::new(&args.url, args.interval, args.regex.as_deref())?;
    let pool = args.db.connect().await?;
    let id = sitemon_core::db::insert_site(&pool, &site).await?;
    println!("{id}");
    Ok(())
}
