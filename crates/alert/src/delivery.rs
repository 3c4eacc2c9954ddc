//! The delivery loop: sends the outbox, at least once, each channel on its own.
//!
//! It reads `alert_outbox` alone (no Kafka), so it runs beside any processor, in any
//! number of processes. The loop finds the channels with due rows and runs one task per
//! channel, at most [`DeliveryConfig::concurrency`] channels at once; a channel's task
//! **claims** one due row at a time (`FOR UPDATE SKIP LOCKED`, then `attempts + 1` and
//! `next_attempt_at` pushed [`DeliveryConfig::claim_for`] ahead, in one statement), sends it,
//! records the answer and takes the next, until none is due or the receiver stops taking
//! them. So a receiver that hangs (each request bounded by its timeout) or throttles holds
//! its own channel only: the others go on. A process killed while a row is in flight leaves
//! it claimed: another pass takes it again once the claim expires, and the receiver sees the
//! same stable id twice.
//!
//! A failed attempt (5xx, 429, 408, no connection, no answer) is tried again after a wait
//! from [`DeliveryConfig::backoff`] (doubling, with jitter), or after the receiver's
//! `Retry-After` if that is longer, cut to what is left before
//! [`DeliveryConfig::give_up_after`]: once that has passed since the row was written it is
//! marked `failed`, as is a row the receiver rejects (another 4xx). A 429, or any answer
//! with a `Retry-After`, **throttles the channel**: none of its rows is claimed before that
//! wait has passed (`alert_channels.throttled_until`), so a throttled receiver is not
//! hammered with each row in turn. `sitemon alerts` shows each row's state and last answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sitemon_core::db::PgPool;
use sitemon_core::retry::Backoff;
use sqlx::postgres::PgListener;
use time::OffsetDateTime;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::channel::{ChannelSettings, Outcome, Sender};
use crate::error::{Result, bounded};
use crate::notification::Notification;
use crate::processor::OUTBOX_CHANNEL;

/// How the delivery loop paces itself.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Waits between the attempts of one notification: 1 s doubling to 10 min, ±25 %.
    pub backoff: Backoff,
    /// How long after it was written a notification is still tried: 24 h. Also the most a
    /// receiver's `Retry-After` can make it (or its channel) wait.
    pub give_up_after: Duration,
    /// How long a claimed row stays invisible to other passes (longer than any attempt):
    /// 2 min.
    pub claim_for: Duration,
    /// Channels sent to at once, each one request at a time: 16. A channel whose receiver
    /// hangs holds one of these, never the others.
    pub concurrency: u32,
    /// How often the outbox is read when nothing wakes the loop: 1 s. A commit that adds
    /// rows wakes it at once (`LISTEN sitemon_alert_outbox`).
    pub poll_every: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(600)),
            give_up_after: Duration::from_secs(24 * 3600),
            claim_for: Duration::from_secs(120),
            concurrency: 16,
            poll_every: Duration::from_secs(1),
        }
    }
}

/// What one channel's run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Rows claimed and tried.
    pub tried: usize,
    /// Accepted by their receiver.
    pub delivered: usize,
    /// To be tried again.
    pub retrying: usize,
    /// Given up (rejected, or past `give_up_after`).
    pub failed: usize,
}

#[derive(Debug, sqlx::FromRow)]
struct Claimed {
    id: Uuid,
    channel: String,
    payload: serde_json::Value,
    attempts: i32,
    created_at: OffsetDateTime,
    settings: serde_json::Value,
}

/// The longest a stop waits for the channels' requests in hand (each bounded by its own
/// timeout, 20 s at most) before it leaves them to be claimed again.
const DRAIN_PATIENCE: Duration = Duration::from_secs(25);

/// Runs the delivery loop until `shutdown`; the requests in hand are finished first (for
/// at most 25 s; a row left in flight is sent again, with the same id, once its claim
/// expires).
///
/// # Errors
/// None in practice: a pass that fails (PostgreSQL away) is logged and tried again after a
/// back-off; the result is for symmetry with the other services.
pub async fn run(pool: PgPool, config: DeliveryConfig, shutdown: CancellationToken) -> Result<()> {
    let mut listener = match PgListener::connect_with(&pool).await {
        Ok(mut listener) => match listener.listen(OUTBOX_CHANNEL).await {
            Ok(()) => Some(listener),
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for new notifications; polling only");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot LISTEN for new notifications; polling only");
            None
        }
    };
    let config = Arc::new(config);
    let limit = usize::try_from(config.concurrency.max(1)).unwrap_or(usize::MAX);
    let mut trouble = Backoff::new(Duration::from_millis(500), Duration::from_secs(30)).start();
    // One task per channel in flight, by task id, with its channel's name.
    let mut workers: JoinSet<Result<Pass>> = JoinSet::new();
    let mut busy: HashMap<tokio::task::Id, String> = HashMap::new();
    // Set after a failure: wait this long before reading the outbox again.
    let mut hold: Option<Duration> = None;
    while !shutdown.is_cancelled() {
        let wait = match hold.take() {
            Some(wait) => wait,
            None if busy.len() >= limit => config.poll_every,
            None => {
                let skip: Vec<String> = busy.values().cloned().collect();
                match due_channels(&pool, &skip, limit - busy.len()).await {
                    Ok(channels) => {
                        for channel in channels {
                            let task = workers.spawn(deliver_channel(
                                pool.clone(),
                                Arc::clone(&config),
                                channel.clone(),
                                shutdown.clone(),
                            ));
                            busy.insert(task.id(), channel);
                        }
                        config.poll_every
                    }
                    Err(e) => {
                        let wait = trouble.next_wait().unwrap_or(Duration::from_secs(30));
                        tracing::warn!(error = %e, retry_in = ?wait, "cannot read the outbox");
                        wait
                    }
                }
            }
        };
        let woken = async {
            match listener.as_mut() {
                Some(listener) => {
                    if listener.recv().await.is_err() {
                        // sqlx reconnects on the next call; do not spin meanwhile.
                        tokio::time::sleep(wait).await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(done) = workers.join_next_with_id(), if !workers.is_empty() => {
                // A channel is free again: look for due rows at once, unless it failed.
                let (id, result) = match done {
                    Ok((id, result)) => (id, Some(result)),
                    Err(e) => (e.id(), None),
                };
                let channel = busy.remove(&id).unwrap_or_default();
                match result {
                    Some(Ok(_)) => trouble.reset(),
                    Some(Err(e)) => {
                        let wait = trouble.next_wait().unwrap_or(Duration::from_secs(30));
                        tracing::warn!(channel, error = %e, retry_in = ?wait, "cannot record deliveries");
                        hold = Some(wait);
                    }
                    None => tracing::error!(channel, "a channel's delivery task panicked"),
                }
            }
            () = tokio::time::sleep(wait) => {}
            () = woken, if hold.is_none() => {}
        }
    }
    // Stop: the channels finish the request in hand (each bounded) and take no other.
    let drained = tokio::time::timeout(DRAIN_PATIENCE, async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            in_flight = workers.len(),
            "stopping with deliveries in flight; they are sent again once their claim expires"
        );
        workers.shutdown().await;
    }
    Ok(())
}

/// The channels with a due row, not throttled and not in `skip`, the longest-waiting first;
/// at most `limit`.
async fn due_channels(pool: &PgPool, skip: &[String], limit: usize) -> Result<Vec<String>> {
    bounded(
        "finding channels with notifications to send",
        sqlx::query_scalar(
            "SELECT o.channel FROM alert_outbox o
             JOIN alert_channels c ON c.name = o.channel
             WHERE o.state = 'pending' AND o.next_attempt_at <= now()
               AND (c.throttled_until IS NULL OR c.throttled_until <= now())
               AND o.channel <> ALL($1)
             GROUP BY o.channel
             ORDER BY min(o.next_attempt_at), o.channel
             LIMIT $2",
        )
        .bind(skip)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(pool),
    )
    .await
}

/// Sends `channel`'s due rows one at a time until none is due, its receiver asks for a
/// retry (it is not taking notifications now: the rest wait for their own turn, or for the
/// channel's throttle), or `shutdown`.
async fn deliver_channel(
    pool: PgPool,
    config: Arc<DeliveryConfig>,
    channel: String,
    shutdown: CancellationToken,
) -> Result<Pass> {
    let mut pass = Pass::default();
    while !shutdown.is_cancelled() {
        let Some(row) = claim(&pool, &config, &channel).await? else {
            break;
        };
        pass.tried += 1;
        let outcome = match (
            ChannelSettings::from_stored(&row.channel, row.settings.clone()),
            serde_json::from_value::<Notification>(row.payload.clone()),
        ) {
            (Ok(settings), Ok(notification)) => settings.send(&notification).await,
            (Err(e), _) => Outcome::Rejected {
                answer: e.to_string(),
            },
            (_, Err(_)) => Outcome::Rejected {
                answer: "the stored notification is not readable".to_owned(),
            },
        };
        match record(&pool, &config, &row, &outcome).await? {
            Recorded::Delivered => pass.delivered += 1,
            Recorded::Retrying => pass.retrying += 1,
            Recorded::Failed => pass.failed += 1,
        }
        if matches!(outcome, Outcome::Retry { .. }) {
            break;
        }
    }
    Ok(pass)
}

/// Claims `channel`'s longest-due row, unless the channel is throttled.
async fn claim(pool: &PgPool, config: &DeliveryConfig, channel: &str) -> Result<Option<Claimed>> {
    bounded(
        "claiming a notification to send",
        sqlx::query_as(
            "WITH due AS (
                 SELECT o.id FROM alert_outbox o
                 JOIN alert_channels c ON c.name = o.channel
                 WHERE o.channel = $1 AND o.state = 'pending' AND o.next_attempt_at <= now()
                   AND (c.throttled_until IS NULL OR c.throttled_until <= now())
                 ORDER BY o.next_attempt_at, o.id
                 LIMIT 1
                 FOR UPDATE OF o SKIP LOCKED)
             UPDATE alert_outbox o
             SET attempts = o.attempts + 1,
                 next_attempt_at = now() + make_interval(secs => $2)
             FROM due, alert_channels c
             WHERE o.id = due.id AND c.name = o.channel
             RETURNING o.id, o.channel, o.payload, o.attempts, o.created_at, c.settings",
        )
        .bind(channel)
        .bind(config.claim_for.as_secs_f64())
        .fetch_optional(pool),
    )
    .await
}

enum Recorded {
    Delivered,
    Retrying,
    Failed,
}

/// When a notification is tried again and how long its channel is throttled, after an
/// answer to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Next {
    /// The wait before the next attempt; `None`: give up.
    retry_in: Option<Duration>,
    /// How long the channel takes none of its notifications; `None`: not throttled.
    throttle: Option<Duration>,
}

/// The pure rule: `age` since the row was written, the back-off's `backoff`, the
/// receiver's `retry_after` (a throttle when `Some`). The receiver's wait is cut to what is
/// left before `give_up_after` (so a `Retry-After` of 2^64−1 s means "try once more at the
/// give-up time", never an overflow); the back-off alone still gives up when it would wait
/// past it. Every sum saturates.
fn next_attempt(
    age: Duration,
    backoff: Duration,
    retry_after: Option<Duration>,
    give_up_after: Duration,
) -> Next {
    let left = give_up_after.saturating_sub(age);
    let asked = retry_after.map(|r| r.min(give_up_after));
    let wait = asked.map_or(backoff, |r| r.min(left).max(backoff));
    let retry_in = (age.saturating_add(wait) <= give_up_after).then_some(wait);
    let throttle = asked.map(|r| retry_in.unwrap_or_else(|| r.max(backoff).min(give_up_after)));
    Next { retry_in, throttle }
}

async fn record(
    pool: &PgPool,
    config: &DeliveryConfig,
    row: &Claimed,
    outcome: &Outcome,
) -> Result<Recorded> {
    let mut throttle = None;
    let (state, wait, answer) = match outcome {
        Outcome::Delivered { answer } => ("delivered", None, answer.clone()),
        Outcome::Rejected { answer } => {
            tracing::warn!(channel = %row.channel, id = %row.id, answer, "a notification was rejected; not trying again");
            ("failed", None, answer.clone())
        }
        Outcome::Retry {
            answer,
            retry_after,
        } => {
            let backoff = backoff_wait(&config.backoff, row.attempts);
            let age = OffsetDateTime::now_utc() - row.created_at;
            let age = Duration::try_from(age).unwrap_or_default();
            let next = next_attempt(age, backoff, *retry_after, config.give_up_after);
            throttle = next.throttle;
            match next.retry_in {
                None => {
                    tracing::warn!(channel = %row.channel, id = %row.id, attempts = row.attempts, answer,
                        "gave up on a notification after {:?}", config.give_up_after);
                    (
                        "failed",
                        None,
                        format!("gave up after {} attempts: {answer}", row.attempts),
                    )
                }
                Some(wait) => {
                    tracing::info!(channel = %row.channel, id = %row.id, attempts = row.attempts, answer,
                        retry_in = ?wait, "a notification will be tried again");
                    ("pending", Some(wait), answer.clone())
                }
            }
        }
    };
    bounded(
        "recording a delivery attempt",
        sqlx::query(
            "UPDATE alert_outbox
             SET state = $2, last_answer = $3,
                 next_attempt_at = CASE WHEN $2 = 'pending'
                                        THEN now() + make_interval(secs => $4)
                                        ELSE next_attempt_at END,
                 finished_at = CASE WHEN $2 = 'pending' THEN NULL ELSE now() END
             WHERE id = $1 AND state = 'pending'",
        )
        .bind(row.id)
        .bind(state)
        .bind(&answer)
        .bind(wait.unwrap_or_default().as_secs_f64())
        .execute(pool),
    )
    .await?;
    if let Some(throttle) = throttle {
        tracing::info!(channel = %row.channel, throttle = ?throttle,
            "the receiver throttles the channel: none of its notifications is sent before then");
        bounded(
            "throttling a channel",
            sqlx::query(
                "UPDATE alert_channels
                 SET throttled_until = GREATEST(throttled_until, now() + make_interval(secs => $2))
                 WHERE name = $1",
            )
            .bind(&row.channel)
            .bind(throttle.as_secs_f64())
            .execute(pool),
        )
        .await?;
    }
    Ok(match state {
        "delivered" => Recorded::Delivered,
        "pending" => Recorded::Retrying,
        _ => Recorded::Failed,
    })
}

/// The back-off's wait after the `attempts`-th failed attempt (jittered).
pub fn backoff_wait(backoff: &Backoff, attempts: i32) -> Duration {
    let mut retry = backoff.start();
    let mut wait = backoff.initial;
    for _ in 0..attempts.clamp(1, 64) {
        wait = retry.next_wait().unwrap_or(backoff.max);
    }
    wait
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);
    const fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_huge_retry_after_waits_until_the_give_up_time_and_never_overflows() {
        let huge = Some(Duration::MAX);
        assert_eq!(
            next_attempt(secs(3600), secs(1), huge, DAY),
            Next {
                retry_in: Some(DAY - secs(3600)),
                throttle: Some(DAY - secs(3600)),
            }
        );
        // At (or past) the give-up time: give up, and still throttle the channel (capped).
        let late = next_attempt(Duration::MAX, secs(1), huge, DAY);
        assert_eq!(late.retry_in, None);
        assert_eq!(late.throttle, Some(DAY));
        // Extreme values everywhere: saturating, no panic.
        assert_eq!(
            next_attempt(Duration::MAX, Duration::MAX, huge, Duration::MAX).retry_in,
            Some(Duration::MAX)
        );
    }

    #[test]
    fn the_backoff_alone_gives_up_past_the_give_up_time_and_throttles_nothing() {
        assert_eq!(
            next_attempt(secs(10), secs(5), None, DAY),
            Next {
                retry_in: Some(secs(5)),
                throttle: None,
            }
        );
        assert_eq!(
            next_attempt(DAY - secs(2), secs(5), None, DAY),
            Next {
                retry_in: None,
                throttle: None,
            }
        );
    }

    #[test]
    fn a_retry_after_longer_than_the_backoff_wins_and_throttles_the_channel() {
        assert_eq!(
            next_attempt(secs(10), secs(1), Some(secs(120)), DAY),
            Next {
                retry_in: Some(secs(120)),
                throttle: Some(secs(120)),
            }
        );
        // A 429 without Retry-After: the back-off, for the channel too.
        assert_eq!(
            next_attempt(secs(10), secs(4), Some(Duration::ZERO), DAY),
            Next {
                retry_in: Some(secs(4)),
                throttle: Some(secs(4)),
            }
        );
    }

    #[test]
    fn waits_double_with_jitter_up_to_the_cap() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(600));
        for (attempts, base) in [
            (1, 1.0),
            (2, 2.0),
            (3, 4.0),
            (10, 512.0),
            (11, 600.0),
            (500, 600.0),
        ] {
            let wait = backoff_wait(&backoff, attempts).as_secs_f64();
            assert!(
                wait >= base * 0.75 && wait <= base * 1.25,
                "attempt {attempts}: {wait} s, not {base} s ± 25 %"
            );
        }
    }
}
