//! The error type of the exactly-once consumer ([`super::run`]).

use std::time::Duration;

use sitemon_core::retry;

/// Everything that can stop a consumer (the sync, the alert service).
///
/// Once the consumer has started, [`super::run`] retries every one of these with backoff: they
/// reach the caller only when the first connection fails (a wrong URL, broker or topic, a
/// database without the schema), so that a mistake in the configuration is reported at once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Connecting, a Kafka administrative call, or a call that timed out
    /// ([`sitemon_core::Error::Timeout`]).
    #[error(transparent)]
    Core(#[from] sitemon_core::Error),

    /// A statement failed.
    #[error("PostgreSQL failed while {doing}: {source}")]
    Database {
        /// What we were doing, e.g. "writing a batch".
        doing: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// The database has no `sync_offsets` table (or no `consumer` column in it).
    #[error(
        "the database has no sitemon schema (table sync_offsets is missing): run `sitemon migrate` first"
    )]
    NotMigrated,

    /// The topic does not exist.
    #[error("Kafka topic {topic} does not exist: create it with `sitemon topic create`")]
    UnknownTopic {
        /// The topic.
        topic: String,
    },

    /// A Kafka request about one partition failed.
    #[error("Kafka failed to {operation} {topic}/{partition}: {source}")]
    Kafka {
        /// What we asked, e.g. "fetch from".
        operation: &'static str,
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// rskafka's error.
        #[source]
        source: Box<rskafka::client::error::Error>,
    },

    /// The stored offset of a partition is not the one this worker read from: another
    /// worker wrote it (or an earlier commit of this batch succeeded unseen). The batch was
    /// rolled back; the consumer reloads the stored offsets and goes on from there.
    #[error(
        "the stored offset of {topic}/{partition} moved away from {expected} (topic \
         incarnation {incarnation}) under us; reloading the stored offsets"
    )]
    OffsetMoved {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The next offset this worker expected to find.
        expected: i64,
        /// The topic incarnation of `expected`.
        incarnation: i32,
    },

    /// A batch's transaction found that this worker no longer holds the lease of a
    /// partition it writes (its lease connection died): the batch was rolled back.
    #[error(
        "this worker no longer holds the lease of {topic} partitions {partitions:?}; the batch \
         was rolled back and the partitions' new owner reads it again"
    )]
    LeaseLost {
        /// The topic.
        topic: String,
        /// The partitions of the batch.
        partitions: Vec<i32>,
    },

    /// The dedicated lease connection failed: every lease may be gone with it.
    #[error("the partition leases of {topic} are lost ({source}); stopping every partition")]
    Lease {
        /// The topic.
        topic: String,
        /// What failed.
        #[source]
        source: sitemon_core::Error,
    },

    /// Storing a batch failed in the sink (the sync's rows, the alert service's state).
    #[error("{0}")]
    Sink(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// A task of the consumer ended unexpectedly (a bug).
    #[error("a consumer task stopped unexpectedly: {0}")]
    Task(String),
}

impl Error {
    /// Whether PostgreSQL or Kafka refused our credentials (see
    /// [`sitemon_core::Error::is_auth_failure`]): once running, [`super::run`] retries it
    /// only on a slow backoff.
    pub fn is_auth_failure(&self) -> bool {
        match self {
            Self::Core(e) | Self::Lease { source: e, .. } => e.is_auth_failure(),
            Self::Database { source, .. } => sitemon_core::db::is_auth_failure(source),
            Self::Kafka { source, .. } => sitemon_core::kafka::is_auth_failure(source),
            _ => false,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Maps an sqlx error to [`Error::Database`].
pub fn db(doing: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Database { doing, source }
}

/// Runs an sqlx future for at most `after`, naming what it was `doing` if it fails.
pub async fn bounded_db<T>(
    doing: &'static str,
    after: Duration,
    future: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T> {
    let future = async { future.await.map_err(db(doing)) };
    retry::timeout(&format!("PostgreSQL while {doing}"), after, future).await
}

/// A timeout is core's [`sitemon_core::Error::Timeout`]: one variant for every crate.
impl retry::TimedOut for Error {
    fn timed_out(operation: &str, after: Duration) -> Self {
        Self::Core(sitemon_core::Error::timed_out(operation, after))
    }
}
