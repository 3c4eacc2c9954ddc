//! `sitemon history SITE_ID`: one site's checks, bucket by bucket.

use clap::{Args, ValueEnum};
use sitemon_core::report::{self, HistoryBucket};
use time::format_description::well_known::Rfc3339;

use crate::args::DatabaseArgs;
use crate::output::Table;

/// Arguments of `sitemon history`.
#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    /// The site's id (see `list-sites`).
    site_id: i32,
    /// How far back: 90m, 24h, 7d, 365d...
    #[arg(long, default_value = "7d", value_parser = crate::args::window)]
    since: std::time::Duration,
    /// The length of a bucket: whole days come from the daily rollups, whole hours from the
    /// hourly ones, anything else (5m...) from the raw rows.
    #[arg(long, default_value = "1h", value_parser = crate::args::window)]
    every: std::time::Duration,
    /// The output: a table for people, or `json` (an array) or `csv` for scripts.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// The same as `--format json`.
    #[arg(long, conflicts_with_all = ["format", "csv"])]
    json: bool,
    /// The same as `--format csv`.
    #[arg(long, conflicts_with = "format")]
    csv: bool,
    #[command(flatten)]
    db: DatabaseArgs,
}

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
    Csv,
}

pub(crate) async fn exec(args: HistoryArgs) -> anyhow::Result<()> {
    let format = match (args.json, args.csv) {
        (true, _) => Format::Json,
        (_, true) => Format::Csv,
        _ => args.format,
    };
    let pool = args.db.connect().await?;
    let buckets = report::site_history(&pool, args.site_id, args.since, args.every).await?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&buckets)?),
        Format::Csv => print!("{}", csv(&buckets)),
        Format::Table => print!("{}", table(&buckets)),
    }
    Ok(())
}

fn start(bucket: &HistoryBucket) -> String {
    bucket.bucket_start.format(&Rfc3339).unwrap_or_default()
}

fn number(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(String::new, |v| format!("{v:.decimals$}"))
}

fn table(buckets: &[HistoryBucket]) -> Table<7> {
    let mut table = Table::new([
        "BUCKET",
        "CHECKS",
        "UPTIME",
        "P50",
        "P95",
        "P99",
        "TOP ERROR",
    ]);
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}ms"));
    for b in buckets {
        table.row([
            start(b),
            b.checks.to_string(),
            b.uptime_pct
                .map_or_else(|| "-".to_owned(), |p| format!("{p:.2}%")),
            ms(b.p50_ms),
            ms(b.p95_ms),
            ms(b.p99_ms),
            b.top_error.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    table
}

/// RFC 4180: a header line, then one line per bucket; empty fields where unknown.
fn csv(buckets: &[HistoryBucket]) -> String {
    let mut out = String::from("bucket_start,checks,uptime_pct,p50_ms,p95_ms,p99_ms,top_error\r\n");
    for b in buckets {
        out.push_str(&format!(
            "{},{},{},{},{},{},{}\r\n",
            start(b),
            b.checks,
            number(b.uptime_pct, 3),
            number(b.p50_ms, 3),
            number(b.p95_ms, 3),
            number(b.p99_ms, 3),
            b.top_error.as_deref().unwrap_or_default()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn csv_has_a_header_and_empty_unknowns() {
        let bucket = HistoryBucket {
            bucket_start: datetime!(2026-11-30 10:00 UTC),
            checks: 60,
            uptime_pct: Some(95.0),
            p50_ms: Some(12.5),
            p95_ms: None,
            p99_ms: None,
            top_error: Some("timeout".into()),
        };
        assert_eq!(
            csv(&[bucket]),
            "bucket_start,checks,uptime_pct,p50_ms,p95_ms,p99_ms,top_error\r\n\
             2026-11-30T10:00:00Z,60,95.000,12.500,,,timeout\r\n"
        );
    }
}
