//! A site's events stay in check order in its partition when a produce batch is retried.
//!
//! Kafka is made to refuse the checker's batches without stopping the shared broker: the
//! test's own topic is deleted under the running checker (its lanes fail, put their batches
//! back and retry, as the log says) and created again a few seconds later with the same
//! partition count. The new topic then holds the retried batches and the checks made after,
//! and each site's events, read in offset order as a consumer reads them (never sorted by
//! `checked_at` first), must be in check order. A binary of its own: it installs the
//! process's log subscriber to see the retries.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use sitemon_testkit::http::TestServer;
use sitemon_testkit::{TestDb, kafka_config, random_topic};
use support::{Captured, Stored, add_site, checker_config, start_checker, wait_for_events};
use time::OffsetDateTime;

const PARTITIONS: i32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_batch_keeps_each_sites_events_in_check_order() {
    let log = Captured::install();
    let db = TestDb::migrated().await;
    let topic = random_topic();
    let client = sitemon_testkit::topic::create(&topic, PARTITIONS).await;
    let http = TestServer::http().await;
    let mut sites = Vec::new();
    for i in 0..6 {
        sites.push(add_site(&db, &http.url(&format!("/ok?retry{i}")), 1, None).await);
    }
    let checker = start_checker(checker_config(&db, kafka_config(&topic)));
    let every_site = |events: &[Stored]| {
        let seen: HashSet<i32> = events.iter().map(|s| s.event.website_id).collect();
        sites.iter().all(|site| seen.contains(site))
    };
    let events = wait_for_events(&client, &topic, Duration::from_secs(30), every_site).await;
    assert!(every_site(&events), "every site checked within 30 s");

    // Kafka refuses the batches: the topic is gone.
    let deleted_at = OffsetDateTime::now_utc();
    sitemon_core::kafka::delete_topic(&client, &topic)
        .await
        .expect("deletes the topic");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !log.text().contains("cannot produce to Kafka") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no produce failed within 60 s of deleting the topic:\n{}",
            log.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while sitemon_core::kafka::partition_count(&client, &topic)
        .await
        .expect("metadata")
        .is_some()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the topic still there 60 s after its deletion"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A few more checks of every site wait, and are retried, meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    sitemon_core::kafka::create_topic(&client, &topic, PARTITIONS, 1)
        .await
        .expect("creates the topic again");
    let recreated_at = OffsetDateTime::now_utc();

    // The retried batches arrive, and the checks after them.
    let settled = |events: &[Stored]| {
        sites.iter().all(|site| {
            events.iter().any(|s| {
                s.event.website_id == *site
                    && s.event.checked_at > recreated_at + time::Duration::seconds(2)
            })
        })
    };
    let events = wait_for_events(&client, &topic, Duration::from_secs(60), settled).await;
    checker.stop_within(Duration::from_secs(60)).await;
    assert!(
        settled(&events),
        "every site's checks reach the new topic within 60 s"
    );

    // `read_all` returns each partition's records in offset order.
    for site in &sites {
        let mut seen = HashSet::new();
        let mut along_offsets: Vec<(i32, i64, OffsetDateTime)> = Vec::new();
        for stored in events.iter().filter(|s| s.event.website_id == *site) {
            // A batch the broker kept although the producer saw an error comes again: a
            // repeat of a check already seen, not a reorder.
            if seen.insert(stored.event.check_id) {
                along_offsets.push((stored.partition, stored.offset, stored.event.checked_at));
            }
        }
        let partitions: HashSet<i32> = along_offsets.iter().map(|(p, _, _)| *p).collect();
        assert_eq!(partitions.len(), 1, "site {site} in one partition");
        let retried = along_offsets
            .iter()
            .filter(|(_, _, at)| *at > deleted_at && *at < recreated_at)
            .count();
        assert!(
            retried >= 2,
            "site {site}: {retried} checks from while the topic was gone reached the new \
             one:\n{along_offsets:?}"
        );
        for pair in along_offsets.windows(2) {
            assert!(
                pair[0].1 < pair[1].1 && pair[0].2 <= pair[1].2,
                "site {site}: the check at offset {} ({}) comes after the one at offset {} \
                 ({}):\n{along_offsets:?}",
                pair[1].1,
                pair[1].2,
                pair[0].1,
                pair[0].2
            );
        }
    }
    db.drop_database().await;
}
