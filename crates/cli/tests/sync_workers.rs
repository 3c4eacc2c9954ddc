//! Several `sitemon sync` processes on one topic: they divide its partitions, take over from
//! one killed with `kill -9`, give a share to one that joins, take at once the partitions of
//! one stopped with SIGTERM, and store every message exactly once.
//!
//! Who holds which partition is read from PostgreSQL's lock table
//! (`sitemon_consume::lease::holders`) and from each worker's `/metrics`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sitemon_testkit::http::free_port;
use sitemon_testkit::{TestDb, random_topic, unique_name};
use support::{Messages, first_value, kcat_produce, wait_with_timeout};

/// What issue 5 asks: a dead worker's partitions, and a newcomer's share, within 15 s.
const TAKEOVER: Duration = Duration::from_secs(15);
/// A worker stopped cleanly hands over "at once": its leases are free the moment it exits,
/// and the others take them on their next rebalance (every 2 s, give or take a quarter,
/// about 2 s measured). The bound is the documented one for every move, 15 s, which a busy
/// machine keeps; that it left the group rather than lost its connection is read in its log.
const HANDOVER: Duration = TAKEOVER;
/// The most the test waits for the workers to catch up: a bound against hanging.
const PATIENCE: Duration = Duration::from_secs(120);

/// The longest a stopped worker may take to exit.
const STOP_PATIENCE: Duration = Duration::from_secs(60);
const PARTITIONS: i32 = 6;

/// One `sitemon sync` process, its metrics address and its log file.
struct Worker {
    name: String,
    child: Child,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Worker {
    fn start(name: &str, db: &TestDb, topic: &str, logs: &std::path::Path) -> Self {
        let metrics = free_port();
        let log = logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = support::sitemon(db, topic)
            .arg("sync")
            .env("RUST_LOG", "info")
            .env("SITEMON_METRICS_ADDR", metrics.to_string())
            .args(["--batch-size", "50", "--batch-wait", "20"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("sitemon sync starts");
        Self {
            name: name.to_owned(),
            child,
            metrics,
            log,
        }
    }

    /// The worker's metrics, or `None` while it is not serving them yet.
    fn scrape(&self) -> Option<String> {
        support::scrape(self.metrics)
    }

    /// `sitemon_sync_leases_held`, once the worker serves its metrics.
    fn leases_held(&self) -> Option<f64> {
        first_value(&self.scrape()?, "sitemon_sync_leases_held{")
    }

    fn terminate(&self) {
        support::terminate(&self.child);
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("--- {} ---\n{}\n", self.name, tail.join("\n"))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A test that failed half-way leaves no process behind, and shows what it logged.
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resource → backend pid of the holder's lease connection.
async fn holders(db: &TestDb, topic: &str) -> BTreeMap<i32, i32> {
    sitemon_consume::lease::holders(&db.pool, &sitemon_sync::lease_group(topic))
        .await
        .expect("pg_locks")
}

/// How many partitions each holder holds, largest first: `[2, 2, 2]` for three workers.
fn shares(holders: &BTreeMap<i32, i32>) -> Vec<usize> {
    let mut per_holder: BTreeMap<i32, usize> = BTreeMap::new();
    for pid in holders.values() {
        *per_holder.entry(*pid).or_default() += 1;
    }
    let mut shares: Vec<usize> = per_holder.into_values().collect();
    shares.sort_unstable_by(|a, b| b.cmp(a));
    shares
}

/// Waits until every partition is held and the shares are `want`; returns how long it took.
async fn wait_for_shares(
    db: &TestDb,
    topic: &str,
    want: &[usize],
    within: Duration,
    workers: &[&Worker],
) -> Duration {
    let started = Instant::now();
    loop {
        let now = holders(db, topic).await;
        if now.len() == PARTITIONS as usize && shares(&now) == want {
            return started.elapsed();
        }
        if started.elapsed() > within {
            let logs: String = workers.iter().map(|w| w.log()).collect();
            panic!(
                "the partitions were not shared {want:?} within {within:?}: holders {now:?}\n{logs}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_divide_the_partitions_take_over_and_store_every_message_once() {
    let db = TestDb::migrated().await;
    let topic = random_topic();
    sitemon_testkit::topic::create(&topic, PARTITIONS).await;
    let sites = db.add_sites(12).await;
    let logs = std::env::temp_dir().join(unique_name("sitemon-sync-workers"));
    std::fs::create_dir_all(&logs).expect("log folder");

    // Events stream in through kcat for the whole test; one round in ten carries a message
    // that can only be a reject.
    let producing = Arc::new(AtomicBool::new(true));
    let producer = std::thread::spawn({
        let (sites, topic, producing) = (sites.clone(), topic.clone(), Arc::clone(&producing));
        move || {
            let mut messages = Messages::new(sites, 40);
            while producing.load(Ordering::Relaxed) {
                let lines: Vec<u8> = messages
                    .next_round()
                    .into_iter()
                    .flat_map(|(_, line)| line)
                    .collect();
                kcat_produce(&topic, None, &lines);
                std::thread::sleep(Duration::from_millis(200));
            }
            (messages.events, messages.poison)
        }
    });

    // Three workers: two partitions each.
    let a = Worker::start("a", &db, &topic, &logs);
    let b = Worker::start("b", &db, &topic, &logs);
    let c = Worker::start("c", &db, &topic, &logs);
    let settled = wait_for_shares(&db, &topic, &[2, 2, 2], TAKEOVER, &[&a, &b, &c]).await;
    eprintln!("three workers settled on 2 partitions each in {settled:?}");
    let deadline = Instant::now() + TAKEOVER;
    while [&a, &b, &c].iter().any(|w| w.leases_held() != Some(2.0)) {
        assert!(
            Instant::now() < deadline,
            "each worker's sitemon_sync_leases_held is 2: {:?}",
            [&a, &b, &c].map(|w| w.leases_held())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // kill -9 one: its two partitions move to the two others.
    let before = holders(&db, &topic).await;
    let mut a = a;
    a.child.kill().expect("SIGKILL");
    wait_with_timeout(&mut a.child, STOP_PATIENCE, "worker a after SIGKILL");
    let took = wait_for_shares(&db, &topic, &[3, 3], TAKEOVER, &[&b, &c]).await;
    eprintln!("the killed worker's partitions moved in {took:?}");
    let after = holders(&db, &topic).await;
    let survivors: BTreeSet<i32> = after.values().copied().collect();
    assert!(
        survivors
            .iter()
            .all(|pid| before.values().any(|p| p == pid)),
        "only the workers that were there hold the partitions: {before:?} then {after:?}"
    );

    // A fourth worker joins (three live again): it gets its share.
    let d = Worker::start("d", &db, &topic, &logs);
    let joined = wait_for_shares(&db, &topic, &[2, 2, 2], TAKEOVER, &[&b, &c, &d]).await;
    eprintln!("a joining worker got its share in {joined:?}");
    let deadline = Instant::now() + TAKEOVER;
    while d.leases_held() != Some(2.0) {
        assert!(
            Instant::now() < deadline,
            "the newcomer reports 2 leases: {:?}\n{}",
            d.leases_held(),
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGTERM one: it stores what it holds, exits 0, and the others take over at once.
    let mut b = b;
    b.terminate();
    let status = wait_with_timeout(&mut b.child, STOP_PATIENCE, "worker b after SIGTERM");
    assert!(status.success(), "exit {status:?}\n{}", b.log());
    let handed = wait_for_shares(&db, &topic, &[3, 3], HANDOVER, &[&c, &d]).await;
    eprintln!("a stopped worker's partitions moved {handed:?} after it exited");
    assert!(
        b.log().contains("left the lease group"),
        "the stopped worker left the group\n{}",
        b.log()
    );

    // Every message is stored once.
    producing.store(false, Ordering::Relaxed);
    let (events, poison) = tokio::time::timeout(
        PATIENCE,
        tokio::task::spawn_blocking(move || producer.join()),
    )
    .await
    .expect("the producer stops within PATIENCE of being told")
    .expect("joined")
    .expect("producer");
    let total = (events + poison) as i64;
    sitemon_testkit::stored::wait_for(&db.pool, &topic, total, PATIENCE).await;
    for worker in [&c, &d] {
        worker.terminate();
    }
    for mut worker in [c, d] {
        let status = wait_with_timeout(&mut worker.child, STOP_PATIENCE, "a worker after SIGTERM");
        assert!(status.success(), "exit {status:?}\n{}", worker.log());
    }
    sitemon_testkit::stored::assert_exactly_once(&db.pool, &topic, events as i64, poison as i64)
        .await;
    eprintln!("{events} events and {poison} rejects stored once each");
    let _ = std::fs::remove_dir_all(&logs);
    db.drop_database().await;
}
