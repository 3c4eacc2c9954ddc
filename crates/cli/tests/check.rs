//! `sitemon check` end to end: the binary against the real services, sites added and
//! removed with `sitemon add-site` / `remove-site` while it runs, SIGTERM for a clean stop.

mod support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sitemon_core::CheckEvent;
use sitemon_testkit::events::assert_ticks_accounted;
use sitemon_testkit::http::TestServer;
use sitemon_testkit::{TestDb, random_topic, services};
use support::{run, sitemon, stderr, stdout};
use time::OffsetDateTime;

fn add_site(db: &TestDb, topic: &str, url: &str) -> i32 {
    let output = run(sitemon(db, topic).args(["add-site", url, "--interval", "1"]));
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output)
        .trim()
        .parse()
        .expect("add-site prints the id")
}

/// Kills the checker if the test fails before stopping it.
struct Checker(Child);

impl Drop for Checker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every event in the topic so far, by site, in check order, read with `kcat` (librdkafka:
/// another Kafka client than the one that produced them).
async fn events(topic: &str) -> HashMap<i32, Vec<CheckEvent>> {
    let mut kcat = tokio::process::Command::new("kcat");
    kcat.kill_on_drop(true).args([
        "-C",
        "-q",
        "-e",
        "-b",
        &services().kafka_brokers,
        "-t",
        topic,
        "-f",
        "%s\\n",
    ]);
    let output = tokio::time::timeout(Duration::from_secs(60), kcat.output())
        .await
        .expect("kcat -C -e reads the topic within 60 s")
        .expect("kcat runs (scripts/services installs it)");
    let mut out: HashMap<i32, Vec<CheckEvent>> = HashMap::new();
    if !output.status.success() {
        return out; // the topic does not exist yet
    }
    for line in output
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
    {
        let event = CheckEvent::from_json(line).expect("every record is an event");
        out.entry(event.website_id).or_default().push(event);
    }
    for list in out.values_mut() {
        list.sort_by_key(|e| e.checked_at);
    }
    out
}

async fn wait_until(
    what: &str,
    within: Duration,
    topic: &str,
    done: impl Fn(&HashMap<i32, Vec<CheckEvent>>) -> bool,
) -> HashMap<i32, Vec<CheckEvent>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let events = events(topic).await;
        if done(&events) {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_sites_added_and_removed_while_running_and_stops_on_sigterm() {
    let db = TestDb::migrated().await;
    let topic = random_topic();
    let server = TestServer::http().await;
    let first = add_site(&db, &topic, &server.url("/ok?first"));

    let log = std::env::temp_dir().join(format!("{topic}.log"));
    let mut command = sitemon(&db, &topic);
    command
        .args([
            "check",
            "--location",
            "cli-test",
            "--progress-interval",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let mut checker = Checker(command.spawn().expect("sitemon check starts"));

    wait_until(
        "the first site's checks",
        Duration::from_secs(30),
        &topic,
        |e| e.get(&first).is_some_and(|l| l.len() >= 2),
    )
    .await;

    let added_at = OffsetDateTime::now_utc();
    let second = add_site(&db, &topic, &server.url("/ok?second"));
    let seen = wait_until(
        "the added site's first check",
        Duration::from_secs(10),
        &topic,
        |e| e.contains_key(&second),
    )
    .await;
    let first_check = &seen[&second][0];
    assert!(first_check.checked_at - added_at < time::Duration::seconds(3));
    assert_eq!(first_check.location, "cli-test");
    assert!(first_check.up);

    let output = run(sitemon(&db, &topic).args(["remove-site", &second.to_string()]));
    assert!(output.status.success(), "{}", stderr(&output));
    let removed_at = OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_secs(5)).await;

    let status = Command::new("kill")
        .args(["-TERM", &checker.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let exit = loop {
        if let Some(exit) = checker.0.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sitemon check did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(exit.success(), "exit {exit}: {stderr}");
    assert!(stderr.contains("checker stopped"), "{stderr}");

    let all = events(&topic).await;
    let late: Vec<_> = all[&second]
        .iter()
        .filter(|e| e.checked_at > removed_at + time::Duration::seconds(3))
        .collect();
    assert!(late.is_empty(), "checks after removal: {late:?}");
    // Every check made before the stop was flushed: every tick up to the stop checked or
    // counted as skipped (a fixed count, or a largest gap, would depend on how long the
    // phases above took and on the machine's load).
    assert!(all[&first].len() >= 5, "{}", all[&first].len());
    let times: Vec<_> = all[&first].iter().map(|e| e.checked_at).collect();
    let summary = stderr
        .lines()
        .find(|line| line.contains("checker stopped:"))
        .unwrap_or_else(|| panic!("no summary line: {stderr}"));
    let skipped: u64 = summary
        .split_whitespace()
        .find_map(|word| word.strip_prefix("skipped_ticks=")?.parse().ok())
        .unwrap_or_else(|| panic!("no skipped_ticks= in {summary}"));
    assert_ticks_accounted(&times, time::Duration::SECOND, skipped, 0);
    let last = all[&first].last().expect("checks").checked_at;
    assert!(
        last > removed_at + time::Duration::seconds(3),
        "the first site was no longer checked after the removal of the second: last {last}"
    );
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_are_usage_errors_before_any_connection() {
    let db = TestDb::migrated().await;
    let cases: [(&[&str], &str); 6] = [
        (&["--compression", "brotli"], "--compression"),
        (&["--location", ""], "invalid --location"),
        (&["--concurrency", "0"], "--concurrency"),
        (&["--timeout", "0"], "--timeout"),
        (
            &["--deny-cidr", "10.0.0.0/33"],
            "\"10.0.0.0/33\" is not a network",
        ),
        (
            &["--deny-cidr", "127.0.0.0/8,metadata.invalid"],
            "\"metadata.invalid\" is not a network",
        ),
    ];
    for (args, expected) in cases {
        let mut command = sitemon(&db, "t");
        // An unreachable broker: a usage error must come before any connection attempt.
        command
            .env("KAFKA_BROKERS", "127.0.0.1:1")
            .arg("check")
            .args(args);
        let output = run(&mut command);
        let stderr = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }

    let mut command = sitemon(&db, "t");
    // An empty deny list from the environment is none, not a usage error.
    command
        .env("KAFKA_BROKERS", "127.0.0.1:1")
        .env("SITEMON_DENY_CIDRS", "")
        .arg("check");
    let output = run(&mut command);
    let stderr = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    assert_eq!(
        stderr
            .trim()
            .lines()
            .filter(|l| l.starts_with("error:"))
            .count(),
        1,
        "{stderr}"
    );
    db.drop_database().await;
}
