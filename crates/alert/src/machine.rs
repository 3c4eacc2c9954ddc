//! The state machine, as pure code: one site's locations, its open incident and the
//! certificates already noticed, moved forward one check at a time.
//!
//! - Per location: **up → down** after `failure_threshold` consecutive failed checks,
//!   **down → up** after `success_threshold` consecutive successes. A check at or before the
//!   location's last applied check is a replay and changes nothing.
//! - Per site: an incident **opens** when at least `min_locations` locations are down and no
//!   maintenance window covers the check; it **resolves** when fewer are down. While it stays
//!   open, a **reminder** falls due every `reminder_every`.
//! - A certificate expiring within `cert_expiry_days` of a check is noticed once.
//!
//! Time is the checks' own (`checked_at`), never the clock, so that replaying the same
//! events decides the same things.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sitemon_core::CheckEvent;
use time::OffsetDateTime;
use uuid::Uuid;

/// The settings that decide when a site is down, with the service's defaults in
/// [`Policy::default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Consecutive failed checks that take a location down (at least 1).
    pub failure_threshold: u32,
    /// Consecutive successful checks that bring a location back up (at least 1).
    pub success_threshold: u32,
    /// Locations that must be down for an incident to open (at least 1).
    pub min_locations: u32,
    /// How often an open incident is notified again; zero = never.
    pub reminder_every: Duration,
    /// Notify when the certificate expires within this many days; 0 = never.
    pub cert_expiry_days: u32,
}

impl Default for Policy {
    /// 3 failures, 2 successes, 1 location, a reminder every hour, certificates 14 days
    /// ahead.
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            success_threshold: 2,
            min_locations: 1,
            reminder_every: Duration::from_secs(3600),
            cert_expiry_days: 14,
        }
    }
}

/// One site's overrides of the service's [`Policy`] (the `websites` columns); `None` keeps
/// the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `websites.failure_threshold`.
    pub failure_threshold: Option<u32>,
    /// `websites.success_threshold`.
    pub success_threshold: Option<u32>,
    /// `websites.min_locations`.
    pub min_locations: Option<u32>,
    /// `websites.reminder_every`.
    pub reminder_every: Option<Duration>,
    /// `websites.cert_expiry_days`.
    pub cert_expiry_days: Option<u32>,
}

impl Policy {
    /// This policy with a site's overrides applied.
    #[must_use]
    pub fn with(self, overrides: &Overrides) -> Self {
        Self {
            failure_threshold: overrides
                .failure_threshold
                .unwrap_or(self.failure_threshold),
            success_threshold: overrides
                .success_threshold
                .unwrap_or(self.success_threshold),
            min_locations: overrides.min_locations.unwrap_or(self.min_locations),
            reminder_every: overrides.reminder_every.unwrap_or(self.reminder_every),
            cert_expiry_days: overrides.cert_expiry_days.unwrap_or(self.cert_expiry_days),
        }
    }
}

/// One check as the state machine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// The event's `check_id`; an incident this check opens takes it as its id.
    pub check_id: Uuid,
    /// Where it was checked from.
    pub location: String,
    /// When the check started.
    pub at: OffsetDateTime,
    /// Whether it succeeded.
    pub up: bool,
    /// For a failed check: what failed, for people.
    pub error: Option<String>,
    /// The certificate's expiry, for https.
    pub cert_not_after: Option<OffsetDateTime>,
}

impl From<&CheckEvent> for Check {
    fn from(event: &CheckEvent) -> Self {
        Self {
            check_id: event.check_id,
            location: event.location.clone(),
            at: event.checked_at,
            up: event.up,
            error: (!event.up).then(|| describe_failure(event)),
            cert_not_after: event.tls_cert_not_after,
        }
    }
}

/// A failed check in one line: its error, else its status, else the regex that missed.
pub fn describe_failure(event: &CheckEvent) -> String {
    if let Some(error) = &event.error {
        // Events may come from any producer: what is kept and sent is masked and bounded.
        let message = sitemon_core::mask::message(&error.message);
        return format!("{}: {message}", error.kind.as_str());
    }
    match (event.status_code, event.regex_matched) {
        (Some(status), _) if !(200..300).contains(&status) => format!("HTTP status {status}"),
        (_, Some(false)) => "the body did not match the regex".to_owned(),
        _ => "the check failed".to_owned(),
    }
}

/// One location's state.
#[derive(Debug, Clone, PartialEq)]
pub struct LocationState {
    /// Down (after `failure_threshold` failures) or up.
    pub down: bool,
    /// The current run of checks that contradict `down`.
    pub streak: u32,
    /// The first failure's error of the current run of failures (while up), or of the run
    /// that took the location down (while down).
    pub streak_error: Option<String>,
    /// When the location went down.
    pub down_since: Option<OffsetDateTime>,
    /// The last check applied; checks at or before it are replays.
    pub last_checked_at: OffsetDateTime,
    /// Its id.
    pub last_check_id: Uuid,
}

/// The open incident of a site.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenIncident {
    /// The `check_id` of the check that opened it.
    pub id: Uuid,
    /// When that check started.
    pub opened_at: OffsetDateTime,
    /// The first failing check's error.
    pub first_error: Option<String>,
    /// Every location that was down during the incident, sorted.
    pub locations: Vec<String>,
    /// The channels notified when it opened.
    pub channels: Vec<String>,
    /// Reminders due so far.
    pub reminders: u32,
    /// When the last reminder fell due.
    pub last_reminder_at: Option<OffsetDateTime>,
}

/// Everything the machine knows of one site.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SiteState {
    /// Each location that has checked it.
    pub locations: BTreeMap<String, LocationState>,
    /// Its open incident.
    pub open: Option<OpenIncident>,
    /// The certificate expiries already noticed.
    pub noticed_certs: BTreeSet<OffsetDateTime>,
}

/// What one check changed, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A location went down.
    LocationDown {
        /// Which.
        location: String,
    },
    /// A location came back up.
    LocationUp {
        /// Which.
        location: String,
    },
    /// An incident opened (now in [`SiteState::open`]).
    Opened {
        /// Its id.
        incident: Uuid,
    },
    /// The open incident grew: another location went down.
    Spread {
        /// Its id.
        incident: Uuid,
    },
    /// The incident resolved.
    Resolved {
        /// The incident as it was, now closed.
        incident: OpenIncident,
        /// When.
        at: OffsetDateTime,
    },
    /// A reminder of the open incident fell due.
    Reminder {
        /// Its id.
        incident: Uuid,
        /// Which reminder, from 1.
        number: u32,
    },
    /// The certificate expires soon, noticed for the first time.
    CertExpiring {
        /// Its expiry.
        not_after: OffsetDateTime,
    },
}

impl SiteState {
    /// Applies one check. `in_maintenance` says a window covers it (nothing opens);
    /// `channels` are the channels an incident that opens now notifies.
    pub fn observe(
        &mut self,
        check: &Check,
        policy: &Policy,
        in_maintenance: bool,
        channels: &[String],
    ) -> Vec<Decision> {
        let mut decisions = Vec::new();
        if let Some(location) = self.locations.get(&check.location)
            && check.at <= location.last_checked_at
        {
            return decisions;
        }
        let location = self
            .locations
            .entry(check.location.clone())
            .or_insert_with(|| LocationState {
                down: false,
                streak: 0,
                streak_error: None,
                down_since: None,
                last_checked_at: check.at,
                last_check_id: check.check_id,
            });
        location.last_checked_at = check.at;
        location.last_check_id = check.check_id;
        let failed = !check.up;
        if failed == location.down {
            // The check agrees with the state: any run against it is broken.
            location.streak = 0;
            if !location.down {
                location.streak_error = None;
            }
        } else {
            location.streak = location.streak.saturating_add(1);
            if failed && location.streak == 1 {
                location.streak_error.clone_from(&check.error);
            }
            if failed && location.streak >= policy.failure_threshold.max(1) {
                location.down = true;
                location.streak = 0;
                location.down_since = Some(check.at);
                decisions.push(Decision::LocationDown {
                    location: check.location.clone(),
                });
            } else if !failed && location.streak >= policy.success_threshold.max(1) {
                location.down = false;
                location.streak = 0;
                location.streak_error = None;
                location.down_since = None;
                decisions.push(Decision::LocationUp {
                    location: check.location.clone(),
                });
            }
        }

        let down: Vec<&String> = self
            .locations
            .iter()
            .filter(|(_, state)| state.down)
            .map(|(name, _)| name)
            .collect();
        let site_down = down.len() >= policy.min_locations.max(1) as usize;
        match &mut self.open {
            Some(open) if !site_down => {
                decisions.push(Decision::Resolved {
                    incident: open.clone(),
                    at: check.at,
                });
                self.open = None;
            }
            Some(open) => {
                let before = open.locations.len();
                for name in down {
                    if !open.locations.contains(name) {
                        open.locations.push(name.clone());
                    }
                }
                if open.locations.len() > before {
                    open.locations.sort();
                    decisions.push(Decision::Spread { incident: open.id });
                }
                if !policy.reminder_every.is_zero() {
                    let since = open.last_reminder_at.unwrap_or(open.opened_at);
                    // The times are the events' own (any producer's): a sum past year 9999
                    // is "never due", not a panic.
                    let due = time::Duration::try_from(policy.reminder_every)
                        .ok()
                        .and_then(|every| since.checked_add(every));
                    if due.is_some_and(|due| check.at >= due) {
                        open.reminders += 1;
                        open.last_reminder_at = Some(check.at);
                        decisions.push(Decision::Reminder {
                            incident: open.id,
                            number: open.reminders,
                        });
                    }
                }
            }
            None if site_down && !in_maintenance => {
                let first_error = self
                    .locations
                    .values()
                    .filter(|state| state.down)
                    .min_by_key(|state| state.down_since)
                    .and_then(|state| state.streak_error.clone());
                self.open = Some(OpenIncident {
                    id: check.check_id,
                    opened_at: check.at,
                    first_error,
                    locations: down.into_iter().cloned().collect(),
                    channels: channels.to_vec(),
                    reminders: 0,
                    last_reminder_at: None,
                });
                decisions.push(Decision::Opened {
                    incident: check.check_id,
                });
            }
            None => {}
        }

        if let Some(not_after) = check.cert_not_after
            && policy.cert_expiry_days > 0
            && not_after - check.at <= time::Duration::days(policy.cert_expiry_days.into())
            && self.noticed_certs.insert(not_after)
        {
            decisions.push(Decision::CertExpiring { not_after });
        }
        decisions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const START: OffsetDateTime = datetime!(2026-11-30 12:00 UTC);

    /// Feeds checks from `location`, one every 10 s from `from`; `pattern` has `u` for up
    /// and `d` for down.
    struct Feed {
        site: SiteState,
        policy: Policy,
        clock: OffsetDateTime,
        maintenance: bool,
    }

    impl Feed {
        fn new(policy: Policy) -> Self {
            Self {
                site: SiteState::default(),
                policy,
                clock: START,
                maintenance: false,
            }
        }

        fn check(&mut self, location: &str, up: bool) -> Vec<Decision> {
            self.clock += time::Duration::seconds(10);
            let check = Check {
                check_id: Uuid::now_v7(),
                location: location.to_owned(),
                at: self.clock,
                up,
                error: (!up).then(|| format!("connect: refused at {}", self.clock)),
                cert_not_after: None,
            };
            self.site
                .observe(&check, &self.policy, self.maintenance, &["ops".to_owned()])
        }

        /// The kinds of decision the pattern made, as short words.
        fn run(&mut self, location: &str, pattern: &str) -> Vec<&'static str> {
            let mut words = Vec::new();
            for c in pattern.chars() {
                for decision in self.check(location, c == 'u') {
                    words.push(word(&decision));
                }
            }
            words
        }
    }

    fn word(decision: &Decision) -> &'static str {
        match decision {
            Decision::LocationDown { .. } => "location-down",
            Decision::LocationUp { .. } => "location-up",
            Decision::Opened { .. } => "opened",
            Decision::Spread { .. } => "spread",
            Decision::Resolved { .. } => "resolved",
            Decision::Reminder { .. } => "reminder",
            Decision::CertExpiring { .. } => "cert",
        }
    }

    fn quiet() -> Policy {
        Policy {
            reminder_every: Duration::ZERO,
            ..Policy::default()
        }
    }

    #[test]
    fn down_after_three_failures_up_after_two_successes() {
        let mut feed = Feed::new(quiet());
        assert_eq!(feed.run("eu", "uudd"), Vec::<&str>::new());
        assert_eq!(feed.run("eu", "d"), ["location-down", "opened"]);
        assert_eq!(feed.run("eu", "ddu"), Vec::<&str>::new());
        assert_eq!(feed.run("eu", "u"), ["location-up", "resolved"]);
        assert!(feed.site.open.is_none());
    }

    #[test]
    fn flapping_below_the_thresholds_opens_nothing() {
        let mut feed = Feed::new(quiet());
        assert_eq!(feed.run("eu", "ddudduddudd"), Vec::<&str>::new());
        assert!(feed.site.open.is_none());
        // Once down, a single success among failures does not resolve it either.
        assert_eq!(feed.run("eu", "d"), ["location-down", "opened"]);
        assert_eq!(feed.run("eu", "ududdud"), Vec::<&str>::new());
        assert!(feed.site.open.is_some());
    }

    #[test]
    fn the_incident_is_the_check_that_crossed_with_the_first_error() {
        let mut feed = Feed::new(quiet());
        feed.run("eu", "dd");
        let first_error = feed.site.locations["eu"].streak_error.clone();
        let decisions = feed.check("eu", false);
        let open = feed.site.open.clone().expect("open");
        assert_eq!(decisions[1], Decision::Opened { incident: open.id });
        assert_eq!(open.id, feed.site.locations["eu"].last_check_id);
        assert_eq!(open.opened_at, feed.clock);
        assert_eq!(open.first_error, first_error);
        assert!(open.first_error.is_some());
        assert_eq!(open.locations, ["eu"]);
        assert_eq!(open.channels, ["ops"]);
    }

    #[test]
    fn thresholds_of_one_follow_every_check() {
        let mut feed = Feed::new(Policy {
            failure_threshold: 1,
            success_threshold: 1,
            ..quiet()
        });
        assert_eq!(
            feed.run("eu", "dud"),
            [
                "location-down",
                "opened",
                "location-up",
                "resolved",
                "location-down",
                "opened"
            ]
        );
    }

    #[test]
    fn min_locations_two_needs_both_down() {
        let mut feed = Feed::new(Policy {
            min_locations: 2,
            ..quiet()
        });
        assert_eq!(feed.run("eu", "ddd"), ["location-down"]);
        assert_eq!(feed.run("us", "uu"), Vec::<&str>::new());
        assert!(feed.site.open.is_none(), "one location of two is down");
        assert_eq!(feed.run("us", "ddd"), ["location-down", "opened"]);
        assert_eq!(
            feed.site.open.as_ref().expect("open").locations,
            ["eu", "us"]
        );
        // Fewer than two down: resolved.
        assert_eq!(feed.run("eu", "uu"), ["location-up", "resolved"]);
    }

    #[test]
    fn another_location_going_down_spreads_the_incident() {
        let mut feed = Feed::new(quiet());
        feed.run("eu", "ddd");
        assert_eq!(feed.run("us", "ddd"), ["location-down", "spread"]);
        assert_eq!(
            feed.site.open.as_ref().expect("open").locations,
            ["eu", "us"]
        );
        // One location back is not enough while another is still down (min_locations 1).
        assert_eq!(feed.run("eu", "uu"), ["location-up"]);
        assert_eq!(feed.run("us", "uu"), ["location-up", "resolved"]);
    }

    #[test]
    fn maintenance_suppresses_opening_until_it_ends() {
        let mut feed = Feed::new(quiet());
        feed.maintenance = true;
        assert_eq!(feed.run("eu", "dddd"), ["location-down"]);
        assert!(feed.site.open.is_none());
        feed.maintenance = false;
        // Still down when the window ends: the next check opens it.
        assert_eq!(feed.run("eu", "d"), ["opened"]);
        // A window never holds back a resolution, and opens nothing inside it.
        feed.maintenance = true;
        assert_eq!(feed.run("eu", "uu"), ["location-up", "resolved"]);
        assert_eq!(feed.run("eu", "dddd"), ["location-down"]);
    }

    #[test]
    fn reminders_fall_due_every_reminder_every() {
        let mut feed = Feed::new(Policy {
            reminder_every: Duration::from_secs(60),
            ..Policy::default()
        });
        feed.run("eu", "ddd");
        // Checks every 10 s: the first reminder 60 s after opening, then every 60 s.
        let words = feed.run("eu", "ddddddddddddd");
        assert_eq!(words, ["reminder", "reminder"]);
        let Some(open) = &feed.site.open else {
            panic!("still open")
        };
        assert_eq!(open.reminders, 2);
        assert_eq!(feed.run("eu", "uu"), ["location-up", "resolved"]);
    }

    #[test]
    fn an_incident_dated_at_the_end_of_time_is_no_panic() {
        let mut feed = Feed::new(Policy {
            reminder_every: Duration::from_secs(3600),
            ..Policy::default()
        });
        // An event from a producer with a wild clock: 9999-12-31 23:59, the last minute the
        // time crate can hold; an hour later cannot be written.
        feed.clock = datetime!(9999-12-31 23:58 UTC);
        assert_eq!(feed.run("eu", "ddd"), ["location-down", "opened"]);
        // The next check asks whether a reminder is due an hour after the opening.
        assert!(feed.run("eu", "d").is_empty());
    }

    #[test]
    fn replayed_and_older_checks_change_nothing() {
        let mut feed = Feed::new(quiet());
        feed.run("eu", "dd");
        let before = feed.site.clone();
        let stale = Check {
            check_id: Uuid::now_v7(),
            location: "eu".to_owned(),
            at: feed.clock,
            up: false,
            error: None,
            cert_not_after: None,
        };
        assert!(
            feed.site
                .observe(&stale, &feed.policy, false, &[])
                .is_empty()
        );
        assert_eq!(feed.site, before);
    }

    #[test]
    fn a_certificate_is_noticed_once_within_its_days() {
        let mut site = SiteState::default();
        let policy = Policy::default();
        let check = |at: OffsetDateTime, not_after| Check {
            check_id: Uuid::now_v7(),
            location: "eu".to_owned(),
            at,
            up: true,
            error: None,
            cert_not_after: Some(not_after),
        };
        let far = START + time::Duration::days(15);
        let near = START + time::Duration::days(3);
        assert!(
            site.observe(&check(START, far), &policy, false, &[])
                .is_empty()
        );
        let at = START + time::Duration::seconds(10);
        assert_eq!(
            site.observe(&check(at, near), &policy, false, &[]),
            [Decision::CertExpiring { not_after: near }]
        );
        let later = START + time::Duration::seconds(20);
        assert!(
            site.observe(&check(later, near), &policy, false, &[])
                .is_empty()
        );
        // A renewed certificate that also expires soon is another certificate.
        let renewed = near + time::Duration::days(1);
        let latest = START + time::Duration::seconds(30);
        assert_eq!(
            site.observe(&check(latest, renewed), &policy, false, &[]),
            [Decision::CertExpiring { not_after: renewed }]
        );
        // 0 days: never.
        let off = Policy {
            cert_expiry_days: 0,
            ..policy
        };
        let mut other = SiteState::default();
        assert!(
            other
                .observe(&check(START, near), &off, false, &[])
                .is_empty()
        );
    }

    #[test]
    fn overrides_replace_only_what_they_set() {
        let policy = Policy::default().with(&Overrides {
            failure_threshold: Some(5),
            reminder_every: Some(Duration::ZERO),
            ..Overrides::default()
        });
        assert_eq!(policy.failure_threshold, 5);
        assert_eq!(policy.success_threshold, 2);
        assert!(policy.reminder_every.is_zero());
        assert_eq!(policy.cert_expiry_days, 14);
    }
}
