//! Made-up check events, as the checker would publish them, for the tests and benchmarks of
//! whatever consumes them.

use std::time::Duration;

use sitemon_core::event::EVENT_SCHEMA_VERSION;
use sitemon_core::{Assertion, CheckError, CheckEvent, ErrorKind, Method, ProbeTimings};
use time::OffsetDateTime;
use time::macros::datetime;
use uuid::Uuid;

/// The expiry of every made-up TLS certificate.
const CERT_NOT_AFTER: OffsetDateTime = datetime!(2027-03-01 12:00 UTC);

/// The `n`th event of `website_id`, with a fresh `check_id`, checked now: up or down, with or
/// without TLS, regex and redirect, from one of two locations, one in seven a failure with an
/// error; every optional field is sometimes there and sometimes not.
pub fn event(website_id: i32, n: u32) -> CheckEvent {
    let failed = n % 7 == 3;
    let tls = n % 2 == 0;
    let total = 5.0 + f64::from(n % 400) * 1.25;
    CheckEvent {
        schema: EVENT_SCHEMA_VERSION,
        check_id: Uuid::now_v7(),
        website_id,
        url: format!("https://site-{website_id}.example/health"),
        location: ["eu-north", "us-east"][n as usize % 2].to_owned(),
        checked_at: OffsetDateTime::now_utc()
            .replace_nanosecond(n % 1_000 * 1_000)
            .expect("valid"),
        up: !failed && n % 5 != 0,
        status_code: (!failed).then_some([200, 200, 503, 404, 301][n as usize % 5]),
        response_time_ms: (!failed).then_some(total),
        regex: (n % 3 == 0).then(|| "ok|healthy".to_owned()),
        regex_matched: (n % 3 == 0 && !failed).then_some(n % 5 != 0),
        error: failed.then(|| CheckError {
            kind: [ErrorKind::Connect, ErrorKind::Timeout, ErrorKind::Tls][n as usize % 3],
            message: "connection refused (os error 111)".to_owned(),
        }),
        timings_ms: ProbeTimings {
            dns: Some(0.4),
            connect: Some(1.2),
            tls: tls.then_some(7.5),
            ttfb: (!failed).then_some(total - 1.0),
            total,
        },
        redirects: n % 2,
        final_url: (!failed).then(|| format!("https://site-{website_id}.example/health/")),
        tls_cert_not_after: tls.then_some(CERT_NOT_AFTER),
        method: [Method::Get, Method::Head, Method::Post][n as usize % 3],
        expect_status: (n % 4 == 1).then(|| "200-299,404".to_owned()),
        regex_must_not_match: (n % 3 == 0).then(|| "maintenance".to_owned()),
        regex_must_not_match_found: (n % 3 == 0 && !failed).then_some(false),
        degraded_after_ms: (n % 2 == 1).then_some(10),
        degraded: !failed && n % 5 != 0 && n % 2 == 1 && total > 10.0,
        failed_assertion: (!failed && n % 5 == 0).then_some(Assertion::Status),
    }
}

/// The `n`th event of `website_id` in a busy, healthy fleet, checked `n` seconds ago: a 200
/// over TLS from `eu-north`, one in fifty a timeout, a regex on every fourth site. What the
/// sync's benchmark preloads (its figures in `BENCHMARKS.md` are for this mix).
pub fn fleet_event(website_id: i32, n: u32) -> CheckEvent {
    let failed = n % 50 == 7;
    let total = 20.0 + f64::from(n % 700) * 0.37;
    let regex = website_id % 4 == 0;
    let url = format!("https://site-{website_id}.example/");
    CheckEvent {
        schema: EVENT_SCHEMA_VERSION,
        check_id: Uuid::now_v7(),
        website_id,
        url: url.clone(),
        location: "eu-north".to_owned(),
        checked_at: OffsetDateTime::now_utc() - Duration::from_secs(u64::from(n)),
        up: !failed,
        status_code: (!failed).then_some(200),
        response_time_ms: (!failed).then_some(total),
        regex: regex.then(|| "healthy".to_owned()),
        regex_matched: (regex && !failed).then_some(true),
        error: failed.then(|| CheckError {
            kind: ErrorKind::Timeout,
            message: "no response within 10 s".to_owned(),
        }),
        timings_ms: ProbeTimings {
            dns: Some(0.8),
            connect: Some(3.1),
            tls: Some(9.4),
            ttfb: (!failed).then_some(total - 2.0),
            total,
        },
        redirects: 0,
        final_url: (!failed).then_some(url),
        tls_cert_not_after: Some(CERT_NOT_AFTER),
        method: Method::Get,
        expect_status: None,
        regex_must_not_match: None,
        regex_must_not_match_found: None,
        degraded_after_ms: None,
        degraded: false,
        failed_assertion: None,
    }
}

/// The `n`th event of `website_id` as JSON bytes written by hand, not through
/// [`CheckEvent`]'s serializer (the JSON is the contract, not our types): a fresh `check_id`,
/// down (503) one time in five, a fixed time and TLS expiry. It is a **version 1** event, as
/// checkers before schema 2 wrote them: every test that stores these proves the sync still
/// reads version 1.
pub fn event_json(website_id: i32, n: u64) -> Vec<u8> {
    let up = n % 5 != 0;
    serde_json::json!({
        "schema": 1,
        "check_id": Uuid::now_v7().to_string(),
        "website_id": website_id,
        "url": format!("https://site-{website_id}.example/"),
        "location": "eu-north",
        "checked_at": "2026-11-28T13:14:15.123456Z",
        "up": up,
        "status_code": if up { 200 } else { 503 },
        "response_time_ms": 12.5 + (n % 100) as f64,
        "regex": null,
        "regex_matched": null,
        "error": null,
        "timings_ms": {"dns": 0.4, "connect": 1.1, "tls": 6.0, "ttfb": 10.0, "total": 12.5},
        "redirects": 0,
        "final_url": format!("https://site-{website_id}.example/"),
        "tls_cert_not_after": "2027-03-01T12:00:00Z",
    })
    .to_string()
    .into_bytes()
}

/// Asserts that every tick of one site's grid from its first check to its last was either
/// checked or counted as skipped, and that no tick was checked twice: what the scheduler
/// promises, whatever the machine's load.
///
/// `times` are the site's check times in order, `interval` its interval, `skipped` the
/// checker's skipped-tick count (for all its sites: an upper bound for this one's) and
/// `overlaps` the checks a hand-over may add (two checkers checking one tick). A check may
/// start late by a fraction of an interval (a busy machine), so the span between the first
/// and the last check is rounded to whole ticks, with one tick of slack either way.
///
/// # Panics
/// When more ticks went by than were checked or counted, or more checks were made than ticks.
#[track_caller]
pub fn assert_ticks_accounted(
    times: &[OffsetDateTime],
    interval: time::Duration,
    skipped: u64,
    overlaps: u64,
) {
    let (Some(first), Some(last)) = (times.first(), times.last()) else {
        panic!("no check at all");
    };
    let ticks = ((*last - *first) / interval).round() as u64;
    let checks = times.len() as u64 - 1;
    assert!(
        checks + skipped + 1 >= ticks,
        "{ticks} ticks from {first} to {last}, only {checks} checks after the first and \
         {skipped} skipped ticks counted: ticks were lost without being counted"
    );
    assert!(
        checks <= ticks + 1 + overlaps,
        "{checks} checks after the first in {ticks} ticks from {first} to {last}: a tick \
         checked twice"
    );
}
