//! One check of one site, from the planned start to the event in the producer's buffer: the
//! glue of plan ([`crate::plan`]) → probe ([`crate::probe`]) → verdict ([`crate::verdict`]) →
//! event.

use std::sync::Arc;

use sitemon_core::event::EVENT_SCHEMA_VERSION;
use sitemon_core::mask::event_url;
use sitemon_core::{CheckError, CheckEvent};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::CheckerConfig;
use crate::plan::Assertions;
use crate::probe::Prober;
use crate::producer::Producer;
use crate::sites::SiteSpec;
use crate::stats::Stats;
use crate::verdict::{Observation, Verdict, judge};

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

    /// Checks `site` once. The event carries no secret: its `url` (masked once, when the site
    /// was loaded: `sitemon_core::mask::mask_url`) and `final_url` (masked and bounded:
    /// `sitemon_core::mask::event_url`) show no credentials nor query values; its error
    /// message has every URL it quotes masked and is cut to
    /// [`MAX_MESSAGE_BYTES`](sitemon_core::mask::MAX_MESSAGE_BYTES) (`sitemon_core::mask::message`).
    pub(crate) async fn check(&self, site: &SiteSpec) -> CheckEvent {
        let checked_at = OffsetDateTime::now_utc();
        let check_id = Uuid::now_v7();
        // A site without a plan asserts nothing: its observation's error makes it down.
        let none = Assertions::default();
        let (outcome, assertions) = match &site.plan {
            Err(unusable) => (
                Observation::failed_before_start(unusable.kind(), unusable.to_string()),
                &none,
            ),
            Ok(plan) => {
                let timeout = site
                    .timeout
                    .unwrap_or_else(|| self.config.timeout_for(site.interval));
                (self.prober.check(plan, timeout).await, &plan.assertions)
            }
        };
        let Verdict {
            up,
            degraded,
            failed_assertion,
        } = judge(assertions, &outcome);
        let responded = outcome.status.is_some();
        CheckEvent {
            schema: EVENT_SCHEMA_VERSION,
            check_id,
            website_id: site.id,
            url: site.shown_url.clone(),
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
            final_url: outcome.final_url.as_deref().map(event_url),
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
