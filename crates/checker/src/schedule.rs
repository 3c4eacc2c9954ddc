//! When each site is checked: every `check_interval` seconds start to start, on a grid
//! anchored to wall-clock time, missed ticks skipped (never bunched up), at most
//! `concurrency` checks at once, and only the sites of the buckets this checker holds.
//!
//! **The grid.** A site's checks are planned at `UNIX_EPOCH + phase + k * interval`, where
//! the phase is a hash of the site id scaled to the interval (the maths is in
//! [`crate::grid`]). The grid depends on
//! nothing but the site and the clock, so every checker computes the same one: when a bucket
//! moves to another checker, the new owner continues the site's cadence instead of starting a
//! new one, and a site is not checked twice in one interval during a hand-over (up to the
//! difference between the two machines' clocks). The phases spread the checks evenly over
//! every interval, and a site taken over (or loaded at start) gets its first check at its
//! next grid point. A site *added* while the checker runs is checked within
//! [`NEW_SITE_SPREAD`] (spread by id) and then joins its grid: each next start is the grid
//! point nearest to one interval after the last planned start.
//!
//! One task holds every site's next planned start in a heap and sleeps until the earliest; a
//! due site is handed to the dispatch function in a task of its own once a concurrency permit
//! is free. Waiting for a permit delays every later site too: that lag is what the
//! schedule-lag histogram shows, and nothing queues beyond the heap (one entry per site).
//!
//! **Buckets.** The lease keeper publishes the buckets this checker holds ([`Ownership`]);
//! the scheduler drops the sites of buckets it lost, plans those of buckets it gained, says
//! which change it has applied (so the keeper can wait for the checks in flight of a bucket
//! before releasing it) and counts the checks in flight per bucket ([`InFlight`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::buckets::{InFlight, Ownership};
use crate::grid::{Clock, next_tick, phase};
use crate::sites::{SiteList, SiteSpec};
use crate::stats::Stats;

/// A site that appears while the checker runs gets its first check within this time (spread
/// by id, so that a bulk insert does not fire at once).
pub(crate) const NEW_SITE_SPREAD: Duration = Duration::from_secs(2);

struct Entry {
    spec: Arc<SiteSpec>,
    /// Where in the interval this site's grid points fall.
    phase: Duration,
    /// Tells a heap entry of this site's current plan from a stale one.
    generation: u64,
    /// The start the heap holds for this site.
    planned: Instant,
    /// A check of this site is in flight; its next tick is skipped.
    running: Arc<AtomicBool>,
}

/// The scheduler's side of the bucket leases.
#[derive(Debug)]
pub(crate) struct Shares {
    /// The buckets this checker holds, as the lease keeper publishes them.
    pub(crate) ownership: watch::Receiver<Ownership>,
    /// The last [`Ownership::generation`] applied; `u64::MAX` once the scheduler has stopped
    /// (it starts no check after that).
    pub(crate) applied: watch::Sender<u64>,
    /// Checks in flight per bucket.
    pub(crate) in_flight: Arc<InFlight>,
}

/// The scheduler's state; [`Scheduler::run`] drives it.
pub(crate) struct Scheduler<D> {
    entries: HashMap<i32, Entry>,
    heap: BinaryHeap<Reverse<(Instant, i32, u64)>>,
    generations: u64,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    stats: Arc<Stats>,
    clock: Clock,
    /// The last site list, every site (ours or not).
    list: SiteList,
    /// The ids of `list`: a site that is not new but not yet scheduled came with a bucket.
    known: HashSet<i32>,
    ownership: Ownership,
    in_flight: Arc<InFlight>,
    dispatch: D,
}

impl<D> std::fmt::Debug for Scheduler<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("sites", &self.entries.len())
            .finish_non_exhaustive()
    }
}

/// Why the scheduler looks at the site list again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// The first list: every site starts at its next grid point.
    Start,
    /// The list changed: new sites are checked soon.
    Sites,
    /// The buckets held changed: sites taken over start at their next grid point.
    Buckets,
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
        clock: Clock,
        dispatch: D,
    ) -> Self {
        Self {
            entries: HashMap::new(),
            heap: BinaryHeap::new(),
            generations: 0,
            permits: Arc::new(Semaphore::new(concurrency)),
            tracker,
            stats,
            clock,
            list: Arc::default(),
            known: HashSet::new(),
            ownership: Ownership::default(),
            in_flight: Arc::default(),
            dispatch,
        }
    }

    /// Schedules the sites `sites` holds in the buckets `shares` says this checker holds, and
    /// follows the changes of both, until `shutdown`.
    pub(crate) async fn run(
        mut self,
        mut sites: watch::Receiver<SiteList>,
        mut shares: Shares,
        shutdown: CancellationToken,
    ) {
        self.in_flight = Arc::clone(&shares.in_flight);
        self.list = sites.borrow_and_update().clone();
        self.ownership = *shares.ownership.borrow_and_update();
        self.apply(Instant::now(), Cause::Start);
        shares.applied.send_replace(self.ownership.generation);
        let mut sites_open = true;
        let mut ownership_open = true;
        loop {
            let due = self.heap.peek().map(|Reverse((at, _, _))| *at);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                changed = shares.ownership.changed(), if ownership_open => {
                    if changed.is_err() {
                        // The keeper stopped: keep the last buckets.
                        ownership_open = false;
                        continue;
                    }
                    self.ownership = *shares.ownership.borrow_and_update();
                    self.apply(Instant::now(), Cause::Buckets);
                    shares.applied.send_replace(self.ownership.generation);
                }
                changed = sites.changed(), if sites_open => {
                    if changed.is_err() {
                        // The site follower stopped: keep checking the last list.
                        sites_open = false;
                        continue;
                    }
                    self.list = sites.borrow_and_update().clone();
                    self.apply(Instant::now(), Cause::Sites);
                }
                () = sleep_until_some(due) => {
                    if !self.dispatch_due(&shutdown).await {
                        break;
                    }
                }
            }
        }
        shares.applied.send_replace(u64::MAX);
    }

    /// Starts every site whose planned start has come. `false` when stopped while waiting
    /// for a permit.
    async fn dispatch_due(&mut self, shutdown: &CancellationToken) -> bool {
        self.clock.resync(Instant::now());
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
            let (interval, phase) = (entry.spec.interval, entry.phase);
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
                let in_flight = self.in_flight.start(entry.spec.bucket);
                self.stats
                    .lag
                    .record(Instant::now().saturating_duration_since(at));
                let check = (self.dispatch)(Arc::clone(&entry.spec), at);
                self.tracker.spawn(async move {
                    check.await;
                    running.store(false, Ordering::Release);
                    drop(in_flight);
                    drop(permit);
                });
            }
            // The grid point nearest to one interval after this start (a new site's first
            // start may be off the grid), unless the checker fell behind.
            let due = self.clock.next_on_grid(at + interval / 2, interval, phase);
            let (next, skipped) = next_tick(due, interval, Instant::now());
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

    /// Follows the site list and the buckets held: sites of held buckets that are not
    /// scheduled yet are planned, the others forgotten; a changed interval re-plans on the
    /// new grid; any other change applies from the next check.
    fn apply(&mut self, now: Instant, cause: Cause) {
        self.clock.resync(now);
        let list = Arc::clone(&self.list);
        let mut ours = HashSet::with_capacity(self.entries.len().max(list.len() / 4));
        for spec in list.iter() {
            if !self.ownership.buckets.contains(spec.bucket) {
                continue;
            }
            ours.insert(spec.id);
            match self.entries.get_mut(&spec.id) {
                Some(entry) if Arc::ptr_eq(&entry.spec, spec) => {}
                Some(entry) => {
                    let old_interval = entry.spec.interval;
                    entry.spec = Arc::clone(spec);
                    if old_interval != spec.interval {
                        // The last start, then no sooner than half an interval after it.
                        let last = entry.planned.checked_sub(old_interval).unwrap_or(now);
                        let earliest = (last + spec.interval / 2).max(now);
                        entry.phase = phase(spec.id, spec.interval);
                        let next = self
                            .clock
                            .next_on_grid(earliest, spec.interval, entry.phase);
                        self.generations += 1;
                        entry.generation = self.generations;
                        entry.planned = next;
                        self.heap.push(Reverse((next, spec.id, entry.generation)));
                    }
                }
                None => {
                    let grid_phase = phase(spec.id, spec.interval);
                    let new_site = cause == Cause::Sites && !self.known.contains(&spec.id);
                    let at = if new_site {
                        now + phase(spec.id, spec.interval.min(NEW_SITE_SPREAD))
                    } else {
                        self.clock.next_on_grid(now, spec.interval, grid_phase)
                    };
                    self.generations += 1;
                    self.entries.insert(
                        spec.id,
                        Entry {
                            spec: Arc::clone(spec),
                            phase: grid_phase,
                            generation: self.generations,
                            planned: at,
                            running: Arc::new(AtomicBool::new(false)),
                        },
                    );
                    self.heap.push(Reverse((at, spec.id, self.generations)));
                }
            }
        }
        self.entries.retain(|id, _| ours.contains(id));
        if cause != Cause::Buckets {
            self.known = list.iter().map(|spec| spec.id).collect();
        }
        self.stats.scheduled(self.entries.len());
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
    use crate::buckets::{BucketSet, bucket_of};
    use crate::sites::test_spec;

    type Log = Arc<Mutex<Vec<(i32, Instant)>>>;

    /// The wall-clock time the tests' clocks map `Instant::now()` to at their start: a whole
    /// number of every interval used, so that grid points fall at `t0 + phase`.
    const WALL: Duration = Duration::from_secs(1_800_000_000);

    /// Holds every bucket, as a checker alone does.
    fn every_bucket() -> watch::Receiver<Ownership> {
        let (tx, rx) = watch::channel(Ownership {
            buckets: BucketSet::all(),
            generation: 1,
        });
        std::mem::forget(tx); // never changes
        rx
    }

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
        let (stats, shutdown, max_in_flight) = start_logging(
            sites,
            every_bucket(),
            Clock::fixed(WALL),
            concurrency,
            work,
            &log,
        );
        (log, stats, shutdown, max_in_flight)
    }

    /// Runs a scheduler with the given buckets and clock, logging into `log`.
    fn start_logging(
        sites: watch::Receiver<SiteList>,
        ownership: watch::Receiver<Ownership>,
        clock: Clock,
        concurrency: usize,
        work: Duration,
        log: &Log,
    ) -> (
        Arc<Stats>,
        CancellationToken,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let stats = Arc::new(Stats::default());
        let shutdown = CancellationToken::new();
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let max_in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let scheduler = Scheduler::new(
            concurrency,
            TaskTracker::new(),
            Arc::clone(&stats),
            clock,
            {
                let log = Arc::clone(log);
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
            },
        );
        let shares = Shares {
            ownership,
            applied: watch::channel(0).0,
            in_flight: Arc::default(),
        };
        tokio::spawn(scheduler.run(sites, shares, shutdown.clone()));
        (stats, shutdown, max_in_flight)
    }

    fn starts_of(log: &Log, id: i32) -> Vec<Instant> {
        log.lock()
            .expect("log")
            .iter()
            .filter(|(site, _)| *site == id)
            .map(|(_, at)| *at)
            .collect()
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
        assert_eq!(stats.skipped_ticks.get(), 0);
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
        assert!(stats.skipped_ticks.get() >= 4);
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

    #[tokio::test(start_paused = true)]
    async fn the_grid_is_anchored_to_wall_clock_time() {
        let interval = Duration::from_secs(2);
        let (_tx, rx) = watch::channel(Arc::new(vec![test_spec(7, 2, "http://a.invalid/")]));
        let t0 = Instant::now();
        let early: Log = Arc::default();
        let (_, stop_early, _) = start_logging(
            rx.clone(),
            every_bucket(),
            Clock::fixed(WALL),
            8,
            Duration::ZERO,
            &early,
        );
        tokio::time::sleep(Duration::from_millis(3_700)).await;
        // A second checker started 3.7 s later, on the same wall clock.
        let late: Log = Arc::default();
        let (_, stop_late, _) = start_logging(
            rx,
            every_bucket(),
            Clock::fixed(WALL + Duration::from_millis(3_700)),
            8,
            Duration::ZERO,
            &late,
        );
        tokio::time::sleep(Duration::from_secs(8)).await;
        stop_early.cancel();
        stop_late.cancel();
        let early = starts_of(&early, 7);
        let late = starts_of(&late, 7);
        for (k, at) in early.iter().enumerate() {
            // Tokio's timer rounds up to the millisecond.
            let planned = phase(7, interval) + interval * k as u32;
            assert!(*at - t0 - planned < Duration::from_millis(1), "{k}: {at:?}");
        }
        assert!(late.len() >= 3, "{late:?}");
        assert!(
            late.iter().all(|at| early.contains(at)),
            "{late:?} {early:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_handed_over_keeps_the_cadence_and_is_not_checked_twice() {
        let sites: Vec<_> = (1..=50)
            .map(|id| test_spec(id, 1, "http://a.invalid/"))
            .collect();
        let (_tx, rx) = watch::channel(Arc::new(sites));
        let all = Ownership {
            buckets: BucketSet::all(),
            generation: 1,
        };
        let (a_tx, a_rx) = watch::channel(all);
        let (b_tx, b_rx) = watch::channel(Ownership::default());
        let t0 = Instant::now();
        let log: Log = Arc::default();
        let (_, stop_a, _) = start_logging(
            rx.clone(),
            a_rx,
            Clock::fixed(WALL),
            64,
            Duration::from_millis(100),
            &log,
        );
        let (_, stop_b, _) = start_logging(
            rx,
            b_rx,
            Clock::fixed(WALL),
            64,
            Duration::from_millis(100),
            &log,
        );

        // At 5.3 s, A gives the buckets of the odd ones away and B takes them.
        tokio::time::sleep(Duration::from_millis(5_300)).await;
        let mut given = BucketSet::all();
        let mut taken = BucketSet::default();
        for id in (1..=50).filter(|id| id % 2 == 1) {
            given.remove(bucket_of(id));
            taken.insert(bucket_of(id));
        }
        a_tx.send_replace(Ownership {
            buckets: given,
            generation: 2,
        });
        b_tx.send_replace(Ownership {
            buckets: taken,
            generation: 1,
        });
        tokio::time::sleep(Duration::from_millis(4_699)).await;
        stop_a.cancel();
        stop_b.cancel();

        for id in 1..=50 {
            let starts = starts_of(&log, id);
            // One check a second from 0 to 10 s, whoever made it: no gap, no double.
            assert_eq!(starts.len(), 10, "site {id}: {starts:?}");
            // Tokio's timer rounds up to the millisecond.
            assert!(starts[0] - t0 - phase(id, Duration::from_secs(1)) < Duration::from_millis(1));
            for pair in starts.windows(2) {
                let gap = pair[1] - pair[0];
                assert!(
                    gap.abs_diff(Duration::from_secs(1)) < Duration::from_millis(1),
                    "site {id}: {gap:?}"
                );
            }
        }
    }
}
