//! `sitemon sync`: consume the check events into PostgreSQL until SIGINT/SIGTERM.

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use sitemon_sync::SyncConfig;

use crate::args::{ServiceArgs, Start};

/// Arguments of `sitemon sync`.
#[derive(Debug, Args)]
pub(crate) struct SyncArgs {
    #[command(flatten)]
    services: ServiceArgs,
    #[command(flatten)]
    options: SyncOptions,
}

/// The sync's own settings, shared by `sitemon sync` and `sitemon run`.
#[derive(Debug, Args)]
pub(crate) struct SyncOptions {
    /// The most events stored in one transaction.
    #[arg(long, env = "SITEMON_SYNC_BATCH_SIZE", default_value_t = 5000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch_size: u32,
    /// How long, in milliseconds, the first event of a batch may wait for more before the
    /// batch is stored: the delay a quiet topic sees.
    #[arg(long, env = "SITEMON_SYNC_BATCH_WAIT", default_value_t = 200,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    batch_wait: u64,
    /// Batches stored at once, each in its own transaction on its own connection (the
    /// partitions are divided among them, so each partition's batches stay in order).
    #[arg(long, env = "SITEMON_SYNC_WRITERS", default_value_t = sitemon_sync::DEFAULT_WRITERS as u32,
          value_parser = clap::value_parser!(u32).range(1..=16))]
    writers: u32,
    /// The least bytes (as stored, compressed) a fetch from a partition waits for, up to
    /// --fetch-max-wait-ms: larger fetches fewer times. 1 answers as soon as any event
    /// arrives (the lowest latency, one fetch for about every batch produced).
    #[arg(long, env = "SITEMON_SYNC_FETCH_MIN_BYTES", default_value_t = sitemon_sync::DEFAULT_FETCH_MIN_BYTES as u32,
          value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
    fetch_min_bytes: u32,
    /// How long, in milliseconds, the broker may hold a fetch that found less than
    /// --fetch-min-bytes: adds up to that much latency; each partition is fetched at least
    /// this often however quiet it is.
    #[arg(long, env = "SITEMON_SYNC_FETCH_MAX_WAIT_MS", default_value_t = sitemon_sync::DEFAULT_FETCH_MAX_WAIT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    fetch_max_wait_ms: u64,
    /// Where to start reading a partition for which no offset is stored yet: `earliest`
    /// (everything still in the topic) or `latest` (only events published from now on).
    /// Once an offset is stored, the sync always goes on from it.
    #[arg(long, env = "SITEMON_SYNC_START", value_enum, default_value_t = Start::Earliest)]
    start: Start,
    /// How long raw check rows are kept (e.g. 30d): whole days older than this are dropped.
    /// Unset: kept forever. The hourly and daily rollups are kept apart (--rollup-retention).
    #[arg(long, env = "SITEMON_RETENTION", value_parser = retention)]
    retention: Option<Duration>,
    /// How long the hourly and daily rollups (the long-window reports) are kept.
    #[arg(long, env = "SITEMON_ROLLUP_RETENTION", default_value = "400d", value_parser = retention)]
    rollup_retention: Duration,
}

/// A retention: whole days, at least one (raw history is dropped a day partition at a time).
fn retention(text: &str) -> Result<Duration, crate::args::InvalidValue> {
    let window = crate::args::window(text)?;
    if window.as_secs() % 86_400 != 0 {
        return Err(crate::args::InvalidValue(format!(
            "{:?} must be whole days, such as 30d",
            text.trim()
        )));
    }
    Ok(window)
}

impl SyncOptions {
    /// The sync's configuration with these settings.
    pub(crate) fn config(
        &self,
        database: sitemon_core::DatabaseConfig,
        kafka: sitemon_core::KafkaConfig,
    ) -> SyncConfig {
        let mut config = SyncConfig::new(database, kafka);
        config.consumer.batch_size = self.batch_size as usize;
        config.consumer.batch_wait = Duration::from_millis(self.batch_wait);
        config.consumer.writers = self.writers as usize;
        config.consumer.fetch_min_bytes = self.fetch_min_bytes as usize;
        config.consumer.fetch_max_wait = Duration::from_millis(self.fetch_max_wait_ms);
        config.retention = self.retention;
        config.rollup_retention = self.rollup_retention;
        config.consumer.start = self.start.into();
        config
    }
}

pub(crate) async fn exec(args: SyncArgs) -> anyhow::Result<()> {
    let config = args
        .options
        .config(args.services.db.config()?, args.services.kafka.config()?);
    let topic = config.consumer.kafka.topic.clone();
    let shutdown = crate::shutdown::on_signal();
    args.services
        .metrics
        .serve(&config.consumer.metrics, &shutdown)
        .await?;
    sitemon_sync::run(config, shutdown)
        .await
        .with_context(|| format!("sync of topic {topic} failed to start"))
}
