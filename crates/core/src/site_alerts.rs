//! A site's own alert settings: the overrides of the alert service's defaults that
//! `add-site`, `update-site` and a sites file's `alerts:` map set, kept in columns of
//! `websites` (NULL = the service's default) and read by the alert processor.
//!
//! They live here, beside the site's other settings, so that every way of registering a site
//! (the CLI's flags, `sitemon apply`, `export`) shares one type and one validation; the alert
//! service (`sitemon-alert`) only reads them.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// How long looking the channels up may take.
const CHANNELS_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest reminder period.
pub const MAX_REMINDER_EVERY: Duration = Duration::from_secs(366 * 86_400);

/// A site's alert settings; each `None` is the alert service's default (its flags of the
/// same names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteAlerts {
    /// Consecutive failed checks that take a location down: 1 to 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    /// Consecutive successful checks that bring a location back up: 1 to 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<u32>,
    /// Locations that must be down for an incident to open: 1 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_locations: Option<u32>,
    /// How often an open incident is notified again, at most 366 days; zero = never. In a
    /// sites file a duration such as `30m` or `1h`, or `0`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_period",
        deserialize_with = "deserialize_period"
    )]
    pub reminder_every: Option<Duration>,
    /// Notify when the TLS certificate expires within this many days: 0 (never) to 3650.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expiry_days: Option<u32>,
    /// The channels this site notifies (names of `sitemon channel add`); `None` = every
    /// channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
}

impl SiteAlerts {
    /// No setting of its own: every one is the service's default.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Checks every value's range and the channel names' shape (whether the channels exist
    /// is checked where the site is written, [`check_channels_exist`]).
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] naming the setting (`alerts.failure_threshold`, ...).
    pub fn validate(&self) -> Result<()> {
        let range = |key: &'static str, value: Option<u32>, low: u32, high: u32| match value {
            Some(v) if !(low..=high).contains(&v) => Err(Error::InvalidSetting {
                key,
                value: v.to_string(),
                reason: format!("must be a whole number from {low} to {high}"),
            }),
            _ => Ok(()),
        };
        range("alerts.failure_threshold", self.failure_threshold, 1, 1000)?;
        range("alerts.success_threshold", self.success_threshold, 1, 1000)?;
        range("alerts.min_locations", self.min_locations, 1, 100)?;
        range("alerts.cert_expiry_days", self.cert_expiry_days, 0, 3650)?;
        if let Some(period) = self.reminder_every
            && period > MAX_REMINDER_EVERY
        {
            return Err(Error::InvalidSetting {
                key: "alerts.reminder_every",
                value: humantime::format_duration(period).to_string(),
                reason: "at most 366 days (0 turns reminders off)".into(),
            });
        }
        for name in self.channels.iter().flatten() {
            check_channel_name(name)?;
        }
        Ok(())
    }
}

/// Whether `name` can name a channel: 1 to 64 letters, digits, `_`, `.` or `-`, starting
/// with a letter or digit.
pub fn is_channel_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// [`is_channel_name`], as an error.
///
/// # Errors
/// [`Error::InvalidSetting`] (`alerts.channels`).
fn check_channel_name(name: &str) -> Result<()> {
    if is_channel_name(name) {
        return Ok(());
    }
    let shown: String = name.chars().take(64).collect();
    Err(Error::InvalidSetting {
        key: "alerts.channels",
        value: format!("{shown:?}"),
        reason: "a channel name is 1 to 64 letters, digits, '_', '.' or '-', starting with a \
                 letter or digit"
            .into(),
    })
}

/// Fails unless every channel of `alerts` exists (`alert_channels`), locking them against a
/// concurrent `channel remove` until the caller's transaction ends.
///
/// # Errors
/// [`Error::InvalidSetting`] (`alerts.channels`) naming the first unknown channel;
/// [`Error::Database`].
pub(crate) async fn check_channels_exist(
    conn: &mut sqlx::PgConnection,
    alerts: &SiteAlerts,
) -> Result<()> {
    let Some(channels) = &alerts.channels else {
        return Ok(());
    };
    if channels.is_empty() {
        return Ok(());
    }
    let known: Vec<String> = crate::statement::bounded(
        "looking up the site's channels",
        CHANNELS_TIMEOUT,
        sqlx::query_scalar("SELECT name FROM alert_channels WHERE name = ANY($1) FOR KEY SHARE")
            .bind(channels)
            .fetch_all(&mut *conn),
    )
    .await?;
    match channels.iter().find(|c| !known.contains(c)) {
        Some(missing) => Err(Error::InvalidSetting {
            key: "alerts.channels",
            value: format!("{missing:?}"),
            reason: "no channel has this name (add it with `sitemon channel add`)".into(),
        }),
        None => Ok(()),
    }
}

fn serialize_period<S: Serializer>(period: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match period {
        Some(d) if d.is_zero() => s.serialize_str("0"),
        Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
        None => s.serialize_none(),
    }
}

fn deserialize_period<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Period {
        Seconds(u64),
        Text(String),
    }
    let period = match Option::<Period>::deserialize(d)? {
        None => return Ok(None),
        Some(Period::Seconds(seconds)) => Duration::from_secs(seconds),
        Some(Period::Text(text)) if text.trim() == "0" => Duration::ZERO,
        Some(Period::Text(text)) => humantime::parse_duration(text.trim()).map_err(|_| {
            serde::de::Error::custom(format!(
                "{text:?} is not a period: use 0 (never), 30m, 1h or 1d"
            ))
        })?,
    };
    Ok(Some(period))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_names_are_checked() {
        let ok = SiteAlerts {
            failure_threshold: Some(3),
            success_threshold: Some(1000),
            min_locations: Some(2),
            reminder_every: Some(Duration::ZERO),
            cert_expiry_days: Some(0),
            channels: Some(vec!["ops".into(), "on-call.eu".into()]),
        };
        assert!(ok.validate().is_ok());
        for (bad, key) in [
            (
                SiteAlerts {
                    failure_threshold: Some(0),
                    ..SiteAlerts::default()
                },
                "alerts.failure_threshold",
            ),
            (
                SiteAlerts {
                    min_locations: Some(101),
                    ..SiteAlerts::default()
                },
                "alerts.min_locations",
            ),
            (
                SiteAlerts {
                    reminder_every: Some(MAX_REMINDER_EVERY + Duration::from_secs(1)),
                    ..SiteAlerts::default()
                },
                "alerts.reminder_every",
            ),
            (
                SiteAlerts {
                    channels: Some(vec!["two words".into()]),
                    ..SiteAlerts::default()
                },
                "alerts.channels",
            ),
        ] {
            let error = bad.validate().expect_err("invalid");
            assert!(error.to_string().contains(key), "{key}: {error}");
        }
    }

    #[test]
    fn a_period_reads_and_writes_as_text() {
        let alerts: SiteAlerts =
            serde_json::from_str(r#"{"reminder_every": "1h 30m"}"#).expect("parses");
        assert_eq!(alerts.reminder_every, Some(Duration::from_secs(5400)));
        assert_eq!(
            serde_json::to_string(&alerts).expect("writes"),
            r#"{"reminder_every":"1h 30m"}"#
        );
        let off: SiteAlerts = serde_json::from_str(r#"{"reminder_every": "0"}"#).expect("0");
        assert_eq!(off.reminder_every, Some(Duration::ZERO));
        assert_eq!(
            serde_json::to_string(&off).expect("writes"),
            r#"{"reminder_every":"0"}"#
        );
        let error = serde_json::from_str::<SiteAlerts>(r#"{"reminder_every": "soon"}"#)
            .expect_err("not a period");
        assert!(error.to_string().contains("not a period"), "{error}");
    }
}
