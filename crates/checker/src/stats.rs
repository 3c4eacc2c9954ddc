//! Counters of what the checker did, and the schedule-lag histogram, shared by every task
//! without locks; the progress line and the Prometheus metrics (`sitemon_check*`) read them.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use sitemon_core::ErrorKind;
use sitemon_core::metrics::{Collect, Exposition, Histogram, Kind};

use crate::producer::Producer;

/// Every error kind, in the order of [`Stats::outcomes`] (after `up` and `down` without an
/// error). The metrics' `error_kind` label takes these values and `none`, nothing else.
const ERROR_KINDS: [ErrorKind; 9] = [
    ErrorKind::InvalidUrl,
    ErrorKind::Dns,
    ErrorKind::Connect,
    ErrorKind::Tls,
    ErrorKind::Timeout,
    ErrorKind::Http,
    ErrorKind::TooManyRedirects,
    ErrorKind::Body,
    ErrorKind::InvalidRegex,
];

/// Counters for the progress line, the final summary and the metrics.
#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) checks: AtomicU64,
    pub(crate) up: AtomicU64,
    pub(crate) down: AtomicU64,
    /// Checks by outcome: up; down without an error (a status or a regex); down with each
    /// of [`ERROR_KINDS`].
    outcomes: [AtomicU64; 2 + ERROR_KINDS.len()],
    /// Whole check durations, in seconds.
    durations: Histogram,
    pub(crate) skipped_ticks: AtomicU64,
    pub(crate) produced: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) produce_failures: AtomicU64,
    /// Sites this checker schedules now (those of the buckets it holds).
    sites: AtomicU64,
    /// Buckets this checker holds now.
    buckets: AtomicU64,
    pub(crate) lag: LagHistogram,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            checks: AtomicU64::default(),
            up: AtomicU64::default(),
            down: AtomicU64::default(),
            outcomes: Default::default(),
            durations: Histogram::for_durations(),
            skipped_ticks: AtomicU64::default(),
            produced: AtomicU64::default(),
            dropped: AtomicU64::default(),
            produce_failures: AtomicU64::default(),
            sites: AtomicU64::default(),
            buckets: AtomicU64::default(),
            lag: LagHistogram::default(),
        }
    }
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Counts one check: up or down, why, and how long it took.
    pub(crate) fn checked(&self, up: bool, error: Option<ErrorKind>, took: Duration) {
        Self::add(&self.checks, 1);
        Self::add(if up { &self.up } else { &self.down }, 1);
        let index = match (up, error) {
            (true, _) => 0,
            (false, None) => 1,
            // A kind added to the core after this list: counted as a down without a kind
            // rather than lost (the list test below keeps them in step).
            (false, Some(kind)) => ERROR_KINDS
                .iter()
                .position(|k| *k == kind)
                .map_or(1, |i| i + 2),
        };
        Self::add(&self.outcomes[index], 1);
        self.durations.observe(took.as_secs_f64());
    }

    /// The number of sites scheduled now.
    pub(crate) fn scheduled(&self, sites: usize) {
        self.sites.store(sites as u64, Relaxed);
    }

    /// The number of buckets held now.
    pub(crate) fn buckets_held(&self, buckets: usize) {
        self.buckets.store(buckets as u64, Relaxed);
    }

    pub(crate) fn snapshot(&self, buffered: usize) -> Snapshot {
        Snapshot {
            sites: self.sites.load(Relaxed) as usize,
            buckets: self.buckets.load(Relaxed) as usize,
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
    pub(crate) buckets: usize,
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
            "sites={} buckets={} checks={} up={} down={} skipped_ticks={} produced={} buffered={} dropped={} \
             lag_p50_ms={:.3} lag_p99_ms={:.3} lag_max_ms={:.3}",
            self.sites,
            self.buckets,
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

/// The checker's metrics: [`Stats`] and the producer's buffer, labelled with the location.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) stats: std::sync::Arc<Stats>,
    pub(crate) producer: Producer,
    pub(crate) location: String,
}

impl Collect for Metrics {
    fn collect(&self, out: &mut Exposition) {
        let stats = &self.stats;
        let location = self.location.as_str();
        let load = |counter: &AtomicU64| counter.load(Relaxed) as f64;
        let checks = "sitemon_checks_total";
        let checks_help = "Checks made, by result and error kind.";
        let outcomes = [("up", "none"), ("down", "none")]
            .into_iter()
            .chain(ERROR_KINDS.iter().map(|kind| ("down", kind.as_str())));
        for ((result, kind), count) in outcomes.zip(&stats.outcomes) {
            out.sample(
                checks,
                checks_help,
                Kind::Counter,
                &[
                    ("location", location),
                    ("result", result),
                    ("error_kind", kind),
                ],
                load(count),
            );
        }
        out.histogram(
            "sitemon_check_duration_seconds",
            "Time of a whole check, DNS to the last body byte, redirects included.",
            &[("location", location)],
            &stats.durations,
        );
        let single = |out: &mut Exposition, name: &str, help: &str, kind: Kind, value: f64| {
            out.sample(name, help, kind, &[("location", location)], value);
        };
        single(
            out,
            "sitemon_events_produced_total",
            "Check events Kafka acknowledged.",
            Kind::Counter,
            load(&stats.produced),
        );
        single(
            out,
            "sitemon_events_buffered",
            "Check events waiting for Kafka (in the buffer or in flight).",
            Kind::Gauge,
            self.producer.buffered() as f64,
        );
        single(
            out,
            "sitemon_events_dropped_total",
            "Check events dropped because the buffer was full while Kafka was away.",
            Kind::Counter,
            load(&stats.dropped),
        );
        single(
            out,
            "sitemon_checker_skipped_ticks_total",
            "Planned checks skipped: the previous check of the site was still running, or the \
             checker fell behind.",
            Kind::Counter,
            load(&stats.skipped_ticks),
        );
        single(
            out,
            "sitemon_checker_sites",
            "Sites this checker schedules (those in the buckets it holds).",
            Kind::Gauge,
            load(&stats.sites),
        );
        single(
            out,
            "sitemon_checker_leases_held",
            "Site buckets this checker holds, of 256.",
            Kind::Gauge,
            load(&stats.buckets),
        );
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
    fn every_error_kind_has_its_own_counter() {
        let stats = Stats::default();
        for (i, kind) in ERROR_KINDS.iter().enumerate() {
            stats.checked(false, Some(*kind), Duration::from_millis(5));
            assert_eq!(stats.outcomes[i + 2].load(Relaxed), 1, "{kind:?}");
        }
        stats.checked(true, None, Duration::from_millis(5));
        stats.checked(false, None, Duration::from_millis(5));
        assert_eq!(stats.outcomes[0].load(Relaxed), 1);
        assert_eq!(stats.outcomes[1].load(Relaxed), 1);
        assert_eq!(stats.checks.load(Relaxed), 11);
        let names: std::collections::HashSet<_> = ERROR_KINDS.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), ERROR_KINDS.len());
    }

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
