//! Waiting and trying again, and time limits: one vocabulary for every loop of sitemon that
//! retries, rebalances on a period, or bounds a call to PostgreSQL or Kafka.
//!
//! - [`Backoff`] says how long to wait between attempts: `initial`, multiplied by
//!   `multiplier` after each attempt up to `max`, each wait spread at random by `jitter` so
//!   that many processes started together do not retry in step, and an optional `deadline`
//!   after which it gives up. [`Backoff::every`] is the periodic case (multiplier 1).
//! - [`Retry`] is one run of a [`Backoff`]: it counts the attempts and draws the waits from
//!   a random source that a test can replace ([`Backoff::start_with`]).
//! - [`timeout`] bounds a future and turns a timeout into the caller's own error type,
//!   naming the operation ([`TimedOut`]).
//!
//! # Example
//! ```no_run
//! use std::time::Duration;
//! use sitemon_core::retry::{self, Backoff};
//!
//! # async fn connect() -> sitemon_core::Result<()> { Ok(()) }
//! # async fn example() -> sitemon_core::Result<()> {
//! let mut retry = Backoff::new(Duration::from_millis(250), Duration::from_secs(30)).start();
//! loop {
//!     match retry::timeout("connecting", Duration::from_secs(10), connect()).await {
//!         Ok(()) => break,
//!         Err(e) => {
//!             let Some(wait) = retry.next_wait() else { return Err(e) };
//!             tokio::time::sleep(wait).await;
//!         }
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// How long to wait between attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The wait after the first failed attempt (before jitter).
    pub initial: Duration,
    /// The longest wait (before jitter): the multiplier stops growing the wait here.
    pub max: Duration,
    /// How much longer each wait is than the one before; 1 waits `initial` every time.
    pub multiplier: f64,
    /// How far each wait strays from its base, as a fraction: a wait is drawn uniformly from
    /// `base × [1 − jitter, 1 + jitter]`. 0 is no jitter; values are clamped to `0..=1`.
    pub jitter: f64,
    /// How long after the start the attempts stop: [`Retry::next_wait`] returns `None` once
    /// the next attempt would begin after it. `None` retries for ever.
    pub deadline: Option<Duration>,
}

impl Backoff {
    /// Doubling from `initial` to `max`, a quarter of jitter either way, no deadline.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            multiplier: 2.0,
            jitter: 0.25,
            deadline: None,
        }
    }

    /// A period: `every`, give or take a quarter, for ever.
    pub const fn every(every: Duration) -> Self {
        Self {
            multiplier: 1.0,
            ..Self::new(every, every)
        }
    }

    /// The same, with this jitter.
    #[must_use]
    pub const fn with_jitter(self, jitter: f64) -> Self {
        Self { jitter, ..self }
    }

    /// The same, giving up `deadline` after the start.
    #[must_use]
    pub const fn with_deadline(self, deadline: Duration) -> Self {
        Self {
            deadline: Some(deadline),
            ..self
        }
    }

    /// Starts a run whose jitter comes from the operating system's randomness.
    pub fn start(&self) -> Retry<StdRng> {
        self.start_with(StdRng::from_entropy())
    }

    /// Starts a run whose jitter comes from `rng` (a seeded or mock generator in tests).
    pub fn start_with<R: Rng>(&self, rng: R) -> Retry<R> {
        Retry {
            backoff: *self,
            rng,
            base: self.initial,
            attempts: 0,
            started: Instant::now(),
        }
    }
}

/// One run of a [`Backoff`]: the waits between the attempts of one operation.
#[derive(Debug)]
pub struct Retry<R = StdRng> {
    backoff: Backoff,
    rng: R,
    /// The wait before jitter that the next call to [`Retry::next_wait`] starts from.
    base: Duration,
    attempts: u32,
    started: Instant,
}

impl<R: Rng> Retry<R> {
    /// The wait before the next attempt, or `None` when that attempt would begin past the
    /// deadline.
    pub fn next_wait(&mut self) -> Option<Duration> {
        let wait = self.jittered(self.base);
        self.attempts = self.attempts.saturating_add(1);
        let next = self.base.mul_f64(self.backoff.multiplier.max(1.0));
        self.base = next.min(self.backoff.max).max(self.backoff.initial);
        match self.backoff.deadline {
            Some(deadline) if self.started.elapsed() + wait > deadline => None,
            _ => Some(wait),
        }
    }

    /// Starts again from `initial` (and from now, for the deadline): the operation worked.
    pub fn reset(&mut self) {
        self.base = self.backoff.initial;
        self.attempts = 0;
        self.started = Instant::now();
    }

    /// How many waits were handed out since the start or the last [`Retry::reset`].
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    fn jittered(&mut self, base: Duration) -> Duration {
        let jitter = self.backoff.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 {
            return base;
        }
        let factor = 1.0 - jitter + 2.0 * jitter * self.rng.r#gen::<f64>();
        base.mul_f64(factor)
    }
}

/// An error type that can say "this operation took too long".
pub trait TimedOut {
    /// The error for `operation`, which had not finished `after` it started.
    fn timed_out(operation: &str, after: Duration) -> Self;
}

impl TimedOut for crate::Error {
    fn timed_out(operation: &str, after: Duration) -> Self {
        Self::Timeout {
            operation: operation.to_owned(),
            after,
        }
    }
}

/// Runs `future` for at most `after`; past it, the future is dropped and the caller's error
/// names `operation`.
///
/// # Errors
/// The future's own error, or `E::timed_out(operation, after)`.
pub async fn timeout<T, E: TimedOut>(
    operation: &str,
    after: Duration,
    future: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    match tokio::time::timeout(after, future).await {
        Ok(result) => result,
        Err(_) => Err(E::timed_out(operation, after)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::mock::StepRng;

    /// Always draws 0.0: every wait is at the low end of its jitter.
    fn lowest() -> StepRng {
        StepRng::new(0, 0)
    }

    /// Always draws just under 1.0: every wait is at the high end.
    fn highest() -> StepRng {
        StepRng::new(u64::MAX, 0)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn grows_by_the_multiplier_up_to_the_cap() {
        let backoff = Backoff::new(ms(100), ms(1_000)).with_jitter(0.0);
        let mut retry = backoff.start_with(lowest());
        let waits: Vec<_> = (0..6).map(|_| retry.next_wait()).collect();
        let expected = [100, 200, 400, 800, 1_000, 1_000].map(|n| Some(ms(n)));
        assert_eq!(waits, expected);
        assert_eq!(retry.attempts(), 6);
    }

    #[test]
    fn jitter_spreads_each_wait_both_ways() {
        let backoff = Backoff::new(ms(1_000), ms(8_000)).with_jitter(0.25);
        let mut low = backoff.start_with(lowest());
        let mut high = backoff.start_with(highest());
        assert_eq!(low.next_wait(), Some(ms(750)));
        assert_eq!(low.next_wait(), Some(ms(1_500)));
        let top = high.next_wait().expect("no deadline");
        assert!(top > ms(1_249) && top <= ms(1_250), "{top:?}");
    }

    #[test]
    fn a_seeded_source_gives_the_same_waits() {
        let backoff = Backoff::every(ms(2_000));
        let waits = |seed| {
            let mut retry = backoff.start_with(StdRng::seed_from_u64(seed));
            (0..20).map(|_| retry.next_wait()).collect::<Vec<_>>()
        };
        assert_eq!(waits(7), waits(7));
        assert_ne!(waits(7), waits(8));
        for wait in waits(7).into_iter().flatten() {
            assert!(wait >= ms(1_500) && wait <= ms(2_500), "{wait:?}");
        }
    }

    #[test]
    fn reset_starts_from_initial_again() {
        let mut retry = Backoff::new(ms(10), ms(1_000))
            .with_jitter(0.0)
            .start_with(lowest());
        for _ in 0..5 {
            retry.next_wait();
        }
        retry.reset();
        assert_eq!(retry.attempts(), 0);
        assert_eq!(retry.next_wait(), Some(ms(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_deadline() {
        let mut retry = Backoff::new(ms(100), ms(100))
            .with_jitter(0.0)
            .with_deadline(ms(350))
            .start_with(lowest());
        let mut attempts = 0;
        while let Some(wait) = retry.next_wait() {
            tokio::time::sleep(wait).await;
            attempts += 1;
        }
        assert_eq!(
            attempts, 3,
            "100 + 100 + 100 ms fit in 350 ms; a fourth would not"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_names_the_operation_in_the_callers_error() {
        let slow = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, crate::Error>(())
        };
        let err = timeout("asking the oracle", ms(50), slow)
            .await
            .expect_err("the future outlives its bound");
        assert!(
            matches!(&err, crate::Error::Timeout { operation, after }
                if operation == "asking the oracle" && *after == ms(50)),
            "{err:?}"
        );
        let quick = timeout("adding", ms(50), async { Ok::<_, crate::Error>(2 + 2) });
        assert_eq!(quick.await.expect("in time"), 4);
    }
}
