//! The processor: check events in, state changes, incidents and outbox rows out, all inside
//! the caller's transaction.
//!
//! The caller (the exactly-once consumer) opens a transaction, calls
//! [`Processor::apply`] with the events it read, stores its offsets in the same
//! transaction and commits. A rollback undoes everything `apply` wrote; a replay of events
//! already applied and committed changes nothing (each location remembers its last check,
//! and every incident and outbox id is derived from the events).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sitemon_core::CheckEvent;
use sitemon_core::mask;
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{Result, bounded};
use crate::machine::{Check, Decision, LocationState, OpenIncident, Overrides, Policy, SiteState};
use crate::notification::{Kind, Notification, SiteRef, rfc3339, stable_id};

/// The channel `LISTEN`ed to by the delivery loop: notified in the transaction that adds
/// outbox rows, so it wakes when they are committed.
pub const OUTBOX_CHANNEL: &str = "sitemon_alert_outbox";

/// Turns check events into state changes, incidents and outbox rows.
#[derive(Debug, Clone)]
pub struct Processor {
    /// The service's defaults; each site's `websites` columns override them.
    defaults: Policy,
    /// When an event dated in the future was last logged: at most one line a minute, so a
    /// checker with a wrong clock cannot flood the log.
    future_logged: Arc<Mutex<Option<Instant>>>,
}

/// How often events dated in the future are logged at most.
const FUTURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// What one call of [`Processor::apply`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Events given.
    pub events: usize,
    /// Events of sites that no longer exist, left out.
    pub unknown_sites: usize,
    /// Events dated more than [`sitemon_core::event::MAX_FUTURE_SKEW`] ahead of this
    /// service's clock, left out: they change no state.
    pub future: usize,
    /// Locations that went down or came back up.
    pub location_changes: usize,
    /// Incidents opened.
    pub opened: usize,
    /// Incidents resolved.
    pub resolved: usize,
    /// Outbox rows written.
    pub notifications: usize,
}

/// A site's row of `websites`, as the processor needs it.
#[derive(Debug, sqlx::FromRow)]
struct SiteRow {
    id: i32,
    url: String,
    failure_threshold: Option<i32>,
    success_threshold: Option<i32>,
    min_locations: Option<i32>,
    reminder_every_secs: Option<f64>,
    cert_expiry_days: Option<i32>,
    channels: Option<Vec<String>>,
}

impl SiteRow {
    fn overrides(&self) -> Overrides {
        let count = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok());
        Overrides {
            failure_threshold: count(self.failure_threshold),
            success_threshold: count(self.success_threshold),
            min_locations: count(self.min_locations),
            reminder_every: self
                .reminder_every_secs
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64),
            cert_expiry_days: count(self.cert_expiry_days),
        }
    }

    /// The channels this site notifies, of those that exist.
    fn channels(&self, existing: &[String]) -> Vec<String> {
        match &self.channels {
            None => existing.to_vec(),
            Some(chosen) => existing
                .iter()
                .filter(|name| chosen.contains(name))
                .cloned()
                .collect(),
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
struct LocationRow {
    website_id: i32,
    location: String,
    down: bool,
    streak: i32,
    streak_error: Option<String>,
    down_since: Option<OffsetDateTime>,
    last_checked_at: OffsetDateTime,
    last_check_id: Uuid,
}

#[derive(Debug, sqlx::FromRow)]
struct IncidentRow {
    id: Uuid,
    website_id: i32,
    opened_at: OffsetDateTime,
    first_error: Option<String>,
    locations: Vec<String>,
    channels: Vec<String>,
    reminders: i32,
    last_reminder_at: Option<OffsetDateTime>,
}

#[derive(Debug, sqlx::FromRow)]
struct WindowRow {
    website_id: Option<i32>,
    starts_at: OffsetDateTime,
    ends_at: OffsetDateTime,
}

impl Processor {
    /// A processor with these defaults.
    pub fn new(defaults: Policy) -> Self {
        Self {
            defaults,
            future_logged: Arc::default(),
        }
    }

    /// The defaults it applies to sites without overrides.
    pub fn defaults(&self) -> &Policy {
        &self.defaults
    }

    /// Applies `events` (in any order; each site's are taken in `checked_at` order) inside
    /// the caller's transaction `tx`: loads the state of their sites (locking it), runs the
    /// state machine, and writes location states, incidents, certificate notices and
    /// outbox rows (one per notification and channel). Nothing is committed here.
    ///
    /// Events of a site that no longer exists are left out (counted in
    /// [`Applied::unknown_sites`]). Events at or before a location's last applied check are
    /// replays and change nothing. Events dated too far in the future
    /// ([`CheckEvent::is_too_far_ahead`]) are left out too (counted in [`Applied::future`],
    /// logged at most once a minute): taken, one would pin its location's state until real
    /// time caught up, every real check after it looking like a replay.
    ///
    /// # Errors
    /// [`crate::Error::Database`] or a timeout; the caller should roll back.
    pub async fn apply(&self, tx: &mut PgConnection, events: &[CheckEvent]) -> Result<Applied> {
        let mut applied = Applied {
            events: events.len(),
            ..Applied::default()
        };
        let now = OffsetDateTime::now_utc();
        let (future, present): (Vec<&CheckEvent>, Vec<&CheckEvent>) =
            events.iter().partition(|e| e.is_too_far_ahead(now));
        applied.future = future.len();
        if let Some(first) = future.first() {
            self.log_future(first, future.len(), now);
        }
        let events = present;
        if events.is_empty() {
            return Ok(applied);
        }
        let mut by_site: BTreeMap<i32, Vec<&CheckEvent>> = BTreeMap::new();
        for event in events.iter().copied() {
            by_site.entry(event.website_id).or_default().push(event);
        }
        let site_ids: Vec<i32> = by_site.keys().copied().collect();
        let earliest = events
            .iter()
            .map(|e| e.checked_at)
            .min()
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let latest = events
            .iter()
            .map(|e| e.checked_at)
            .max()
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);

        // FOR KEY SHARE: a site cannot be deleted under us before we commit.
        let sites: Vec<SiteRow> = bounded(
            "loading the sites of the events",
            sqlx::query_as(
                "SELECT id, url, failure_threshold, success_threshold, min_locations,
                        EXTRACT(EPOCH FROM reminder_every)::float8 AS reminder_every_secs,
                        cert_expiry_days, channels
                 FROM websites WHERE id = ANY($1) ORDER BY id FOR KEY SHARE",
            )
            .bind(&site_ids)
            .fetch_all(&mut *tx),
        )
        .await?;
        // Not locked (FOR UPDATE cost a quarter of the throughput in scripts/bench-alert): a
        // site's events reach one processor at a time, the consumer's partition lease checked
        // in this same transaction; even without it, two open incidents for one site cannot
        // both commit (alert_incidents_one_open) and the loser's transaction is retried.
        let locations: Vec<LocationRow> = bounded(
            "loading the alert state",
            sqlx::query_as(
                "SELECT website_id, location, down, streak, streak_error, down_since,
                        last_checked_at, last_check_id
                 FROM alert_location_state WHERE website_id = ANY($1)
                 ORDER BY website_id, location",
            )
            .bind(&site_ids)
            .fetch_all(&mut *tx),
        )
        .await?;
        let incidents: Vec<IncidentRow> = bounded(
            "loading the open incidents",
            sqlx::query_as(
                "SELECT id, website_id, opened_at, first_error, locations, channels, reminders,
                        last_reminder_at
                 FROM alert_incidents WHERE website_id = ANY($1) AND resolved_at IS NULL
                 ORDER BY website_id FOR UPDATE",
            )
            .bind(&site_ids)
            .fetch_all(&mut *tx),
        )
        .await?;
        let windows: Vec<WindowRow> = bounded(
            "loading the maintenance windows",
            sqlx::query_as(
                "SELECT website_id, starts_at, ends_at FROM alert_maintenance
                 WHERE (website_id IS NULL OR website_id = ANY($1))
                   AND starts_at <= $3 AND ends_at > $2",
            )
            .bind(&site_ids)
            .bind(earliest)
            .bind(latest)
            .fetch_all(&mut *tx),
        )
        .await?;
        let channels: Vec<String> = bounded(
            "loading the channels",
            sqlx::query_scalar("SELECT name FROM alert_channels ORDER BY name").fetch_all(&mut *tx),
        )
        .await?;
        let certs: Vec<OffsetDateTime> =
            events.iter().filter_map(|e| e.tls_cert_not_after).collect();
        let noticed: Vec<(i32, OffsetDateTime)> = if certs.is_empty() {
            Vec::new()
        } else {
            bounded(
                "loading the certificate notices",
                sqlx::query_as(
                    "SELECT website_id, not_after FROM alert_cert_notices
                     WHERE website_id = ANY($1) AND not_after = ANY($2)",
                )
                .bind(&site_ids)
                .bind(&certs)
                .fetch_all(&mut *tx),
            )
            .await?
        };

        let mut states: BTreeMap<i32, SiteState> = BTreeMap::new();
        for row in locations {
            states.entry(row.website_id).or_default().locations.insert(
                row.location,
                LocationState {
                    down: row.down,
                    streak: u32::try_from(row.streak).unwrap_or(0),
                    streak_error: row.streak_error,
                    down_since: row.down_since,
                    last_checked_at: row.last_checked_at,
                    last_check_id: row.last_check_id,
                },
            );
        }
        for row in incidents {
            states.entry(row.website_id).or_default().open = Some(OpenIncident {
                id: row.id,
                opened_at: row.opened_at,
                first_error: row.first_error,
                locations: row.locations,
                channels: row.channels,
                reminders: u32::try_from(row.reminders).unwrap_or(0),
                last_reminder_at: row.last_reminder_at,
            });
        }
        for (site, not_after) in noticed {
            states
                .entry(site)
                .or_default()
                .noticed_certs
                .insert(not_after);
        }

        let known: BTreeSet<i32> = sites.iter().map(|s| s.id).collect();
        applied.unknown_sites = by_site
            .iter()
            .filter(|(id, _)| !known.contains(id))
            .map(|(_, events)| events.len())
            .sum();

        let mut writer = Writer {
            tx,
            applied: &mut applied,
            locations: Vec::new(),
        };
        for site in &sites {
            let Some(site_events) = by_site.get_mut(&site.id) else {
                continue;
            };
            site_events.sort_by_key(|e| (e.checked_at, e.check_id));
            let policy = self.defaults.with(&site.overrides());
            let site_channels = site.channels(&channels);
            let mut state = states.remove(&site.id).unwrap_or_default();
            let before = state.clone();
            let in_window = |at: OffsetDateTime| {
                windows.iter().any(|w| {
                    w.website_id.is_none_or(|id| id == site.id)
                        && w.starts_at <= at
                        && at < w.ends_at
                })
            };
            for event in site_events.iter() {
                let check = Check::from(*event);
                for decision in state.observe(&check, &policy, in_window(check.at), &site_channels)
                {
                    writer
                        .decided(site, &state, &site_channels, &check, decision)
                        .await?;
                }
            }
            writer.site_done(site.id, &before, &state).await?;
        }
        writer.save_locations().await?;
        Ok(applied)
    }
}

impl Processor {
    /// Logs events dated in the future, at most once every [`FUTURE_LOG_EVERY`].
    fn log_future(&self, first: &CheckEvent, count: usize, now: OffsetDateTime) {
        let mut last = match self.future_logged.lock() {
            Ok(last) => last,
            Err(poisoned) => poisoned.into_inner(),
        };
        if last.is_some_and(|at| at.elapsed() < FUTURE_LOG_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        tracing::warn!(
            site = first.website_id,
            events = count,
            "left out {count} check events: {}",
            first.too_far_ahead_reason(now)
        );
    }
}

/// Writes the decisions of one call of [`Processor::apply`].
struct Writer<'a> {
    tx: &'a mut PgConnection,
    applied: &'a mut Applied,
    /// Location states to save, by site and location.
    locations: Vec<(i32, String, LocationState)>,
}

impl Writer<'_> {
    async fn decided(
        &mut self,
        site: &SiteRow,
        state: &SiteState,
        site_channels: &[String],
        check: &Check,
        decision: Decision,
    ) -> Result<()> {
        let site_ref = SiteRef {
            id: site.id,
            url: site.url.clone(),
        };
        match decision {
            Decision::LocationDown { .. } | Decision::LocationUp { .. } => {
                self.applied.location_changes += 1;
            }
            Decision::Spread { .. } => {}
            Decision::Opened { .. } => {
                let Some(open) = &state.open else {
                    return Ok(());
                };
                bounded(
                    "opening an incident",
                    sqlx::query(
                        "INSERT INTO alert_incidents
                             (id, website_id, opened_at, first_error, locations, channels)
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(open.id)
                    .bind(site.id)
                    .bind(open.opened_at)
                    .bind(&open.first_error)
                    .bind(&open.locations)
                    .bind(&open.channels)
                    .execute(&mut *self.tx),
                )
                .await?;
                self.applied.opened += 1;
                let notification = incident_notification(Kind::Down, site_ref, open, check.at);
                self.notify(
                    notification,
                    &open.channels,
                    &[&open.id.to_string(), "down"],
                )
                .await?;
            }
            Decision::Resolved { incident, at } => {
                bounded(
                    "resolving an incident",
                    sqlx::query(
                        "UPDATE alert_incidents
                         SET resolved_at = $2, locations = $3, reminders = $4, last_reminder_at = $5
                         WHERE id = $1",
                    )
                    .bind(incident.id)
                    .bind(at)
                    .bind(&incident.locations)
                    .bind(i32::try_from(incident.reminders).unwrap_or(i32::MAX))
                    .bind(incident.last_reminder_at)
                    .execute(&mut *self.tx),
                )
                .await?;
                self.applied.resolved += 1;
                let mut notification =
                    incident_notification(Kind::Resolved, site_ref, &incident, at);
                notification.resolved_at = Some(at);
                self.notify(
                    notification,
                    &incident.channels,
                    &[&incident.id.to_string(), "resolved"],
                )
                .await?;
            }
            Decision::Reminder { number, .. } => {
                let Some(open) = &state.open else {
                    return Ok(());
                };
                let mut notification =
                    incident_notification(Kind::Reminder, site_ref, open, check.at);
                notification.reminder = Some(number);
                let id = open.id.to_string();
                self.notify(
                    notification,
                    &open.channels,
                    &[&id, "reminder", &number.to_string()],
                )
                .await?;
            }
            Decision::CertExpiring { not_after } => {
                bounded(
                    "recording a certificate notice",
                    sqlx::query(
                        "INSERT INTO alert_cert_notices (website_id, not_after, noticed_at)
                         VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    )
                    .bind(site.id)
                    .bind(not_after)
                    .bind(check.at)
                    .execute(&mut *self.tx),
                )
                .await?;
                let notification = Notification {
                    id: Uuid::nil(),
                    kind: Kind::CertExpiry,
                    incident_id: None,
                    site: Some(site_ref),
                    at: check.at,
                    opened_at: None,
                    resolved_at: None,
                    locations: vec![check.location.clone()],
                    error: None,
                    reminder: None,
                    cert_not_after: Some(not_after),
                    text: String::new(),
                };
                let site_id = site.id.to_string();
                self.notify(
                    notification,
                    site_channels,
                    &["site", &site_id, "cert", &rfc3339(not_after)],
                )
                .await?;
            }
        }
        Ok(())
    }

    /// One outbox row per channel, each with its stable id (`parts` + the channel).
    ///
    /// `notification` names the site by its URL as stored; a row carries it masked
    /// (`sitemon_core::mask::mask_url`) unless its channel has `full_urls`. The error text is
    /// masked and bounded for every channel (`sitemon_core::mask::message`: an event may come
    /// from any producer).
    async fn notify(
        &mut self,
        mut notification: Notification,
        channels: &[String],
        parts: &[&str],
    ) -> Result<()> {
        notification.error = notification.error.as_deref().map(mask::message);
        let full = notification.clone().with_text();
        let mut masked = notification;
        if let Some(site) = &mut masked.site {
            site.url = mask::mask_url(&site.url);
        }
        let masked = masked.with_text();
        let full_urls: Vec<String> = if full.site.is_some() && !channels.is_empty() {
            bounded(
                "reading which channels want full URLs",
                sqlx::query_scalar(
                    "SELECT name FROM alert_channels WHERE name = ANY($1) AND full_urls",
                )
                .bind(channels)
                .fetch_all(&mut *self.tx),
            )
            .await?
        } else {
            Vec::new()
        };
        for channel in channels {
            let mut all: Vec<&str> = parts.to_vec();
            all.push(channel);
            let mut row = if full_urls.contains(channel) {
                full.clone()
            } else {
                masked.clone()
            };
            row.id = stable_id(&all);
            let payload = serde_json::to_value(&row).unwrap_or_default();
            let written = bounded(
                "adding to the outbox",
                sqlx::query(
                    "INSERT INTO alert_outbox (id, incident_id, website_id, channel, kind, payload)
                     SELECT $1, $2, $3, $4, $5, $6
                     WHERE EXISTS (SELECT 1 FROM alert_channels WHERE name = $4)
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(row.id)
                .bind(row.incident_id)
                .bind(row.site.as_ref().map(|s| s.id))
                .bind(channel)
                .bind(row.kind.as_str())
                .bind(payload)
                .execute(&mut *self.tx),
            )
            .await?;
            self.applied.notifications += usize::try_from(written.rows_affected()).unwrap_or(0);
        }
        if !channels.is_empty() {
            bounded(
                "waking the delivery loop",
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(OUTBOX_CHANNEL)
                    .execute(&mut *self.tx),
            )
            .await?;
        }
        Ok(())
    }

    /// Keeps the locations whose state changed for [`Writer::save_locations`], and writes the
    /// open incident's growth.
    async fn site_done(&mut self, site: i32, before: &SiteState, after: &SiteState) -> Result<()> {
        for (name, state) in &after.locations {
            if before.locations.get(name) != Some(state) {
                self.locations.push((site, name.clone(), state.clone()));
            }
        }
        if let Some(open) = &after.open
            && before.open.as_ref() != Some(open)
        {
            bounded(
                "updating an incident",
                sqlx::query(
                    "UPDATE alert_incidents SET locations = $2, reminders = $3, last_reminder_at = $4
                     WHERE id = $1",
                )
                .bind(open.id)
                .bind(&open.locations)
                .bind(i32::try_from(open.reminders).unwrap_or(i32::MAX))
                .bind(open.last_reminder_at)
                .execute(&mut *self.tx),
            )
            .await?;
        }
        Ok(())
    }
}

impl Writer<'_> {
    /// Saves every changed location state in one statement (a batch touches many sites).
    async fn save_locations(&mut self) -> Result<()> {
        if self.locations.is_empty() {
            return Ok(());
        }
        let n = self.locations.len();
        let (mut sites, mut names, mut down, mut streaks) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut errors, mut since, mut last_at, mut last_id) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (site, name, state) in self.locations.drain(..) {
            sites.push(site);
            names.push(name);
            down.push(state.down);
            streaks.push(i32::try_from(state.streak).unwrap_or(i32::MAX));
            errors.push(state.streak_error);
            since.push(state.down_since);
            last_at.push(state.last_checked_at);
            last_id.push(state.last_check_id);
        }
        bounded(
            "saving the alert state",
            sqlx::query(
                "INSERT INTO alert_location_state
                     (website_id, location, down, streak, streak_error, down_since,
                      last_checked_at, last_check_id)
                 SELECT * FROM UNNEST($1::integer[], $2::text[], $3::boolean[], $4::integer[],
                                      $5::text[], $6::timestamptz[], $7::timestamptz[],
                                      $8::uuid[])
                 ON CONFLICT (website_id, location) DO UPDATE SET
                     down = EXCLUDED.down, streak = EXCLUDED.streak,
                     streak_error = EXCLUDED.streak_error, down_since = EXCLUDED.down_since,
                     last_checked_at = EXCLUDED.last_checked_at,
                     last_check_id = EXCLUDED.last_check_id",
            )
            .bind(&sites)
            .bind(&names)
            .bind(&down)
            .bind(&streaks)
            .bind(&errors)
            .bind(&since)
            .bind(&last_at)
            .bind(&last_id)
            .execute(&mut *self.tx),
        )
        .await?;
        Ok(())
    }
}

fn incident_notification(
    kind: Kind,
    site: SiteRef,
    incident: &OpenIncident,
    at: OffsetDateTime,
) -> Notification {
    Notification {
        id: Uuid::nil(),
        kind,
        incident_id: Some(incident.id),
        site: Some(site),
        at,
        opened_at: Some(incident.opened_at),
        resolved_at: None,
        locations: incident.locations.clone(),
        error: incident.first_error.clone(),
        reminder: None,
        cert_not_after: None,
        text: String::new(),
    }
}
