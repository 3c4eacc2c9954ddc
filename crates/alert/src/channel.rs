//! The channels notifications go to: a generic webhook, a Slack incoming webhook, the
//! PagerDuty Events API v2, and email over SMTP.
//!
//! [`ChannelSettings`] is what `alert_channels.settings` holds, validated before it is
//! stored; its secrets (URLs, the routing key, the SMTP URL with its password) are
//! [`Secret`]s, so that neither `Debug` nor an error prints them, and [`ChannelSettings::masked`]
//! is the only way they are shown. Each kind sends through [`Sender::send`].

use std::future::Future;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::{Deserialize, Serialize};
use sitemon_core::Secret;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::http::{self, REQUEST_TIMEOUT};
use crate::notification::{Kind, Notification, rfc3339};

/// PagerDuty's Events API v2 endpoint.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";
/// The header that carries a webhook notification's stable id.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// The header that carries a webhook's signature when the channel has a secret:
/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` (as Stripe and Slack sign), so
/// that a receiver can refuse an old request replayed ([`signature`]).
pub const SIGNATURE_HEADER: &str = "x-sitemon-signature";
/// The sender of notification emails when the channel names none.
pub const DEFAULT_FROM: &str = "sitemon <sitemon@localhost>";

/// A channel's settings, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelSettings {
    /// A generic webhook: the notification's JSON is POSTed to `url`.
    Webhook {
        /// Where to POST (may hold a token: a secret).
        url: Secret,
        /// Signs the body with HMAC-SHA256 when set.
        secret: Option<Secret>,
    },
    /// A Slack incoming webhook (its URL is the secret).
    Slack {
        /// The hook's URL.
        url: Secret,
    },
    /// PagerDuty Events API v2.
    PagerDuty {
        /// The integration's routing key.
        routing_key: Secret,
        /// The Events API URL; [`PAGERDUTY_EVENTS_URL`] unless overridden (tests, proxies).
        url: String,
    },
    /// Email over SMTP.
    Email {
        /// The recipient.
        to: String,
        /// `smtp://host:port` (plain, for a trusted local relay, no login),
        /// `smtp://…?tls=opportunistic` (STARTTLS when offered, no login),
        /// `smtp://…?tls=required` (STARTTLS) or `smtps://…` (implicit TLS); the last two
        /// only may carry `user:password@` (a secret).
        smtp: Secret,
        /// The sender, `Name <address>`.
        from: String,
    },
}

/// What `alert_channels.settings` holds as JSON.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Stored {
    Webhook {
        url: String,
        secret: Option<String>,
    },
    Slack {
        url: String,
    },
    Pagerduty {
        routing_key: String,
        url: String,
    },
    Email {
        to: String,
        smtp: String,
        from: String,
    },
}

impl Stored {
    fn into_settings(self) -> ChannelSettings {
        match self {
            Self::Webhook { url, secret } => ChannelSettings::Webhook {
                url: Secret::new(url),
                secret: secret.map(Secret::new),
            },
            Self::Slack { url } => ChannelSettings::Slack {
                url: Secret::new(url),
            },
            Self::Pagerduty { routing_key, url } => ChannelSettings::PagerDuty {
                routing_key: Secret::new(routing_key),
                url,
            },
            Self::Email { to, smtp, from } => ChannelSettings::Email {
                to,
                smtp: Secret::new(smtp),
                from,
            },
        }
    }
}

impl ChannelSettings {
    /// A webhook channel, validated.
    ///
    /// # Errors
    /// [`Error::InvalidChannel`] naming `name` and what is wrong (never the URL itself).
    pub fn webhook(name: &str, url: &str, secret: Option<&str>) -> Result<Self> {
        check_http_url(name, "--webhook", url)?;
        if secret.is_some_and(|s| s.trim().is_empty()) {
            return Err(invalid(name, "--secret is empty"));
        }
        Ok(Self::Webhook {
            url: Secret::new(url),
            secret: secret.map(Secret::new),
        })
    }

    /// A Slack channel, validated.
    ///
    /// # Errors
    /// [`Error::InvalidChannel`].
    pub fn slack(name: &str, url: &str) -> Result<Self> {
        check_http_url(name, "--slack", url)?;
        Ok(Self::Slack {
            url: Secret::new(url),
        })
    }

    /// A PagerDuty channel, validated; `url` overrides the Events API endpoint.
    ///
    /// # Errors
    /// [`Error::InvalidChannel`].
    pub fn pagerduty(name: &str, routing_key: &str, url: Option<&str>) -> Result<Self> {
        let key_ok = (1..=128).contains(&routing_key.len())
            && routing_key.chars().all(|c| c.is_ascii_alphanumeric());
        if !key_ok {
            return Err(invalid(
                name,
                "--pagerduty must be the integration's routing key: 1 to 128 letters and digits",
            ));
        }
        if let Some(url) = url {
            check_http_url(name, "--pagerduty-url", url)?;
        }
        Ok(Self::PagerDuty {
            routing_key: Secret::new(routing_key),
            url: url.unwrap_or(PAGERDUTY_EVENTS_URL).to_owned(),
        })
    }

    /// An email channel, validated: `to` an address, `smtp` an SMTP URL, `from` a mailbox.
    ///
    /// # Errors
    /// [`Error::InvalidChannel`].
    pub fn email(name: &str, to: &str, smtp: &str, from: Option<&str>) -> Result<Self> {
        if to.parse::<Mailbox>().is_err() {
            return Err(invalid(
                name,
                "--email must be an address such as ops@example.com",
            ));
        }
        let from = from.unwrap_or(DEFAULT_FROM);
        if from.parse::<Mailbox>().is_err() {
            return Err(invalid(
                name,
                "--from must be an address such as \"sitemon <alerts@example.com>\"",
            ));
        }
        let Ok(parsed) = url::Url::parse(smtp) else {
            return Err(invalid(
                name,
                "--smtp is not a URL such as smtps://user:password@smtp.example.com",
            ));
        };
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(invalid(name, "--smtp has no host"));
        }
        match (parsed.scheme(), smtp_tls(&parsed).as_deref()) {
            ("smtps", None) | ("smtp", Some("required" | "opportunistic") | None) => {}
            _ => {
                return Err(invalid(
                    name,
                    "--smtp must be smtps://… (implicit TLS), smtp://…?tls=required (STARTTLS) or smtp://… (plain, a local relay)",
                ));
            }
        }
        if smtp_login_in_clear(&parsed) {
            return Err(invalid(name, SMTP_LOGIN_IN_CLEAR));
        }
        if AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp).is_err() {
            return Err(invalid(name, "--smtp is not an SMTP URL lettre can use"));
        }
        Ok(Self::Email {
            to: to.to_owned(),
            smtp: Secret::new(smtp),
            from: from.to_owned(),
        })
    }

    /// The kind's name, as stored in `alert_channels.kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Webhook { .. } => "webhook",
            Self::Slack { .. } => "slack",
            Self::PagerDuty { .. } => "pagerduty",
            Self::Email { .. } => "email",
        }
    }

    /// The settings for people, secrets masked: a URL shows its scheme and host only, a key
    /// its last 4 characters.
    pub fn masked(&self) -> String {
        match self {
            Self::Webhook { url, secret } => format!(
                "{}{}",
                mask_url(url.expose()),
                if secret.is_some() { " (signed)" } else { "" }
            ),
            Self::Slack { url } => mask_url(url.expose()),
            Self::PagerDuty { routing_key, url } => {
                let key = routing_key.expose();
                let tail: String = key
                    .chars()
                    .skip(key.chars().count().saturating_sub(4))
                    .collect();
                let endpoint = if url == PAGERDUTY_EVENTS_URL {
                    String::new()
                } else {
                    format!(" via {}", mask_url(url))
                };
                format!("routing key …{tail}{endpoint}")
            }
            Self::Email { to, smtp, .. } => format!("{to} via {}", mask_url(smtp.expose())),
        }
    }

    /// The JSON stored in `alert_channels.settings` (secrets included).
    pub(crate) fn to_stored(&self) -> serde_json::Value {
        let stored = match self {
            Self::Webhook { url, secret } => Stored::Webhook {
                url: url.expose().to_owned(),
                secret: secret.as_ref().map(|s| s.expose().to_owned()),
            },
            Self::Slack { url } => Stored::Slack {
                url: url.expose().to_owned(),
            },
            Self::PagerDuty { routing_key, url } => Stored::Pagerduty {
                routing_key: routing_key.expose().to_owned(),
                url: url.clone(),
            },
            Self::Email { to, smtp, from } => Stored::Email {
                to: to.clone(),
                smtp: smtp.expose().to_owned(),
                from: from.clone(),
            },
        };
        serde_json::to_value(stored).unwrap_or_default()
    }

    /// Reads `alert_channels.settings`.
    pub(crate) fn from_stored(name: &str, value: serde_json::Value) -> Result<Self> {
        serde_json::from_value::<Stored>(value)
            .map(Stored::into_settings)
            .map_err(|_| invalid(name, "its stored settings are not readable"))
    }
}

/// Why an SMTP URL with a login is refused, at `channel add` and again at send time.
const SMTP_LOGIN_IN_CLEAR: &str = "--smtp would send its password in clear text (plain SMTP, or STARTTLS that the server or anyone on the way can skip): use smtps:// or smtp://…?tls=required";

/// The `tls` parameter of an SMTP URL, as lettre reads it (the first one).
fn smtp_tls(url: &url::Url) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.into_owned())
}

/// Whether an SMTP URL has a login (user or password) that could go over plain text: a
/// login goes only over implicit TLS (`smtps://`) or required STARTTLS (`?tls=required`).
/// `tls=opportunistic` falls back to plain text when the server (or a man in the middle)
/// offers no STARTTLS, and lettre then sends AUTH in clear.
fn smtp_login_in_clear(url: &url::Url) -> bool {
    let login = !url.username().is_empty() || url.password().is_some();
    let tls = smtp_tls(url);
    let encrypted =
        url.scheme() == "smtps" || (url.scheme() == "smtp" && tls.as_deref() == Some("required"));
    login && !encrypted
}

fn invalid(name: &str, reason: &str) -> Error {
    Error::InvalidChannel {
        name: name.chars().take(64).collect(),
        reason: reason.to_owned(),
    }
}

fn check_http_url(name: &str, flag: &str, url: &str) -> Result<()> {
    match url::Url::parse(url) {
        Ok(u)
            if matches!(u.scheme(), "http" | "https")
                && u.host_str().is_some_and(|h| !h.is_empty()) =>
        {
            if url.len() > 2048 {
                return Err(invalid(name, &format!("{flag} is longer than 2048 bytes")));
            }
            Ok(())
        }
        _ => Err(invalid(
            name,
            &format!("{flag} must be an absolute http:// or https:// URL"),
        )),
    }
}

/// `scheme://host[:port]/…`: what a URL may show of itself.
fn mask_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{}{port}/…", u.scheme(), u.host_str().unwrap_or(""))
        }
        Err(_) => "…".to_owned(),
    }
}

pub use crate::outcome::Outcome;

/// Sends one notification to one channel.
pub trait Sender {
    /// Sends `notification`, bounded in time, and says what the receiver made of it.
    fn send(&self, notification: &Notification) -> impl Future<Output = Outcome> + Send;
}

impl Sender for ChannelSettings {
    async fn send(&self, notification: &Notification) -> Outcome {
        match self {
            Self::Webhook { url, secret } => {
                let body = serde_json::to_vec(notification).unwrap_or_default();
                let mut headers = vec![(IDEMPOTENCY_HEADER, notification.id.to_string())];
                if let Some(secret) = secret {
                    let now = OffsetDateTime::now_utc().unix_timestamp();
                    headers.push((SIGNATURE_HEADER, signature(secret, now, &body)));
                }
                http::post_json(url.expose(), &headers, body).await
            }
            Self::Slack { url } => {
                let body = serde_json::json!({ "text": notification.text });
                http::post_json(url.expose(), &[], body.to_string().into_bytes()).await
            }
            Self::PagerDuty { routing_key, url } => {
                let body = pagerduty_event(routing_key.expose(), notification);
                http::post_json(url, &[], body.to_string().into_bytes()).await
            }
            Self::Email { to, smtp, from } => send_email(to, smtp, from, notification).await,
        }
    }
}

/// `t=<timestamp>,v1=<hex>`: the HMAC-SHA256, keyed by the channel's secret, of the
/// timestamp (Unix seconds, when the request is sent), a `.` and the body's exact bytes. A
/// receiver recomputes it, compares in constant time and refuses a timestamp too far from
/// its clock (the README shows how), so a captured request cannot be replayed later.
pub fn signature(secret: &Secret, timestamp: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.expose().as_bytes());
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    let tag = context.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

/// The Events API v2 event for a notification: the incident id is the `dedup_key`, so a
/// repeat is dropped by PagerDuty and the resolution closes the alert the trigger opened.
fn pagerduty_event(routing_key: &str, notification: &Notification) -> serde_json::Value {
    let dedup_key = match (notification.kind, notification.incident_id) {
        (_, Some(incident)) => incident.to_string(),
        (Kind::CertExpiry, None) => format!(
            "sitemon-cert-{}-{}",
            notification.site.as_ref().map_or(0, |s| s.id),
            notification
                .cert_not_after
                .map_or_else(String::new, rfc3339)
        ),
        _ => notification.id.to_string(),
    };
    let action = if notification.kind == Kind::Resolved {
        "resolve"
    } else {
        "trigger"
    };
    let severity = match notification.kind {
        Kind::Down | Kind::Reminder => "critical",
        Kind::CertExpiry => "warning",
        _ => "info",
    };
    serde_json::json!({
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": dedup_key,
        "payload": {
            "summary": notification.text,
            "source": notification.site.as_ref().map_or("sitemon", |s| s.url.as_str()),
            "severity": severity,
            "timestamp": rfc3339(notification.at),
            "component": "sitemon",
            "custom_details": notification,
        },
    })
}

async fn send_email(to: &str, smtp: &Secret, from: &str, notification: &Notification) -> Outcome {
    let (Ok(to), Ok(from)) = (to.parse::<Mailbox>(), from.parse::<Mailbox>()) else {
        return Outcome::Rejected {
            answer: "the channel's addresses are not valid".to_owned(),
        };
    };
    let body = serde_json::to_string_pretty(notification).unwrap_or_default();
    let message = Message::builder()
        .from(from)
        .to(to)
        .subject(notification.text.chars().take(200).collect::<String>())
        .message_id(Some(format!("<{}@sitemon>", notification.id)))
        .header(ContentType::TEXT_PLAIN)
        .body(format!("{}\n\n{body}\n", notification.text));
    let Ok(message) = message else {
        return Outcome::Rejected {
            answer: "the message could not be built".to_owned(),
        };
    };
    // A channel stored before logins needed TLS: refused here, before any connection, so
    // that AUTH never goes in clear (also for `sitemon channel test`).
    if url::Url::parse(smtp.expose()).is_ok_and(|u| smtp_login_in_clear(&u)) {
        return Outcome::Rejected {
            answer: format!("refused to send: {SMTP_LOGIN_IN_CLEAR}; add the channel again"),
        };
    }
    let Ok(builder) = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp.expose()) else {
        return Outcome::Rejected {
            answer: "the channel's SMTP URL is not usable".to_owned(),
        };
    };
    let mailer = builder.timeout(Some(REQUEST_TIMEOUT)).build();
    match tokio::time::timeout(REQUEST_TIMEOUT * 2, mailer.send(message)).await {
        Err(_) => Outcome::Retry {
            answer: format!("no answer within {:?}", REQUEST_TIMEOUT * 2),
            retry_after: None,
        },
        Ok(Ok(response)) => Outcome::Delivered {
            answer: format!(
                "SMTP {}{}",
                response.code(),
                http::excerpt(&response.message().collect::<Vec<_>>().join(" "))
            ),
        },
        // lettre's errors name the kind and the server's answer, never the URL or login.
        Ok(Err(e)) if e.is_permanent() => Outcome::Rejected {
            answer: format!("SMTP: {e}"),
        },
        Ok(Err(e)) => Outcome::Retry {
            answer: format!("SMTP: {e}"),
            retry_after: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "T000SECRET0TOKEN";

    #[test]
    fn debug_and_masked_never_show_a_secret() {
        let channels = [
            ChannelSettings::webhook(
                "a",
                &format!("https://hooks.example.com/{TOKEN}"),
                Some(TOKEN),
            )
            .expect("valid"),
            ChannelSettings::slack("b", &format!("https://hooks.slack.com/services/{TOKEN}"))
                .expect("valid"),
            ChannelSettings::pagerduty("c", TOKEN, None).expect("valid"),
            ChannelSettings::email(
                "d",
                "ops@example.com",
                &format!("smtps://me:{TOKEN}@smtp.example.com"),
                None,
            )
            .expect("valid"),
        ];
        for channel in &channels {
            let debug = format!("{channel:?}");
            let masked = channel.masked();
            assert!(!debug.contains("SECRET"), "{debug}");
            assert!(!masked.contains("SECRET"), "{masked}");
        }
        assert_eq!(channels[0].masked(), "https://hooks.example.com/… (signed)");
        assert_eq!(channels[2].masked(), "routing key …OKEN");
        assert_eq!(
            channels[3].masked(),
            "ops@example.com via smtps://smtp.example.com/…"
        );
    }

    #[test]
    fn bad_settings_are_refused_without_showing_them() {
        let cases = [
            ChannelSettings::webhook("a", &format!("ftp://x/{TOKEN}"), None),
            ChannelSettings::webhook("a", &format!("not a url {TOKEN}"), None),
            ChannelSettings::webhook("a", "https://x.example/", Some(" ")),
            ChannelSettings::slack("b", &format!("hooks.slack.com/{TOKEN}")),
            ChannelSettings::pagerduty("c", &format!("{TOKEN} with spaces"), None),
            ChannelSettings::pagerduty("c", "", None),
            ChannelSettings::email(
                "d",
                &format!("not-an-address{TOKEN}"),
                "smtps://smtp.example.com",
                None,
            ),
            ChannelSettings::email(
                "d",
                "ops@example.com",
                &format!("http://{TOKEN}.example.com"),
                None,
            ),
            ChannelSettings::email(
                "d",
                "ops@example.com",
                &format!("smtp://me:{TOKEN}@smtp.example.com"),
                None,
            ),
            ChannelSettings::email(
                "d",
                "ops@example.com",
                "smtp://smtp.example.com?tls=maybe",
                None,
            ),
        ];
        for case in cases {
            let error = case.expect_err("refused").to_string();
            assert!(!error.contains("SECRET"), "{error}");
            assert!(!error.contains('\n'), "{error}");
            assert!(error.starts_with("channel \""), "{error}");
        }
        // Without a login, plain and opportunistic SMTP stay (a local relay).
        for smtp in [
            "smtp://127.0.0.1:2525",
            "smtp://relay.example.com?tls=opportunistic",
            "smtp://me:pw@smtp.example.com:587?tls=required",
            "smtps://me:pw@smtp.example.com",
        ] {
            ChannelSettings::email("d", "ops@example.com", smtp, None).expect(smtp);
        }
    }

    #[test]
    fn a_login_is_refused_unless_tls_is_implicit_or_required() {
        for smtp in [
            format!("smtp://me:{TOKEN}@smtp.example.com?tls=opportunistic"),
            format!("smtp://me:{TOKEN}@smtp.example.com"),
            format!("smtp://me:{TOKEN}@127.0.0.1:2525"),
            format!("smtp://me:{TOKEN}@[::1]:2525?tls=opportunistic"),
            "smtp://me@smtp.example.com?tls=opportunistic".to_owned(),
            format!("smtp://me:{TOKEN}@smtp.example.com?tls=opportunistic&tls=required"),
        ] {
            let error = ChannelSettings::email("d", "ops@example.com", &smtp, None)
                .expect_err(&smtp)
                .to_string();
            assert!(error.contains("clear text"), "{error}");
            assert!(
                !error.contains("SECRET") && !error.contains('\n'),
                "{error}"
            );
        }
    }

    #[tokio::test]
    async fn a_stored_login_over_opportunistic_tls_is_refused_at_send_time_before_connecting() {
        // A channel stored before the rule: its server would be asked nothing at all (the
        // port is one the test holds open and never accepts on).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stored = serde_json::json!({
            "kind": "email",
            "to": "ops@example.com",
            "from": DEFAULT_FROM,
            "smtp": format!("smtp://me:{TOKEN}@127.0.0.1:{port}?tls=opportunistic"),
        });
        let channel = ChannelSettings::from_stored("d", stored).expect("readable");
        let notification: Notification = serde_json::from_value(serde_json::json!({
            "id": "0193f1c2-0000-7000-8000-000000000001", "kind": "test", "incident_id": null,
            "site": null, "at": "2026-11-30T12:00:20Z", "opened_at": null, "resolved_at": null,
            "locations": [], "error": null, "reminder": null, "cert_not_after": null,
            "text": "TEST: sitemon",
        }))
        .expect("a notification");
        let outcome = channel.send(&notification).await;
        let Outcome::Rejected { answer } = &outcome else {
            panic!("not refused: {outcome:?}");
        };
        assert!(answer.contains("clear text"), "{answer}");
        assert!(!answer.contains("SECRET"), "{answer}");
        listener.set_nonblocking(true).expect("nonblocking");
        assert!(listener.accept().is_err(), "no connection was made");
    }

    #[test]
    fn stored_settings_round_trip() {
        let channel = ChannelSettings::pagerduty("c", TOKEN, Some("http://127.0.0.1:1/v2/enqueue"))
            .expect("valid");
        let back = ChannelSettings::from_stored("c", channel.to_stored()).expect("readable");
        assert_eq!(back, channel);
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_timestamp_a_dot_and_the_body() {
        // Python: hmac.new(b"Jefe", b"1700000000.what do ya want for nothing?", "sha256").
        let secret = Secret::new("Jefe");
        assert_eq!(
            signature(&secret, 1_700_000_000, b"what do ya want for nothing?"),
            "t=1700000000,v1=1cdd0650c8be1cb0974b1788d458b1e781206cfef59b85faafc582d2e182c57e"
        );
    }
}
