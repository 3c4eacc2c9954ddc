//! The check event: one per check, JSON on the wire, keyed by the site's id.
//!
//! The field names are part of sitemon's contract with everything that reads the topic
//! (the sync, `kcat`, a user's own consumers); the tests below pin them.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::site::Method;
use uuid::Uuid;

/// The `schema` value of the events this version writes. Version 2 added `method`,
/// `expect_status`, `regex_must_not_match`, `regex_must_not_match_found`,
/// `degraded_after_ms`, `degraded` and `failed_assertion` (see `docs/event-schema.md`).
pub const EVENT_SCHEMA_VERSION: u32 = 2;

/// The versions [`CheckEvent::from_json`] reads: a version 1 event reads as a version 2 one
/// with the new fields at their defaults (GET, any 2xx, not degraded).
pub const READABLE_SCHEMA_VERSIONS: [u32; 2] = [1, 2];

/// How far an event's `checked_at` may be ahead of a consumer's clock (checker and consumer
/// clocks differ a little). An event further ahead ([`CheckEvent::is_too_far_ahead`]) would
/// pin a site's latest check and its alert state until real time caught up: the sync keeps
/// it as a reject, the alert service leaves it out.
pub const MAX_FUTURE_SKEW: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// What happened when one site was checked once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckEvent {
    /// The event format's version; a reader rejects versions it does not know.
    pub schema: u32,
    /// Made by the checker (UUID v7, so it sorts by time); a produce that Kafka retried
    /// under a new offset carries the same id, which lets the sync store it once.
    pub check_id: Uuid,
    /// The site's id in `websites`.
    pub website_id: i32,
    /// The URL that was checked (as registered, before redirects).
    pub url: String,
    /// The checker's `--location`, so several regions can check the same site.
    pub location: String,
    /// When the check started, UTC.
    #[serde(with = "time::serde::rfc3339")]
    pub checked_at: OffsetDateTime,
    /// A final 2xx response arrived and, if the site has a regex, it matched.
    pub up: bool,
    /// The final response's status, if one arrived.
    pub status_code: Option<u16>,
    /// Total time of the check in milliseconds, if a final response arrived.
    pub response_time_ms: Option<f64>,
    /// The regex the body was searched with, if the site has one.
    pub regex: Option<String>,
    /// Whether the regex matched, if it was searched.
    pub regex_matched: Option<bool>,
    /// Why the check failed to get a response, if it did.
    pub error: Option<CheckError>,
    /// How long each phase took.
    pub timings_ms: ProbeTimings,
    /// How many redirects were followed.
    pub redirects: u32,
    /// The URL of the final response, if one arrived.
    pub final_url: Option<String>,
    /// The expiry of the server's leaf certificate, for https.
    #[serde(with = "time::serde::rfc3339::option")]
    pub tls_cert_not_after: Option<OffsetDateTime>,
    // Version 2. Absent from version 1 events, which read as the defaults.
    /// The request's method.
    #[serde(default)]
    pub method: Method,
    /// The statuses that count as up, as the site has them (`200-299,301`); `None` = any 2xx.
    #[serde(default)]
    pub expect_status: Option<String>,
    /// The regex the body must not match, if the site has one.
    #[serde(default)]
    pub regex_must_not_match: Option<String>,
    /// Whether that regex was found in the body, if it was searched.
    #[serde(default)]
    pub regex_must_not_match_found: Option<bool>,
    /// The site's threshold for degraded, ms.
    #[serde(default)]
    pub degraded_after_ms: Option<i64>,
    /// Up, but slower than `degraded_after_ms`: counted as up, reported as degraded.
    #[serde(default)]
    pub degraded: bool,
    /// Which assertion made an answered check down; `None` when it is up or got no answer
    /// (then `error` says why).
    #[serde(default)]
    pub failed_assertion: Option<Assertion>,
}

/// The assertions a response must pass to be up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Assertion {
    /// The status is not one of the expected (`expect_status`, or any 2xx).
    Status,
    /// The body does not match `regex`.
    Regex,
    /// The body matches `regex_must_not_match`.
    RegexMustNotMatch,
}

/// How long each phase of a check took, in milliseconds; `None` for a phase that did not
/// happen (no TLS for http, nothing after a failed connect).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeTimings {
    /// Name resolution.
    pub dns: Option<f64>,
    /// TCP connect.
    pub connect: Option<f64>,
    /// TLS handshake.
    pub tls: Option<f64>,
    /// From sending the request to the first byte of the response.
    pub ttfb: Option<f64>,
    /// The whole check, failed or not.
    pub total: f64,
}

/// Why a check did not succeed, with a closed set of kinds for reports and alerts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// For people: what happened.
    pub message: String,
}

/// The kinds of check failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The registered URL cannot be used (a row inserted by SQL).
    InvalidUrl,
    /// The host name did not resolve.
    Dns,
    /// No address accepted a TCP connection.
    Connect,
    /// The TLS handshake failed or the certificate is invalid.
    Tls,
    /// The check took longer than its timeout.
    Timeout,
    /// The server broke the HTTP protocol.
    Http,
    /// More redirects than allowed.
    TooManyRedirects,
    /// The body broke off while being read.
    Body,
    /// The registered regex does not compile (a row inserted by SQL).
    InvalidRegex,
    /// Another setting of the row cannot be used: a header, an expected status (a row
    /// written by SQL).
    InvalidSettings,
}

impl ErrorKind {
    /// Every kind, in declaration order: for whatever lists them (the metrics' `error_kind`
    /// label, reports, tests).
    pub const ALL: [Self; 10] = [
        Self::InvalidUrl,
        Self::Dns,
        Self::Connect,
        Self::Tls,
        Self::Timeout,
        Self::Http,
        Self::TooManyRedirects,
        Self::Body,
        Self::InvalidRegex,
        Self::InvalidSettings,
    ];

    /// The name on the wire and in `website_status.error_kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidUrl => "invalid_url",
            Self::Dns => "dns",
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Timeout => "timeout",
            Self::Http => "http",
            Self::TooManyRedirects => "too_many_redirects",
            Self::Body => "body",
            Self::InvalidRegex => "invalid_regex",
            Self::InvalidSettings => "invalid_settings",
        }
    }
}

impl CheckEvent {
    /// Whether `checked_at` is more than [`MAX_FUTURE_SKEW`] ahead of `now` (the consumer's
    /// clock): such an event is never taken as the site's latest check. The sync and the
    /// alert service both decide with this function, so they agree.
    pub fn is_too_far_ahead(&self, now: OffsetDateTime) -> bool {
        // `now` near the end of time: nothing is ahead of it.
        time::Duration::try_from(MAX_FUTURE_SKEW)
            .ok()
            .and_then(|skew| now.checked_add(skew))
            .is_some_and(|limit| self.checked_at > limit)
    }

    /// Why an event [`is_too_far_ahead`](Self::is_too_far_ahead) of `now` is refused, for
    /// a reject's row or a log line.
    pub fn too_far_ahead_reason(&self, now: OffsetDateTime) -> String {
        let ahead = (self.checked_at - now).whole_seconds();
        format!(
            "dated in the future: checked_at {} is {ahead} s ahead of this consumer's clock; \
             more than {} s is refused (check the clock of location {:?})",
            self.checked_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            MAX_FUTURE_SKEW.as_secs(),
            self.location
        )
    }

    /// The Kafka key: the site id in decimal, so all of a site's events share a partition.
    pub fn kafka_key(&self) -> Vec<u8> {
        self.website_id.to_string().into_bytes()
    }

    /// The Kafka value: the event as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising this struct cannot fail: every field is a plain value or string.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads an event from a Kafka value.
    ///
    /// # Errors
    /// The JSON error for a value that is not an event of a known schema version.
    pub fn from_json(value: &[u8]) -> Result<Self, EventDecodeError> {
        /// The version, and whether the fields a version 2 event must have are there.
        #[derive(Deserialize)]
        struct Version {
            schema: u32,
            method: Option<serde::de::IgnoredAny>,
            degraded: Option<serde::de::IgnoredAny>,
        }
        let version: Version = serde_json::from_slice(value).map_err(EventDecodeError::Json)?;
        if !READABLE_SCHEMA_VERSIONS.contains(&version.schema) {
            return Err(EventDecodeError::UnknownSchema(version.schema));
        }
        if version.schema >= 2 {
            for (field, present) in [
                ("method", version.method.is_some()),
                ("degraded", version.degraded.is_some()),
            ] {
                if !present {
                    return Err(EventDecodeError::MissingField {
                        schema: version.schema,
                        field,
                    });
                }
            }
        }
        serde_json::from_slice(value).map_err(EventDecodeError::Json)
    }
}

/// Why a Kafka value is not a [`CheckEvent`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventDecodeError {
    /// Not JSON, or JSON of the wrong shape or types.
    #[error("not a check event: {0}")]
    Json(#[source] serde_json::Error),
    /// A `schema` version this reader does not know.
    #[error("unknown event schema version {0}")]
    UnknownSchema(u32),
    /// A field the event's version must have is missing.
    #[error("not a check event: a schema {schema} event needs the field {field}")]
    MissingField {
        /// The event's version.
        schema: u32,
        /// The missing field.
        field: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn every_error_kind_is_listed_once() {
        // A new kind fails to compile here until it is added to `ErrorKind::ALL` too.
        let position = |kind: ErrorKind| match kind {
            ErrorKind::InvalidUrl => 0,
            ErrorKind::Dns => 1,
            ErrorKind::Connect => 2,
            ErrorKind::Tls => 3,
            ErrorKind::Timeout => 4,
            ErrorKind::Http => 5,
            ErrorKind::TooManyRedirects => 6,
            ErrorKind::Body => 7,
            ErrorKind::InvalidRegex => 8,
            ErrorKind::InvalidSettings => 9,
        };
        for (i, kind) in ErrorKind::ALL.into_iter().enumerate() {
            assert_eq!(position(kind), i, "{kind:?}");
        }
    }

    fn sample() -> CheckEvent {
        CheckEvent {
            schema: EVENT_SCHEMA_VERSION,
            check_id: Uuid::now_v7(),
            website_id: 42,
            url: "https://example.com/".into(),
            location: "eu-north".into(),
            checked_at: time::macros::datetime!(2026-11-28 13:14:15.123456 UTC),
            up: false,
            status_code: Some(200),
            response_time_ms: Some(12.5),
            regex: Some("ok".into()),
            regex_matched: Some(false),
            error: None,
            timings_ms: ProbeTimings {
                dns: Some(0.5),
                connect: Some(1.0),
                tls: Some(4.0),
                ttfb: Some(6.0),
                total: 12.5,
            },
            redirects: 1,
            final_url: Some("https://example.com/home".into()),
            tls_cert_not_after: Some(time::macros::datetime!(2027-01-01 0:00 UTC)),
            method: Method::Post,
            expect_status: Some("200-299,301".into()),
            regex_must_not_match: Some("maintenance".into()),
            regex_must_not_match_found: Some(false),
            degraded_after_ms: Some(800),
            degraded: false,
            failed_assertion: Some(Assertion::Regex),
        }
    }

    #[test]
    fn only_events_beyond_the_skew_are_too_far_ahead() {
        let event = sample();
        let at = event.checked_at;
        let skew = time::Duration::try_from(MAX_FUTURE_SKEW).expect("small");
        assert!(!event.is_too_far_ahead(at));
        assert!(!event.is_too_far_ahead(at - skew));
        assert!(event.is_too_far_ahead(at - skew - time::Duration::SECOND));
        assert!(!event.is_too_far_ahead(at + time::Duration::days(365)));
        assert!(!event.is_too_far_ahead(OffsetDateTime::new_utc(
            time::Date::MAX,
            time::Time::MIDNIGHT
        )));
        let reason = event.too_far_ahead_reason(at - time::Duration::HOUR);
        assert_eq!(
            reason,
            "dated in the future: checked_at 2026-11-28T13:14:15.123456Z is 3600 s ahead of \
             this consumer's clock; more than 300 s is refused (check the clock of location \
             \"eu-north\")"
        );
    }

    #[test]
    fn round_trips() {
        let event = sample();
        assert_eq!(
            CheckEvent::from_json(&event.to_json()).expect("decodes"),
            event
        );
    }

    #[test]
    fn has_exactly_the_documented_fields() {
        let value: Value = serde_json::from_slice(&sample().to_json()).expect("json");
        let mut fields: Vec<_> = value.as_object().expect("object").keys().cloned().collect();
        fields.sort();
        let mut expected = vec![
            "schema",
            "check_id",
            "website_id",
            "url",
            "location",
            "checked_at",
            "up",
            "status_code",
            "response_time_ms",
            "regex",
            "regex_matched",
            "error",
            "timings_ms",
            "redirects",
            "final_url",
            "tls_cert_not_after",
            "method",
            "expect_status",
            "regex_must_not_match",
            "regex_must_not_match_found",
            "degraded_after_ms",
            "degraded",
            "failed_assertion",
        ];
        expected.sort();
        assert_eq!(fields, expected);
        let timings: Vec<_> = value["timings_ms"]
            .as_object()
            .expect("object")
            .keys()
            .cloned()
            .collect();
        assert_eq!(timings.len(), 5);
        for phase in ["dns", "connect", "tls", "ttfb", "total"] {
            assert!(value["timings_ms"].get(phase).is_some(), "{phase}");
        }
        assert_eq!(value["checked_at"], "2026-11-28T13:14:15.123456Z");
        assert_eq!(value["schema"], 2);
        assert_eq!(value["method"], "POST");
        assert_eq!(value["failed_assertion"], "regex");
    }

    /// A version 1 event (as checkers before version 2 wrote them, still in the topic)
    /// reads with the new fields at their defaults; a version 2 event without them does not.
    #[test]
    fn reads_version_one_events() {
        let mut value: Value = serde_json::from_slice(&sample().to_json()).expect("json");
        let object = value.as_object_mut().expect("object");
        for field in [
            "method",
            "expect_status",
            "regex_must_not_match",
            "regex_must_not_match_found",
            "degraded_after_ms",
            "degraded",
            "failed_assertion",
        ] {
            object.remove(field);
        }
        object.insert("schema".into(), json!(1));
        let old = CheckEvent::from_json(value.to_string().as_bytes()).expect("version 1 reads");
        assert_eq!(old.schema, 1);
        assert_eq!(old.method, Method::Get);
        assert!(!old.degraded);
        assert_eq!(old.failed_assertion, None);
        assert_eq!(old.expect_status, None);

        value["schema"] = json!(2);
        assert!(matches!(
            CheckEvent::from_json(value.to_string().as_bytes()),
            Err(EventDecodeError::MissingField {
                schema: 2,
                field: "method"
            })
        ));
    }

    #[test]
    fn failures_carry_kind_and_nulls() {
        let mut event = sample();
        event.status_code = None;
        event.response_time_ms = None;
        event.final_url = None;
        event.error = Some(CheckError {
            kind: ErrorKind::TooManyRedirects,
            message: "more than 5 redirects".into(),
        });
        let value: Value = serde_json::from_slice(&event.to_json()).expect("json");
        assert_eq!(
            value["error"],
            json!({"kind": "too_many_redirects", "message": "more than 5 redirects"})
        );
        assert_eq!(value["status_code"], Value::Null);
        assert_eq!(value["final_url"], Value::Null);
    }

    #[test]
    fn error_kind_names_match_serde() {
        for kind in ErrorKind::ALL {
            assert_eq!(serde_json::to_value(kind).expect("json"), kind.as_str());
        }
        let names: std::collections::HashSet<_> =
            ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), ErrorKind::ALL.len(), "each kind once");
    }

    #[test]
    fn key_is_the_decimal_site_id() {
        assert_eq!(sample().kafka_key(), b"42");
    }

    #[test]
    fn rejects_unknown_schema_and_wrong_shapes() {
        let mut value: Value = serde_json::from_slice(&sample().to_json()).expect("json");
        for unknown in [0, 3, 99] {
            value["schema"] = json!(unknown);
            assert!(matches!(
                CheckEvent::from_json(value.to_string().as_bytes()),
                Err(EventDecodeError::UnknownSchema(v)) if v == unknown
            ));
        }
        value["schema"] = json!(2);
        value["website_id"] = json!("forty-two");
        assert!(matches!(
            CheckEvent::from_json(value.to_string().as_bytes()),
            Err(EventDecodeError::Json(_))
        ));
        assert!(CheckEvent::from_json(b"not json").is_err());
        assert!(CheckEvent::from_json(b"").is_err());
    }
}
