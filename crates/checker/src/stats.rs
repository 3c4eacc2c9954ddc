//! Counters of what the checker did, and the schedule-lag histogram, shared by every task
//! without locks; the progress line reads them, and the Prometheus metrics (`sitemon_check*`,
//! `sitemon_events_*`) are the same counters, registered in [`CheckerConfig::metrics`].
//!
//! [`CheckerConfig::metrics`]: crate::CheckerConfig::metrics

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use sitemon_core::ErrorKind;
use sitemon_core::metrics::Registry;

/// The upper bounds of `sitemon_check_duration_seconds`' buckets: 5 ms to 30 s.
const DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The outcomes counted apart: up; down without an error (a status or a regex); down with
/// each of [`ErrorKind::ALL`].
const OUTCOMES: usize = 2 + ErrorKind::ALL.len();

/// The labels of `sitemon_checks_total` (after `location`, which every checker metric has).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    /// `up` or `down`.
    result: &'static str,
    /// `none` or [`ErrorKind::as_str`]: bounded, never a message.
    error_kind: &'static str,
}

impl OutcomeLabels {
    /// The labels of [`Stats::outcomes`], in its order.
    fn all() -> impl Iterator<Item = Self> {
        [("up", "none"), ("down", "none")]
            .into_iter()
            .chain(ErrorKind::ALL.iter().map(|kind| ("down", kind.as_str())))
            .map(|(result, error_kind)| Self { result, error_kind })
    }
}

/// What the checker counts, for the progress line, the final summary and `/metrics`.
#[derive(Debug)]
pub(crate) struct Stats {
    /// `sitemon_checks_total`: every series, created at the start so that each shows (at 0)
    /// before it first happens.
    outcome_family: Family<OutcomeLabels, Counter>,
    /// The counters of `outcome_family`, by outcome (see [`OUTCOMES`]): a check increments one
    /// without looking its labels up.
    outcomes: [Counter; OUTCOMES],
    /// `sitemon_check_duration_seconds`: whole check durations.
    durations: Histogram,
    /// `sitemon_checker_skipped_ticks_total`.
    pub(crate) skipped_ticks: Counter,
    /// `sitemon_events_produced_total`.
    pub(crate) produced: Counter,
    /// `sitemon_events_buffered`: set by the producer whenever its buffer changes.
    pub(crate) buffered: Gauge,
    /// `sitemon_events_dropped_total`.
    pub(crate) dropped: Counter,
    /// `sitemon_checker_produce_requests_total`: produce requests sent (one partition's
    /// batch each), failed ones included: what the broker's load follows (see `--linger-ms`).
    pub(crate) produce_requests: Counter,
    /// Produce requests that failed (and were retried); not exported.
    pub(crate) produce_failures: Counter,
    /// `sitemon_checker_sites`: sites this checker schedules now (those of its buckets).
    sites: Gauge,
    /// `sitemon_checker_leases_held`: buckets this checker holds now.
    buckets: Gauge,
    /// Schedule lag, for the percentiles of the progress line (not exported: see
    /// [`LagHistogram`]).
    pub(crate) lag: LagHistogram,
}

impl Default for Stats {
    fn default() -> Self {
        let outcome_family = Family::<OutcomeLabels, Counter>::default();
        let outcomes: Vec<Counter> = OutcomeLabels::all()
            .map(|labels| outcome_family.get_or_create_owned(&labels))
            .collect();
        let outcomes = outcomes.try_into().expect("OUTCOMES counts the labels");
        Self {
            outcome_family,
            outcomes,
            durations: Histogram::new(DURATION_BUCKETS),
            skipped_ticks: Counter::default(),
            produced: Counter::default(),
            buffered: Gauge::default(),
            dropped: Counter::default(),
            produce_requests: Counter::default(),
            produce_failures: Counter::default(),
            sites: Gauge::default(),
            buckets: Gauge::default(),
            lag: LagHistogram::default(),
        }
    }
}

impl Stats {
    pub(crate) fn add(counter: &Counter, n: u64) {
        counter.inc_by(n);
    }

    /// Registers the metrics in `metrics`, every series labelled with `location`.
    pub(crate) fn register(&self, metrics: &Registry, location: &str) {
        metrics.register(|registry| {
            let registry =
                registry.sub_registry_with_label(("location".into(), location.to_owned().into()));
            registry.register(
                "sitemon_checks",
                "Checks made, by result and error kind",
                self.outcome_family.clone(),
            );
            registry.register(
                "sitemon_check_duration_seconds",
                "Time of a whole check, DNS to the last body byte, redirects included",
                self.durations.clone(),
            );
            registry.register(
                "sitemon_events_produced",
                "Check events Kafka acknowledged",
                self.produced.clone(),
            );
            registry.register(
                "sitemon_events_buffered",
                "Check events waiting for Kafka (in the buffer or in flight)",
                self.buffered.clone(),
            );
            registry.register(
                "sitemon_events_dropped",
                "Check events dropped because the buffer was full while Kafka was away",
                self.dropped.clone(),
            );
            registry.register(
                "sitemon_checker_produce_requests",
                "Produce requests sent to Kafka, one partition's batch each, failed ones included",
                self.produce_requests.clone(),
            );
            registry.register(
                "sitemon_checker_skipped_ticks",
                "Planned checks skipped: the previous check of the site was still running, or \
                 the checker fell behind",
                self.skipped_ticks.clone(),
            );
            registry.register(
                "sitemon_checker_sites",
                "Sites this checker schedules (those in the buckets it holds)",
                self.sites.clone(),
            );
            registry.register(
                "sitemon_checker_leases_held",
                "Site buckets this checker holds, of 256",
                self.buckets.clone(),
            );
        });
    }

    /// Counts one check: up or down, why, and how long it took.
    pub(crate) fn checked(&self, up: bool, error: Option<ErrorKind>, took: Duration) {
        let index = match (up, error) {
            (true, _) => 0,
            (false, None) => 1,
            // A kind added to the core after this build: counted as a down without a kind
            // rather than lost.
            (false, Some(kind)) => ErrorKind::ALL
                .iter()
                .position(|k| *k == kind)
                .map_or(1, |i| i + 2),
        };
        self.outcomes[index].inc();
        self.durations.observe(took.as_secs_f64());
    }

    /// The number of sites scheduled now.
    pub(crate) fn scheduled(&self, sites: usize) {
        self.sites.set(gauge_value(sites));
    }

    /// The number of buckets held now.
    pub(crate) fn buckets_held(&self, buckets: usize) {
        self.buckets.set(gauge_value(buckets));
    }

    pub(crate) fn snapshot(&self, buffered: usize) -> Snapshot {
        let up = self.outcomes[0].get();
        let down = self.outcomes[1..].iter().map(Counter::get).sum();
        Snapshot {
            sites: usize::try_from(self.sites.get()).unwrap_or(0),
            buckets: usize::try_from(self.buckets.get()).unwrap_or(0),
            checks: up + down,
            up,
            down,
            skipped_ticks: self.skipped_ticks.get(),
            produced: self.produced.get(),
            buffered,
            dropped: self.dropped.get(),
            lag_p50: self.lag.quantile(0.50),
            lag_p99: self.lag.quantile(0.99),
            lag_max: self.lag.max(),
        }
    }
}

/// A count as the value of a gauge (an `i64`).
pub(crate) fn gauge_value(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
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

/// Sub-buckets per power of two: values are kept to within 1/16 (about 6 %).
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Enough powers of two for any lag in microseconds up to 2^44 µs (half a year).
const BUCKETS: usize = SUB + 40 * SUB;

/// A log-linear histogram of durations in microseconds (the idea of HdrHistogram, in 4 KiB of
/// atomics): recording is one `fetch_add`, so every check can record its lag.
///
/// It is not a `prometheus-client` histogram because its job is another: the progress line
/// and the benchmark print the p50 and p99 of the lag within 1/16, computed in the process,
/// and a Prometheus histogram neither gives quantiles nor shows its bucket counts to the
/// process; Prometheus computes them on its side, from the handful of buckets it scrapes.
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
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            stats.checked(false, Some(*kind), Duration::from_millis(5));
            assert_eq!(stats.outcomes[i + 2].get(), 1, "{kind:?}");
        }
        stats.checked(true, None, Duration::from_millis(5));
        stats.checked(false, None, Duration::from_millis(5));
        assert_eq!(stats.outcomes[0].get(), 1);
        assert_eq!(stats.outcomes[1].get(), 1);
        assert_eq!(stats.snapshot(0).checks, ErrorKind::ALL.len() as u64 + 2);
        let names: std::collections::HashSet<_> =
            ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), ErrorKind::ALL.len());
    }

    /// Every name and label dashboards use: a rename fails here first.
    #[test]
    fn metrics_keep_their_names_and_labels() {
        let stats = Stats::default();
        let registry = Registry::new();
        stats.register(&registry, "eu");
        stats.checked(true, None, Duration::from_millis(5));
        stats.scheduled(3);
        stats.buckets_held(256);
        let text = registry.render();
        let (series, families) = sitemon_testkit::metrics::shapes(&text);
        let golden = [
            "sitemon_check_duration_seconds_bucket{location,le}",
            "sitemon_check_duration_seconds_count{location}",
            "sitemon_check_duration_seconds_sum{location}",
            "sitemon_checker_leases_held{location}",
            "sitemon_checker_produce_requests_total{location}",
            "sitemon_checker_sites{location}",
            "sitemon_checker_skipped_ticks_total{location}",
            "sitemon_checks_total{location,result,error_kind}",
            "sitemon_events_buffered{location}",
            "sitemon_events_dropped_total{location}",
            "sitemon_events_produced_total{location}",
        ];
        assert_eq!(series, golden.map(String::from).into(), "{text}");
        let golden = [
            "sitemon_check_duration_seconds histogram",
            "sitemon_checker_leases_held gauge",
            "sitemon_checker_produce_requests counter",
            "sitemon_checker_sites gauge",
            "sitemon_checker_skipped_ticks counter",
            "sitemon_checks counter",
            "sitemon_events_buffered gauge",
            "sitemon_events_dropped counter",
            "sitemon_events_produced counter",
        ];
        assert_eq!(families, golden.map(String::from).into(), "{text}");
        for line in [
            "sitemon_checks_total{location=\"eu\",result=\"up\",error_kind=\"none\"} 1",
            "sitemon_checks_total{location=\"eu\",result=\"down\",error_kind=\"none\"} 0",
            "sitemon_check_duration_seconds_count{location=\"eu\"} 1",
            "sitemon_checker_sites{location=\"eu\"} 3",
            "sitemon_checker_leases_held{location=\"eu\"} 256",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        for kind in ErrorKind::ALL {
            let line = format!(
                "sitemon_checks_total{{location=\"eu\",result=\"down\",error_kind=\"{}\"}} 0",
                kind.as_str()
            );
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert_eq!(text.matches("sitemon_checks_total{").count(), OUTCOMES);
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
