//! The whole pipeline: `sitemon check` → the real Kafka → `sitemon sync` → the real
//! PostgreSQL. Every event in the topic must be exactly one row, field for field.

mod support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sitemon_core::CheckEvent;
use sitemon_core::kafka;
use sitemon_testkit::http::TestServer;
use sitemon_testkit::{TestDb, random_topic};
use sqlx::Row as _;
use support::{output_with_timeout, sitemon};
use time::OffsetDateTime;

const PARTITIONS: i32 = 3;

/// A child process that is killed if the test ends before it was stopped.
struct Process(Option<Child>);

impl Process {
    fn start(mut command: Command) -> Self {
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        Self(Some(command.spawn().expect("sitemon starts")))
    }

    /// SIGTERM, then the exit status and what it logged.
    fn stop(mut self) -> (Option<i32>, String) {
        let child = self.0.take().expect("running");
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let output = output_with_timeout(child, Duration::from_secs(60), "sitemon after SIGTERM");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every record of the topic as (partition, offset) → event bytes.
async fn topic_records(
    client: &rskafka::client::Client,
    topic: &str,
) -> HashMap<(i32, i64), Vec<u8>> {
    sitemon_testkit::topic::read(client, topic)
        .await
        .expect("the topic exists")
        .into_iter()
        .map(|record| {
            let value = record.value.expect("a value");
            ((record.partition, record.offset), value)
        })
        .collect()
}

#[tokio::test]
async fn every_checked_event_becomes_exactly_one_row() {
    let db = TestDb::migrated().await;
    let topic = random_topic();
    let client = sitemon_testkit::topic::create(&topic, PARTITIONS).await;
    let server = TestServer::http().await;
    let sites = [
        (server.url("/ok"), Some("systems ok")),
        (server.url("/ok?mismatch"), Some("nothing like this")),
        (server.url("/404"), None),
        (server.url("/500"), None),
        ("http://127.0.0.1:9/closed".to_owned(), None),
        ("http://no-such-host.invalid/".to_owned(), None),
    ];
    for (url, regex) in &sites {
        sqlx::query("INSERT INTO websites (url, check_interval, up_regex) VALUES ($1, 1, $2)")
            .bind(url)
            .bind(regex)
            .execute(&db.pool)
            .await
            .expect("adds a site");
    }

    let sync = Process::start({
        let mut command = sitemon(&db, &topic);
        command.args(["sync", "--batch-wait", "50"]);
        command
    });
    let checker = Process::start({
        let mut command = sitemon(&db, &topic);
        command.args(["check", "--location", "pipeline-test"]);
        command
    });
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (status, log) = checker.stop();
    assert_eq!(status, Some(0), "the checker stops cleanly: {log}");

    // The checker has flushed; wait until the sync has stored everything it published.
    let records = topic_records(&client, &topic).await;
    assert!(
        records.len() >= sites.len() * 4,
        "about 8 checks of each of {} sites were expected, the topic has {}",
        sites.len(),
        records.len()
    );
    let published = records.len() as i64;
    sitemon_testkit::stored::wait_for(&db.pool, &topic, published, Duration::from_secs(60)).await;
    let (status, log) = sync.stop();
    assert_eq!(status, Some(0), "the sync stops cleanly: {log}");
    // Every event of a registered site is stored, none twice, no reject.
    sitemon_testkit::stored::assert_exactly_once(&db.pool, &topic, published, 0).await;

    let rows = sqlx::query(
        "SELECT kafka_topic, kafka_partition_id, kafka_offset_id, website_id, timestamp_utc,
                request_info, check_id, is_up, status_code, response_time_ms, error_kind, location
         FROM website_status",
    )
    .fetch_all(&db.pool)
    .await
    .expect("reads the rows");
    assert_eq!(rows.len(), records.len(), "one row per event, none twice");
    let mut seen_kinds = std::collections::BTreeSet::new();
    for row in rows {
        let key = (
            row.get::<i32, _>("kafka_partition_id"),
            row.get::<i64, _>("kafka_offset_id"),
        );
        assert_eq!(row.get::<String, _>("kafka_topic"), topic);
        let raw = records.get(&key).expect("the row's offset is in the topic");
        let event = CheckEvent::from_json(raw).expect("the checker wrote a valid event");
        assert_eq!(row.get::<i32, _>("website_id"), event.website_id);
        assert_eq!(
            row.get::<OffsetDateTime, _>("timestamp_utc"),
            event
                .checked_at
                .replace_nanosecond(event.checked_at.microsecond() * 1_000)
                .expect("valid"),
            "timestamptz keeps microseconds"
        );
        assert_eq!(row.get::<uuid::Uuid, _>("check_id"), event.check_id);
        assert_eq!(row.get::<Option<bool>, _>("is_up"), Some(event.up));
        assert_eq!(
            row.get::<Option<i16>, _>("status_code"),
            event.status_code.map(|c| c as i16)
        );
        assert_eq!(
            row.get::<Option<f64>, _>("response_time_ms"),
            event.response_time_ms
        );
        let kind = event.error.as_ref().map(|e| e.kind.as_str().to_owned());
        assert_eq!(row.get::<Option<String>, _>("error_kind"), kind);
        assert_eq!(
            row.get::<Option<String>, _>("location").as_deref(),
            Some("pipeline-test")
        );
        let stored: Value = row.get("request_info");
        let published: Value = serde_json::from_slice(raw).expect("JSON");
        assert_eq!(stored, published, "request_info is the whole event");
        seen_kinds.insert(
            kind.unwrap_or_else(|| {
                format!("{}:{}", event.status_code.unwrap_or_default(), event.up)
            }),
        );
    }
    for expected in [
        "200:true",
        "200:false",
        "404:false",
        "500:false",
        "connect",
        "dns",
    ] {
        assert!(
            seen_kinds.contains(expected),
            "no stored check of kind {expected}: {seen_kinds:?}"
        );
    }

    let stored_offsets: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT kafka_partition_id, next_offset FROM sync_offsets WHERE kafka_topic = $1 ORDER BY 1",
    )
    .bind(&topic)
    .fetch_all(&db.pool)
    .await
    .expect("reads the offsets");
    for (partition, next) in stored_offsets {
        let in_topic = records.keys().filter(|(p, _)| *p == partition).count() as i64;
        assert_eq!(
            next, in_topic,
            "partition {partition}: the stored offset is the end"
        );
    }
    kafka::delete_topic(&client, &topic).await.expect("deletes");
    db.drop_database().await;
}
