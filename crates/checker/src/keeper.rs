//! The lease keeper: this checker's share of the site buckets.
//!
//! Every `sitemon check` of one topic and location joins the lease group
//! [`lease_group`](crate::buckets::lease_group) on a dedicated PostgreSQL connection
//! ([`LeaseGroup`]) and, at start and every [`CheckerConfig::rebalance_every`] (give or take a
//! quarter), rebalances the [`BUCKETS`]:
//! - buckets it **takes** are published to the scheduler at once; their sites start at their
//!   next grid point, continuing the previous owner's cadence;
//! - buckets it **gives away** (beyond its fair share `ceil(BUCKETS / W)` now that another
//!   checker has joined) are first withdrawn from the scheduler; once the scheduler has
//!   applied that and the checks in flight of those buckets have ended, their leases are
//!   released.
//!
//! While under its fair share (another checker has yet to give buckets away) it rebalances
//! every [`UNDER_SHARE_EVERY`], so that a hand-over leaves a gap of about that much.
//!
//! When the lease connection fails (or a lease step takes longer than [`LEASE_STEP_TIMEOUT`]),
//! the leases may be gone. The checker **keeps checking the buckets it had**, drops the
//! connection and joins again with backoff; once it has joined again, the buckets it did not
//! get back are withdrawn. The choice: a monitor must not go blind because its database
//! restarts. While PostgreSQL is down for every checker nobody can take buckets over, so no
//! site is checked twice; only a checker cut off from PostgreSQL *alone* may check sites
//! that the others have taken over, until it reaches PostgreSQL again (double checks, never
//! a gap). On stop, [`crate::run`] lets the checks in flight end, then the keeper leaves the
//! group, so the others take over on their next rebalance.

use std::sync::Arc;
use std::time::Duration;

use sitemon_consume::lease::LeaseGroup;
use sitemon_core::DatabaseConfig;
use sitemon_core::retry::{self, Backoff};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::buckets::{BUCKETS, BucketSet, InFlight, Ownership};
use crate::config::CheckerConfig;
use crate::error::{Error, Result};
use crate::stats::Stats;

/// How often a checker under its fair share tries to take buckets.
pub(crate) const UNDER_SHARE_EVERY: Duration = Duration::from_millis(500);
/// The most one lease step (a rebalance, a release) may take before the lease connection
/// counts as lost. Shorter than the time PostgreSQL takes to notice a silent connection
/// (about 11 s of keepalives), so a checker cut off from PostgreSQL stops checking about when
/// the others may take its buckets.
pub(crate) const LEASE_STEP_TIMEOUT: Duration = Duration::from_secs(6);
/// The first and the longest pause before joining again after the lease connection failed.
const REJOIN_MIN: Duration = Duration::from_secs(1);
const REJOIN_MAX: Duration = Duration::from_secs(30);
/// The first and the longest pause before joining again after PostgreSQL refused the login
/// (credentials rotated while running): retrying sooner cannot help.
const REFUSED_MIN: Duration = Duration::from_secs(30);
const REFUSED_MAX: Duration = Duration::from_secs(300);

/// This checker's place in its lease group, and what it tells the scheduler.
#[derive(Debug)]
pub(crate) struct Keeper {
    database: DatabaseConfig,
    group: String,
    every: Duration,
    /// `None` while the lease connection is lost.
    lease: Option<LeaseGroup>,
    /// Live members at the last rebalance.
    members: u32,
    /// Set when the group was joined again after the lease connection failed: the next
    /// rebalance withdraws the buckets that were not taken back.
    reconcile: bool,
    /// The buckets the scheduler may schedule.
    held: BucketSet,
    generation: u64,
    ownership: watch::Sender<Ownership>,
    applied: watch::Receiver<u64>,
    in_flight: Arc<InFlight>,
    stats: Arc<Stats>,
}

impl Keeper {
    /// Joins the group and takes the first share, before the scheduler starts.
    ///
    /// # Errors
    /// [`Error::Lease`] when PostgreSQL cannot be reached or the leases cannot be taken.
    pub(crate) async fn join(
        config: &CheckerConfig,
        ownership: watch::Sender<Ownership>,
        applied: watch::Receiver<u64>,
        in_flight: Arc<InFlight>,
        stats: Arc<Stats>,
    ) -> Result<Self> {
        let group = crate::buckets::lease_group(&config.kafka.topic, &config.location);
        let lease = LeaseGroup::join(&config.database, &group)
            .await
            .map_err(|source| Error::Lease {
                group: group.clone(),
                source,
            })?;
        let mut keeper = Self {
            database: config.database.clone(),
            group,
            every: config.rebalance_every,
            lease: Some(lease),
            members: 1,
            reconcile: false,
            held: BucketSet::default(),
            generation: 0,
            ownership,
            applied,
            in_flight,
            stats,
        };
        keeper.rebalance().await.map_err(|source| Error::Lease {
            group: keeper.group.clone(),
            source,
        })?;
        tracing::info!(
            group = %keeper.group,
            members = keeper.members,
            buckets = keeper.held.len(),
            "joined the checkers of this location"
        );
        Ok(keeper)
    }

    /// Rebalances until `stop`, then leaves the group. Cancel `stop` only once the checks in
    /// flight have ended: leaving hands every bucket over at once.
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        // Jittered, so that checkers started together do not rebalance or join in step.
        let mut rebalance = Backoff::every(self.every).start();
        let mut rejoin = Backoff::new(REJOIN_MIN, REJOIN_MAX).start();
        let mut refused = Backoff::new(REFUSED_MIN, REFUSED_MAX).start();
        // Whether the last join failed on refused credentials.
        let mut login_refused = false;
        loop {
            let wait = if self.lease.is_none() && login_refused {
                refused.next_wait()
            } else if self.lease.is_none() {
                rejoin.next_wait()
            } else if self.under_share() {
                Some(UNDER_SHARE_EVERY)
            } else {
                rebalance.next_wait()
            };
            // No backoff here has a deadline: `None` never comes.
            let wait = wait.unwrap_or(REFUSED_MAX);
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
            if self.lease.is_none() {
                match LeaseGroup::join(&self.database, &self.group).await {
                    Ok(lease) => {
                        tracing::info!(group = %self.group, "joined the checkers of this location again");
                        self.lease = Some(lease);
                        self.reconcile = true;
                        rejoin.reset();
                        refused.reset();
                        login_refused = false;
                    }
                    Err(e) if e.is_auth_failure() => {
                        login_refused = true;
                        tracing::error!(
                            group = %self.group,
                            "cannot join the checkers of this location: {e}; trying again slowly"
                        );
                        continue;
                    }
                    Err(e) => {
                        login_refused = false;
                        tracing::warn!(
                            group = %self.group,
                            attempts = rejoin.attempts(),
                            "cannot join the checkers of this location ({e}); trying again with backoff"
                        );
                        continue;
                    }
                }
            }
            // Not cut short by `stop`: a rebalance is bounded by its steps' timeouts, and
            // finishing it keeps the lease connection for a clean leave.
            if let Err(e) = self.rebalance().await {
                self.lost(&e);
            }
        }
        self.leave().await;
    }

    fn under_share(&self) -> bool {
        let share = (BUCKETS as usize).div_ceil(self.members.max(1) as usize);
        self.held.len() < share
    }

    /// One rebalance: withdraws the surplus from the scheduler, waits for its checks, releases
    /// it; takes free buckets up to the fair share.
    async fn rebalance(&mut self) -> sitemon_core::Result<()> {
        // Out of `self` while in use: when a step fails, the connection is dropped with its
        // locks.
        let Some(mut lease) = self.lease.take() else {
            return Ok(());
        };
        let plan = retry::timeout(
            "rebalancing the bucket leases",
            LEASE_STEP_TIMEOUT,
            lease.rebalance(BUCKETS),
        )
        .await?;
        self.members = plan.members;
        if std::mem::take(&mut self.reconcile) {
            // Back after a lost lease connection: what this checker kept checking meanwhile
            // but could not lease again belongs to another checker now.
            let mut lost = 0;
            for bucket in 0..BUCKETS {
                if self.held.contains(bucket) && !lease.held().contains(&bucket) {
                    self.held.remove(bucket);
                    lost += 1;
                }
            }
            if lost > 0 {
                self.publish();
                tracing::info!(
                    group = %self.group,
                    lost,
                    held = self.held.len(),
                    "stopped checking the buckets another checker took meanwhile"
                );
            }
        }
        if !plan.surplus.is_empty() {
            for bucket in &plan.surplus {
                self.held.remove(*bucket);
            }
            let generation = self.publish();
            // The scheduler applies it at once (or has stopped: `u64::MAX`), then the checks
            // in flight end within their timeout.
            let _ = self
                .applied
                .wait_for(|applied| *applied >= generation)
                .await;
            self.in_flight.drained(&plan.surplus).await;
            for bucket in &plan.surplus {
                retry::timeout(
                    "giving a bucket lease back",
                    LEASE_STEP_TIMEOUT,
                    lease.release(*bucket),
                )
                .await?;
            }
            tracing::info!(
                group = %self.group,
                members = plan.members,
                gave = plan.surplus.len(),
                held = self.held.len(),
                "gave buckets to the other checkers"
            );
        }
        if !plan.acquired.is_empty() {
            for bucket in &plan.acquired {
                self.held.insert(*bucket);
            }
            self.publish();
            tracing::info!(
                group = %self.group,
                members = plan.members,
                took = plan.acquired.len(),
                held = self.held.len(),
                "took buckets"
            );
        }
        self.lease = Some(lease);
        Ok(())
    }

    /// Tells the scheduler the buckets held now; returns the change's generation.
    fn publish(&mut self) -> u64 {
        self.generation += 1;
        self.ownership.send_replace(Ownership {
            buckets: self.held,
            generation: self.generation,
        });
        self.stats.buckets_held(self.held.len());
        self.generation
    }

    /// The lease connection failed: drop it (its locks go with it) and join again later,
    /// checking the buckets held so far meanwhile (see the module docs).
    fn lost(&mut self, error: &sitemon_core::Error) {
        tracing::error!(
            group = %self.group,
            held = self.held.len(),
            "lost the bucket leases ({error}); still checking the sites of the buckets held \
             until PostgreSQL answers again"
        );
        self.lease = None;
    }

    async fn leave(mut self) {
        self.held = BucketSet::default();
        self.publish();
        if let Some(lease) = self.lease.take() {
            let left = retry::timeout("leaving the lease group", LEASE_STEP_TIMEOUT, lease.leave());
            match left.await {
                Ok(()) => {
                    tracing::info!(group = %self.group, "left the checkers of this location: handed every bucket over")
                }
                Err(e) => tracing::warn!(
                    group = %self.group,
                    "could not leave the lease group ({e}); the leases go with the connection"
                ),
            }
        }
    }
}
