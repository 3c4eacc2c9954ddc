//! A site's settings made into a check plan, once per change of its row: the URL taken apart,
//! the regexes compiled, the request ready to send and the assertions its answer is judged by.
//!
//! A row whose settings cannot be used (written by SQL: `add-site` and `apply` refuse them)
//! makes no plan but a [`PlanError`]; each of its checks is an event with that error.

use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use regex::Regex;
use sitemon_core::site::validate_headers;
use sitemon_core::{ExpectStatus, SiteSettings};

use crate::error::PlanError;
use crate::target::Target;

/// Everything one check of a site needs, ready: what the probe executes and what
/// [`crate::verdict::judge`] holds the answer to.
#[derive(Debug, Clone)]
pub(crate) struct CheckPlan {
    /// Where the check goes.
    pub(crate) target: Target,
    /// What it sends.
    pub(crate) request: Request,
    /// The compiled `regex` (shared by every site with the same pattern): must match.
    pub(crate) regex: Option<Arc<Regex>>,
    /// The compiled `regex_must_not_match`: must not match.
    pub(crate) must_not_match: Option<Arc<Regex>>,
    /// How the answer is judged.
    pub(crate) assertions: Assertions,
}

/// What a check's answer is held to beyond having arrived whole (the regexes are searched by
/// the probe, which reports whether they matched).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Assertions {
    /// The statuses that count as up; `None` = any 2xx.
    pub(crate) expect: Option<ExpectStatus>,
    /// An up check slower than this (its total time) is degraded.
    pub(crate) degraded_after: Option<Duration>,
}

impl CheckPlan {
    /// The plan `settings` ask for, its regexes compiled by `compile` (a cache, or
    /// [`sitemon_core::site::compile_up_regex`]).
    ///
    /// # Errors
    /// The first unusable setting, in this order: the URL, `regex`, `regex_must_not_match`,
    /// `headers`, `expect_status`.
    pub(crate) fn new(
        settings: &SiteSettings,
        mut compile: impl FnMut(&str) -> Result<Arc<Regex>, Arc<sitemon_core::Error>>,
    ) -> Result<Self, PlanError> {
        let target = Target::parse(&settings.url).map_err(|e| PlanError::Url {
            source: Arc::new(e),
        })?;
        let mut search = |key: &'static str, pattern: &Option<String>| {
            pattern
                .as_deref()
                .filter(|p| !p.is_empty())
                .map(|p| compile(p).map_err(|source| PlanError::Regex { key, source }))
                .transpose()
        };
        let regex = search("regex", &settings.regex)?;
        let must_not_match = search("regex_must_not_match", &settings.regex_must_not_match)?;
        let request = Request::from_settings(settings)?;
        let expect = settings
            .expect_status
            .as_deref()
            .filter(|text| !text.is_empty())
            .map(ExpectStatus::parse)
            .transpose()
            .map_err(|e| PlanError::Setting {
                key: "expect_status",
                source: Arc::new(e),
            })?;
        Ok(Self {
            target,
            request,
            regex,
            must_not_match,
            assertions: Assertions {
                expect,
                degraded_after: settings
                    .degraded_after_ms
                    .map(|ms| Duration::from_millis(ms.max(0).unsigned_abs())),
            },
        })
    }

    /// The plan `settings` ask for, each regex compiled afresh.
    #[cfg(test)]
    pub(crate) fn from_settings(settings: &SiteSettings) -> Result<Self, PlanError> {
        Self::new(settings, |pattern| {
            sitemon_core::site::compile_up_regex(pattern).map_err(Arc::new)
        })
    }

    /// The regexes the probe searches the body with.
    pub(crate) fn searches(&self) -> Searches<'_> {
        Searches {
            regex: self.regex.as_deref(),
            must_not_match: self.must_not_match.as_deref(),
        }
    }
}

/// What a check of one site sends: a part of its [`CheckPlan`].
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) method: Method,
    /// Sent after sitemon's own headers, replacing one of the same name (`User-Agent`); the
    /// credential headers (`Authorization`, `Proxy-Authorization`, `Cookie`) only where
    /// [`Chain`](crate::target::Chain) trusts the hop, the others on every hop.
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) body: Bytes,
    pub(crate) follow_redirects: bool,
    pub(crate) tls_verify: bool,
}

impl Request {
    /// The request a site's settings ask for.
    ///
    /// # Errors
    /// [`PlanError::Setting`] for unusable `headers`.
    pub(crate) fn from_settings(settings: &SiteSettings) -> Result<Self, PlanError> {
        validate_headers(&settings.headers).map_err(|e| PlanError::Setting {
            key: "headers",
            source: Arc::new(e),
        })?;
        let headers = settings
            .headers
            .iter()
            .filter_map(|(name, value)| {
                Some((
                    HeaderName::from_bytes(name.as_bytes()).ok()?,
                    HeaderValue::from_str(value).ok()?,
                ))
            })
            .collect();
        let method = match settings.method {
            sitemon_core::Method::Get => Method::GET,
            sitemon_core::Method::Head => Method::HEAD,
            sitemon_core::Method::Post => Method::POST,
        };
        Ok(Self {
            method,
            headers,
            body: Bytes::from(settings.body.clone().unwrap_or_default()),
            follow_redirects: settings.follow_redirects,
            tls_verify: settings.tls_verify,
        })
    }
}

/// The regexes a check searches the body with.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Searches<'a> {
    /// Must match.
    pub(crate) regex: Option<&'a Regex>,
    /// Must not match.
    pub(crate) must_not_match: Option<&'a Regex>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use sitemon_core::ErrorKind;

    fn settings(url: &str) -> SiteSettings {
        SiteSettings::new(url)
    }

    /// The first unusable setting decides, in the order the events have always reported:
    /// URL, then the regexes, then the other settings.
    #[test]
    fn the_first_unusable_setting_is_the_error() {
        let mut s = settings("not a url");
        s.regex = Some("(unclosed".into());
        s.expect_status = Some("300-200".into());
        let error = CheckPlan::from_settings(&s).expect_err("bad url");
        assert_eq!(error.kind(), ErrorKind::InvalidUrl);
        assert!(error.to_string().contains("not a url"), "{error}");

        s.url = "http://a.invalid/".into();
        let error = CheckPlan::from_settings(&s).expect_err("bad regex");
        assert!(matches!(error, PlanError::Regex { key: "regex", .. }));
        assert_eq!(error.kind(), ErrorKind::InvalidRegex);
        assert!(error.to_string().contains("(unclosed"), "{error}");

        s.regex = None;
        s.regex_must_not_match = Some("[z-a]".into());
        let error = CheckPlan::from_settings(&s).expect_err("bad must-not-match");
        assert!(matches!(
            error,
            PlanError::Regex {
                key: "regex_must_not_match",
                ..
            }
        ));

        s.regex_must_not_match = None;
        let error = CheckPlan::from_settings(&s).expect_err("bad expect_status");
        assert!(matches!(
            error,
            PlanError::Setting {
                key: "expect_status",
                ..
            }
        ));
        assert_eq!(error.kind(), ErrorKind::InvalidSettings);
        assert!(error.to_string().contains("300-200"), "{error}");

        s.headers.insert("Host".into(), "x".into());
        let error = CheckPlan::from_settings(&s).expect_err("bad headers");
        assert!(matches!(error, PlanError::Setting { key: "headers", .. }));
    }

    #[test]
    fn a_plan_holds_its_assertions() {
        let mut s = settings("http://a.invalid/");
        s.regex = Some(String::new());
        s.expect_status = Some("404".into());
        s.degraded_after_ms = Some(-5);
        let plan = CheckPlan::from_settings(&s).expect("usable");
        assert!(plan.regex.is_none(), "an empty regex is none");
        assert_eq!(plan.assertions.expect, ExpectStatus::parse("404").ok());
        assert_eq!(plan.assertions.degraded_after, Some(Duration::ZERO));
    }
}
