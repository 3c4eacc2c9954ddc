//! What the alert crate's integration tests share: made-up check events, applying them the
//! way the consumer will (one transaction per batch), and reading the outbox back.

#![allow(dead_code, unreachable_pub)]

use sitemon_alert::{ChannelSettings, Processor, admin};
use sitemon_core::event::EVENT_SCHEMA_VERSION;
use sitemon_core::{
    CheckError, CheckEvent, ErrorKind, Method, NewSite, ProbeTimings, SiteAlerts, SiteSettings,
};
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

/// A check of `site` from `location` at `at`: up (200) or down (connection refused).
pub fn check(site: i32, location: &str, at: OffsetDateTime, up: bool) -> CheckEvent {
    CheckEvent {
        schema: EVENT_SCHEMA_VERSION,
        check_id: Uuid::now_v7(),
        website_id: site,
        url: format!("http://127.0.0.1:9/site-{site}"),
        location: location.to_owned(),
        checked_at: at,
        up,
        status_code: up.then_some(200),
        response_time_ms: up.then_some(12.0),
        regex: None,
        regex_matched: None,
        error: (!up).then(|| CheckError {
            kind: ErrorKind::Connect,
            message: format!("connection refused at {at}"),
        }),
        timings_ms: ProbeTimings {
            total: 12.0,
            ..ProbeTimings::default()
        },
        redirects: 0,
        final_url: None,
        tls_cert_not_after: None,
        method: Method::Get,
        expect_status: None,
        regex_must_not_match: None,
        regex_must_not_match_found: None,
        degraded_after_ms: None,
        degraded: false,
        failed_assertion: None,
    }
}

/// Checks of `site` from `location`, one every 10 s from `from`: `u` up, `d` down.
pub fn pattern(site: i32, location: &str, from: OffsetDateTime, pattern: &str) -> Vec<CheckEvent> {
    pattern
        .chars()
        .enumerate()
        .map(|(i, c)| {
            check(
                site,
                location,
                from + time::Duration::seconds(10 * i as i64),
                c == 'u',
            )
        })
        .collect()
}

/// An hour ago, to the second: events in the past, as a consumer that lags would see them.
pub fn an_hour_ago() -> OffsetDateTime {
    (OffsetDateTime::now_utc() - time::Duration::hours(1))
        .replace_nanosecond(0)
        .expect("valid")
}

/// Applies `events` in one transaction and commits, as the consumer does.
pub async fn apply(
    pool: &PgPool,
    processor: &Processor,
    events: &[CheckEvent],
) -> sitemon_alert::Applied {
    let mut tx = pool.begin().await.expect("begin");
    let applied = processor.apply(&mut tx, events).await.expect("apply");
    tx.commit().await.expect("commit");
    applied
}

/// Applies each event in a transaction of its own.
pub async fn apply_each(pool: &PgPool, processor: &Processor, events: &[CheckEvent]) {
    for event in events {
        apply(pool, processor, std::slice::from_ref(event)).await;
    }
}

/// A site registered with these alert settings.
pub async fn site(pool: &PgPool, n: u32, alerts: SiteAlerts) -> i32 {
    let mut settings = SiteSettings::new(&format!("http://127.0.0.1:9/site-{n}"));
    settings.alerts = alerts;
    let site = NewSite::from_settings(settings).expect("valid site");
    sitemon_core::db::insert_site(pool, &site)
        .await
        .expect("site added")
}

/// Webhook channels named `names`, pointing at `url`.
pub async fn webhooks(pool: &PgPool, url: &str, names: &[&str]) {
    for name in names {
        let settings = ChannelSettings::webhook(name, url, None).expect("valid");
        admin::add_channel(pool, name, &settings)
            .await
            .expect("channel added");
    }
}

/// One outbox row, as the tests compare them.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Row {
    pub kind: String,
    pub channel: String,
    pub incident_id: Option<Uuid>,
    pub website_id: Option<i32>,
    pub id: Uuid,
}

/// Every outbox row, in a stable order.
pub async fn outbox(pool: &PgPool) -> Vec<Row> {
    sqlx::query_as(
        "SELECT kind, channel, incident_id, website_id, id FROM alert_outbox
         ORDER BY created_at, incident_id, kind, channel, id",
    )
    .fetch_all(pool)
    .await
    .expect("outbox")
}

/// (kind, channel) of every outbox row of `site`, sorted.
pub async fn kinds(pool: &PgPool, site: i32) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = outbox(pool)
        .await
        .into_iter()
        .filter(|r| r.website_id == Some(site))
        .map(|r| (r.kind, r.channel))
        .collect();
    rows.sort();
    rows
}

/// Owned (kind, channel) pairs.
pub fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<_> = list
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    v.sort();
    v
}
