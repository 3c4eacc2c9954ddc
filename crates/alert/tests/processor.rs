//! The processor against the real PostgreSQL: events fed directly, one transaction per
//! batch as the consumer will, and the state, incidents and outbox read back.

mod support;

use std::time::Duration;

use sitemon_alert::admin;
use sitemon_alert::{Policy, Processor};
use sitemon_core::SiteAlerts;
use sitemon_testkit::TestDb;
use support::*;
use time::OffsetDateTime;
use uuid::Uuid;

const HOOK: &str = "http://127.0.0.1:9/hook";

fn processor() -> Processor {
    Processor::new(Policy {
        reminder_every: Duration::ZERO,
        ..Policy::default()
    })
}

fn no_overrides() -> SiteAlerts {
    SiteAlerts::default()
}

#[tokio::test]
async fn down_then_up_makes_one_down_and_one_resolved_per_channel() {
    let db = TestDb::migrated().await;
    webhooks(&db.pool, HOOK, &["ops", "team"]).await;
    let site = site(&db.pool, 1, no_overrides()).await;
    let other = site_with_channels(&db, 2, &["team"]).await;
    let processor = processor();
    let start = an_hour_ago();

    // Flapping below the thresholds first: nothing.
    let flapping = pattern(site, "eu", start, "uddudduddu");
    apply_each(&db.pool, &processor, &flapping).await;
    assert_eq!(outbox(&db.pool).await, [], "flapping opened something");

    // Then down (the third failure crosses) and up (the second success).
    let events = pattern(site, "eu", start + time::Duration::minutes(5), "ddddduduu");
    apply_each(&db.pool, &processor, &events).await;
    let crossing = &events[2];
    let recovery = &events[8];
    let rows = outbox(&db.pool).await;
    assert_eq!(
        kinds(&db.pool, site).await,
        pairs(&[
            ("down", "ops"),
            ("down", "team"),
            ("resolved", "ops"),
            ("resolved", "team")
        ])
    );
    for row in &rows {
        assert_eq!(row.incident_id, Some(crossing.check_id), "{row:?}");
    }
    let (opened_at, resolved_at, first_error, locations): (
        OffsetDateTime,
        Option<OffsetDateTime>,
        Option<String>,
        Vec<String>,
    ) = sqlx::query_as(
        "SELECT opened_at, resolved_at, first_error, locations FROM alert_incidents WHERE id = $1",
    )
    .bind(crossing.check_id)
    .fetch_one(&db.pool)
    .await
    .expect("the incident");
    assert_eq!(opened_at, crossing.checked_at);
    assert_eq!(resolved_at, Some(recovery.checked_at));
    assert_eq!(locations, ["eu"]);
    let first = events[0].error.as_ref().expect("a failure");
    assert_eq!(first_error, Some(format!("connect: {}", first.message)));

    // A site with a channel list notifies only those channels.
    apply_each(&db.pool, &processor, &pattern(other, "eu", start, "ddduu")).await;
    assert_eq!(
        kinds(&db.pool, other).await,
        pairs(&[("down", "team"), ("resolved", "team")])
    );
    db.drop_database().await;
}

async fn site_with_channels(db: &TestDb, n: u32, channels: &[&str]) -> i32 {
    let alerts = SiteAlerts {
        channels: Some(channels.iter().map(|c| (*c).to_owned()).collect()),
        ..SiteAlerts::default()
    };
    site(&db.pool, n, alerts).await
}

#[tokio::test]
async fn min_locations_two_opens_only_when_both_locations_are_down() {
    let db = TestDb::migrated().await;
    webhooks(&db.pool, HOOK, &["ops"]).await;
    let alerts = SiteAlerts {
        min_locations: Some(2),
        ..SiteAlerts::default()
    };
    let site = site(&db.pool, 1, alerts).await;
    let processor = processor();
    let start = an_hour_ago();

    // eu fails for good, us stays up: one location of two, nothing opens.
    let mut events = pattern(site, "eu", start, "dddddd");
    events.extend(pattern(
        site,
        "us",
        start + time::Duration::seconds(5),
        "uuuuuu",
    ));
    apply(&db.pool, &processor, &events).await;
    assert_eq!(outbox(&db.pool).await, []);
    let down: Vec<(String, bool)> =
        sqlx::query_as("SELECT location, down FROM alert_location_state ORDER BY location")
            .fetch_all(&db.pool)
            .await
            .expect("state");
    assert_eq!(down, [("eu".to_owned(), true), ("us".to_owned(), false)]);

    // us fails too: the third us failure opens the incident, naming both locations.
    let later = start + time::Duration::minutes(1);
    let mut events = pattern(site, "eu", later, "ddd");
    let us = pattern(site, "us", later + time::Duration::seconds(5), "ddd");
    events.extend(us.clone());
    apply(&db.pool, &processor, &events).await;
    assert_eq!(kinds(&db.pool, site).await, pairs(&[("down", "ops")]));
    let locations: Vec<String> =
        sqlx::query_scalar("SELECT locations FROM alert_incidents WHERE id = $1")
            .bind(us[2].check_id)
            .fetch_one(&db.pool)
            .await
            .expect("the incident opened by the third us failure");
    assert_eq!(locations, ["eu", "us"]);

    // One location back: fewer than two are down, so it resolves.
    let back = pattern(site, "us", later + time::Duration::minutes(1), "uu");
    apply(&db.pool, &processor, &back).await;
    assert_eq!(
        kinds(&db.pool, site).await,
        pairs(&[("down", "ops"), ("resolved", "ops")])
    );
    db.drop_database().await;
}

#[tokio::test]
async fn a_maintenance_window_opens_nothing_and_the_site_still_down_after_it_opens() {
    let db = TestDb::migrated().await;
    webhooks(&db.pool, HOOK, &["ops"]).await;
    let site = site(&db.pool, 1, no_overrides()).await;
    let bystander = support::site(&db.pool, 2, no_overrides()).await;
    let start = an_hour_ago();
    let window_end = start + time::Duration::minutes(10);
    admin::add_maintenance(
        &db.pool,
        Some(site.into()),
        start - time::Duration::minutes(1),
        window_end,
    )
    .await
    .expect("window added");
    let processor = processor();

    // Down for five minutes inside the window: state moves, nothing opens.
    let inside = pattern(site, "eu", start, &"d".repeat(30));
    apply(&db.pool, &processor, &inside).await;
    assert_eq!(outbox(&db.pool).await, []);
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM alert_incidents")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(open, 0);

    // Another site is not covered by this site's window.
    apply(
        &db.pool,
        &processor,
        &pattern(bystander, "eu", start, "ddd"),
    )
    .await;
    assert_eq!(kinds(&db.pool, bystander).await, pairs(&[("down", "ops")]));

    // Still failing once the window is over: the first check after it opens the incident.
    let after = pattern(site, "eu", window_end, "dd");
    apply(&db.pool, &processor, &after).await;
    let rows: Vec<_> = outbox(&db.pool)
        .await
        .into_iter()
        .filter(|r| r.website_id == Some(site))
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].incident_id, Some(after[0].check_id));

    // A window for every site (no --site) holds back the bystander's next incident too.
    admin::add_maintenance(
        &db.pool,
        None,
        window_end,
        window_end + time::Duration::minutes(10),
    )
    .await
    .expect("window added");
    let recovered = pattern(bystander, "eu", window_end, "uu");
    let fails_again = pattern(
        bystander,
        "eu",
        window_end + time::Duration::minutes(1),
        "ddd",
    );
    apply(&db.pool, &processor, &[recovered, fails_again].concat()).await;
    assert_eq!(
        kinds(&db.pool, bystander).await,
        pairs(&[("down", "ops"), ("resolved", "ops")])
    );
    db.drop_database().await;
}

#[tokio::test]
async fn reminders_every_reminder_every_while_open_each_with_its_own_id() {
    let db = TestDb::migrated().await;
    webhooks(&db.pool, HOOK, &["ops", "team"]).await;
    let alerts = SiteAlerts {
        reminder_every: Some(Duration::from_secs(60)),
        ..SiteAlerts::default()
    };
    let site = site(&db.pool, 1, alerts).await;
    let quiet = support::site(&db.pool, 2, no_overrides()).await;
    let processor = processor();
    let start = an_hour_ago();

    // Opened by the third check (t = 20 s); checks every 10 s up to t = 170 s: reminders
    // fall due at 80 s and 140 s.
    apply_each(
        &db.pool,
        &processor,
        &pattern(site, "eu", start, &"d".repeat(18)),
    )
    .await;
    let reminders: Vec<(Uuid, i32)> = sqlx::query_as(
        "SELECT id, (payload->>'reminder')::int FROM alert_outbox
         WHERE kind = 'reminder' ORDER BY 2, channel",
    )
    .fetch_all(&db.pool)
    .await
    .expect("reminders");
    assert_eq!(
        reminders.iter().map(|r| r.1).collect::<Vec<_>>(),
        [1, 1, 2, 2],
        "two reminders, on each channel"
    );
    let mut ids: Vec<Uuid> = reminders.iter().map(|r| r.0).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "every reminder has its own id");
    // The default here is 0 (off): the other site gets none.
    apply_each(
        &db.pool,
        &processor,
        &pattern(quiet, "eu", start, &"d".repeat(18)),
    )
    .await;
    assert_eq!(
        kinds(&db.pool, quiet).await,
        pairs(&[("down", "ops"), ("down", "team")])
    );
    db.drop_database().await;
}

#[tokio::test]
async fn replaying_the_same_events_after_a_rollback_or_a_commit_writes_nothing_twice() {
    let db = TestDb::migrated().await;
    webhooks(&db.pool, HOOK, &["ops", "team"]).await;
    let site = site(&db.pool, 1, no_overrides()).await;
    let processor = processor();
    let events = pattern(site, "eu", an_hour_ago(), "uddddduuu");

    // Applied, then rolled back (the consumer crashed before its commit): nothing stays.
    let mut tx = db.pool.begin().await.expect("begin");
    let applied = processor.apply(&mut tx, &events).await.expect("apply");
    assert_eq!(
        (applied.opened, applied.resolved, applied.notifications),
        (1, 1, 4)
    );
    tx.rollback().await.expect("rollback");
    assert_eq!(outbox(&db.pool).await, []);
    let states: i64 = sqlx::query_scalar("SELECT count(*) FROM alert_location_state")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(states, 0);

    // The same events again, committed: the same decisions, the same ids.
    let applied = apply(&db.pool, &processor, &events).await;
    assert_eq!(
        (applied.opened, applied.resolved, applied.notifications),
        (1, 1, 4)
    );
    let first = outbox(&db.pool).await;
    assert_eq!(first.len(), 4);

    // Delivered again after the commit (a consumer that replays): nothing new, in one batch
    // or one by one, shuffled.
    let applied = apply(&db.pool, &processor, &events).await;
    assert_eq!(
        (applied.opened, applied.resolved, applied.notifications),
        (0, 0, 0)
    );
    let mut reversed = events.clone();
    reversed.reverse();
    apply_each(&db.pool, &processor, &reversed).await;
    assert_eq!(outbox(&db.pool).await, first);
    let incidents: i64 = sqlx::query_scalar("SELECT count(*) FROM alert_incidents")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(incidents, 1);

    // A batch out of order is taken in checked_at order.
    let other = support::site(&db.pool, 2, no_overrides()).await;
    let mut shuffled = pattern(other, "eu", an_hour_ago(), "ddduu");
    shuffled.reverse();
    let applied = apply(&db.pool, &processor, &shuffled).await;
    assert_eq!((applied.opened, applied.resolved), (1, 1));
    db.drop_database().await;
}

#[tokio::test]
async fn a_certificate_expiring_soon_is_notified_once() {
    let db = TestDb::migrated().await;
    webhooks(&db.pool, HOOK, &["ops"]).await;
    let site = site(&db.pool, 1, no_overrides()).await;
    let processor = processor();
    let start = an_hour_ago();
    let expiry = start + time::Duration::days(3);
    let mut events = pattern(site, "eu", start, "uuu");
    let mut us = pattern(site, "us", start + time::Duration::seconds(5), "uu");
    for event in events.iter_mut().chain(us.iter_mut()) {
        event.tls_cert_not_after = Some(expiry);
    }
    apply(&db.pool, &processor, &events).await;
    apply(&db.pool, &processor, &us).await;
    let rows = outbox(&db.pool).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].kind, "cert_expiry");
    assert_eq!(rows[0].incident_id, None);
    let not_after: String =
        sqlx::query_scalar("SELECT payload->>'cert_not_after' FROM alert_outbox")
            .fetch_one(&db.pool)
            .await
            .expect("payload");
    assert!(
        not_after.starts_with(&expiry.date().to_string()),
        "{not_after}"
    );

    // A certificate 30 days out is not within the default 14.
    let mut later = pattern(site, "eu", start + time::Duration::minutes(1), "u");
    later[0].tls_cert_not_after = Some(start + time::Duration::days(30));
    apply(&db.pool, &processor, &later).await;
    assert_eq!(outbox(&db.pool).await.len(), 1);
    db.drop_database().await;
}

#[tokio::test]
async fn events_of_a_removed_site_are_left_out_and_the_rest_applied() {
    let db = TestDb::migrated().await;
    webhooks(&db.pool, HOOK, &["ops"]).await;
    let site = site(&db.pool, 1, no_overrides()).await;
    let processor = processor();
    let mut events = pattern(site, "eu", an_hour_ago(), "ddd");
    events.extend(pattern(999_999, "eu", an_hour_ago(), "dddd"));
    let applied = apply(&db.pool, &processor, &events).await;
    assert_eq!(applied.unknown_sites, 4);
    assert_eq!(applied.opened, 1);
    assert_eq!(kinds(&db.pool, site).await, pairs(&[("down", "ops")]));
    db.drop_database().await;
}

/// Down events dated an hour ahead (a checker with a wrong clock) open nothing and leave no
/// state; the real events after them are applied as if they had never come.
#[tokio::test]
async fn events_dated_in_the_future_open_nothing_and_block_nothing() {
    let db = TestDb::migrated().await;
    webhooks(&db.pool, HOOK, &["ops"]).await;
    let site = site(&db.pool, 1, no_overrides()).await;
    let processor = processor();
    let ahead = an_hour_ago() + time::Duration::hours(2);
    let future = pattern(site, "eu", ahead, "dddd");
    let applied = apply(&db.pool, &processor, &future).await;
    assert_eq!((applied.future, applied.opened), (4, 0), "{applied:?}");
    assert_eq!(outbox(&db.pool).await, [], "a future event notified");
    let states: i64 =
        sqlx::query_scalar("SELECT count(*) FROM alert_location_state WHERE website_id = $1")
            .bind(site)
            .fetch_one(&db.pool)
            .await
            .expect("count");
    assert_eq!(states, 0, "a future event changed the state");

    // The real checks: the third failure opens the incident, the second success resolves it.
    let real = pattern(site, "eu", an_hour_ago(), "ddduu");
    let mut mixed = real.clone();
    mixed.extend(pattern(site, "eu", ahead, "u"));
    let applied = apply(&db.pool, &processor, &mixed).await;
    assert_eq!(
        (applied.future, applied.opened, applied.resolved),
        (1, 1, 1),
        "{applied:?}"
    );
    assert_eq!(
        kinds(&db.pool, site).await,
        pairs(&[("down", "ops"), ("resolved", "ops")])
    );
    let opened: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM alert_incidents WHERE website_id = $1")
            .bind(site)
            .fetch_all(&db.pool)
            .await
            .expect("incidents");
    assert_eq!(opened, [real[2].check_id]);
    db.drop_database().await;
}
