//! The sync: consumes sitemon's check events from Kafka into PostgreSQL, exactly once.
//!
//! rskafka has no consumer groups and no offset commits, so the sync keeps the offsets it
//! consumed **in PostgreSQL, in the same transaction as the rows they produced** (the
//! "Storing Offsets Outside Kafka" pattern of Kafka's `KafkaConsumer` documentation). A
//! crash at any instant loses nothing and stores nothing twice: after a restart the sync
//! reads on from the stored offsets.
//!
//! Every message becomes exactly one row: a `website_status` row, or, when it cannot, a
//! `website_status_rejects` row with its raw bytes and a reason that starts with one of
//! `empty value (tombstone)`, `empty value`, `not JSON`, `wrong shape`,
//! `unknown schema version`, `status_code`, `the value holds a \u0000`, `website_id N is not
//! in websites`. A message whose `check_id` (or offset) is stored already stores nothing:
//! it is the same check, replayed or retried by a producer.
//!
//! # Several workers
//! Any number of syncs on one topic (on one machine or several) divide its partitions: each
//! partition is leased to one worker at a time through a PostgreSQL advisory lock held on a
//! dedicated connection ([`sitemon_core::lease`], group [`lease_group`]), the partitions are
//! shared fairly (`ceil(P / W)` at most each), a worker that dies loses its leases with its
//! connection and the others take them over on their next rebalance (every
//! [`SyncConfig::rebalance_every`]), and a worker that stops hands its partitions over at
//! once. Every batch's transaction checks that the worker still holds the lease of each
//! partition it writes, on top of the compare-and-set of the stored offset. The lease
//! connection needs session state: it must go straight to PostgreSQL, not through PgBouncer
//! in transaction mode.
//!
//! # Layout
//! - [`run`] and [`SyncConfig`] (here): the entry point. It connects, then runs *sessions*
//!   until `shutdown`; a session ends on the first error that the readers cannot retry in
//!   place (PostgreSQL gone, a stored offset that moved, the lease connection lost). [`run`]
//!   then waits with backoff and jitter and starts a new session from the stored offsets.
//! - `keeper.rs`: a session: joins the lease group, rebalances, starts the readers of the
//!   partitions it takes, stops (and flushes) those it gives away, then leaves.
//! - `consumer.rs`: one fetch loop per partition held; Kafka errors and offsets lost to
//!   retention.
//! - `decode.rs`: one message → one row or one reject.
//! - `batch.rs`: chunks from the readers → batches of at most `batch_size` messages.
//! - `writer.rs`: one batch → one transaction (sites locked, rows, rejects, offsets, lease
//!   check).
//! - `offsets.rs`: `sync_offsets`, moved by compare-and-set from the batch's first offset.
//! - `stats.rs`: counters, the progress line (events/s, rejects, lag per partition) and the
//!   Prometheus metrics ([`SyncConfig::metrics`]).
//! - [`error`]: this crate's [`Error`].
//!
//! Memory is bounded: each fetch asks for at most 1 MiB, the readers hand their chunks to
//! the writer over a channel of [`CHANNEL_CHUNKS`] chunks, and a full channel stops the
//! readers until PostgreSQL has caught up.
//!
//! # Example
//! Run the sync inside another service until it stops:
//! ```no_run
//! use sitemon_core::{DatabaseConfig, KafkaConfig};
//! use sitemon_sync::SyncConfig;
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example() -> sitemon_sync::Result<()> {
//! let database = DatabaseConfig::from_url("postgres://sitemon:sitemon@127.0.0.1/sitemon")?;
//! let kafka = KafkaConfig::plaintext("127.0.0.1:9092", "website_status")?;
//! let mut config = SyncConfig::new(database, kafka);
//! config.batch_size = 2_000;
//! let shutdown = CancellationToken::new();
//! // Cancel `shutdown` (on SIGTERM, say): the batch in hand is stored, then `run` returns.
//! sitemon_sync::run(config, shutdown).await?;
//! # Ok(())
//! # }
//! ```

mod batch;
mod consumer;
mod decode;
pub mod error;
mod keeper;
mod offsets;
mod stats;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use sitemon_core::metrics::Registry;
use sitemon_core::{DatabaseConfig, KafkaConfig};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use error::{Error, Result};

use crate::stats::Stats;

/// How many fetched chunks (each at most about 1 MiB) may wait for the writer.
pub const CHANNEL_CHUNKS: usize = 8;

/// Where a partition without a stored offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// At the oldest message still in the partition: the whole history.
    #[default]
    Earliest,
    /// At the end: only events published from now on. Applies to the partitions that exist
    /// when the sync starts; partitions added later are always read from their beginning.
    Latest,
}

/// What [`run`] needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SyncConfig {
    /// The database that holds `websites`, `website_status` and the offsets.
    pub database: DatabaseConfig,
    /// The brokers and the topic of the check events.
    pub kafka: KafkaConfig,
    /// The most messages in one transaction: larger batches store faster, and hold more
    /// memory and longer transactions.
    pub batch_size: usize,
    /// How long the first message of a batch may wait for more: the latency a quiet topic
    /// sees.
    pub batch_wait: Duration,
    /// Where partitions without a stored offset start.
    pub start: StartFrom,
    /// How often the progress line is logged.
    pub progress_every: Duration,
    /// How often the topic is asked for new partitions.
    pub partition_poll_every: Duration,
    /// How often this worker rebalances the partition leases with the other workers (give or
    /// take a quarter, at random): the longest a dead worker's partitions, or a newcomer's
    /// share, wait for it.
    pub rebalance_every: Duration,
    /// Where the sync's metrics are registered (`sitemon_sync_*`): serve it to Prometheus
    /// with [`sitemon_core::metrics::serve`]. The default is a registry of its own that
    /// nobody reads.
    pub metrics: Registry,
}

impl SyncConfig {
    /// The defaults: batches of 5,000 or 200 ms, the whole history, progress every 5 s,
    /// new partitions looked for every 10 s, leases rebalanced every 2 s, metrics in a
    /// registry of their own.
    pub fn new(database: DatabaseConfig, kafka: KafkaConfig) -> Self {
        Self {
            database,
            kafka,
            batch_size: 5_000,
            batch_wait: Duration::from_millis(200),
            start: StartFrom::Earliest,
            progress_every: Duration::from_secs(5),
            partition_poll_every: Duration::from_secs(10),
            rebalance_every: Duration::from_secs(2),
            metrics: Registry::new(),
        }
    }
}

/// How long rskafka may retry one request before it gives up and we retry ourselves.
const KAFKA_RETRY_DEADLINE: Duration = Duration::from_secs(20);
/// A session that lasted this long was healthy: the next failure backs off from the start.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);
/// The pooled connections: the writer's, plus one for starting new partitions. The lease
/// connection is not pooled.
const POOL_SIZE: u32 = 3;

/// The lease group of the syncs of `topic`: every sync of the topic on the same database
/// shares its partitions with the others of this group.
pub fn lease_group(topic: &str) -> String {
    format!("sync:{topic}")
}

/// Consumes the topic into the database until `shutdown` is cancelled; then stores the
/// batch in hand and returns `Ok`.
///
/// Once started, nothing makes it give up: a broker or database restart, a dropped
/// connection, or a batch that failed are logged and retried with backoff, from the stored
/// offsets.
///
/// # Errors
/// Only before the sync has started: the database cannot be reached or has no schema
/// ([`Error::NotMigrated`]), no broker answers, or the topic does not exist
/// ([`Error::UnknownTopic`]).
pub async fn run(config: SyncConfig, shutdown: CancellationToken) -> Result<()> {
    let pool = sitemon_core::db::connect(&config.database, POOL_SIZE).await?;
    let migrated: bool = error::bounded_db(
        "looking for the schema",
        offsets::STATEMENT_TIMEOUT,
        sqlx::query_scalar("SELECT to_regclass('sync_offsets') IS NOT NULL").fetch_one(&pool),
    )
    .await?;
    if !migrated {
        return Err(Error::NotMigrated);
    }
    let client = connect_kafka(&config.kafka).await?;
    let Some(initial_partitions) =
        sitemon_core::kafka::partition_count(&client, &config.kafka.topic).await?
    else {
        return Err(Error::UnknownTopic {
            topic: config.kafka.topic.clone(),
        });
    };
    let initial_partitions = i32::try_from(initial_partitions).unwrap_or(i32::MAX);
    tracing::info!(
        topic = %config.kafka.topic,
        database = config.database.target(),
        batch_size = config.batch_size,
        batch_wait_ms = config.batch_wait.as_millis(),
        "sync started"
    );

    let stats = Arc::new(Stats::new(&config.kafka.topic));
    stats.register(&config.metrics);
    let reporter = tokio::spawn({
        let stats = Arc::clone(&stats);
        let stop = shutdown.clone();
        let every = config.progress_every;
        async move { stats.report(every, stop).await }
    });
    let mut client = Some(Arc::new(client));
    let mut failures = 0;
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        let result = async {
            let client = match client.take() {
                Some(client) => client,
                None => Arc::new(connect_kafka(&config.kafka).await?),
            };
            keeper::session(
                &config,
                &pool,
                client,
                &stats,
                initial_partitions,
                &shutdown,
            )
            .await
        }
        .await;
        if started.elapsed() >= HEALTHY_SESSION {
            failures = 0;
        }
        let Err(e) = result else { continue };
        if shutdown.is_cancelled() {
            tracing::warn!(
                "stopping without storing the batch in hand ({e}); it will be read again"
            );
            break;
        }
        failures += 1;
        let wait = backoff(failures);
        tracing::error!("{e}; going on from the stored offsets in {wait:?}");
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    reporter.abort();
    pool.close().await;
    tracing::info!("sync stopped");
    Ok(())
}

async fn connect_kafka(config: &KafkaConfig) -> Result<rskafka::client::Client> {
    let backoff = sitemon_core::kafka::backoff(KAFKA_RETRY_DEADLINE);
    Ok(sitemon_core::kafka::connect_with_backoff(config, backoff).await?)
}

/// The wait before retry number `failures` (from 1): 250 ms doubling up to 30 s, each
/// drawn at random between half and all of it, so that many workers do not retry in step.
pub(crate) fn backoff(failures: u32) -> Duration {
    let ceiling = Duration::from_millis(250)
        .saturating_mul(1 << failures.saturating_sub(1).min(7))
        .min(Duration::from_secs(30));
    // A v4 UUID is 122 random bits from the OS; enough jitter without another dependency.
    let random = (uuid::Uuid::new_v4().as_u128() % 1_000) as f64 / 1_000.0;
    ceiling.mul_f64(0.5 + random / 2.0)
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_grows_to_a_cap_with_jitter() {
        for failures in 1..40 {
            let wait = backoff(failures);
            let ceiling =
                Duration::from_millis(250 << (failures - 1).min(7)).min(Duration::from_secs(30));
            assert!(
                wait >= ceiling / 2 && wait <= ceiling,
                "{failures}: {wait:?}"
            );
        }
    }
}
