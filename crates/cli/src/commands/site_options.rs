//! The per-site options `add-site` and `update-site` share: one flag per key of a sites file.

use clap::Args;
use sitemon_core::site::parse_header;
use sitemon_core::{Error, SiteAlerts, SiteSettings};

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
    #[command(flatten)]
    alerts: AlertOptions,
}

/// A site's own alert settings (a sites file's `alerts:` keys). Each left out stays as it is
/// (the alert service's default for `add-site`); `none` goes back to the service's default.
#[derive(Debug, Args)]
#[command(next_help_heading = "Alerts (default: the alert service's settings)")]
pub(crate) struct AlertOptions {
    /// Consecutive failed checks that take a location down (1 to 1000), or none.
    #[arg(long, value_name = "N|none", allow_negative_numbers = true)]
    failure_threshold: Option<String>,
    /// Consecutive successful checks that bring a location back up (1 to 1000), or none.
    #[arg(long, value_name = "N|none", allow_negative_numbers = true)]
    success_threshold: Option<String>,
    /// Locations that must be down for an incident to open (1 to 100), or none.
    #[arg(long, value_name = "N|none", allow_negative_numbers = true)]
    min_locations: Option<String>,
    /// How often an open incident is notified again (1h, 30m; 0 = never), or none.
    #[arg(long, value_name = "PERIOD|none")]
    reminder_every: Option<String>,
    /// Notify when the TLS certificate expires within this many days (0 = never), or none.
    #[arg(long, value_name = "DAYS|none", allow_negative_numbers = true)]
    cert_expiry_days: Option<String>,
    /// The channels to notify, comma-separated; none = every channel.
    #[arg(long, value_name = "A,B|none")]
    channels: Option<String>,
}

impl AlertOptions {
    /// The options given, written over `alerts` (checked by `NewSite::from_settings` after).
    fn apply_to(&self, alerts: &mut SiteAlerts) -> Result<(), Error> {
        let count = |key: &'static str, text: &Option<String>, setting: &mut Option<u32>| {
            if let Some(text) = text {
                *setting = none_or(key, text, |t| t.parse::<u32>().ok(), "a whole number")?;
            }
            Ok::<_, Error>(())
        };
        count(
            "alerts.failure_threshold",
            &self.failure_threshold,
            &mut alerts.failure_threshold,
        )?;
        count(
            "alerts.success_threshold",
            &self.success_threshold,
            &mut alerts.success_threshold,
        )?;
        count(
            "alerts.min_locations",
            &self.min_locations,
            &mut alerts.min_locations,
        )?;
        count(
            "alerts.cert_expiry_days",
            &self.cert_expiry_days,
            &mut alerts.cert_expiry_days,
        )?;
        if let Some(text) = &self.reminder_every {
            alerts.reminder_every = none_or(
                "alerts.reminder_every",
                text,
                |t| crate::args::reminder(t).ok(),
                "0 (never) or a period such as 30m or 1h",
            )?;
        }
        if let Some(text) = &self.channels {
            alerts.channels = none_or(
                "alerts.channels",
                text,
                |t| Some(t.split(',').map(|c| c.trim().to_owned()).collect()),
                "channel names separated by commas",
            )?;
        }
        Ok(())
    }
}

/// `none` (the service's default), or what `parse` makes of `text`.
fn none_or<T>(
    key: &'static str,
    text: &str,
    parse: impl FnOnce(&str) -> Option<T>,
    expected: &str,
) -> Result<Option<T>, Error> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    parse(text).map(Some).ok_or_else(|| Error::InvalidSetting {
        key,
        value: format!("{:?}", text.chars().take(40).collect::<String>()),
        reason: format!("give {expected}, or none"),
    })
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
        self.alerts.apply_to(&mut settings.alerts)
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
