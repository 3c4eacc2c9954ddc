//! Counters, and the progress line the sync logs every few seconds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// What the sync has done since it started; shared by the readers, the writer and the
/// progress reporter.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Messages stored (rows, duplicates skipped, and rejects): the progress through the topic.
    messages: AtomicU64,
    /// Rows inserted into `website_status`.
    rows: AtomicU64,
    /// Messages whose `check_id` (or offset) was stored already.
    duplicates: AtomicU64,
    /// Rows inserted into `website_status_rejects`.
    rejects: AtomicU64,
    /// Messages deleted by retention before the sync read them.
    lost_to_retention: AtomicU64,
    /// Per partition: the high watermark the reader saw last, and the stored next offset.
    partitions: Mutex<BTreeMap<i32, Position>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Position {
    high_watermark: i64,
    stored: i64,
}

impl Stats {
    pub(crate) fn committed(&self, messages: u64, rows: u64, duplicates: u64, rejects: u64) {
        self.messages.fetch_add(messages, Ordering::Relaxed);
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.duplicates.fetch_add(duplicates, Ordering::Relaxed);
        self.rejects.fetch_add(rejects, Ordering::Relaxed);
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
                rejects = self.rejects.load(Ordering::Relaxed),
                lost_to_retention = self.lost_to_retention.load(Ordering::Relaxed),
                lag = %self.lag_line(),
                "sync progress"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Stats;

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
