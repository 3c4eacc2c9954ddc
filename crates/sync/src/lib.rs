//! The sync: consumes sitemon's check events from Kafka into PostgreSQL, exactly once.
//!
//! rskafka has no consumer groups and no offset commits, so the sync keeps the offsets it
//! consumed **in PostgreSQL, in the same transaction as the rows they produced** (the
//! "Storing Offsets Outside Kafka" pattern of Kafka's `KafkaConsumer` documentation). A
//! crash at any instant loses nothing and stores nothing twice: after a restart the sync
//! reads on from the stored offsets.
//!
//! Every message becomes exactly one row: a `website_status` row, or, when it cannot, a
//! `website_status_rejects` row with its raw bytes and the reason (`decode.rs` decides
//! which). A message whose `check_id` (or offset) is stored already stores nothing: it is
//! the same check, replayed or retried by a producer.
//!
//! # Several workers
//! Any number of syncs on one topic (on one machine or several) divide its partitions: each
//! partition is leased to one worker at a time through a PostgreSQL advisory lock held on a
//! dedicated connection ([`sitemon_consume::lease`], group [`lease_group`]), the partitions are
//! shared fairly (`ceil(P / W)` at most each), a worker that dies loses its leases with its
//! connection and the others take them over on their next rebalance (every
//! [`SyncConfig::rebalance_every`]), and a worker that stops hands its partitions over at
//! once. Every batch's transaction checks that the worker still holds the lease of each
//! partition it writes, on top of the compare-and-set of the stored offset. The lease
//! connection needs session state: it must go straight to PostgreSQL, not through PgBouncer
//! in transaction mode.
//!
//! # Layout
//! - [`run`] (here): connects, starts the history's upkeep (`maintain`), and runs the
//!   exactly-once consumer of [`sitemon_consume`] (readers, batches, offsets, leases,
//!   sessions, restarts: shared with the alert service) with the sync's sink.
//! - `config.rs`: [`SyncConfig`], [`lease_group`].
//! - `decode.rs`: one message → one row or one reject.
//! - `sink.rs`: what one batch stores in the consumer's transaction (sites locked, rows and
//!   their rollups, rejects).
//! - `stats.rs`: rows, duplicates and rejects, for the progress line and Prometheus.
//! - [`error`]: the consumer's [`Error`], re-exported.
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
//! config.consumer.batch_size = 2_000;
//! let shutdown = CancellationToken::new();
//! // Cancel `shutdown` (on SIGTERM, say): the batch in hand is stored, then `run` returns.
//! sitemon_sync::run(config, shutdown).await?;
//! # Ok(())
//! # }
//! ```

mod config;
mod decode;
mod sink;
mod stats;

/// The sync's errors: the exactly-once consumer's ([`sitemon_consume::Error`]).
pub mod error {
    pub use sitemon_consume::error::{Error, Result};
}

use std::sync::Arc;
use std::time::Duration;

use sitemon_consume::bounded_db;
use tokio_util::sync::CancellationToken;

pub use config::{CONSUMER, DEFAULT_WRITERS, SyncConfig, lease_group};
pub use error::{Error, Result};
pub use sitemon_consume::{
    CHANNEL_CHUNKS, DEFAULT_FETCH_MAX_WAIT, DEFAULT_FETCH_MIN_BYTES, StartFrom,
};

/// The pooled connections besides one per writer: one for starting new partitions, one for
/// the history's upkeep. The lease connection is not pooled.
const POOL_SPARE: u32 = 2;

/// Consumes the topic into the database until `shutdown` is cancelled; then stores the
/// batch in hand and returns `Ok`.
///
/// Once started, nothing makes it give up: a broker or database restart, a dropped
/// connection, or a batch that failed are logged and retried with backoff, from the stored
/// offsets. Credentials refused while running ([`Error::is_auth_failure`]) are logged and
/// retried on a slow backoff (30 s to 5 min).
///
/// # Errors
/// Only before the sync has started: the database cannot be reached, refuses the login
/// ([`Error::is_auth_failure`], at once) or has no schema ([`Error::NotMigrated`]), no broker
/// answers or one refuses the login, or the topic does not exist ([`Error::UnknownTopic`]).
pub async fn run(config: SyncConfig, shutdown: CancellationToken) -> Result<()> {
    let writers = u32::try_from(config.consumer.writers.max(1)).unwrap_or(16);
    let pool = sitemon_core::db::connect(&config.consumer.database, writers + POOL_SPARE).await?;
    let migrated: bool = bounded_db(
        "looking for the schema",
        Duration::from_secs(30),
        sqlx::query_scalar("SELECT to_regclass('website_status_hourly') IS NOT NULL")
            .fetch_one(&pool),
    )
    .await?;
    if !migrated {
        return Err(Error::NotMigrated);
    }
    let partitions = Arc::new(sitemon_core::history::Partitions::new(
        config.retention,
        config.rollup_retention,
    ));
    let sink = sink::Rows {
        stats: stats::Stats::new(),
        pool: pool.clone(),
        partitions: partitions.clone(),
    };
    sink.stats.register(&config.consumer.metrics);
    let maintainer = tokio::spawn(maintain(
        pool.clone(),
        config.clone(),
        partitions,
        shutdown.clone(),
    ));
    let result = sitemon_consume::run(&config.consumer, &pool, Arc::new(sink), shutdown).await;
    maintainer.abort();
    pool.close().await;
    tracing::info!("sync stopped");
    result
}
/// Keeps the history, at start and every [`SyncConfig::maintain_every`]: the day partitions
/// from yesterday to a few days ahead exist, and what is past its retention is dropped
/// ([`sitemon_core::history`]). Every worker does it; the database serializes them, and a
/// failure is logged and tried again next time (the default partition catches any event
/// whose day has no partition yet).
async fn maintain(
    pool: sqlx::PgPool,
    config: SyncConfig,
    partitions: Arc<sitemon_core::history::Partitions>,
    shutdown: CancellationToken,
) {
    use sitemon_core::history;
    loop {
        let now = time::OffsetDateTime::now_utc();
        // From the catalog every time (a partition dropped by hand is made again), then
        // known to the sink.
        match history::ensure_partitions(&pool, history::days_around(now)).await {
            Ok(_) => partitions.learn(history::days_around(now)),
            Err(e) => {
                tracing::warn!("cannot create the partitions ahead: {e}; trying again later");
            }
        }
        match history::drop_expired(&pool, now, config.retention, config.rollup_retention).await {
            Ok(expired) => {
                partitions.forget(&expired.partitions);
                if expired.rollups > 0 {
                    tracing::info!(
                        rows = expired.rollups,
                        "deleted rollups past their retention"
                    );
                }
            }
            Err(e) => tracing::warn!("cannot apply the retention: {e}; trying again later"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(config.maintain_every) => {}
        }
    }
}
