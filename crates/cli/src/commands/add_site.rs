//! `sitemon add-site`: register a site.

use clap::Args;

use sitemon_core::{NewSite, SiteSettings};

use crate::args::DatabaseArgs;
use crate::commands::site_options::SiteOptions;

/// Arguments of `sitemon add-site`.
#[derive(Debug, Args)]
pub(crate) struct AddSiteArgs {
    /// The URL to check: absolute http:// or https://, at most 2048 bytes.
    url: String,
    #[command(flatten)]
    options: SiteOptions,
    #[command(flatten)]
    db: DatabaseArgs,
}

pub(crate) async fn exec(args: AddSiteArgs) -> anyhow::Result<()> {
    // Validate everything before touching the database.
    let mut settings = SiteSettings::new(&args.url);
    args.options.apply_to(&mut settings)?;
    let site = NewSite::from_settings(settings)?;
    let pool = args.db.connect().await?;
    let id = sitemon_core::db::insert_site(&pool, &site).await?;
    println!("{id}");
    Ok(())
}
