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
//! - [`run`] (here): the entry point. It connects, then runs *sessions*
//!   until `shutdown`; a session ends on the first error that the readers cannot retry in
//!   place (PostgreSQL gone, the lease connection lost). [`run`] then waits with backoff and
//!   jitter and starts a new session from the stored offsets. A stored offset that moved
//!   under a partition (a worker that crashed had just committed it) restarts that
//!   partition's reader alone (`writer.rs`, `Restarts`).
//! - `config.rs`: [`SyncConfig`], [`StartFrom`], [`CHANNEL_CHUNKS`].
//! - `session.rs`: one session: joins the lease group, starts the writer, rebalances, starts
//!   the readers of the partitions it takes, stops (and flushes) those it gives away, then
//!   leaves.
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
mod config;
mod consumer;
mod decode;
pub mod error;
mod offsets;
mod session;
mod stats;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use sitemon_core::KafkaConfig;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use config::{
    CHANNEL_CHUNKS, DEFAULT_FETCH_MAX_WAIT, DEFAULT_FETCH_MIN_BYTES, StartFrom, SyncConfig,
    lease_group,
};
use config::{REFUSED_RETRY, RETRY};
pub use error::{Error, Result};

use crate::stats::Stats;

/// How long rskafka may retry one request before it gives up and we retry ourselves.
const KAFKA_RETRY_DEADLINE: Duration = Duration::from_secs(20);
/// A session that lasted this long was healthy: the next failure backs off from the start.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);
/// The pooled connections: the writer's, plus one for starting new partitions. The lease
/// connection is not pooled.
const POOL_SIZE: u32 = 3;

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
    let maintainer = tokio::spawn(maintain(pool.clone(), config.clone(), shutdown.clone()));
    let mut client = Some(Arc::new(client));
    let mut retry = RETRY.start();
    let mut refused = REFUSED_RETRY.start();
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        let result = async {
            let client = match client.take() {
                Some(client) => client,
                None => Arc::new(connect_kafka(&config.kafka).await?),
            };
            session::run(
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
            retry.reset();
            refused.reset();
        }
        let Err(e) = result else { continue };
        if shutdown.is_cancelled() {
            tracing::warn!(
                "stopping without storing the batch in hand ({e}); it will be read again"
            );
            break;
        }
        let wait = if e.is_auth_failure() {
            // Final until someone fixes the credentials: a slow backoff, not the fast one.
            let wait = refused.next_wait().unwrap_or(REFUSED_RETRY.max);
            tracing::error!("{e}; trying again in {wait:?}");
            wait
        } else {
            let wait = retry.next_wait().unwrap_or(RETRY.max);
            tracing::error!("{e}; going on from the stored offsets in {wait:?}");
            wait
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    reporter.abort();
    maintainer.abort();
    pool.close().await;
    tracing::info!("sync stopped");
    Ok(())
}

/// Keeps the history, at start and every [`SyncConfig::maintain_every`]: the day partitions
/// from yesterday to a few days ahead exist, and what is past its retention is dropped
/// ([`sitemon_core::history`]). Every worker does it; the database serializes them, and a
/// failure is logged and tried again next time (the default partition catches any event
/// whose day has no partition yet).
async fn maintain(pool: sqlx::PgPool, config: SyncConfig, shutdown: CancellationToken) {
    use sitemon_core::history;
    loop {
        let now = time::OffsetDateTime::now_utc();
        if let Err(e) = history::ensure_partitions(&pool, history::days_around(now)).await {
            tracing::warn!("cannot create the partitions ahead: {e}; trying again later");
        }
        match history::drop_expired(&pool, now, config.retention, config.rollup_retention).await {
            Ok(expired) if expired.rollups > 0 => {
                tracing::info!(
                    rows = expired.rollups,
                    "deleted rollups past their retention"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot apply the retention: {e}; trying again later"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(config.maintain_every) => {}
        }
    }
}

async fn connect_kafka(config: &KafkaConfig) -> Result<rskafka::client::Client> {
    let backoff = sitemon_core::kafka::backoff(KAFKA_RETRY_DEADLINE);
    Ok(sitemon_core::kafka::connect_with_backoff(config, backoff).await?)
}
