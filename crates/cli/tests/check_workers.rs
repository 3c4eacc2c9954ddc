//! Several `sitemon check` processes against the real services: the checkers of one location
//! divide the sites (fairly, none twice), take over from one killed with SIGKILL and from one
//! stopped with SIGTERM, locations never share, and `/metrics` agrees with the topic (read
//! with rskafka up to each partition's high watermark).

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sitemon_core::CheckEvent;
use sitemon_testkit::http::TestServer;
use sitemon_testkit::{TestDb, random_topic};
use support::sitemon;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// A running `sitemon check`, killed if the test fails before stopping it.
struct Checker {
    child: Child,
    log: PathBuf,
    metrics: SocketAddr,
}

impl Drop for Checker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

impl Checker {
    /// Starts `sitemon check --location LOCATION` with metrics on a free port, and waits for
    /// the metrics server.
    async fn start(db: &TestDb, topic: &str, location: &str) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", sitemon_testkit::unique_name(topic)));
        let mut command = sitemon(db, topic);
        command
            .args(["check", "--location", location, "--progress-interval", "1"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let mut child = command.spawn().expect("sitemon check starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(rest) = text.split("metrics at http://").nth(1) {
                let addr = rest
                    .split('/')
                    .next()
                    .expect("address")
                    .parse()
                    .expect("address");
                return Self {
                    child,
                    log,
                    metrics: addr,
                };
            }
            if let Some(exit) = child.try_wait().expect("wait") {
                panic!("sitemon check exited ({exit}): {text}");
            }
            assert!(
                Instant::now() < deadline,
                "no metrics address in the log: {text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Sends SIGTERM and waits for a successful exit.
    async fn stop(mut self) -> String {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(exit) = self.child.try_wait().expect("wait") {
                let log = self.log();
                assert!(exit.success(), "exit {exit}: {log}");
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "sitemon check did not stop on SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every series of `/metrics`, `name{labels}` → value.
    async fn scrape(&self) -> Metrics {
        tokio::time::timeout(Duration::from_secs(10), self.scrape_once())
            .await
            .expect("/metrics answers within 10 s")
    }

    async fn scrape_once(&self) -> Metrics {
        let mut stream = tokio::net::TcpStream::connect(self.metrics)
            .await
            .expect("metrics server answers");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: sitemon\r\nConnection: close\r\n\r\n")
            .await
            .expect("request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("response");
        let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        Metrics(
            body.lines()
                .filter(|line| !line.starts_with('#') && !line.is_empty())
                .map(|line| {
                    let (series, value) = line.rsplit_once(' ').expect("series value");
                    (series.to_owned(), value.parse().expect("a number"))
                })
                .collect(),
        )
    }

    async fn leases(&self) -> f64 {
        self.scrape().await.sum("sitemon_checker_leases_held", &[])
    }
}

#[derive(Debug)]
struct Metrics(HashMap<String, f64>);

impl Metrics {
    /// The sum of the series of family `name` whose labels include every one of `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                series.split('{').next() == Some(name)
                    && labels
                        .iter()
                        .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, value)| value)
            .sum()
    }
}

/// Registers `urls` with a 1 s interval; returns their ids.
async fn add_sites(db: &TestDb, urls: &[String]) -> Vec<i32> {
    sqlx::query_scalar(
        "INSERT INTO websites (url, check_interval) SELECT url, 1 FROM unnest($1::text[]) AS url
         RETURNING id",
    )
    .bind(urls)
    .fetch_all(&db.pool)
    .await
    .expect("sites inserted")
}

/// Every event in the topic so far: each partition read up to its high watermark (kcat's
/// `-e` would chase a topic written 200 times a second without ever seeing its end).
async fn events(topic: &str) -> Vec<CheckEvent> {
    tokio::time::timeout(Duration::from_secs(30), read_topic(topic))
        .await
        .expect("the topic is read within 30 s")
}

async fn read_topic(topic: &str) -> Vec<CheckEvent> {
    let client = sitemon_testkit::topic::client(topic).await;
    sitemon_testkit::topic::read(&client, topic)
        .await
        .unwrap_or_default() // not created yet
        .into_iter()
        .map(|record| {
            let value = record.value.expect("a value");
            CheckEvent::from_json(&value).expect("every record is an event")
        })
        .collect()
}

/// The check times of every site, in order, for one location.
fn by_site(events: &[CheckEvent], location: &str) -> HashMap<i32, Vec<OffsetDateTime>> {
    let mut out: HashMap<i32, Vec<OffsetDateTime>> = HashMap::new();
    for event in events.iter().filter(|e| e.location == location) {
        out.entry(event.website_id)
            .or_default()
            .push(event.checked_at);
    }
    for times in out.values_mut() {
        times.sort();
    }
    out
}

/// Waits until `done`, failing after `within`; returns how long it took.
async fn wait_for<F, Fut>(what: &str, within: Duration, mut done: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if done().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The skipped ticks the checkers counted so far, together.
async fn skipped(checkers: &[&Checker]) -> f64 {
    let mut total = 0.0;
    for checker in checkers {
        total += checker
            .scrape()
            .await
            .sum("sitemon_checker_skipped_ticks_total", &[]);
    }
    total
}

/// Asserts what the scheduler promises of a window in the steady state, whatever the
/// machine's load: every site of `ids` checked, none more than once a tick (1 s), and the
/// ticks that went without a check no more than the checkers counted as skipped.
///
/// `skipped` is the checkers' count over the window and a moment after (a tick is counted
/// when the checker finds it missed). Each site may lose one tick at each edge of the window
/// to a check that started late.
fn assert_window(
    location: &str,
    ids: &[i32],
    seen: &HashMap<i32, Vec<OffsetDateTime>>,
    window: std::ops::Range<OffsetDateTime>,
    skipped: f64,
) {
    let seconds = (window.end - window.start).as_seconds_f64();
    let mut missing = 0.0;
    for id in ids {
        let checks = seen.get(id).map_or(0, |times| {
            times.iter().filter(|at| window.contains(*at)).count()
        }) as f64;
        assert!(
            checks >= 1.0,
            "{location}: site {id} not checked in {seconds:.1} s"
        );
        assert!(
            checks <= seconds.ceil() + 1.0,
            "{location}: site {id} checked {checks} times in {seconds:.1} s: a tick checked twice"
        );
        missing += (seconds.floor() - 1.0 - checks).max(0.0);
    }
    assert!(
        missing <= skipped,
        "{location}: {missing} ticks went without a check, only {skipped} counted as skipped"
    );
}

/// Asserts that no tick of a site was checked twice beyond `overlaps` (a hand-over may check
/// one tick from both sides): no more checks than ticks from the first to the last, with a
/// tick of slack for a late first check.
fn assert_no_tick_twice(id: i32, times: &[OffsetDateTime], overlaps: usize) {
    let (Some(first), Some(last)) = (times.first(), times.last()) else {
        return;
    };
    let ticks = (*last - *first).as_seconds_f64().round() as usize;
    assert!(
        times.len() - 1 <= ticks + 1 + overlaps,
        "site {id}: {} checks after the first in {ticks} ticks: checked twice in one interval",
        times.len() - 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_checkers_divide_the_sites_and_one_takes_over_from_the_other_killed() {
    let db = TestDb::migrated().await;
    let topic = random_topic();
    let server = TestServer::http().await;
    let urls: Vec<String> = (1..=200)
        .map(|i| server.url(&format!("/ok?site={i}")))
        .collect();
    let ids = add_sites(&db, &urls).await;

    let a = Checker::start(&db, &topic, "here").await;
    wait_for(
        "a alone holds every bucket",
        Duration::from_secs(30),
        || async { a.leases().await == 256.0 },
    )
    .await;
    let b = Checker::start(&db, &topic, "here").await;
    let joined = wait_for("b takes its share", Duration::from_secs(15), || async {
        a.leases().await == 128.0 && b.leases().await == 128.0
    })
    .await;
    println!("b held its share {joined:?} after its metrics server was up");
    let (ma, mb) = (a.scrape().await, b.scrape().await);
    let (sa, sb) = (
        ma.sum("sitemon_checker_sites", &[]),
        mb.sum("sitemon_checker_sites", &[]),
    );
    assert_eq!(sa + sb, 200.0, "every site is scheduled once");
    assert!((60.0..=140.0).contains(&sa), "a schedules {sa} of 200");

    // A window in the steady state: every site once a second, by one of the two.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let skipped_before = skipped(&[&a, &b]).await;
    let window_start = OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let window_end = OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let skipped_in_window = skipped(&[&a, &b]).await - skipped_before;
    let (ma, mb) = (a.scrape().await, b.scrape().await);
    assert!(ma.sum("sitemon_checks_total", &[]) > 0.0, "a checks");
    assert!(mb.sum("sitemon_checks_total", &[]) > 0.0, "b checks");

    // SIGKILL: b must check all 200 again within 15 s.
    a.signal("-KILL");
    let killed_at = OffsetDateTime::now_utc();
    let took = wait_for(
        "b checks every site after a died",
        Duration::from_secs(15),
        || async {
            let seen = by_site(&events(&topic).await, "here");
            ids.iter().all(|id| {
                seen.get(id)
                    .is_some_and(|t| t.iter().any(|at| *at > killed_at))
            })
        },
    )
    .await;
    assert_eq!(b.leases().await, 256.0);
    let all = by_site(&events(&topic).await, "here");
    let takeover = ids
        .iter()
        .filter_map(|id| all[id].iter().find(|at| **at > killed_at))
        .max()
        .map(|at| *at - killed_at);
    println!("after the kill, b checked all 200 within {took:?} (last first check {takeover:?})");
    b.stop().await;

    let all = by_site(&events(&topic).await, "here");
    assert_window(
        "here",
        &ids,
        &all,
        window_start..window_end,
        skipped_in_window,
    );
    println!("skipped ticks in the window: {skipped_in_window}");
    // Hand-overs (b joining, a dying) check no site twice beyond one overlap.
    for id in &ids {
        assert_no_tick_twice(*id, &all[id], 1);
    }
    drop(a);
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locations_never_share_and_a_stopped_checker_hands_over_at_once() {
    let db = TestDb::migrated().await;
    let topic = random_topic();
    let server = TestServer::http().await;
    let urls: Vec<String> = (1..=50)
        .map(|i| server.url(&format!("/ok?site={i}")))
        .collect();
    let ids = add_sites(&db, &urls).await;

    let eu1 = Checker::start(&db, &topic, "eu").await;
    wait_for(
        "eu1 holds every bucket",
        Duration::from_secs(30),
        || async { eu1.leases().await == 256.0 },
    )
    .await;
    let eu2 = Checker::start(&db, &topic, "eu").await;
    let us = Checker::start(&db, &topic, "us").await;
    wait_for(
        "eu shares, us holds everything",
        Duration::from_secs(15),
        || async {
            eu1.leases().await == 128.0 && eu2.leases().await == 128.0 && us.leases().await == 256.0
        },
    )
    .await;

    tokio::time::sleep(Duration::from_secs(2)).await;
    let (eu_before, us_before) = (skipped(&[&eu1, &eu2]).await, skipped(&[&us]).await);
    let window_start = OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let window_end = OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let skipped_in_window = [
        ("eu", skipped(&[&eu1, &eu2]).await - eu_before),
        ("us", skipped(&[&us]).await - us_before),
    ];
    let events = events(&topic).await;
    for (location, skipped) in skipped_in_window {
        let seen = by_site(&events, location);
        assert_window(location, &ids, &seen, window_start..window_end, skipped);
    }

    // SIGTERM: eu2 hands its buckets over after its checks in flight.
    let stopped = Instant::now();
    let log = eu2.stop().await;
    assert!(log.contains("left the checkers of this location"), "{log}");
    let took = wait_for(
        "eu1 takes eu2's buckets",
        Duration::from_secs(15),
        || async { eu1.leases().await == 256.0 },
    )
    .await;
    println!(
        "eu1 held every bucket {took:?} after eu2 exited ({:?} after SIGTERM)",
        stopped.elapsed()
    );
    let stopped_at = OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = by_site(&events_after(&topic, "eu", stopped_at).await, "eu");
    assert_eq!(
        seen.len(),
        ids.len(),
        "eu checks every site after the hand-over"
    );

    eu1.stop().await;
    us.stop().await;
    db.drop_database().await;
}

async fn events_after(topic: &str, location: &str, after: OffsetDateTime) -> Vec<CheckEvent> {
    events(topic)
        .await
        .into_iter()
        .filter(|e| e.location == location && e.checked_at > after)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_agree_with_the_events_in_the_topic() {
    let db = TestDb::migrated().await;
    let topic = random_topic();
    let server = TestServer::http().await;
    let urls = vec![
        server.url("/ok?up=1"),
        server.url("/ok?up=2"),
        server.url("/500"),
        "http://127.0.0.1:1/refused".to_owned(),
        "http://nowhere.invalid/".to_owned(),
    ];
    let ids = add_sites(&db, &urls).await;
    let checker = Checker::start(&db, &topic, "metrics").await;
    wait_for(
        "three checks of every site",
        Duration::from_secs(30),
        || async {
            let seen = by_site(&events(&topic).await, "metrics");
            ids.iter()
                .all(|id| seen.get(id).is_some_and(|t| t.len() >= 3))
        },
    )
    .await;

    // No more checks: then every counter is final and every event is in the topic.
    sqlx::query("DELETE FROM websites")
        .execute(&db.pool)
        .await
        .expect("sites deleted");
    let last = std::cell::Cell::new(-1.0);
    wait_for("the counters settle", Duration::from_secs(30), || async {
        let metrics = checker.scrape().await;
        let checks = metrics.sum("sitemon_checks_total", &[]);
        let settled = checks == last.replace(checks);
        settled
            && metrics.sum("sitemon_checker_sites", &[]) == 0.0
            && metrics.sum("sitemon_events_buffered", &[]) == 0.0
    })
    .await;
    let metrics = checker.scrape().await;
    let events: Vec<_> = events(&topic).await;
    let total = events.len() as f64;
    assert_eq!(
        metrics.sum("sitemon_checks_total", &[("location", "metrics")]),
        total
    );
    assert_eq!(metrics.sum("sitemon_events_produced_total", &[]), total);
    assert_eq!(
        metrics.sum("sitemon_check_duration_seconds_count", &[]),
        total
    );
    assert_eq!(metrics.sum("sitemon_events_dropped_total", &[]), 0.0);
    assert_eq!(metrics.sum("sitemon_checker_leases_held", &[]), 256.0);
    let mut expected: HashMap<(&str, &str), f64> = HashMap::new();
    for event in &events {
        let result = if event.up { "up" } else { "down" };
        let kind = event.error.as_ref().map_or("none", |e| e.kind.as_str());
        *expected.entry((result, kind)).or_default() += 1.0;
    }
    assert!(expected.contains_key(&("up", "none")), "{expected:?}");
    assert!(expected.contains_key(&("down", "none")), "{expected:?}");
    assert!(expected.contains_key(&("down", "connect")), "{expected:?}");
    for ((result, kind), count) in &expected {
        assert_eq!(
            metrics.sum(
                "sitemon_checks_total",
                &[("result", result), ("error_kind", kind)]
            ),
            *count,
            "{result} {kind}"
        );
    }
    checker.stop().await;
    db.drop_database().await;
}
