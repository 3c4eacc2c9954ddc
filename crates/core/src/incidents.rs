//! The incidents alerting opened, with the delivery state of their notifications: what
//! `sitemon alerts` lists and the dashboard shows. Read-only; alerting (`sitemon-alert`)
//! writes them.

use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::Result;
use crate::statement::bounded;

/// How long listing the incidents may take.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The delivery of one notification.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryView {
    /// The notification's stable id.
    pub id: Uuid,
    /// The channel.
    pub channel: String,
    /// `down`, `resolved`, `reminder`, `cert_expiry`.
    pub kind: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    /// Attempts so far.
    pub attempts: i32,
    /// What the receiver answered last (never a secret: answers are the receiver's).
    pub last_answer: Option<String>,
}

/// An incident.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentView {
    /// Its id (PagerDuty's `dedup_key`).
    pub id: Uuid,
    /// The site.
    pub website_id: i32,
    /// Its URL.
    pub url: String,
    /// Opened.
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: OffsetDateTime,
    /// Resolved; `None` while open.
    #[serde(with = "time::serde::rfc3339::option")]
    pub resolved_at: Option<OffsetDateTime>,
    /// Seconds from opening to resolution (or to now while open).
    pub duration_secs: i64,
    /// The locations that were down.
    pub locations: Vec<String>,
    /// The first failing check's error.
    pub first_error: Option<String>,
    /// Its notifications.
    pub notifications: Vec<DeliveryView>,
}

/// Which incidents [`incidents`] lists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IncidentFilter {
    /// Only those still open.
    pub open_only: bool,
    /// Only those opened within this long of now.
    pub since: Option<Duration>,
    /// Only this site's.
    pub site: Option<i32>,
    /// At most this many, the newest.
    pub limit: Option<i64>,
}

#[derive(Debug, sqlx::FromRow)]
struct IncidentRow {
    id: Uuid,
    website_id: i32,
    url: String,
    opened_at: OffsetDateTime,
    resolved_at: Option<OffsetDateTime>,
    duration_secs: i64,
    locations: Vec<String>,
    first_error: Option<String>,
}

#[derive(Debug, sqlx::FromRow)]
struct DeliveryRow {
    incident_id: Uuid,
    id: Uuid,
    channel: String,
    kind: String,
    state: String,
    attempts: i32,
    last_answer: Option<String>,
}

/// The incidents `filter` selects, newest first, with their notifications.
///
/// # Errors
/// [`crate::Error::Database`], [`crate::Error::Timeout`].
pub async fn incidents(pool: &PgPool, filter: &IncidentFilter) -> Result<Vec<IncidentView>> {
    let rows: Vec<IncidentRow> = bounded(
        "listing the incidents",
        STATEMENT_TIMEOUT,
        sqlx::query_as(
            "SELECT i.id, i.website_id, w.url, i.opened_at, i.resolved_at,
                    EXTRACT(EPOCH FROM coalesce(i.resolved_at, now()) - i.opened_at)::bigint
                        AS duration_secs,
                    i.locations, i.first_error
             FROM alert_incidents i JOIN websites w ON w.id = i.website_id
             WHERE (NOT $1 OR i.resolved_at IS NULL)
               AND ($2::float8 IS NULL OR i.opened_at >= now() - make_interval(secs => $2))
               AND ($3::integer IS NULL OR i.website_id = $3)
             ORDER BY i.opened_at DESC, i.id
             LIMIT $4",
        )
        .bind(filter.open_only)
        .bind(filter.since.map(|d| d.as_secs_f64()))
        .bind(filter.site)
        .bind(filter.limit)
        .fetch_all(pool),
    )
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let deliveries: Vec<DeliveryRow> = bounded(
        "listing the notifications",
        STATEMENT_TIMEOUT,
        sqlx::query_as(
            "SELECT incident_id, id, channel, kind, state, attempts, last_answer
             FROM alert_outbox WHERE incident_id = ANY($1)
             ORDER BY created_at, kind, channel",
        )
        .bind(&ids)
        .fetch_all(pool),
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| IncidentView {
            notifications: deliveries
                .iter()
                .filter(|d| d.incident_id == row.id)
                .map(|d| DeliveryView {
                    id: d.id,
                    channel: d.channel.clone(),
                    kind: d.kind.clone(),
                    state: d.state.clone(),
                    attempts: d.attempts,
                    last_answer: d.last_answer.clone(),
                })
                .collect(),
            id: row.id,
            website_id: row.website_id,
            url: row.url,
            opened_at: row.opened_at,
            resolved_at: row.resolved_at,
            duration_secs: row.duration_secs,
            locations: row.locations,
            first_error: row.first_error,
        })
        .collect())
}
