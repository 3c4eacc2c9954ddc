//! What an operator asks of the history: the state of every site, computed in PostgreSQL.

use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::PgPool;
use time::OffsetDateTime;

use crate::error::Result;

/// How long the status query may take.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(60);

/// One site's state and its numbers over a window of time.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct SiteStatus {
    /// The site's id.
    pub id: i32,
    /// The site's URL.
    pub url: String,
    /// Seconds between checks.
    pub check_interval: i32,
    /// When the latest check (from any location) started.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_checked_at: Option<OffsetDateTime>,
    /// Whether the latest check found the site up.
    pub up: Option<bool>,
    /// Whether the latest check was up but slower than the site's `degraded_after_ms`.
    pub degraded: Option<bool>,
    /// The latest check's HTTP status, if a response arrived.
    pub last_status_code: Option<i16>,
    /// The latest check's error kind, if it failed to get a response.
    pub last_error_kind: Option<String>,
    /// The share of checks in the window that found the site up, in percent.
    pub uptime_pct: Option<f64>,
    /// Median response time of the window's checks that got a response, ms.
    pub p50_ms: Option<f64>,
    /// 95th percentile response time, ms.
    pub p95_ms: Option<f64>,
    /// 99th percentile response time, ms.
    pub p99_ms: Option<f64>,
    /// Checks in the window.
    pub checks: i64,
    /// Checks in the window that were degraded (counted as up in `uptime_pct`).
    pub degraded_checks: i64,
    /// The TLS certificate's expiry, as the latest check saw it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub tls_cert_not_after: Option<OffsetDateTime>,
    /// Whether the site's certificate is verified (`tls_verify`; off only for internal hosts).
    pub tls_verify: bool,
}

/// The state of every site over the last `window`, by id.
///
/// The latest check of each site comes from the index on `(website_id, timestamp_utc DESC)`;
/// the window's numbers from one range scan of the same index.
///
/// # Errors
/// [`crate::Error::Database`], [`crate::Error::Timeout`] after [`STATUS_TIMEOUT`].
pub async fn site_statuses(pool: &PgPool, window: Duration) -> Result<Vec<SiteStatus>> {
    let query = sqlx::query_as::<_, SiteStatus>(
        "WITH recent AS (
             SELECT website_id,
                    count(*) AS checks,
                    count(*) FILTER (WHERE degraded) AS degraded_checks,
                    100.0 * avg(CASE WHEN is_up THEN 1.0 ELSE 0.0 END)::float8 AS uptime_pct,
                    percentile_cont(0.50) WITHIN GROUP (ORDER BY response_time_ms) AS p50_ms,
                    percentile_cont(0.95) WITHIN GROUP (ORDER BY response_time_ms) AS p95_ms,
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY response_time_ms) AS p99_ms
             FROM website_status
             WHERE timestamp_utc >= now() - make_interval(secs => $1)
             GROUP BY website_id
         )
         SELECT w.id, w.url, w.check_interval, w.tls_verify,
                latest.timestamp_utc AS last_checked_at,
                latest.is_up AS up,
                latest.degraded,
                latest.status_code AS last_status_code,
                latest.error_kind AS last_error_kind,
                recent.uptime_pct, recent.p50_ms, recent.p95_ms, recent.p99_ms,
                coalesce(recent.checks, 0) AS checks,
                coalesce(recent.degraded_checks, 0) AS degraded_checks,
                (latest.request_info ->> 'tls_cert_not_after')::timestamptz AS tls_cert_not_after
         FROM websites w
         LEFT JOIN recent ON recent.website_id = w.id
         LEFT JOIN LATERAL (
             SELECT s.timestamp_utc, s.is_up, s.degraded, s.status_code, s.error_kind,
                    s.request_info
             FROM website_status s
             WHERE s.website_id = w.id
             ORDER BY s.timestamp_utc DESC
             LIMIT 1
         ) latest ON true
         ORDER BY w.id",
    )
    .bind(window.as_secs_f64())
    .fetch_all(pool);
    crate::db::bounded("computing the status of the sites", STATUS_TIMEOUT, query).await
}
