//! When each site is checked: every `check_interval` seconds start to start, the first checks
//! spread over the interval, missed ticks skipped (never bunched up), at most `concurrency`
//! checks at once.
//!
//! One task holds every site's next planned start in a heap and sleeps until the earliest; a
//! due site is handed to the dispatch function in a task of its own once a concurrency permit
//! is free. Waiting for a permit delays every later site too: that lag is what the
//! schedule-lag histogram shows, and nothing queues beyond the heap (one entry per site).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::sites::{SiteList, SiteSpec};
use crate::stats::Stats;

/// A site that appears while the checker runs gets its first check within this time (spread
/// by id, so that a bulk insert does not fire at once).
pub(crate) const NEW_SITE_SPREAD: Duration = Duration::from_secs(2);

/// Where in `[0, interval)` a site's checks fall: a Fibonacci hash of its id, so consecutive
/// ids land far apart and the load is even.
pub(crate) fn phase(site_id: i32, interval: Duration) -> Duration {
    let hash = u64::from(site_id as u32).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let fraction = (hash >> 11) as f64 / (1_u64 << 53) as f64;
    interval.mul_f64(fraction)
}

/// The first planned start after `now` on the grid `planned + k * interval`, with how many
/// grid points (ticks) were passed over.
pub(crate) fn next_tick(planned: Instant, interval: Duration, now: Instant) -> (Instant, u64) {
    let next = planned + interval;
    if next > now {
        return (next, 0);
    }
    let behind = now - next;
    let skipped = (behind.as_nanos() / interval.as_nanos().max(1)) as u64 + 1;
    let next = next + interval * u32::try_from(skipped).unwrap_or(u32::MAX);
    (next, skipped)
}

struct Entry {
    spec: Arc<SiteSpec>,
    /// Tells a heap entry of this site's current plan from a stale one.
    generation: u64,
    /// The start the heap holds for this site.
    planned: Instant,
    /// A check of this site is in flight; its next tick is skipped.
    running: Arc<AtomicBool>,
}

/// The scheduler's state; [`Scheduler::run`] drives it.
pub(crate) struct Scheduler<D> {
    entries: HashMap<i32, Entry>,
    heap: BinaryHeap<Reverse<(Instant, i32, u64)>>,
    generations: u64,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    stats: Arc<Stats>,
    dispatch: D,
}

impl<D> std::fmt::Debug for Scheduler<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("sites", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl<D, F> Scheduler<D>
where
    D: Fn(Arc<SiteSpec>, Instant) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    /// `dispatch(site, planned_start)` runs one check; `tracker` receives its tasks, so the
    /// caller can wait for the checks in flight after [`Scheduler::run`] returns.
    pub(crate) fn new(
        concurrency: usize,
        tracker: TaskTracker,
        stats: Arc<Stats>,
        dispatch: D,
    ) -> Self {
        Self {
            entries: HashMap::new(),
            heap: BinaryHeap::new(),
            generations: 0,
            permits: Arc::new(Semaphore::new(concurrency)),
            tracker,
            stats,
            dispatch,
        }
    }

    /// Schedules the sites `sites` holds, and follows its changes, until `shutdown`.
    pub(crate) async fn run(
        mut self,
        mut sites: watch::Receiver<SiteList>,
        shutdown: CancellationToken,
    ) {
        let initial = sites.borrow_and_update().clone();
        self.apply(&initial, Instant::now(), true);
        let mut sites_open = true;
        loop {
            let due = self.heap.peek().map(|Reverse((at, _, _))| *at);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                changed = sites.changed(), if sites_open => {
                    if changed.is_err() {
                        // The site follower stopped: keep checking the last list.
                        sites_open = false;
                        continue;
                    }
                    let list = sites.borrow_and_update().clone();
                    self.apply(&list, Instant::now(), false);
                }
                () = sleep_until_some(due) => {
                    if !self.dispatch_due(&shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// Starts every site whose planned start has come. `false` when stopped while waiting
    /// for a permit.
    async fn dispatch_due(&mut self, shutdown: &CancellationToken) -> bool {
        while let Some(&Reverse((at, id, generation))) = self.heap.peek() {
            if at > Instant::now() {
                break;
            }
            self.heap.pop();
            let Some(entry) = self.entries.get_mut(&id) else {
                continue; // removed
            };
            if entry.generation != generation {
                continue; // re-planned
            }
            let interval = entry.spec.interval;
            if entry.running.load(Ordering::Acquire) {
                Stats::add(&self.stats.skipped_ticks, 1);
                tracing::debug!(site = id, "previous check still running: tick skipped");
            } else {
                let permit = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return false,
                    permit = Arc::clone(&self.permits).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return false, // never closed
                    },
                };
                // The borrow of `entry` ended at the await; look it up again.
                let Some(entry) = self.entries.get(&id) else {
                    continue;
                };
                let running = Arc::clone(&entry.running);
                running.store(true, Ordering::Release);
                self.stats
                    .lag
                    .record(Instant::now().saturating_duration_since(at));
                let check = (self.dispatch)(Arc::clone(&entry.spec), at);
                self.tracker.spawn(async move {
                    check.await;
                    running.store(false, Ordering::Release);
                    drop(permit);
                });
            }
            let (next, skipped) = next_tick(at, interval, Instant::now());
            if skipped > 0 {
                Stats::add(&self.stats.skipped_ticks, skipped);
                tracing::warn!(
                    site = id,
                    skipped,
                    "the checker fell behind this site's schedule: ticks skipped"
                );
            }
            if let Some(entry) = self.entries.get_mut(&id) {
                entry.planned = next;
                self.heap.push(Reverse((next, id, generation)));
            }
        }
        true
    }

    /// Follows a new site list: new sites are planned, removed ones forgotten, a changed
    /// interval re-plans from the last planned start, any other change applies from the
    /// next check.
    fn apply(&mut self, list: &SiteList, now: Instant, initial: bool) {
        let mut seen = std::collections::HashSet::with_capacity(list.len());
        for spec in list.iter() {
            seen.insert(spec.id);
            match self.entries.get_mut(&spec.id) {
                Some(entry) if Arc::ptr_eq(&entry.spec, spec) => {}
                Some(entry) => {
                    let old_interval = entry.spec.interval;
                    entry.spec = Arc::clone(spec);
                    if old_interval != spec.interval {
                        let last = entry.planned.checked_sub(old_interval).unwrap_or(now);
                        let next = (last + spec.interval).max(now);
                        self.generations += 1;
                        entry.generation = self.generations;
                        entry.planned = next;
                        self.heap.push(Reverse((next, spec.id, entry.generation)));
                    }
                }
                None => {
                    let spread = if initial {
                        spec.interval
                    } else {
                        spec.interval.min(NEW_SITE_SPREAD)
                    };
                    let at = now + phase(spec.id, spread);
                    self.generations += 1;
                    self.entries.insert(
                        spec.id,
                        Entry {
                            spec: Arc::clone(spec),
                            generation: self.generations,
                            planned: at,
                            running: Arc::new(AtomicBool::new(false)),
                        },
                    );
                    self.heap.push(Reverse((at, spec.id, self.generations)));
                }
            }
        }
        self.entries.retain(|id, _| seen.contains(id));
        // Stale heap entries of removed or re-planned sites are skipped when they come up;
        // rebuild when they outnumber the live ones so the heap stays bounded.
        if self.heap.len() > 2 * self.entries.len() + 1024 {
            self.heap = self
                .entries
                .iter()
                .map(|(id, e)| Reverse((e.planned, *id, e.generation)))
                .collect();
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::sites::test_spec;

    type Log = Arc<Mutex<Vec<(i32, Instant)>>>;

    /// Runs a scheduler whose checks take `work` and log their start.
    fn start(
        sites: watch::Receiver<SiteList>,
        concurrency: usize,
        work: Duration,
    ) -> (
        Log,
        Arc<Stats>,
        CancellationToken,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let log: Log = Arc::default();
        let stats = Arc::new(Stats::default());
        let shutdown = CancellationToken::new();
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let max_in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let scheduler = Scheduler::new(concurrency, TaskTracker::new(), Arc::clone(&stats), {
            let log = Arc::clone(&log);
            let max_in_flight = Arc::clone(&max_in_flight);
            move |site: Arc<SiteSpec>, _planned| {
                let log = Arc::clone(&log);
                let in_flight = Arc::clone(&in_flight);
                let max_in_flight = Arc::clone(&max_in_flight);
                async move {
                    log.lock().expect("log").push((site.id, Instant::now()));
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    max_in_flight.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(work).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                }
            }
        });
        tokio::spawn(scheduler.run(sites, shutdown.clone()));
        (log, stats, shutdown, max_in_flight)
    }

    fn starts_of(log: &Log, id: i32) -> Vec<Instant> {
        log.lock()
            .expect("log")
            .iter()
            .filter(|(site, _)| *site == id)
            .map(|(_, at)| *at)
            .collect()
    }

    #[test]
    fn phase_is_within_the_interval_and_spread() {
        let interval = Duration::from_secs(10);
        let mut per_second = [0_u32; 10];
        for id in 1..=10_000 {
            let phase = phase(id, interval);
            assert!(phase < interval);
            per_second[phase.as_secs() as usize] += 1;
        }
        assert!(
            per_second.iter().all(|&n| (900..=1100).contains(&n)),
            "{per_second:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn next_tick_skips_missed_ticks() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        assert_eq!(next_tick(t0, 2 * second, t0 + second), (t0 + 2 * second, 0));
        assert_eq!(
            next_tick(t0, 2 * second, t0 + 2 * second),
            (t0 + 4 * second, 1)
        );
        assert_eq!(
            next_tick(t0, 2 * second, t0 + 5 * second),
            (t0 + 6 * second, 2)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn checks_start_to_start_on_the_interval() {
        let (_tx, rx) = watch::channel(Arc::new(vec![test_spec(7, 2, "http://a.invalid/")]));
        let (log, stats, shutdown, _) = start(rx, 8, Duration::from_millis(1500));
        tokio::time::sleep(Duration::from_secs(12)).await;
        shutdown.cancel();
        let starts = starts_of(&log, 7);
        assert_eq!(starts.len(), 6, "{starts:?}");
        for pair in starts.windows(2) {
            assert_eq!(pair[1] - pair[0], Duration::from_secs(2));
        }
        assert_eq!(stats.skipped_ticks.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_overrunning_check_skips_ticks_instead_of_bursting() {
        let (_tx, rx) = watch::channel(Arc::new(vec![test_spec(1, 2, "http://a.invalid/")]));
        let (log, stats, shutdown, _) = start(rx, 8, Duration::from_secs(5));
        tokio::time::sleep(Duration::from_secs(20)).await;
        shutdown.cancel();
        let starts = starts_of(&log, 1);
        // A 5 s check on a 2 s grid runs on every third tick.
        for pair in starts.windows(2) {
            assert_eq!(pair[1] - pair[0], Duration::from_secs(6), "{starts:?}");
        }
        assert!(stats.skipped_ticks.load(Ordering::Relaxed) >= 4);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_bounded() {
        let sites = (1..=50)
            .map(|id| test_spec(id, 1, "http://a.invalid/"))
            .collect();
        let (_tx, rx) = watch::channel(Arc::new(sites));
        let (log, _, shutdown, max_in_flight) = start(rx, 4, Duration::from_millis(500));
        tokio::time::sleep(Duration::from_secs(5)).await;
        shutdown.cancel();
        assert_eq!(max_in_flight.load(Ordering::SeqCst), 4);
        // 4 slots x 0.5 s a check x 5 s = 40 checks at most.
        assert!(log.lock().expect("log").len() <= 40);
    }

    #[tokio::test(start_paused = true)]
    async fn first_checks_are_spread_over_the_interval() {
        let sites = (1..=1000)
            .map(|id| test_spec(id, 10, "http://a.invalid/"))
            .collect();
        let (_tx, rx) = watch::channel(Arc::new(sites));
        let t0 = Instant::now();
        let (log, _, shutdown, _) = start(rx, 2000, Duration::from_millis(1));
        tokio::time::sleep(Duration::from_millis(9_999)).await;
        shutdown.cancel();
        let mut per_second = [0_u32; 10];
        for (_, at) in log.lock().expect("log").iter() {
            per_second[(*at - t0).as_secs() as usize] += 1;
        }
        assert_eq!(per_second.iter().sum::<u32>(), 1000);
        assert!(
            per_second.iter().all(|&n| (80..=120).contains(&n)),
            "{per_second:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn follows_added_removed_and_changed_sites() {
        let (tx, rx) = watch::channel(Arc::new(vec![test_spec(1, 1, "http://a.invalid/")]));
        let (log, _, shutdown, _) = start(rx, 8, Duration::from_millis(10));
        tokio::time::sleep(Duration::from_millis(4_500)).await;

        // Site 2 appears: its first check comes within NEW_SITE_SPREAD; site 1 slows to 3 s.
        let added = Instant::now();
        tx.send_replace(Arc::new(vec![
            test_spec(1, 3, "http://a.invalid/"),
            test_spec(2, 60, "http://b.invalid/"),
        ]));
        tokio::time::sleep(Duration::from_secs(10)).await;
        let second = starts_of(&log, 2);
        assert_eq!(second.len(), 1);
        assert!(second[0] - added < NEW_SITE_SPREAD);
        let first = starts_of(&log, 1);
        let after: Vec<_> = first.iter().filter(|at| **at > added).collect();
        for pair in after.windows(2) {
            assert_eq!(*pair[1] - *pair[0], Duration::from_secs(3));
        }

        // Site 1 goes: no check of it after the change.
        let removed = Instant::now();
        tx.send_replace(Arc::new(vec![test_spec(2, 60, "http://b.invalid/")]));
        tokio::time::sleep(Duration::from_secs(10)).await;
        shutdown.cancel();
        assert!(starts_of(&log, 1).iter().all(|at| *at <= removed));
    }
}
