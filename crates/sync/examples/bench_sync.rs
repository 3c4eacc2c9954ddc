//! The sync's benchmark: how fast `sitemon sync` empties a preloaded topic, against the
//! ceiling of `COPY`ing the same rows into the same table. `scripts/bench-sync` runs it.
//!
//! 1. A fresh database with 1,000 sites, and a 6-partition topic preloaded with `EVENTS`
//!    (default 1,000,000) realistic events, keyed and partitioned as the checker does.
//! 2. `SITEMON_BIN sync` (a release build) from an empty database; the clock runs from its
//!    start until the stored offsets cover the whole topic (lag zero). Peak RSS is the
//!    process's `VmHWM`.
//! 3. The ceiling: the rows it stored, written to a file with `\copy … TO`, the table
//!    emptied, and the file loaded back with `\copy … FROM` (psql), timed.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::record::Record;
use sitemon_core::DatabaseConfig;
use sitemon_testkit::events::fleet_event;
use sitemon_testkit::{admin_pool, kafka_config, services, unique_name, url_with_database};

const PARTITIONS: i32 = 6;
const SITES: i32 = 1_000;
/// Events per produce request: under the broker's 1 MiB message limit (2,000 events of today's
/// size are more).
const PRODUCE_BATCH: usize = 500;

#[tokio::main]
async fn main() {
    let events: usize = std::env::var("EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let bin = std::env::var("SITEMON_BIN").unwrap_or_else(|_| "target/release/sitemon".into());

    // 1. Database and topic.
    let name = unique_name("sitemon_bench");
    let admin = admin_pool().await;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create the bench database");
    let url = url_with_database(&services().database_url, &name);
    let pool = sitemon_core::db::connect(&DatabaseConfig::from_url(&url).expect("url"), 2)
        .await
        .expect("connect");
    sitemon_core::db::migrate(&pool).await.expect("migrate");
    sqlx::query(
        "INSERT INTO websites (url) SELECT 'https://site-' || i || '.example/' FROM generate_series(1, $1) i",
    )
    .bind(SITES)
    .execute(&pool)
    .await
    .expect("sites");
    let topic = unique_name("sitemon-bench");
    let client = sitemon_core::kafka::connect(&kafka_config(&topic))
        .await
        .expect("kafka");
    sitemon_core::kafka::create_topic(&client, &topic, PARTITIONS, 1)
        .await
        .expect("topic");
    let started = Instant::now();
    let mut producers = Vec::new();
    for partition in 0..PARTITIONS {
        let partition_client = client
            .partition_client(topic.clone(), partition, UnknownTopicHandling::Retry)
            .await
            .expect("partition client");
        let share = events / PARTITIONS as usize
            + usize::from((partition as usize) < events % PARTITIONS as usize);
        producers.push(tokio::spawn(async move {
            let mut n = 0;
            while n < share {
                let records: Vec<Record> = (n..share.min(n + PRODUCE_BATCH))
                    .map(|i| {
                        // Site ids that are `partition` modulo 6, as the tests key them.
                        let site = (i as i32 % (SITES / PARTITIONS)) * PARTITIONS
                            + if partition == 0 {
                                PARTITIONS
                            } else {
                                partition
                            };
                        let event = fleet_event(site, i as u32);
                        Record {
                            key: Some(event.kafka_key()),
                            value: Some(event.to_json()),
                            headers: BTreeMap::new(),
                            timestamp: rskafka::chrono::DateTime::from_timestamp_millis(
                                event.checked_at.unix_timestamp() * 1000,
                            )
                            .expect("time"),
                        }
                    })
                    .collect();
                n += records.len();
                partition_client
                    .produce(records, Compression::NoCompression)
                    .await
                    .expect("produce");
            }
        }));
    }
    for producer in producers {
        producer.await.expect("producer");
    }
    println!(
        "preloaded {events} events into {PARTITIONS} partitions of {topic} in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // 2. The sync, from an empty database until the lag is zero.
    let started = Instant::now();
    let mut child = Command::new(&bin)
        .arg("sync")
        .env("DATABASE_URL", &url)
        .env("KAFKA_BROKERS", &services().kafka_brokers)
        .env("KAFKA_TOPIC", &topic)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let mut peak_rss_kib = 0;
    loop {
        let stored: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(next_offset), 0)::bigint FROM sync_offsets WHERE kafka_topic = $1",
        )
        .bind(&topic)
        .fetch_one(&pool)
        .await
        .expect("offsets");
        peak_rss_kib = peak_rss_kib.max(vm_hwm_kib(child.id()));
        if stored as usize >= events {
            break;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the sync exited early"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sync_secs = started.elapsed().as_secs_f64();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("sync exits");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM website_status")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows as usize, events, "every event is a row");
    let sync_rate = events as f64 / sync_secs;
    println!(
        "sitemon sync: {events} events in {sync_secs:.2} s = {sync_rate:.0} events/s, \
         peak RSS {:.1} MiB, sync {status}",
        peak_rss_kib as f64 / 1024.0
    );

    // 3. The ceiling: the same rows from a file with COPY.
    let file = std::env::temp_dir().join(format!("{name}.copy"));
    psql(
        &url,
        &format!(
            "\\copy (SELECT * FROM website_status) TO '{}'",
            file.display()
        ),
    );
    sqlx::query("TRUNCATE website_status")
        .execute(&pool)
        .await
        .expect("truncate");
    sqlx::query("CHECKPOINT").execute(&pool).await.ok();
    let started = Instant::now();
    psql(
        &url,
        &format!("\\copy website_status FROM '{}'", file.display()),
    );
    let copy_secs = started.elapsed().as_secs_f64();
    let copy_rate = events as f64 / copy_secs;
    println!("COPY from a file: {events} rows in {copy_secs:.2} s = {copy_rate:.0} rows/s");
    println!(
        "ratio sync / COPY: {:.2} (target >= 0.5)",
        sync_rate / copy_rate
    );

    let _ = std::fs::remove_file(&file);
    pool.close().await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&admin)
        .await
        .expect("drop");
    if let Ok(controller) = client.controller_client() {
        let _ = controller.delete_topic(&topic, 30_000).await;
    }
}

fn psql(url: &str, command: &str) {
    let status = Command::new("psql")
        .args([url, "-q", "-v", "ON_ERROR_STOP=1", "-c", command])
        .stdout(Stdio::null())
        .status()
        .expect("psql runs");
    assert!(status.success(), "psql {command} failed");
}

/// The process's peak resident set (`VmHWM`), in KiB; 0 once it is gone.
fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
