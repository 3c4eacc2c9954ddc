//! The checker: checks every registered site on its own interval and publishes one
//! [`CheckEvent`](sitemon_core::CheckEvent) per check to Kafka.
//!
//! Each check is an HTTP GET over a fresh connection (DNS, TCP, TLS and time to first byte
//! timed separately), follows up to 5 redirects, reads the body up to a cap and searches it
//! with the site's regex. Sites are checked start to start on their interval, the first
//! checks spread over it; the list follows the `websites` table within seconds. Events are
//! keyed by site id and partitioned as Kafka's own clients would; while Kafka is away they
//! wait in a bounded buffer.
//!
//! # Layout
//! - [`run`]: the entry point; connects, then schedules, checks and publishes until the
//!   shutdown token is cancelled, then drains.
//! - [`config`]: [`CheckerConfig`] and its defaults.
//! - `sites`: the site list, following the table (LISTEN/NOTIFY plus periodic reloads);
//!   URLs and regexes are parsed once per change of a row.
//! - `schedule`: when each site is due; bounded concurrency; missed ticks skipped.
//! - `check` and `probe`: one check, from the planned start to the event.
//! - `tls_expiry`: the leaf certificate's `notAfter`, from its DER.
//! - `producer`: per-partition lanes over rskafka's `BatchProducer`, the bounded buffer.
//! - [`partitioner`]: Kafka's murmur2 key partitioner.
//! - `stats`: counters and the schedule-lag histogram behind the progress line.
//! - [`error`]: this crate's [`Error`].
//!
//! # Example
//! Run a checker inside another service, stopping it with the service:
//! ```no_run
//! use sitemon_checker::CheckerConfig;
//! use sitemon_core::{DatabaseConfig, KafkaConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let database = DatabaseConfig::from_url("postgres://sitemon:sitemon@127.0.0.1/sitemon")?;
//! let kafka = KafkaConfig::plaintext("127.0.0.1:9092", "website_status")?;
//! let mut config = CheckerConfig::new(database, kafka);
//! config.location = "eu-north".into();
//!
//! let shutdown = CancellationToken::new();
//! let checker = tokio::spawn(sitemon_checker::run(config, shutdown.clone()));
//! // ... later, when the service stops:
//! shutdown.cancel();
//! checker.await??;
//! # Ok(())
//! # }
//! ```

mod check;
pub mod config;
pub mod error;
pub mod partitioner;
mod probe;
mod producer;
mod schedule;
mod sites;
mod stats;
mod tls_expiry;

use std::sync::Arc;
use std::time::Duration;

use sitemon_core::kafka::{self, TopicCreation};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{CheckerConfig, Compression};
pub use error::{Error, Result};

use crate::check::Checks;
use crate::producer::{Producer, ProducerSettings};
use crate::schedule::Scheduler;
use crate::stats::Stats;

/// The deadline rskafka's own retries get for one request; our lanes retry beyond it.
const KAFKA_RETRY_DEADLINE: Duration = Duration::from_secs(10);

/// Runs the checker until `shutdown` is cancelled.
///
/// Connects to PostgreSQL and Kafka (creating the topic if it is missing), then checks every
/// site on its interval and publishes the events. On `shutdown` it stops scheduling, lets the
/// checks in flight finish (each is bounded by its timeout), delivers the buffered events
/// (for at most [`CheckerConfig::flush_timeout`]) and returns.
///
/// # Errors
/// Only for what prevents starting: an invalid configuration, a database or broker that
/// cannot be reached, a missing topic that cannot be created. Failed checks are events, and
/// Kafka or PostgreSQL going away while running is waited out.
pub async fn run(config: CheckerConfig, shutdown: CancellationToken) -> Result<()> {
    config.validate()?;
    let prober =
        probe::Prober::new(config.max_body_bytes, &config.extra_root_certs).map_err(|reason| {
            Error::Config {
                setting: "extra_root_certs",
                reason,
            }
        })?;

    let pool = sitemon_core::db::connect(&config.database, 2).await?;
    let listener = sites::listen(&pool).await.map_err(|reason| Error::Listen {
        target: config.database.target().to_owned(),
        reason,
    })?;
    let mut book = sites::SiteBook::default();
    let list = book.update(sites::load(&pool).await?);
    tracing::info!(sites = list.len(), "loaded the sites");

    let client = Arc::new(
        kafka::connect_with_backoff(&config.kafka, kafka::backoff(KAFKA_RETRY_DEADLINE)).await?,
    );
    let partitions = ensure_topic(&client, &config).await?;
    let stats = Arc::new(Stats::default());
    let (producer, lanes) = Producer::start(
        Arc::clone(&client),
        partitions,
        ProducerSettings {
            topic: config.kafka.topic.clone(),
            capacity: config.buffer_events,
            linger: config.linger,
            compression: config.compression,
            max_batch_bytes: config.max_batch_bytes,
        },
        Arc::clone(&stats),
    );
    tracing::info!(
        topic = %config.kafka.topic,
        partitions,
        location = %config.location,
        concurrency = config.concurrency,
        "checker started"
    );

    let (sites_tx, sites_rx) = watch::channel(list);
    let background = CancellationToken::new();
    let follower = tokio::spawn(sites::follow(
        pool.clone(),
        listener,
        book,
        sites_tx,
        config.reload_interval,
        background.clone(),
    ));
    let metadata = tokio::spawn(follow_partitions(
        Arc::clone(&client),
        config.kafka.topic.clone(),
        Arc::clone(&lanes),
        config.metadata_interval,
        background.clone(),
    ));
    let progress = tokio::spawn(log_progress(
        Arc::clone(&stats),
        producer.clone(),
        sites_rx.clone(),
        config.progress_interval,
        background.clone(),
    ));

    let flush_timeout = config.flush_timeout;
    let concurrency = config.concurrency;
    let checks = Arc::new(Checks {
        prober,
        producer: producer.clone(),
        config,
        stats: Arc::clone(&stats),
    });
    let in_flight = TaskTracker::new();
    let scheduler = Scheduler::new(concurrency, in_flight.clone(), Arc::clone(&stats), {
        move |site, _planned| {
            let checks = Arc::clone(&checks);
            // Boxed: the probe's state is only allocated while a check runs.
            Box::pin(async move { checks.run(&site).await })
        }
    });
    scheduler.run(sites_rx.clone(), shutdown).await;

    tracing::info!(
        checks_in_flight = in_flight.len(),
        "stopping: finishing the checks in flight"
    );
    in_flight.close();
    in_flight.wait().await;
    background.cancel();
    let _ = tokio::join!(follower, metadata, progress);
    tracing::info!(
        buffered = producer.buffered(),
        "flushing the events to Kafka"
    );
    let undelivered = lanes.close(flush_timeout).await;
    if undelivered > 0 {
        tracing::error!(
            undelivered,
            "Kafka did not take every event within {flush_timeout:?}; these events are lost"
        );
    }
    pool.close().await;
    let summary = stats.snapshot(sites_rx.borrow().len(), undelivered);
    tracing::info!("checker stopped: {summary}");
    Ok(())
}

/// The topic's partition count, creating the topic first if it is missing.
async fn ensure_topic(client: &rskafka::client::Client, config: &CheckerConfig) -> Result<usize> {
    let topic = &config.kafka.topic;
    if let Some(count) = kafka::partition_count(client, topic).await? {
        return Ok(count);
    }
    let created = kafka::create_topic(client, topic, config.partitions, config.replication_factor)
        .await
        .map_err(|e| Error::MissingTopic {
            topic: topic.clone(),
            reason: e.to_string(),
        })?;
    if created == TopicCreation::Created {
        tracing::info!(topic = %topic, partitions = config.partitions, "created the topic");
    }
    // The new topic's metadata reaches every broker shortly after.
    let deadline = tokio::time::Instant::now() + kafka::ADMIN_TIMEOUT;
    loop {
        if let Some(count) = kafka::partition_count(client, topic).await? {
            return Ok(count);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::MissingTopic {
                topic: topic.clone(),
                reason: "it was created but its metadata never appeared".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Adds producer lanes when the topic gains partitions.
async fn follow_partitions(
    client: Arc<rskafka::client::Client>,
    topic: String,
    lanes: Arc<producer::Lanes>,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match kafka::partition_count(&client, &topic).await {
            Ok(Some(count)) => lanes.grow(count),
            Ok(None) => tracing::warn!(%topic, "the topic has disappeared from the metadata"),
            Err(e) => tracing::debug!("cannot read the topic's metadata: {e}"),
        }
    }
}

/// Logs a progress line every `every`.
async fn log_progress(
    stats: Arc<Stats>,
    producer: Producer,
    sites: watch::Receiver<sites::SiteList>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.reset();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let snapshot = stats.snapshot(sites.borrow().len(), producer.buffered());
        tracing::info!(partitions = producer.partitions(), "progress: {snapshot}");
    }
}
