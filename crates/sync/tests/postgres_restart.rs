//! PostgreSQL restarts in the middle of a stream: the sync recovers by itself and stores
//! every event once. In a file of its own: the restart interrupts every other test's
//! database too.

mod common;

use common::{Fixture, event};
use sitemon_testkit::services_script;

/// Starts PostgreSQL again however the test ends, so that no later test finds it down.
struct PostgresRunning;

impl Drop for PostgresRunning {
    fn drop(&mut self) {
        services_script("start-postgres");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_stream_loses_nothing() {
    let _guard = PostgresRunning;
    let fixture = Fixture::new(3).await;
    let sites = fixture.sites(6).await;
    let sync = fixture.start(fixture.config());
    let mut produced = 0;
    for round in 0..30u32 {
        let events: Vec<_> = (0..20u32)
            .map(|n| event(sites[n as usize % sites.len()], round * 20 + n))
            .collect();
        fixture.produce_events(&events).await;
        produced += events.len() as i64;
        if round == 10 {
            tokio::task::spawn_blocking(|| services_script("restart-postgres"))
                .await
                .expect("restart ran");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    fixture.wait_for_stored(produced).await;
    sync.stop().await;
    fixture.assert_stored_exactly_once(produced, 0).await;
    fixture.finish().await;
}
