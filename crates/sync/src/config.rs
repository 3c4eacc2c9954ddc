//! What [`crate::run`] needs: [`SyncConfig`] and its companions.

use std::time::Duration;

use sitemon_core::consume::{
    ConsumerConfig, DEFAULT_FETCH_MAX_WAIT, DEFAULT_FETCH_MIN_BYTES, StartFrom,
};
use sitemon_core::metrics::Registry;
use sitemon_core::{DatabaseConfig, KafkaConfig};

/// The sync's consumer name: its stored offsets (`sync_offsets.consumer`), its lease group
/// and its metrics (`sitemon_sync_*`).
pub const CONSUMER: &str = "sync";

/// What [`crate::run`] needs.
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
    /// The least a fetch waits for, in bytes (as stored on the broker, compressed): the
    /// broker holds a fetch until this much is there or `fetch_max_wait` has passed.
    /// Default 64 KiB, more than a partition gets in `fetch_max_wait` below about 2,000
    /// events/s, so that each partition is fetched about once per `fetch_max_wait` rather than
    /// once per produce request. 1 (the setting before the pipeline was measured) answers as
    /// soon as anything arrives: the lowest latency, and a fetch for about every batch the
    /// checkers produce. Capped at 1 MiB, the most one fetch asks for.
    pub fetch_min_bytes: usize,
    /// How long the broker may hold a fetch that found less than `fetch_min_bytes`: the most
    /// an event waits on the broker for the sync (besides `batch_wait`). Default 250 ms (was
    /// 500 ms with a minimum of one byte). Shorter: less latency, more fetch requests (six
    /// partitions at 250 ms are 24 a second however quiet the topic).
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
    /// How long raw rows are kept: day partitions that ended longer ago are dropped (whole,
    /// never emptied by `DELETE`). `None` (the default) keeps everything.
    pub retention: Option<Duration>,
    /// How long the hourly and daily rollups are kept, whatever `retention` says.
    pub rollup_retention: Duration,
    /// How often partitions ahead are created and the retentions applied.
    pub maintain_every: Duration,
    /// Where the sync's metrics are registered (`sitemon_sync_*`): serve it to Prometheus
    /// with [`sitemon_core::metrics::serve`]. The default is a registry of its own that
    /// nobody reads.
    pub metrics: Registry,
}

impl SyncConfig {
    /// The defaults: batches of 5,000 or 200 ms, fetches of at least 64 KiB or 250 ms, the
    /// whole history, progress every 5 s,
    /// new partitions looked for every 10 s, leases rebalanced every 2 s, raw rows kept
    /// forever and rollups 400 days, day partitions kept every hour, metrics in a registry
    /// of their own.
    pub fn new(database: DatabaseConfig, kafka: KafkaConfig) -> Self {
        Self {
            database,
            kafka,
            batch_size: 5_000,
            batch_wait: Duration::from_millis(200),
            fetch_min_bytes: DEFAULT_FETCH_MIN_BYTES,
            fetch_max_wait: DEFAULT_FETCH_MAX_WAIT,
            start: StartFrom::Earliest,
            progress_every: Duration::from_secs(5),
            partition_poll_every: Duration::from_secs(10),
            rebalance_every: Duration::from_secs(2),
            retention: None,
            rollup_retention: sitemon_core::history::DEFAULT_ROLLUP_RETENTION,
            maintain_every: sitemon_core::history::MAINTAIN_EVERY,
            metrics: Registry::new(),
        }
    }
}

impl SyncConfig {
    /// The exactly-once consumer's part of the settings.
    pub(crate) fn consumer(&self) -> ConsumerConfig {
        let mut consumer = ConsumerConfig::new(CONSUMER, self.database.clone(), self.kafka.clone());
        consumer.batch_size = self.batch_size;
        consumer.batch_wait = self.batch_wait;
        consumer.fetch_min_bytes = self.fetch_min_bytes;
        consumer.fetch_max_wait = self.fetch_max_wait;
        consumer.start = self.start;
        consumer.progress_every = self.progress_every;
        consumer.partition_poll_every = self.partition_poll_every;
        consumer.rebalance_every = self.rebalance_every;
        consumer.metrics = self.metrics.clone();
        consumer
    }
}

/// The lease group of the syncs of `topic`: every sync of the topic on the same database
/// shares its partitions with the others of this group.
pub fn lease_group(topic: &str) -> String {
    sitemon_core::consume::lease_group(CONSUMER, topic)
}

#[cfg(test)]
mod tests {
    use sitemon_core::{KafkaSettings, Secret};

    use super::*;

    #[test]
    fn debug_prints_neither_password() {
        let database_password = "s3cret-pw-41c7";
        let sasl_password = "s3cret-sasl-93e2";
        let kafka = KafkaConfig::new(KafkaSettings {
            brokers: "127.0.0.1:9093".into(),
            topic: "t".into(),
            sasl_mechanism: Some("SCRAM-SHA-512".into()),
            sasl_username: Some("sync".into()),
            sasl_password: Some(Secret::new(sasl_password)),
            ..KafkaSettings::default()
        })
        .expect("kafka");
        let database =
            DatabaseConfig::from_url(&format!("postgres://u:{database_password}@127.0.0.1/db"))
                .expect("url");
        let config = SyncConfig::new(database, kafka);
        for debug in [format!("{config:?}"), format!("{config:#?}")] {
            assert!(!debug.contains(database_password), "{debug}");
            assert!(!debug.contains(sasl_password), "{debug}");
            assert!(debug.contains("127.0.0.1:9093"), "{debug}");
        }
    }
}
