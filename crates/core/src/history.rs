//! Years of history: `website_status` partitioned by UTC day, its retention, and the hourly
//! and daily rollups (`website_status_hourly`, `website_status_daily`).
//!
//! The schema and the latency sketch are described in
//! `migrations/20261130000001_history_partitions.sql`. This module keeps them:
//! - [`ensure_partitions`] creates the day partitions ahead of time (the sync, every
//!   [`MAINTAIN_EVERY`], and `migrate`); rows that landed in the default partition for a day
//!   that gets its partition move into it. [`Partitions`] creates the partitions a batch
//!   needs before it is written (a sync catching up on last week, a backfill), for any day
//!   within the raw retention, so the default partition stays small.
//! - [`drop_expired`] drops whole day partitions older than a retention (a metadata
//!   operation: no `DELETE`), the default partition's rows of whole days past it, and
//!   rollups older than theirs. Retention never cuts a day in the middle.
//! - [`rollup_ctes`] is the SQL that adds stored rows to the rollups; the sync runs it in
//!   the transaction that stores them, so a crash can never leave the two apart.
//! - [`rebuild_rollups`] recomputes the rollups from the raw rows; [`move_unpartitioned`]
//!   moves a table of the old layout into the partitions.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use sqlx::postgres::PgPool;
use time::macros::format_description;
use time::{Date, OffsetDateTime, Time};

use crate::error::Result;
use crate::statement::bounded;

/// How many days ahead of today the partitions exist.
pub const DAYS_AHEAD: i64 = 3;
/// How often a sync keeps the partitions and retentions.
pub const MAINTAIN_EVERY: Duration = Duration::from_secs(3600);
/// The default time rollups are kept: a year and a month, so that a year is always whole.
pub const DEFAULT_ROLLUP_RETENTION: Duration = Duration::from_secs(400 * 86_400);
/// How long one maintenance statement may take (moving a day's rows, rebuilding a day).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(600);
/// How long partition work waits for its table locks before it gives up until next time,
/// so that a long report never stalls the writers queued behind it.
const LOCK_TIMEOUT: &str = "10s";

/// The name of the partition of `day`: `website_status_pYYYYMMDD`.
pub fn partition_name(day: Date) -> String {
    let format = format_description!("[year][month][day]");
    format!(
        "website_status_p{}",
        day.format(&format).unwrap_or_default()
    )
}

fn partition_day(name: &str) -> Option<Date> {
    let digits = name.strip_prefix("website_status_p")?;
    Date::parse(digits, format_description!("[year][month][day]")).ok()
}

fn midnight(day: Date) -> OffsetDateTime {
    day.with_time(Time::MIDNIGHT).assume_utc()
}

/// The days that have a partition, oldest first.
///
/// # Errors
/// [`Error::Database`](crate::Error::Database), [`Error::Timeout`](crate::Error::Timeout).
pub async fn partition_days(pool: &PgPool) -> Result<Vec<Date>> {
    let names: Vec<String> = bounded(
        "listing the partitions of website_status",
        STATEMENT_TIMEOUT,
        sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'website_status'::regclass",
        )
        .fetch_all(pool),
    )
    .await?;
    let mut days: Vec<Date> = names.iter().filter_map(|n| partition_day(n)).collect();
    days.sort_unstable();
    Ok(days)
}

/// The start of the raw history: the first day that has a partition (rows before it were
/// dropped by retention, or never existed). `None` before `migrate` made any.
///
/// # Errors
/// [`Error::Database`](crate::Error::Database), [`Error::Timeout`](crate::Error::Timeout).
pub async fn raw_horizon(pool: &PgPool) -> Result<Option<OffsetDateTime>> {
    Ok(partition_days(pool).await?.first().map(|d| midnight(*d)))
}

/// Creates the partition of every day in `days` that has none; returns the days created.
///
/// Each day is one transaction, serialized among syncs by a transaction-level advisory
/// lock. A day whose rows had landed in the default partition gets them moved into its new
/// partition in the same transaction (PostgreSQL refuses a partition whose rows sit in the
/// default one).
///
/// # Errors
/// [`Error::Database`](crate::Error::Database),
/// [`Error::Timeout`](crate::Error::Timeout): the days before the failing one are created.
pub async fn ensure_partitions(
    pool: &PgPool,
    days: impl IntoIterator<Item = Date>,
) -> Result<Vec<Date>> {
    let existing = partition_days(pool).await?;
    let mut created = Vec::new();
    for day in days {
        if existing.binary_search(&day).is_ok() {
            continue;
        }
        if create_partition(pool, day).await? {
            created.push(day);
        }
    }
    Ok(created)
}

/// The day partitions a writer knows to exist, so that it can create the ones a batch needs
/// before it writes the batch, with no catalog query for a batch whose days are known.
///
/// A batch's rows whose day has no partition would land in the default partition and stay
/// there: the partitions ahead ([`days_around`]) cover only yesterday to [`DAYS_AHEAD`] days
/// ahead, but a sync that was stopped for a week catches up from Kafka, and a backfill
/// writes older days. [`Partitions::ensure`] creates those days' partitions first, through
/// [`ensure_partitions`] (one transaction a day, under the same advisory lock as every other
/// creation), for days within the window [`Partitions::window`] allows: from the start of
/// the raw retention (or, without one, of the rollups' retention) to [`DAYS_AHEAD`] days
/// ahead. Rows outside it still land in the default partition: they are past the retention
/// (and go with its next pass) or dated far in the future.
#[derive(Debug)]
pub struct Partitions {
    raw_retention: Option<Duration>,
    rollup_retention: Duration,
    known: Mutex<BTreeSet<Date>>,
}

impl Partitions {
    /// For a writer that keeps raw rows for `raw_retention` (`None`: for ever) and rollups
    /// for `rollup_retention`.
    pub fn new(raw_retention: Option<Duration>, rollup_retention: Duration) -> Self {
        Self {
            raw_retention,
            rollup_retention,
            known: Mutex::new(BTreeSet::new()),
        }
    }

    /// The first and last day whose partition [`Partitions::ensure`] creates at `now`.
    pub fn window(&self, now: OffsetDateTime) -> (Date, Date) {
        let now = now.to_offset(time::UtcOffset::UTC);
        let keep = self.raw_retention.unwrap_or(self.rollup_retention);
        let keep = time::Duration::try_from(keep).unwrap_or(time::Duration::MAX);
        // A day is kept while it ends after the cutoff (as `drop_expired` decides).
        let first = now
            .checked_sub(keep)
            .map_or(Date::MIN, |cutoff| cutoff.date());
        let last = now
            .date()
            .checked_add(time::Duration::days(DAYS_AHEAD))
            .unwrap_or(Date::MAX);
        (first, last)
    }

    /// Makes sure each of `days` within [`Partitions::window`] at `now` has its partition.
    ///
    /// # Errors
    /// [`Error::Database`](crate::Error::Database),
    /// [`Error::Timeout`](crate::Error::Timeout): the batch should not be written yet (its
    /// rows would land in the default partition); the days created before the failure stay.
    pub async fn ensure(
        &self,
        pool: &PgPool,
        now: OffsetDateTime,
        days: impl IntoIterator<Item = Date>,
    ) -> Result<()> {
        let (first, last) = self.window(now);
        let missing: BTreeSet<Date> = {
            let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            days.into_iter()
                .filter(|d| (first..=last).contains(d) && !known.contains(d))
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        // Another worker or the upkeep may have made them: learn what exists first.
        let existing = partition_days(pool).await?;
        self.learn(existing.iter().copied());
        let missing: Vec<Date> = missing
            .into_iter()
            .filter(|d| existing.binary_search(d).is_err())
            .collect();
        if !missing.is_empty() {
            ensure_partitions(pool, missing.iter().copied()).await?;
            self.learn(missing);
        }
        Ok(())
    }

    /// Remembers that `days` have their partitions.
    pub fn learn(&self, days: impl IntoIterator<Item = Date>) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.extend(days);
    }

    /// Forgets `days`, whose partitions were dropped.
    pub fn forget(&self, days: &[Date]) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        for day in days {
            known.remove(day);
        }
    }
}

async fn create_partition(pool: &PgPool, day: Date) -> Result<bool> {
    const DOING: &str = "creating a partition of website_status";
    let name = partition_name(day);
    let from = midnight(day);
    let until = midnight(day.next_day().unwrap_or(day));
    let work = async {
        let mut tx = pool.begin().await?;
        sqlx::query(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('sitemon:website_status partitions'))")
            .execute(&mut *tx)
            .await?;
        // From `pg_class` with this statement's snapshot: `to_regclass` may answer from a
        // catalog cache that has not seen the partition another sync created while this
        // transaction waited for the lock.
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                            WHERE c.relname = $1 AND n.nspname = current_schema())",
        )
        .bind(&name)
        .fetch_one(&mut *tx)
        .await?;
        if exists {
            return Ok::<_, sqlx::Error>(false);
        }
        let strays: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM website_status_default
                            WHERE timestamp_utc >= $1 AND timestamp_utc < $2)",
        )
        .bind(from)
        .bind(until)
        .fetch_one(&mut *tx)
        .await?;
        if strays {
            sqlx::query(
                "CREATE TEMPORARY TABLE sitemon_strays (LIKE website_status) ON COMMIT DROP",
            )
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "WITH moved AS (DELETE FROM website_status_default
                                WHERE timestamp_utc >= $1 AND timestamp_utc < $2 RETURNING *)
                 INSERT INTO sitemon_strays SELECT * FROM moved",
            )
            .bind(from)
            .bind(until)
            .execute(&mut *tx)
            .await?;
        }
        // The bounds are our own timestamps, formatted: DDL takes no parameters.
        sqlx::query(&format!(
            "CREATE TABLE {name} PARTITION OF website_status
             FOR VALUES FROM ('{from}') TO ('{until}')",
            from = rfc3339(from),
            until = rfc3339(until),
        ))
        .execute(&mut *tx)
        .await?;
        if strays {
            sqlx::query("INSERT INTO website_status SELECT * FROM sitemon_strays")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    };
    let created = bounded(DOING, STATEMENT_TIMEOUT, work).await?;
    if created {
        tracing::info!(partition = %name, "created a partition of website_status");
    }
    Ok(created)
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The days from yesterday to [`DAYS_AHEAD`] days ahead of today (UTC): the partitions a
/// running sync needs.
pub fn days_around(now: OffsetDateTime) -> impl Iterator<Item = Date> {
    let today = now.to_offset(time::UtcOffset::UTC).date();
    (-1..=DAYS_AHEAD).filter_map(move |d| today.checked_add(time::Duration::days(d)))
}

/// What [`drop_expired`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expired {
    /// The day partitions dropped.
    pub partitions: Vec<Date>,
    /// The rows of the default partition (days without a partition) deleted.
    pub strays: u64,
    /// The rollup rows deleted (hourly and daily).
    pub rollups: u64,
}

/// Drops every day partition that ends `raw` or more before `now` (whole partitions, never
/// a `DELETE`; `None` keeps everything) and the default partition's rows of the days that
/// ended by then (whole days too), and deletes rollups whose bucket ends `rollups` or more before `now`.
///
/// # Errors
/// [`Error::Database`](crate::Error::Database),
/// [`Error::Timeout`](crate::Error::Timeout): what was dropped before the failure stays
/// dropped.
pub async fn drop_expired(
    pool: &PgPool,
    now: OffsetDateTime,
    raw: Option<Duration>,
    rollups: Duration,
) -> Result<Expired> {
    let mut expired = Expired::default();
    if let Some(raw) = raw {
        let cutoff = now - raw;
        for day in partition_days(pool).await? {
            let end = midnight(day.next_day().unwrap_or(day));
            if end > cutoff {
                break;
            }
            let name = partition_name(day);
            let work = async {
                let mut tx = pool.begin().await?;
                sqlx::query(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&format!("DROP TABLE IF EXISTS {name}"))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            };
            bounded("dropping an expired partition", STATEMENT_TIMEOUT, work).await?;
            tracing::info!(partition = %name, "dropped a day of raw history past the retention");
            expired.partitions.push(day);
        }
        // Strays of days without a partition: the default partition holds only those, so
        // this DELETE is small. Whole days only, as for the partitions: a day is kept whole
        // or dropped whole, so that a later `rollup rebuild` never recomputes a day from
        // the part of its rows that a cut in the middle left.
        let first_kept_day = midnight(cutoff.to_offset(time::UtcOffset::UTC).date());
        let strays = bounded(
            "deleting expired rows of the default partition",
            STATEMENT_TIMEOUT,
            sqlx::query("DELETE FROM website_status_default WHERE timestamp_utc < $1")
                .bind(first_kept_day)
                .execute(pool),
        )
        .await?;
        expired.strays = strays.rows_affected();
    }
    let cutoff = now - rollups;
    for (table, grain) in [
        ("website_status_hourly", 3600),
        ("website_status_daily", 86_400),
    ] {
        let deleted = bounded(
            "deleting expired rollups",
            STATEMENT_TIMEOUT,
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE bucket_start + make_interval(secs => {grain}) <= $1"
            ))
            .bind(cutoff)
            .execute(pool),
        )
        .await?;
        expired.rollups += deleted.rows_affected();
    }
    Ok(expired)
}

/// The columns a writer's CTE `source` must yield for [`rollup_ctes`] (e.g. as the
/// `RETURNING` list of the `INSERT` that stores the rows).
pub const STORED_COLUMNS: &str = "website_id, timestamp_utc, location, is_up, degraded, \
    status_code, response_time_ms, error_kind, request_info";

/// The SQL that adds rows to the rollups and to the latest checks: data-modifying CTEs
/// (ending with `hour_added`, `day_added` and `latest_set`) to append to a `WITH` whose CTE
/// `source` yields the stored rows' [`STORED_COLUMNS`]. Every statement that stores raw
/// rows runs it over exactly the rows it stored, so the rollups always equal
/// [`rollup_select`] over `website_status` (sums of response times up to floating-point
/// rounding), and `website_latest` holds the newest row of each site and location.
///
/// The rows are read once: grouped per hour (totals, error kinds, latency bins), and the
/// days are grouped from the hours. The newest row of each site and location of the
/// statement replaces the stored latest check only when it is not older, so redelivered
/// and late events never move it back.
pub fn rollup_ctes(source: &str) -> String {
    let level = |grain: &str, bucket: &str| {
        format!(
            "{grain}_totals AS (
                 SELECT website_id, {bucket} AS bucket_start, location,
                        sum(checks)::bigint AS checks, sum(up)::bigint AS up,
                        sum(degraded)::bigint AS degraded, sum(rt_count)::bigint AS rt_count, sum(rt_sum) AS rt_sum,
                        min(rt_min) AS rt_min, max(rt_max) AS rt_max
                 FROM stored_totals GROUP BY 1, 2, 3),
             {grain}_kinds AS (
                 SELECT website_id, bucket_start, location, jsonb_object_agg(error_kind, n) AS errors
                 FROM (SELECT website_id, {bucket} AS bucket_start, location, error_kind,
                              sum(n)::bigint AS n
                       FROM stored_kinds GROUP BY 1, 2, 3, 4) AS k
                 GROUP BY 1, 2, 3),
             {grain}_bins AS (
                 SELECT website_id, bucket_start, location,
                        array_agg((bin::bigint << 32) | n ORDER BY bin) AS rt_sketch
                 FROM (SELECT website_id, {bucket} AS bucket_start, location, bin,
                              sum(n)::bigint AS n
                       FROM stored_bins GROUP BY 1, 2, 3, 4) AS b
                 GROUP BY 1, 2, 3),
             {grain}_added AS (
                 INSERT INTO website_status_{table} AS r (website_id, bucket_start, location,
                     checks, up, degraded, errors, rt_count, rt_sum, rt_min, rt_max, rt_sketch)
                 SELECT t.website_id, t.bucket_start, t.location, t.checks, t.up, t.degraded,
                        coalesce(k.errors, '{{}}'::jsonb), t.rt_count, t.rt_sum, t.rt_min,
                        t.rt_max, coalesce(b.rt_sketch, '{{}}'::bigint[])
                 FROM {grain}_totals t
                 LEFT JOIN {grain}_kinds k USING (website_id, bucket_start, location)
                 LEFT JOIN {grain}_bins b USING (website_id, bucket_start, location)
                 -- In key order: two writers (or a rebuild) upserting the same rows lock
                 -- them in the same order, so they wait for each other, never deadlock.
                 ORDER BY t.website_id, t.bucket_start, t.location
                 ON CONFLICT (website_id, bucket_start, location) DO UPDATE SET
                     checks = r.checks + EXCLUDED.checks,
                     up = r.up + EXCLUDED.up,
                     degraded = r.degraded + EXCLUDED.degraded,
                     errors = CASE WHEN EXCLUDED.errors = '{{}}' THEN r.errors
                                   WHEN r.errors = '{{}}' THEN EXCLUDED.errors
                                   ELSE sitemon_counts_merge(r.errors, EXCLUDED.errors) END,
                     rt_count = r.rt_count + EXCLUDED.rt_count,
                     rt_sum = r.rt_sum + EXCLUDED.rt_sum,
                     rt_min = least(r.rt_min, EXCLUDED.rt_min),
                     rt_max = greatest(r.rt_max, EXCLUDED.rt_max),
                     rt_sketch = CASE WHEN EXCLUDED.rt_sketch = '{{}}' THEN r.rt_sketch
                                      WHEN r.rt_sketch = '{{}}' THEN EXCLUDED.rt_sketch
                                      ELSE sitemon_sketch_merge(r.rt_sketch, EXCLUDED.rt_sketch)
                                      END
                 RETURNING 1)",
            table = if grain == "hour" { "hourly" } else { "daily" },
        )
    };
    format!(
        "stored_rows AS (
             SELECT website_id, timestamp_utc, date_trunc('hour', timestamp_utc, 'UTC') AS hour,
                    coalesce(location, '') AS location, is_up, degraded, status_code,
                    response_time_ms, error_kind, sitemon_sketch_bin(response_time_ms) AS bin,
                    request_info ->> 'tls_cert_not_after' AS tls_cert_not_after
             FROM {source}),
         stored_totals AS (
             SELECT website_id, hour, location, count(*) AS checks,
                    count(*) FILTER (WHERE is_up) AS up,
                    count(*) FILTER (WHERE degraded) AS degraded,
                    count(response_time_ms) AS rt_count,
                    coalesce(sum(response_time_ms), 0) AS rt_sum,
                    min(response_time_ms) AS rt_min, max(response_time_ms) AS rt_max
             FROM stored_rows GROUP BY 1, 2, 3),
         stored_kinds AS (
             SELECT website_id, hour, location, error_kind, count(*) AS n
             FROM stored_rows WHERE error_kind IS NOT NULL GROUP BY 1, 2, 3, 4),
         stored_bins AS (
             SELECT website_id, hour, location, bin, count(*) AS n
             FROM stored_rows WHERE bin IS NOT NULL GROUP BY 1, 2, 3, 4),
         {},
         {},
         {LATEST_CTES}",
        level("hour", "hour"),
        level("day", "date_trunc('day', hour, 'UTC')"),
    )
}

/// The newest row of each site and location of `stored_rows` into `website_latest`, unless
/// the stored one is newer. The newest rows are found by a hash aggregate and a join (a
/// rebuilt day is millions of rows: no sort of them), and ties on the time reduced to one
/// row, as an upsert may touch a row only once.
const LATEST_CTES: &str = "
    stored_newest AS (
        SELECT website_id, location, max(timestamp_utc) AS timestamp_utc
        FROM stored_rows GROUP BY 1, 2),
    stored_latest AS (
        SELECT DISTINCT ON (website_id, location) website_id, location, timestamp_utc, is_up,
               degraded, status_code, error_kind, tls_cert_not_after
        FROM stored_rows JOIN stored_newest USING (website_id, location, timestamp_utc)
        ORDER BY website_id, location),
    latest_set AS (
        INSERT INTO website_latest AS l (website_id, location, timestamp_utc, is_up, degraded,
                                         status_code, error_kind, tls_cert_not_after)
        SELECT * FROM stored_latest
        ON CONFLICT (website_id, location) DO UPDATE SET
            timestamp_utc = EXCLUDED.timestamp_utc,
            is_up = EXCLUDED.is_up,
            degraded = EXCLUDED.degraded,
            status_code = EXCLUDED.status_code,
            error_kind = EXCLUDED.error_kind,
            tls_cert_not_after = EXCLUDED.tls_cert_not_after
        WHERE EXCLUDED.timestamp_utc >= l.timestamp_utc
        RETURNING 1)";

/// `SELECT` of the rollup rows of `source` at the grain `hour` or `day`: the one definition
/// of a rollup, used by the writers and by every comparison with the raw rows.
///
/// Its columns, in order: `website_id`, `bucket_start`, `location`, `checks`, `up`,
/// `degraded`, `errors`, `rt_count`, `rt_sum`, `rt_min`, `rt_max`, `rt_sketch`. Plain aggregates, in
/// three groupings (per bucket, per bucket and error kind, per bucket and latency bin)
/// joined: no function runs once per group, which keeps a batch's rollups cheap.
pub fn rollup_select(source: &str, grain: &str) -> String {
    format!(
        "WITH binned AS (
             SELECT website_id, date_trunc('{grain}', timestamp_utc, 'UTC') AS bucket_start,
                    coalesce(location, '') AS location, is_up, degraded, response_time_ms,
                    error_kind, sitemon_sketch_bin(response_time_ms) AS bin
             FROM {source}
         ),
         totals AS (
             SELECT website_id, bucket_start, location, count(*) AS checks,
                    count(*) FILTER (WHERE is_up) AS up,
                    count(*) FILTER (WHERE degraded) AS degraded,
                    count(response_time_ms) AS rt_count,
                    coalesce(sum(response_time_ms), 0) AS rt_sum,
                    min(response_time_ms) AS rt_min, max(response_time_ms) AS rt_max
             FROM binned GROUP BY 1, 2, 3
         ),
         kinds AS (
             SELECT website_id, bucket_start, location, jsonb_object_agg(error_kind, n) AS errors
             FROM (SELECT website_id, bucket_start, location, error_kind, count(*) AS n
                   FROM binned WHERE error_kind IS NOT NULL GROUP BY 1, 2, 3, 4) AS k
             GROUP BY 1, 2, 3
         ),
         bins AS (
             SELECT website_id, bucket_start, location,
                    array_agg((bin::bigint << 32) | n ORDER BY bin) AS rt_sketch
             FROM (SELECT website_id, bucket_start, location, bin, count(*) AS n
                   FROM binned WHERE bin IS NOT NULL GROUP BY 1, 2, 3, 4) AS b
             GROUP BY 1, 2, 3
         )
         SELECT t.website_id, t.bucket_start, t.location, t.checks, t.up, t.degraded,
                coalesce(kinds.errors, '{{}}'::jsonb), t.rt_count, t.rt_sum, t.rt_min, t.rt_max,
                coalesce(bins.rt_sketch, '{{}}'::bigint[])
         FROM totals t
         LEFT JOIN kinds USING (website_id, bucket_start, location)
         LEFT JOIN bins USING (website_id, bucket_start, location)"
    )
}

/// Progress of a long maintenance job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Units done so far (rows, or days).
    pub done: u64,
    /// Units in all.
    pub total: u64,
}

/// Recomputes the rollups and the latest checks of every day from `since` (UTC, whole days;
/// `None`: from the first day with raw rows) that has raw rows (a partition, or rows in the
/// default partition), from the raw rows. Days whose raw rows retention dropped keep their
/// rollups, and a site whose raw rows all expired its latest check: a day before the raw
/// horizon (the first day with a partition) whose rows in the default partition are fewer
/// than its rollups count (an event past the retention that arrived late) is not rebuilt,
/// since those are not all of its rows; rows imported there by hand are.
///
/// Each day is one transaction that holds the rollup tables and `website_latest` against
/// concurrent writers (a sync waits for it, then adds its rows to the rebuilt rollups), so
/// it is safe beside running syncs. The days go newest first: a day drops the latest checks
/// that fall in it and adds its newest rows back, so a latest check whose raw row is gone
/// falls back to an older day's. Returns the days rebuilt, newest first.
///
/// # Errors
/// [`Error::Database`](crate::Error::Database),
/// [`Error::Timeout`](crate::Error::Timeout): the days before the failing one are rebuilt.
pub async fn rebuild_rollups(
    pool: &PgPool,
    since: Option<OffsetDateTime>,
    mut progress: impl FnMut(Date, Progress),
) -> Result<Vec<Date>> {
    let mut days = partition_days(pool).await?;
    // Days without a partition whose rows sat in the default partition: a broken clock's
    // future, or a day before the first partition. Such a day is rebuilt only when its rows
    // there are not fewer than its rollups count: otherwise retention dropped the others.
    let strays: Vec<OffsetDateTime> = bounded(
        "finding the days of the default partition",
        STATEMENT_TIMEOUT,
        sqlx::query_scalar(
            "SELECT DISTINCT date_trunc('day', timestamp_utc, 'UTC') FROM website_status_default",
        )
        .fetch_all(pool),
    )
    .await?;
    let horizon = days.first().copied();
    for day in strays.iter().map(|d| d.date()) {
        if horizon.is_none_or(|h| day >= h) || holds_all_its_rollups(pool, day).await? {
            days.push(day);
        }
    }
    days.sort_unstable();
    days.dedup();
    let since_day = since.map(|s| s.to_offset(time::UtcOffset::UTC).date());
    days.retain(|d| since_day.is_none_or(|s| *d >= s));
    days.reverse();
    for (i, day) in days.iter().enumerate() {
        rebuild_day(pool, *day).await?;
        progress(
            *day,
            Progress {
                done: i as u64 + 1,
                total: days.len() as u64,
            },
        );
    }
    Ok(days)
}

/// Whether the default partition holds at least as many rows of `day` (a day before the
/// raw horizon) as its daily rollups count: rows imported there by hand, or rollups lost. A
/// day that retention dropped has fewer (a late event of it, say), and rebuilding it would
/// replace its rollups with that part.
async fn holds_all_its_rollups(pool: &PgPool, day: Date) -> Result<bool> {
    let from = midnight(day);
    let until = midnight(day.next_day().unwrap_or(day));
    bounded(
        "comparing a day of the default partition with its rollups",
        STATEMENT_TIMEOUT,
        sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM website_status_default
                     WHERE timestamp_utc >= $1 AND timestamp_utc < $2)
                 >= (SELECT coalesce(sum(checks), 0) FROM website_status_daily
                     WHERE bucket_start = $1)",
        )
        .bind(from)
        .bind(until)
        .fetch_one(pool),
    )
    .await
}

async fn rebuild_day(pool: &PgPool, day: Date) -> Result<()> {
    let from = midnight(day);
    let until = midnight(day.next_day().unwrap_or(day));
    let work = async {
        let mut tx = pool.begin().await?;
        sqlx::query(
            "LOCK TABLE website_status_hourly, website_status_daily, website_latest
             IN SHARE ROW EXCLUSIVE MODE",
        )
        .execute(&mut *tx)
        .await?;
        for (table, column) in [
            ("website_status_hourly", "bucket_start"),
            ("website_status_daily", "bucket_start"),
            ("website_latest", "timestamp_utc"),
        ] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE {column} >= $1 AND {column} < $2"
            ))
            .bind(from)
            .bind(until)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(&format!(
            "WITH source AS (SELECT * FROM website_status
                             WHERE timestamp_utc >= $1 AND timestamp_utc < $2),
                  {}
             SELECT 1",
            rollup_ctes("source")
        ))
        .bind(from)
        .bind(until)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    };
    bounded("rebuilding a day of rollups", STATEMENT_TIMEOUT, work).await
}

/// How many rows one transaction of [`move_unpartitioned`] moves at most (whole sites).
const MOVE_CHUNK_ROWS: i64 = 200_000;
/// How many times [`move_unpartitioned`] lists what is left of the old table and moves it
/// before it leaves the rest for the next `migrate`.
const MOVE_ROUNDS: usize = 5;
/// Taken by every transaction of [`move_unpartitioned`]: two `migrate`s at once (a sync
/// starting while an operator migrates) take turns, chunk by chunk, and each finds the old
/// table as the other left it (never dropped under a statement of its own).
const MOVE_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtext('sitemon:move website_status_unpartitioned'))";
/// Whether the old table exists, read from `pg_class` with the statement's snapshot: not
/// `to_regclass`, whose catalog cache may still hold a table that the other `migrate`
/// dropped while this transaction waited for [`MOVE_LOCK`].
const OLD_TABLE_EXISTS: &str = "
    SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                   WHERE c.relname = 'website_status_unpartitioned'
                     AND n.nspname = current_schema())";

/// Moves the rows of `website_status_unpartitioned` (a table of the layout before
/// partitions, renamed by the migration) into the partitions, adding them to the rollups,
/// then drops it; a no-op when there is none. Sites move in chunks of about 200,000 rows,
/// each chunk one transaction (rows out of the old table, into the new one, and into the
/// rollups), so a move cut short loses nothing and goes on where it stopped. Several
/// `migrate`s at once share the work, chunk by chunk, under a transaction-level advisory
/// lock. `progress` hears the rows moved; returns how many this call moved.
///
/// # Errors
/// [`Error::Database`](crate::Error::Database), [`Error::Timeout`](crate::Error::Timeout).
pub async fn move_unpartitioned(pool: &PgPool, mut progress: impl FnMut(Progress)) -> Result<u64> {
    let mut moved = 0u64;
    for _ in 0..MOVE_ROUNDS {
        let Some((days, sites)) = old_history_left(pool).await? else {
            return Ok(moved);
        };
        ensure_partitions(pool, days.iter().map(|d| d.date())).await?;
        let left: i64 = sites.iter().map(|(_, n)| n).sum();
        let total = moved + u64::try_from(left).unwrap_or(0);
        let mut chunk: Vec<i32> = Vec::new();
        let mut chunk_rows = 0;
        for (i, (site, rows)) in sites.iter().enumerate() {
            chunk.push(*site);
            chunk_rows += rows;
            if chunk_rows < MOVE_CHUNK_ROWS && i + 1 < sites.len() {
                continue;
            }
            let Some(n) = move_sites(pool, &chunk).await? else {
                // Another `migrate` moved the rest and dropped the table.
                return Ok(moved);
            };
            moved += n;
            chunk.clear();
            chunk_rows = 0;
            progress(Progress { done: moved, total });
        }
        if drop_old_table(pool).await? {
            return Ok(moved);
        }
    }
    tracing::warn!(
        rounds = MOVE_ROUNDS,
        "rows keep arriving in website_status_unpartitioned; the next `sitemon migrate` moves them"
    );
    Ok(moved)
}

/// The days and the sites (with their row counts) of the old table, or `None` when it is
/// gone.
async fn old_history_left(pool: &PgPool) -> Result<Option<(Vec<OffsetDateTime>, Vec<(i32, i64)>)>> {
    let work = async {
        let mut tx = pool.begin().await?;
        sqlx::query(MOVE_LOCK).execute(&mut *tx).await?;
        let exists: bool = sqlx::query_scalar(OLD_TABLE_EXISTS)
            .fetch_one(&mut *tx)
            .await?;
        if !exists {
            return Ok::<_, sqlx::Error>(None);
        }
        let days: Vec<OffsetDateTime> = sqlx::query_scalar(
            "SELECT DISTINCT date_trunc('day', timestamp_utc, 'UTC')
             FROM website_status_unpartitioned",
        )
        .fetch_all(&mut *tx)
        .await?;
        let sites: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT website_id, count(*) FROM website_status_unpartitioned
             GROUP BY website_id ORDER BY website_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some((days, sites)))
    };
    bounded("counting the old history", STATEMENT_TIMEOUT, work).await
}

/// Drops the old table if it is empty; whether it is gone.
async fn drop_old_table(pool: &PgPool) -> Result<bool> {
    let work = async {
        let mut tx = pool.begin().await?;
        sqlx::query(MOVE_LOCK).execute(&mut *tx).await?;
        let exists: bool = sqlx::query_scalar(OLD_TABLE_EXISTS)
            .fetch_one(&mut *tx)
            .await?;
        if !exists {
            return Ok::<_, sqlx::Error>(true);
        }
        let left: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM website_status_unpartitioned)")
                .fetch_one(&mut *tx)
                .await?;
        if !left {
            sqlx::query("DROP TABLE website_status_unpartitioned")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await.map(|()| !left)
    };
    bounded("dropping the old history table", STATEMENT_TIMEOUT, work).await
}

/// Moves the rows of `sites` and adds them to the rollups, in one transaction; `None` when
/// the old table is gone. The rollup upserts add to what is there, so running syncs need
/// not wait.
async fn move_sites(pool: &PgPool, sites: &[i32]) -> Result<Option<u64>> {
    let work = async {
        let mut tx = pool.begin().await?;
        sqlx::query(MOVE_LOCK).execute(&mut *tx).await?;
        let exists: bool = sqlx::query_scalar(OLD_TABLE_EXISTS)
            .fetch_one(&mut *tx)
            .await?;
        if !exists {
            return Ok::<_, sqlx::Error>(None);
        }
        let moved: i64 = sqlx::query_scalar(&format!(
            "WITH old AS (DELETE FROM website_status_unpartitioned
                          WHERE website_id = ANY($1) RETURNING *),
                  source AS (INSERT INTO website_status SELECT * FROM old
                             ON CONFLICT DO NOTHING RETURNING *),
                  {}
             SELECT count(*) FROM source",
            rollup_ctes("source")
        ))
        .bind(sites)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(u64::try_from(moved).unwrap_or(0)))
    };
    bounded(
        "moving old history into the partitions",
        STATEMENT_TIMEOUT,
        work,
    )
    .await
}

#[cfg(test)]
mod tests {
    use time::macros::{date, datetime};

    use super::*;

    #[test]
    fn partition_names_round_trip() {
        let day = date!(2026 - 03 - 07);
        assert_eq!(partition_name(day), "website_status_p20260307");
        assert_eq!(partition_day(&partition_name(day)), Some(day));
        assert_eq!(partition_day("website_status_default"), None);
        assert_eq!(partition_day("website_status_p2026"), None);
    }

    #[test]
    fn days_around_today_in_utc() {
        let now = datetime!(2026-12-31 23:30 -02:00); // 2027-01-01 01:30 UTC
        let days: Vec<Date> = days_around(now).collect();
        assert_eq!(days.first(), Some(&date!(2026 - 12 - 31)));
        assert_eq!(days.last(), Some(&date!(2027 - 01 - 04)));
        assert_eq!(days.len(), 5);
    }
}
