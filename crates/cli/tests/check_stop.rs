//! `sitemon check` on SIGTERM: the checks in flight finish, the buffered events are flushed,
//! and the process exits 0 within a bound.
//!
//! A site whose server answers after 5 s (`/slow`) has its check in flight when the signal
//! arrives: its event can only exist if the checker waits for the check. A second site checked
//! every second with a 3 s linger keeps events waiting in the producer's buffer at every
//! moment, so that a checker that does not flush on its way out loses some: every check the
//! checker counted in its last log line must be in the topic.

mod support;

use std::collections::HashSet;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use sitemon_core::CheckEvent;
use sitemon_testkit::http::TestServer;
use sitemon_testkit::{TestDb, random_topic};
use support::{run, sitemon, stderr, stdout, terminate, wait_with_timeout};

fn add_site(db: &TestDb, topic: &str, url: &str, interval: u32) -> i32 {
    let output =
        run(sitemon(db, topic).args(["add-site", url, "--interval", &interval.to_string()]));
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output)
        .trim()
        .parse()
        .expect("add-site prints the id")
}

/// Kills the checker if the test fails before it exits.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The number after `name=` in a log line.
fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{name}="))?.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_checks_in_flight_and_flushes_the_buffer() {
    let db = TestDb::migrated().await;
    let topic = random_topic();
    let client = sitemon_testkit::topic::create(&topic, 6).await;
    let server = TestServer::http().await;
    // Interval 10 s: a 10 s timeout, longer than the server's 5 s.
    let slow = add_site(&db, &topic, &server.url("/slow"), 10);
    let steady = add_site(&db, &topic, &server.url("/ok?steady"), 1);

    let log = std::env::temp_dir().join(format!("{topic}.log"));
    let mut command = sitemon(&db, &topic);
    command
        .args(["check", "--location", "stop-test", "--linger-ms", "3000"])
        .args(["--flush-timeout", "20s"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let mut guard = Guard(command.spawn().expect("sitemon check starts"));
    let checker = &mut guard.0;

    // The slow site's first check is on its way: the server holds the request for 5 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.requests_for("/slow").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the slow site was not checked within 60 s"
        );
        assert!(
            checker.try_wait().expect("status").is_none(),
            "sitemon check ended: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And the steady site has been checked twice meanwhile (its phase in the 1 s grid can put
    // its first check after the slow one's): the server still holds the slow request for 5 s.
    let slow_arrived = Instant::now();
    while server.requests_for("/ok?steady").len() < 2 {
        assert!(
            slow_arrived.elapsed() < Duration::from_secs(4),
            "the steady site was not checked twice while the slow check was held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    terminate(checker);
    // The bound: the check's 10 s timeout, the 20 s flush timeout, and room for a busy
    // machine.
    let exit = wait_with_timeout(
        checker,
        Duration::from_secs(60),
        "sitemon check after SIGTERM",
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(exit.success(), "exit {exit}: {text}");
    let summary = text
        .lines()
        .find(|line| line.contains("checker stopped:"))
        .unwrap_or_else(|| panic!("no summary line in:\n{text}"));
    let (checks, undelivered) = (field(summary, "checks"), field(summary, "buffered"));
    assert_eq!(undelivered, 0, "{summary}");

    let records = sitemon_testkit::topic::read(&client, &topic)
        .await
        .expect("the topic exists");
    let events: Vec<CheckEvent> = records
        .iter()
        .map(|r| CheckEvent::from_json(r.value.as_deref().unwrap_or_default()).expect("an event"))
        .collect();
    let check_ids: HashSet<_> = events.iter().map(|e| e.check_id).collect();
    assert_eq!(
        check_ids.len() as u64,
        checks,
        "every check the checker made is in the topic ({summary})"
    );

    // The check in flight at the signal finished as the server answered: up, not cut off.
    let slow_checks: Vec<&CheckEvent> = events.iter().filter(|e| e.website_id == slow).collect();
    assert_eq!(
        slow_checks.len(),
        1,
        "the slow site's one check, in flight at SIGTERM, in the topic: {slow_checks:?}"
    );
    let e = slow_checks[0];
    assert!(
        e.up && e.status_code == Some(200) && e.error.is_none(),
        "the check in flight did not finish: {e:?}"
    );
    assert!(
        e.timings_ms.total >= 4000.0,
        "it waited for the server: {e:?}"
    );
    assert!(
        events.iter().filter(|e| e.website_id == steady).count() >= 2,
        "the steady site was checked meanwhile"
    );
    db.drop_database().await;
}
