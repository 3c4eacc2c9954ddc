//! The alert processor's throughput against the real PostgreSQL: preloaded check events fed
//! to `Processor::apply` in batches of 5,000 (the sync's default batch), one transaction
//! each, as the alert consumer will. No Kafka: this is the processor's share of an alert
//! worker's work, to set against the sync's events/s in BENCHMARKS.md.
//!
//! `EVENTS` (default 200,000) events over `SITES` (default 1,000) sites from one location,
//! in time order; a healthy fleet (one check in fifty times out) where one site in fifty
//! goes down for 10 checks in every 60, so incidents open and resolve and the outbox fills.
//!
//! Run with `scripts/bench-alert`.

use std::time::{Duration, Instant};

use sitemon_alert::{ChannelSettings, Policy, Processor, admin};
use sitemon_testkit::TestDb;
use sitemon_testkit::events::fleet_event;

const BATCH: usize = 5_000;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let total = env("EVENTS", 200_000);
    let sites = env("SITES", 1_000);
    let rounds = total.div_ceil(sites);
    let db = TestDb::migrated().await;
    let ids: Vec<i32> = sqlx::query_scalar(
        "INSERT INTO websites (url)
         SELECT 'https://site-' || g || '.example/' FROM generate_series(1, $1) g
         RETURNING id",
    )
    .bind(i32::try_from(sites).expect("SITES fits in i32"))
    .fetch_all(&db.pool)
    .await
    .expect("sites");
    let hook = ChannelSettings::webhook("hook", "http://127.0.0.1:9/hook", None).expect("valid");
    admin::add_channel(&db.pool, "hook", &hook)
        .await
        .expect("channel");

    // Oldest first: fleet_event(site, n) is checked n seconds ago.
    let mut events = Vec::with_capacity(rounds * sites);
    for round in (0..rounds).rev() {
        let n = u32::try_from(round).expect("rounds fit in u32");
        for &site in &ids {
            let mut event = fleet_event(site, n);
            if site % 50 == 0 && round % 60 < 10 {
                event.up = false;
            }
            events.push(event);
        }
    }
    events.truncate(total);

    let processor = Processor::new(Policy {
        reminder_every: Duration::ZERO,
        ..Policy::default()
    });
    let (mut opened, mut resolved, mut notifications) = (0, 0, 0);
    let started = Instant::now();
    for batch in events.chunks(BATCH) {
        let mut tx = db.pool.begin().await.expect("begin");
        let applied = processor.apply(&mut tx, batch).await.expect("apply");
        tx.commit().await.expect("commit");
        opened += applied.opened;
        resolved += applied.resolved;
        notifications += applied.notifications;
    }
    let elapsed = started.elapsed();
    let states: i64 = sqlx::query_scalar("SELECT count(*) FROM alert_location_state")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(
        states,
        i64::try_from(sites.min(total)).expect("fits"),
        "one state per site"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM alert_outbox")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(rows, i64::try_from(notifications).expect("fits"));
    println!(
        "events {} sites {} batches of {BATCH}: {:.2} s, {:.0} events/s; incidents opened {opened}, resolved {resolved}, outbox rows {notifications}",
        events.len(),
        sites,
        elapsed.as_secs_f64(),
        events.len() as f64 / elapsed.as_secs_f64()
    );
    db.drop_database().await;
}
