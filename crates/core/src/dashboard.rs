//! What the dashboard (`sitemon serve`) shows beyond [`crate::report`]'s status and
//! history: every site's uptime day by day from the daily rollups, a site's latest checks
//! with their timing phases. Read-only and bounded like the reports.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::PgPool;
use time::{Date, OffsetDateTime};

use crate::error::Result;
use crate::event::ProbeTimings;
use crate::statement::bounded;

/// How long one of these queries may take.
pub const DASHBOARD_TIMEOUT: Duration = Duration::from_secs(60);
/// The most days [`daily_uptime`] reads.
pub const MAX_DAYS: u32 = 400;
/// The most checks [`recent_checks`] reads.
pub const MAX_CHECKS: i64 = 1000;

time::serde::format_description!(iso_day, Date, "[year]-[month]-[day]");

/// One UTC day of a site, from `website_status_daily` (every location together).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayUptime {
    /// The day (UTC), `2026-11-30` in JSON.
    #[serde(with = "iso_day")]
    pub day: Date,
    /// Checks that day.
    pub checks: i64,
    /// Those that found the site up (degraded ones included).
    pub up: i64,
    /// Those that were up but slow.
    pub degraded: i64,
    /// `up / checks` in percent; `None` on a day without checks.
    pub uptime_pct: Option<f64>,
}

/// The last `days` UTC days up to today's (live) of each of `sites`, oldest first: always
/// `days` entries per site asked for, a day without checks with `checks` 0.
///
/// # Errors
/// [`crate::Error::Config`] for more than [`MAX_DAYS`] days; [`crate::Error::Database`],
/// [`crate::Error::Timeout`].
pub async fn daily_uptime(
    pool: &PgPool,
    sites: &[i32],
    days: u32,
    now: OffsetDateTime,
) -> Result<HashMap<i32, Vec<DayUptime>>> {
    if days == 0 || days > MAX_DAYS {
        return Err(crate::Error::Config {
            setting: "days",
            reason: format!("{days} is not from 1 to {MAX_DAYS}"),
        });
    }
    let today = now.to_offset(time::UtcOffset::UTC).date();
    let first = today - time::Duration::days(i64::from(days) - 1);
    let rows: Vec<(i32, OffsetDateTime, i64, i64, i64)> = bounded(
        "reading the daily uptime",
        DASHBOARD_TIMEOUT,
        sqlx::query_as(
            "SELECT website_id, bucket_start, sum(checks)::bigint, sum(up)::bigint,
                    sum(degraded)::bigint
             FROM website_status_daily
             WHERE website_id = ANY($1) AND bucket_start >= $2
             GROUP BY 1, 2",
        )
        .bind(sites)
        .bind(first.midnight().assume_utc())
        .fetch_all(pool),
    )
    .await?;
    let mut found: HashMap<(i32, Date), (i64, i64, i64)> = HashMap::with_capacity(rows.len());
    for (site, start, checks, up, degraded) in rows {
        found.insert(
            (site, start.to_offset(time::UtcOffset::UTC).date()),
            (checks, up, degraded),
        );
    }
    Ok(sites
        .iter()
        .map(|&site| {
            let series = (0..i64::from(days))
                .map(|i| {
                    let day = first + time::Duration::days(i);
                    let (checks, up, degraded) =
                        found.get(&(site, day)).copied().unwrap_or_default();
                    DayUptime {
                        day,
                        checks,
                        up,
                        degraded,
                        uptime_pct: (checks > 0).then(|| 100.0 * up as f64 / checks as f64),
                    }
                })
                .collect();
            (site, series)
        })
        .collect())
}

/// One stored check, as the dashboard lists it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct RecentCheck {
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    pub checked_at: OffsetDateTime,
    /// Where it ran.
    pub location: Option<String>,
    /// Whether it found the site up.
    pub up: Option<bool>,
    /// Up but slower than the site's `degraded_after_ms`.
    pub degraded: bool,
    /// The HTTP status, if a response arrived.
    pub status_code: Option<i16>,
    /// The whole check's time, ms.
    pub response_time_ms: Option<f64>,
    /// The error kind, if it failed to get a response or an assertion failed.
    pub error_kind: Option<String>,
    /// The error's message, for people.
    pub error_message: Option<String>,
    /// The time of each phase (DNS, connect, TLS, TTFB), ms.
    #[sqlx(json(nullable))]
    pub timings_ms: Option<ProbeTimings>,
}

/// Site `site`'s latest `limit` checks, newest first.
///
/// # Errors
/// [`crate::Error::Config`] for a limit outside 1..=[`MAX_CHECKS`];
/// [`crate::Error::Database`], [`crate::Error::Timeout`].
pub async fn recent_checks(pool: &PgPool, site: i32, limit: i64) -> Result<Vec<RecentCheck>> {
    if !(1..=MAX_CHECKS).contains(&limit) {
        return Err(crate::Error::Config {
            setting: "limit",
            reason: format!("{limit} is not from 1 to {MAX_CHECKS}"),
        });
    }
    bounded(
        "reading the latest checks",
        DASHBOARD_TIMEOUT,
        sqlx::query_as(
            "SELECT timestamp_utc AS checked_at, location, is_up AS up, degraded, status_code,
                    response_time_ms, error_kind,
                    request_info -> 'error' ->> 'message' AS error_message,
                    request_info -> 'timings_ms' AS timings_ms
             FROM website_status
             WHERE website_id = $1
             ORDER BY timestamp_utc DESC
             LIMIT $2",
        )
        .bind(site)
        .bind(limit)
        .fetch_all(pool),
    )
    .await
}
