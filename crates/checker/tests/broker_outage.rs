//! The broker stopped while the checker runs, then started again: checks go on, their events
//! wait in the buffer and arrive afterwards, none lost and none twice under different
//! contents.
//!
//! This stops the shared test broker, so it has a test binary of its own (cargo runs test
//! binaries one after the other) and a guard that starts the broker again even when an
//! assertion fails.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use sitemon_testkit::events::assert_ticks_accounted;
use sitemon_testkit::{Outage, Service, kafka_config};
use support::{
    add_site, checker_config, checks_of, fixture, skipped_ticks, start_checker, wait_for_events,
};
use time::OffsetDateTime;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_made_while_the_broker_is_down_arrive_afterwards() {
    let (db, topic, http, client) = fixture().await;
    let site = add_site(&db, &http.url("/ok"), 1, None).await;
    let config = checker_config(&db, kafka_config(&topic));
    let metrics = config.metrics.clone();
    let checker = start_checker(config);
    let before = wait_for_events(&client, &topic, Duration::from_secs(20), |e| e.len() >= 3).await;
    assert!(before.len() >= 3);
    drop(client);

    let mut outage = Outage::begin(Service::Kafka);
    let down_from = OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let down_until = OffsetDateTime::now_utc();
    outage.end();
    let during =
        |e: &sitemon_core::CheckEvent| e.checked_at > down_from && e.checked_at < down_until;

    let client = sitemon_testkit::topic::client(&topic).await;
    wait_for_events(&client, &topic, Duration::from_secs(60), |events| {
        events.iter().filter(|s| during(&s.event)).count() >= 7
    })
    .await;
    checker.stop().await;
    let events = support::read_all(&client, &topic).await;

    // A check_id seen twice (Kafka stored a batch we saw fail) must be the same event, so
    // that the sync's de-duplication keeps exactly one.
    let mut by_id: HashMap<_, &[u8]> = HashMap::new();
    for stored in &events {
        if let Some(previous) = by_id.insert(stored.event.check_id, &stored.value) {
            assert_eq!(
                previous,
                stored.value.as_slice(),
                "check_id reused for another event"
            );
        }
    }
    let checks = checks_of(&events, site);
    let made_during = checks.iter().filter(|e| during(e)).count();
    // A tick a busy machine missed is counted as skipped, never lost.
    let skipped = skipped_ticks(&metrics);
    assert!(
        made_during as u64 + skipped >= 7,
        "only {made_during} checks of the 8 s outage arrived, {skipped} ticks skipped"
    );
    // Nothing lost: every tick, outage or not, checked or counted as skipped.
    let times: Vec<_> = checks.iter().map(|e| e.checked_at).collect();
    assert_ticks_accounted(&times, time::Duration::SECOND, skipped, 0);
    db.drop_database().await;
}
