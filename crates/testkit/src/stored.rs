//! What a sync stored of a topic in PostgreSQL: its offsets, rows and rejects, and the one
//! assertion every test of the sync ends with, "every message stored exactly once".

use std::time::Duration;

use sqlx::PgPool;

/// How many messages of `topic` the sync has consumed: its stored next offsets, summed.
///
/// # Errors
/// When PostgreSQL does not answer (a test that restarts it asks again).
pub async fn messages(pool: &PgPool, topic: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT coalesce(sum(next_offset), 0)::bigint FROM sync_offsets WHERE kafka_topic = $1",
    )
    .bind(topic)
    .fetch_one(pool)
    .await
}

/// Waits until the sync has consumed `produced` messages of `topic`, for at most `within`
/// (a bound against hanging). While PostgreSQL does not answer (a test restarting it), it
/// asks again.
///
/// # Panics
/// When more than `produced` were consumed, or not all within `within`.
pub async fn wait_for(pool: &PgPool, topic: &str, produced: i64, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let consumed = messages(pool, topic).await;
        if let Ok(consumed) = consumed {
            if consumed == produced {
                return;
            }
            assert!(
                consumed < produced,
                "stored {consumed} offsets, only {produced} produced"
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sync stored {consumed:?} of {produced} messages within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that the sync stored each of the messages of `topic` exactly once: `events` rows
/// (no `check_id` twice) and `rejects` rejects, and stored offsets that account for all of
/// them.
///
/// For a topic where each event was produced once; an event produced twice is one row.
///
/// # Panics
/// When any of it does not hold.
pub async fn assert_exactly_once(pool: &PgPool, topic: &str, events: i64, rejects: i64) {
    let count = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .bind(topic)
            .fetch_one(pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    };
    let rows = count("SELECT count(*) FROM website_status WHERE kafka_topic = $1").await;
    let distinct =
        count("SELECT count(DISTINCT check_id) FROM website_status WHERE kafka_topic = $1").await;
    let rejected =
        count("SELECT count(*) FROM website_status_rejects WHERE kafka_topic = $1").await;
    let consumed = messages(pool, topic).await.expect("the stored offsets");
    assert_eq!(
        rows + rejected,
        events + rejects,
        "rows {rows} + rejects {rejected}"
    );
    assert_eq!(rows, events, "one row per event");
    assert_eq!(rejected, rejects, "one reject per message that is no event");
    assert_eq!(distinct, rows, "no event stored twice");
    assert_eq!(
        consumed,
        events + rejects,
        "the stored offsets account for every message"
    );
    assert_rollups_match(pool).await;
}

/// Asserts that the hourly and daily rollups equal a `GROUP BY` over the stored rows:
/// every count, minimum, maximum, error count and latency sketch equal, and the sums of
/// response times equal up to floating-point rounding (they were added in another order);
/// and that `website_latest` holds the newest stored row of each site and location
/// ([`assert_latest_match`]).
///
/// # Panics
/// On the first rollup table that differs, with a row that shows how.
pub async fn assert_rollups_match(pool: &PgPool) {
    assert_rollups_only_match(pool).await;
    assert_latest_match(pool).await;
}

/// Asserts that `website_latest` has one row per site and location that has stored rows,
/// none for others, at the time of the newest of them, with the columns of a stored row
/// of that time (of any one, when several checks share it).
///
/// # Panics
/// When it differs, with up to three rows that show how.
pub async fn assert_latest_match(pool: &PgPool) {
    let sql = "
        WITH newest AS (
            SELECT website_id, coalesce(location, '') AS location,
                   max(timestamp_utc) AS timestamp_utc
            FROM website_status GROUP BY 1, 2
        )
        SELECT format('newest stored %s, latest %s', row_to_json(n), row_to_json(l))
        FROM newest n
        FULL JOIN website_latest l USING (website_id, location)
        WHERE n.timestamp_utc IS DISTINCT FROM l.timestamp_utc
           OR NOT EXISTS (
               SELECT 1 FROM website_status s
               WHERE s.website_id = l.website_id AND coalesce(s.location, '') = l.location
                 AND s.timestamp_utc = l.timestamp_utc
                 AND s.is_up IS NOT DISTINCT FROM l.is_up AND s.degraded = l.degraded
                 AND s.status_code IS NOT DISTINCT FROM l.status_code
                 AND s.error_kind IS NOT DISTINCT FROM l.error_kind
                 AND (s.request_info ->> 'tls_cert_not_after')
                     IS NOT DISTINCT FROM l.tls_cert_not_after)
        LIMIT 3";
    let differences: Vec<String> = sqlx::query_scalar(sql)
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("comparing website_latest with the rows: {e}"));
    assert!(
        differences.is_empty(),
        "website_latest differs from the newest stored rows: {differences:#?}"
    );
}

/// The rollups part of [`assert_rollups_match`].
async fn assert_rollups_only_match(pool: &PgPool) {
    for (table, grain) in [
        ("website_status_hourly", "hour"),
        ("website_status_daily", "day"),
    ] {
        let expected = sitemon_core::history::rollup_select("website_status", grain);
        let sql = format!(
            "WITH expected AS (
                 SELECT * FROM ({expected}) AS e(website_id, bucket_start, location, checks, up,
                                                 degraded, errors, rt_count, rt_sum, rt_min,
                                                 rt_max, rt_sketch)
             )
             SELECT coalesce(e.website_id, r.website_id), coalesce(e.bucket_start, r.bucket_start),
                    format('expected %s, stored %s', row_to_json(e), row_to_json(r))
             FROM expected e
             FULL JOIN {table} r USING (website_id, bucket_start, location)
             WHERE e.checks IS DISTINCT FROM r.checks
                OR e.up IS DISTINCT FROM r.up
                OR e.degraded IS DISTINCT FROM r.degraded
                OR e.errors IS DISTINCT FROM r.errors
                OR e.rt_count IS DISTINCT FROM r.rt_count
                OR e.rt_min IS DISTINCT FROM r.rt_min
                OR e.rt_max IS DISTINCT FROM r.rt_max
                OR e.rt_sketch IS DISTINCT FROM r.rt_sketch
                OR abs(e.rt_sum - r.rt_sum) > 1e-9 * greatest(1, abs(e.rt_sum))
                OR e.rt_sum IS NULL OR r.rt_sum IS NULL
             LIMIT 3"
        );
        let differences: Vec<(i32, time::OffsetDateTime, String)> = sqlx::query_as(&sql)
            .fetch_all(pool)
            .await
            .unwrap_or_else(|e| panic!("comparing {table} with the rows: {e}"));
        assert!(
            differences.is_empty(),
            "{table} differs from a GROUP BY over website_status: {differences:#?}"
        );
    }
}
