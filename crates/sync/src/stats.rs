//! Counters, the progress line the sync logs every few seconds, and the same counters for
//! Prometheus (`Stats` is the sync's [`Collect`]or).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sitemon_core::metrics::{Collect, Exposition, Kind};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::decode::RejectKind;

/// What the sync has done since it started; shared by the readers, the writer, the lease
/// keeper, the progress reporter and the metrics endpoint.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// The topic, for the labels of the per-partition metrics.
    topic: String,
    /// Messages stored (rows, duplicates skipped, and rejects): the progress through the topic.
    messages: AtomicU64,
    /// Rows inserted into `website_status`.
    rows: AtomicU64,
    /// Messages whose `check_id` (or offset) was stored already.
    duplicates: AtomicU64,
    /// Rows inserted into `website_status_rejects`, by [`RejectKind::index`].
    rejects: [AtomicU64; RejectKind::ALL.len()],
    /// Transactions committed.
    batches: AtomicU64,
    /// Messages deleted by retention before the sync read them.
    lost_to_retention: AtomicU64,
    /// Partitions this worker holds the lease of now.
    leases_held: AtomicU64,
    /// Per partition held: the high watermark the reader saw last, and the stored next offset.
    partitions: Mutex<BTreeMap<i32, Position>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Position {
    high_watermark: i64,
    stored: i64,
}

impl Stats {
    pub(crate) fn new(topic: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            ..Self::default()
        }
    }

    /// One committed batch: `rejects` counts the rejects inserted, by [`RejectKind::index`].
    pub(crate) fn committed(
        &self,
        messages: u64,
        rows: u64,
        duplicates: u64,
        rejects: &[u64; RejectKind::ALL.len()],
    ) {
        self.messages.fetch_add(messages, Ordering::Relaxed);
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.duplicates.fetch_add(duplicates, Ordering::Relaxed);
        for (counter, n) in self.rejects.iter().zip(rejects) {
            counter.fetch_add(*n, Ordering::Relaxed);
        }
        self.batches.fetch_add(1, Ordering::Relaxed);
    }

    fn rejects_total(&self) -> u64 {
        self.rejects.iter().map(|r| r.load(Ordering::Relaxed)).sum()
    }

    /// The number of partitions whose lease this worker holds.
    pub(crate) fn leases_held(&self, held: usize) {
        self.leases_held.store(held as u64, Ordering::Relaxed);
    }

    /// A partition this worker no longer reads: its lag is another worker's to report.
    pub(crate) fn forget(&self, partition: i32) {
        self.partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&partition);
    }

    pub(crate) fn lost(&self, messages: u64) {
        self.lost_to_retention
            .fetch_add(messages, Ordering::Relaxed);
    }

    pub(crate) fn high_watermark(&self, partition: i32, high_watermark: i64) {
        self.with_partition(partition, |p| p.high_watermark = high_watermark);
    }

    pub(crate) fn stored(&self, partition: i32, next_offset: i64) {
        self.with_partition(partition, |p| p.stored = next_offset);
    }

    fn with_partition(&self, partition: i32, update: impl FnOnce(&mut Position)) {
        let mut partitions = self
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        update(partitions.entry(partition).or_default());
    }

    /// `p0=12 p1=0 …`: high watermark minus stored next offset, per partition.
    fn lag_line(&self) -> String {
        let partitions = self
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut line = String::new();
        for (partition, p) in partitions.iter() {
            let lag = (p.high_watermark - p.stored).max(0);
            let _ = write!(
                line,
                "{}p{partition}={lag}",
                if line.is_empty() { "" } else { " " }
            );
        }
        line
    }

    /// Logs a progress line every `every` until `stop`.
    pub(crate) async fn report(&self, every: Duration, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut last = (Instant::now(), self.messages.load(Ordering::Relaxed));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let now = (Instant::now(), self.messages.load(Ordering::Relaxed));
            let rate = (now.1 - last.1) as f64 / (now.0 - last.0).as_secs_f64().max(1e-3);
            last = now;
            tracing::info!(
                events_per_s = rate.round(),
                rows = self.rows.load(Ordering::Relaxed),
                duplicates = self.duplicates.load(Ordering::Relaxed),
                rejects = self.rejects_total(),
                leases = self.leases_held.load(Ordering::Relaxed),
                lost_to_retention = self.lost_to_retention.load(Ordering::Relaxed),
                lag = %self.lag_line(),
                "sync progress"
            );
        }
    }
}

impl Collect for Stats {
    fn collect(&self, out: &mut Exposition) {
        let counter = |out: &mut Exposition, name: &str, help: &str, value: &AtomicU64| {
            out.sample(
                name,
                help,
                Kind::Counter,
                &[],
                value.load(Ordering::Relaxed) as f64,
            );
        };
        counter(
            out,
            "sitemon_sync_events_total",
            "Check events stored as rows of website_status.",
            &self.rows,
        );
        counter(
            out,
            "sitemon_sync_duplicates_total",
            "Messages not stored because their check_id or offset was stored already.",
            &self.duplicates,
        );
        for kind in RejectKind::ALL {
            out.sample(
                "sitemon_sync_rejects_total",
                "Messages stored as rows of website_status_rejects, by reason.",
                Kind::Counter,
                &[("reason", kind.label())],
                self.rejects[kind.index()].load(Ordering::Relaxed) as f64,
            );
        }
        counter(
            out,
            "sitemon_sync_batches_total",
            "Batches committed (one transaction each).",
            &self.batches,
        );
        counter(
            out,
            "sitemon_sync_lost_to_retention_total",
            "Messages deleted by the topic's retention before the sync read them.",
            &self.lost_to_retention,
        );
        out.sample(
            "sitemon_sync_leases_held",
            "Partitions of the topic this worker holds the lease of.",
            Kind::Gauge,
            &[("topic", &self.topic)],
            self.leases_held.load(Ordering::Relaxed) as f64,
        );
        let partitions = self
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (partition, p) in partitions.iter() {
            out.sample(
                "sitemon_sync_partition_lag",
                "Messages in the partition not yet stored (high watermark minus stored offset), \
                 for the partitions this worker holds.",
                Kind::Gauge,
                &[
                    ("topic", &self.topic),
                    ("partition", &partition.to_string()),
                ],
                (p.high_watermark - p.stored).max(0) as f64,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Stats;
    use crate::decode::RejectKind;
    use sitemon_core::metrics::Registry;
    use std::sync::Arc;

    #[test]
    fn renders_every_metric_with_bounded_labels() {
        let stats = Arc::new(Stats::new("checks"));
        let mut rejects = [0; RejectKind::ALL.len()];
        rejects[RejectKind::NotJson.index()] = 2;
        stats.committed(10, 7, 1, &rejects);
        stats.high_watermark(3, 50);
        stats.stored(3, 20);
        stats.leases_held(1);
        let registry = Registry::new();
        registry.register(stats.clone());
        let text = registry.render();
        for line in [
            "sitemon_sync_events_total 7",
            "sitemon_sync_duplicates_total 1",
            "sitemon_sync_rejects_total{reason=\"not_json\"} 2",
            "sitemon_sync_rejects_total{reason=\"tombstone\"} 0",
            "sitemon_sync_batches_total 1",
            "sitemon_sync_lost_to_retention_total 0",
            "sitemon_sync_leases_held{topic=\"checks\"} 1",
            "sitemon_sync_partition_lag{topic=\"checks\",partition=\"3\"} 30",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert_eq!(text.matches("sitemon_sync_rejects_total{").count(), 7);
        stats.forget(3);
        assert!(!registry.render().contains("partition_lag{"));
    }

    #[test]
    fn lag_is_high_watermark_minus_stored() {
        let stats = Stats::default();
        stats.high_watermark(1, 50);
        stats.stored(1, 20);
        stats.stored(0, 7);
        stats.high_watermark(0, 7);
        assert_eq!(stats.lag_line(), "p0=0 p1=30");
    }
}
