//! A notification: what one outbox row tells one channel, and its stable id.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Kind {
    /// An incident opened.
    Down,
    /// It resolved.
    Resolved,
    /// It is still open.
    Reminder,
    /// The site's certificate expires soon.
    CertExpiry,
    /// `sitemon channel test`.
    Test,
}

impl Kind {
    /// The name in `alert_outbox.kind` and in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Down => "down",
            Self::Resolved => "resolved",
            Self::Reminder => "reminder",
            Self::CertExpiry => "cert_expiry",
            Self::Test => "test",
        }
    }
}

/// The site a notification is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRef {
    /// Its id in `websites`.
    pub id: i32,
    /// Its URL.
    pub url: String,
}

/// One notification, as stored in `alert_outbox.payload` and sent as the generic webhook's
/// JSON body (documented in the README; the field names are a contract).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Stable: a receiver drops a second notification with the same id.
    pub id: Uuid,
    /// What it is about.
    pub kind: Kind,
    /// The incident (absent for a certificate notice and a test).
    pub incident_id: Option<Uuid>,
    /// The site (absent for a test).
    pub site: Option<SiteRef>,
    /// When what it reports happened (the check that decided it).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// When the incident opened.
    #[serde(with = "time::serde::rfc3339::option")]
    pub opened_at: Option<OffsetDateTime>,
    /// When it resolved.
    #[serde(with = "time::serde::rfc3339::option")]
    pub resolved_at: Option<OffsetDateTime>,
    /// The locations that were down.
    pub locations: Vec<String>,
    /// The first failing check's error.
    pub error: Option<String>,
    /// For a reminder: which one, from 1.
    pub reminder: Option<u32>,
    /// For a certificate notice: when it expires.
    #[serde(with = "time::serde::rfc3339::option")]
    pub cert_not_after: Option<OffsetDateTime>,
    /// One line for people (what Slack-compatible receivers display).
    pub text: String,
}

impl Notification {
    /// Fills in [`Notification::text`] from the other fields.
    #[must_use]
    pub fn with_text(mut self) -> Self {
        let site = self.site.as_ref().map_or_else(
            || "sitemon".to_owned(),
            |s| format!("{} (site {})", s.url, s.id),
        );
        let locations = self.locations.join(", ");
        self.text = match self.kind {
            Kind::Down => format!(
                "DOWN: {site} from {locations}: {}",
                self.error.as_deref().unwrap_or("failing")
            ),
            Kind::Resolved => {
                let lasted = match (self.opened_at, self.resolved_at) {
                    (Some(opened), Some(resolved)) => format!(
                        " after {}",
                        humanize(std::time::Duration::try_from(resolved - opened).ok())
                    ),
                    _ => String::new(),
                };
                format!("RESOLVED: {site} is up again{lasted}")
            }
            Kind::Reminder => format!(
                "STILL DOWN: {site} from {locations} since {}",
                self.opened_at.map_or_else(String::new, rfc3339)
            ),
            Kind::CertExpiry => format!(
                "CERTIFICATE: {site}'s TLS certificate expires {}",
                self.cert_not_after.map_or_else(String::new, rfc3339)
            ),
            Kind::Test => "TEST: a test notification from sitemon".to_owned(),
        };
        self
    }
}

fn humanize(duration: Option<std::time::Duration>) -> String {
    let secs = duration.map_or(0, |d| d.as_secs());
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        _ => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
    }
}

/// A time as RFC 3339.
pub(crate) fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A stable id made from the parts that identify a notification (the incident or site, the
/// kind, a number, the channel): the same parts always make the same id, so a notification
/// decided again (a replay) is the same row and the same Idempotency-Key.
pub fn stable_id(parts: &[&str]) -> Uuid {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part.as_bytes());
    }
    let digest = context.finish();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_ids_depend_on_every_part_and_only_on_them() {
        let a = stable_id(&["incident", "down", "ops"]);
        assert_eq!(a, stable_id(&["incident", "down", "ops"]));
        assert_ne!(a, stable_id(&["incident", "down", "pager"]));
        assert_ne!(a, stable_id(&["incident", "resolved", "ops"]));
        // Parts are length-prefixed: moving a boundary makes another id.
        assert_ne!(stable_id(&["ab", "c"]), stable_id(&["a", "bc"]));
        assert_eq!(a.get_version_num(), 8);
    }
}
