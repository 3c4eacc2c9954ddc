//! What the sync's integration tests share: a database and a topic of the test's own,
//! realistic events, producing, and waiting for the sync to catch up.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::time::Duration;

use rskafka::client::Client;
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::record::Record;
use sitemon_core::event::EVENT_SCHEMA_VERSION;
use sitemon_core::{CheckError, CheckEvent, DatabaseConfig, ErrorKind, NewSite, ProbeTimings};
use sitemon_sync::SyncConfig;
use sitemon_testkit::{TestDb, kafka_config, random_topic};
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The most a test waits for the sync to store what was produced: a bound against hanging,
/// not a speed requirement.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// A Kafka message's key and value.
pub type KeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

/// A database, a topic and a producer of the test's own.
pub struct Fixture {
    pub db: TestDb,
    pub topic: String,
    pub client: Client,
    pub partitions: i32,
}

impl Fixture {
    pub async fn new(partitions: i32) -> Self {
        let db = TestDb::migrated().await;
        let topic = random_topic();
        let client = sitemon_core::kafka::connect(&kafka_config(&topic))
            .await
            .unwrap_or_else(|e| panic!("{e}: {}", sitemon_testkit::HOW_TO_START));
        sitemon_core::kafka::create_topic(&client, &topic, partitions, 1)
            .await
            .expect("topic created");
        Self {
            db,
            topic,
            client,
            partitions,
        }
    }

    /// Registers `n` sites and returns their ids.
    pub async fn sites(&self, n: usize) -> Vec<i32> {
        let mut ids = Vec::new();
        for i in 0..n {
            let site =
                NewSite::new(&format!("http://127.0.0.1:9/site-{i}"), 5, None).expect("valid site");
            ids.push(
                sitemon_core::db::insert_site(&self.db.pool, &site)
                    .await
                    .expect("site added"),
            );
        }
        ids
    }

    /// The sync's configuration for this fixture: small batches, quick to notice partitions.
    pub fn config(&self) -> SyncConfig {
        let mut config = SyncConfig::new(
            DatabaseConfig::from_url(&self.db.url).expect("test URL parses"),
            kafka_config(&self.topic),
        );
        config.batch_size = 100;
        config.batch_wait = Duration::from_millis(50);
        config.progress_every = Duration::from_secs(1);
        config.partition_poll_every = Duration::from_millis(500);
        config
    }

    /// Starts the sync in this process.
    pub fn start(&self, config: SyncConfig) -> RunningSync {
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(sitemon_sync::run(config, shutdown.clone()));
        RunningSync { shutdown, handle }
    }

    /// Produces values (with keys) to one partition; returns their offsets.
    pub async fn produce(&self, partition: i32, messages: Vec<KeyValue>) -> Vec<i64> {
        // A partition added a moment ago may be missing from a client's metadata: ask again,
        // with a fresh client.
        let mut attempts = 0;
        let client = loop {
            let fresh;
            let client = if attempts == 0 {
                &self.client
            } else {
                fresh = sitemon_core::kafka::connect(&kafka_config(&self.topic))
                    .await
                    .expect("connect");
                &fresh
            };
            match client
                .partition_client(self.topic.clone(), partition, UnknownTopicHandling::Retry)
                .await
            {
                Ok(client) => break client,
                Err(e) if attempts < 40 => {
                    attempts += 1;
                    retry_pause(e).await;
                }
                Err(e) => panic!("no client for partition {partition}: {e}"),
            }
        };
        let records = messages
            .into_iter()
            .map(|(key, value)| Record {
                key,
                value,
                headers: BTreeMap::new(),
                timestamp: now(),
            })
            .collect();
        tokio::time::timeout(
            Duration::from_secs(30),
            client.produce(records, Compression::NoCompression),
        )
        .await
        .expect("produce in time")
        .expect("produced")
    }

    /// Produces events, each to the partition its site id hashes to (as the checker does).
    pub async fn produce_events(&self, events: &[CheckEvent]) {
        let mut by_partition: BTreeMap<i32, Vec<_>> = BTreeMap::new();
        for event in events {
            by_partition
                .entry(event.website_id.rem_euclid(self.partitions))
                .or_default()
                .push((Some(event.kafka_key()), Some(event.to_json())));
        }
        for (partition, messages) in by_partition {
            self.produce(partition, messages).await;
        }
    }

    /// Waits until the stored offsets add up to `messages`.
    pub async fn wait_for_stored(&self, messages: i64) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            // While PostgreSQL restarts the question may fail: ask again.
            let Ok(offsets) = self.try_stored_offsets().await else {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "PostgreSQL did not come back"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let stored = offsets.values().sum::<i64>();
            if stored == messages {
                return;
            }
            assert!(
                stored < messages,
                "stored {stored} offsets, only {messages} produced"
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "the sync stored {stored} of {messages} messages within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The stored next offset of each partition.
    pub async fn stored_offsets(&self) -> BTreeMap<i32, i64> {
        self.try_stored_offsets().await.expect("offsets")
    }

    pub async fn try_stored_offsets(&self) -> Result<BTreeMap<i32, i64>, sqlx::Error> {
        let rows = sqlx::query_as::<_, (i32, i64)>(
            "SELECT kafka_partition_id, next_offset FROM sync_offsets WHERE kafka_topic = $1",
        )
        .bind(&self.topic)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} WHERE kafka_topic = $1"
        ))
        .bind(&self.topic)
        .fetch_one(&self.db.pool)
        .await
        .expect("count")
    }

    /// Every reject as (partition, offset, reason).
    pub async fn rejects(&self) -> Vec<(i32, i64, String)> {
        sqlx::query_as(
            "SELECT kafka_partition_id, kafka_offset_id, reason FROM website_status_rejects
             WHERE kafka_topic = $1 ORDER BY 1, 2",
        )
        .bind(&self.topic)
        .fetch_all(&self.db.pool)
        .await
        .expect("rejects")
    }

    pub async fn finish(self) {
        if let Ok(controller) = self.client.controller_client() {
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                controller.delete_topic(&self.topic, 30_000),
            )
            .await;
        }
        self.db.drop_database().await;
    }
}

/// A sync running in this process.
pub struct RunningSync {
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<sitemon_sync::Result<()>>,
}

impl RunningSync {
    /// Stops the sync and checks that it stopped cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("the sync stops")
            .expect("the sync task did not panic")
            .expect("the sync returns Ok");
    }
}

/// A realistic event of `website_id`: up or down, with or without TLS, with an error now
/// and then, according to `n`.
pub fn event(website_id: i32, n: u32) -> CheckEvent {
    let failed = n % 7 == 3;
    let tls = n % 2 == 0;
    let total = 5.0 + f64::from(n % 400) * 1.25;
    CheckEvent {
        schema: EVENT_SCHEMA_VERSION,
        check_id: Uuid::now_v7(),
        website_id,
        url: format!("https://site-{website_id}.example/health"),
        location: ["eu-north", "us-east"][n as usize % 2].to_owned(),
        checked_at: OffsetDateTime::now_utc()
            .replace_nanosecond(n % 1_000 * 1_000)
            .expect("valid"),
        up: !failed && n % 5 != 0,
        status_code: (!failed).then_some([200, 200, 503, 404, 301][n as usize % 5]),
        response_time_ms: (!failed).then_some(total),
        regex: (n % 3 == 0).then(|| "ok|healthy".to_owned()),
        regex_matched: (n % 3 == 0 && !failed).then_some(n % 5 != 0),
        error: failed.then(|| CheckError {
            kind: [ErrorKind::Connect, ErrorKind::Timeout, ErrorKind::Tls][n as usize % 3],
            message: "connection refused (os error 111)".to_owned(),
        }),
        timings_ms: ProbeTimings {
            dns: Some(0.4),
            connect: Some(1.2),
            tls: tls.then_some(7.5),
            ttfb: (!failed).then_some(total - 1.0),
            total,
        },
        redirects: n % 2,
        final_url: (!failed).then(|| format!("https://site-{website_id}.example/health/")),
        tls_cert_not_after: tls.then_some(time::macros::datetime!(2027-03-01 12:00 UTC)),
    }
}

/// Grows the topic to `partitions` with Kafka's Admin client (rskafka cannot), using the
/// jars of the broker that `scripts/services` runs.
pub fn add_partitions(topic: &str, partitions: i32) {
    let services = sitemon_testkit::services();
    let state = services
        .cert_dir
        .parent()
        .expect("the certificates live in the services' state folder");
    let pid = std::fs::read_to_string(state.join("run/kafka.pid"))
        .unwrap_or_else(|e| panic!("no Kafka pid file in {}: {e}", state.display()));
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.trim()))
        .unwrap_or_else(|e| panic!("Kafka (pid {}) is not running: {e}", pid.trim()));
    let classpath = cmdline
        .split(|b| *b == 0)
        .map(String::from_utf8_lossy)
        .find(|arg| arg.ends_with("/libs/*"))
        .expect("the broker's command line names its jars")
        .into_owned();
    let source = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/AddPartitions.java"
    );
    let output = std::process::Command::new("java")
        .args(["-cp", &classpath, source, &services.kafka_brokers, topic])
        .arg(partitions.to_string())
        .output()
        .expect("java runs");
    assert!(
        output.status.success(),
        "adding partitions failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Now, as rskafka's timestamp (its chrono has no clock).
pub fn now() -> rskafka::chrono::DateTime<rskafka::chrono::Utc> {
    let millis = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    rskafka::chrono::DateTime::from_timestamp_millis(millis as i64).expect("a valid time")
}

async fn retry_pause(_error: rskafka::client::error::Error) {
    tokio::time::sleep(Duration::from_millis(250)).await;
}
