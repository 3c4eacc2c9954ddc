//! The alert service's benchmark (`scripts/bench-alert-service` runs it; BENCHMARKS.md,
//! "Alert service").
//!
//! 1. **Keeps up**: a 6-partition topic preloaded with `EVENTS` (default 200,000) events of
//!    1,000 sites; `SITEMON_BIN sync` empties it into a fresh database (clock from start to
//!    lag zero), then `SITEMON_BIN alert --alert-start earliest` reads the same topic (its
//!    own offsets) to lag zero. Both rates, and the ratio alert / sync (target ≥ 1).
//! 2. **Latency**: on a fresh topic, `SITEMON_BIN alert` with its default settings (3
//!    failures, fetches of 64 KiB or 250 ms, batches of 100 ms) and a webhook channel to a
//!    receiver on 127.0.0.1. Every site's first two failures are produced ahead; then, at
//!    `RATE` per second (default 50), each site's third failure: the event that crosses the
//!    threshold. Latency = the webhook request's arrival − the moment that event's produce
//!    call returned (so the broker's acknowledgement is not counted). p50, p99 and max over
//!    `INCIDENTS` (default 1,000) incidents (target p99 < 1 s). The webhook goes to a receiver
//!    that answers at once: the figure is sitemon's share, not a receiver's.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rskafka::client::Client;
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::record::Record;
use sitemon_core::{CheckEvent, DatabaseConfig};
use sitemon_testkit::events::fleet_event;
use sitemon_testkit::receiver::Receiver;
use sitemon_testkit::{admin_pool, kafka_config, services, unique_name, url_with_database};
use sqlx::PgPool;

const PARTITIONS: i32 = 6;
const SITES: i32 = 1_000;
const PRODUCE_BATCH: usize = 500;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let events: usize = env_or("EVENTS", 200_000);
    let incidents: usize = env_or::<usize>("INCIDENTS", 1_000).min(SITES as usize);
    let rate: f64 = env_or("RATE", 50.0);
    let bin = std::env::var("SITEMON_BIN").unwrap_or_else(|_| "target/release/sitemon".into());

    let name = unique_name("sitemon_bench_alert");
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
        "INSERT INTO websites (url) SELECT 'https://site-' || i || '.example/' \
         FROM generate_series(1, $1) i",
    )
    .bind(SITES)
    .execute(&pool)
    .await
    .expect("sites");

    // 1. Keeping up with the sync on one preloaded topic.
    let topic = unique_name("sitemon-bench-alert");
    let client = sitemon_core::kafka::connect(&kafka_config(&topic))
        .await
        .expect("kafka");
    sitemon_core::kafka::create_topic(&client, &topic, PARTITIONS, 1)
        .await
        .expect("topic");
    preload(&client, &topic, events).await;
    let sync_secs = drain(&bin, "sync", &[], &url, &topic, &pool, events).await;
    let alert_secs = drain(
        &bin,
        "alert",
        &["--alert-start", "earliest"],
        &url,
        &topic,
        &pool,
        events,
    )
    .await;
    let (sync_rate, alert_rate) = (events as f64 / sync_secs, events as f64 / alert_secs);
    println!("sitemon sync:  {events} events in {sync_secs:.2} s = {sync_rate:.0} events/s");
    println!("sitemon alert: {events} events in {alert_secs:.2} s = {alert_rate:.0} events/s");
    println!(
        "ratio alert / sync: {:.2} (target >= 1: one alert worker keeps up with the sync)",
        alert_rate / sync_rate
    );

    // 2. Latency from the crossing event to the webhook.
    let receiver = Receiver::ok().await;
    let added = Command::new(&bin)
        .args([
            "channel",
            "add",
            "bench",
            "--webhook",
            &receiver.url("/hook"),
        ])
        .env("DATABASE_URL", &url)
        .stdout(Stdio::null())
        .status()
        .expect("sitemon channel add");
    assert!(added.success(), "a webhook channel");
    let topic = unique_name("sitemon-bench-latency");
    sitemon_core::kafka::create_topic(&client, &topic, PARTITIONS, 1)
        .await
        .expect("topic");
    let partitions = partition_clients(&client, &topic).await;
    // From the earliest offset: a partition's reader starts a moment after its lease, and the
    // topic is new, so nothing produced meanwhile is skipped.
    let mut worker = start(&bin, "alert", &["--alert-start", "earliest"], &url, &topic);
    let group = sitemon_consume::lease_group("alert", &topic);
    let deadline = Instant::now() + Duration::from_secs(60);
    while sitemon_consume::lease::holders(&pool, &group)
        .await
        .expect("pg_locks")
        .len()
        < PARTITIONS as usize
    {
        assert!(Instant::now() < deadline, "the alert worker took no leases");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sites: Vec<i32> = (1..=incidents as i32).collect();
    let mut n = 0_u32;
    for _ in 0..2 {
        for &site in &sites {
            n += 1;
            produce(&partitions, failure(site, n)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut crossed: BTreeMap<i32, Instant> = BTreeMap::new();
    let every = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    for (i, &site) in sites.iter().enumerate() {
        tokio::time::sleep_until((started + every * i as u32).into()).await;
        n += 1;
        produce(&partitions, failure(site, n)).await;
        crossed.insert(site, Instant::now());
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let arrivals = loop {
        let arrivals: BTreeMap<i32, Instant> = receiver
            .received()
            .into_iter()
            .filter_map(|r| {
                let body = r.json();
                (body["kind"] == "down")
                    .then(|| Some((body["site"]["id"].as_i64()? as i32, r.at)))
                    .flatten()
            })
            .collect();
        if arrivals.len() >= incidents || Instant::now() > deadline {
            break arrivals;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop(&mut worker);
    let mut latencies: Vec<f64> = crossed
        .iter()
        .filter_map(|(site, at)| {
            let arrived = arrivals.get(site)?;
            Some(arrived.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "latency, crossing event produced -> webhook received, over {} of {incidents} incidents \
         at {rate}/s: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (target p99 < 1000 ms)",
        latencies.len(),
        pick(0.50),
        pick(0.99),
        pick(1.0)
    );

    pool.close().await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&admin)
        .await
        .expect("drop");
}

/// The check of `site` that fails, the `n`th of the run, checked now.
fn failure(site: i32, n: u32) -> CheckEvent {
    let mut event = sitemon_testkit::events::event(site, n);
    event.up = false;
    event.degraded = false;
    event.status_code = None;
    event.failed_assertion = None;
    event.tls_cert_not_after = None;
    event.location = "bench".into();
    event.checked_at = time::OffsetDateTime::now_utc();
    event.error = Some(sitemon_core::CheckError {
        kind: sitemon_core::ErrorKind::Connect,
        message: "connection refused".into(),
    });
    event
}

fn record(event: &CheckEvent) -> Record {
    Record {
        key: Some(event.kafka_key()),
        value: Some(event.to_json()),
        headers: BTreeMap::new(),
        timestamp: rskafka::chrono::Utc::now(),
    }
}

async fn partition_clients(client: &Client, topic: &str) -> Vec<Arc<PartitionClient>> {
    let mut clients = Vec::new();
    for partition in 0..PARTITIONS {
        clients.push(Arc::new(
            client
                .partition_client(topic.to_owned(), partition, UnknownTopicHandling::Retry)
                .await
                .expect("partition client"),
        ));
    }
    clients
}

/// Produces one event to its site's partition (every event of a site in one partition).
async fn produce(partitions: &[Arc<PartitionClient>], event: CheckEvent) {
    let partition = &partitions[(event.website_id % PARTITIONS) as usize];
    partition
        .produce(vec![record(&event)], Compression::NoCompression)
        .await
        .expect("produce");
}

async fn preload(client: &Client, topic: &str, events: usize) {
    let started = Instant::now();
    let partitions = partition_clients(client, topic).await;
    let mut producers = Vec::new();
    for (partition, partition_client) in partitions.into_iter().enumerate() {
        let share = events / PARTITIONS as usize + usize::from(partition < events % 6);
        producers.push(tokio::spawn(async move {
            let mut n = 0;
            while n < share {
                let records: Vec<Record> = (n..share.min(n + PRODUCE_BATCH))
                    .map(|i| {
                        let site = (i as i32 % (SITES / PARTITIONS)) * PARTITIONS
                            + if partition == 0 {
                                PARTITIONS
                            } else {
                                partition as i32
                            };
                        record(&fleet_event(site, i as u32))
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
}

fn start(bin: &str, command: &str, args: &[&str], url: &str, topic: &str) -> Child {
    Command::new(bin)
        .arg(command)
        .args(args)
        .env("DATABASE_URL", url)
        .env("KAFKA_BROKERS", &services().kafka_brokers)
        .env("KAFKA_TOPIC", topic)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"))
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Runs `bin command` on the topic until its consumer's stored offsets cover `events`;
/// returns the seconds from its start.
async fn drain(
    bin: &str,
    command: &str,
    args: &[&str],
    url: &str,
    topic: &str,
    pool: &PgPool,
    events: usize,
) -> f64 {
    let started = Instant::now();
    let mut child = start(bin, command, args, url, topic);
    loop {
        let stored: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(next_offset), 0)::bigint FROM sync_offsets \
             WHERE consumer = $1 AND kafka_topic = $2",
        )
        .bind(command)
        .bind(topic)
        .fetch_one(pool)
        .await
        .expect("offsets");
        if stored as usize >= events {
            break;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "sitemon {command} exited early"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    stop(&mut child);
    secs
}
