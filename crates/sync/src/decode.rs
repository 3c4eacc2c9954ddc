//! One Kafka message → one `website_status` row, or one reject with its reason.
//!
//! Decoding is pure and runs in the partition readers, so that the JSON work is spread over
//! the cores while the writer waits on PostgreSQL. Whether the site still exists is decided
//! later, in the writer's transaction (see `writer.rs`).

use sitemon_consume::Message;
use sitemon_core::event::EventDecodeError;
use sitemon_core::mask::{self, event_url, mask_url};
use sitemon_core::{CheckEvent, ErrorKind};
use time::OffsetDateTime;
use uuid::Uuid;

/// The reason stored for a tombstone (a message without a value).
pub(crate) const TOMBSTONE: &str = "empty value (tombstone)";
/// The reason stored for a message whose value has no bytes.
pub(crate) const EMPTY: &str = "empty value";

/// What a message becomes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decoded {
    Row(StatusRow),
    Reject(Reject),
}

/// A `website_status` row, and the message's key in case the row must become a reject.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StatusRow {
    pub(crate) partition: i32,
    pub(crate) incarnation: i32,
    pub(crate) offset: i64,
    pub(crate) fingerprint: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) website_id: i32,
    pub(crate) checked_at: OffsetDateTime,
    /// The value exactly as published: stored as `request_info` (jsonb).
    pub(crate) request_info: String,
    pub(crate) check_id: Uuid,
    pub(crate) is_up: bool,
    pub(crate) status_code: Option<i16>,
    pub(crate) response_time_ms: Option<f64>,
    pub(crate) error_kind: Option<&'static str>,
    pub(crate) location: String,
    /// Up but slower than the site's threshold (schema 2; a version 1 event is not).
    pub(crate) degraded: bool,
}

impl StatusRow {
    /// The reject this row becomes (its site is gone, its key is taken).
    pub(crate) fn into_reject(self, kind: RejectKind, reason: String) -> Reject {
        Reject {
            partition: self.partition,
            incarnation: self.incarnation,
            offset: self.offset,
            fingerprint: self.fingerprint,
            key: self.key,
            payload: Some(self.request_info.into_bytes()),
            kind,
            reason,
        }
    }
}

/// A `website_status_rejects` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reject {
    pub(crate) partition: i32,
    pub(crate) incarnation: i32,
    pub(crate) offset: i64,
    pub(crate) fingerprint: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Option<Vec<u8>>,
    /// The reason's class: the label of the rejects metric.
    pub(crate) kind: RejectKind,
    pub(crate) reason: String,
}

/// The classes of rejects: a small closed set, so that the rejects metric has a bounded
/// number of series (the full reason, with its details, is in the reject's row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RejectKind {
    /// A message without a value.
    Tombstone,
    /// A value of no bytes.
    Empty,
    /// A value that is not JSON.
    NotJson,
    /// JSON that is not a check event.
    WrongShape,
    /// A check event of a schema version this sync does not know.
    UnknownSchema,
    /// An event of a site that is not in `websites`.
    UnknownSite,
    /// An event with a value PostgreSQL cannot store (status code, `\u0000`, not UTF-8).
    InvalidValue,
    /// An event whose key (topic, incarnation, partition, offset, site) already holds a row
    /// of another check: never absorbed as a duplicate (see `writer.rs`).
    KeyCollision,
    /// An event dated more than `MAX_FUTURE_SKEW` ahead of the sync's clock: stored, it
    /// would be the site's latest check until real time caught up.
    Future,
}

impl RejectKind {
    /// Every kind, in the order of [`RejectKind::index`].
    pub(crate) const ALL: [Self; 9] = [
        Self::Tombstone,
        Self::Empty,
        Self::NotJson,
        Self::WrongShape,
        Self::UnknownSchema,
        Self::UnknownSite,
        Self::InvalidValue,
        Self::KeyCollision,
        Self::Future,
    ];

    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Tombstone => "tombstone",
            Self::Empty => "empty",
            Self::NotJson => "not_json",
            Self::WrongShape => "wrong_shape",
            Self::UnknownSchema => "unknown_schema",
            Self::UnknownSite => "unknown_site",
            Self::InvalidValue => "invalid_value",
            Self::KeyCollision => "key_collision",
            Self::Future => "future",
        }
    }

    /// A dense index, for counters kept in an array.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The reason stored when an event's site is not in `websites`.
pub(crate) fn unknown_site_reason(website_id: i32) -> String {
    format!(
        "website_id {website_id} is not in websites (the site was removed while its events \
         were in flight, or a foreign producer)"
    )
}

/// The reason stored when an event's key already holds a row of another check.
pub(crate) fn key_collision_reason(row: &StatusRow) -> String {
    format!(
        "offset {} of partition {} (topic incarnation {}) already holds another check of \
         site {}; this one (check_id {}) is kept here instead of being taken for a duplicate",
        row.offset, row.partition, row.incarnation, row.website_id, row.check_id
    )
}

/// Decodes one message.
pub(crate) fn decode(message: Message) -> Decoded {
    let Message {
        partition,
        incarnation,
        offset,
        fingerprint,
        key,
        value,
    } = message;
    let reject = |key, payload, (kind, reason): (RejectKind, String)| {
        Decoded::Reject(Reject {
            partition,
            incarnation,
            offset,
            fingerprint,
            key,
            payload,
            kind,
            reason,
        })
    };
    let invalid = |reason: String| (RejectKind::InvalidValue, reason);
    let value = match value {
        None => return reject(key, None, (RejectKind::Tombstone, TOMBSTONE.to_owned())),
        Some(value) if value.is_empty() => {
            return reject(key, Some(value), (RejectKind::Empty, EMPTY.to_owned()));
        }
        Some(value) => value,
    };
    let event = match CheckEvent::from_json(&value) {
        Ok(event) => event,
        Err(e) => {
            let reason = decode_error_reason(&e, &value);
            return reject(key, Some(value), reason);
        }
    };
    let now = OffsetDateTime::now_utc();
    if event.is_too_far_ahead(now) {
        let reason = event.too_far_ahead_reason(now);
        return reject(key, Some(value), (RejectKind::Future, reason));
    }
    if let Some(problem) = jsonb_problem(&value) {
        return reject(key, Some(value), invalid(problem.to_owned()));
    }
    let Ok(status_code) = event.status_code.map(i16::try_from).transpose() else {
        let reason = format!(
            "status_code {} is not an HTTP status (100 to 999)",
            event.status_code.unwrap_or_default()
        );
        return reject(key, Some(value), invalid(reason));
    };
    let request_info = match String::from_utf8(value) {
        Ok(text) => text,
        Err(e) => return reject(key, Some(e.into_bytes()), invalid("not UTF-8".to_owned())),
    };
    let request_info = without_secrets(&event, request_info);
    Decoded::Row(StatusRow {
        partition,
        incarnation,
        offset,
        fingerprint,
        key,
        website_id: event.website_id,
        checked_at: event.checked_at,
        request_info,
        check_id: event.check_id,
        is_up: event.up,
        status_code,
        response_time_ms: event.response_time_ms,
        error_kind: event.error.map(|e| ErrorKind::as_str(e.kind)),
        location: event.location,
        degraded: event.degraded,
    })
}

/// The event as stored: `request_info` with the URLs masked and the error message masked and
/// bounded (`sitemon_core::mask`), since events may come from any producer. An event that
/// needs nothing (every event of sitemon's checker) keeps its bytes exactly as published.
fn without_secrets(event: &CheckEvent, request_info: String) -> String {
    let url = mask_url(&event.url);
    let final_url = event.final_url.as_deref().map(event_url);
    let error = event.error.as_ref().map(|e| mask::message(&e.message));
    let clean = url == event.url
        && final_url == event.final_url
        && error.as_deref() == event.error.as_ref().map(|e| e.message.as_str());
    if clean {
        return request_info;
    }
    let Ok(serde_json::Value::Object(mut json)) = serde_json::from_str(&request_info) else {
        // It decoded as an event a moment ago, so it is an object; should it not be, store
        // the event as read rather than the text as published.
        return String::from_utf8(event.to_json()).unwrap_or_default();
    };
    json.insert("url".to_owned(), url.into());
    if let Some(final_url) = final_url {
        json.insert("final_url".to_owned(), final_url.into());
    }
    if let (Some(message), Some(serde_json::Value::Object(error))) = (error, json.get_mut("error"))
    {
        error.insert("message".to_owned(), message.into());
    }
    serde_json::Value::Object(json).to_string()
}

fn decode_error_reason(error: &EventDecodeError, value: &[u8]) -> (RejectKind, String) {
    match error {
        // serde's message alone cannot tell "not JSON" from "JSON of another shape" (a
        // struct also reads from an array, and stops with a syntax error at its end), so
        // a failed value is parsed once more, as any JSON at all.
        EventDecodeError::Json(e) => match serde_json::from_slice::<serde::de::IgnoredAny>(value) {
            Ok(_) => (RejectKind::WrongShape, format!("wrong shape: {e}")),
            Err(not_json) => (RejectKind::NotJson, format!("not JSON: {not_json}")),
        },
        EventDecodeError::UnknownSchema(version) => (
            RejectKind::UnknownSchema,
            format!("unknown schema version {version}"),
        ),
        other => (
            RejectKind::WrongShape,
            format!("not a check event: {other}"),
        ),
    }
}

/// Valid JSON that PostgreSQL's `jsonb` still refuses: the escape `\u0000`, and a `\u`
/// surrogate escape without its pair. serde accepts both inside fields it ignores; one such
/// message must become a reject, not a batch that fails forever.
fn jsonb_problem(json: &[u8]) -> Option<&'static str> {
    const PROBLEM: &str = "the value holds a \\u0000 or unpaired surrogate escape, which \
                           PostgreSQL jsonb cannot store";
    let hex = |at: usize| -> Option<u32> {
        let digits = json.get(at..at + 4)?;
        u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    let mut i = 0;
    // Set after a high surrogate: the next thing must be a low surrogate escape.
    let mut want_low = false;
    while i < json.len() {
        if json[i] != b'\\' {
            if want_low {
                return Some(PROBLEM);
            }
            i += 1;
            continue;
        }
        match json.get(i + 1) {
            Some(b'u') => {
                let code = hex(i + 2)?;
                match code {
                    0 => return Some(PROBLEM),
                    0xD800..=0xDBFF if !want_low => want_low = true,
                    0xDC00..=0xDFFF if want_low => want_low = false,
                    0xD800..=0xDFFF => return Some(PROBLEM),
                    _ if want_low => return Some(PROBLEM),
                    _ => {}
                }
                i += 6;
            }
            _ => {
                if want_low {
                    return Some(PROBLEM);
                }
                i += 2;
            }
        }
    }
    want_low.then_some(PROBLEM)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sitemon_core::ProbeTimings;
    use sitemon_core::event::EVENT_SCHEMA_VERSION;

    fn event() -> CheckEvent {
        CheckEvent {
            schema: EVENT_SCHEMA_VERSION,
            check_id: Uuid::now_v7(),
            website_id: 7,
            url: "http://127.0.0.1:1/".into(),
            location: "here".into(),
            checked_at: time::macros::datetime!(2026-11-28 10:00 UTC),
            up: true,
            status_code: Some(200),
            response_time_ms: Some(3.5),
            regex: None,
            regex_matched: None,
            error: None,
            timings_ms: ProbeTimings {
                total: 3.5,
                ..ProbeTimings::default()
            },
            redirects: 0,
            final_url: None,
            tls_cert_not_after: None,
            method: sitemon_core::Method::Head,
            expect_status: None,
            regex_must_not_match: None,
            regex_must_not_match_found: None,
            degraded_after_ms: Some(2),
            degraded: true,
            failed_assertion: None,
        }
    }

    fn message(value: Option<Vec<u8>>) -> Message {
        Message {
            partition: 2,
            incarnation: 0,
            offset: 40,
            fingerprint: 0,
            key: Some(b"7".to_vec()),
            value,
        }
    }

    fn reason(value: Option<Vec<u8>>) -> String {
        match decode(message(value)) {
            Decoded::Reject(reject) => reject.reason,
            Decoded::Row(row) => panic!("expected a reject, got {row:?}"),
        }
    }

    #[test]
    fn an_event_becomes_a_row_with_its_bytes() {
        let event = event();
        let Decoded::Row(row) = decode(message(Some(event.to_json()))) else {
            panic!("expected a row");
        };
        assert_eq!(row.request_info.as_bytes(), event.to_json());
        assert_eq!((row.partition, row.offset, row.website_id), (2, 40, 7));
        assert_eq!(row.check_id, event.check_id);
        assert_eq!(row.status_code, Some(200));
        assert_eq!(row.error_kind, None);
        assert!(row.degraded, "schema 2 carries degraded into its column");
    }

    /// A foreign producer's event is stored without its passwords and with its message
    /// bounded; the row is kept, not dropped.
    #[test]
    fn a_foreign_event_is_stored_masked_and_bounded() {
        let mut event = event();
        event.url = "https://u:secret@h.example/?token=tk0123".into();
        event.final_url = Some("https://v:secret@other.example/x?t=tk0123".into());
        event.error = Some(sitemon_core::CheckError {
            kind: ErrorKind::Http,
            message: format!(
                "redirects to \"https://w:secret@third.example/{}\"",
                "x".repeat(300_000)
            ),
        });
        let mut published = serde_json::to_value(&event).expect("json");
        published["extra"] = json!("kept");
        let bytes = serde_json::to_vec(&published).expect("json");
        let Decoded::Row(row) = decode(message(Some(bytes))) else {
            panic!("expected a row");
        };
        assert!(!row.request_info.contains("secret"), "a password is stored");
        assert!(!row.request_info.contains("tk0123"), "a token is stored");
        let stored: serde_json::Value = serde_json::from_str(&row.request_info).expect("json");
        assert_eq!(stored["url"], "https://***@h.example/?token=***");
        assert_eq!(stored["final_url"], "https://***@other.example/x?t=***");
        assert_eq!(stored["extra"], "kept");
        let text = stored["error"]["message"].as_str().expect("a message");
        assert!(
            text.len() <= mask::MAX_MESSAGE_BYTES + 40,
            "{} bytes",
            text.len()
        );
        assert!(text.ends_with(" bytes]"), "{}", &text[1000..]);
    }

    /// Events that checkers before schema 2 wrote, still in the topic, are stored as before;
    /// versions after 2 are rejects.
    #[test]
    fn version_one_is_stored_and_unknown_versions_are_rejected() {
        let mut value = serde_json::to_value(event()).expect("json");
        for field in [
            "method",
            "expect_status",
            "regex_must_not_match",
            "regex_must_not_match_found",
            "degraded_after_ms",
            "degraded",
            "failed_assertion",
        ] {
            value.as_object_mut().expect("object").remove(field);
        }
        value["schema"] = json!(1);
        let v1 = value.to_string().into_bytes();
        let Decoded::Row(row) = decode(message(Some(v1.clone()))) else {
            panic!("a version 1 event is stored");
        };
        assert!(!row.degraded);
        assert_eq!(row.request_info.as_bytes(), v1, "stored as published");
        value["schema"] = json!(3);
        assert_eq!(
            reason(Some(value.to_string().into_bytes())),
            "unknown schema version 3"
        );
        value["schema"] = json!(2);
        assert_eq!(kind(Some(value.to_string().into_bytes())), "wrong_shape");
    }

    fn kind(value: Option<Vec<u8>>) -> &'static str {
        match decode(message(value)) {
            Decoded::Reject(reject) => reject.kind.label(),
            Decoded::Row(row) => panic!("expected a reject, got {row:?}"),
        }
    }

    #[test]
    fn each_poison_kind_has_its_label() {
        assert_eq!(kind(None), "tombstone");
        assert_eq!(kind(Some(Vec::new())), "empty");
        assert_eq!(kind(Some(b"{not json".to_vec())), "not_json");
        assert_eq!(kind(Some(b"[1,2]".to_vec())), "wrong_shape");
        let mut value = serde_json::to_value(event()).expect("json");
        value["schema"] = json!(99);
        assert_eq!(kind(Some(value.to_string().into_bytes())), "unknown_schema");
        let mut value = serde_json::to_value(event()).expect("json");
        value["status_code"] = json!(40000);
        assert_eq!(kind(Some(value.to_string().into_bytes())), "invalid_value");
        let mut future = event();
        future.checked_at = OffsetDateTime::now_utc() + time::Duration::HOUR;
        assert_eq!(kind(Some(future.to_json())), "future");
        assert!(reason(Some(future.to_json())).starts_with("dated in the future: "));
        let Decoded::Row(row) = decode(message(Some(event().to_json()))) else {
            panic!("expected a row");
        };
        let (place, payload) = (
            (row.partition, row.incarnation, row.offset),
            row.request_info.clone(),
        );
        let reject = row.into_reject(RejectKind::UnknownSite, "gone".into());
        assert_eq!((reject.partition, reject.incarnation, reject.offset), place);
        assert_eq!(
            reject.payload,
            Some(payload.into_bytes()),
            "the exact bytes are kept"
        );
        assert_eq!(reject.kind.label(), "unknown_site");
        for (i, kind) in RejectKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }

    #[test]
    fn each_poison_kind_has_its_reason() {
        assert_eq!(reason(None), TOMBSTONE);
        assert_eq!(reason(Some(Vec::new())), EMPTY);
        assert!(reason(Some(b"{not json".to_vec())).starts_with("not JSON"));
        let shape = reason(Some(b"[1,2]".to_vec()));
        assert!(shape.starts_with("wrong shape"), "{shape}");
        let mut value = serde_json::to_value(event()).expect("json");
        value["website_id"] = json!("seven");
        assert!(reason(Some(value.to_string().into_bytes())).starts_with("wrong shape"));
        value["website_id"] = json!(7);
        value["schema"] = json!(99);
        assert_eq!(
            reason(Some(value.to_string().into_bytes())),
            "unknown schema version 99"
        );
        value["schema"] = json!(1);
        value["status_code"] = json!(40000);
        assert!(reason(Some(value.to_string().into_bytes())).starts_with("status_code 40000"));
    }

    #[test]
    fn escapes_jsonb_refuses_are_rejects() {
        let mut value = serde_json::to_value(event()).expect("json");
        value["extra"] = json!("a\u{0}b");
        assert!(reason(Some(value.to_string().into_bytes())).contains("jsonb"));
        let text = event().to_json();
        let text = String::from_utf8(text).expect("utf-8");
        let lone = text.replacen("\"here\"", "\"\\ud800x\"", 1);
        assert!(matches!(
            decode(message(Some(lone.into_bytes()))),
            Decoded::Reject(_)
        ));
        let hidden = text.replacen("{", "{\"extra\":\"\\udc00\",", 1);
        assert!(matches!(
            decode(message(Some(hidden.into_bytes()))),
            Decoded::Reject(_)
        ));
    }

    #[test]
    fn the_jsonb_scan_accepts_what_jsonb_accepts() {
        assert_eq!(
            jsonb_problem(br#"{"a":"\ud83d\ude00 \\u0000 \u00e9"}"#),
            None
        );
        assert!(jsonb_problem(br#"{"a":"\u0000"}"#).is_some());
        assert!(jsonb_problem(br#"{"a":"\ud83d"}"#).is_some());
        assert!(jsonb_problem(br#"{"a":"\ude00"}"#).is_some());
    }
}
