//! The delivery loop: sends the outbox, at least once.
//!
//! It reads `alert_outbox` alone (no Kafka), so it runs beside any processor, in any
//! number of processes: each pass **claims** due rows (`FOR UPDATE SKIP LOCKED`, then
//! `attempts + 1` and `next_attempt_at` pushed [`DeliveryConfig::claim_for`] ahead, in one
//! statement), sends them concurrently, and records each answer. A process killed while a
//! row is in flight leaves it claimed: another pass takes it again once the claim expires,
//! and the receiver sees the same stable id twice.
//!
//! A failed attempt (5xx, 429, 408, no connection, no answer) is tried again after a wait
//! from [`DeliveryConfig::backoff`] (doubling, with jitter), or after the receiver's
//! `Retry-After` if that is longer; once [`DeliveryConfig::give_up_after`] has passed since
//! the row was written it is marked `failed`, as is a row the receiver rejects (another
//! 4xx). `sitemon alerts` shows each row's state and last answer.

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
    /// How long after it was written a notification is still tried: 24 h.
    pub give_up_after: Duration,
    /// How long a claimed row stays invisible to other passes (longer than any attempt):
    /// 2 min.
    pub claim_for: Duration,
    /// Notifications sent at once (and claimed per pass): 16.
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

/// What one pass did.
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

/// Runs the delivery loop until `shutdown`; a pass in hand is finished first.
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
    let mut trouble = Backoff::new(Duration::from_millis(500), Duration::from_secs(30)).start();
    while !shutdown.is_cancelled() {
        let wait = match deliver_due(&pool, &config).await {
            Ok(pass) if pass.tried > 0 => {
                trouble.reset();
                continue;
            }
            Ok(_) => {
                trouble.reset();
                config.poll_every
            }
            Err(e) => {
                let wait = trouble.next_wait().unwrap_or(Duration::from_secs(30));
                tracing::warn!(error = %e, retry_in = ?wait, "cannot read the outbox");
                wait
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
            () = tokio::time::sleep(wait) => {}
            () = woken => {}
        }
    }
    Ok(())
}

/// One pass: claims the due rows (at most [`DeliveryConfig::concurrency`]), sends them at
/// once and records every answer.
///
/// # Errors
/// [`crate::Error::Database`] or a timeout when the outbox cannot be read or written; a
/// row claimed and not recorded is tried again when its claim expires.
pub async fn deliver_due(pool: &PgPool, config: &DeliveryConfig) -> Result<Pass> {
    let claimed: Vec<Claimed> = bounded(
        "claiming notifications to send",
        sqlx::query_as(
            "WITH due AS (
                 SELECT id FROM alert_outbox
                 WHERE state = 'pending' AND next_attempt_at <= now()
                 ORDER BY next_attempt_at, id
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED)
             UPDATE alert_outbox o
             SET attempts = o.attempts + 1,
                 next_attempt_at = now() + make_interval(secs => $2)
             FROM due, alert_channels c
             WHERE o.id = due.id AND c.name = o.channel
             RETURNING o.id, o.channel, o.payload, o.attempts, o.created_at, c.settings",
        )
        .bind(i64::from(config.concurrency.max(1)))
        .bind(config.claim_for.as_secs_f64())
        .fetch_all(pool),
    )
    .await?;
    let mut pass = Pass {
        tried: claimed.len(),
        ..Pass::default()
    };
    let mut sends = JoinSet::new();
    for row in claimed {
        sends.spawn(async move {
            let outcome = match (
                ChannelSettings::from_stored(&row.channel, row.settings.clone()),
                serde_json::from_value::<Notification>(row.payload.clone()),
            ) {
                (Ok(channel), Ok(notification)) => channel.send(&notification).await,
                (Err(e), _) => Outcome::Rejected {
                    answer: e.to_string(),
                },
                (_, Err(_)) => Outcome::Rejected {
                    answer: "the stored notification is not readable".to_owned(),
                },
            };
            (row, outcome)
        });
    }
    let config = Arc::new(config.clone());
    while let Some(done) = sends.join_next().await {
        let Ok((row, outcome)) = done else { continue };
        match record(pool, &config, &row, &outcome).await? {
            Recorded::Delivered => pass.delivered += 1,
            Recorded::Retrying => pass.retrying += 1,
            Recorded::Failed => pass.failed += 1,
        }
    }
    Ok(pass)
}

enum Recorded {
    Delivered,
    Retrying,
    Failed,
}

async fn record(
    pool: &PgPool,
    config: &DeliveryConfig,
    row: &Claimed,
    outcome: &Outcome,
) -> Result<Recorded> {
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
            let wait = retry_after.map_or(backoff, |r| r.max(backoff));
            let age = OffsetDateTime::now_utc() - row.created_at;
            let age = Duration::try_from(age).unwrap_or_default();
            if age + wait > config.give_up_after {
                tracing::warn!(channel = %row.channel, id = %row.id, attempts = row.attempts, answer,
                    "gave up on a notification after {:?}", config.give_up_after);
                (
                    "failed",
                    None,
                    format!("gave up after {} attempts: {answer}", row.attempts),
                )
            } else {
                tracing::info!(channel = %row.channel, id = %row.id, attempts = row.attempts, answer,
                    retry_in = ?wait, "a notification will be tried again");
                ("pending", Some(wait), answer.clone())
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
