//! A topic deleted and created again: its offsets start at 0 again, and the sync must tell
//! the new incarnation from the one it read, read it from its start, and keep every old row.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Fixture, PATIENCE, event, events};
use sitemon_core::CheckEvent;
use sitemon_core::kafka;
use uuid::Uuid;

/// Deletes the fixture's topic and creates it again with as many partitions, waiting until
/// the old one is gone from the metadata first; the fixture produces to the new one.
async fn recreate(fixture: &mut Fixture) {
    kafka::delete_topic(&fixture.client, &fixture.topic)
        .await
        .expect("deletes the topic");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let client = sitemon_testkit::topic::client(&fixture.topic).await;
        if kafka::partition_count(&client, &fixture.topic)
            .await
            .expect("metadata")
            .is_none()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deleted topic still shows after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fixture.client = sitemon_testkit::topic::create(&fixture.topic, fixture.partitions).await;
}

/// Waits until `website_status` holds `rows` rows of the topic; fails on more or on timeout.
async fn wait_for_rows(fixture: &Fixture, rows: i64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stored = fixture.count("website_status").await;
        assert!(stored <= rows, "{stored} rows stored, {rows} expected");
        if stored == rows {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{stored} of {rows} rows within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every event is one row, and nothing else is stored.
async fn assert_each_event_once(fixture: &Fixture, events: &[CheckEvent]) {
    let stored: Vec<Uuid> =
        sqlx::query_scalar("SELECT check_id FROM website_status WHERE kafka_topic = $1")
            .bind(&fixture.topic)
            .fetch_all(&fixture.db.pool)
            .await
            .expect("check ids");
    let distinct: HashSet<_> = stored.iter().collect();
    assert_eq!(distinct.len(), stored.len(), "no check stored twice");
    let expected: HashSet<_> = events.iter().map(|e| e.check_id).collect();
    assert_eq!(
        distinct,
        expected.iter().collect(),
        "every event, and only those"
    );
    assert_eq!(
        fixture.count("website_status_rejects").await,
        0,
        "no rejects"
    );
}

/// The incarnations the rows of each partition carry.
async fn incarnations(fixture: &Fixture) -> Vec<(i32, i32, i64)> {
    sqlx::query_as(
        "SELECT kafka_partition_id, kafka_topic_incarnation, count(*) FROM website_status
         WHERE kafka_topic = $1 GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(&fixture.topic)
    .fetch_all(&fixture.db.pool)
    .await
    .expect("incarnations")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_again_while_the_sync_runs_loses_no_event() {
    let mut fixture = Fixture::new(2).await;
    let sites = fixture.sites(4).await;
    let old = events(&sites, 0, 10);
    fixture.produce_events(&old).await;
    let sync = fixture.start(fixture.config());
    wait_for_rows(&fixture, 40).await;

    recreate(&mut fixture).await;
    // Fewer than before: the new offsets fall inside the old ones' range.
    let new = events(&sites, 100, 3);
    fixture.produce_events(&new).await;
    wait_for_rows(&fixture, 52).await;
    sync.stop().await;

    let all: Vec<_> = old.iter().chain(&new).cloned().collect();
    assert_each_event_once(&fixture, &all).await;
    let by_incarnation = incarnations(&fixture).await;
    assert!(
        by_incarnation
            .iter()
            .any(|&(_, incarnation, _)| incarnation == 1),
        "the new topic's rows carry the next incarnation: {by_incarnation:?}"
    );
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_again_and_refilled_past_the_old_end_while_the_sync_was_stopped_loses_no_event()
 {
    let mut fixture = Fixture::new(2).await;
    let sites = fixture.sites(4).await;
    let old = events(&sites, 0, 5);
    fixture.produce_events(&old).await;
    let sync = fixture.start(fixture.config());
    wait_for_rows(&fixture, 20).await;
    sync.stop().await;

    recreate(&mut fixture).await;
    // More than before: every stored offset is inside the new partitions, so "past the end"
    // cannot give the new topic away; the record before the stored offset does.
    let new = events(&sites, 100, 12);
    fixture.produce_events(&new).await;
    let sync = fixture.start(fixture.config());
    wait_for_rows(&fixture, 20 + 48).await;
    sync.stop().await;

    let all: Vec<_> = old.iter().chain(&new).cloned().collect();
    assert_each_event_once(&fixture, &all).await;
    let by_incarnation = incarnations(&fixture).await;
    for partition in 0..fixture.partitions {
        let of = |incarnation| {
            by_incarnation
                .iter()
                .find(|&&(p, i, _)| p == partition && i == incarnation)
                .map_or(0, |&(_, _, n)| n)
        };
        assert!(
            of(0) > 0 && of(1) > 0,
            "partition {partition} keeps its old rows and adds the new: {by_incarnation:?}"
        );
    }
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_key_holds_another_check_is_kept_as_a_reject_not_a_duplicate() {
    let fixture = Fixture::new(1).await;
    let site = fixture.sites(1).await[0];
    // A row of another check already holds the key the first event will get: as if the
    // topic had been created again unnoticed. (The key includes `timestamp_utc`, the day
    // partitions' column: another check with the same offset but another start time is
    // simply another row; it takes the same start time to collide.)
    let squatter = event(site, 0);
    let first = event(site, 1);
    let second = event(site, 2);
    sqlx::query(
        "INSERT INTO website_status (kafka_topic, kafka_partition_id, kafka_offset_id,
             website_id, timestamp_utc, request_info, check_id)
         VALUES ($1, 0, 0, $2, $3, '{}', $4)",
    )
    .bind(&fixture.topic)
    .bind(site)
    .bind(first.checked_at)
    .bind(squatter.check_id)
    .execute(&fixture.db.pool)
    .await
    .expect("the squatting row");
    fixture
        .produce_events(&[first.clone(), second.clone()])
        .await;
    let sync = fixture.start(fixture.config());
    fixture.wait_for_stored(2).await;
    sync.stop().await;

    let rejects = fixture.rejects().await;
    assert_eq!(rejects.len(), 1, "{rejects:?}");
    let (partition, offset, reason) = &rejects[0];
    assert_eq!((*partition, *offset), (0, 0));
    assert!(
        reason.contains("already holds another check")
            && reason.contains(&first.check_id.to_string()),
        "{reason}"
    );
    let payload: Vec<u8> =
        sqlx::query_scalar("SELECT payload FROM website_status_rejects WHERE kafka_topic = $1")
            .bind(&fixture.topic)
            .fetch_one(&fixture.db.pool)
            .await
            .expect("the reject's bytes");
    assert_eq!(payload, first.to_json(), "the event's exact bytes are kept");
    let stored: Vec<Uuid> = sqlx::query_scalar(
        "SELECT check_id FROM website_status WHERE kafka_topic = $1 ORDER BY kafka_offset_id",
    )
    .bind(&fixture.topic)
    .fetch_all(&fixture.db.pool)
    .await
    .expect("rows");
    assert_eq!(stored, [squatter.check_id, second.check_id]);
    fixture.finish().await;
}
