//! History at scale against the real PostgreSQL: the move of an unpartitioned table into
//! the day partitions, the default partition, retention, the rollups and their rebuild, and
//! the reports read from them compared with the raw rows.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sitemon_core::history::{self, Progress};
use sitemon_core::report;
use sitemon_testkit::TestDb;
use sitemon_testkit::stored::assert_rollups_match;
use sqlx::PgPool;
use time::{Date, OffsetDateTime};

/// Stores rows as the sync does: each row and its rollups in one statement. `values` is a
/// `SELECT` of the columns kafka_offset_id, website_id, timestamp_utc, is_up,
/// response_time_ms, error_kind.
async fn store(pool: &PgPool, values: &str) -> u64 {
    store_from(pool, Some("here"), values).await
}

/// [`store`] from `location`.
async fn store_from(pool: &PgPool, location: Option<&str>, values: &str) -> u64 {
    let location = location.map_or("NULL".to_owned(), |l| format!("'{l}'"));
    let sql = format!(
        "WITH source AS (
             INSERT INTO website_status (kafka_topic, kafka_partition_id, kafka_offset_id,
                 website_id, timestamp_utc, request_info, check_id, is_up, response_time_ms,
                 error_kind, location)
             SELECT 't', 0, v.o, v.w, v.ts, '{{}}', gen_random_uuid(), v.up, v.rt, v.ek,
                    {location}
             FROM ({values}) AS v(o, w, ts, up, rt, ek)
             ON CONFLICT DO NOTHING
             RETURNING *),
         {}
         SELECT count(*) FROM source",
        history::rollup_ctes("source")
    );
    let stored: i64 = sqlx::query_scalar(&sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    stored as u64
}

async fn add_sites(pool: &PgPool, n: i32) {
    sqlx::query(
        "INSERT INTO websites (url, check_interval)
         SELECT 'http://127.0.0.1:9/site-' || i, 60 FROM generate_series(1, $1) AS i",
    )
    .bind(n)
    .execute(pool)
    .await
    .expect("sites");
}

async fn scalar<T>(pool: &PgPool, sql: &str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Where each row sits: partition name → rows.
async fn placement(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT tableoid::regclass::text, count(*) FROM website_status GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("placement")
    .into_iter()
    .collect::<std::collections::BTreeMap<String, i64>>()
    .into_iter()
    .collect()
}

fn today() -> Date {
    OffsetDateTime::now_utc().date()
}

#[tokio::test]
async fn migrating_a_million_unpartitioned_rows_moves_every_one_with_its_rollups() {
    const ROWS: i64 = 1_000_000;
    let db = TestDb::empty().await;
    // The schema as it was before partitions.
    migrate_below(&db.pool, "20261130").await;
    add_sites(&db.pool, 200).await;
    // A million checks of 200 sites over the last 20 days, some failed, some without a
    // response time.
    sqlx::query(
        "INSERT INTO website_status (kafka_topic, kafka_partition_id, kafka_offset_id,
             website_id, timestamp_utc, request_info, check_id, is_up, status_code,
             response_time_ms, error_kind, location)
         SELECT 'old', i % 6, i, 1 + i % 200,
                now() - make_interval(secs => (i * 1.7) % (20 * 86400)),
                jsonb_build_object('n', i), gen_random_uuid(), i % 17 <> 0,
                CASE WHEN i % 17 <> 0 THEN 200 END,
                CASE WHEN i % 23 <> 0 THEN 5 + (i * 7919) % 2000 / 10.0 END,
                CASE WHEN i % 17 = 0 THEN (ARRAY['timeout', 'dns', 'connect'])[1 + i % 3] END,
                CASE WHEN i % 2 = 0 THEN 'eu' ELSE 'us' END
         FROM generate_series(1, $1) AS i",
    )
    .bind(ROWS)
    .execute(&db.pool)
    .await
    .expect("a million old rows");
    // Every column the old table had (later migrations add columns with defaults).
    let fingerprint = "SELECT count(*)::text || ':' || md5(string_agg(
                           ROW(kafka_topic, kafka_partition_id, kafka_offset_id, website_id,
                               timestamp_utc, request_info, check_id, is_up, status_code,
                               response_time_ms, error_kind, location,
                               kafka_topic_incarnation)::text,
                           ',' ORDER BY kafka_topic, kafka_partition_id, kafka_offset_id))
                       FROM website_status";
    let before: String = scalar(&db.pool, fingerprint).await;

    let started = Instant::now();
    let mut heard: Vec<Progress> = Vec::new();
    sitemon_core::db::migrate_with_progress(&db.pool, |p| heard.push(p))
        .await
        .expect("migrates");
    let took = started.elapsed();
    eprintln!("moved {ROWS} rows in {took:.1?}");

    let after: String = scalar(&db.pool, fingerprint).await;
    assert_eq!(after, before, "every row moved, unchanged");
    let old_left: bool = scalar(
        &db.pool,
        "SELECT to_regclass('website_status_unpartitioned') IS NOT NULL",
    )
    .await;
    assert!(!old_left, "the old table is dropped once empty");
    assert!(heard.len() > 1, "progress in several steps: {heard:?}");
    assert!(heard.windows(2).all(|w| w[0].done < w[1].done), "{heard:?}");
    assert_eq!(
        heard.last(),
        Some(&Progress {
            done: ROWS as u64,
            total: ROWS as u64
        })
    );
    let in_default: i64 = scalar(&db.pool, "SELECT count(*) FROM website_status_default").await;
    assert_eq!(in_default, 0, "every day of the old rows got its partition");
    assert_rollups_match(&db.pool).await;
    // Migrating again is a no-op.
    sitemon_core::db::migrate(&db.pool).await.expect("again");
    let again: String = scalar(&db.pool, fingerprint).await;
    assert_eq!(again, before);
    db.drop_database().await;
}

/// Applies the migrations whose names sort before `below` (the schema as it was then),
/// from a folder of their own (same versions and checksums as the embedded ones).
async fn migrate_below(pool: &PgPool, below: &str) {
    let old = tempfile_dir("sitemon-old-migrations");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
    for entry in std::fs::read_dir(&root).expect("migrations/") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if name.as_str() < below {
            std::fs::copy(&path, old.join(&name)).expect("copy");
        }
    }
    sqlx::migrate::Migrator::new(old.as_path())
        .await
        .expect("old migrations")
        .run(pool)
        .await
        .expect("the old schema");
    std::fs::remove_dir_all(&old).ok();
}

fn tempfile_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(sitemon_testkit::unique_name(prefix));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[tokio::test]
async fn an_event_whose_day_has_no_partition_is_kept_and_moves_into_its_partition_later() {
    let db = TestDb::migrated().await;
    add_sites(&db.pool, 1).await;
    let stored = store(
        &db.pool,
        "VALUES (1, 1, '2999-01-02 03:04:05+00'::timestamptz, true, 12.0::float8, NULL::text),
                (2, 1, '1990-05-06 07:08:09+00', false, NULL, 'timeout'),
                (3, 1, now(), true, 20.0, NULL)",
    )
    .await;
    assert_eq!(stored, 3);
    let partition_today = history::partition_name(today());
    assert_eq!(
        placement(&db.pool).await,
        [
            ("website_status_default".into(), 2),
            (partition_today.clone(), 1)
        ]
    );
    let future = Date::from_calendar_date(2999, time::Month::January, 2).expect("a date");
    let created = history::ensure_partitions(&db.pool, [future])
        .await
        .expect("creates");
    assert_eq!(created, [future]);
    assert_eq!(
        placement(&db.pool).await,
        [
            ("website_status_default".into(), 1),
            (partition_today, 1),
            ("website_status_p29990102".into(), 1)
        ]
    );
    assert_rollups_match(&db.pool).await;
    // Creating it again changes nothing.
    assert!(
        history::ensure_partitions(&db.pool, [future])
            .await
            .expect("again")
            .is_empty()
    );
    db.drop_database().await;
}

#[tokio::test]
async fn retention_drops_whole_days_and_the_rollups_outlive_it() {
    let db = TestDb::migrated().await;
    add_sites(&db.pool, 2).await;
    let now = OffsetDateTime::now_utc();
    let days: Vec<Date> = (0..40)
        .map(|d| (now - time::Duration::days(d)).date())
        .collect();
    history::ensure_partitions(&db.pool, days.iter().copied())
        .await
        .expect("partitions");
    // One check an hour for 40 days, two sites.
    store(
        &db.pool,
        "SELECT i, 1 + i % 2, now() - make_interval(hours => i / 2), true, 10.0::float8, NULL::text
         FROM generate_series(0, 40 * 24 * 2 - 1) AS i",
    )
    .await;
    let daily_before: i64 = scalar(&db.pool, "SELECT count(*) FROM website_status_daily").await;

    let expired = history::drop_expired(
        &db.pool,
        now,
        Some(Duration::from_secs(30 * 86_400)),
        history::DEFAULT_ROLLUP_RETENTION,
    )
    .await
    .expect("drops");
    let kept = history::partition_days(&db.pool).await.expect("days");
    let first_kept = kept.first().copied().expect("a partition");
    let cutoff = now - time::Duration::days(30);
    // Every dropped day ended before the cutoff; the first kept one does not.
    assert!(!expired.partitions.is_empty());
    for day in &expired.partitions {
        assert!(day.next_day().expect("day").midnight().assume_utc() <= cutoff);
        let name = history::partition_name(*day);
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&name)
            .fetch_one(&db.pool)
            .await
            .expect("regclass");
        assert!(!exists, "{name} is dropped, not emptied");
    }
    assert!(first_kept.next_day().expect("day").midnight().assume_utc() > cutoff);
    let oldest_row: OffsetDateTime =
        scalar(&db.pool, "SELECT min(timestamp_utc) FROM website_status").await;
    assert!(oldest_row >= first_kept.midnight().assume_utc());
    assert_eq!(
        history::raw_horizon(&db.pool).await.expect("horizon"),
        Some(first_kept.midnight().assume_utc())
    );
    let daily_after: i64 = scalar(&db.pool, "SELECT count(*) FROM website_status_daily").await;
    assert_eq!(
        daily_after, daily_before,
        "rollups outlive the raw retention"
    );
    assert_eq!(expired.rollups, 0);

    // Rollups have their own retention.
    let expired = history::drop_expired(&db.pool, now, None, Duration::from_secs(35 * 86_400))
        .await
        .expect("drops rollups");
    assert!(expired.rollups > 0);
    let oldest_rollup: OffsetDateTime = scalar(
        &db.pool,
        "SELECT min(bucket_start) FROM website_status_daily",
    )
    .await;
    assert!(oldest_rollup + time::Duration::days(1) > now - time::Duration::days(35));
    db.drop_database().await;
}

#[tokio::test]
async fn rebuild_recomputes_the_rollups_of_the_days_that_have_raw_rows() {
    let db = TestDb::migrated().await;
    add_sites(&db.pool, 3).await;
    // Rows written without rollups (an import by hand, or rollups lost).
    sqlx::query(
        "INSERT INTO website_status (kafka_topic, kafka_partition_id, kafka_offset_id,
             website_id, timestamp_utc, request_info, check_id, is_up, response_time_ms,
             error_kind, location)
         SELECT 't', 0, i, 1 + i % 3, now() - make_interval(mins => i), '{}', gen_random_uuid(),
                i % 5 <> 0, CASE WHEN i % 5 <> 0 THEN i % 300 + 0.5 END,
                CASE WHEN i % 5 = 0 THEN 'http' END, NULL
         FROM generate_series(0, 2000) AS i",
    )
    .execute(&db.pool)
    .await
    .expect("rows");
    // And a rollup that is wrong.
    sqlx::query(
        "INSERT INTO website_status_hourly (website_id, bucket_start, location, checks, up,
             errors, rt_count, rt_sum, rt_sketch)
         VALUES (1, date_trunc('hour', now(), 'UTC'), '', 999, 0, '{}', 0, 0, '{}')",
    )
    .execute(&db.pool)
    .await
    .expect("a wrong rollup");
    let mut heard = Vec::new();
    let days = history::rebuild_rollups(&db.pool, None, |day, p| heard.push((day, p)))
        .await
        .expect("rebuilds");
    assert!(days.len() >= 2, "{days:?}");
    assert_eq!(heard.len(), days.len());
    assert_rollups_match(&db.pool).await;
    db.drop_database().await;
}

/// The exact value at quantile `q` of `values`, by the sketches' definition of rank:
/// the element of rank floor(q * (n - 1)), counting from 0.
fn exact(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[(q * (values.len() - 1) as f64).floor() as usize]
}

fn assert_within_2pct(what: &str, got: Option<f64>, exact: f64) {
    let got = got.unwrap_or_else(|| panic!("{what}: no value"));
    assert!(
        (got - exact).abs() <= 0.02 * exact + 1e-9,
        "{what}: {got} is not within 2 % of {exact}"
    );
}

#[tokio::test]
async fn status_and_history_agree_with_the_raw_rows() {
    let db = TestDb::migrated().await;
    add_sites(&db.pool, 3).await;
    let now = OffsetDateTime::now_utc();
    history::ensure_partitions(
        &db.pool,
        (0..10).map(|d| (now - time::Duration::days(d)).date()),
    )
    .await
    .expect("partitions");
    // Site 1: 10,000 checks over 9 days with response times spread over four decades
    // (0.5 ms to 5 s); one in 50 failed, by kind. Site 2: a few checks. Site 3: a check a
    // minute for 25 hours, its response time doubling every 2 hours as time goes: a
    // percentile then moves with any minute counted wrongly at the window's start (ten
    // minutes counted twice instead of never move the median by 9 %).
    store(
        &db.pool,
        "SELECT i, 1, now() - make_interval(secs => i * 77.7),
                i % 50 <> 0,
                CASE WHEN i % 50 <> 0 THEN 0.5 * power(10, ((i * 7919) % 10007) / 2500.0) END,
                CASE WHEN i % 50 = 0 THEN (ARRAY['timeout', 'tls', 'timeout'])[1 + i % 3] END
         FROM generate_series(0, 9999) AS i
         UNION ALL
         SELECT 100000 + i, 2, now() - make_interval(mins => i), true, 42.0, NULL
         FROM generate_series(0, 9) AS i
         UNION ALL
         SELECT 200000 + i, 3, now() - make_interval(secs => i * 60), true,
                10 * exp((90000 - i * 60) / 7200.0), NULL
         FROM generate_series(0, 1499) AS i",
    )
    .await;
    assert_rollups_match(&db.pool).await;

    // Windows 20 minutes apart: whatever the minute now, one starts in the first half of
    // its hour (that hour's rollup less its raw rows before the start) and one in the
    // second (the raw rows to the next hour added).
    let mut raw_signs = std::collections::BTreeSet::new();
    for (window_days, minutes) in [(1u64, 0u64), (1, 20), (1, 40), (3, 0), (8, 0)] {
        let window = Duration::from_secs(window_days * 86_400 + minutes * 60);
        let (statuses, segments) = report::site_statuses(&db.pool, window)
            .await
            .expect("status");
        // One site's form gives that site's numbers alone, the same (a site page, a badge).
        let ids = [statuses[2].id, statuses[0].id, 99_999];
        let (some, _) = report::site_statuses_of(&db.pool, window, &ids)
            .await
            .expect("status of some");
        assert_eq!(
            some.iter().map(|s| (s.id, s.checks)).collect::<Vec<_>>(),
            [&statuses[0], &statuses[2]]
                .map(|s| (s.id, s.checks))
                .to_vec(),
            "the sites asked for, by id, an unknown id giving nothing"
        );
        assert_eq!(some[0].p95_ms, statuses[0].p95_ms);
        assert_eq!(some[1].last_checked_at, statuses[2].last_checked_at);
        for segment in segments.iter().filter(|s| s.source == report::Source::Raw) {
            raw_signs.insert(segment.subtract);
        }
        let start = OffsetDateTime::now_utc() - window;
        for site in [&statuses[0], &statuses[2]] {
            let mut values: Vec<f64> = sqlx::query_scalar(
                "SELECT response_time_ms FROM website_status
                 WHERE website_id = $1 AND timestamp_utc >= $2 AND response_time_ms IS NOT NULL",
            )
            .bind(site.id)
            .bind(start)
            .fetch_all(&db.pool)
            .await
            .expect("raw");
            let (checks, up): (i64, i64) = sqlx::query_as(
                "SELECT count(*), count(*) FILTER (WHERE is_up) FROM website_status
                 WHERE website_id = $1 AND timestamp_utc >= $2",
            )
            .bind(site.id)
            .bind(start)
            .fetch_one(&db.pool)
            .await
            .expect("raw counts");
            // The raw rows were read a moment after the report: a check can only be
            // missing from them if it fell in the milliseconds between the two starts
            // (checks are a minute or more apart: about one chance in 10,000).
            let what = format!("site {}, {window_days} d {minutes} min", site.id);
            assert_eq!(site.checks, checks, "{what}: {segments:?}");
            let uptime = site.uptime_pct.expect("uptime");
            assert!((uptime - 100.0 * up as f64 / checks as f64).abs() < 1e-9);
            for (q, got) in [(0.5, site.p50_ms), (0.95, site.p95_ms), (0.99, site.p99_ms)] {
                assert_within_2pct(&format!("{what} p{q}"), got, exact(&mut values, q));
            }
        }
        let site = &statuses[0];
        if window_days == 8 {
            let sources: Vec<report::Source> = segments.iter().map(|s| s.source).collect();
            assert!(sources.contains(&report::Source::Daily), "{segments:?}");
        }
        assert_eq!(statuses[1].checks, 10);
        // The latest check: site 1's newest row (i = 0: down, a timeout).
        let newest: OffsetDateTime = scalar(
            &db.pool,
            "SELECT max(timestamp_utc) FROM website_status WHERE website_id = 1",
        )
        .await;
        assert_eq!(site.last_checked_at, Some(newest));
        assert_eq!(
            (site.up, site.last_error_kind.as_deref()),
            (Some(false), Some("timeout"))
        );
    }
    assert_eq!(
        raw_signs.into_iter().collect::<Vec<_>>(),
        [false, true],
        "raw rows both added and taken away"
    );

    // History: hourly buckets over 2 days, and daily ones over 9, against the raw rows of
    // each bucket.
    for (since, every) in [(2 * 86_400, 3_600), (9 * 86_400, 86_400), (6 * 3_600, 900)] {
        let buckets = report::site_history(
            &db.pool,
            1,
            Duration::from_secs(since),
            Duration::from_secs(every),
        )
        .await
        .expect("history");
        assert!(!buckets.is_empty());
        for bucket in &buckets {
            let until = bucket.bucket_start + time::Duration::seconds(every as i64);
            let rows: Vec<(bool, Option<f64>, Option<String>)> = sqlx::query_as(
                "SELECT is_up, response_time_ms, error_kind FROM website_status
                 WHERE website_id = 1 AND timestamp_utc >= $1 AND timestamp_utc < $2",
            )
            .bind(bucket.bucket_start)
            .bind(until)
            .fetch_all(&db.pool)
            .await
            .expect("raw bucket");
            assert_eq!(bucket.checks, rows.len() as i64, "{bucket:?}");
            let up = rows.iter().filter(|r| r.0).count();
            let uptime = bucket.uptime_pct.expect("uptime");
            assert!((uptime - 100.0 * up as f64 / rows.len() as f64).abs() < 1e-9);
            let mut values: Vec<f64> = rows.iter().filter_map(|r| r.1).collect();
            if !values.is_empty() {
                for (q, got) in [
                    (0.5, bucket.p50_ms),
                    (0.95, bucket.p95_ms),
                    (0.99, bucket.p99_ms),
                ] {
                    assert_within_2pct(&format!("{bucket:?} p{q}"), got, exact(&mut values, q));
                }
            }
            let timeouts = rows
                .iter()
                .filter(|r| r.2.as_deref() == Some("timeout"))
                .count();
            let tls = rows
                .iter()
                .filter(|r| r.2.as_deref() == Some("tls"))
                .count();
            let top = match (timeouts, tls) {
                (0, 0) => None,
                (t, l) if t >= l => Some("timeout"),
                _ => Some("tls"),
            };
            assert_eq!(bucket.top_error.as_deref(), top, "{bucket:?}");
        }
    }
    let unknown = report::site_history(
        &db.pool,
        99,
        Duration::from_secs(3600),
        Duration::from_secs(60),
    )
    .await
    .expect_err("no site 99");
    assert_eq!(unknown.to_string(), "no site has id 99");
    db.drop_database().await;
}

#[tokio::test]
async fn two_migrates_at_once_move_every_row_once_and_both_succeed() {
    const ROWS: i64 = 500_000;
    let db = TestDb::empty().await;
    migrate_below(&db.pool, "20261130").await;
    add_sites(&db.pool, 100).await;
    sqlx::query(
        "INSERT INTO website_status (kafka_topic, kafka_partition_id, kafka_offset_id,
             website_id, timestamp_utc, request_info, check_id, is_up, response_time_ms)
         SELECT 'old', 0, i, 1 + i % 100, now() - make_interval(secs => (i * 3.1) % 86400),
                '{}', gen_random_uuid(), true, i % 997
         FROM generate_series(1, $1) AS i",
    )
    .bind(ROWS)
    .execute(&db.pool)
    .await
    .expect("old rows");
    // Two `migrate`s (a sync starting while an operator migrates), each with its own pool.
    let other = PgPool::connect(&db.url).await.expect("a second pool");
    let (a, b) = tokio::join!(
        sitemon_core::db::migrate(&db.pool),
        sitemon_core::db::migrate(&other)
    );
    a.expect("the first migrate");
    b.expect("the second migrate");
    let moved: i64 = scalar(&db.pool, "SELECT count(*) FROM website_status").await;
    assert_eq!(moved, ROWS);
    let old_left: bool = scalar(
        &db.pool,
        "SELECT to_regclass('website_status_unpartitioned') IS NOT NULL",
    )
    .await;
    assert!(!old_left, "the old table is dropped");
    assert_rollups_match(&db.pool).await;
    other.close().await;
    db.drop_database().await;
}

/// Site `site`'s latest check as `status` shows it: time, up, error kind.
async fn latest_status(
    pool: &PgPool,
    site: i32,
) -> (Option<OffsetDateTime>, Option<bool>, Option<String>) {
    let (statuses, _) = report::site_statuses(pool, Duration::from_secs(3600))
        .await
        .expect("status");
    let status = statuses
        .into_iter()
        .find(|s| s.id == site)
        .expect("the site");
    (status.last_checked_at, status.up, status.last_error_kind)
}

#[tokio::test]
async fn the_latest_check_only_moves_forward_and_rebuild_recomputes_it() {
    let db = TestDb::migrated().await;
    add_sites(&db.pool, 2).await;
    // Fixed times, so that storing the same rows again is a redelivery.
    let base =
        OffsetDateTime::now_utc().replace_nanosecond(0).expect("ns") - Duration::from_secs(600);
    let at = |minutes_before: i64| {
        let t = base - time::Duration::minutes(minutes_before);
        format!(
            "'{}'::timestamptz",
            t.format(&time::format_description::well_known::Rfc3339)
                .expect("RFC 3339")
        )
    };
    // One statement with site 1's checks from "eu" out of order: the newest (down) wins.
    let first = format!(
        "VALUES (1, 1, {}, true, 10.0::float8, NULL::text), (2, 1, {}, false, NULL, 'timeout'),
                (3, 1, {}, true, 12.0, NULL)",
        at(5),
        at(1),
        at(3)
    );
    assert_eq!(store_from(&db.pool, Some("eu"), &first).await, 3);
    // Another location, older; and a site without a location.
    let us = format!("VALUES (10, 1, {}, true, 11.0::float8, NULL::text)", at(2));
    store_from(&db.pool, Some("us"), &us).await;
    let nowhere = format!("VALUES (20, 2, {}, true, 7.0::float8, NULL::text)", at(4));
    store_from(&db.pool, None, &nowhere).await;
    assert_rollups_match(&db.pool).await;
    let timeout = Some("timeout".to_owned());
    let eu_newest = (
        Some(base - time::Duration::minutes(1)),
        Some(false),
        timeout.clone(),
    );
    assert_eq!(latest_status(&db.pool, 1).await, eu_newest);
    assert_eq!(
        latest_status(&db.pool, 2).await,
        (Some(base - time::Duration::minutes(4)), Some(true), None)
    );

    // A late event (older than the latest) is counted, and does not move the latest back.
    let late = format!("VALUES (4, 1, {}, true, 9.0::float8, NULL::text)", at(30));
    assert_eq!(store_from(&db.pool, Some("eu"), &late).await, 1);
    assert_rollups_match(&db.pool).await;
    assert_eq!(latest_status(&db.pool, 1).await, eu_newest);
    // Redelivered rows store nothing and change nothing.
    assert_eq!(store_from(&db.pool, Some("eu"), &first).await, 0);
    assert_rollups_match(&db.pool).await;
    assert_eq!(latest_status(&db.pool, 1).await, eu_newest);
    // A newer check from another location is the site's latest.
    let newer = format!("VALUES (11, 1, {}, true, 13.0::float8, NULL::text)", at(0));
    store_from(&db.pool, Some("us"), &newer).await;
    assert_rollups_match(&db.pool).await;
    assert_eq!(
        latest_status(&db.pool, 1).await,
        (Some(base), Some(true), None)
    );

    // Rebuild: a latest check changed by hand, one lost, and the newest raw row of "eu"
    // deleted by hand: all recomputed from the raw rows.
    sqlx::raw_sql(
        "UPDATE website_latest SET is_up = NOT is_up WHERE location = 'us';
         DELETE FROM website_latest WHERE website_id = 2;
         DELETE FROM website_status WHERE location = 'eu' AND kafka_offset_id = 2",
    )
    .execute(&db.pool)
    .await
    .expect("changed by hand");
    history::rebuild_rollups(&db.pool, None, |_, _| {})
        .await
        .expect("rebuilds");
    assert_rollups_match(&db.pool).await;
    let eu: (OffsetDateTime, bool) = sqlx::query_as(
        "SELECT timestamp_utc, is_up FROM website_latest WHERE website_id = 1 AND location = 'eu'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("eu's latest");
    assert_eq!(eu, (base - time::Duration::minutes(3), true));

    // A removed site takes its latest checks with it.
    sitemon_core::db::delete_site(&db.pool, 1)
        .await
        .expect("removed");
    let left: i64 = scalar(&db.pool, "SELECT count(*) FROM website_latest").await;
    assert_eq!(left, 1);
    db.drop_database().await;
}

#[tokio::test]
async fn the_migration_fills_the_latest_checks_from_the_stored_history() {
    let db = TestDb::empty().await;
    // The schema before `website_latest`, with history and its rollups.
    migrate_below(&db.pool, "20261130000045").await;
    history::ensure_partitions(
        &db.pool,
        (0..4).map(|d| (OffsetDateTime::now_utc() - time::Duration::days(d)).date()),
    )
    .await
    .expect("partitions");
    add_sites(&db.pool, 3).await;
    // Sites 1 and 2 checked from two locations (and site 2 also without one) over three
    // days, the newest rows of each not the last inserted; site 3 never.
    sqlx::query(
        "INSERT INTO website_status (kafka_topic, kafka_partition_id, kafka_offset_id,
             website_id, timestamp_utc, request_info, check_id, is_up, status_code,
             response_time_ms, error_kind, location)
         SELECT 't', 0, i, 1 + i % 2, now() - make_interval(mins => (i * 37) % 4000),
                jsonb_build_object('tls_cert_not_after', '2027-01-0' || (1 + i % 9) || 'T00:00:00Z'),
                gen_random_uuid(), i % 7 <> 0, CASE WHEN i % 7 <> 0 THEN 200 END,
                10 + i % 50, CASE WHEN i % 7 = 0 THEN 'dns' END,
                (ARRAY['eu', 'us', NULL])[1 + i % 3]
         FROM generate_series(1, 3000) AS i",
    )
    .execute(&db.pool)
    .await
    .expect("history");
    for (table, grain) in [
        ("website_status_hourly", "hour"),
        ("website_status_daily", "day"),
    ] {
        sqlx::query(&format!(
            "INSERT INTO {table} (website_id, bucket_start, location, checks, up, degraded,
                 errors, rt_count, rt_sum, rt_min, rt_max, rt_sketch)
             {}",
            history::rollup_select("website_status", grain)
        ))
        .execute(&db.pool)
        .await
        .expect("rollups");
    }
    sitemon_core::db::migrate(&db.pool).await.expect("migrates");
    let entries: i64 = scalar(&db.pool, "SELECT count(*) FROM website_latest").await;
    assert_eq!(entries, 6, "two sites, three locations each");
    assert_rollups_match(&db.pool).await;
    db.drop_database().await;
}

/// Checks per day in the daily rollups.
async fn daily_checks(pool: &PgPool) -> Vec<(OffsetDateTime, i64)> {
    sqlx::query_as(
        "SELECT bucket_start, sum(checks)::bigint FROM website_status_daily
         GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("daily checks")
}

#[tokio::test]
async fn the_rollups_of_every_day_survive_a_retention_followed_by_a_rebuild() {
    let db = TestDb::migrated().await;
    add_sites(&db.pool, 1).await;
    let now = OffsetDateTime::now_utc();
    // A check every 10 minutes for 5 days: the days before yesterday have no partition of
    // their own from `migrate`, so a plain store (as before partitions were made on demand)
    // puts them in the default partition.
    let stored = store(
        &db.pool,
        "SELECT i, 1, now() - make_interval(mins => i * 10), true, 10.0::float8, NULL::text
         FROM generate_series(0, 5 * 144 - 1) AS i",
    )
    .await;
    assert_eq!(stored, 5 * 144);
    let before = daily_checks(&db.pool).await;
    assert!(before.len() >= 5, "{before:?}");

    // Retention of two days, applied in the middle of a day (whatever the hour now is, the
    // cutoff falls inside the day two days back).
    let retention = Duration::from_secs(2 * 86_400);
    history::drop_expired(
        &db.pool,
        now,
        Some(retention),
        history::DEFAULT_ROLLUP_RETENTION,
    )
    .await
    .expect("retention");
    // Whole days only: nothing of the day the cutoff falls in was deleted.
    let cutoff_day = (now - time::Duration::days(2)).date();
    let left_of_cutoff_day: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM website_status
         WHERE timestamp_utc >= $1 AND timestamp_utc < $1 + interval '1 day'",
    )
    .bind(cutoff_day.midnight().assume_utc())
    .fetch_one(&db.pool)
    .await
    .expect("rows of the cutoff's day");
    let rolled_up_cutoff_day = before
        .iter()
        .find(|(day, _)| day.date() == cutoff_day)
        .map(|(_, checks)| *checks)
        .expect("the cutoff's day has rollups");
    assert_eq!(left_of_cutoff_day, rolled_up_cutoff_day);

    // A late event of a day past the retention: stored (in the default partition) and
    // counted in its day's rollups, whose other rows retention dropped.
    store(
        &db.pool,
        "VALUES (100000, 1, now() - interval '4 days', true, 10.0::float8, NULL::text)",
    )
    .await;
    let late_day = (now - time::Duration::days(4)).date();
    let mut expected = before.clone();
    for (day, checks) in &mut expected {
        if day.date() == late_day {
            *checks += 1;
        }
    }
    assert_eq!(daily_checks(&db.pool).await, expected);

    history::rebuild_rollups(&db.pool, None, |_, _| {})
        .await
        .expect("rebuild");
    assert_eq!(
        daily_checks(&db.pool).await,
        expected,
        "a rebuild after retention kept every day's rollups"
    );
    db.drop_database().await;
}

#[tokio::test]
async fn partitions_are_made_on_demand_within_the_retention_only() {
    let db = TestDb::migrated().await;
    add_sites(&db.pool, 1).await;
    let now = OffsetDateTime::now_utc();
    let partitions = history::Partitions::new(
        Some(Duration::from_secs(30 * 86_400)),
        history::DEFAULT_ROLLUP_RETENTION,
    );
    let week_ago = (now - time::Duration::days(7)).date();
    let too_old = (now - time::Duration::days(31)).date();
    let too_far = (now + time::Duration::days(history::DAYS_AHEAD + 1)).date();
    // A row of a week ago that landed in the default partition before its day had one.
    store(
        &db.pool,
        "VALUES (1, 1, now() - interval '7 days', true, 10.0::float8, NULL::text)",
    )
    .await;
    partitions
        .ensure(&db.pool, now, [week_ago, too_old, too_far])
        .await
        .expect("ensure");
    let days = history::partition_days(&db.pool).await.expect("days");
    assert!(days.contains(&week_ago), "{days:?}");
    assert!(!days.contains(&too_old), "{days:?}");
    assert!(!days.contains(&too_far), "{days:?}");
    assert_eq!(
        placement(&db.pool).await,
        [(history::partition_name(week_ago), 1)],
        "the stray moved into its day's new partition"
    );
    assert_rollups_match(&db.pool).await;
    db.drop_database().await;
}
