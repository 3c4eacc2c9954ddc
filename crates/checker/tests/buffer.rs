//! The bounded event buffer against the real broker: while Kafka takes no events, a full
//! buffer drops events, counts them in `sitemon_events_dropped_total` and says so in the log.
//!
//! Which events go (the oldest, across partitions) is the unit test
//! `a_full_buffer_drops_the_oldest_across_partitions` in `src/producer.rs`; this test proves
//! the counting and the logging end to end. A test binary of its own: it installs the
//! process's log subscriber to read what the checker logs.
//!
//! Kafka is made to take no events by deleting the test's own topic under the running
//! checker: a checker pointed at a closed port never starts (it must reach Kafka to start),
//! and the shared broker is never stopped by a test that runs beside others.

mod support;

use std::time::Duration;

use sitemon_testkit::http::TestServer;
use sitemon_testkit::{TestDb, kafka_config, random_topic};
use support::{Captured, add_site, checker_config, start_checker, wait_for_events};

/// The value of `sitemon_events_dropped_total` in the rendered registry.
fn dropped(text: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix("sitemon_events_dropped_total{location=\"test-location\"} ")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no sitemon_events_dropped_total in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_drops_counts_and_logs() {
    const CAPACITY: usize = 2;
    let log = Captured::install();
    let db = TestDb::migrated().await;
    let topic = random_topic();
    let client = sitemon_testkit::topic::create(&topic, 3).await;
    let http = TestServer::http().await;
    for i in 0..6 {
        add_site(&db, &http.url(&format!("/ok?buffer{i}")), 1, None).await;
    }
    let mut config = checker_config(&db, kafka_config(&topic));
    config.buffer_events = CAPACITY;
    config.flush_timeout = Duration::from_secs(2);
    let metrics = config.metrics.clone();
    let checker = start_checker(config);
    let events = wait_for_events(&client, &topic, Duration::from_secs(30), |e| !e.is_empty()).await;
    assert!(
        !events.is_empty(),
        "the checker produced nothing while Kafka was there"
    );
    assert_eq!(
        dropped(&metrics.render()),
        0.0,
        "nothing dropped while Kafka takes events"
    );

    // Kafka takes no events from now on; six sites a second fill two places at once.
    sitemon_core::kafka::delete_topic(&client, &topic)
        .await
        .expect("deletes the topic");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let first = loop {
        let n = dropped(&metrics.render());
        if n > 0.0 {
            break n;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing dropped within 60 s:\n{}",
            metrics.render()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The checks go on, and so do the drops.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let later = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n = dropped(&metrics.render());
        if n >= first + 6.0 {
            break n;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the count stayed at {n} after {first} for 30 s"
        );
    };
    checker.stop_within(Duration::from_secs(60)).await;

    let text = log.text();
    let warning = text
        .lines()
        .find(|line| line.contains("the event buffer is full"))
        .unwrap_or_else(|| panic!("the drops were not logged:\n{text}"));
    assert!(
        warning.contains("WARN")
            && warning.contains("dropped the oldest")
            && warning.contains(&format!("capacity={CAPACITY}")),
        "{warning}"
    );
    tracing::info!(first, later, "dropped");
    db.drop_database().await;
}
