//! A monitored site, and the validation of what a user may register.

use std::sync::Arc;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, excerpt, one_line};

/// The longest URL the `websites` table holds.
pub const MAX_URL_LEN: usize = 2048;
/// The longest allowed check interval: one day.
pub const MAX_INTERVAL_SECS: i64 = 86_400;
/// The interval a site gets when none is given, as in the original prototype.
pub const DEFAULT_INTERVAL_SECS: i32 = 5;
/// Upper bound on a compiled regex, so one site cannot make every check slow or huge.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A row of the `websites` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Site {
    /// The database id; also the Kafka key of the site's events.
    pub id: i32,
    /// The URL a GET is sent to.
    pub url: String,
    /// Seconds between the starts of two checks.
    pub check_interval: i32,
    /// A regex the body must match for the site to count as up; `None` = no regex.
    pub up_regex: Option<String>,
}

/// A site that passed validation and may be inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSite {
    url: String,
    check_interval: i32,
    up_regex: Option<String>,
}

impl NewSite {
    /// Validates a site as a user gave it.
    ///
    /// An empty regex means "no regex" (the original prototype stored `''` for that).
    ///
    /// # Errors
    /// [`Error::InvalidUrl`], [`Error::InvalidInterval`] or [`Error::InvalidRegex`], naming the
    /// input and the problem.
    pub fn new(url: &str, check_interval: i64, up_regex: Option<&str>) -> Result<Self> {
        validate_url(url)?;
        let check_interval = validate_interval(check_interval)?;
        let up_regex = up_regex.filter(|pattern| !pattern.is_empty());
        if let Some(pattern) = up_regex {
            compile_up_regex(pattern)?;
        }
        Ok(Self {
            url: url.to_owned(),
            check_interval,
            up_regex: up_regex.map(str::to_owned),
        })
    }

    /// The validated URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The validated interval, in seconds.
    pub fn check_interval(&self) -> i32 {
        self.check_interval
    }

    /// The validated regex, if any.
    pub fn up_regex(&self) -> Option<&str> {
        self.up_regex.as_deref()
    }
}

/// Checks that `url` is an absolute http(s) URL with a host that fits the table.
///
/// # Errors
/// [`Error::InvalidUrl`] saying what is wrong.
pub fn validate_url(url: &str) -> Result<http::Uri> {
    let invalid = |reason: &str| Error::InvalidUrl {
        url: excerpt(url),
        reason: reason.to_owned(),
    };
    if url.len() > MAX_URL_LEN {
        return Err(invalid(&format!(
            "it is {} bytes long; at most {MAX_URL_LEN} are allowed",
            url.len()
        )));
    }
    if url.chars().any(char::is_whitespace) {
        return Err(invalid("it contains white space"));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(&format!("it does not parse ({e})")))?;
    match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(invalid(&format!(
                "scheme {other:?} is not supported; use http or https"
            )));
        }
        None => {
            return Err(invalid(
                "it is not absolute; start it with http:// or https://",
            ));
        }
    }
    match uri.host() {
        Some(host) if !host.is_empty() => Ok(uri),
        _ => Err(invalid("it has no host")),
    }
}

/// Checks that an interval is from 1 to 86400 seconds.
///
/// # Errors
/// [`Error::InvalidInterval`].
pub fn validate_interval(seconds: i64) -> Result<i32> {
    if (1..=MAX_INTERVAL_SECS).contains(&seconds) {
        // The range check above makes this conversion lossless.
        Ok(seconds as i32)
    } else {
        Err(Error::InvalidInterval { value: seconds })
    }
}

/// Compiles a site's regex with the size limit every check uses.
///
/// # Errors
/// [`Error::InvalidRegex`] with the compiler's message on one line.
pub fn compile_up_regex(pattern: &str) -> Result<Arc<Regex>> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map(Arc::new)
        .map_err(|e| Error::InvalidRegex {
            pattern: excerpt(pattern),
            reason: one_line(&e.to_string()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_http_and_https_with_a_host() {
        for url in [
            "http://example.com",
            "https://example.com/path?q=1",
            "HTTPS://EXAMPLE.COM:8443/",
            "http://127.0.0.1:8080/health",
            "http://[::1]:80/",
        ] {
            assert!(validate_url(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn rejects_what_cannot_be_checked() {
        let cases = [
            ("example.com", "not absolute"),
            ("/health", "not absolute"),
            ("ftp://example.com/", "scheme \"ftp\""),
            ("http://exa mple.com", "white space"),
            ("http:///path", "does not parse"),
            ("", "does not parse"),
        ];
        for (url, expected) in cases {
            let message = validate_url(url).expect_err(url).to_string();
            assert!(message.contains(expected), "{url}: {message}");
        }
    }

    #[test]
    fn rejects_urls_longer_than_the_column() {
        let url = format!("http://example.com/{}", "a".repeat(MAX_URL_LEN));
        let message = validate_url(&url).expect_err("too long").to_string();
        assert!(message.contains("at most 2048"), "{message}");
        assert!(
            message.len() < 400,
            "the message quotes a cut URL: {message}"
        );
    }

    #[test]
    fn interval_must_be_one_second_to_one_day() {
        assert_eq!(validate_interval(1).ok(), Some(1));
        assert_eq!(validate_interval(86_400).ok(), Some(86_400));
        for bad in [0, -5, 86_401, i64::MAX] {
            assert!(matches!(
                validate_interval(bad),
                Err(Error::InvalidInterval { value }) if value == bad
            ));
        }
    }

    #[test]
    fn regex_errors_are_one_line() {
        let message = compile_up_regex("(unclosed").expect_err("bad").to_string();
        assert!(
            message.starts_with("invalid regex \"(unclosed\""),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn regex_size_is_limited() {
        let huge = "\\w{1000}".repeat(50);
        assert!(compile_up_regex(&huge).is_err());
    }

    /// `[a-z]{n}`: a compiled size that grows a little with each `n`.
    fn repeated(n: usize) -> String {
        format!("[a-z]{{{n}}}")
    }

    /// The largest `n` whose [`repeated`] pattern compiles within `limit` bytes, by a regex
    /// builder of the test's own.
    fn largest_within(limit: usize) -> usize {
        let fits = |n: usize| {
            RegexBuilder::new(&repeated(n))
                .size_limit(limit)
                .build()
                .is_ok()
        };
        let (mut fitting, mut too_big) = (1, 2);
        while fits(too_big) {
            fitting = too_big;
            too_big *= 2;
        }
        while too_big - fitting > 1 {
            let middle = fitting + (too_big - fitting) / 2;
            if fits(middle) {
                fitting = middle;
            } else {
                too_big = middle;
            }
        }
        fitting
    }

    /// The limit is sitemon's 1 MiB, not the regex crate's larger default: a pattern just
    /// under 1 MiB compiled is accepted, one just over is refused although the regex crate
    /// alone would take it.
    #[test]
    fn regex_size_limit_is_one_mebibyte() {
        assert_eq!(REGEX_SIZE_LIMIT, 1 << 20);
        let n = largest_within(1 << 20);
        let under = repeated(n);
        let over = repeated(n + 1);
        assert!(compile_up_regex(&under).is_ok(), "{under} is refused");
        let message = compile_up_regex(&over)
            .expect_err("just over 1 MiB compiled")
            .to_string();
        assert!(message.starts_with("invalid regex"), "{message}");
        assert!(
            Regex::new(&over).is_ok(),
            "{over} is refused by the regex crate's own limit too: the test proves nothing"
        );
    }

    #[test]
    fn empty_regex_means_none() {
        let site = NewSite::new("http://example.com", 5, Some("")).expect("valid");
        assert_eq!(site.up_regex(), None);
    }
}
