//! The per-site options `add-site` and `update-site` share: one flag per key of a sites file.

use clap::Args;
use sitemon_core::site::parse_header;
use sitemon_core::{Error, SiteSettings};

/// Every setting of a site but its URL. An option not given leaves the setting as it is (the
/// default for `add-site`); an empty text (`--regex ''`) or `none` (`--timeout-ms none`)
/// unsets it.
#[derive(Debug, Args)]
pub(crate) struct SiteOptions {
    /// Seconds between the starts of two checks, 1 to 86400 (default 5).
    #[arg(long, allow_negative_numbers = true)]
    interval: Option<i64>,
    /// A regex (Rust `regex` syntax) the body must match for the site to count as up; `''`
    /// unsets it.
    #[arg(long)]
    regex: Option<String>,
    /// A regex the body must NOT match (a page saying "maintenance" is down); `''` unsets it.
    #[arg(long, value_name = "REGEX")]
    regex_must_not_match: Option<String>,
    /// A name that identifies the site in a sites file (`sitemon apply`) instead of its URL;
    /// `''` unsets it.
    #[arg(long)]
    name: Option<String>,
    /// The request's method: GET (default), HEAD or POST.
    #[arg(long)]
    method: Option<String>,
    /// A request header, `Name: value`; repeat for more. Replaces the site's headers.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Remove every request header of the site.
    #[arg(long, conflicts_with = "headers")]
    no_headers: bool,
    /// The request body (with --method POST); `''` unsets it.
    #[arg(long)]
    body: Option<String>,
    /// The statuses that count as up, codes and ranges: `200-299,301`; `''` = any 2xx (the
    /// default).
    #[arg(long, value_name = "CODES")]
    expect_status: Option<String>,
    /// A check that succeeds slower than this many milliseconds is degraded; `none` = never.
    #[arg(long, value_name = "MS", allow_negative_numbers = true)]
    degraded_after_ms: Option<String>,
    /// This site's limit for one check in milliseconds, at most the interval; `none` = the
    /// checker's --timeout.
    #[arg(long, value_name = "MS", allow_negative_numbers = true)]
    timeout_ms: Option<String>,
    /// Follow redirects (at most 5): true (default) or false.
    #[arg(long, value_name = "BOOL")]
    follow_redirects: Option<bool>,
    /// Verify the server's certificate: true (default) or false (internal hosts only).
    #[arg(long, value_name = "BOOL")]
    tls_verify: Option<bool>,
}

impl SiteOptions {
    /// The options given, written over `settings`; what each rule of
    /// `NewSite::from_settings` says is checked after.
    ///
    /// # Errors
    /// A header without a colon, a number of milliseconds that is not one, an unknown method.
    pub(crate) fn apply_to(&self, settings: &mut SiteSettings) -> Result<(), Error> {
        if let Some(interval) = self.interval {
            settings.interval = interval;
        }
        let text = |value: &Option<String>, setting: &mut Option<String>| {
            if let Some(value) = value {
                *setting = Some(value.clone()).filter(|v| !v.is_empty());
            }
        };
        text(&self.regex, &mut settings.regex);
        text(
            &self.regex_must_not_match,
            &mut settings.regex_must_not_match,
        );
        text(&self.name, &mut settings.name);
        text(&self.body, &mut settings.body);
        text(&self.expect_status, &mut settings.expect_status);
        if let Some(method) = &self.method {
            settings.method = method.parse()?;
        }
        if self.no_headers {
            settings.headers.clear();
        }
        if !self.headers.is_empty() {
            settings.headers.clear();
            for header in &self.headers {
                let (name, value) = parse_header(header)?;
                if settings.headers.insert(name.clone(), value).is_some() {
                    return Err(Error::InvalidSetting {
                        key: "header",
                        value: format!("{name:?}"),
                        reason: "it is given twice".into(),
                    });
                }
            }
        }
        if let Some(ms) = &self.degraded_after_ms {
            settings.degraded_after_ms = millis("degraded_after_ms", ms)?;
        }
        if let Some(ms) = &self.timeout_ms {
            settings.timeout_ms = millis("timeout_ms", ms)?;
        }
        if let Some(follow) = self.follow_redirects {
            settings.follow_redirects = follow;
        }
        if let Some(verify) = self.tls_verify {
            settings.tls_verify = verify;
        }
        Ok(())
    }
}

/// A whole number of milliseconds, or `none`.
fn millis(key: &'static str, text: &str) -> Result<Option<i64>, Error> {
    if text.trim().eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    text.trim()
        .parse()
        .map(Some)
        .map_err(|_| Error::InvalidSetting {
            key,
            value: format!("{:?}", text.chars().take(40).collect::<String>()),
            reason: "give a whole number of milliseconds, or none".into(),
        })
}
