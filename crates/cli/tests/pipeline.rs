//! The whole pipeline: `sitemon check` → the real Kafka → `sitemon sync` → the real
//! PostgreSQL. Every event in the topic must be exactly one row, field for field.

mod support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rskafka::client::partition::UnknownTopicHandling;
use serde_json::Value;
use sitemon_core::CheckEvent;
use sitemon_core::kafka;
use sitemon_testkit::{TestDb, kafka_config, random_topic};
use sqlx::Row as _;
use support::sitemon;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        let output = child.wait_with_output().expect("waits");
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

/// Serves `/ok...` (200 "all ok"), `/missing` (404) and anything else 500.
async fn http_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0_u8; 4096];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if request.starts_with("GET /ok") {
                    ("200 OK", "all ok")
                } else if request.starts_with("GET /missing ") {
                    ("404 Not Found", "no")
                } else {
                    ("500 Internal Server Error", "broken")
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// Every record of the topic as (partition, offset) → event bytes.
async fn topic_records(topic: &str) -> HashMap<(i32, i64), Vec<u8>> {
    let client = kafka::connect(&kafka_config(topic))
        .await
        .expect("connects");
    let mut records = HashMap::new();
    for partition in 0..PARTITIONS {
        let partition_client = client
            .partition_client(topic, partition, UnknownTopicHandling::Error)
            .await
            .expect("partition client");
        let mut offset = 0;
        loop {
            let (batch, high_watermark) = partition_client
                .fetch_records(offset, 1..10_000_000, 500)
                .await
                .expect("fetches");
            for record in batch {
                offset = record.offset + 1;
                records.insert(
                    (partition, record.offset),
                    record.record.value.expect("a value"),
                );
            }
            if offset >= high_watermark {
                break;
            }
        }
    }
    records
}

async fn stored_rows(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM website_status")
        .fetch_one(&db.pool)
        .await
        .expect("counts")
}

#[tokio::test]
async fn every_checked_event_becomes_exactly_one_row() {
    let db = TestDb::migrated().await;
    let topic = random_topic();
    let client = kafka::connect(&kafka_config(&topic))
        .await
        .expect("connects");
    kafka::create_topic(&client, &topic, PARTITIONS, 1)
        .await
        .expect("creates the topic");
    let server = http_server().await;
    let sites = [
        (format!("http://{server}/ok"), Some("all ok")),
        (
            format!("http://{server}/ok?mismatch"),
            Some("nothing like this"),
        ),
        (format!("http://{server}/missing"), None),
        (format!("http://{server}/broken"), None),
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
    let records = topic_records(&topic).await;
    assert!(
        records.len() >= sites.len() * 4,
        "about 8 checks of each of {} sites were expected, the topic has {}",
        sites.len(),
        records.len()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while stored_rows(&db).await < records.len() as i64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sync stored {} of {} events in 60 s",
            stored_rows(&db).await,
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, log) = sync.stop();
    assert_eq!(status, Some(0), "the sync stops cleanly: {log}");

    let rejects: i64 = sqlx::query_scalar("SELECT count(*) FROM website_status_rejects")
        .fetch_one(&db.pool)
        .await
        .expect("counts");
    assert_eq!(rejects, 0, "every event of a registered site is stored");

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
