//! The sync against the real Kafka and PostgreSQL: every event is exactly one row.

mod common;

use std::collections::HashMap;

use common::{Fixture, add_partitions, event, events};
use serde_json::Value;
use sitemon_core::CheckEvent;
use sitemon_sync::{Error, StartFrom};
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

type StatusRow = (
    i32,
    i64,
    i32,
    OffsetDateTime,
    Json<Value>,
    Uuid,
    bool,
    Option<i16>,
    Option<f64>,
    Option<String>,
    Option<String>,
    bool,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_exactly_one_row_field_for_field() {
    let fixture = Fixture::new(3).await;
    let sites = fixture.sites(5).await;
    let events: Vec<CheckEvent> = (0..400)
        .map(|n| event(sites[n as usize % sites.len()], n))
        .collect();
    fixture.produce_events(&events).await;
    let sync = fixture.start(fixture.config());
    fixture.wait_for_stored(400).await;
    sync.stop().await;

    let rows: Vec<StatusRow> = sqlx::query_as(
        "SELECT kafka_partition_id, kafka_offset_id, website_id, timestamp_utc, request_info,
                check_id, is_up, status_code, response_time_ms, error_kind, location, degraded
         FROM website_status WHERE kafka_topic = $1",
    )
    .bind(&fixture.topic)
    .fetch_all(&fixture.db.pool)
    .await
    .expect("rows");
    assert_eq!(rows.len(), 400);
    fixture.assert_stored_exactly_once(400, 0).await;
    let by_id: HashMap<Uuid, &CheckEvent> = events.iter().map(|e| (e.check_id, e)).collect();
    let degraded_events = events.iter().filter(|e| e.degraded).count();
    assert!(
        degraded_events > 0 && degraded_events < events.len(),
        "the mix has degraded checks and others"
    );
    for (
        partition,
        _offset,
        website_id,
        at,
        info,
        check_id,
        up,
        code,
        ms,
        kind,
        location,
        degraded,
    ) in &rows
    {
        let event = by_id.get(check_id).expect("a row for a produced event");
        assert_eq!(*partition, event.website_id % 3);
        assert_eq!(*website_id, event.website_id);
        assert_eq!(*at, event.checked_at);
        assert_eq!(info.0, serde_json::to_value(event).expect("json"));
        assert_eq!(*up, event.up);
        assert_eq!(code.map(|c| c as u16), event.status_code);
        assert_eq!(*ms, event.response_time_ms);
        assert_eq!(
            kind.as_deref(),
            event.error.as_ref().map(|e| e.kind.as_str())
        );
        assert_eq!(location.as_deref(), Some(event.location.as_str()));
        assert_eq!(*degraded, event.degraded, "{info:?}");
    }
    let offsets = fixture.stored_offsets().await;
    assert_eq!(offsets.len(), 3);
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_twice_or_replayed_is_one_row() {
    let fixture = Fixture::new(1).await;
    let site = fixture.sites(1).await[0];
    let twice = event(site, 1);
    let other = event(site, 2);
    fixture
        .produce_events(&[twice.clone(), other.clone(), twice.clone()])
        .await;
    let sync = fixture.start(fixture.config());
    fixture.wait_for_stored(3).await;
    sync.stop().await;
    assert_eq!(fixture.count("website_status").await, 2);
    let offset: i64 =
        sqlx::query_scalar("SELECT kafka_offset_id FROM website_status WHERE check_id = $1")
            .bind(twice.check_id)
            .fetch_one(&fixture.db.pool)
            .await
            .expect("one row for the twice-produced event");
    assert_eq!(offset, 0, "the first copy is the one stored");

    // Replay the whole partition (as after a lost commit reply): nothing new is stored.
    sqlx::query("UPDATE sync_offsets SET next_offset = 0 WHERE kafka_topic = $1")
        .bind(&fixture.topic)
        .execute(&fixture.db.pool)
        .await
        .expect("rewind");
    let sync = fixture.start(fixture.config());
    fixture.wait_for_stored(3).await;
    sync.stop().await;
    assert_eq!(fixture.count("website_status").await, 2);
    assert_eq!(fixture.count("website_status_rejects").await, 0);
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_poison_message_is_a_reject_with_its_reason_and_the_rest_arrives() {
    let fixture = Fixture::new(1).await;
    let site = fixture.sites(1).await[0];
    let key = Some(site.to_string().into_bytes());
    let mut unknown_schema = serde_json::to_value(event(site, 3)).expect("json");
    unknown_schema["schema"] = 3.into();
    let mut wrong_type = serde_json::to_value(event(site, 4)).expect("json");
    wrong_type["up"] = "yes".into();
    let mut nul = serde_json::to_value(event(site, 5)).expect("json");
    nul["note"] = "a\u{0}b".into();
    let messages = vec![
        (key.clone(), Some(event(site, 1).to_json())),
        (key.clone(), None),
        (key.clone(), Some(Vec::new())),
        (key.clone(), Some(b"<html>502 Bad Gateway</html>".to_vec())),
        (key.clone(), Some(b"{\"hello\": \"world\"}".to_vec())),
        (key.clone(), Some(wrong_type.to_string().into_bytes())),
        (key.clone(), Some(unknown_schema.to_string().into_bytes())),
        (Some(b"99999".to_vec()), Some(event(99_999, 6).to_json())),
        (key.clone(), Some(nul.to_string().into_bytes())),
        (key.clone(), Some(event(site, 7).to_json())),
    ];
    fixture.produce(0, messages).await;
    let sync = fixture.start(fixture.config());
    fixture.wait_for_stored(10).await;
    sync.stop().await;

    let rejects = fixture.rejects().await;
    let reasons: Vec<(i64, &str)> = rejects.iter().map(|(_, o, r)| (*o, r.as_str())).collect();
    let expect = [
        (1, "empty value (tombstone)"),
        (2, "empty value"),
        (3, "not JSON"),
        (4, "wrong shape"),
        (5, "wrong shape"),
        (6, "unknown schema version 3"),
        (7, "website_id 99999 is not in websites"),
        (8, "the value holds a \\u0000"),
    ];
    assert_eq!(reasons.len(), expect.len(), "{reasons:#?}");
    for ((offset, reason), (want_offset, want_reason)) in reasons.iter().zip(expect) {
        assert_eq!(*offset, want_offset);
        assert!(reason.starts_with(want_reason), "offset {offset}: {reason}");
    }
    assert_eq!(fixture.count("website_status").await, 2);
    let (key, payload): (Option<Vec<u8>>, Option<Vec<u8>>) = sqlx::query_as(
        "SELECT message_key, payload FROM website_status_rejects
         WHERE kafka_topic = $1 AND kafka_offset_id = 3",
    )
    .bind(&fixture.topic)
    .fetch_one(&fixture.db.pool)
    .await
    .expect("the not-JSON reject");
    assert_eq!(key, Some(site.to_string().into_bytes()));
    assert_eq!(
        payload.as_deref(),
        Some(&b"<html>502 Bad Gateway</html>"[..])
    );
    fixture.finish().await;
}

/// An event dated an hour ahead (a checker with a wrong clock) is a reject with its reason,
/// and `website_latest` keeps the real latest check, before it and after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_dated_in_the_future_is_a_reject_and_never_the_latest_check() {
    let fixture = Fixture::new(1).await;
    let site = fixture.sites(1).await[0];
    let mut real = event(site, 0);
    real.checked_at -= time::Duration::SECOND;
    let mut future = event(site, 2);
    future.location.clone_from(&real.location);
    future.checked_at = OffsetDateTime::now_utc() + time::Duration::HOUR;
    let mut later = event(site, 4);
    later.location.clone_from(&real.location);
    fixture
        .produce_events(&[real.clone(), future.clone(), later.clone()])
        .await;
    let sync = fixture.start(fixture.config());
    fixture.wait_for_stored(3).await;
    sync.stop().await;

    let rejects = fixture.rejects().await;
    assert_eq!(rejects.len(), 1, "{rejects:#?}");
    let (_, offset, reason) = &rejects[0];
    assert_eq!(*offset, 1);
    assert!(
        reason.starts_with("dated in the future: checked_at ")
            && reason.contains("more than 300 s is refused"),
        "{reason}"
    );
    assert_eq!(fixture.count("website_status").await, 2);
    let latest: Vec<(String, OffsetDateTime)> =
        sqlx::query_as("SELECT location, timestamp_utc FROM website_latest WHERE website_id = $1")
            .bind(site)
            .fetch_all(&fixture.db.pool)
            .await
            .expect("website_latest");
    let at = |e: &CheckEvent| {
        e.checked_at
            .replace_nanosecond(e.checked_at.microsecond() * 1_000)
    };
    assert_eq!(
        latest,
        vec![(later.location.clone(), at(&later).expect("valid"))]
    );
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_removed_while_its_events_are_in_flight_gets_rejects_and_the_sync_goes_on() {
    let fixture = Fixture::new(2).await;
    let sites = fixture.sites(2).await;
    let (removed, kept) = (sites[0], sites[1]);
    let mut config = fixture.config();
    config.consumer.batch_size = 7;
    let sync = fixture.start(config);
    let mut produced = 0;
    for round in 0..40 {
        let events: Vec<_> = (0..10)
            .map(|n| event(sites[n % 2], round * 10 + n as u32))
            .collect();
        fixture.produce_events(&events).await;
        produced += events.len() as i64;
        if round == 20 {
            sitemon_core::db::delete_site(&fixture.db.pool, i64::from(removed))
                .await
                .expect("site removed");
        }
    }
    fixture.wait_for_stored(produced).await;
    sync.stop().await;

    let rows_kept: i64 =
        sqlx::query_scalar("SELECT count(*) FROM website_status WHERE website_id = $1")
            .bind(kept)
            .fetch_one(&fixture.db.pool)
            .await
            .expect("count");
    assert_eq!(
        rows_kept,
        produced / 2,
        "every event of the kept site is a row"
    );
    let rejects = fixture.rejects().await;
    assert!(
        !rejects.is_empty(),
        "the removed site's late events are rejects"
    );
    let expected_reason = format!("website_id {removed} is not in websites");
    for (_, _, reason) in &rejects {
        assert!(reason.starts_with(&expected_reason), "{reason}");
    }
    // The removed site's rows went with it (ON DELETE CASCADE); each of its events is
    // either one of those or a reject: rows + rejects account for every offset.
    let rows = fixture.count("website_status").await;
    assert!(rows + rejects.len() as i64 <= produced);
    assert_eq!(rows, rows_kept);
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_several_partitions_and_one_added_while_running() {
    let fixture = Fixture::new(3).await;
    let sites = fixture.sites(8).await;
    let events: Vec<_> = (0..90).map(|n| event(sites[n as usize % 8], n)).collect();
    fixture.produce_events(&events).await;
    let sync = fixture.start(fixture.config());
    fixture.wait_for_stored(90).await;

    add_partitions(&fixture.topic, 4);
    let late: Vec<_> = (0..25)
        .map(|n| event(sites[n as usize % 8], 1000 + n))
        .collect();
    let messages = late
        .iter()
        .map(|e| (Some(e.kafka_key()), Some(e.to_json())))
        .collect();
    fixture.produce(3, messages).await;
    fixture.wait_for_stored(115).await;
    sync.stop().await;

    let offsets = fixture.stored_offsets().await;
    assert_eq!(offsets.get(&3), Some(&25), "{offsets:?}");
    let on_new: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM website_status WHERE kafka_topic = $1 AND kafka_partition_id = 3",
    )
    .bind(&fixture.topic)
    .fetch_one(&fixture.db.pool)
    .await
    .expect("count");
    assert_eq!(on_new, 25);
    assert_eq!(fixture.count("website_status").await, 115);
    fixture.assert_stored_exactly_once(115, 0).await;
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_cleanly_and_goes_on_from_the_stored_offsets() {
    let fixture = Fixture::new(2).await;
    let sites = fixture.sites(3).await;
    let first: Vec<_> = (0..120).map(|n| event(sites[n as usize % 3], n)).collect();
    fixture.produce_events(&first).await;
    let sync = fixture.start(fixture.config());
    fixture.wait_for_stored(120).await;
    sync.stop().await;

    let second: Vec<_> = (0..80)
        .map(|n| event(sites[n as usize % 3], 500 + n))
        .collect();
    fixture.produce_events(&second).await;
    let sync = fixture.start(fixture.config());
    fixture.wait_for_stored(200).await;
    sync.stop().await;
    assert_eq!(fixture.count("website_status").await, 200);
    fixture.assert_stored_exactly_once(200, 0).await;
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_latest_skips_what_was_there_and_keeps_what_comes() {
    let fixture = Fixture::new(1).await;
    let site = fixture.sites(1).await[0];
    fixture
        .produce_events(&[event(site, 1), event(site, 2)])
        .await;
    let mut config = fixture.config();
    config.consumer.start = StartFrom::Latest;
    let sync = fixture.start(config);
    // The offset is stored when the reader starts; wait for it before producing.
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while fixture.stored_offsets().await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no offset stored");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    fixture.produce_events(&[event(site, 3)]).await;
    fixture.wait_for_stored(3).await;
    sync.stop().await;
    assert_eq!(fixture.count("website_status").await, 1);
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_deleted_before_they_were_read_are_skipped_and_counted() {
    let fixture = Fixture::new(1).await;
    let site = fixture.sites(1).await[0];
    let events: Vec<_> = (0..10).map(|n| event(site, n)).collect();
    fixture.produce_events(&events).await;
    // The sync stored offset 0 earlier; since then, retention removed offsets 0..4.
    sqlx::query(
        "INSERT INTO sync_offsets (kafka_topic, kafka_partition_id, next_offset) VALUES ($1, 0, 0)",
    )
    .bind(&fixture.topic)
    .execute(&fixture.db.pool)
    .await
    .expect("offset stored");
    let partition = fixture
        .client
        .partition_client(
            fixture.topic.clone(),
            0,
            rskafka::client::partition::UnknownTopicHandling::Retry,
        )
        .await
        .expect("partition client");
    partition
        .delete_records(4, 30_000)
        .await
        .expect("records deleted");

    let sync = fixture.start(fixture.config());
    fixture.wait_for_stored(10).await;
    sync.stop().await;
    let offsets: Vec<i64> = sqlx::query_scalar(
        "SELECT kafka_offset_id FROM website_status WHERE kafka_topic = $1 ORDER BY 1",
    )
    .bind(&fixture.topic)
    .fetch_all(&fixture.db.pool)
    .await
    .expect("rows");
    assert_eq!(offsets, (4..10).collect::<Vec<i64>>());
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_or_schema_is_reported_at_once() {
    let fixture = Fixture::new(1).await;
    let mut config = fixture.config();
    config.consumer.kafka.topic = sitemon_testkit::random_topic();
    let error = sitemon_sync::run(config, Default::default())
        .await
        .expect_err("no such topic");
    assert!(matches!(error, Error::UnknownTopic { .. }), "{error}");
    assert!(
        error.to_string().contains("sitemon topic create"),
        "{error}"
    );

    let empty = sitemon_testkit::TestDb::empty().await;
    let mut config = fixture.config();
    config.consumer.database = sitemon_core::DatabaseConfig::from_url(&empty.url).expect("url");
    let error = sitemon_sync::run(config, Default::default())
        .await
        .expect_err("no schema");
    assert!(matches!(error, Error::NotMigrated), "{error}");
    assert!(error.to_string().contains("sitemon migrate"), "{error}");
    empty.drop_database().await;
    fixture.finish().await;
}

/// The backend pid of the sync's lease connection, once it has one (PostgreSQL keeps the
/// first 63 bytes of an application name).
async fn lease_backend(fixture: &Fixture) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = left($1, 63)",
    )
    .bind(format!(
        "sitemon lease {}",
        sitemon_sync::lease_group(&fixture.topic)
    ))
    .fetch_optional(&fixture.db.pool)
    .await
    .expect("pg_stat_activity")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_connection_stops_every_partition_rejoins_and_loses_nothing() {
    let fixture = Fixture::new(4).await;
    let sites = fixture.sites(8).await;
    let mut config = fixture.config();
    config.consumer.rebalance_every = std::time::Duration::from_millis(300);
    let metrics = config.consumer.metrics.clone();
    let sync = fixture.start(config);
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    let first = loop {
        if let Some(pid) = lease_backend(&fixture).await {
            break pid;
        }
        if tokio::time::Instant::now() >= deadline {
            let seen: Vec<(Option<String>, Option<String>)> =
                sqlx::query_as("SELECT datname::text, application_name FROM pg_stat_activity")
                    .fetch_all(&fixture.db.pool)
                    .await
                    .expect("pg_stat_activity");
            panic!("no lease connection: {seen:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut produced = 0;
    for round in 0..20u32 {
        let events: Vec<_> = (0..25u32)
            .map(|n| event(sites[n as usize % sites.len()], round * 25 + n))
            .collect();
        fixture.produce_events(&events).await;
        produced += events.len() as i64;
        if round == 8 {
            // The lease connection dies under the sync (as on a lost network, seen early).
            let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                .bind(first)
                .fetch_one(&fixture.db.pool)
                .await
                .expect("terminates");
            assert!(killed);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    fixture.wait_for_stored(produced).await;
    let again = lease_backend(&fixture)
        .await
        .expect("the sync joined again");
    assert_ne!(again, first, "a new lease connection");
    // Alone again, it holds every partition.
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while !metrics
        .render()
        .lines()
        .any(|l| l.starts_with("sitemon_sync_leases_held{") && l.ends_with(" 4"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            metrics.render()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    sync.stop().await;
    fixture.assert_stored_exactly_once(produced, 0).await;
    let rendered = metrics.render();
    assert!(
        rendered
            .lines()
            .any(|l| l == format!("sitemon_sync_events_total {produced}")),
        "{rendered}"
    );
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_offset_moved_under_the_sync_restarts_that_partition_alone() {
    let fixture = Fixture::new(3).await;
    let sites = fixture.sites(6).await;
    fixture.produce_events(&events(&sites, 0, 5)).await;
    let sync = fixture.start(fixture.config());
    fixture.wait_for_stored(30).await;
    let session = lease_backend(&fixture).await;
    assert!(session.is_some(), "the sync holds its lease connection");

    // Rewind partition 0 under the running sync, as an operator (or a worker that crashed
    // just after a commit) would: its reader is ahead of the stored offset now, and its next
    // batch's compare-and-set fails.
    let rewound = sqlx::query(
        "UPDATE sync_offsets SET next_offset = 0, last_fingerprint = NULL
         WHERE kafka_topic = $1 AND kafka_partition_id = 0",
    )
    .bind(&fixture.topic)
    .execute(&fixture.db.pool)
    .await
    .expect("rewinds");
    assert_eq!(rewound.rows_affected(), 1);
    fixture.produce_events(&events(&sites, 100, 5)).await;
    fixture.wait_for_stored(60).await;

    assert_eq!(
        lease_backend(&fixture).await,
        session,
        "the session went on: only partition 0's reader started again"
    );
    sync.stop().await;
    // Partition 0 was read again from 0: its replayed events are stored once.
    fixture.assert_stored_exactly_once(60, 0).await;
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_in_hand_is_stored_on_shutdown() {
    let fixture = Fixture::new(1).await;
    let site = fixture.sites(1).await[0];
    let events: Vec<CheckEvent> = (0..7).map(|n| event(site, n)).collect();
    fixture.produce_events(&events).await;
    // A batch that would wait a minute for more: only the shutdown can store it in time.
    let mut config = fixture.config();
    config.consumer.batch_size = 1_000;
    config.consumer.batch_wait = std::time::Duration::from_secs(60);
    let metrics = config.consumer.metrics.clone();
    let sync = fixture.start(config);

    // The reader has fetched the seven (the partition's lag says so) and nothing is stored.
    let lag = format!(
        "sitemon_sync_partition_lag{{topic=\"{}\",partition=\"0\"}} 7",
        fixture.topic
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !metrics.render().lines().any(|line| line == lag) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sync did not fetch the events within 30 s:\n{}",
            metrics.render()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The chunk goes from the reader to the writer's batch at once; give it a moment.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(fixture.count("website_status").await, 0, "the batch waits");

    sync.stop().await;
    fixture.assert_stored_exactly_once(7, 0).await;
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_sync_keeps_partitions_ahead_and_drops_days_past_the_retention() {
    use sitemon_core::history;
    let fixture = Fixture::new(1).await;
    let site = fixture.sites(1).await[0];
    let now = time::OffsetDateTime::now_utc();
    let old_day = (now - time::Duration::days(40)).date();
    let kept_day = (now - time::Duration::days(20)).date();
    history::ensure_partitions(&fixture.db.pool, [old_day, kept_day])
        .await
        .expect("old partitions");
    // A check on each of those days, stored with its rollups as the sync stores them.
    sqlx::query(&format!(
        "WITH source AS (
             INSERT INTO website_status (kafka_topic, kafka_partition_id, kafka_offset_id,
                 website_id, timestamp_utc, request_info, is_up, response_time_ms)
             VALUES ('old', 0, 1, $1, now() - interval '40 days', '{{}}', true, 10),
                    ('old', 0, 2, $1, now() - interval '20 days', '{{}}', true, 10)
             -- (another topic's rows: offset 0 of this one is the event below)
             RETURNING *),
         {}
         SELECT 1",
        history::rollup_ctes("source")
    ))
    .bind(site)
    .execute(&fixture.db.pool)
    .await
    .expect("old rows");
    // Whatever is ahead was made by `migrate`; the sync makes the rest.
    let ahead = (now + time::Duration::days(history::DAYS_AHEAD)).date();

    let mut config = fixture.config();
    config.retention = Some(std::time::Duration::from_secs(30 * 86_400));
    config.maintain_every = std::time::Duration::from_millis(200);
    sqlx::query(&format!("DROP TABLE {}", history::partition_name(ahead)))
        .execute(&fixture.db.pool)
        .await
        .expect("the last partition ahead gone, for the sync to make again");
    let sync = fixture.start(config);
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let days = history::partition_days(&fixture.db.pool)
            .await
            .expect("days");
        if !days.contains(&old_day) && days.contains(&ahead) {
            assert!(days.contains(&kept_day), "{days:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sync neither dropped {old_day} nor made {ahead}: {days:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The event of the day kept arrives normally; both days stay in the rollups.
    fixture.produce_events(&[event(site, 1)]).await;
    fixture.wait_for_stored(1).await;
    sync.stop().await;
    let rows: Vec<time::OffsetDateTime> =
        sqlx::query_scalar("SELECT timestamp_utc FROM website_status ORDER BY 1")
            .fetch_all(&fixture.db.pool)
            .await
            .expect("rows");
    assert_eq!(
        rows.len(),
        2,
        "40 days ago is gone, 20 days ago and now stay: {rows:?}"
    );
    let days: i64 = sqlx::query_scalar("SELECT count(*) FROM website_status_daily")
        .fetch_one(&fixture.db.pool)
        .await
        .expect("daily");
    assert_eq!(days, 3, "the rollups outlive the raw retention");
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_days_older_than_the_partitions_ahead_get_partitions_of_their_own() {
    use sitemon_core::history;
    let fixture = Fixture::new(1).await;
    let site = fixture.sites(1).await[0];
    let now = time::OffsetDateTime::now_utc();
    // A sync that was stopped for a week catches up: events of 3 to 6 days ago (within the
    // retention), one of 40 days ago (past it), and one of now.
    let mut events: Vec<CheckEvent> = (3..=6)
        .map(|days| {
            let mut e = event(site, days);
            e.checked_at = now - time::Duration::days(i64::from(days));
            e
        })
        .collect();
    let mut expired = event(site, 40);
    expired.checked_at = now - time::Duration::days(40);
    events.push(expired);
    events.push(event(site, 1));
    fixture.produce_events(&events).await;

    let mut config = fixture.config();
    config.retention = Some(std::time::Duration::from_secs(30 * 86_400));
    let sync = fixture.start(config);
    fixture.wait_for_stored(events.len() as i64).await;
    sync.stop().await;

    let days = history::partition_days(&fixture.db.pool)
        .await
        .expect("days");
    for back in 3..=6 {
        let day = (now - time::Duration::days(back)).date();
        assert!(days.contains(&day), "no partition for {day}: {days:?}");
    }
    // Only the event past the retention is in the default partition (its next pass drops
    // it); every other row sits in its day's partition.
    let strays: Vec<time::OffsetDateTime> =
        sqlx::query_scalar("SELECT timestamp_utc FROM website_status_default")
            .fetch_all(&fixture.db.pool)
            .await
            .expect("strays");
    assert_eq!(strays.len(), 1, "{strays:?}");
    assert!(strays[0] < now - time::Duration::days(39), "{strays:?}");
    fixture
        .assert_stored_exactly_once(events.len() as i64, 0)
        .await;
    fixture.finish().await;
}
