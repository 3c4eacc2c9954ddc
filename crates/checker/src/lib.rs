//! The checker: checks every registered site on its own interval and publishes one
//! [`CheckEvent`](sitemon_core::CheckEvent) per check to Kafka.
//!
//! Each check is an HTTP GET over a fresh connection (DNS, TCP, TLS and time to first byte
//! timed separately), follows a few redirects, reads the body up to a cap and searches it
//! with the site's regex. Sites are checked start to start on their interval, on a grid
//! anchored to wall-clock time whose phases (a hash of the site id) spread the checks over
//! the interval; the list follows the `websites` table within seconds. Events are keyed by
//! site id and partitioned as Kafka's own clients would; while Kafka is away they wait in a
//! bounded buffer.
//!
//! Any number of checkers with the same topic and location divide the sites: the sites are
//! hashed into [`buckets::BUCKETS`] buckets, leased among the live checkers through
//! PostgreSQL advisory locks (no coordinator); a checker that dies, joins or stops has its
//! share moved within seconds, and the new owner continues each site's grid. Checkers of
//! different locations never share: each location checks every site.
//!
//! # Layout
//! - [`run`]: the entry point; connects, then schedules, checks and publishes until the
//!   shutdown token is cancelled, then drains and hands its buckets over.
//! - [`config`]: [`CheckerConfig`] and its defaults.
//! - `sites`: the site list, following the table (LISTEN/NOTIFY plus periodic reloads);
//!   each row made into a check plan once per change of the row.
//! - `plan`: a site's settings as a `CheckPlan` (target, request, compiled regexes, the
//!   assertions: expected statuses, degraded threshold), or a typed `PlanError` naming the
//!   unusable setting.
//! - [`buckets`]: the bucket of a site and the lease group (the contract between checkers).
//! - `keeper`: this checker's share of the buckets, rebalanced every
//!   [`CheckerConfig::rebalance_every`]; surplus released after its checks in flight end.
//! - `schedule`: when each site is due; only the held buckets' sites; bounded concurrency;
//!   missed ticks skipped.
//! - `grid`: the wall-clock grid itself: a site's phase, the clock mapping, snapping a
//!   moment to the grid.
//! - `probe`: executes a plan over HTTP and reports what it saw (an `Observation`).
//! - `verdict`: the one pure `judge`: an observation held to the plan's assertions, up,
//!   degraded or down and the first failed assertion.
//! - `check`: one check, from the planned start to the event: plan → probe → verdict → event.
//! - `target`: a site URL taken apart for connecting, and where a redirect leads.
//! - `tls_expiry`: the leaf certificate's `notAfter`, from its DER.
//! - `producer`: per-partition lanes that linger, then produce one request per batch; the
//!   bounded buffer.
//! - [`partitioner`]: Kafka's murmur2 key partitioner.
//! - `stats`: counters and the schedule-lag histogram behind the progress line, and the
//!   Prometheus metrics registered in [`CheckerConfig::metrics`].
//! - [`error`]: this crate's [`Error`], and the `PlanError` of a site's unusable settings.
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

pub mod buckets;
mod check;
pub mod config;
pub mod error;
mod grid;
mod keeper;
pub mod partitioner;
mod plan;
mod probe;
mod producer;
mod schedule;
mod sites;
mod stats;
mod target;
mod tls_expiry;
mod verdict;

use std::sync::Arc;
use std::time::Duration;

use sitemon_core::kafka::{self, TopicCreation};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{CheckerConfig, Compression};
pub use error::{Error, Result};

use crate::buckets::{BUCKETS, BucketSet, InFlight, Ownership};
use crate::check::Checks;
use crate::grid::Clock;
use crate::keeper::Keeper;
use crate::producer::{Producer, ProducerSettings};
use crate::schedule::{Scheduler, Shares};
use crate::stats::Stats;

/// The deadline rskafka's own retries get for one request; our lanes retry beyond it.
const KAFKA_RETRY_DEADLINE: Duration = Duration::from_secs(10);

/// Runs the checker until `shutdown` is cancelled.
///
/// Connects to PostgreSQL and Kafka (creating the topic if it is missing), joins the other
/// checkers of its location (unless [`CheckerConfig::share_with_peers`] is off), then checks
/// every site of its buckets on its interval and publishes the events. On `shutdown` it stops
/// scheduling, lets the checks in flight finish (each is bounded by its timeout), hands its
/// buckets over, delivers the buffered events (for at most [`CheckerConfig::flush_timeout`])
/// and returns.
///
/// # Errors
/// Only for what prevents starting (see [`Error`]). Failed checks are events, and Kafka or PostgreSQL going away while running is
/// waited out (while the lease connection is lost, the sites held go on being checked: see
/// `keeper`).
pub async fn run(config: CheckerConfig, shutdown: CancellationToken) -> Result<()> {
    config.validate()?;
    let prober = probe::Prober::new(
        config.max_body_bytes,
        &config.extra_root_certs,
        &config.deny_cidrs,
    )?;

    let pool = sitemon_core::db::connect(&config.database, 2).await?;
    let listener = sites::listen(&pool, config.database.target()).await?;
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
    stats.register(&config.metrics, &config.location);

    // The buckets of sites this checker may schedule: its share, or every one.
    let (ownership_tx, ownership_rx) = watch::channel(Ownership::default());
    let (applied_tx, applied_rx) = watch::channel(0);
    let in_flight_by_bucket = Arc::new(InFlight::default());
    let keeper = if config.share_with_peers {
        Some(
            Keeper::join(
                &config,
                ownership_tx,
                applied_rx,
                Arc::clone(&in_flight_by_bucket),
                Arc::clone(&stats),
            )
            .await?,
        )
    } else {
        ownership_tx.send_replace(Ownership {
            buckets: BucketSet::all(),
            generation: 1,
        });
        stats.buckets_held(BUCKETS as usize);
        None
    };
    tracing::info!(
        topic = %config.kafka.topic,
        partitions,
        location = %config.location,
        concurrency = config.concurrency,
        buckets = ownership_rx.borrow().buckets.len(),
        "checker started"
    );
    let leave = CancellationToken::new();
    let keeper = keeper.map(|keeper| tokio::spawn(keeper.run(leave.clone())));

    let (sites_tx, sites_rx) = watch::channel(list);
    let background = CancellationToken::new();
    let follower = tokio::spawn(sites::follow(
        pool.clone(),
        listener,
        book,
        sites_tx,
        config.reload_every,
        background.clone(),
    ));
    let metadata = tokio::spawn(follow_partitions(
        Arc::clone(&client),
        config.kafka.topic.clone(),
        Arc::clone(&lanes),
        config.partition_poll_every,
        background.clone(),
    ));
    let progress = tokio::spawn(log_progress(
        Arc::clone(&stats),
        producer.clone(),
        config.progress_every,
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
    let scheduler = Scheduler::new(
        concurrency,
        in_flight.clone(),
        Arc::clone(&stats),
        Clock::system(),
        {
            move |site, _planned| {
                let checks = Arc::clone(&checks);
                // Boxed: the probe's state is only allocated while a check runs.
                Box::pin(async move { checks.run(&site).await })
            }
        },
    );
    let shares = Shares {
        ownership: ownership_rx,
        applied: applied_tx,
        in_flight: in_flight_by_bucket,
    };
    scheduler.run(sites_rx, shares, shutdown).await;

    tracing::info!(
        checks_in_flight = in_flight.len(),
        "stopping: finishing the checks in flight"
    );
    in_flight.close();
    in_flight.wait().await;
    // No check runs any more: hand every bucket over at once.
    leave.cancel();
    if let Some(keeper) = keeper {
        let _ = keeper.await;
    }
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
    let summary = stats.snapshot(undelivered);
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
    // `create_topic` returns once the topic shows in the metadata.
    kafka::partition_count(client, topic)
        .await?
        .ok_or_else(|| Error::MissingTopic {
            topic: topic.clone(),
            reason: "it was created but its metadata never appeared".into(),
        })
}

/// Follows the topic's partition count: more partitions, or a topic deleted and created
/// again with another count.
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
            Ok(Some(count)) => lanes.resize(count),
            Ok(None) => tracing::warn!(%topic, "the topic has disappeared from the metadata"),
            Err(e) => tracing::debug!("cannot read the topic's metadata: {e}"),
        }
    }
}

/// Logs a progress line every `every`.
async fn log_progress(
    stats: Arc<Stats>,
    producer: Producer,
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
        let snapshot = stats.snapshot(producer.buffered());
        tracing::info!(partitions = producer.partitions(), "progress: {snapshot}");
    }
}
