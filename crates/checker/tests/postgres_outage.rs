//! PostgreSQL stopped while the checker runs, then started again: the checker does not go
//! blind. It keeps checking the sites it had (their events go to Kafka as usual), joins its
//! lease group again when PostgreSQL is back, and goes on.
//!
//! This stops the shared test database, so it has a test binary of its own (cargo runs test
//! binaries one after the other) and a guard that starts PostgreSQL again even when an
//! assertion fails.

mod support;

use std::time::Duration;

use sitemon_testkit::events::assert_ticks_accounted;
use sitemon_testkit::{Outage, Service, kafka_config};
use support::{
    add_site, checker_config, checks_of, fixture, skipped_ticks, start_checker, wait_for_events,
};
use time::OffsetDateTime;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_go_on_while_the_database_is_down() {
    let (db, topic, http, client) = fixture().await;
    let site = add_site(&db, &http.url("/ok"), 1, None).await;
    let config = checker_config(&db, kafka_config(&topic));
    let metrics = config.metrics.clone();
    let checker = start_checker(config);
    let before = wait_for_events(&client, &topic, Duration::from_secs(20), |e| {
        checks_of(e, site).len() >= 3
    })
    .await;
    assert!(
        checks_of(&before, site).len() >= 3,
        "only {} checks in the first 20 s, before PostgreSQL was stopped",
        checks_of(&before, site).len()
    );

    let mut outage = Outage::begin(Service::Postgres);
    let down_from = OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let down_until = OffsetDateTime::now_utc();
    outage.end();

    // After PostgreSQL is back the checker has joined its group again and still checks.
    let back = OffsetDateTime::now_utc();
    let checks_after_return = |events: &[support::Stored]| {
        checks_of(events, site)
            .iter()
            .filter(|e| e.checked_at > back + time::Duration::seconds(5))
            .count()
    };
    let after = wait_for_events(&client, &topic, Duration::from_secs(30), |events| {
        checks_after_return(events) >= 3
    })
    .await;
    assert!(
        checks_after_return(&after) >= 3,
        "only {} checks from 5 s to 30 s after PostgreSQL came back: the checker did not recover",
        checks_after_return(&after)
    );
    checker.stop().await;

    let checks = checks_of(&support::read_all(&client, &topic).await, site);
    let during = checks
        .iter()
        .filter(|e| e.checked_at > down_from && e.checked_at < down_until)
        .count();
    // A tick a busy machine missed is counted as skipped, never lost.
    let skipped = skipped_ticks(&metrics);
    assert!(
        during as u64 + skipped >= 9,
        "only {during} checks in the 10 s PostgreSQL was down ({skipped} ticks skipped): the \
         checker went blind"
    );
    let times: Vec<_> = checks.iter().map(|e| e.checked_at).collect();
    assert_ticks_accounted(&times, time::Duration::SECOND, skipped, 0);
    db.drop_database().await;
}
