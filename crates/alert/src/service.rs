//! `sitemon alert`: the processor over the events topic, and the delivery loop beside it.
//!
//! The processor runs inside the exactly-once consumer of [`sitemon_consume`], the
//! same machinery as the sync's, under a consumer name of its own ([`CONSUMER`]): its own
//! stored offsets (`sync_offsets` rows with `consumer = 'alert'`), its own lease group
//! (`alert:TOPIC`), so any number of alert workers share the topic's partitions exactly as
//! syncs do, and a worker killed with `kill -9` has its partitions taken over on the next
//! rebalance. Each batch's state changes, incidents and outbox rows are written in the
//! transaction that moves its offsets ([`Processor::apply`]): a crash at any instant
//! neither loses nor repeats a change.
//!
//! The delivery loop ([`crate::delivery::run`]) sends the outbox from PostgreSQL alone; every
//! worker runs one, and they share the rows through `FOR UPDATE SKIP LOCKED`.
//!
//! # Where a new alert service starts
//! A partition without a stored `alert` offset starts at its **latest** offset by default:
//! an alert service started on a topic that holds a week of history does not replay that
//! week's outages as notifications. [`AlertConfig::start`] can say `Earliest` (tests do).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sitemon_consume::{self as consume, ConsumerConfig, Entry, Message, Sink, StartFrom};
use sitemon_core::metrics::Registry;
use sitemon_core::{CheckEvent, DatabaseConfig, KafkaConfig};
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use crate::delivery::{self, DeliveryConfig};
use crate::machine::Policy;
use crate::processor::{Applied, Processor};

/// The alert service's consumer name: its stored offsets, its lease group (`alert:TOPIC`)
/// and its metrics (`sitemon_alert_*`).
pub const CONSUMER: &str = "alert";

/// The pooled connections: the consumer's writer, one to start partitions, and the delivery
/// loop's (claims, answers, and its `LISTEN`). The lease connection is not pooled.
const POOL_SIZE: u32 = 5;

/// What [`run`] needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AlertConfig {
    /// The consumer's settings: database, topic, batches, fetches, leases, metrics. Its
    /// name is [`CONSUMER`]; its default start is `Latest` (see the module's documentation).
    pub consumer: ConsumerConfig,
    /// The thresholds of sites without overrides of their own.
    pub policy: Policy,
    /// How notifications are sent.
    pub delivery: DeliveryConfig,
}

impl AlertConfig {
    /// The defaults: [`Policy::default`], [`DeliveryConfig::default`], new partitions read
    /// from their latest offset, batches of at most 1,000 events or 100 ms (alerts want
    /// latency more than throughput; one worker still keeps up with the sync, see
    /// BENCHMARKS.md).
    pub fn new(database: DatabaseConfig, kafka: KafkaConfig) -> Self {
        let mut consumer = ConsumerConfig::new(CONSUMER, database, kafka);
        consumer.start = StartFrom::Latest;
        consumer.batch_size = 1_000;
        consumer.batch_wait = Duration::from_millis(100);
        Self {
            consumer,
            policy: Policy::default(),
            delivery: DeliveryConfig::default(),
        }
    }

    /// Where the metrics go (`sitemon_alert_*`).
    pub fn metrics(&self) -> &Registry {
        &self.consumer.metrics
    }
}

/// Runs the alert service until `shutdown`: the processor over the topic and the delivery
/// loop, side by side. On shutdown the batch in hand is stored, and notifications being
/// sent finish.
///
/// # Errors
/// Only before it has started: the database cannot be reached or has no alert schema (run
/// `sitemon migrate`), no broker answers, or the topic does not exist.
pub async fn run(config: AlertConfig, shutdown: CancellationToken) -> Result<(), ServiceError> {
    let pool = sitemon_core::db::connect(&config.consumer.database, POOL_SIZE).await?;
    let migrated: bool = consume::bounded_db(
        "looking for the alert schema",
        Duration::from_secs(30),
        sqlx::query_scalar("SELECT to_regclass('alert_outbox') IS NOT NULL").fetch_one(&pool),
    )
    .await?;
    if !migrated {
        return Err(consume::Error::NotMigrated.into());
    }
    let sink = Arc::new(Events {
        processor: Processor::new(config.policy),
        counts: Counts::default(),
    });
    let stop_delivery = CancellationToken::new();
    let mut sending = tokio::spawn(delivery::run(
        pool.clone(),
        config.delivery.clone(),
        stop_delivery.clone(),
    ));
    let consumed = tokio::select! {
        consumed = consume::run(&config.consumer, &pool, sink, shutdown.clone()) => consumed,
        sent = &mut sending => {
            // The delivery loop only ends on its own by a bug: stop the consumer too.
            shutdown.cancel();
            pool.close().await;
            return Err(match sent {
                Ok(Ok(())) => ServiceError::Delivery("the delivery loop stopped".into()),
                Ok(Err(e)) => ServiceError::Delivery(e.to_string()),
                Err(e) => ServiceError::Delivery(format!("the delivery loop failed: {e}")),
            });
        }
    };
    stop_delivery.cancel();
    if let Ok(Err(e)) = sending.await {
        tracing::warn!("the delivery loop stopped with an error: {e}");
    }
    pool.close().await;
    tracing::info!("alert service stopped");
    Ok(consumed?)
}

/// Why [`run`] could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The consumer's: the database, the broker, the topic, the schema.
    #[error(transparent)]
    Consumer(#[from] consume::Error),
    /// The delivery loop ended (a bug).
    #[error("{0}")]
    Delivery(String),
}

impl From<sitemon_core::Error> for ServiceError {
    fn from(e: sitemon_core::Error) -> Self {
        Self::Consumer(e.into())
    }
}

impl ServiceError {
    /// Whether PostgreSQL or Kafka refused our credentials.
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, Self::Consumer(e) if e.is_auth_failure())
    }
}

/// The alert service's [`Sink`]: check events into the [`Processor`].
#[derive(Debug)]
struct Events {
    processor: Processor,
    counts: Counts,
}

/// What the processor has done since the service started, for the progress line.
#[derive(Debug, Default)]
struct Counts {
    events: AtomicU64,
    skipped: AtomicU64,
    opened: AtomicU64,
    resolved: AtomicU64,
    notifications: AtomicU64,
}

/// What one batch did: the processor's figures and the messages that were no check event.
#[derive(Debug)]
struct Stored {
    applied: Applied,
    skipped: u64,
}

impl Sink for Events {
    /// A check event, or nothing: a message that is no check event (the sync keeps it as a
    /// reject with its reason) means nothing to alerting.
    type Item = Option<CheckEvent>;
    type Stored = Stored;

    fn decode(&self, message: Message) -> Option<CheckEvent> {
        CheckEvent::from_json(message.value.as_deref()?).ok()
    }

    async fn store(
        &self,
        tx: &mut PgConnection,
        _topic: &str,
        batch: &[Entry<Option<CheckEvent>>],
    ) -> consume::Result<Stored> {
        let events: Vec<CheckEvent> = batch.iter().filter_map(|e| e.item.clone()).collect();
        let skipped = (batch.len() - events.len()) as u64;
        let applied = self
            .processor
            .apply(tx, &events)
            .await
            .map_err(|e| consume::Error::Sink(Box::new(e)))?;
        Ok(Stored { applied, skipped })
    }

    fn committed(&self, stored: Stored) {
        let counts = &self.counts;
        let add = |counter: &AtomicU64, n: usize| {
            counter.fetch_add(n as u64, Ordering::Relaxed);
        };
        add(&counts.events, stored.applied.events);
        counts.skipped.fetch_add(stored.skipped, Ordering::Relaxed);
        add(&counts.opened, stored.applied.opened);
        add(&counts.resolved, stored.applied.resolved);
        add(&counts.notifications, stored.applied.notifications);
        if stored.applied.opened + stored.applied.resolved > 0 {
            tracing::info!(
                opened = stored.applied.opened,
                resolved = stored.applied.resolved,
                notifications = stored.applied.notifications,
                "incidents changed"
            );
        }
    }

    fn progress(&self) -> String {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let counts = &self.counts;
        format!(
            "events={} skipped={} opened={} resolved={} notifications={}",
            get(&counts.events),
            get(&counts.skipped),
            get(&counts.opened),
            get(&counts.resolved),
            get(&counts.notifications)
        )
    }
}
