//! `sitemon status`: every site's state and numbers over a window.

use std::io::IsTerminal as _;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use sitemon_core::mask::mask_url;
use sitemon_core::report::{self, Segment, SiteStatus};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::args::DatabaseArgs;
use crate::output::Table;

/// Arguments of `sitemon status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The window for uptime, percentiles and the number of checks: 90s, 30m, 24h, 7d...
    #[arg(long, default_value = "24h", value_parser = Since::parse)]
    since: Since,
    /// Print a JSON array for scripts: `id`, `url`, `check_interval`, `last_checked_at`, `up`,
    /// `degraded`, `last_status_code`, `last_error_kind`, `uptime_pct`, `p50_ms`, `p95_ms`,
    /// `p99_ms`, `checks`, `degraded_checks`, `tls_cert_not_after`, `tls_verify` (null where
    /// unknown), and `sources`: the stretches of the window and where their numbers come
    /// from (`raw`, `hourly` or `daily`).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    db: DatabaseArgs,
}

/// `--since`: the window, and the words the user gave for it (the table's header).
#[derive(Debug, Clone)]
struct Since {
    text: String,
    window: Duration,
}

impl Since {
    fn parse(text: &str) -> Result<Self, crate::args::InvalidValue> {
        Ok(Self {
            text: text.trim().to_owned(),
            window: crate::args::window(text)?,
        })
    }
}

pub(crate) async fn exec(args: StatusArgs) -> anyhow::Result<()> {
    let window = args.since.window;
    let pool = args.db.connect().await?;
    let (mut statuses, sources) = report::site_statuses(&pool, window).await?;
    for status in &mut statuses {
        status.url = mask_url(&status.url);
    }
    if args.json {
        let sites: Vec<Sourced<'_>> = statuses
            .iter()
            .map(|status| Sourced {
                status,
                sources: &sources,
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&sites)?);
        return Ok(());
    }
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    print!("{}", table(&statuses, &args.since.text, colour));
    Ok(())
}

/// One site of `--json`: its status and where the numbers come from.
#[derive(Serialize)]
struct Sourced<'a> {
    #[serde(flatten)]
    status: &'a SiteStatus,
    sources: &'a [Segment],
}

fn table(statuses: &[SiteStatus], since: &str, colour: bool) -> Table<12> {
    let uptime_header = format!("UPTIME {since}");
    let mut table = Table::new([
        "ID",
        "URL",
        "EVERY",
        "LAST CHECK",
        "NOW",
        "CODE/ERROR",
        &uptime_header,
        "P50",
        "P95",
        "P99",
        "CHECKS",
        "CERT EXPIRES",
    ]);
    let paint = |text: &str, code: &str| {
        if colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    };
    for s in statuses {
        let state = match s.up {
            Some(true) if s.degraded == Some(true) => paint("degraded", "33"),
            Some(true) => paint("up", "32"),
            Some(false) => paint("DOWN", "1;31"),
            None => "-".to_owned(),
        };
        let result = match (&s.last_status_code, &s.last_error_kind) {
            (_, Some(kind)) => kind.clone(),
            (Some(code), None) => code.to_string(),
            (None, None) => "-".to_owned(),
        };
        table.row([
            s.id.to_string(),
            s.url.clone(),
            format!("{}s", s.check_interval),
            s.last_checked_at.map_or_else(|| "never".to_owned(), ago),
            state,
            result,
            s.uptime_pct
                .map_or_else(|| "-".to_owned(), |p| format!("{p:.2}%")),
            millis(s.p50_ms),
            millis(s.p95_ms),
            millis(s.p99_ms),
            s.checks.to_string(),
            cert(s),
        ]);
    }
    table
}

/// The certificate's expiry day, and whether it goes unverified (`tls_verify` off).
fn cert(s: &SiteStatus) -> String {
    let expiry = s
        .tls_cert_not_after
        .and_then(|t| t.format(&Rfc3339).ok())
        .map_or_else(|| "-".to_owned(), |t| t[..10].to_owned());
    if s.tls_verify {
        expiry
    } else {
        format!("{expiry} (not verified)")
    }
}

fn millis(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.0}ms"))
}

/// "12s ago", "5m ago", "3h ago", "2d ago".
fn ago(at: OffsetDateTime) -> String {
    let seconds = (OffsetDateTime::now_utc() - at).whole_seconds().max(0);
    match seconds {
        0..60 => format!("{seconds}s ago"),
        60..3_600 => format!("{}m ago", seconds / 60),
        3_600..86_400 => format!("{}h ago", seconds / 3_600),
        _ => format!("{}d ago", seconds / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_unknowns_as_dashes() {
        let never = SiteStatus {
            id: 1,
            url: "http://a".into(),
            check_interval: 5,
            last_checked_at: None,
            up: None,
            degraded: None,
            last_status_code: None,
            last_error_kind: None,
            uptime_pct: None,
            p50_ms: None,
            p95_ms: None,
            p99_ms: None,
            checks: 0,
            degraded_checks: 0,
            tls_cert_not_after: None,
            tls_verify: true,
        };
        let text = table(&[never], "24h", false).to_string();
        let row = text.lines().nth(1).expect("a row");
        assert!(row.contains("never"), "{row}");
        assert!(!row.contains('\x1b'), "no colour off a terminal: {row}");
    }
}
