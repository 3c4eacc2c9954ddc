//! Counters of what the checker did, and the schedule-lag histogram, shared by every task
//! without locks.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Counters for the progress line and the final summary.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) checks: AtomicU64,
    pub(crate) up: AtomicU64,
    pub(crate) down: AtomicU64,
    pub(crate) skipped_ticks: AtomicU64,
    pub(crate) produced: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) produce_failures: AtomicU64,
    pub(crate) lag: LagHistogram,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn snapshot(&self, sites: usize, buffered: usize) -> Snapshot {
        Snapshot {
            sites,
            checks: self.checks.load(Relaxed),
            up: self.up.load(Relaxed),
            down: self.down.load(Relaxed),
            skipped_ticks: self.skipped_ticks.load(Relaxed),
            produced: self.produced.load(Relaxed),
            buffered,
            dropped: self.dropped.load(Relaxed),
            lag_p50: self.lag.quantile(0.50),
            lag_p99: self.lag.quantile(0.99),
            lag_max: self.lag.max(),
        }
    }
}

/// A moment's view of [`Stats`], printed as `key=value` pairs so that both people and
/// scripts (the benchmark) can read it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Snapshot {
    pub(crate) sites: usize,
    pub(crate) checks: u64,
    pub(crate) up: u64,
    pub(crate) down: u64,
    pub(crate) skipped_ticks: u64,
    pub(crate) produced: u64,
    pub(crate) buffered: usize,
    pub(crate) dropped: u64,
    pub(crate) lag_p50: Duration,
    pub(crate) lag_p99: Duration,
    pub(crate) lag_max: Duration,
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "sites={} checks={} up={} down={} skipped_ticks={} produced={} buffered={} dropped={} \
             lag_p50_ms={:.3} lag_p99_ms={:.3} lag_max_ms={:.3}",
            self.sites,
            self.checks,
            self.up,
            self.down,
            self.skipped_ticks,
            self.produced,
            self.buffered,
            self.dropped,
            ms(self.lag_p50),
            ms(self.lag_p99),
            ms(self.lag_max),
        )
    }
}

/// Sub-buckets per power of two: values are kept to within 1/16 (about 6 %).
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Enough powers of two for any lag in microseconds up to 2^44 µs (half a year).
const BUCKETS: usize = SUB + 40 * SUB;

/// A log-linear histogram of durations in microseconds (the idea of HdrHistogram, in 4 KiB of
/// atomics): recording is one `fetch_add`, so every check can record its lag.
#[derive(Debug)]
pub(crate) struct LagHistogram {
    buckets: Box<[AtomicU64]>,
    max_us: AtomicU64,
}

impl Default for LagHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_us: AtomicU64::new(0),
        }
    }
}

impl LagHistogram {
    pub(crate) fn record(&self, lag: Duration) {
        let us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(us)].fetch_add(1, Relaxed);
        self.max_us.fetch_max(us, Relaxed);
    }

    /// The smallest bucket value with at least `q` of the recordings at or below it.
    pub(crate) fn quantile(&self, q: f64) -> Duration {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Duration::ZERO;
        }
        // Rank of the quantile, 1-based; the float is a count well inside f64's range.
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Duration::from_micros(upper_of(index).min(self.max_us.load(Relaxed)));
            }
        }
        self.max()
    }

    pub(crate) fn max(&self) -> Duration {
        Duration::from_micros(self.max_us.load(Relaxed))
    }
}

fn bucket_of(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let exponent = 63 - us.leading_zeros(); // >= SUB_BITS
    let sub = (us >> (exponent - SUB_BITS)) as usize & (SUB - 1);
    (SUB + (exponent - SUB_BITS) as usize * SUB + sub).min(BUCKETS - 1)
}

/// The largest value that falls into bucket `index`.
fn upper_of(index: usize) -> u64 {
    if index < SUB {
        return index as u64;
    }
    let exponent = (index - SUB) / SUB + SUB_BITS as usize;
    let sub = ((index - SUB) % SUB) as u64;
    let step = 1_u64 << (exponent - SUB_BITS as usize);
    ((SUB as u64 + sub) << (exponent - SUB_BITS as usize)) + step - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_values() {
        for us in [
            0,
            1,
            15,
            16,
            17,
            31,
            32,
            100,
            1_000,
            12_345,
            999_999,
            1 << 40,
        ] {
            let index = bucket_of(us);
            assert!(upper_of(index) >= us, "{us}");
            if index > 0 {
                assert!(upper_of(index - 1) < us, "{us}");
            }
        }
    }

    #[test]
    fn quantiles_are_within_a_sixteenth() {
        let histogram = LagHistogram::default();
        for us in 1..=10_000 {
            histogram.record(Duration::from_micros(us));
        }
        let p50 = histogram.quantile(0.5).as_micros() as f64;
        let p99 = histogram.quantile(0.99).as_micros() as f64;
        assert!((5_000.0..=5_000.0 * 17.0 / 16.0).contains(&p50), "{p50}");
        assert!((9_900.0..=10_000.0).contains(&p99), "{p99}");
        assert_eq!(histogram.max(), Duration::from_micros(10_000));
        assert_eq!(LagHistogram::default().quantile(0.99), Duration::ZERO);
    }
}
