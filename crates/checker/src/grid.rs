//! The grid each site is checked on: `UNIX_EPOCH + phase + k * interval`, in wall-clock
//! time, so that every checker computes the same one (see [`crate::schedule`] for why).
//!
//! - [`phase`]: where in its interval a site's grid points fall.
//! - [`Clock`]: the mapping from the monotonic clock the scheduler sleeps on to wall-clock
//!   time, and [`Clock::next_on_grid`], the one way of snapping a moment to a site's grid.
//! - [`next_tick`]: a grid point that has passed, moved on past now, counting the ticks
//!   passed over.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// How often the mapping from the monotonic clock to wall-clock time is read again, so that
/// the grid follows the system clock's corrections.
const RESYNC_EVERY: Duration = Duration::from_secs(1);

/// Where in `[0, interval)` a site's checks fall: a Fibonacci hash of its id, so consecutive
/// ids land far apart and the load is even. Integer maths only: every checker, on every
/// machine, computes the same phase.
pub(crate) fn phase(site_id: i32, interval: Duration) -> Duration {
    let hash = u64::from(site_id as u32).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let fraction = u128::from(hash >> 11); // 53 bits: a fraction of 2^53
    let nanos = (fraction * interval.as_nanos()) >> 53;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// The first of `due + k * interval` (k ≥ 0) after `now`, with k: how many ticks were
/// passed over because the checker fell behind.
pub(crate) fn next_tick(due: Instant, interval: Duration, now: Instant) -> (Instant, u64) {
    if due > now {
        return (due, 0);
    }
    let behind = now - due;
    let skipped = (behind.as_nanos() / interval.as_nanos().max(1)) as u64 + 1;
    let next = due + interval * u32::try_from(skipped).unwrap_or(u32::MAX);
    (next, skipped)
}

/// Maps the monotonic clock the scheduler sleeps on to wall-clock time, where the grid is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// A moment of the monotonic clock...
    instant: Instant,
    /// ...and the wall-clock time then, in nanoseconds since the Unix epoch.
    wall: u128,
    /// Whether [`Clock::resync`] reads the system clock (tests use a fixed mapping).
    system: bool,
}

impl Clock {
    /// The system clock's mapping now.
    pub(crate) fn system() -> Self {
        Self {
            instant: Instant::now(),
            wall: system_now(),
            system: true,
        }
    }

    /// A fixed mapping: `Instant::now()` is `wall` after the epoch (for tests with paused
    /// time).
    #[cfg(test)]
    pub(crate) fn fixed(wall: Duration) -> Self {
        Self {
            instant: Instant::now(),
            wall: wall.as_nanos(),
            system: false,
        }
    }

    /// Reads the system clock again if the mapping is older than [`RESYNC_EVERY`].
    pub(crate) fn resync(&mut self, now: Instant) {
        if self.system && now.saturating_duration_since(self.instant) >= RESYNC_EVERY {
            *self = Self::system();
        }
    }

    /// The site's first grid point at or after `at`. (The grid point *nearest* to a moment
    /// `t` is the first one at or after `t - interval / 2`.)
    pub(crate) fn next_on_grid(&self, at: Instant, interval: Duration, phase: Duration) -> Instant {
        let (wall, interval, phase) = (
            self.wall_of(at),
            interval.as_nanos().max(1),
            phase.as_nanos(),
        );
        let point = if wall <= phase {
            phase
        } else {
            phase + (wall - phase).div_ceil(interval) * interval
        };
        self.instant_of(point)
    }

    fn wall_of(&self, at: Instant) -> u128 {
        if at >= self.instant {
            self.wall + (at - self.instant).as_nanos()
        } else {
            self.wall.saturating_sub((self.instant - at).as_nanos())
        }
    }

    fn instant_of(&self, wall: u128) -> Instant {
        let nanos = |n: u128| Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX));
        if wall >= self.wall {
            self.instant + nanos(wall - self.wall)
        } else {
            self.instant
                .checked_sub(nanos(self.wall - wall))
                .unwrap_or(self.instant)
        }
    }
}

fn system_now() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wall-clock time that is a whole number of every interval used here, so that grid
    /// points fall at `t0 + phase + k * interval`.
    const WALL: Duration = Duration::from_secs(1_800_000_000);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
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

    #[test]
    fn phase_is_the_same_everywhere() {
        // Pinned: every checker of a location must compute these, on every machine and
        // version, or a hand-over checks a site twice.
        assert_eq!(
            phase(1, Duration::from_secs(60)),
            Duration::from_nanos(37_082_039_324)
        );
        assert_eq!(
            phase(7, Duration::from_secs(2)),
            Duration::from_nanos(652_475_842)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn next_tick_skips_missed_ticks() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let due = t0 + 2 * second;
        assert_eq!(next_tick(due, 2 * second, t0 + second), (due, 0));
        assert_eq!(next_tick(due, 2 * second, due), (t0 + 4 * second, 1));
        assert_eq!(
            next_tick(due, 2 * second, t0 + 5 * second),
            (t0 + 6 * second, 2)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn next_on_grid_snaps_forward_to_the_sites_grid() {
        let clock = Clock::fixed(WALL);
        let t0 = Instant::now();
        let (interval, phase) = (ms(2_000), ms(300));
        let next = |at| clock.next_on_grid(at, interval, phase);
        assert_eq!(next(t0), t0 + ms(300));
        assert_eq!(next(t0 + ms(300)), t0 + ms(300), "a grid point is its own");
        assert_eq!(next(t0 + ms(301)), t0 + ms(2_300));
        assert_eq!(next(t0 + ms(4_299)), t0 + ms(4_300));
        // The nearest grid point: the first at or after half an interval before.
        assert_eq!(next(t0 + ms(2_200) - interval / 2), t0 + ms(2_300));
        assert_eq!(next(t0 + ms(3_200) - interval / 2), t0 + ms(2_300));
        assert_eq!(next(t0 + ms(3_400) - interval / 2), t0 + ms(4_300));
    }

    #[tokio::test(start_paused = true)]
    async fn the_grid_is_the_same_for_clocks_started_apart() {
        let (interval, phase) = (ms(2_000), ms(300));
        let early = Clock::fixed(WALL);
        let t0 = Instant::now();
        tokio::time::sleep(ms(3_700)).await;
        let late = Clock::fixed(WALL + ms(3_700));
        for at in [t0, t0 + ms(3_700), t0 + ms(9_999)] {
            assert_eq!(
                early.next_on_grid(at, interval, phase),
                late.next_on_grid(at, interval, phase),
                "{:?}",
                at - t0
            );
        }
        // Before the mapping's own moment too.
        assert_eq!(late.next_on_grid(t0, interval, phase), t0 + ms(300));
    }
}
