//! How checkers with the same location and topic divide the sites: every site falls into
//! one of [`BUCKETS`] buckets by a hash of its id, and the buckets are leased among the live
//! checkers of the group [`lease_group`] (see `keeper.rs`).
//!
//! The bucket count and the hash are a contract between every checker of a group, whatever
//! its version: two checkers that disagreed would check some sites twice and others never.
//! They never change.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::Notify;

/// The number of buckets the sites are hashed into. Part of the contract between checkers:
/// every checker of a group must use the same number, so it never changes. 256 buckets share
/// out evenly among up to a few dozen checkers (each holds `ceil(256 / W)`).
pub const BUCKETS: i32 = 256;

/// The bucket of a site: the SplitMix64 finalizer of its id, modulo [`BUCKETS`]. Part of the
/// contract between checkers, like [`BUCKETS`].
pub fn bucket_of(site_id: i32) -> i32 {
    let mut z = u64::from(site_id as u32).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % BUCKETS as u64) as i32
}

/// The lease group of the checkers that share the sites: the same topic and the same
/// location. Checkers of different locations never share: each location checks every site.
pub fn lease_group(topic: &str, location: &str) -> String {
    format!("check:{topic}:{location}")
}

/// A set of buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct BucketSet([u64; (BUCKETS as usize).div_ceil(64)]);

impl BucketSet {
    /// Every bucket.
    pub(crate) fn all() -> Self {
        let mut set = Self::default();
        for bucket in 0..BUCKETS {
            set.insert(bucket);
        }
        set
    }

    pub(crate) fn insert(&mut self, bucket: i32) {
        if let Ok(b) = usize::try_from(bucket) {
            if b < BUCKETS as usize {
                self.0[b / 64] |= 1 << (b % 64);
            }
        }
    }

    pub(crate) fn remove(&mut self, bucket: i32) {
        if let Ok(b) = usize::try_from(bucket) {
            if b < BUCKETS as usize {
                self.0[b / 64] &= !(1 << (b % 64));
            }
        }
    }

    pub(crate) fn contains(&self, bucket: i32) -> bool {
        usize::try_from(bucket)
            .is_ok_and(|b| b < BUCKETS as usize && self.0[b / 64] & (1 << (b % 64)) != 0)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.iter().map(|word| word.count_ones() as usize).sum()
    }
}

/// The buckets this checker may schedule, as the lease keeper publishes them to the
/// scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Ownership {
    pub(crate) buckets: BucketSet,
    /// Counts the keeper's changes, so it can tell when the scheduler has applied one.
    pub(crate) generation: u64,
}

/// Checks in flight per bucket: a bucket given away is released only once none of its
/// checks runs any more.
#[derive(Debug)]
pub(crate) struct InFlight {
    counts: Box<[AtomicU32]>,
    idle: Notify,
}

impl Default for InFlight {
    fn default() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            idle: Notify::new(),
        }
    }
}

impl InFlight {
    /// A check of a site in `bucket` starts; the guard ends it.
    pub(crate) fn start(self: &Arc<Self>, bucket: i32) -> CheckGuard {
        let index = usize::try_from(bucket).unwrap_or(0) % BUCKETS as usize;
        self.counts[index].fetch_add(1, Ordering::AcqRel);
        CheckGuard {
            in_flight: Arc::clone(self),
            index,
        }
    }

    fn busy(&self, buckets: &[i32]) -> bool {
        buckets.iter().any(|b| {
            let index = usize::try_from(*b).unwrap_or(0) % BUCKETS as usize;
            self.counts[index].load(Ordering::Acquire) > 0
        })
    }

    /// Waits until no check of a site in `buckets` runs.
    pub(crate) async fn drained(&self, buckets: &[i32]) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if !self.busy(buckets) {
                return;
            }
            idle.await;
        }
    }
}

/// Ends one check of [`InFlight`] when dropped.
#[derive(Debug)]
pub(crate) struct CheckGuard {
    in_flight: Arc<InFlight>,
    index: usize,
}

impl Drop for CheckGuard {
    fn drop(&mut self) {
        if self.in_flight.counts[self.index].fetch_sub(1, Ordering::AcqRel) == 1 {
            self.in_flight.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_even() {
        // The contract: these values never change.
        assert_eq!(
            (1..=8).map(bucket_of).collect::<Vec<_>>(),
            [193, 206, 237, 202, 90, 0, 215, 54]
        );
        let mut per_bucket = vec![0_u32; BUCKETS as usize];
        for id in 1..=25_600 {
            let bucket = bucket_of(id);
            assert!((0..BUCKETS).contains(&bucket));
            per_bucket[bucket as usize] += 1;
        }
        // 100 a bucket on average; a fair hash stays well within half of that.
        assert!(
            per_bucket.iter().all(|&n| (50..=150).contains(&n)),
            "{per_bucket:?}"
        );
    }

    #[test]
    fn bucket_sets_hold_what_was_inserted() {
        let mut set = BucketSet::default();
        set.insert(0);
        set.insert(255);
        set.insert(64);
        set.insert(300); // out of range: ignored
        assert!(set.contains(0) && set.contains(64) && set.contains(255));
        assert!(!set.contains(1) && !set.contains(300) && !set.contains(-1));
        assert_eq!(set.len(), 3);
        set.remove(64);
        assert_eq!(set.len(), 2);
        assert_eq!(BucketSet::all().len(), BUCKETS as usize);
    }

    #[tokio::test]
    async fn drained_waits_for_the_checks_of_the_given_buckets() {
        let in_flight = Arc::new(InFlight::default());
        let seven = in_flight.start(7);
        let _other = in_flight.start(8);
        let waiter = tokio::spawn({
            let in_flight = Arc::clone(&in_flight);
            async move { in_flight.drained(&[7]).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(seven);
        waiter
            .await
            .expect("drained once the check of bucket 7 ended");
    }
}
