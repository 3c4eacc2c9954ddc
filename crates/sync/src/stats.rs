//! Counters, the progress line the sync logs every few seconds, and the same counters for
//! Prometheus (registered in [`SyncConfig::metrics`]).
//!
//! [`SyncConfig::metrics`]: crate::config::SyncConfig::metrics

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sitemon_core::metrics::Registry;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::decode::RejectKind;

/// The label of `sitemon_sync_rejects_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    /// [`RejectKind::label`]: bounded.
    reason: &'static str,
}

/// The label of `sitemon_sync_partition_lag` (after `topic`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabel {
    partition: i32,
}

/// What the sync has done since it started; shared by the readers, the writer, the
/// session, the progress reporter and the metrics endpoint.
#[derive(Debug)]
pub(crate) struct Stats {
    /// The topic, for the labels of the per-partition metrics.
    topic: String,
    /// Messages stored (rows, duplicates skipped, and rejects): the progress through the topic.
    messages: AtomicU64,
    /// `sitemon_sync_events_total`: rows inserted into `website_status`.
    rows: Counter,
    /// `sitemon_sync_duplicates_total`: messages whose `check_id` (or offset) was stored
    /// already.
    duplicates: Counter,
    /// `sitemon_sync_rejects_total`: every reason's series, created at the start so that each
    /// shows (at 0) before it first happens.
    reject_family: Family<ReasonLabel, Counter>,
    /// The counters of `reject_family`, by [`RejectKind::index`].
    rejects: [Counter; RejectKind::ALL.len()],
    /// `sitemon_sync_batches_total`: transactions committed.
    batches: Counter,
    /// `sitemon_sync_lost_to_retention_total`: messages deleted by retention before the sync
    /// read them.
    lost_to_retention: Counter,
    /// `sitemon_sync_leases_held`: partitions this worker holds the lease of now.
    leases_held: Gauge,
    /// `sitemon_sync_partition_lag`: per partition held, high watermark minus stored offset.
    lag: Family<PartitionLabel, Gauge>,
    /// Per partition held: the high watermark the reader saw last, and the stored next offset.
    partitions: Mutex<BTreeMap<i32, Position>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Position {
    high_watermark: i64,
    stored: i64,
}

impl Position {
    /// Messages not yet stored.
    fn lag(self) -> i64 {
        (self.high_watermark - self.stored).max(0)
    }
}

impl Stats {
    pub(crate) fn new(topic: &str) -> Self {
        let reject_family = Family::<ReasonLabel, Counter>::default();
        let rejects = RejectKind::ALL.map(|kind| {
            reject_family.get_or_create_owned(&ReasonLabel {
                reason: kind.label(),
            })
        });
        Self {
            topic: topic.to_owned(),
            messages: AtomicU64::default(),
            rows: Counter::default(),
            duplicates: Counter::default(),
            reject_family,
            rejects,
            batches: Counter::default(),
            lost_to_retention: Counter::default(),
            leases_held: Gauge::default(),
            lag: Family::default(),
            partitions: Mutex::default(),
        }
    }

    /// Registers the metrics in `metrics`.
    pub(crate) fn register(&self, metrics: &Registry) {
        metrics.register(|registry| {
            registry.register(
                "sitemon_sync_events",
                "Check events stored as rows of website_status",
                self.rows.clone(),
            );
            registry.register(
                "sitemon_sync_duplicates",
                "Messages not stored because their check_id or offset was stored already",
                self.duplicates.clone(),
            );
            registry.register(
                "sitemon_sync_rejects",
                "Messages stored as rows of website_status_rejects, by reason",
                self.reject_family.clone(),
            );
            registry.register(
                "sitemon_sync_batches",
                "Batches committed (one transaction each)",
                self.batches.clone(),
            );
            registry.register(
                "sitemon_sync_lost_to_retention",
                "Messages deleted by the topic's retention before the sync read them",
                self.lost_to_retention.clone(),
            );
            let topic =
                registry.sub_registry_with_label(("topic".into(), self.topic.clone().into()));
            topic.register(
                "sitemon_sync_leases_held",
                "Partitions of the topic this worker holds the lease of",
                self.leases_held.clone(),
            );
            topic.register(
                "sitemon_sync_partition_lag",
                "Messages in the partition not yet stored (high watermark minus stored offset), \
                 for the partitions this worker holds",
                self.lag.clone(),
            );
        });
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
        self.rows.inc_by(rows);
        self.duplicates.inc_by(duplicates);
        for (counter, n) in self.rejects.iter().zip(rejects) {
            counter.inc_by(*n);
        }
        self.batches.inc();
    }

    fn rejects_total(&self) -> u64 {
        self.rejects.iter().map(Counter::get).sum()
    }

    /// The number of partitions whose lease this worker holds.
    pub(crate) fn leases_held(&self, held: usize) {
        self.leases_held
            .set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    /// A partition this worker no longer reads: its lag is another worker's to report.
    pub(crate) fn forget(&self, partition: i32) {
        self.partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&partition);
        self.lag.remove(&PartitionLabel { partition });
    }

    pub(crate) fn lost(&self, messages: u64) {
        self.lost_to_retention.inc_by(messages);
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
        let position = partitions.entry(partition).or_default();
        update(position);
        // Set while the map is locked: `forget` cannot come in between and leave a series.
        self.lag
            .get_or_create(&PartitionLabel { partition })
            .set(position.lag());
    }

    /// `p0=12 p1=0 …`: high watermark minus stored next offset, per partition.
    fn lag_line(&self) -> String {
        let partitions = self
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut line = String::new();
        for (partition, p) in partitions.iter() {
            let lag = p.lag();
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
                rows = self.rows.get(),
                duplicates = self.duplicates.get(),
                rejects = self.rejects_total(),
                leases = self.leases_held.get(),
                lost_to_retention = self.lost_to_retention.get(),
                lag = %self.lag_line(),
                "sync progress"
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

    /// Every name and label dashboards use: a rename fails here first.
    #[test]
    fn metrics_keep_their_names_and_labels() {
        let stats = Stats::new("checks");
        let registry = Registry::new();
        stats.register(&registry);
        stats.high_watermark(0, 5);
        let text = registry.render();
        let (series, families) = sitemon_testkit::metrics::shapes(&text);
        let golden = [
            "sitemon_sync_batches_total{}",
            "sitemon_sync_duplicates_total{}",
            "sitemon_sync_events_total{}",
            "sitemon_sync_leases_held{topic}",
            "sitemon_sync_lost_to_retention_total{}",
            "sitemon_sync_partition_lag{topic,partition}",
            "sitemon_sync_rejects_total{reason}",
        ];
        assert_eq!(series, golden.map(String::from).into(), "{text}");
        let golden = [
            "sitemon_sync_batches counter",
            "sitemon_sync_duplicates counter",
            "sitemon_sync_events counter",
            "sitemon_sync_leases_held gauge",
            "sitemon_sync_lost_to_retention counter",
            "sitemon_sync_partition_lag gauge",
            "sitemon_sync_rejects counter",
        ];
        assert_eq!(families, golden.map(String::from).into(), "{text}");
        for kind in RejectKind::ALL {
            let line = format!(
                "sitemon_sync_rejects_total{{reason=\"{}\"}} 0",
                kind.label()
            );
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

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
        stats.register(&registry);
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
        assert_eq!(
            text.matches("sitemon_sync_rejects_total{").count(),
            RejectKind::ALL.len()
        );
        stats.forget(3);
        assert!(!registry.render().contains("partition_lag{"));
    }

    #[test]
    fn lag_is_high_watermark_minus_stored() {
        let stats = Stats::new("checks");
        stats.high_watermark(1, 50);
        stats.stored(1, 20);
        stats.stored(0, 7);
        stats.high_watermark(0, 7);
        assert_eq!(stats.lag_line(), "p0=0 p1=30");
    }
}
