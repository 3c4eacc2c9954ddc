//! What the checker's integration tests share: the checker running in the test, its
//! configuration, and reading its events back from the real topic (the HTTP server comes from
//! `sitemon-testkit`).

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rskafka::client::Client;
use sitemon_checker::CheckerConfig;
use sitemon_core::{CheckEvent, DatabaseConfig, KafkaConfig, NewSite, db};
use sitemon_testkit::http::TestServer;
use sitemon_testkit::service::Running;
use sitemon_testkit::{TestDb, random_topic};

/// What most checker tests start with: logging, a database and a topic of their own, a local
/// HTTP server for the sites, and a client to read the topic back.
pub async fn fixture() -> (TestDb, String, TestServer, Client) {
    init_logging();
    let topic = random_topic();
    let client = sitemon_testkit::topic::client(&topic).await;
    (
        TestDb::migrated().await,
        topic,
        TestServer::http().await,
        client,
    )
}

/// A checker running in this process.
pub type RunningChecker = Running<sitemon_checker::Error>;

/// Starts the checker in this process.
pub fn start_checker(config: CheckerConfig) -> RunningChecker {
    Running::spawn("the checker", |shutdown| {
        sitemon_checker::run(config, shutdown)
    })
}

/// Registers a site through the library, as `sitemon add-site` does.
pub async fn add_site(db: &TestDb, url: &str, interval: i64, regex: Option<&str>) -> i32 {
    db::insert_site(
        &db.pool,
        &NewSite::new(url, interval, regex).expect("valid site"),
    )
    .await
    .expect("insert")
}

/// A checker configuration for a test database and topic, quick to notice changes.
pub fn checker_config(db: &TestDb, kafka: KafkaConfig) -> CheckerConfig {
    let mut config = CheckerConfig::new(DatabaseConfig::from_url(&db.url).expect("db url"), kafka);
    config.location = "test-location".into();
    config.progress_every = Duration::from_secs(1);
    config.flush_timeout = Duration::from_secs(20);
    config
}

/// An event read back from the topic, with where it was.
#[derive(Debug, Clone)]
pub struct Stored {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub event: CheckEvent,
}

/// Every event in the topic so far.
pub async fn read_all(client: &Client, topic: &str) -> Vec<Stored> {
    sitemon_testkit::topic::read(client, topic)
        .await
        .expect("the topic exists")
        .into_iter()
        .map(|record| {
            let value = record.value.unwrap_or_default();
            let event = CheckEvent::from_json(&value).expect("every record is an event");
            Stored {
                partition: record.partition,
                offset: record.offset,
                key: record.key.unwrap_or_default(),
                value,
                event,
            }
        })
        .collect()
}

/// Polls the topic until `done` says the events suffice, for at most `within`.
pub async fn wait_for_events(
    client: &Client,
    topic: &str,
    within: Duration,
    done: impl Fn(&[Stored]) -> bool,
) -> Vec<Stored> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let events = match sitemon_core::kafka::partition_count(client, topic).await {
            Ok(Some(_)) => read_all(client, topic).await,
            _ => Vec::new(),
        };
        if done(&events) || tokio::time::Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The checks of `site`, in check order, each once (the broker may keep a batch twice).
pub fn checks_of(events: &[Stored], site: i32) -> Vec<CheckEvent> {
    let mut checks: Vec<CheckEvent> = events
        .iter()
        .map(|s| s.event.clone())
        .filter(|e| e.website_id == site)
        .collect();
    checks.sort_by_key(|e| e.checked_at);
    checks.dedup_by_key(|e| e.check_id);
    checks
}

/// The events of each site, in topic order.
pub fn by_site(events: &[Stored]) -> HashMap<i32, Vec<Stored>> {
    let mut map: HashMap<i32, Vec<Stored>> = HashMap::new();
    for stored in events {
        map.entry(stored.event.website_id)
            .or_default()
            .push(stored.clone());
    }
    for list in map.values_mut() {
        list.sort_by_key(|s| s.event.checked_at);
    }
    map
}

/// The checker's `sitemon_checker_skipped_ticks_total`, from the registry it was given
/// ([`CheckerConfig::metrics`]).
pub fn skipped_ticks(metrics: &sitemon_core::metrics::Registry) -> u64 {
    counter(metrics, "sitemon_checker_skipped_ticks_total")
}

/// One of the checker's counters (a single series), from the registry it was given.
pub fn counter(metrics: &sitemon_core::metrics::Registry, name: &str) -> u64 {
    let text = metrics.render();
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix('{')?;
            rest.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .map(|value| value as u64)
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// Everything logged in this process, for a test to read: a test binary of its own installs
/// it as the process's log subscriber ([`Captured::install`]).
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Installs a subscriber that logs into the returned buffer (info, without colours).
    ///
    /// # Panics
    /// When the process already has a subscriber.
    pub fn install() -> Self {
        let log = Self::default();
        tracing_subscriber::fmt()
            .with_env_filter("info,rskafka=warn,sqlx=warn")
            .with_ansi(false)
            .with_writer({
                let log = log.clone();
                move || log.clone()
            })
            .init();
        log
    }

    /// What was logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log")).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Logs to the test output (`--nocapture` shows them).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,rskafka=warn,sqlx=warn")
        .with_test_writer()
        .try_init();
}
