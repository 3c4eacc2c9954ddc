//! The broker stopped for 20 s under a running sync, then started again: the sync rides it
//! out by itself and stores every event exactly once, those produced before the outage and
//! after it.
//!
//! This stops the shared test broker, so it has a test binary of its own (cargo runs test
//! binaries one after the other) and a guard that starts the broker again even when an
//! assertion fails.

mod common;

use std::time::Duration;

use common::{Fixture, events};
use sitemon_testkit::{Outage, Service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_rides_out_a_broker_outage_and_stores_everything_once() {
    let mut fixture = Fixture::new(2).await;
    let sites = fixture.sites(4).await;
    fixture.produce_events(&events(&sites, 0, 5)).await;
    let sync = fixture.start(fixture.config());
    fixture.wait_for_stored(20).await;

    let mut outage = Outage::begin(Service::Kafka);
    tokio::time::sleep(Duration::from_secs(20)).await;
    outage.end();

    // The sync was not restarted: it reconnects on its own and reads what came after.
    fixture.client = sitemon_testkit::topic::client(&fixture.topic).await;
    fixture.produce_events(&events(&sites, 100, 5)).await;
    fixture.wait_for_stored(40).await;
    sync.stop().await;
    fixture.assert_stored_exactly_once(40, 0).await;
    fixture.finish().await;
}
