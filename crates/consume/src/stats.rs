//! What every consumer counts, whatever its sink: batches, messages lost to retention, the
//! leases held and the lag per partition. Logged as a progress line every few seconds (with
//! the sink's own figures, [`super::Sink::progress`]) and registered for Prometheus as
//! `sitemon_{consumer}_*` (`sitemon_sync_batches_total`, `sitemon_alert_partition_lag`, …).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use sitemon_core::metrics::Registry;

/// The label of `sitemon_{consumer}_partition_lag` (after `topic`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabel {
    partition: i32,
}

/// What a consumer has done since it started; shared by the readers, the writer, the
/// session, the progress reporter and the metrics endpoint.
#[derive(Debug)]
pub(crate) struct Stats {
    /// The consumer's name: the metrics' prefix.
    consumer: String,
    /// The topic, for the labels of the per-partition metrics.
    topic: String,
    /// Messages stored (whatever the sink made of them): the progress through the topic.
    messages: AtomicU64,
    /// `sitemon_{consumer}_batches_total`: transactions committed.
    batches: Counter,
    /// `sitemon_{consumer}_lost_to_retention_total`: messages deleted by retention before
    /// the consumer read them.
    lost_to_retention: Counter,
    /// `sitemon_{consumer}_leases_held`: partitions this worker holds the lease of now.
    leases_held: Gauge,
    /// `sitemon_{consumer}_partition_lag`: per partition held, high watermark minus stored
    /// offset.
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
    pub(crate) fn new(consumer: &str, topic: &str) -> Self {
        Self {
            consumer: consumer.to_owned(),
            topic: topic.to_owned(),
            messages: AtomicU64::default(),
            batches: Counter::default(),
            lost_to_retention: Counter::default(),
            leases_held: Gauge::default(),
            lag: Family::default(),
            partitions: Mutex::default(),
        }
    }

    /// Registers the metrics in `metrics`.
    pub(crate) fn register(&self, metrics: &Registry) {
        let name = |metric: &str| format!("sitemon_{}_{metric}", self.consumer);
        metrics.register(|registry| {
            registry.register(
                name("batches"),
                "Batches committed (one transaction each)",
                self.batches.clone(),
            );
            registry.register(
                name("lost_to_retention"),
                "Messages deleted by the topic's retention before they were read",
                self.lost_to_retention.clone(),
            );
            let topic =
                registry.sub_registry_with_label(("topic".into(), self.topic.clone().into()));
            topic.register(
                name("leases_held"),
                "Partitions of the topic this worker holds the lease of",
                self.leases_held.clone(),
            );
            topic.register(
                name("partition_lag"),
                "Messages in the partition not yet stored (high watermark minus stored offset), \
                 for the partitions this worker holds",
                self.lag.clone(),
            );
        });
    }

    /// One committed batch of `messages`.
    pub(crate) fn committed(&self, messages: u64) {
        self.messages.fetch_add(messages, Ordering::Relaxed);
        self.batches.inc();
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

    /// Logs a progress line every `every` until `stop`, with `sink`'s own figures.
    pub(crate) async fn report(
        &self,
        every: Duration,
        sink: impl Fn() -> String,
        stop: CancellationToken,
    ) {
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
                stored = %sink(),
                leases = self.leases_held.get(),
                lost_to_retention = self.lost_to_retention.get(),
                lag = %self.lag_line(),
                "{} progress",
                self.consumer
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Stats;
    use sitemon_core::metrics::Registry;

    /// Every name and label dashboards use: a rename fails here first.
    #[test]
    fn metrics_keep_their_names_and_labels() {
        let stats = Stats::new("sync", "checks");
        let registry = Registry::new();
        stats.register(&registry);
        stats.high_watermark(0, 5);
        let text = registry.render();
        let (series, families) = sitemon_testkit::metrics::shapes(&text);
        let golden = [
            "sitemon_sync_batches_total{}",
            "sitemon_sync_leases_held{topic}",
            "sitemon_sync_lost_to_retention_total{}",
            "sitemon_sync_partition_lag{topic,partition}",
        ];
        assert_eq!(series, golden.map(String::from).into(), "{text}");
        let golden = [
            "sitemon_sync_batches counter",
            "sitemon_sync_leases_held gauge",
            "sitemon_sync_lost_to_retention counter",
            "sitemon_sync_partition_lag gauge",
        ];
        assert_eq!(families, golden.map(String::from).into(), "{text}");
    }

    #[test]
    fn renders_every_metric_under_the_consumers_name() {
        let stats = Stats::new("alert", "checks");
        stats.committed(10);
        stats.high_watermark(3, 50);
        stats.stored(3, 20);
        stats.leases_held(1);
        let registry = Registry::new();
        stats.register(&registry);
        let text = registry.render();
        for line in [
            "sitemon_alert_batches_total 1",
            "sitemon_alert_lost_to_retention_total 0",
            "sitemon_alert_leases_held{topic=\"checks\"} 1",
            "sitemon_alert_partition_lag{topic=\"checks\",partition=\"3\"} 30",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        stats.forget(3);
        assert!(!registry.render().contains("partition_lag{"));
    }

    #[test]
    fn lag_is_high_watermark_minus_stored() {
        let stats = Stats::new("sync", "checks");
        stats.high_watermark(1, 50);
        stats.stored(1, 20);
        stats.stored(0, 7);
        stats.high_watermark(0, 7);
        assert_eq!(stats.lag_line(), "p0=0 p1=30");
    }
}
