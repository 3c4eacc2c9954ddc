//! One check of one site, from the planned start to the event in the producer's buffer.

use std::sync::Arc;

use sitemon_core::event::EVENT_SCHEMA_VERSION;
use sitemon_core::mask::{MAX_MESSAGE_BYTES, bound_text, mask_url};
use sitemon_core::{CheckError, CheckEvent, ErrorKind};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::CheckerConfig;
use crate::probe::{Outcome, Prober, Searches};
use crate::producer::Producer;
use crate::sites::SiteSpec;
use crate::stats::Stats;

/// What every check shares.
#[derive(Debug)]
pub(crate) struct Checks {
    pub(crate) prober: Prober,
    pub(crate) producer: Producer,
    pub(crate) config: CheckerConfig,
    pub(crate) stats: Arc<Stats>,
}

impl Checks {
    /// Checks `site` once and publishes the event.
    pub(crate) async fn run(&self, site: &SiteSpec) {
        let started = std::time::Instant::now();
        let event = self.check(site).await;
        self.stats.checked(
            event.up,
            event.error.as_ref().map(|e| e.kind),
            started.elapsed(),
        );
        self.producer.send(&event);
    }

    /// Checks `site` once. The event carries no secret and no unbounded text: its `url` and
    /// `final_url` are masked (`sitemon_core::mask::mask_url`: credentials and query values),
    /// its error message has every URL it quotes masked and is cut to
    /// [`MAX_MESSAGE_BYTES`] (`sitemon_core::mask::message`).
    pub(crate) async fn check(&self, site: &SiteSpec) -> CheckEvent {
        let checked_at = OffsetDateTime::now_utc();
        let check_id = Uuid::now_v7();
        let outcome = match (
            &site.target,
            &site.regex,
            &site.must_not_match,
            &site.request,
        ) {
            (Err(reason), ..) => {
                Outcome::failed_before_start(ErrorKind::InvalidUrl, reason.clone())
            }
            (_, Some(Err(reason)), ..) | (_, _, Some(Err(reason)), _) => {
                Outcome::failed_before_start(ErrorKind::InvalidRegex, reason.clone())
            }
            (.., Err(reason)) => {
                Outcome::failed_before_start(ErrorKind::InvalidSettings, reason.clone())
            }
            (Ok(target), regex, must_not_match, Ok(request)) => {
                let compiled = |r: &Option<Result<Arc<regex::Regex>, String>>| {
                    r.as_ref().and_then(|r| r.as_ref().ok()).map(Arc::clone)
                };
                let (regex, must_not_match) = (compiled(regex), compiled(must_not_match));
                let searches = Searches {
                    regex: regex.as_deref(),
                    must_not_match: must_not_match.as_deref(),
                };
                let timeout = site
                    .timeout
                    .unwrap_or_else(|| self.config.timeout_for(site.interval));
                self.prober.check(target, request, searches, timeout).await
            }
        };
        let responded = outcome.status.is_some();
        let request = site.request.as_ref().ok();
        let expect = request.and_then(|r| r.expect.as_ref());
        let up = outcome.is_up(expect);
        let degraded = up
            && request
                .and_then(|r| r.degraded_after)
                .is_some_and(|after| outcome.timings.total > after.as_secs_f64() * 1000.0);
        let failed_assertion = outcome.failed_assertion(expect);
        CheckEvent {
            schema: EVENT_SCHEMA_VERSION,
            check_id,
            website_id: site.id,
            url: mask_url(&site.url),
            location: self.config.location.clone(),
            checked_at,
            up,
            status_code: outcome.status,
            response_time_ms: responded.then_some(outcome.timings.total),
            regex: site.regex_pattern.clone(),
            regex_matched: outcome.regex_matched,
            error: outcome.error.map(|error| CheckError {
                message: sitemon_core::mask::message(&error.message),
                ..error
            }),
            timings_ms: outcome.timings,
            redirects: outcome.redirects,
            final_url: outcome
                .final_url
                .map(|url| bound_text(&mask_url(&url), MAX_MESSAGE_BYTES).into_owned()),
            tls_cert_not_after: outcome.cert_not_after,
            method: site.settings.method,
            expect_status: site.settings.expect_status.clone(),
            regex_must_not_match: site.settings.regex_must_not_match.clone(),
            regex_must_not_match_found: outcome.must_not_match_found,
            degraded_after_ms: site.settings.degraded_after_ms,
            degraded,
            failed_assertion,
        }
    }
}
