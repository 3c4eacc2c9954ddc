//! A stale lease can never store a batch: a sync worker whose partition lease was taken while
//! it stalled has its next commit refused, and nothing it read is stored twice.
//!
//! The stall is made deterministic with PostgreSQL itself: the test holds a row lock on the
//! batch's site, so worker A's writer waits inside its transaction with the batch in hand.
//! Meanwhile A's lease connection is terminated (as a dead network or a killed backend would
//! end it) and worker B takes the partition and reads the same events. A never looks at its
//! lease connection by itself during the test (it rebalances once an hour), so the only guard
//! left between its stale batch and the table is the writer's own lease check in the
//! transaction. Once the row lock goes, A's transaction must roll back; B then stores every
//! event, once.

mod common;

use std::time::Duration;

use common::{Fixture, event};
use sitemon_core::CheckEvent;
use sitemon_core::metrics::Registry;
use sitemon_sync::lease_group;

/// The value of the series written exactly as `series` in `registry`, if it is there.
fn series(registry: &Registry, series: &str) -> Option<f64> {
    registry
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The backend pid of the lease connection holding partition 0 of the fixture's topic.
async fn holder_of_partition_0(fixture: &Fixture) -> Option<i32> {
    sitemon_consume::lease::holders(&fixture.db.pool, &lease_group(&fixture.topic))
        .await
        .expect("the lease holders")
        .get(&0)
        .copied()
}

/// Polls `condition` every 50 ms for at most `within`; fails naming `what`.
async fn wait_until<F, Fut>(what: &str, within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_lease_was_taken_while_it_stalled_stores_nothing() {
    const EVENTS: u32 = 7;
    let fixture = Fixture::new(1).await;
    let site = fixture.sites(1).await[0];
    let events: Vec<CheckEvent> = (0..EVENTS).map(|n| event(site, n)).collect();
    fixture.produce_events(&events).await;

    // The stall: the site's row locked, so that a batch's `FOR KEY SHARE` waits.
    let mut stall = fixture.db.pool.begin().await.expect("begin");
    sqlx::query("SELECT id FROM websites WHERE id = $1 FOR UPDATE")
        .bind(site)
        .execute(&mut *stall)
        .await
        .expect("locks the site's row");

    // Worker A: takes the partition at once, then rebalances only once an hour.
    let mut config = fixture.config();
    config.consumer.rebalance_every = Duration::from_secs(3600);
    let a_metrics = config.consumer.metrics.clone();
    let a = fixture.start(config);
    wait_until(
        "worker A's batch waiting for the site's row lock",
        Duration::from_secs(60),
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'
                   AND query LIKE '%FOR KEY SHARE%'",
            )
            .fetch_one(&fixture.db.pool)
            .await
            .expect("pg_stat_activity")
                == 1
        },
    )
    .await;
    let a_lease = holder_of_partition_0(&fixture)
        .await
        .expect("worker A holds partition 0");

    // A's lease connection dies; the lease is free.
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(a_lease)
        .fetch_one(&fixture.db.pool)
        .await
        .expect("pg_terminate_backend");
    assert!(terminated, "A's lease backend {a_lease} terminated");
    wait_until(
        "A's lease released by its terminated connection",
        Duration::from_secs(30),
        || async { holder_of_partition_0(&fixture).await != Some(a_lease) },
    )
    .await;

    // Worker B takes the partition and reads the same events; its batch waits a minute.
    let mut config = fixture.config();
    config.consumer.rebalance_every = Duration::from_millis(500);
    config.consumer.batch_size = 1_000;
    config.consumer.batch_wait = Duration::from_secs(60);
    let b_metrics = config.consumer.metrics.clone();
    let b = fixture.start(config);
    wait_until(
        "worker B holding partition 0",
        Duration::from_secs(30),
        || async { holder_of_partition_0(&fixture).await.is_some() },
    )
    .await;
    let b_lease = holder_of_partition_0(&fixture).await;
    assert_ne!(b_lease, Some(a_lease));
    let lag = format!(
        "sitemon_sync_partition_lag{{topic=\"{}\",partition=\"0\"}}",
        fixture.topic
    );
    wait_until(
        "worker B fetching the events",
        Duration::from_secs(30),
        || async { series(&b_metrics, &lag) == Some(f64::from(EVENTS)) },
    )
    .await;

    // The stall ends: A's transaction goes on with its stale batch.
    stall.commit().await.expect("releases the row lock");
    let held = format!("sitemon_sync_leases_held{{topic=\"{}\"}}", fixture.topic);
    let stored = || async { fixture.count("website_status").await };
    wait_until(
        "worker A's stale batch refused (its session ending) or stored",
        Duration::from_secs(60),
        || async { series(&a_metrics, &held) == Some(0.0) || stored().await > 0 },
    )
    .await;
    // A moment for a commit that raced the session's end to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stored().await,
        0,
        "worker A stored its batch after its lease was taken"
    );
    let batches = "sitemon_sync_batches_total";
    assert_eq!(
        series(&a_metrics, batches),
        Some(0.0),
        "A committed a batch"
    );
    assert_eq!(holder_of_partition_0(&fixture).await, b_lease, "B holds on");

    a.stop().await;
    // B stores the batch in hand on shutdown: every event once, none of them counted twice.
    b.stop().await;
    fixture
        .assert_stored_exactly_once(i64::from(EVENTS), 0)
        .await;
    assert_eq!(
        series(&b_metrics, "sitemon_sync_events_total"),
        Some(f64::from(EVENTS))
    );
    for (worker, metrics) in [("A", &a_metrics), ("B", &b_metrics)] {
        assert_eq!(
            series(metrics, "sitemon_sync_duplicates_total"),
            Some(0.0),
            "worker {worker} met a duplicate"
        );
    }
    assert_eq!(series(&a_metrics, "sitemon_sync_events_total"), Some(0.0));
    fixture.finish().await;
}
