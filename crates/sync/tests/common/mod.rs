//! What the sync's integration tests share: a database and a topic of the test's own,
//! producing to it, and the sync running on them (the events and the waiting come from
//! `sitemon-testkit`).

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::time::Duration;

use rskafka::client::Client;
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::record::Record;
use sitemon_core::{CheckEvent, DatabaseConfig};
use sitemon_sync::SyncConfig;
pub use sitemon_testkit::events::event;
use sitemon_testkit::service::Running;
use sitemon_testkit::{TestDb, kafka_config, random_topic};
use time::OffsetDateTime;

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
        let client = sitemon_testkit::topic::create(&topic, partitions).await;
        Self {
            db,
            topic,
            client,
            partitions,
        }
    }

    /// Registers `n` sites and returns their ids.
    pub async fn sites(&self, n: usize) -> Vec<i32> {
        self.db.add_sites(n).await
    }

    /// The sync's configuration for this fixture: small batches, quick to notice partitions.
    pub fn config(&self) -> SyncConfig {
        let mut config = SyncConfig::new(
            DatabaseConfig::from_url(&self.db.url).expect("test URL parses"),
            kafka_config(&self.topic),
        );
        config.consumer.batch_size = 100;
        config.consumer.batch_wait = Duration::from_millis(50);
        config.consumer.progress_every = Duration::from_secs(1);
        config.consumer.partition_poll_every = Duration::from_millis(500);
        config
    }

    /// Starts the sync in this process.
    pub fn start(&self, config: SyncConfig) -> RunningSync {
        Running::spawn("the sync", |shutdown| sitemon_sync::run(config, shutdown))
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
        sitemon_testkit::stored::wait_for(&self.db.pool, &self.topic, messages, PATIENCE).await;
    }

    /// Asserts that the sync stored each message exactly once: `events` rows, `rejects`
    /// rejects.
    pub async fn assert_stored_exactly_once(&self, events: i64, rejects: i64) {
        sitemon_testkit::stored::assert_exactly_once(&self.db.pool, &self.topic, events, rejects)
            .await;
    }

    /// The stored next offset of each partition.
    pub async fn stored_offsets(&self) -> BTreeMap<i32, i64> {
        let rows = sqlx::query_as::<_, (i32, i64)>(
            "SELECT kafka_partition_id, next_offset FROM sync_offsets WHERE kafka_topic = $1",
        )
        .bind(&self.topic)
        .fetch_all(&self.db.pool)
        .await
        .expect("offsets");
        rows.into_iter().collect()
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

/// Events `from..from + per_site` of each of `sites`, site by site.
pub fn events(sites: &[i32], from: u32, per_site: u32) -> Vec<CheckEvent> {
    sites
        .iter()
        .flat_map(|&site| (from..from + per_site).map(move |n| event(site, n)))
        .collect()
}

/// A sync running in this process.
pub type RunningSync = Running<sitemon_sync::Error>;

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
    let java = std::process::Command::new("java")
        .args(["-cp", &classpath, source, &services.kafka_brokers, topic])
        .arg(partitions.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("java runs");
    let java_pid = java.id().to_string();
    let (done, output) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(java.wait_with_output());
    });
    let output = match output.recv_timeout(Duration::from_secs(120)) {
        Ok(output) => output.expect("java's output"),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &java_pid])
                .status();
            panic!("adding partitions with Kafka's Admin client took over 120 s");
        }
    };
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
