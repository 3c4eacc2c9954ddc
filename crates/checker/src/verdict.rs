//! The verdict of a check: what the probe saw ([`Observation`]) held to the plan's
//! [`Assertions`], with no I/O: up, degraded or down, and the first assertion that failed.

use sitemon_core::{Assertion, CheckError, ErrorKind, ProbeTimings};
use time::OffsetDateTime;

use crate::plan::Assertions;

/// What one check saw; [`judge`] says what it means, [`crate::check`] makes the event of both.
#[derive(Debug, Clone, Default)]
pub(crate) struct Observation {
    /// The final response's status, if one arrived.
    pub(crate) status: Option<u16>,
    /// Whether `regex` matched, if it was searched.
    pub(crate) regex_matched: Option<bool>,
    /// Whether `regex_must_not_match` was found, if it was searched.
    pub(crate) must_not_match_found: Option<bool>,
    pub(crate) error: Option<CheckError>,
    pub(crate) timings: ProbeTimings,
    pub(crate) redirects: u32,
    pub(crate) final_url: Option<String>,
    pub(crate) cert_not_after: Option<OffsetDateTime>,
}

impl Observation {
    /// A check that could not even start: a site's unusable settings.
    pub(crate) fn failed_before_start(kind: ErrorKind, message: String) -> Self {
        Self {
            error: Some(CheckError { kind, message }),
            ..Self::default()
        }
    }
}

/// What a check's observation means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// A final response arrived whole (no error) and every assertion held.
    pub(crate) up: bool,
    /// Up, but slower (total time) than the plan's `degraded_after`; never while down.
    pub(crate) degraded: bool,
    /// The first assertion a response that arrived failed: its status, then `regex`, then
    /// `regex_must_not_match`. None without a response or with an error (the error says why).
    pub(crate) failed_assertion: Option<Assertion>,
}

/// Holds what was `seen` to `assertions`.
pub(crate) fn judge(assertions: &Assertions, seen: &Observation) -> Verdict {
    let failed_assertion = failed_assertion(assertions, seen);
    let up = seen.error.is_none() && seen.status.is_some() && failed_assertion.is_none();
    let degraded = up
        && assertions
            .degraded_after
            .is_some_and(|after| seen.timings.total > after.as_secs_f64() * 1000.0);
    Verdict {
        up,
        degraded,
        failed_assertion,
    }
}

/// The first assertion a response that arrived failed: its status, then the regexes.
fn failed_assertion(assertions: &Assertions, seen: &Observation) -> Option<Assertion> {
    let status = seen.status?;
    if seen.error.is_some() {
        return None;
    }
    let expected = match &assertions.expect {
        Some(expect) => expect.contains(status),
        None => (200..300).contains(&status),
    };
    if !expected {
        Some(Assertion::Status)
    } else if seen.regex_matched == Some(false) {
        Some(Assertion::Regex)
    } else if seen.must_not_match_found == Some(true) {
        Some(Assertion::RegexMustNotMatch)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sitemon_core::ExpectStatus;

    use super::*;

    fn is_up(outcome: &Observation, expect: Option<&ExpectStatus>) -> bool {
        judge(&with_expect(expect), outcome).up
    }

    fn failed(outcome: &Observation, expect: Option<&ExpectStatus>) -> Option<Assertion> {
        judge(&with_expect(expect), outcome).failed_assertion
    }

    fn with_expect(expect: Option<&ExpectStatus>) -> Assertions {
        Assertions {
            expect: expect.cloned(),
            degraded_after: None,
        }
    }

    fn seen(status: u16, total_ms: f64) -> Observation {
        Observation {
            status: Some(status),
            timings: ProbeTimings {
                total: total_ms,
                ..ProbeTimings::default()
            },
            ..Observation::default()
        }
    }

    #[test]
    fn up_needs_2xx_no_error_and_a_matching_regex() {
        let mut outcome = Observation {
            status: Some(204),
            ..Observation::default()
        };
        assert!(is_up(&outcome, None));
        outcome.regex_matched = Some(false);
        assert!(!is_up(&outcome, None));
        assert_eq!(failed(&outcome, None), Some(Assertion::Regex));
        outcome.regex_matched = Some(true);
        outcome.status = Some(301);
        assert!(!is_up(&outcome, None));
        assert_eq!(failed(&outcome, None), Some(Assertion::Status));
        outcome.status = Some(200);
        outcome.must_not_match_found = Some(true);
        assert!(!is_up(&outcome, None));
        assert_eq!(failed(&outcome, None), Some(Assertion::RegexMustNotMatch));
        outcome.must_not_match_found = Some(false);
        assert!(is_up(&outcome, None));
        outcome.error = Some(CheckError {
            kind: ErrorKind::Body,
            message: "broke off".into(),
        });
        assert!(!is_up(&outcome, None));
        assert_eq!(failed(&outcome, None), None, "the error says why");
    }

    #[test]
    fn expected_statuses_replace_any_2xx() {
        let expect = ExpectStatus::parse("404,500-503").expect("valid");
        let outcome = |status| Observation {
            status: Some(status),
            ..Observation::default()
        };
        assert!(is_up(&outcome(404), Some(&expect)));
        assert!(is_up(&outcome(502), Some(&expect)));
        assert!(!is_up(&outcome(200), Some(&expect)));
        assert!(!is_up(&outcome(504), Some(&expect)));
        assert!(
            !is_up(&Observation::default(), Some(&expect)),
            "no answer is down"
        );
    }

    /// The status is judged first, then `regex`, then `regex_must_not_match`: with all three
    /// failing the status is named, with the last two the regex.
    #[test]
    fn the_first_failed_assertion_is_status_then_regex_then_must_not_match() {
        let mut outcome = seen(500, 1.0);
        outcome.regex_matched = Some(false);
        outcome.must_not_match_found = Some(true);
        let verdict = judge(&Assertions::default(), &outcome);
        assert_eq!(verdict.failed_assertion, Some(Assertion::Status));
        assert!(!verdict.up && !verdict.degraded);
        outcome.status = Some(200);
        assert_eq!(failed(&outcome, None), Some(Assertion::Regex));
        outcome.regex_matched = None;
        assert_eq!(failed(&outcome, None), Some(Assertion::RegexMustNotMatch));
        outcome.must_not_match_found = None;
        assert_eq!(
            failed(&outcome, None),
            None,
            "nothing searched, nothing failed"
        );
        assert!(is_up(&outcome, None));
    }

    /// An error with no response (a timeout, a refused connection, unusable settings) is down
    /// with no failed assertion; so is a body that broke off after its status arrived.
    #[test]
    fn an_error_is_down_without_an_assertion() {
        let unusable = Observation::failed_before_start(ErrorKind::InvalidSettings, "x".into());
        let verdict = judge(&with_expect(None), &unusable);
        assert_eq!(
            verdict,
            Verdict {
                up: false,
                degraded: false,
                failed_assertion: None
            }
        );
        let mut broke_off = seen(500, 99_999.0);
        broke_off.error = Some(CheckError {
            kind: ErrorKind::Body,
            message: "broke off".into(),
        });
        let assertions = Assertions {
            expect: None,
            degraded_after: Some(Duration::from_millis(1)),
        };
        assert_eq!(
            judge(&assertions, &broke_off),
            Verdict {
                up: false,
                degraded: false,
                failed_assertion: None
            }
        );
    }

    /// Degraded: up and strictly slower than the threshold; never while down, never without
    /// a threshold.
    #[test]
    fn degraded_is_up_and_over_the_threshold_only() {
        let assertions = Assertions {
            expect: None,
            degraded_after: Some(Duration::from_millis(300)),
        };
        let verdict = |status, total| judge(&assertions, &seen(status, total));
        assert!(verdict(200, 300.5).degraded && verdict(200, 300.5).up);
        assert!(
            !verdict(200, 300.0).degraded,
            "at the threshold is not over it"
        );
        assert!(!verdict(200, 12.0).degraded);
        let down = verdict(503, 5_000.0);
        assert!(!down.up && !down.degraded, "never degraded while down");
        assert_eq!(down.failed_assertion, Some(Assertion::Status));
        assert!(
            !judge(&Assertions::default(), &seen(200, 1e9)).degraded,
            "no threshold"
        );
        let mut regex_failed = seen(200, 5_000.0);
        regex_failed.regex_matched = Some(false);
        assert!(!judge(&assertions, &regex_failed).degraded);
    }
}
