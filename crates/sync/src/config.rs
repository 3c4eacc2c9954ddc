//! What [`crate::run`] needs: [`SyncConfig`] and its companions.

use std::time::Duration;

use sitemon_consume::ConsumerConfig;
use sitemon_core::metrics::Registry;
use sitemon_core::{DatabaseConfig, KafkaConfig};

/// The sync's consumer name: its stored offsets (`sync_offsets.consumer`), its lease group
/// and its metrics (`sitemon_sync_*`).
pub const CONSUMER: &str = "sync";

/// The sync's writers by default: two batches stored at once (see BENCHMARKS.md, "Sync").
pub const DEFAULT_WRITERS: usize = 2;

/// What [`crate::run`] needs: the exactly-once consumer's settings, and the history's.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SyncConfig {
    /// The consumer's settings (database, topic, batches, fetches, start, leases, metrics):
    /// its name is [`CONSUMER`], its metrics `sitemon_sync_*`, served with
    /// [`sitemon_core::metrics::serve`].
    pub consumer: ConsumerConfig,
    /// How long raw rows are kept: day partitions that ended longer ago are dropped (whole,
    /// never emptied by `DELETE`). `None` (the default) keeps everything.
    pub retention: Option<Duration>,
    /// How long the hourly and daily rollups are kept, whatever `retention` says.
    pub rollup_retention: Duration,
    /// How often partitions ahead are created and the retentions applied.
    pub maintain_every: Duration,
}

impl SyncConfig {
    /// The defaults: [`ConsumerConfig::new`]'s (batches of 5,000 or 200 ms, fetches of at
    /// least 64 KiB or 250 ms, the whole history, leases rebalanced every 2 s) but
    /// [`DEFAULT_WRITERS`] writers, raw rows kept
    /// forever and rollups 400 days, day partitions kept every hour.
    pub fn new(database: DatabaseConfig, kafka: KafkaConfig) -> Self {
        let mut consumer = ConsumerConfig::new(CONSUMER, database, kafka);
        consumer.writers = DEFAULT_WRITERS;
        Self {
            consumer,
            retention: None,
            rollup_retention: sitemon_core::history::DEFAULT_ROLLUP_RETENTION,
            maintain_every: sitemon_core::history::MAINTAIN_EVERY,
        }
    }

    /// Where the sync's metrics are registered.
    pub fn metrics(&self) -> &Registry {
        &self.consumer.metrics
    }
}

/// The lease group of the syncs of `topic`: every sync of the topic on the same database
/// shares its partitions with the others of this group.
pub fn lease_group(topic: &str) -> String {
    sitemon_consume::lease_group(CONSUMER, topic)
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
