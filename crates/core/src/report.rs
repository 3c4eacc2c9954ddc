//! What an operator asks of the history: the state of every site over a window
//! ([`site_statuses`]), and one site's history bucket by bucket ([`site_history`]).
//!
//! Both read the rollups (`website_status_hourly`, `website_status_daily`) for whole hours
//! and days and the raw rows only for the edges of a window, so a window of a year costs
//! about as much as a window of a day. Percentiles come from the rollups' latency sketches:
//! within 2 % of the exact value (see `migrations/20261130000001_history_partitions.sql`).

use std::collections::HashMap;
use std::time::Duration;

use futures::TryStreamExt as _;
use serde::Serialize;
use sqlx::postgres::PgPool;
use time::OffsetDateTime;

use crate::error::{Error, Result};

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
    /// Median response time of the window's checks that got a response, ms (within 2 %).
    pub p50_ms: Option<f64>,
    /// 95th percentile response time, ms (within 2 %).
    pub p95_ms: Option<f64>,
    /// 99th percentile response time, ms (within 2 %).
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

/// Where the numbers of a stretch of a window come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The raw rows of `website_status`.
    Raw,
    /// `website_status_hourly`.
    Hourly,
    /// `website_status_daily`.
    Daily,
}

/// A stretch `[from, until)` and where its numbers come from; a window's numbers are the
/// sum of its segments, less those marked `subtract`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Segment {
    /// Where the numbers come from.
    pub source: Source,
    /// Whether these numbers are taken away (hours of a day whose whole rollup was added).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub subtract: bool,
    /// The first instant.
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    /// The instant after the last.
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

fn floor_to(at: OffsetDateTime, grain: i64) -> OffsetDateTime {
    let t = at.unix_timestamp();
    OffsetDateTime::from_unix_timestamp(t - t.rem_euclid(grain)).unwrap_or(at)
}

fn ceil_to(at: OffsetDateTime, grain: i64) -> OffsetDateTime {
    let floor = floor_to(at, grain);
    if floor == at {
        at
    } else {
        floor
            .checked_add(time::Duration::seconds(grain))
            .unwrap_or(at)
    }
}

/// Splits the window `[start, now]` into rollups and raw rows, reading as few of them as it
/// can. The rollups are live (the current hour's and day's rows hold every check stored so
/// far), so the window's end needs no raw rows. Whole days come from the daily rollups,
/// today's included. The day the window starts in is either its remaining hours (hourly
/// rollups), or its whole day less the hours before the window, whichever is fewer hours.
/// The start's own hour is the nearer of two: the raw rows from the start to the next hour
/// added, or the hour's rollup with the raw rows from the hour to the start taken away, so
/// at most half an hour of raw rows is read. A first hour older than `raw_horizon` (its raw
/// rows are gone) is counted whole instead; a window inside one hour is raw rows alone.
pub fn plan(
    start: OffsetDateTime,
    now: OffsetDateTime,
    raw_horizon: Option<OffsetDateTime>,
) -> Vec<Segment> {
    let add = |source, from, until| Segment {
        source,
        subtract: false,
        from,
        until,
    };
    let minus = |source, from, until| Segment {
        source,
        subtract: true,
        from,
        until,
    };
    let hour = time::Duration::seconds(HOUR);
    let day = time::Duration::seconds(DAY);
    let (floor, ceil) = (floor_to(start, HOUR), ceil_to(start, HOUR));
    let raw_gone = raw_horizon.is_some_and(|h| start < h);
    // The hours from `whole_from` on are read whole; `edge` makes up the difference between
    // it and the start.
    let (whole_from, edge) = if start == ceil || raw_gone {
        (floor, None)
    } else if ceil > now {
        return vec![add(Source::Raw, start, now)];
    } else if start - floor < ceil - start {
        (floor, Some(minus(Source::Raw, floor, start)))
    } else {
        (ceil, Some(add(Source::Raw, start, ceil)))
    };
    let mut segments: Vec<Segment> = edge.into_iter().collect();
    let today = floor_to(now, DAY);
    if whole_from >= today {
        // Within today: its hours, the current one included.
        segments.push(add(Source::Hourly, whole_from, floor_to(now, HOUR) + hour));
    } else {
        let first_day = floor_to(whole_from, DAY);
        let hours_in = (first_day + day - whole_from).whole_hours();
        let hours_before = (whole_from - first_day).whole_hours();
        if hours_before == 0 {
            segments.push(add(Source::Daily, first_day, today + day));
        } else if hours_in <= hours_before {
            segments.push(add(Source::Hourly, whole_from, first_day + day));
            segments.push(add(Source::Daily, first_day + day, today + day));
        } else {
            segments.push(add(Source::Daily, first_day, today + day));
            segments.push(minus(Source::Hourly, first_day, whole_from));
        }
    }
    segments.retain(|s| s.from < s.until);
    segments
}

/// The range of `segments` from `source`, added or subtracted (an empty range at the epoch
/// when there is none): parameters of the report queries.
fn range(segments: &[Segment], source: Source, subtract: bool) -> [OffsetDateTime; 2] {
    let mut found = segments
        .iter()
        .filter(|s| s.source == source && s.subtract == subtract);
    let epoch = OffsetDateTime::UNIX_EPOCH;
    let range = found.next().map_or([epoch, epoch], |s| [s.from, s.until]);
    debug_assert!(found.next().is_none(), "one range per source: {segments:?}");
    range
}

/// The state of every site over the window of `window` ending now, by id, and the segments
/// its numbers come from.
///
/// The latest check of each site comes from `website_latest` (kept by the statement that
/// stores checks); the window's numbers from the rollups and the edge's raw rows
/// ([`plan`]). The rollups are read on one connection while the latest checks and the raw
/// rows are read on another.
///
/// # Errors
/// [`crate::Error::Database`], [`crate::Error::Timeout`] after [`STATUS_TIMEOUT`].
pub async fn site_statuses(
    pool: &PgPool,
    window: Duration,
) -> Result<(Vec<SiteStatus>, Vec<Segment>)> {
    statuses_of(pool, window, None).await
}

/// [`site_statuses`] of the sites `ids` alone (a site page, a badge): the same numbers, read
/// from their rows only. An id of no site gives nothing.
///
/// # Errors
/// As [`site_statuses`].
pub async fn site_statuses_of(
    pool: &PgPool,
    window: Duration,
    ids: &[i32],
) -> Result<(Vec<SiteStatus>, Vec<Segment>)> {
    statuses_of(pool, window, Some(ids)).await
}

async fn statuses_of(
    pool: &PgPool,
    window: Duration,
    ids: Option<&[i32]>,
) -> Result<(Vec<SiteStatus>, Vec<Segment>)> {
    let now = OffsetDateTime::now_utc();
    let start = now - window;
    let horizon = crate::history::raw_horizon(pool).await?;
    let segments = plan(start, now, horizon);
    let [h0, h1] = range(&segments, Source::Hourly, false);
    let [s0, s1] = range(&segments, Source::Hourly, true);
    let [d0, d1] = range(&segments, Source::Daily, false);
    let rolled = async {
        // Whole days and hours: the rollups' counts and sketches, merged here (a bin
        // array per site beats PostgreSQL unnesting millions of bins), subtracted ones
        // negative.
        let mut tx = report_transaction(pool).await?;
        let mut windows: HashMap<i32, Window> = HashMap::new();
        let mut rows = sqlx::query_as::<_, (i32, i64, i64, i64, i64, StoredSketch)>(ROLLED)
            .bind(d0)
            .bind(d1)
            .bind(h0)
            .bind(h1)
            .bind(s0)
            .bind(s1)
            .bind(ids)
            .fetch(&mut *tx);
        while let Some((site, sign, checks, up, degraded, sketch)) = rows.try_next().await? {
            let window = windows.entry(site).or_default();
            window.add_counts(sign * checks, sign * up, sign * degraded);
            for e in sketch.0 {
                window.sketch.add_encoded(e, sign);
            }
        }
        drop(rows);
        tx.commit().await?;
        Ok::<_, sqlx::Error>(windows)
    };
    let latest_and_edge = async {
        let mut tx = report_transaction(pool).await?;
        // Every site with its latest check; the window's numbers are filled in below.
        let statuses: Vec<SiteStatus> =
            sqlx::query_as(LATEST).bind(ids).fetch_all(&mut *tx).await?;
        // The edge of the start's hour: raw rows, binned by PostgreSQL's own
        // `sitemon_sketch_bin`.
        let mut edge = Vec::new();
        for segment in segments.iter().filter(|s| s.source == Source::Raw) {
            let sign = if segment.subtract { -1 } else { 1 };
            let mut rows = sqlx::query_as::<_, (i32, i64, i64, i64, Vec<i32>)>(RAW_EDGE)
                .bind(segment.from)
                .bind(segment.until)
                .bind(ids)
                .fetch(&mut *tx);
            while let Some((site, checks, up, degraded, bins)) = rows.try_next().await? {
                edge.push((site, sign, checks, up, degraded, bins));
            }
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>((statuses, edge))
    };
    let work = async {
        let (mut windows, (mut statuses, edge)) = futures::try_join!(rolled, latest_and_edge)?;
        for (site, sign, checks, up, degraded, bins) in edge {
            let window = windows.entry(site).or_default();
            window.add_counts(sign * checks, sign * up, sign * degraded);
            for bin in bins {
                window.sketch.add(bin, sign);
            }
        }
        for status in &mut statuses {
            if let Some(window) = windows.get(&status.id) {
                window.fill(status);
            }
        }
        Ok::<_, sqlx::Error>(statuses)
    };
    let statuses =
        crate::statement::bounded("computing the status of the sites", STATUS_TIMEOUT, work)
            .await?;
    Ok((statuses, segments))
}

/// A read-only transaction for the report's queries, without JIT compilation (it took
/// 20–100 ms of a status whose queries are simple scans: their estimated costs pass
/// `jit_above_cost`, their run times do not gain from it) and with room to sort the raw
/// edge per site in memory (the default 4 MB spilled 2–3 MB to disk).
async fn report_transaction(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT set_config('jit', 'off', true), set_config('work_mem', '32MB', true)")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// A stored sketch as read from PostgreSQL: its elements, decoded from the binary array
/// format here (sqlx's generic array decoding, element by element, was a quarter of the
/// CPU time of a 30-day status).
#[derive(Debug)]
struct StoredSketch(Vec<i64>);

impl sqlx::Type<sqlx::Postgres> for StoredSketch {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <Vec<i64> as sqlx::Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <Vec<i64> as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for StoredSketch {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        if value.format() != sqlx::postgres::PgValueFormat::Binary {
            return <Vec<i64> as sqlx::Decode<'r, sqlx::Postgres>>::decode(value).map(Self);
        }
        int8_array(value.as_bytes()?).map(Self)
    }
}

/// The elements of a one-dimensional `bigint[]` without NULLs in PostgreSQL's binary
/// format (`array_send`): the number of dimensions, a has-NULLs flag, the element type,
/// then per dimension its length and lower bound, then per element its length and value.
fn int8_array(bytes: &[u8]) -> Result<Vec<i64>, sqlx::error::BoxDynError> {
    let word = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or("a bigint[] cut short")
    };
    match word(0)? {
        0 => return Ok(Vec::new()),
        1 => {}
        n => return Err(format!("a sketch of {n} dimensions").into()),
    }
    let len = usize::try_from(word(12)?).map_err(|_| "a negative array length")?;
    let mut elements = Vec::with_capacity(len);
    for i in 0..len {
        let at = 20 + 12 * i;
        if word(at)? != 8 {
            return Err("a sketch element that is NULL or not a bigint".into());
        }
        let value = bytes.get(at + 4..at + 12).ok_or("a bigint[] cut short")?;
        elements.push(i64::from_be_bytes(value.try_into().map_err(|_| "8 bytes")?));
    }
    Ok(elements)
}

/// Every site and its latest check from any location. The window's numbers are
/// placeholders that [`Window::fill`] replaces.
const LATEST: &str = "
    SELECT w.id, w.url, w.check_interval, w.tls_verify,
           latest.timestamp_utc AS last_checked_at, latest.is_up AS up, latest.degraded,
           latest.status_code AS last_status_code, latest.error_kind AS last_error_kind,
           NULL::float8 AS uptime_pct, NULL::float8 AS p50_ms, NULL::float8 AS p95_ms,
           NULL::float8 AS p99_ms, 0::bigint AS checks, 0::bigint AS degraded_checks,
           latest.tls_cert_not_after::timestamptz AS tls_cert_not_after
    FROM websites w
    LEFT JOIN (SELECT DISTINCT ON (website_id) *
               FROM website_latest
               WHERE $1::int[] IS NULL OR website_id = ANY($1)
               ORDER BY website_id, timestamp_utc DESC) latest ON latest.website_id = w.id
    WHERE $1::int[] IS NULL OR w.id = ANY($1)
    ORDER BY w.id";

/// The rollup rows of a window: whole days ($1..$2) and hours ($3..$4) added, hours
/// ($5..$6) subtracted, with their sign; of the sites $7 (NULL: all).
const ROLLED: &str = "
    SELECT website_id, 1::bigint, checks, up, degraded, rt_sketch FROM website_status_daily
    WHERE bucket_start >= $1 AND bucket_start < $2
      AND ($7::int[] IS NULL OR website_id = ANY($7))
    UNION ALL
    SELECT website_id, 1, checks, up, degraded, rt_sketch FROM website_status_hourly
    WHERE bucket_start >= $3 AND bucket_start < $4
      AND ($7::int[] IS NULL OR website_id = ANY($7))
    UNION ALL
    SELECT website_id, -1, checks, up, degraded, rt_sketch FROM website_status_hourly
    WHERE bucket_start >= $5 AND bucket_start < $6
      AND ($7::int[] IS NULL OR website_id = ANY($7))";

/// The raw rows of a stretch $1..$2 of the start's hour, counted per site, with the latency
/// bin of each that has a response time. Per site, not per site and bin: a site has a few
/// checks in half an hour, nearly each in a bin of its own, so that grouping returned about
/// as many rows as it read (122,000 of 170,000, against 10,000 here; 200 ms against 130 ms).
const RAW_EDGE: &str = "
    SELECT website_id, count(*), count(*) FILTER (WHERE is_up), count(*) FILTER (WHERE degraded),
           coalesce(array_agg(sitemon_sketch_bin(response_time_ms))
                        FILTER (WHERE response_time_ms IS NOT NULL), '{}')
    FROM website_status
    WHERE timestamp_utc >= $1 AND timestamp_utc < $2
      AND ($3::int[] IS NULL OR website_id = ANY($3))
    GROUP BY 1";

/// γ of the latency sketches (see the migration `20261130000001`).
const GAMMA: f64 = 1.02 / 0.98;

/// One site's numbers over a window, gathered from rollups and raw edges.
#[derive(Debug, Default)]
struct Window {
    checks: i64,
    up: i64,
    degraded: i64,
    sketch: Sketch,
}

impl Window {
    fn add_counts(&mut self, checks: i64, up: i64, degraded: i64) {
        self.checks += checks;
        self.up += up;
        self.degraded += degraded;
    }

    fn fill(&self, status: &mut SiteStatus) {
        status.checks = self.checks;
        status.degraded_checks = self.degraded;
        status.uptime_pct = (self.checks > 0).then(|| 100.0 * self.up as f64 / self.checks as f64);
        let [p50, p95, p99] = self.sketch.quantiles([0.50, 0.95, 0.99]);
        (status.p50_ms, status.p95_ms, status.p99_ms) = (p50, p95, p99);
    }
}

/// The bins `sitemon_sketch_bin` can give: from 1 µs (every shorter time counts as 1 µs) to
/// the largest `float8`. A bin outside (a rollup edited by hand) counts as the nearest end,
/// so that no element can make a [`Sketch`] allocate more than this span.
const BINS: std::ops::RangeInclusive<i32> = -173..=17_800;

/// A latency sketch being merged: counts per bin over the run of bins seen so far (a
/// site's response times span tens of bins), so adding is an index, never a sort. Counts of
/// subtracted rollups are negative.
#[derive(Debug, Default)]
struct Sketch {
    /// The bin of `counts[0]`.
    first: i32,
    counts: Vec<i64>,
}

impl Sketch {
    fn add(&mut self, bin: i32, n: i64) {
        let bin = bin.clamp(*BINS.start(), *BINS.end());
        if self.counts.is_empty() {
            self.first = bin;
        } else if bin < self.first {
            let grow = (self.first - bin) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.first = bin;
        }
        let i = (bin - self.first) as usize;
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += n;
    }

    /// Adds an element of a stored sketch (the bin in the high 32 bits, its count in the
    /// low 32), times `sign`.
    fn add_encoded(&mut self, element: i64, sign: i64) {
        self.add((element >> 32) as i32, sign * (element & 0xFFFF_FFFF));
    }

    /// [`quantiles`] of the merged bins. Exact: a day's rollup is the sum of its hours',
    /// so no bin is left negative.
    fn quantiles<const N: usize>(&self, qs: [f64; N]) -> [Option<f64>; N] {
        let bins: Vec<(i32, u64)> = (self.first..)
            .zip(&self.counts)
            .filter(|&(_, &n)| n > 0)
            .map(|(bin, &n)| (bin, n as u64))
            .collect();
        quantiles(&bins, qs)
    }
}

/// The values at quantiles `qs` (ascending) of sorted sketch bins: the middle of the bin
/// holding the element of rank floor(q * (n - 1)), counting from 0 — as
/// `sitemon_sketch_quantile` in SQL.
fn quantiles<const N: usize>(bins: &[(i32, u64)], qs: [f64; N]) -> [Option<f64>; N] {
    let total: u64 = bins.iter().map(|&(_, n)| n).sum();
    let mut found = [None; N];
    if total == 0 {
        return found;
    }
    let ranks = qs.map(|q| (q * (total - 1) as f64).floor() as u64);
    let mut below = 0;
    let mut next = 0;
    for &(bin, n) in bins {
        below += n;
        while next < N && below > ranks[next] {
            found[next] = Some(2.0 * GAMMA.powi(bin) / (GAMMA + 1.0));
            next += 1;
        }
        if next == N {
            break;
        }
    }
    found
}

/// One bucket of a site's history.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct HistoryBucket {
    /// The bucket's first instant (buckets are aligned to multiples of their length since
    /// 1970-01-01 UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub bucket_start: OffsetDateTime,
    /// Checks in the bucket.
    pub checks: i64,
    /// The share of them that found the site up, in percent.
    pub uptime_pct: Option<f64>,
    /// Median response time, ms (within 2 %).
    pub p50_ms: Option<f64>,
    /// 95th percentile, ms (within 2 %).
    pub p95_ms: Option<f64>,
    /// 99th percentile, ms (within 2 %).
    pub p99_ms: Option<f64>,
    /// The most common error kind of the bucket's failed checks (the first by name on a
    /// tie); `None` when no check failed with an error.
    pub top_error: Option<String>,
}

/// The longest a history may reach back, and the most buckets it may have.
pub const HISTORY_MAX_BUCKETS: u64 = 100_000;

/// The history of site `site` over the `since` before now, in buckets of `every`, oldest
/// first; buckets without checks are left out.
///
/// A bucket length that is a whole number of days is read from the daily rollups, of hours
/// from the hourly rollups (both complete up to the last stored check), any other from the
/// raw rows. The first bucket is the one that holds `now - since`.
///
/// # Errors
/// [`Error::Config`] for a bucket length under a second or more than
/// [`HISTORY_MAX_BUCKETS`] buckets; [`Error::UnknownSite`]; [`Error::Database`],
/// [`Error::Timeout`].
pub async fn site_history(
    pool: &PgPool,
    site: i32,
    since: Duration,
    every: Duration,
) -> Result<Vec<HistoryBucket>> {
    let every_s = i64::try_from(every.as_secs()).unwrap_or(i64::MAX);
    if every_s < 1 || every.subsec_nanos() != 0 {
        return Err(Error::Config {
            setting: "--every",
            reason: "a bucket is a whole number of seconds, at least 1".into(),
        });
    }
    if since.as_secs() / every.as_secs() > HISTORY_MAX_BUCKETS {
        return Err(Error::Config {
            setting: "--every",
            reason: format!(
                "{} buckets of {} over {} is more than {HISTORY_MAX_BUCKETS}",
                since.as_secs() / every.as_secs(),
                humantime::format_duration(every),
                humantime::format_duration(since)
            ),
        });
    }
    let known: bool = crate::statement::bounded(
        "looking up the site",
        STATUS_TIMEOUT,
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM websites WHERE id = $1)")
            .bind(site)
            .fetch_one(pool),
    )
    .await?;
    if !known {
        return Err(Error::UnknownSite { id: site.into() });
    }
    let now = OffsetDateTime::now_utc();
    let first = floor_to(now - since, every_s);
    let bucket = "to_timestamp(floor(extract(epoch FROM {t}) / $3) * $3)";
    let (source, time_column) = if every_s % DAY == 0 {
        ("website_status_daily", "bucket_start")
    } else if every_s % HOUR == 0 {
        ("website_status_hourly", "bucket_start")
    } else {
        ("raw", "timestamp_utc")
    };
    let bucket = bucket.replace("{t}", time_column);
    // Counts, error kinds and the latency bins of each bucket; the percentiles are
    // computed here from the bins, by the same rule as the status's.
    let parts = if source == "raw" {
        format!(
            "src AS (SELECT {bucket} AS bucket_start, is_up, error_kind,
                            sitemon_sketch_bin(response_time_ms) AS bin
                     FROM website_status WHERE website_id = $1 AND timestamp_utc >= $2),
             sums AS (SELECT bucket_start, count(*) AS checks,
                             count(*) FILTER (WHERE is_up) AS up
                      FROM src GROUP BY 1),
             kinds AS (SELECT bucket_start, error_kind AS k, count(*) AS n
                       FROM src WHERE error_kind IS NOT NULL GROUP BY 1, 2),
             bins AS (SELECT bucket_start, array_agg(bin) AS bins, array_agg(n) AS counts
                      FROM (SELECT bucket_start, bin, count(*) AS n
                            FROM src WHERE bin IS NOT NULL GROUP BY 1, 2) AS b
                      GROUP BY 1)"
        )
    } else {
        format!(
            "src AS (SELECT {bucket} AS bucket_start, checks, up, errors, rt_sketch
                     FROM {source} WHERE website_id = $1 AND bucket_start >= $2),
             sums AS (SELECT bucket_start, sum(checks)::bigint AS checks,
                             sum(up)::bigint AS up
                      FROM src GROUP BY 1),
             kinds AS (SELECT bucket_start, k, sum(v::bigint) AS n
                       FROM src, jsonb_each_text(errors) AS x(k, v) GROUP BY 1, 2),
             bins AS (SELECT bucket_start, array_agg((e >> 32)::int) AS bins,
                             array_agg(e & 4294967295) AS counts
                      FROM src, unnest(rt_sketch) AS e GROUP BY 1)"
        )
    };
    let query = format!(
        "WITH {parts},
              top AS (SELECT DISTINCT ON (bucket_start) bucket_start, k
                      FROM kinds ORDER BY bucket_start, n DESC, k)
         SELECT s.bucket_start, s.checks,
                (100.0 * s.up / nullif(s.checks, 0))::float8 AS uptime_pct,
                top.k AS top_error, b.bins, b.counts
         FROM sums s
         LEFT JOIN bins b USING (bucket_start)
         LEFT JOIN top USING (bucket_start)
         ORDER BY s.bucket_start"
    );
    type Row = (
        OffsetDateTime,
        i64,
        Option<f64>,
        Option<String>,
        Option<Vec<i32>>,
        Option<Vec<i64>>,
    );
    let rows = sqlx::query_as::<_, Row>(&query)
        .bind(site)
        .bind(first)
        .bind(every_s as f64)
        .fetch_all(pool);
    let rows = crate::statement::bounded("reading a site's history", STATUS_TIMEOUT, rows).await?;
    Ok(rows
        .into_iter()
        .map(
            |(bucket_start, checks, uptime_pct, top_error, bins, counts)| {
                let mut sketch = Sketch::default();
                for (bin, n) in bins
                    .unwrap_or_default()
                    .into_iter()
                    .zip(counts.unwrap_or_default())
                {
                    sketch.add(bin, n);
                }
                let [p50_ms, p95_ms, p99_ms] = sketch.quantiles([0.50, 0.95, 0.99]);
                HistoryBucket {
                    bucket_start,
                    checks,
                    uptime_pct,
                    p50_ms,
                    p95_ms,
                    p99_ms,
                    top_error,
                }
            },
        )
        .collect())
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn seg(source: Source, from: OffsetDateTime, until: OffsetDateTime) -> Segment {
        Segment {
            source,
            subtract: false,
            from,
            until,
        }
    }

    fn minus(source: Source, from: OffsetDateTime, until: OffsetDateTime) -> Segment {
        Segment {
            subtract: true,
            ..seg(source, from, until)
        }
    }

    #[test]
    fn quantiles_take_the_bin_of_rank_floor_q_n_minus_1() {
        // 100 values: 10 in bin 1, 80 in bin 5, 10 in bin 9.
        let bins = [(1, 10), (5, 80), (9, 10)];
        let middle = |bin: i32| Some(2.0 * GAMMA.powi(bin) / (GAMMA + 1.0));
        // Ranks 0, 9 | 10, 89 | 90, 99.
        assert_eq!(quantiles(&bins, [0.0, 0.09]), [middle(1), middle(1)]);
        assert_eq!(
            quantiles(&bins, [0.11, 0.5, 0.899]),
            [middle(5), middle(5), middle(5)]
        );
        assert_eq!(quantiles(&bins, [0.91, 1.0]), [middle(9), middle(9)]);
        assert_eq!(quantiles(&[], [0.5]), [None]);
        // A bin's middle is within 2 % of every value of the bin (γ^(k-1), γ^k].
        let (low, high) = (GAMMA.powi(4), GAMMA.powi(5));
        let mid = middle(5).expect("a value");
        assert!((mid - low) / low <= 0.02 + 1e-12 && (high - mid) / high <= 0.02 + 1e-12);
    }

    #[test]
    fn int8_arrays_decode_from_the_binary_format() {
        let mut bytes = Vec::new();
        for word in [1_i32, 0, 20, 3, 1] {
            bytes.extend(word.to_be_bytes());
        }
        for value in [(5_i64 << 32) | 7, (-3_i64 << 32) | 1, i64::MAX] {
            bytes.extend(8_i32.to_be_bytes());
            bytes.extend(value.to_be_bytes());
        }
        let elements = int8_array(&bytes).expect("decodes");
        assert_eq!(elements, [(5_i64 << 32) | 7, (-3_i64 << 32) | 1, i64::MAX]);
        assert_eq!(int8_array(&[0; 12]).expect("empty"), Vec::<i64>::new());
        assert!(int8_array(&bytes[..bytes.len() - 1]).is_err());
        let mut null = bytes.clone();
        null[20..24].copy_from_slice(&(-1_i32).to_be_bytes());
        assert!(int8_array(&null).is_err());
    }

    #[test]
    fn a_sketch_merges_bins_in_any_order_and_takes_subtractions() {
        let mut sketch = Sketch::default();
        for (bin, n) in [(5, 30), (-3, 10), (9, 10), (5, 50), (12, 4), (7, 0)] {
            sketch.add(bin, n);
        }
        // A subtracted rollup: its bins' counts taken away again.
        sketch.add_encoded((12_i64 << 32) | 4, -1);
        sketch.add_encoded((-3_i64 << 32) | 10, -1);
        sketch.add_encoded((-3_i64 << 32) | 10, 1);
        let expected = quantiles(&[(-3, 10), (5, 80), (9, 10)], [0.0, 0.5, 0.95, 1.0]);
        assert_eq!(sketch.quantiles([0.0, 0.5, 0.95, 1.0]), expected);
        assert_eq!(Sketch::default().quantiles([0.5]), [None]);
        // A bin no response time gives is counted at the nearest end: bounded memory.
        let mut wild = Sketch::default();
        wild.add(i32::MIN, 1);
        wild.add(i32::MAX, 1);
        assert_eq!(wild.counts.len(), BINS.count());
    }

    #[test]
    fn the_bins_cover_every_response_time() {
        let bin = |ms: f64| (ms.max(0.001).ln() / GAMMA.ln()).ceil() as i32;
        assert!(BINS.contains(&bin(0.0)) && BINS.contains(&bin(f64::MAX)));
    }

    #[test]
    fn the_raw_edge_is_at_most_half_an_hour() {
        let now = datetime!(2026-11-30 10:20 UTC);
        for minutes in 0..24 * 60 {
            let start = datetime!(2026-11-29 09:00 UTC) + time::Duration::minutes(minutes);
            let segments = plan(start, now, None);
            let raw: time::Duration = segments
                .iter()
                .filter(|s| s.source == Source::Raw)
                .map(|s| s.until - s.from)
                .sum();
            let inside_the_hour = start > floor_to(now, HOUR);
            assert!(
                raw <= time::Duration::minutes(30) || inside_the_hour,
                "{start}: {segments:?}"
            );
        }
    }

    #[test]
    fn a_window_inside_one_hour_is_raw() {
        let now = datetime!(2026-11-30 10:20 UTC);
        let start = datetime!(2026-11-30 10:05 UTC);
        assert_eq!(plan(start, now, None), vec![seg(Source::Raw, start, now)]);
    }

    #[test]
    fn within_today_the_hours_are_live_and_the_first_partial_hour_raw() {
        let now = datetime!(2026-11-30 10:20 UTC);
        let start = datetime!(2026-11-30 07:50 UTC);
        assert_eq!(
            plan(start, now, None),
            vec![
                seg(Source::Raw, start, datetime!(2026-11-30 08:00 UTC)),
                seg(
                    Source::Hourly,
                    datetime!(2026-11-30 08:00 UTC),
                    datetime!(2026-11-30 11:00 UTC)
                ),
            ]
        );
    }

    #[test]
    fn a_day_is_two_days_less_the_hours_before_it_when_that_is_fewer() {
        let now = datetime!(2026-11-30 10:20 UTC);
        let start = now - time::Duration::hours(24);
        // 10:20: the hour from 10:00 less its first 20 minutes; 10 hours before 10:00
        // yesterday against 14 after it: subtract them.
        assert_eq!(
            plan(start, now, None),
            vec![
                minus(Source::Raw, datetime!(2026-11-29 10:00 UTC), start),
                seg(
                    Source::Daily,
                    datetime!(2026-11-29 00:00 UTC),
                    datetime!(2026-12-01 00:00 UTC)
                ),
                minus(
                    Source::Hourly,
                    datetime!(2026-11-29 00:00 UTC),
                    datetime!(2026-11-29 10:00 UTC)
                ),
            ]
        );
        // 10:40: the 20 minutes to 11:00 added.
        let start = datetime!(2026-11-29 10:40 UTC);
        assert_eq!(
            plan(start, now, None),
            vec![
                seg(Source::Raw, start, datetime!(2026-11-29 11:00 UTC)),
                seg(
                    Source::Daily,
                    datetime!(2026-11-29 00:00 UTC),
                    datetime!(2026-12-01 00:00 UTC)
                ),
                minus(
                    Source::Hourly,
                    datetime!(2026-11-29 00:00 UTC),
                    datetime!(2026-11-29 11:00 UTC)
                ),
            ]
        );
        // Late in the day, the hours after the start are fewer: add them.
        let start = datetime!(2026-11-29 20:30 UTC);
        assert_eq!(
            plan(start, now, None),
            vec![
                seg(Source::Raw, start, datetime!(2026-11-29 21:00 UTC)),
                seg(
                    Source::Hourly,
                    datetime!(2026-11-29 21:00 UTC),
                    datetime!(2026-11-30 00:00 UTC)
                ),
                seg(
                    Source::Daily,
                    datetime!(2026-11-30 00:00 UTC),
                    datetime!(2026-12-01 00:00 UTC)
                ),
            ]
        );
    }

    #[test]
    fn a_month_is_days() {
        let now = datetime!(2026-11-30 10:20 UTC);
        let start = now - time::Duration::days(30);
        assert_eq!(
            plan(start, now, None),
            vec![
                minus(Source::Raw, datetime!(2026-10-31 10:00 UTC), start),
                seg(
                    Source::Daily,
                    datetime!(2026-10-31 00:00 UTC),
                    datetime!(2026-12-01 00:00 UTC)
                ),
                minus(
                    Source::Hourly,
                    datetime!(2026-10-31 00:00 UTC),
                    datetime!(2026-10-31 10:00 UTC)
                ),
            ]
        );
    }

    #[test]
    fn a_first_hour_past_the_raw_horizon_is_counted_whole() {
        let now = datetime!(2026-11-30 10:20 UTC);
        let start = now - time::Duration::days(30);
        let horizon = Some(datetime!(2026-11-20 00:00 UTC));
        assert_eq!(
            plan(start, now, horizon),
            vec![
                seg(
                    Source::Daily,
                    datetime!(2026-10-31 00:00 UTC),
                    datetime!(2026-12-01 00:00 UTC)
                ),
                minus(
                    Source::Hourly,
                    datetime!(2026-10-31 00:00 UTC),
                    datetime!(2026-10-31 10:00 UTC)
                ),
            ]
        );
    }

    #[test]
    fn a_window_from_midnight_is_whole_days() {
        let now = datetime!(2026-11-30 00:00 UTC);
        let start = datetime!(2026-11-28 00:00 UTC);
        assert_eq!(
            plan(start, now, None),
            vec![seg(Source::Daily, start, datetime!(2026-12-01 00:00 UTC))]
        );
    }
}
