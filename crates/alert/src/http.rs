//! One HTTP POST of a JSON body, for the webhook, Slack and PagerDuty channels, with a
//! bounded time and the answer read into an [`Outcome`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::outcome::Outcome;

/// How long one request may take, from connecting to the end of the answer.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an answer's body kept (in `alert_outbox.last_answer`).
const ANSWER_LIMIT: usize = 512;

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The client every channel shares: http and https (Mozilla's roots through webpki-roots),
/// HTTP/1.1, pooled connections.
fn client() -> &'static HttpsClient {
    static CLIENT: OnceLock<HttpsClient> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector)
    })
}

/// POSTs `body` (JSON) to `url` with `headers`, and reads the answer: 2xx delivered; 429,
/// 408 and 5xx (and no answer at all) retried, with the answer's `Retry-After` (capped by
/// [`retry_after`]; a 429 always carries one, zero when the receiver named none); any other
/// status rejected. Neither the URL nor the body appears in the outcome.
pub(crate) async fn post_json(
    url: &str,
    headers: &[(&'static str, String)],
    body: Vec<u8>,
) -> Outcome {
    let mut request = hyper::Request::post(url)
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, format!("sitemon/{}", sitemon_core::VERSION));
    for (name, value) in headers {
        let Ok(value) = HeaderValue::from_str(value) else {
            return Outcome::Rejected {
                answer: format!("the {name} header cannot hold its value"),
            };
        };
        request = request.header(HeaderName::from_static(name), value);
    }
    let request = match request.body(Full::new(Bytes::from(body))) {
        Ok(request) => request,
        Err(_) => {
            return Outcome::Rejected {
                answer: "the channel's URL is not a usable HTTP URL".to_owned(),
            };
        }
    };
    let exchange = async {
        let response = client().request(request).await?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, std::time::SystemTime::now()));
        let body = Limited::new(response.into_body(), 64 << 10).collect().await;
        let text = body
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        Ok::<_, hyper_util::client::legacy::Error>((status, retry_after, text))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Err(_) => Outcome::Retry {
            answer: format!("no answer within {REQUEST_TIMEOUT:?}"),
            retry_after: None,
        },
        Ok(Err(e)) => Outcome::Retry {
            answer: describe(&e),
            retry_after: None,
        },
        Ok(Ok((status, retry_after, text))) => {
            let answer = format!("HTTP {}{}", status.as_u16(), excerpt(&text));
            match status.as_u16() {
                200..=299 => Outcome::Delivered { answer },
                // A 429 is the receiver throttling the channel even without a
                // Retry-After: `Some(ZERO)` says so, and the back-off sets the wait.
                429 => Outcome::Retry {
                    answer,
                    retry_after: Some(retry_after.unwrap_or(Duration::ZERO)),
                },
                408 | 500..=599 => Outcome::Retry {
                    answer,
                    retry_after,
                },
                _ => Outcome::Rejected { answer },
            }
        }
    }
}

/// The longest `Retry-After` kept from an answer: 7 days. Longer values (up to
/// 18446744073709551615 s, or an HTTP-date in year 9999) are cut to it here, and the
/// delivery loop cuts what is left to the notification's give-up time; no sum of durations
/// taken from a receiver can overflow.
pub(crate) const RETRY_AFTER_CAP: Duration = Duration::from_secs(7 * 24 * 3600);

/// A `Retry-After` value: delay-seconds, or an HTTP-date (how long from `now` until then; a
/// date in the past is no wait), at most [`RETRY_AFTER_CAP`]. RFC 9110, section 10.2.3:
/// delay-seconds is digits only, so `-5`, `+5`, `1.5` and garbage are no value at all.
pub(crate) fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is still "a very long time".
        let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(seconds).min(RETRY_AFTER_CAP));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(RETRY_AFTER_CAP),
    )
}

/// The start of an answer's body, on one line.
pub(crate) fn excerpt(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        return String::new();
    }
    let cut: String = line.chars().take(ANSWER_LIMIT).collect();
    format!(": {cut}")
}

/// A client error without the URL (hyper-util's errors do not print it, but their sources
/// may name the host, which is no secret; the path and query, which may be, never appear).
fn describe(error: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error as _;
    let mut text = if error.is_connect() {
        "cannot connect".to_owned()
    } else {
        "the request failed".to_owned()
    };
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        // Sun, 06 Nov 1994 08:49:37 GMT is 784111777 s after the epoch.
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777 - 90);
        assert_eq!(retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(90))
        );
        let later = now + Duration::from_secs(600);
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT", later),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", SystemTime::now()), None);
        assert_eq!(retry_after("-5", SystemTime::now()), None);
    }

    #[test]
    fn retry_after_from_a_hostile_receiver_is_capped_or_ignored() {
        let now = SystemTime::now();
        for huge in [
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999999999999",
            "Fri, 31 Dec 9999 23:59:59 GMT",
        ] {
            assert_eq!(retry_after(huge, now), Some(RETRY_AFTER_CAP), "{huge}");
        }
        for garbage in [
            "-1",
            "-18446744073709551615",
            "+5",
            "1.5",
            "5 s",
            "",
            " ",
            "0x10",
            "Sun, 06 Nov 1994 08:49:37",
            "\u{0}",
            "9999-12-31T23:59:59Z",
        ] {
            assert_eq!(retry_after(garbage, now), None, "{garbage:?}");
        }
        assert_eq!(retry_after("0", now), Some(Duration::ZERO));
    }
}
