//! A monitored site, and the validation of what a user may register.

use std::collections::BTreeMap;
use std::sync::Arc;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, excerpt, one_line};
use crate::site_alerts::SiteAlerts;

/// The longest URL the `websites` table holds.
pub const MAX_URL_LEN: usize = 2048;
/// The longest allowed check interval: one day.
pub const MAX_INTERVAL_SECS: i64 = 86_400;
/// The interval a site gets when none is given, as in the original prototype.
pub const DEFAULT_INTERVAL_SECS: i32 = 5;
/// Upper bound on a compiled regex, so one site cannot make every check slow or huge.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The longest site name.
pub const MAX_NAME_LEN: usize = 200;
/// The longest request body a check may send.
pub const MAX_BODY_LEN: usize = 64 << 10;
/// The longest timeout a site may ask for: the checker's own `--timeout` limit.
pub const MAX_TIMEOUT_MS: i64 = 3_600_000;
/// Request headers a site may not set: the checker writes them itself.
pub const RESERVED_HEADERS: [&str; 4] =
    ["host", "content-length", "transfer-encoding", "connection"];

/// A row of the `websites` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// The database id; also the Kafka key of the site's events.
    pub id: i32,
    /// Everything else the row holds.
    pub settings: SiteSettings,
}

/// Every setting a site has, in one place: the keys of a sites file (`sitemon apply`,
/// `export`), the options of `add-site` and `update-site`, the columns of `websites`.
///
/// A new setting is a new field here (with a serde default that keeps today's behaviour),
/// a column, and the line that reads and writes it in `db.rs`; the plan of `apply`, `export`
/// and the round trip between them follow from the field by themselves. Values are checked
/// by [`NewSite::from_settings`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSettings {
    /// The URL a request is sent to.
    pub url: String,
    /// A name that identifies the site in a sites file instead of its URL (so the URL can
    /// change); unique.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Seconds between the starts of two checks.
    #[serde(default = "default_interval")]
    pub interval: i64,
    /// A regex the body must match for the site to count as up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// A regex the body must not match ("maintenance"): a match makes the site down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_must_not_match: Option<String>,
    /// The request's method.
    #[serde(default)]
    pub method: Method,
    /// Request headers, name → value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The request body (POST only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The statuses that count as up, codes and ranges (`200-299,301`); `None` = any 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<String>,
    /// A check that succeeds slower than this is degraded (still up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_after_ms: Option<i64>,
    /// The limit of one check of this site; `None` = the checker's `--timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<i64>,
    /// Whether redirects are followed (at most 5); off, a redirect is the final response.
    #[serde(default = "yes")]
    pub follow_redirects: bool,
    /// Whether the server's certificate is verified; off only for internal hosts.
    #[serde(default = "yes")]
    pub tls_verify: bool,
    /// The site's own alert settings (a sites file's `alerts:` map); unset ones are the
    /// alert service's defaults.
    #[serde(default, skip_serializing_if = "SiteAlerts::is_empty")]
    pub alerts: SiteAlerts,
}

fn default_interval() -> i64 {
    DEFAULT_INTERVAL_SECS.into()
}

fn yes() -> bool {
    true
}

impl SiteSettings {
    /// A site with every setting at its default: what `add-site URL` registers.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            name: None,
            interval: default_interval(),
            regex: None,
            regex_must_not_match: None,
            method: Method::Get,
            headers: BTreeMap::new(),
            body: None,
            expect_status: None,
            degraded_after_ms: None,
            timeout_ms: None,
            follow_redirects: true,
            tls_verify: true,
            alerts: SiteAlerts::default(),
        }
    }

    /// The settings as key → JSON value, as a sites file writes them (a setting that is
    /// not set is absent): what `apply`'s plan compares, so a new field takes part by itself.
    pub fn fields(&self) -> BTreeMap<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        }
    }

    /// The settings whose values differ from `other`'s: key, this value, the other value
    /// (`null` for a setting that is not set), by key.
    pub fn differences(
        &self,
        other: &SiteSettings,
    ) -> Vec<(String, serde_json::Value, serde_json::Value)> {
        let (old, new) = (self.fields(), other.fields());
        let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter_map(|key| {
                let before = old.get(key).cloned().unwrap_or_default();
                let after = new.get(key).cloned().unwrap_or_default();
                (before != after).then(|| (key.clone(), before, after))
            })
            .collect()
    }
}

/// The method of a check's request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum Method {
    /// GET: the default.
    #[default]
    Get,
    /// HEAD: the status and headers only; no body, so no regex.
    Head,
    /// POST, with the site's body.
    Post,
}

impl Method {
    /// The name on the wire and in `websites.method`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Method> for &'static str {
    fn from(method: Method) -> Self {
        method.as_str()
    }
}

impl std::str::FromStr for Method {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text.to_ascii_uppercase().as_str() {
            "GET" => Ok(Self::Get),
            "HEAD" => Ok(Self::Head),
            "POST" => Ok(Self::Post),
            _ => Err(Error::InvalidSetting {
                key: "method",
                value: format!("{:?}", excerpt(text)),
                reason: "use GET, HEAD or POST".into(),
            }),
        }
    }
}

impl TryFrom<String> for Method {
    type Error = Error;

    fn try_from(text: String) -> Result<Self> {
        text.parse()
    }
}

/// The statuses that count as up: codes and inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectStatus(Vec<(u16, u16)>);

impl ExpectStatus {
    /// Parses `200-299,301`: codes and ranges of codes from 100 to 599, comma-separated.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] naming the item that is wrong.
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidSetting {
            key: "expect_status",
            value: format!("{:?}", excerpt(text)),
            reason,
        };
        let code = |item: &str| -> Result<u16> {
            match item.trim().parse::<u16>() {
                Ok(code) if (100..=599).contains(&code) => Ok(code),
                _ => Err(invalid(format!(
                    "{:?} is not an HTTP status from 100 to 599",
                    excerpt(item.trim())
                ))),
            }
        };
        let mut ranges = Vec::new();
        for item in text.split(',') {
            if item.trim().is_empty() {
                return Err(invalid(
                    "it needs codes or ranges separated by commas, such as 200-299,301".into(),
                ));
            }
            let range = match item.split_once('-') {
                Some((from, to)) => (code(from)?, code(to)?),
                None => {
                    let single = code(item)?;
                    (single, single)
                }
            };
            if range.0 > range.1 {
                return Err(invalid(format!(
                    "the range {}-{} ends before it starts",
                    range.0, range.1
                )));
            }
            ranges.push(range);
        }
        Ok(Self(ranges))
    }

    /// Whether `status` is one of the expected.
    pub fn contains(&self, status: u16) -> bool {
        self.0
            .iter()
            .any(|(from, to)| (*from..=*to).contains(&status))
    }
}

impl std::fmt::Display for ExpectStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (from, to)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if from == to {
                write!(f, "{from}")?;
            } else {
                write!(f, "{from}-{to}")?;
            }
        }
        Ok(())
    }
}

/// A site that passed validation and may be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSite {
    settings: SiteSettings,
}

impl NewSite {
    /// Validates a site with a URL, an interval, an optional regex and every other setting at
    /// its default.
    ///
    /// An empty regex means "no regex" (the original prototype stored `''` for that).
    ///
    /// # Errors
    /// [`Error::InvalidUrl`], [`Error::InvalidInterval`] or [`Error::InvalidRegex`], naming the
    /// input and the problem.
    pub fn new(url: &str, check_interval: i64, up_regex: Option<&str>) -> Result<Self> {
        let mut settings = SiteSettings::new(url);
        settings.interval = check_interval;
        settings.regex = up_regex.map(str::to_owned);
        Self::from_settings(settings)
    }

    /// Validates every setting, one rule after the other, and normalises them: an empty
    /// text (regex, name, body, expected status) means none, an expected status is written
    /// as `200-299,301`.
    ///
    /// # Errors
    /// The first rule broken: [`Error::InvalidUrl`], [`Error::InvalidInterval`],
    /// [`Error::InvalidRegex`] or [`Error::InvalidSetting`], each naming the value.
    pub fn from_settings(mut settings: SiteSettings) -> Result<Self> {
        let none_if_empty = |text: &mut Option<String>| {
            if text.as_deref().is_some_and(str::is_empty) {
                *text = None;
            }
        };
        none_if_empty(&mut settings.name);
        none_if_empty(&mut settings.regex);
        none_if_empty(&mut settings.regex_must_not_match);
        none_if_empty(&mut settings.body);
        none_if_empty(&mut settings.expect_status);
        let invalid = |key: &'static str, value: String, reason: &str| Error::InvalidSetting {
            key,
            value,
            reason: reason.to_owned(),
        };

        validate_url(&settings.url)?;
        let bad_name = settings
            .name
            .as_ref()
            .filter(|name| name.trim() != name.as_str() || name.chars().count() > MAX_NAME_LEN);
        if let Some(name) = bad_name {
            return Err(invalid(
                "name",
                format!("{:?}", excerpt(name)),
                &format!(
                    "a name is at most {MAX_NAME_LEN} characters and neither starts nor \
                     ends with white space"
                ),
            ));
        }
        validate_interval(settings.interval)?;
        settings.alerts.validate()?;
        if let Some(pattern) = &settings.regex {
            compile_up_regex(pattern)?;
        }
        if let Some(pattern) = &settings.regex_must_not_match {
            compile_up_regex(pattern).map_err(|e| match e {
                Error::InvalidRegex { pattern, reason } => Error::InvalidSetting {
                    key: "regex_must_not_match",
                    value: format!("{pattern:?}"),
                    reason,
                },
                other => other,
            })?;
        }
        if settings.method == Method::Head {
            for (key, set) in [
                ("regex", settings.regex.is_some()),
                (
                    "regex_must_not_match",
                    settings.regex_must_not_match.is_some(),
                ),
            ] {
                if set {
                    return Err(invalid(
                        key,
                        "with method HEAD".into(),
                        "a HEAD response has no body to search; use GET",
                    ));
                }
            }
        }
        validate_headers(&settings.headers)?;
        if let Some(body) = &settings.body {
            if settings.method != Method::Post {
                return Err(invalid(
                    "body",
                    format!("with method {}", settings.method),
                    "a request body is sent with POST only; set method POST",
                ));
            }
            if body.len() > MAX_BODY_LEN {
                return Err(invalid(
                    "body",
                    format!("of {} bytes", body.len()),
                    &format!("at most {MAX_BODY_LEN} bytes are sent"),
                ));
            }
        }
        if let Some(text) = &settings.expect_status {
            settings.expect_status = Some(ExpectStatus::parse(text)?.to_string());
        }
        let interval_ms = settings.interval * 1000;
        if let Some(timeout) = settings.timeout_ms {
            let limit = interval_ms.min(MAX_TIMEOUT_MS);
            if !(1..=limit).contains(&timeout) {
                return Err(invalid(
                    "timeout_ms",
                    timeout.to_string(),
                    &format!(
                        "it must be from 1 to {limit} (the interval of {} s, and at most one \
                         hour)",
                        settings.interval
                    ),
                ));
            }
        }
        if let Some(degraded) = settings.degraded_after_ms {
            let limit = settings
                .timeout_ms
                .unwrap_or(interval_ms.min(MAX_TIMEOUT_MS));
            if !(1..limit).contains(&degraded) {
                return Err(invalid(
                    "degraded_after_ms",
                    degraded.to_string(),
                    &format!(
                        "it must be from 1 to below the check's timeout ({limit} ms), or the \
                         check times out before it is degraded"
                    ),
                ));
            }
        }
        Ok(Self { settings })
    }

    /// The validated settings.
    pub fn settings(&self) -> &SiteSettings {
        &self.settings
    }

    /// The validated settings, owned.
    pub fn into_settings(self) -> SiteSettings {
        self.settings
    }

    /// The validated URL.
    pub fn url(&self) -> &str {
        &self.settings.url
    }

    /// The validated interval, in seconds.
    pub fn check_interval(&self) -> i32 {
        // from_settings checked the range.
        self.settings.interval as i32
    }

    /// The validated regex, if any.
    pub fn up_regex(&self) -> Option<&str> {
        self.settings.regex.as_deref()
    }
}

/// Checks request headers: names that are HTTP tokens, each once whatever its case, values
/// without control characters, none of [`RESERVED_HEADERS`].
///
/// # Errors
/// [`Error::InvalidSetting`] naming the header.
pub fn validate_headers(headers: &BTreeMap<String, String>) -> Result<()> {
    let invalid = |name: &str, reason: &str| Error::InvalidSetting {
        key: "headers",
        value: format!("{:?}", excerpt(name)),
        reason: reason.to_owned(),
    };
    let mut seen = std::collections::HashSet::new();
    for (name, value) in headers {
        let parsed = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(name, "it is not a header name (letters, digits and -)"))?;
        if RESERVED_HEADERS.contains(&parsed.as_str()) {
            return Err(invalid(name, "sitemon sets this header itself"));
        }
        if !seen.insert(parsed) {
            return Err(invalid(
                name,
                "it is given twice (header names ignore case)",
            ));
        }
        let visible_ascii = value.chars().all(|c| c == '\t' || (' '..='~').contains(&c));
        if !visible_ascii || http::HeaderValue::from_str(value).is_err() {
            return Err(invalid(
                name,
                "its value holds a control character or a character beyond ASCII",
            ));
        }
    }
    Ok(())
}

/// Reads a header as a user writes it on the command line: `Name: value`.
///
/// # Errors
/// [`Error::InvalidSetting`] for a header without a colon or without a name.
pub fn parse_header(text: &str) -> Result<(String, String)> {
    let invalid = |reason: &str| Error::InvalidSetting {
        key: "header",
        value: format!("{:?}", excerpt(text)),
        reason: reason.to_owned(),
    };
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| invalid("write it as Name: value, with a colon"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(invalid("it has no name before the colon"));
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

/// Checks that `url` is an absolute http(s) URL with a host that fits the table.
///
/// # Errors
/// [`Error::InvalidUrl`] saying what is wrong.
pub fn validate_url(url: &str) -> Result<http::Uri> {
    let invalid = |reason: &str| Error::InvalidUrl {
        url: excerpt(&crate::mask::mask_url(url)),
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

    /// Each rule of `from_settings` alone: the settings are valid but for one change.
    #[test]
    fn every_setting_rule_refuses_its_case() {
        type Change = fn(&mut SiteSettings);
        let cases: [(Change, &str); 14] = [
            (|s| s.name = Some(" x".into()), "invalid name"),
            (|s| s.interval = 0, "invalid interval 0"),
            (|s| s.regex = Some("(".into()), "invalid regex"),
            (
                |s| s.regex_must_not_match = Some("(".into()),
                "invalid regex_must_not_match",
            ),
            (
                |s| {
                    s.method = Method::Head;
                    s.regex = Some("ok".into());
                },
                "invalid regex with method HEAD",
            ),
            (
                |s| s.body = Some("x".into()),
                "invalid body with method GET",
            ),
            (
                |s| {
                    s.method = Method::Post;
                    s.body = Some("x".repeat(MAX_BODY_LEN + 1));
                },
                "at most 65536 bytes",
            ),
            (
                |s| {
                    s.headers.insert("Connection".into(), "keep-alive".into());
                },
                "sitemon sets this header itself",
            ),
            (
                |s| {
                    s.headers.insert("X-A".into(), "1".into());
                    s.headers.insert("x-a".into(), "2".into());
                },
                "given twice",
            ),
            (
                |s| s.expect_status = Some("300-200".into()),
                "ends before it starts",
            ),
            (|s| s.expect_status = Some("600".into()), "from 100 to 599"),
            (|s| s.timeout_ms = Some(5001), "it must be from 1 to 5000"),
            (
                |s| {
                    s.timeout_ms = Some(1000);
                    s.degraded_after_ms = Some(1000);
                },
                "below the check's timeout (1000 ms)",
            ),
            (
                |s| s.degraded_after_ms = Some(0),
                "invalid degraded_after_ms 0",
            ),
        ];
        for (change, expected) in cases {
            let mut settings = SiteSettings::new("http://example.invalid/");
            change(&mut settings);
            let message = NewSite::from_settings(settings)
                .expect_err(expected)
                .to_string();
            assert!(message.contains(expected), "{expected}: {message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn settings_are_normalised() {
        let mut settings = SiteSettings::new("http://example.invalid/");
        settings.expect_status = Some(" 200 - 299 , 301,301 ".into());
        settings.body = Some(String::new());
        settings.name = Some(String::new());
        let site = NewSite::from_settings(settings).expect("valid");
        assert_eq!(
            site.settings().expect_status.as_deref(),
            Some("200-299,301,301")
        );
        assert_eq!(
            (&site.settings().body, &site.settings().name),
            (&None, &None)
        );
        let expect = ExpectStatus::parse("200-299,404").expect("valid");
        assert!(expect.contains(404) && expect.contains(250) && !expect.contains(300));
    }

    #[test]
    fn empty_regex_means_none() {
        let site = NewSite::new("http://example.com", 5, Some("")).expect("valid");
        assert_eq!(site.up_regex(), None);
    }
}
