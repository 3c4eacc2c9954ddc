//! sitemon's exactly-once consumer of the events topic: reads a topic's check events into
//! PostgreSQL, storing the offsets it consumed **in the same transaction as what the events
//! produced** (the "Storing Offsets Outside Kafka" pattern of Kafka's `KafkaConsumer`
//! documentation; rskafka has no consumer groups and no offset commits). A crash at any
//! instant loses nothing and stores nothing twice: after a restart the consumer reads on from
//! the stored offsets.
//!
//! This crate owns the consumer's machinery: the leases that share a topic's partitions (or
//! any numbered resource, such as the checker's buckets of sites) among processes, one reader
//! per partition held, the batches, and the writer's transaction (the sink's statements, the
//! offsets by compare-and-set in `sync_offsets`, the lease check). It depends on
//! `sitemon-core` for the event, the configuration, the errors, retries, metrics and the
//! Kafka client.
//!
//! Two consumers use it, each with offsets of its own (`sync_offsets.consumer`): the sync
//! (`sitemon-sync`, whose [`Sink`] stores rows, rejects and rollups) and the alert service
//! (`sitemon-alert`, whose sink stores state changes, incidents and the outbox). What a
//! message means is the sink's business; reading, batching, offsets, leases, hand-over and
//! restarts are this crate's.
//!
//! # Several workers
//! Any number of workers of one consumer on one topic (on one machine or several) divide
//! its partitions: each partition is leased to one worker at a time through a PostgreSQL
//! advisory lock held on a dedicated connection ([`lease`], group [`lease_group`]), the
//! partitions are shared fairly (`ceil(P / W)` at most each), a worker that dies loses its
//! leases with its connection and the others take them over on their next rebalance (every
//! [`ConsumerConfig::rebalance_every`]), and a worker that stops hands its partitions over
//! at once. Every batch's transaction checks that the worker still holds the lease of each
//! partition it writes, on top of the compare-and-set of the stored offset. The lease
//! connection needs session state: it must go straight to PostgreSQL, not through PgBouncer
//! in transaction mode.
//!
//! # Layout
//! - [`run`] (here, with [`Sink`], [`ConsumerConfig`], [`Message`], [`fingerprint`]):
//!   connects, then runs *sessions* until `shutdown`; a session ends on the first error that
//!   the readers cannot retry in place (PostgreSQL gone, the lease connection lost). [`run`]
//!   then waits with backoff and jitter and starts a new session from the stored offsets. A
//!   stored offset that moved under a partition (a worker that crashed had just committed it)
//!   restarts that partition's reader alone (`writer.rs`, `Restarts`).
//! - [`lease`]: sharing numbered resources among processes with advisory locks; `plan()` is
//!   the pure decision, the rest is SQL.
//! - `session.rs`: one session: joins the lease group, starts the writer, rebalances, starts
//!   the readers of the partitions it takes, stops (and flushes) those it gives away, then
//!   leaves.
//! - `reader.rs`: one fetch loop per partition held; Kafka errors, offsets lost to retention,
//!   a topic deleted and created again (incarnations, see `offsets.rs`). Messages are decoded
//!   there ([`Sink::decode`]), spread over the cores while the writer waits on PostgreSQL.
//! - `batch.rs`: chunks from the readers → batches of at most `batch_size` messages
//!   ([`Entry`]s).
//! - `writer.rs`: one batch → one transaction (the sink's statements, offsets, lease check).
//! - `offsets.rs`: `sync_offsets`, moved by compare-and-set from the batch's first offset
//!   ([`Position`]).
//! - `stats.rs`: the progress line and the `sitemon_{consumer}_*` metrics.
//! - [`error`]: the consumer's [`Error`].
//!
//! Memory is bounded: each fetch asks for at most 1 MiB, the readers hand their chunks to
//! the writer over a channel of [`CHANNEL_CHUNKS`] chunks, and a full channel stops the
//! readers until PostgreSQL has caught up.
//!
//! # Example
//! A consumer of one's own (here `counter`, with offsets and a lease group of its own) that
//! counts the messages with a value, until it is stopped:
//! ```no_run
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! use sitemon_consume::{ConsumerConfig, Entry, Message, Sink};
//! use sitemon_core::{DatabaseConfig, KafkaConfig, db};
//! use sqlx::PgConnection;
//! use tokio_util::sync::CancellationToken;
//!
//! #[derive(Debug, Default)]
//! struct Counter {
//!     seen: AtomicU64,
//! }
//!
//! impl Sink for Counter {
//!     type Item = bool;
//!     type Stored = u64;
//!
//!     fn decode(&self, message: Message) -> bool {
//!         message.value.is_some()
//!     }
//!
//!     async fn store(
//!         &self,
//!         _tx: &mut PgConnection,
//!         _topic: &str,
//!         batch: &[Entry<bool>],
//!     ) -> sitemon_consume::Result<u64> {
//!         // Whatever the batch stores goes into `_tx`: it commits with the offsets.
//!         Ok(batch.iter().filter(|entry| entry.item).count() as u64)
//!     }
//!
//!     fn committed(&self, stored: u64) {
//!         self.seen.fetch_add(stored, Ordering::Relaxed);
//!     }
//! }
//!
//! # async fn example() -> sitemon_consume::Result<()> {
//! let database = DatabaseConfig::from_url("postgres://sitemon:sitemon@127.0.0.1/sitemon")?;
//! let kafka = KafkaConfig::plaintext("127.0.0.1:9092", "website_status")?;
//! let pool = db::connect(&database, 2).await?;
//! let config = ConsumerConfig::new("counter", database, kafka);
//! let shutdown = CancellationToken::new();
//! // Cancel `shutdown` (on SIGTERM, say): the batch in hand is stored, then `run` returns.
//! sitemon_consume::run(&config, &pool, Arc::new(Counter::default()), shutdown).await?;
//! # Ok(())
//! # }
//! ```

mod batch;
pub mod error;
pub mod lease;
mod offsets;
mod reader;
mod session;
mod stats;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use batch::Entry;
pub use error::{Error, Result, bounded_db};
pub use offsets::Position;

use sitemon_core::metrics::Registry;
use sitemon_core::retry::Backoff;
use sitemon_core::{DatabaseConfig, KafkaConfig};
use stats::Stats;

/// How many fetched chunks (each at most about 1 MiB) may wait for the writer.
pub const CHANNEL_CHUNKS: usize = 8;

/// The default of [`ConsumerConfig::fetch_min_bytes`].
pub const DEFAULT_FETCH_MIN_BYTES: usize = 64 << 10;

/// The default of [`ConsumerConfig::fetch_max_wait`].
pub const DEFAULT_FETCH_MAX_WAIT: Duration = Duration::from_millis(250);

/// How long rskafka may retry one request before it gives up and we retry ourselves.
const KAFKA_RETRY_DEADLINE: Duration = Duration::from_secs(20);
/// A session that lasted this long was healthy: the next failure backs off from the start.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// The waits between failed sessions, and between a reader's failed fetches: 250 ms doubling
/// up to 30 s, give or take a quarter so that many workers do not retry in step.
pub(crate) const RETRY: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));

/// The waits between sessions that failed because PostgreSQL or Kafka refused our
/// credentials (rotated while running): 30 s doubling up to 5 min, as retrying sooner cannot
/// help until someone fixes the configuration.
pub(crate) const REFUSED_RETRY: Backoff =
    Backoff::new(Duration::from_secs(30), Duration::from_secs(300));

/// A message as read from a partition, before the sink decodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The partition it was read from.
    pub partition: i32,
    /// The topic incarnation the message belongs to (see [`Position`]).
    pub incarnation: i32,
    /// Its offset.
    pub offset: i64,
    /// [`fingerprint`] of the record.
    pub fingerprint: i64,
    /// The record's key.
    pub key: Option<Vec<u8>>,
    /// The record's value.
    pub value: Option<Vec<u8>>,
}

/// A 64-bit fingerprint of a record (FNV-1a over its key, value and timestamp): a consumer
/// keeps the last consumed record's, and tells a topic that was deleted and created again
/// by the record at the same offset having another one.
pub fn fingerprint(key: Option<&[u8]>, value: Option<&[u8]>, timestamp_ms: i64) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for part in [key, value] {
        match part {
            // The length first, so that ("ab", "c") and ("a", "bc") differ.
            Some(bytes) => {
                eat(&(bytes.len() as u64).to_le_bytes());
                eat(bytes);
            }
            None => eat(&u64::MAX.to_le_bytes()),
        }
    }
    eat(&timestamp_ms.to_le_bytes());
    hash as i64
}

/// What a consumer does with the messages it reads: decode each one (in the readers), then
/// store a batch of them inside the transaction that also moves the offsets.
pub trait Sink: std::fmt::Debug + Send + Sync + 'static {
    /// What a message becomes.
    type Item: std::fmt::Debug + Send + Sync + 'static;
    /// What [`Sink::store`] reports once the transaction has committed.
    type Stored: Send;

    /// Decodes one message. Pure and infallible: a message the sink cannot use becomes an
    /// item that says so (the sync stores it as a reject; the alert service skips it).
    fn decode(&self, message: Message) -> Self::Item;

    /// Stores a batch, in offset order within each partition, in `tx`. The consumer then
    /// moves the offsets and commits, or rolls everything back (an error here does too):
    /// the batch may be given again after a rollback, never after a commit.
    ///
    /// # Errors
    /// Anything that must roll the batch back.
    fn store(
        &self,
        tx: &mut PgConnection,
        topic: &str,
        batch: &[Entry<Self::Item>],
    ) -> impl Future<Output = Result<Self::Stored>> + Send;

    /// The batch of `stored` has committed (count it).
    fn committed(&self, stored: Self::Stored);

    /// The sink's figures for the progress line, e.g. `rows=12 duplicates=0 rejects=1`.
    fn progress(&self) -> String {
        String::new()
    }
}

/// Where a partition without a stored offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// At the oldest message still in the partition: the whole history.
    #[default]
    Earliest,
    /// At the end: only events published from now on. Applies to the partitions that exist
    /// when the consumer starts; partitions added later are always read from their beginning.
    Latest,
}

/// What [`run`] needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// The consumer's name (`sync`, `alert`): whose offsets, which lease group
    /// ([`lease_group`]), which metrics (`sitemon_{name}_*`). Lower case letters, digits,
    /// `_` and `-`.
    pub name: String,
    /// The database of the stored offsets (and of whatever the sink stores).
    pub database: DatabaseConfig,
    /// The brokers and the topic of the check events.
    pub kafka: KafkaConfig,
    /// The most messages in one transaction: larger batches store faster, and hold more
    /// memory and longer transactions.
    pub batch_size: usize,
    /// How long the first message of a batch may wait for more: the latency a quiet topic
    /// sees.
    pub batch_wait: Duration,
    /// Batches stored at once, each in a transaction of its own on its own connection: the
    /// partitions are divided among the writers (`partition % writers`), so a partition's
    /// batches stay in order. Two keep a second PostgreSQL core busy while one transaction
    /// waits; the memory bound grows with it ([`CHANNEL_CHUNKS`] chunks per writer).
    pub writers: usize,
    /// The least a fetch waits for, in bytes (as stored on the broker, compressed): the
    /// broker holds a fetch until this much is there or `fetch_max_wait` has passed.
    /// Default 64 KiB, more than a partition gets in `fetch_max_wait` below about 2,000
    /// events/s, so that each partition is fetched about once per `fetch_max_wait` rather than
    /// once per produce request. 1 answers as soon as anything arrives: the lowest latency,
    /// and a fetch for about every batch the checkers produce. Capped at 1 MiB, the most one
    /// fetch asks for.
    pub fetch_min_bytes: usize,
    /// How long the broker may hold a fetch that found less than `fetch_min_bytes`: the most
    /// an event waits on the broker (besides `batch_wait`). Default 250 ms. Shorter: less
    /// latency, more fetch requests (six partitions at 250 ms are 24 a second however quiet
    /// the topic).
    pub fetch_max_wait: Duration,
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
    /// Where the consumer's metrics are registered (`sitemon_{name}_*`).
    pub metrics: Registry,
}

impl ConsumerConfig {
    /// The defaults: batches of 5,000 or 200 ms, one writer, fetches of at least 64 KiB or
    /// 250 ms, the whole history, progress every 5 s, new partitions looked for every 10 s,
    /// leases rebalanced every 2 s, metrics in a registry of their own.
    pub fn new(name: &str, database: DatabaseConfig, kafka: KafkaConfig) -> Self {
        Self {
            name: name.to_owned(),
            database,
            kafka,
            batch_size: 5_000,
            batch_wait: Duration::from_millis(200),
            writers: 1,
            fetch_min_bytes: DEFAULT_FETCH_MIN_BYTES,
            fetch_max_wait: DEFAULT_FETCH_MAX_WAIT,
            start: StartFrom::Earliest,
            progress_every: Duration::from_secs(5),
            partition_poll_every: Duration::from_secs(10),
            rebalance_every: Duration::from_secs(2),
            metrics: Registry::new(),
        }
    }
}

/// The lease group of consumer `name` on `topic`: its workers on the same database share
/// the topic's partitions (`sync:checks`, `alert:checks`).
pub fn lease_group(name: &str, topic: &str) -> String {
    format!("{name}:{topic}")
}

/// Consumes the topic into `sink` until `shutdown` is cancelled; then stores the batch in
/// hand and returns `Ok`. `pool` is the consumer's (a connection per writer and one to start
/// partitions; the lease connection is its own).
///
/// Once started, nothing makes it give up: a broker or database restart, a dropped
/// connection, or a batch that failed are logged and retried with backoff, from the stored
/// offsets. Credentials refused while running ([`Error::is_auth_failure`]) are logged and
/// retried on a slow backoff (30 s to 5 min).
///
/// # Errors
/// Only before the consumer has started: the database has no schema ([`Error::NotMigrated`]),
/// no broker answers or one refuses the login, or the topic does not exist
/// ([`Error::UnknownTopic`]).
pub async fn run<S: Sink>(
    config: &ConsumerConfig,
    pool: &PgPool,
    sink: Arc<S>,
    shutdown: CancellationToken,
) -> Result<()> {
    let migrated: bool = bounded_db(
        "looking for the schema",
        offsets::STATEMENT_TIMEOUT,
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                            WHERE table_name = 'sync_offsets' AND column_name = 'consumer'
                              AND table_schema = current_schema())",
        )
        .fetch_one(pool),
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
        "{} started",
        config.name
    );

    let stats = Arc::new(Stats::new(&config.name, &config.kafka.topic));
    stats.register(&config.metrics);
    let reporter = tokio::spawn({
        let stats = Arc::clone(&stats);
        let sink = Arc::clone(&sink);
        let stop = shutdown.clone();
        let every = config.progress_every;
        async move { stats.report(every, move || sink.progress(), stop).await }
    });
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
                config,
                &sink,
                pool,
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
                consumer = %config.name,
                "stopping without storing the batch in hand ({e}); it will be read again"
            );
            break;
        }
        let wait = if e.is_auth_failure() {
            // Final until someone fixes the credentials: a slow backoff, not the fast one.
            let wait = refused.next_wait().unwrap_or(REFUSED_RETRY.max);
            tracing::error!(consumer = %config.name, "{e}; trying again in {wait:?}");
            wait
        } else {
            let wait = retry.next_wait().unwrap_or(RETRY.max);
            tracing::error!(
                consumer = %config.name,
                "{e}; going on from the stored offsets in {wait:?}"
            );
            wait
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    reporter.abort();
    Ok(())
}

async fn connect_kafka(config: &KafkaConfig) -> Result<rskafka::client::Client> {
    let backoff = sitemon_core::kafka::backoff(KAFKA_RETRY_DEADLINE);
    Ok(sitemon_core::kafka::connect_with_backoff(config, backoff).await?)
}

#[cfg(test)]
mod tests {
    use super::fingerprint;

    #[test]
    fn fingerprints_tell_records_apart_and_stay_the_same() {
        let fp = |key: Option<&[u8]>, value: Option<&[u8]>, ts| fingerprint(key, value, ts);
        let a = fp(Some(b"7"), Some(b"{}"), 1_000);
        assert_eq!(
            a,
            fp(Some(b"7"), Some(b"{}"), 1_000),
            "the same record, the same"
        );
        assert_ne!(a, fp(Some(b"7"), Some(b"{ }"), 1_000), "another value");
        assert_ne!(a, fp(Some(b"8"), Some(b"{}"), 1_000), "another key");
        assert_ne!(a, fp(Some(b"7"), Some(b"{}"), 1_001), "another time");
        assert_ne!(
            fp(Some(b"ab"), Some(b"c"), 0),
            fp(Some(b"a"), Some(b"bc"), 0)
        );
        assert_ne!(fp(None, Some(b""), 0), fp(Some(b""), Some(b""), 0));
        assert_eq!(
            fp(None, None, 0),
            8_684_787_676_381_086_965,
            "pinned: fingerprints stored by an earlier version stay valid"
        );
    }
}
