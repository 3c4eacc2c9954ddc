//! What the CLI does with alerting: channels, maintenance windows, a site's alert settings,
//! and the incidents with the delivery state of their notifications. Every input is
//! validated before the statement that writes it; each write is one statement or one
//! transaction, so a refusal leaves nothing half-written.

use std::time::Duration;

use serde::Serialize;
use sitemon_core::db::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::channel::{ChannelSettings, Outcome, Sender};
use crate::error::{Error, Result, bounded};
use crate::notification::{Kind, Notification};

/// A channel name: 1 to 64 letters, digits, `_`, `.`, `-`, starting with a letter or digit.
///
/// # Errors
/// [`Error::InvalidChannel`].
pub fn check_channel_name(name: &str) -> Result<()> {
    if sitemon_core::site_alerts::is_channel_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidChannel {
            name: name.chars().take(64).collect(),
            reason: "a name is 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
                .to_owned(),
        })
    }
}

/// Stores a channel with the default options (site URLs masked in its notifications).
///
/// # Errors
/// [`Error::InvalidChannel`] for a bad name, [`Error::DuplicateChannel`] when the name is
/// taken, [`Error::Database`].
pub async fn add_channel(pool: &PgPool, name: &str, settings: &ChannelSettings) -> Result<()> {
    add_channel_with(pool, name, settings, ChannelOptions::default()).await
}

/// What a channel wants beyond its kind's settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelOptions {
    /// Its notifications carry the site's URL whole (`channel add --full-urls`), credentials
    /// and query values included; without it they carry it masked. Error texts are masked
    /// either way (the checker masks them before they leave it).
    pub full_urls: bool,
}

impl ChannelOptions {
    /// The defaults, with `full_urls` as given.
    #[must_use]
    pub fn full_urls(full_urls: bool) -> Self {
        Self { full_urls }
    }
}

/// Stores a channel with `options`, in one statement.
///
/// # Errors
/// As [`add_channel`].
pub async fn add_channel_with(
    pool: &PgPool,
    name: &str,
    settings: &ChannelSettings,
    options: ChannelOptions,
) -> Result<()> {
    check_channel_name(name)?;
    let inserted = bounded(
        "adding the channel",
        sqlx::query(
            "INSERT INTO alert_channels (name, kind, settings, full_urls) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(settings.kind())
        .bind(settings.to_stored())
        .bind(options.full_urls)
        .execute(pool),
    )
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(Error::DuplicateChannel {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// A stored channel.
#[derive(Debug, Clone)]
pub struct Channel {
    /// Its name.
    pub name: String,
    /// Its settings (secrets inside [`sitemon_core::Secret`]).
    pub settings: ChannelSettings,
    /// Its options.
    pub options: ChannelOptions,
}

/// Every channel, by name.
///
/// # Errors
/// [`Error::Database`].
pub async fn list_channels(pool: &PgPool) -> Result<Vec<Channel>> {
    let rows: Vec<(String, serde_json::Value, bool)> = bounded(
        "listing the channels",
        sqlx::query_as("SELECT name, settings, full_urls FROM alert_channels ORDER BY name")
            .fetch_all(pool),
    )
    .await?;
    rows.into_iter()
        .map(|(name, settings, full_urls)| {
            let settings = ChannelSettings::from_stored(&name, settings)?;
            Ok(Channel {
                name,
                settings,
                options: ChannelOptions { full_urls },
            })
        })
        .collect()
}

/// One channel.
///
/// # Errors
/// [`Error::UnknownChannel`], [`Error::Database`].
pub async fn channel(pool: &PgPool, name: &str) -> Result<Channel> {
    let row: Option<(serde_json::Value, bool)> = bounded(
        "reading the channel",
        sqlx::query_as("SELECT settings, full_urls FROM alert_channels WHERE name = $1")
            .bind(name)
            .fetch_optional(pool),
    )
    .await?;
    let (settings, full_urls) = row.ok_or_else(|| Error::UnknownChannel {
        name: name.to_owned(),
    })?;
    Ok(Channel {
        name: name.to_owned(),
        settings: ChannelSettings::from_stored(name, settings)?,
        options: ChannelOptions { full_urls },
    })
}

/// Removes a channel, and the notifications it had not delivered.
///
/// # Errors
/// [`Error::UnknownChannel`], [`Error::Database`].
pub async fn remove_channel(pool: &PgPool, name: &str) -> Result<()> {
    let removed = bounded(
        "removing the channel",
        sqlx::query("DELETE FROM alert_channels WHERE name = $1")
            .bind(name)
            .execute(pool),
    )
    .await?;
    if removed.rows_affected() == 0 {
        return Err(Error::UnknownChannel {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Sends one test notification to a channel now (not through the outbox) and returns what
/// the receiver answered.
///
/// # Errors
/// [`Error::UnknownChannel`], [`Error::Database`].
pub async fn test_channel(pool: &PgPool, name: &str) -> Result<Outcome> {
    let channel = channel(pool, name).await?;
    let notification = Notification {
        id: Uuid::now_v7(),
        kind: Kind::Test,
        incident_id: None,
        site: None,
        at: OffsetDateTime::now_utc(),
        opened_at: None,
        resolved_at: None,
        locations: Vec::new(),
        error: None,
        reminder: None,
        cert_not_after: None,
        text: String::new(),
    }
    .with_text();
    Ok(channel.settings.send(&notification).await)
}

/// A maintenance window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Maintenance {
    /// Its id.
    pub id: i32,
    /// The site it covers; `None` = every site.
    pub website_id: Option<i32>,
    /// From.
    #[serde(with = "time::serde::rfc3339")]
    pub starts_at: OffsetDateTime,
    /// Until (excluded).
    #[serde(with = "time::serde::rfc3339")]
    pub ends_at: OffsetDateTime,
}

/// Adds a maintenance window and returns its id.
///
/// # Errors
/// [`Error::InvalidSetting`] when `until` is not after `from`; [`Error::UnknownSite`];
/// [`Error::Database`].
pub async fn add_maintenance(
    pool: &PgPool,
    site: Option<i64>,
    from: OffsetDateTime,
    until: OffsetDateTime,
) -> Result<i32> {
    if until <= from {
        return Err(Error::InvalidSetting {
            setting: "--until",
            reason: "the window must end after it starts".to_owned(),
        });
    }
    let site = match site {
        None => None,
        Some(id) => Some(i32::try_from(id).map_err(|_| Error::UnknownSite { id })?),
    };
    let inserted: Option<i32> = bounded(
        "adding the maintenance window",
        sqlx::query_scalar(
            "INSERT INTO alert_maintenance (website_id, starts_at, ends_at)
             SELECT $1, $2, $3
             WHERE $1::integer IS NULL OR EXISTS (SELECT 1 FROM websites WHERE id = $1)
             RETURNING id",
        )
        .bind(site)
        .bind(from)
        .bind(until)
        .fetch_optional(pool),
    )
    .await?;
    inserted.ok_or_else(|| Error::UnknownSite {
        id: site.map_or(0, i64::from),
    })
}

/// Every maintenance window, by start.
///
/// # Errors
/// [`Error::Database`].
pub async fn list_maintenance(pool: &PgPool) -> Result<Vec<Maintenance>> {
    bounded(
        "listing the maintenance windows",
        sqlx::query_as(
            "SELECT id, website_id, starts_at, ends_at FROM alert_maintenance
             ORDER BY starts_at, id",
        )
        .fetch_all(pool),
    )
    .await
}

/// Removes a maintenance window.
///
/// # Errors
/// [`Error::UnknownMaintenance`], [`Error::Database`].
pub async fn remove_maintenance(pool: &PgPool, id: i64) -> Result<()> {
    let Ok(id32) = i32::try_from(id) else {
        return Err(Error::UnknownMaintenance { id });
    };
    let removed = bounded(
        "removing the maintenance window",
        sqlx::query("DELETE FROM alert_maintenance WHERE id = $1")
            .bind(id32)
            .execute(pool),
    )
    .await?;
    if removed.rows_affected() == 0 {
        return Err(Error::UnknownMaintenance { id });
    }
    Ok(())
}

pub use sitemon_core::incidents::{DeliveryView, IncidentView};

/// Incidents opened within `since` of now (all when `None`), or only the open ones, newest
/// first, with their notifications (core's [`sitemon_core::incidents::incidents`]).
///
/// # Errors
/// core's `Database` and `Timeout`.
pub async fn incidents(
    pool: &PgPool,
    open_only: bool,
    since: Option<Duration>,
) -> Result<Vec<IncidentView>> {
    let filter = sitemon_core::incidents::IncidentFilter {
        open_only,
        since,
        ..Default::default()
    };
    Ok(sitemon_core::incidents::incidents(pool, &filter).await?)
}
