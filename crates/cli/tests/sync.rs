//! `sitemon sync` as a process: crash safety under `kill -9`, a clean exit on SIGTERM, and
//! one clear line when it cannot start, and where `--start latest` begins.

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sitemon_testkit::events::event_json;
use sitemon_testkit::{TestDb, random_topic};
use support::{
    Messages, count, kcat_produce, random, run, scrape, series_value, terminate, wait_with_timeout,
};

/// The most the test waits for the sync to catch up: a bound against hanging.
const PATIENCE: Duration = Duration::from_secs(120);

/// The longest a stopped process may take to exit: the drain and flush are bounded well below.
const STOP_PATIENCE: Duration = Duration::from_secs(60);

/// `sitemon sync` on the test's database and topic, in small batches, logging warnings.
fn sitemon_sync(db: &TestDb, topic: &str) -> Command {
    let mut command = support::sitemon(db, topic);
    command
        .arg("sync")
        .env("RUST_LOG", "warn")
        .args(["--batch-size", "40", "--batch-wait", "20"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Waits until the child's stderr has a line containing `needle` (its signal handler is
/// installed by then), and keeps reading; the thread returns everything read.
fn wait_for_line(child: &mut Child, needle: &'static str) -> std::thread::JoinHandle<String> {
    use std::io::BufRead as _;
    let stderr = child.stderr.take().expect("piped stderr");
    let (seen, wait) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains(needle) {
                let _ = seen.send(());
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    wait.recv_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("the sync never logged {needle:?}"));
    reader
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_and_duplicates_nothing() {
    const PARTITIONS: i32 = 3;
    const ROUNDS: u64 = 60;
    const PER_ROUND: u64 = 60;
    let db = TestDb::migrated().await;
    let topic = random_topic();
    sitemon_testkit::topic::create(&topic, PARTITIONS).await;
    let sites = db.add_sites(6).await;

    // Events stream in (through kcat, a real producer) while the sync is killed and
    // restarted; one in ten rounds carries a message that can only be a reject.
    let producer = std::thread::spawn({
        let sites = sites.clone();
        let topic = topic.clone();
        move || {
            let mut messages = Messages::new(sites, PER_ROUND);
            for _ in 0..ROUNDS {
                let mut by_partition: BTreeMap<i32, Vec<u8>> = BTreeMap::new();
                for (site, line) in messages.next_round() {
                    by_partition
                        .entry(site % PARTITIONS)
                        .or_default()
                        .extend(line);
                }
                for (partition, lines) in by_partition {
                    kcat_produce(&topic, Some(partition), &lines);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (messages.events, messages.poison)
        }
    });

    let mut kills = 0;
    while !producer.is_finished() || kills < 5 {
        let mut child = sitemon_sync(&db, &topic).spawn().expect("sync starts");
        let alive = Duration::from_millis(200 + random() % 1200);
        tokio::time::sleep(alive).await;
        child.kill().expect("SIGKILL");
        wait_with_timeout(&mut child, STOP_PATIENCE, "sitemon sync after SIGKILL");
        kills += 1;
    }
    let (events, poison) = producer.join().expect("producer");
    let before_last_run = sitemon_testkit::stored::messages(&db.pool, &topic)
        .await
        .expect("the stored offsets");
    assert!(
        before_last_run > 0,
        "the killed processes stored nothing: kills came too early"
    );
    let total = (events + poison) as i64;

    // A last run catches up, then stops on SIGTERM with status 0.
    let mut child = sitemon_sync(&db, &topic)
        .env("RUST_LOG", "info")
        .spawn()
        .expect("sync starts");
    let started = wait_for_line(&mut child, "sync started");
    sitemon_testkit::stored::wait_for(&db.pool, &topic, total, PATIENCE).await;
    terminate(&child);
    let status = wait_with_timeout(&mut child, STOP_PATIENCE, "sitemon sync after SIGTERM");
    let log = started.join().expect("stderr reader");
    assert!(status.success(), "exit {status:?}: {log}");

    sitemon_testkit::stored::assert_exactly_once(&db.pool, &topic, events as i64, poison as i64)
        .await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_one_line_and_status_1() {
    let db = TestDb::migrated().await;
    let topic = random_topic();
    let output = run(&mut sitemon_sync(&db, &topic));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&topic) && stderr.contains("sitemon topic create"),
        "{stderr}"
    );
    let output = run(sitemon_sync(&db, &topic).args(["--start", "middle"]));
    assert_eq!(output.status.code(), Some(2));
    db.drop_database().await;
}

/// The fetch settings are bounded before any connection: at least one byte, at most the
/// 1 MiB one fetch asks for; a wait of 1 ms to 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_fetch_settings_are_usage_errors() {
    let db = TestDb::migrated().await;
    let topic = random_topic();
    let cases: [(&[&str], &str); 4] = [
        (&["--fetch-min-bytes", "0"], "--fetch-min-bytes"),
        (&["--fetch-min-bytes", "1048577"], "--fetch-min-bytes"),
        (&["--fetch-max-wait-ms", "0"], "--fetch-max-wait-ms"),
        (&["--fetch-max-wait-ms", "10001"], "--fetch-max-wait-ms"),
    ];
    for (args, flag) in cases {
        let output = run(sitemon_sync(&db, &topic).args(args));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_consumed() {
    const PARTITIONS: i32 = 3;
    let db = TestDb::migrated().await;
    let topic = random_topic();
    sitemon_testkit::topic::create(&topic, PARTITIONS).await;
    let sites = db.add_sites(3).await;
    // 90 events, and rejects of four kinds: 2 not JSON, 1 of the wrong shape, 1 of an
    // unknown schema, 1 of a site that does not exist.
    let mut lines = Vec::new();
    let mut line = |key: i32, value: &[u8]| {
        lines.extend_from_slice(format!("{key}\t").as_bytes());
        lines.extend_from_slice(value);
        lines.push(b'\n');
    };
    for n in 0..90 {
        line(sites[n as usize % 3], &event_json(sites[n as usize % 3], n));
    }
    line(sites[0], b"not an event");
    line(sites[1], b"{also not");
    line(sites[2], b"[1,2,3]");
    let mut future =
        serde_json::from_slice::<serde_json::Value>(&event_json(sites[0], 1000)).expect("json");
    future["schema"] = serde_json::json!(99);
    line(sites[0], future.to_string().as_bytes());
    line(sites[1], &event_json(i32::MAX, 1001));
    kcat_produce(&topic, Some(0), &lines);
    let total = 95;

    let addr = sitemon_testkit::http::free_port();
    let mut child = sitemon_sync(&db, &topic)
        .env("RUST_LOG", "info")
        .args(["--metrics-addr", &addr.to_string()])
        .spawn()
        .expect("sync starts");
    let started = wait_for_line(&mut child, "metrics at http://");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    sitemon_testkit::stored::wait_for(&db.pool, &topic, total, PATIENCE).await;
    // The partitions' lag falls to 0 once the readers have fetched past the end.
    let lag = |text: &str, p: i32| {
        series_value(
            text,
            &format!("sitemon_sync_partition_lag{{topic=\"{topic}\",partition=\"{p}\"}}"),
        )
    };
    let text = loop {
        let text = scrape(addr).expect("the sync serves /metrics");
        if (0..PARTITIONS).all(|p| lag(&text, p) == Some(0.0)) {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lag did not fall to 0:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    terminate(&child);
    let status = wait_with_timeout(&mut child, STOP_PATIENCE, "sitemon sync after SIGTERM");
    let log = started.join().expect("stderr reader");
    assert!(status.success(), "exit {status:?}: {log}");

    let value =
        |series: &str| series_value(&text, series).unwrap_or_else(|| panic!("{series}:\n{text}"));
    assert_eq!(value("sitemon_sync_events_total"), 90.0);
    assert_eq!(value("sitemon_sync_duplicates_total"), 0.0);
    for (reason, n) in [
        ("not_json", 2.0),
        ("wrong_shape", 1.0),
        ("unknown_schema", 1.0),
        ("unknown_site", 1.0),
        ("tombstone", 0.0),
        ("empty", 0.0),
        ("invalid_value", 0.0),
    ] {
        assert_eq!(
            value(&format!(
                "sitemon_sync_rejects_total{{reason=\"{reason}\"}}"
            )),
            n,
            "{reason}"
        );
    }
    let batches = value("sitemon_sync_batches_total");
    assert!((1.0..=95.0).contains(&batches), "{batches} batches");
    assert_eq!(value("sitemon_sync_lost_to_retention_total"), 0.0);
    assert_eq!(
        value(&format!("sitemon_sync_leases_held{{topic=\"{topic}\"}}")),
        f64::from(PARTITIONS),
        "alone, the sync holds every partition"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM website_status WHERE kafka_topic = $1",
            &topic
        )
        .await,
        90
    );
    db.drop_database().await;
}

/// `--start latest`: a partition without a stored offset starts at its end when the sync
/// first takes it, so what was published before is never stored and what comes after is,
/// every event of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_latest_skips_what_came_before_and_stores_what_comes_after() {
    const PARTITIONS: i32 = 3;
    const PER_PARTITION: i32 = 20;
    let db = TestDb::migrated().await;
    let topic = random_topic();
    sitemon_testkit::topic::create(&topic, PARTITIONS).await;
    let sites = db.add_sites(PARTITIONS as usize).await;
    // Events of each site into a partition of its own; the check_ids, to tell them apart.
    let produce = |round: u64| {
        let mut check_ids = std::collections::BTreeSet::new();
        for (partition, site) in (0..PARTITIONS).zip(&sites) {
            let mut lines = Vec::new();
            for n in 0..PER_PARTITION {
                let value = event_json(*site, round * 1000 + n as u64);
                let event: serde_json::Value = serde_json::from_slice(&value).expect("json");
                check_ids.insert(event["check_id"].as_str().expect("check_id").to_owned());
                lines.extend_from_slice(format!("{site}\t").as_bytes());
                lines.extend_from_slice(&value);
                lines.push(b'\n');
            }
            kcat_produce(&topic, Some(partition), &lines);
        }
        check_ids
    };
    let before = produce(0);

    let mut child = sitemon_sync(&db, &topic)
        .env("RUST_LOG", "info")
        .args(["--start", "latest"])
        .spawn()
        .expect("sync starts");
    let started = wait_for_line(&mut child, "sync started");
    // Each partition's start is resolved and stored when its reader starts: at the end.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let starts: Vec<i64> = sqlx::query_scalar(
            "SELECT next_offset FROM sync_offsets WHERE kafka_topic = $1 ORDER BY kafka_partition_id",
        )
        .bind(&topic)
        .fetch_all(&db.pool)
        .await
        .expect("the stored offsets");
        if starts.len() == PARTITIONS as usize {
            assert_eq!(
                starts,
                vec![i64::from(PER_PARTITION); PARTITIONS as usize],
                "every partition starts at its end"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sync did not start every partition within {PATIENCE:?}: {starts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = produce(1);
    let total = i64::from(2 * PARTITIONS * PER_PARTITION);
    sitemon_testkit::stored::wait_for(&db.pool, &topic, total, PATIENCE).await;
    terminate(&child);
    let status = wait_with_timeout(&mut child, STOP_PATIENCE, "sitemon sync after SIGTERM");
    let log = started.join().expect("stderr reader");
    assert!(status.success(), "exit {status:?}: {log}");

    let stored: std::collections::BTreeSet<String> =
        sqlx::query_scalar("SELECT check_id::text FROM website_status WHERE kafka_topic = $1")
            .bind(&topic)
            .fetch_all(&db.pool)
            .await
            .expect("the stored rows")
            .into_iter()
            .collect();
    assert!(
        stored.is_disjoint(&before),
        "{} events published before the start were stored",
        stored.intersection(&before).count()
    );
    assert_eq!(stored, after, "every event published after the start, once");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM website_status WHERE kafka_topic = $1",
            &topic
        )
        .await,
        i64::from(PARTITIONS * PER_PARTITION),
        "no event stored twice"
    );
    db.drop_database().await;
}
