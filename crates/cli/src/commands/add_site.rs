//! `sitemon add-site`: register a site.

use std::time::Duration;

use clap::Args;

use sitemon_alert::admin::{self, SiteAlerts};
use sitemon_core::{NewSite, SiteSettings};

use crate::args::{DatabaseArgs, reminder};
use crate::commands::site_options::SiteOptions;

/// Arguments of `sitemon add-site`.
#[derive(Debug, Args)]
pub(crate) struct AddSiteArgs {
    /// The URL to check: absolute http:// or https://, at most 2048 bytes.
    url: String,
    #[command(flatten)]
    options: SiteOptions,
    #[command(flatten)]
    alerts: AlertFlags,
    #[command(flatten)]
    db: DatabaseArgs,
}

/// A site's alert settings; each left out keeps the alert service's default.
#[derive(Debug, Args)]
#[command(next_help_heading = "Alerts (default: the alert service's settings)")]
pub(crate) struct AlertFlags {
    /// Consecutive failed checks that take a location down (1 to 1000).
    #[arg(long, allow_negative_numbers = true)]
    failure_threshold: Option<i64>,
    /// Consecutive successful checks that bring a location back up (1 to 1000).
    #[arg(long, allow_negative_numbers = true)]
    success_threshold: Option<i64>,
    /// Locations that must be down for an incident to open (1 to 100).
    #[arg(long, allow_negative_numbers = true)]
    min_locations: Option<i64>,
    /// How often an open incident is notified again (1h, 30m; 0 = never).
    #[arg(long, value_parser = reminder)]
    reminder_every: Option<Duration>,
    /// Notify when the TLS certificate expires within this many days (0 = never).
    #[arg(long, allow_negative_numbers = true)]
    cert_expiry_days: Option<i64>,
    /// The channels to notify, comma-separated (default: every channel).
    #[arg(long, value_delimiter = ',')]
    channels: Option<Vec<String>>,
}

impl AlertFlags {
    /// The validated settings.
    pub(crate) fn settings(&self) -> sitemon_alert::Result<SiteAlerts> {
        SiteAlerts::new(
            self.failure_threshold,
            self.success_threshold,
            self.min_locations,
            self.reminder_every,
            self.cert_expiry_days,
            self.channels.clone(),
        )
    }
}

pub(crate) async fn exec(args: AddSiteArgs) -> anyhow::Result<()> {
    // Validate everything before touching the database.
    let mut settings = SiteSettings::new(&args.url);
    args.options.apply_to(&mut settings)?;
    let site = NewSite::from_settings(settings)?;
    let alerts = args.alerts.settings()?;
    let pool = args.db.connect().await?;
    let id = if alerts.is_empty() {
        sitemon_core::db::insert_site(&pool, &site).await?
    } else {
        admin::add_site(&pool, &site, &alerts).await?
    };
    println!("{id}");
    Ok(())
}
