//! The dashboard's queries against the real PostgreSQL: each site's days of uptime from the
//! daily rollups (every location summed, missing days filled) and a site's latest checks.

use sitemon_core::dashboard::{self, MAX_CHECKS, MAX_DAYS};
use sitemon_testkit::TestDb;
use time::OffsetDateTime;

#[tokio::test]
async fn days_of_uptime_sum_the_locations_and_fill_the_gaps() {
    let db = TestDb::migrated().await;
    let sites = db.add_sites(2).await;
    let (a, b) = (sites[0], sites[1]);
    // Site a: today in two locations (150 checks, 147 up), 3 days ago one location; a day
    // before the window that must not count. Site b: nothing.
    sqlx::query(
        "INSERT INTO website_status_daily (website_id, bucket_start, location, checks, up,
             degraded, errors, rt_count, rt_sum, rt_sketch)
         VALUES ($1, date_trunc('day', now(), 'UTC'), 'x', 100, 99, 1, '{}', 0, 0, '{}'),
                ($1, date_trunc('day', now(), 'UTC'), 'y', 50, 48, 0, '{}', 0, 0, '{}'),
                ($1, date_trunc('day', now(), 'UTC') - interval '3 days', 'x', 10, 5, 0, '{}', 0, 0, '{}'),
                ($1, date_trunc('day', now(), 'UTC') - interval '7 days', 'x', 10, 0, 0, '{}', 0, 0, '{}')",
    )
    .bind(a)
    .execute(&db.pool)
    .await
    .expect("rollups");
    let now = OffsetDateTime::now_utc();
    let days = dashboard::daily_uptime(&db.pool, &[a, b], 5, now)
        .await
        .expect("the days");
    let a_days = &days[&a];
    assert_eq!(a_days.len(), 5);
    assert_eq!(a_days[4].day, now.date(), "today last");
    assert_eq!(
        (a_days[4].checks, a_days[4].up, a_days[4].degraded),
        (150, 147, 1)
    );
    assert_eq!(a_days[4].uptime_pct, Some(98.0));
    assert_eq!((a_days[1].checks, a_days[1].uptime_pct), (10, Some(50.0)));
    for i in [0, 2, 3] {
        assert_eq!(
            (a_days[i].checks, a_days[i].uptime_pct),
            (0, None),
            "day {i}"
        );
    }
    assert!(
        days[&b]
            .iter()
            .all(|d| d.checks == 0 && d.uptime_pct.is_none())
    );
    for bad in [0, MAX_DAYS + 1] {
        assert!(
            dashboard::daily_uptime(&db.pool, &[a], bad, now)
                .await
                .is_err()
        );
    }
    db.drop_database().await;
}

#[tokio::test]
async fn the_latest_checks_come_newest_first_with_their_phases() {
    let db = TestDb::migrated().await;
    let site = db.add_sites(1).await[0];
    sqlx::query(
        "INSERT INTO website_status (kafka_topic, kafka_partition_id, kafka_offset_id, website_id,
             timestamp_utc, request_info, check_id, is_up, status_code, response_time_ms,
             error_kind, location)
         SELECT 't', 0, i, $1, now() - make_interval(mins => i),
                CASE WHEN i = 0
                     THEN '{\"error\": {\"kind\": \"timeout\", \"message\": \"no answer\"},
                            \"timings_ms\": {\"dns\": 1.5, \"connect\": null, \"tls\": null,
                                             \"ttfb\": null, \"total\": 10000}}'::jsonb
                     ELSE '{}'::jsonb END,
                gen_random_uuid(), i > 0, CASE WHEN i > 0 THEN 200 END,
                CASE WHEN i > 0 THEN 20 + i END, CASE WHEN i = 0 THEN 'timeout' END, 'here'
         FROM generate_series(0, 9) AS i",
    )
    .bind(site)
    .execute(&db.pool)
    .await
    .expect("checks");
    let checks = dashboard::recent_checks(&db.pool, site, 3)
        .await
        .expect("the checks");
    assert_eq!(checks.len(), 3);
    assert!(checks.windows(2).all(|w| w[0].checked_at > w[1].checked_at));
    assert_eq!(checks[0].up, Some(false));
    assert_eq!(checks[0].error_kind.as_deref(), Some("timeout"));
    assert_eq!(checks[0].error_message.as_deref(), Some("no answer"));
    let timings = checks[0].timings_ms.expect("phases");
    assert_eq!(
        (timings.dns, timings.connect, timings.total),
        (Some(1.5), None, 10000.0)
    );
    assert_eq!(checks[1].timings_ms, None, "a row without phases");
    assert_eq!(checks[1].response_time_ms, Some(21.0));
    for bad in [0, MAX_CHECKS + 1] {
        assert!(dashboard::recent_checks(&db.pool, site, bad).await.is_err());
    }
    db.drop_database().await;
}
