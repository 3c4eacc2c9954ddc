//! `sitemon alerts`: incidents, with their duration, locations and the delivery state of
//! each of their notifications.

use std::time::Duration;

use clap::Args;
use sitemon_alert::admin;
use sitemon_core::mask::{mask_url, mask_urls_in};
use time::format_description::well_known::Rfc3339;

use crate::args::{DatabaseArgs, window};
use crate::output::Table;

/// Arguments of `sitemon alerts`.
#[derive(Debug, Args)]
pub(crate) struct AlertsArgs {
    /// Only the incidents still open.
    #[arg(long)]
    open: bool,
    /// Only the incidents opened within this window (90s, 30m, 24h, 7d).
    #[arg(long, value_parser = window)]
    since: Option<Duration>,
    /// Print a JSON array for scripts (no URL of a channel, no key, no password; site URLs
    /// masked).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    db: DatabaseArgs,
}

pub(crate) async fn exec(args: AlertsArgs) -> anyhow::Result<()> {
    let pool = args.db.connect().await?;
    let mut incidents = admin::incidents(&pool, args.open, args.since).await?;
    for incident in &mut incidents {
        incident.url = mask_url(&incident.url);
        incident.first_error = incident
            .first_error
            .as_deref()
            .map(|e| mask_urls_in(e).into_owned());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&incidents)?);
        return Ok(());
    }
    let mut table = Table::new([
        "INCIDENT",
        "SITE",
        "URL",
        "OPENED",
        "DURATION",
        "STATE",
        "LOCATIONS",
        "NOTIFICATIONS",
    ]);
    for incident in incidents {
        let notifications = incident
            .notifications
            .iter()
            .map(|n| format!("{} {}: {}", n.kind, n.channel, n.state))
            .collect::<Vec<_>>()
            .join(", ");
        let secs = u64::try_from(incident.duration_secs).unwrap_or(0);
        table.row([
            incident.id.to_string(),
            incident.website_id.to_string(),
            incident.url,
            incident.opened_at.format(&Rfc3339).unwrap_or_default(),
            humantime::format_duration(Duration::from_secs(secs)).to_string(),
            if incident.resolved_at.is_some() {
                "resolved"
            } else {
                "open"
            }
            .to_owned(),
            incident.locations.join(","),
            if notifications.is_empty() {
                "-".to_owned()
            } else {
                notifications
            },
        ]);
    }
    print!("{table}");
    Ok(())
}
