//! `sitemon update-site`: change a site's settings.

use clap::Args;
use sitemon_core::NewSite;
use sitemon_core::mask::{mask_url, mask_urls_in};

use crate::args::DatabaseArgs;
use crate::commands::site_options::SiteOptions;

/// Arguments of `sitemon update-site`.
#[derive(Debug, Args)]
pub(crate) struct UpdateSiteArgs {
    /// The site's id, as `add-site` printed it or `list-sites` shows it.
    #[arg(allow_negative_numbers = true)]
    id: i64,
    /// A new URL.
    #[arg(long)]
    url: Option<String>,
    #[command(flatten)]
    options: SiteOptions,
    #[command(flatten)]
    db: DatabaseArgs,
}

pub(crate) async fn exec(args: UpdateSiteArgs) -> anyhow::Result<()> {
    // What can be checked without the site's other settings is checked before any I/O.
    let mut probe = sitemon_core::SiteSettings::new("http://localhost/");
    args.options.apply_to(&mut probe)?;
    let pool = args.db.connect().await?;
    let mut before = None;
    let after = sitemon_core::db::update_site(&pool, args.id, |mut settings| {
        before = Some(settings.clone());
        if let Some(url) = &args.url {
            settings.url.clone_from(url);
        }
        args.options.apply_to(&mut settings)?;
        NewSite::from_settings(settings)
    })
    .await?;
    let changes = before
        .map(|before| before.differences(&after.settings))
        .unwrap_or_default();
    if changes.is_empty() {
        println!(
            "= {} (site {}): unchanged",
            mask_url(&after.settings.url),
            after.id
        );
    } else {
        println!(
            "~ {} (site {}): {}",
            mask_url(&after.settings.url),
            after.id,
            // A URL from before the change is masked too.
            mask_urls_in(&sitemon_core::apply::describe(&changes))
        );
    }
    Ok(())
}
