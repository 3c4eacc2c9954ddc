//! `sitemon alert` processes on a real topic, notifying a real HTTP receiver: killed with
//! `kill -9` twice in a stream of state changes, no change is lost and none is notified
//! twice but for a delivery in flight at a kill (sent again with the same id); two workers on
//! one topic share its partitions and notify each incident once.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use sitemon_core::CheckEvent;
use sitemon_testkit::receiver::Receiver;
use sitemon_testkit::{TestDb, random_topic, unique_name};
use support::{kcat_produce, run, wait_with_timeout};
use time::OffsetDateTime;

/// The most a test waits for the workers to catch up and deliver: a bound against hanging.
const PATIENCE: Duration = Duration::from_secs(120);
/// The longest a stopped worker may take to exit.
const STOP_PATIENCE: Duration = Duration::from_secs(60);
/// A site's state flips every this many rounds.
const RUN: usize = 4;

/// One `sitemon alert` process and its log file.
struct Worker {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Worker {
    fn start(name: &str, db: &TestDb, topic: &str, logs: &Path) -> Self {
        let log = logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = support::sitemon(db, topic)
            .arg("alert")
            .env("RUST_LOG", "info")
            .args(["--failure-threshold", "1", "--success-threshold", "1"])
            .args(["--reminder-every", "0", "--cert-expiry-days", "0"])
            .args(["--alert-start", "earliest", "--delivery-claim-for", "3s"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("sitemon alert starts");
        Self {
            name: name.to_owned(),
            child,
            log,
        }
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        wait_with_timeout(&mut self.child, STOP_PATIENCE, "a worker after SIGKILL");
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("--- {} ---\n{}\n", self.name, tail.join("\n"))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `site` is down in `round`: each site flips every [`RUN`] rounds, the sites out of
/// step with each other.
fn down(site: i32, round: usize) -> bool {
    (round + site as usize) / RUN % 2 == 1
}

/// The incidents the events of `rounds` rounds must open, with both thresholds at 1: per
/// site, one per run of down checks, opened at the run's first check (its round) and resolved
/// at the first up check after it (if any).
fn expected(sites: &[i32], rounds: usize) -> BTreeSet<(i32, i64, Option<i64>)> {
    let mut incidents = BTreeSet::new();
    for &site in sites {
        let mut open: Option<i64> = None;
        for round in 0..rounds {
            match (open, down(site, round)) {
                (None, true) => open = Some(round as i64),
                (Some(opened), false) => {
                    incidents.insert((site, opened, Some(round as i64)));
                    open = None;
                }
                _ => {}
            }
        }
        if let Some(opened) = open {
            incidents.insert((site, opened, None));
        }
    }
    incidents
}

/// One round of checks, one per site, `round` seconds after `start`, as `key\tvalue` lines.
fn round_lines(sites: &[i32], round: usize, start: OffsetDateTime) -> Vec<u8> {
    let mut lines = Vec::new();
    for &site in sites {
        let mut event: CheckEvent = sitemon_testkit::events::event(site, 1);
        let up = !down(site, round);
        event.location = "here".to_owned();
        event.checked_at = start + time::Duration::seconds(round as i64);
        event.up = up;
        event.degraded = false;
        event.failed_assertion = None;
        event.status_code = up.then_some(200);
        event.error = (!up).then(|| sitemon_core::CheckError {
            kind: sitemon_core::ErrorKind::Connect,
            message: "connection refused".to_owned(),
        });
        event.tls_cert_not_after = None;
        lines.extend_from_slice(format!("{site}\t").as_bytes());
        lines.extend_from_slice(&serde_json::to_vec(&event).expect("JSON"));
        lines.push(b'\n');
    }
    lines
}

async fn setup(partitions: i32, sites: usize) -> (TestDb, String, Vec<i32>, Receiver, PathBuf) {
    let db = TestDb::migrated().await;
    let topic = random_topic();
    sitemon_testkit::topic::create(&topic, partitions).await;
    let sites = db.add_sites(sites).await;
    let receiver = Receiver::ok().await;
    let added = run(support::sitemon_with_database(&db.url).args([
        "channel",
        "add",
        "hook",
        "--webhook",
        &receiver.url("/hook"),
    ]));
    assert!(added.status.success(), "{}", support::stderr(&added));
    let logs = std::env::temp_dir().join(unique_name("sitemon-alert-workers"));
    std::fs::create_dir_all(&logs).expect("log folder");
    (db, topic, sites, receiver, logs)
}

/// Waits until the alert consumer's stored offsets cover `messages` and every notification
/// is delivered.
async fn wait_until_done(db: &TestDb, topic: &str, messages: i64, workers: &[&Worker]) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let consumed: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(next_offset), 0)::bigint FROM sync_offsets
             WHERE consumer = 'alert' AND kafka_topic = $1",
        )
        .bind(topic)
        .fetch_one(&db.pool)
        .await
        .expect("offsets");
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM alert_outbox WHERE state <> 'delivered'")
                .fetch_one(&db.pool)
                .await
                .expect("outbox");
        if consumed == messages && pending == 0 {
            return;
        }
        if Instant::now() > deadline {
            let logs: String = workers.iter().map(|w| w.log()).collect();
            panic!(
                "after {PATIENCE:?}: {consumed} of {messages} messages consumed, {pending} \
                 notifications not delivered\n{logs}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every incident: site, the round it opened at and the one it resolved at (seconds after
/// `start`, one round a second).
async fn incidents(db: &TestDb, start: OffsetDateTime) -> BTreeSet<(i32, i64, Option<i64>)> {
    let rows: Vec<(i32, OffsetDateTime, Option<OffsetDateTime>)> =
        sqlx::query_as("SELECT website_id, opened_at, resolved_at FROM alert_incidents")
            .fetch_all(&db.pool)
            .await
            .expect("incidents");
    let round = |at: OffsetDateTime| (at - start).whole_seconds();
    rows.into_iter()
        .map(|(site, opened, resolved)| (site, round(opened), resolved.map(round)))
        .collect()
}

/// Checks the outbox against the incidents (one `down` per incident, one `resolved` per
/// resolved incident) and the receiver against the outbox (every row received; returns how
/// many requests repeated an id).
async fn check_notifications(db: &TestDb, receiver: &Receiver) -> usize {
    let wrong: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT i.id::text, count(*) FILTER (WHERE o.kind = 'down'),
                count(*) FILTER (WHERE o.kind = 'resolved')
         FROM alert_incidents i LEFT JOIN alert_outbox o ON o.incident_id = i.id
         GROUP BY i.id, i.resolved_at
         HAVING count(*) FILTER (WHERE o.kind = 'down') <> 1
             OR count(*) FILTER (WHERE o.kind = 'resolved')
                <> (i.resolved_at IS NOT NULL)::int",
    )
    .fetch_all(&db.pool)
    .await
    .expect("outbox per incident");
    assert!(
        wrong.is_empty(),
        "incidents without exactly one down (and one resolved) row: {wrong:?}"
    );
    let ids: Vec<String> = sqlx::query_scalar("SELECT id::text FROM alert_outbox")
        .fetch_all(&db.pool)
        .await
        .expect("outbox ids");
    let ids: BTreeSet<String> = ids.into_iter().collect();
    let received = receiver.received();
    let mut keys: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for request in &received {
        let key = request
            .header("idempotency-key")
            .expect("every webhook carries an Idempotency-Key")
            .to_owned();
        keys.entry(key).or_default().push(request.body.clone());
    }
    let got: BTreeSet<String> = keys.keys().cloned().collect();
    assert_eq!(
        got, ids,
        "every notification of the outbox arrived, and no other"
    );
    for (key, bodies) in &keys {
        assert!(
            bodies.windows(2).all(|w| w[0] == w[1]),
            "a repeat of {key} is the same notification"
        );
    }
    received.len() - keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_twice_loses_no_change_and_repeats_only_deliveries_in_flight() {
    const ROUNDS: usize = 60;
    let (db, topic, sites, receiver, logs) = setup(3, 6).await;
    let start = (OffsetDateTime::now_utc() - time::Duration::hours(1))
        .replace_nanosecond(0)
        .expect("valid");

    let mut worker = Worker::start("a", &db, &topic, &logs);
    let mut kills = 0;
    for first in (0..ROUNDS).step_by(3) {
        let burst: Vec<u8> = (first..first + 3)
            .flat_map(|round| round_lines(&sites, round, start))
            .collect();
        kcat_produce(&topic, None, &burst);
        if first == 18 || first == 39 {
            // Killed the moment a burst is in the topic: whatever it had read, written or
            // was sending is where the next one must pick up.
            worker.kill();
            kills += 1;
            worker = Worker::start(["b", "c"][kills - 1], &db, &topic, &logs);
        } else {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    let messages = (ROUNDS * sites.len()) as i64;
    wait_until_done(&db, &topic, messages, &[&worker]).await;

    assert_eq!(
        incidents(&db, start).await,
        expected(&sites, ROUNDS),
        "every change applied once, at its own check: the incidents and their times"
    );
    let repeats = check_notifications(&db, &receiver).await;
    eprintln!("{kills} kills; {repeats} deliveries repeated");
    // Only a delivery in flight at a kill repeats: at most a pass's worth per kill.
    assert!(
        repeats <= kills * 16,
        "{repeats} repeats after {kills} kills"
    );
    let last: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM alert_location_state
         WHERE last_checked_at = $1",
    )
    .bind(start + time::Duration::seconds(ROUNDS as i64 - 1))
    .fetch_one(&db.pool)
    .await
    .expect("states");
    assert_eq!(last, sites.len() as i64, "every site's last check applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_topic_and_notify_each_incident_once() {
    const ROUNDS: usize = 40;
    let (db, topic, sites, receiver, logs) = setup(4, 8).await;
    let start = (OffsetDateTime::now_utc() - time::Duration::hours(1))
        .replace_nanosecond(0)
        .expect("valid");
    let a = Worker::start("a", &db, &topic, &logs);
    let b = Worker::start("b", &db, &topic, &logs);

    // Both hold leases before the stream starts.
    let group = sitemon_consume::lease_group("alert", &topic);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let holders = sitemon_consume::lease::holders(&db.pool, &group)
            .await
            .expect("pg_locks");
        let pids: BTreeSet<i32> = holders.values().copied().collect();
        if holders.len() == 4 && pids.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the two workers did not share the 4 partitions: {holders:?}\n{}{}",
            a.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for round in 0..ROUNDS {
        kcat_produce(&topic, None, &round_lines(&sites, round, start));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_until_done(&db, &topic, (ROUNDS * sites.len()) as i64, &[&a, &b]).await;
    assert_eq!(incidents(&db, start).await, expected(&sites, ROUNDS));
    let repeats = check_notifications(&db, &receiver).await;
    assert_eq!(repeats, 0, "no worker was killed: nothing is sent twice");
}

/// A self-signed certificate for `localhost` that expires in 3 days, and its key, as PEM
/// files in `dir`; and its `notAfter`.
fn expiring_certificate(dir: &Path) -> (PathBuf, PathBuf, OffsetDateTime) {
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("valid");
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("parameters");
    params.not_before = now - time::Duration::days(1);
    let not_after = now + time::Duration::days(3);
    params.not_after = not_after;
    let key = rcgen::KeyPair::generate().expect("a key");
    let certificate = params.self_signed(&key).expect("a certificate");
    let (cert_file, key_file) = (dir.join("expiring.pem"), dir.join("expiring.key"));
    std::fs::write(&cert_file, certificate.pem()).expect("write the certificate");
    std::fs::write(&key_file, key.serialize_pem()).expect("write the key");
    (cert_file, key_file, not_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sitemon_run_notifies_a_certificate_expiring_in_three_days_once() {
    let (db, topic, _, receiver, logs) = setup(1, 0).await;
    let (cert, key, not_after) = expiring_certificate(&logs);
    let server = sitemon_testkit::http::TestServer::https(&cert, &key).await;
    let url = server.https_url("/ok");
    let added = run(support::sitemon_with_database(&db.url).args([
        "add-site",
        &url,
        "--interval",
        "1",
        "--tls-verify",
        "false",
    ]));
    assert!(added.status.success(), "{}", support::stderr(&added));

    // The whole pipeline: the checker sees the certificate, the sync stores the checks, the
    // alert service (default 14 days of notice) notifies once per certificate.
    let log = logs.join("run.log");
    let mut child = support::sitemon(&db, &topic)
        .arg("run")
        .env("RUST_LOG", "info")
        .args(["--alert-start", "earliest"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
        .spawn()
        .expect("sitemon run starts");
    let tail = || std::fs::read_to_string(&log).unwrap_or_default();
    let notices = || {
        receiver
            .received()
            .into_iter()
            .filter(|r| r.json()["kind"] == "cert_expiry")
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + PATIENCE;
    while notices().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no certificate notice within {PATIENCE:?}\n{}",
            tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Five more checks of the same certificate notify nothing more.
    let stored = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM website_status")
            .fetch_one(&db.pool)
            .await
            .expect("count")
    };
    let after_notice = stored().await;
    let deadline = Instant::now() + PATIENCE;
    while stored().await < after_notice + 5 {
        assert!(Instant::now() < deadline, "the checks stopped\n{}", tail());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let offsets_caught_up = Instant::now() + Duration::from_secs(5);
    tokio::time::sleep_until(offsets_caught_up.into()).await;
    support::terminate(&child);
    let status = wait_with_timeout(&mut child, STOP_PATIENCE, "sitemon run after SIGTERM");
    assert!(
        status.success(),
        "sitemon run stopped with {status}\n{}",
        tail()
    );

    let notices = notices();
    let keys: Vec<&str> = notices
        .iter()
        .filter_map(|n| n.header("idempotency-key"))
        .collect();
    assert_eq!(notices.len(), 1, "one notice per certificate: {keys:?}");
    let notice = notices[0].json();
    let expires: OffsetDateTime = time::OffsetDateTime::parse(
        notice["cert_not_after"].as_str().expect("cert_not_after"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339");
    assert_eq!(expires, not_after, "{notice}");
    let text = notice["text"].as_str().unwrap_or_default();
    assert!(text.contains(&url), "the notice names the site: {text}");
    let incidents: i64 = sqlx::query_scalar("SELECT count(*) FROM alert_incidents")
        .fetch_one(&db.pool)
        .await
        .expect("incidents");
    assert_eq!(incidents, 0, "an expiring certificate is no outage");
}

/// A hostile receiver: `sitemon run` with two webhook channels, one answering `500` twice, then
/// `429` with `Retry-After: 18446744073709551615` (2^64 − 1 seconds: added to the age of a
/// notification older than a second, it overflowed a `Duration` and panicked the alert
/// service, taking the checker and the sync with it), the other `503` with a Retry-After of
/// 3,000 years (given up at once: the notification was lost). The process goes on checking and storing; both
/// notifications stay pending until the give-up time (24 h), their channels throttled as
/// long, and are delivered once that time comes (simulated by moving it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sitemon_run_outlives_a_retry_after_of_2_pow_64_minus_1() {
    let (db, topic, _, throttling, logs) = setup(1, 0).await;
    // Two 500s first (back-off 1 s, then 2 s, ±25 %): the notification is older than a
    // second when the 429 comes.
    throttling.next_answer(500, None);
    throttling.next_answer(500, None);
    throttling.next_answer(429, Some(u64::MAX));
    let unavailable = Receiver::ok().await;
    unavailable.next_answer(503, Some(99_999_999_999));
    let added = run(support::sitemon_with_database(&db.url).args([
        "channel",
        "add",
        "busy",
        "--webhook",
        &unavailable.url("/hook"),
    ]));
    assert!(added.status.success(), "{}", support::stderr(&added));
    // A site that is down (nothing listens on its port): one DOWN per channel.
    let closed = sitemon_testkit::http::free_port();
    let added = run(support::sitemon_with_database(&db.url).args([
        "add-site",
        &format!("http://{closed}/down"),
        "--interval",
        "1",
    ]));
    assert!(added.status.success(), "{}", support::stderr(&added));

    let log = logs.join("run.log");
    let mut child = support::sitemon(&db, &topic)
        .arg("run")
        .env("RUST_LOG", "info")
        .args(["--alert-start", "earliest", "--failure-threshold", "1"])
        .args(["--reminder-every", "0", "--cert-expiry-days", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
        .spawn()
        .expect("sitemon run starts");
    let tail = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + PATIENCE;
    while throttling.received().len() < 3 || unavailable.received().is_empty() {
        assert!(
            child.try_wait().expect("status").is_none(),
            "sitemon run ended\n{}",
            tail()
        );
        assert!(
            Instant::now() < deadline,
            "no notification within {PATIENCE:?}\n{}",
            tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let answered = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM alert_outbox WHERE last_answer IS NOT NULL",
        )
        .fetch_one(&db.pool)
        .await
        .expect("count")
    };
    let deadline = Instant::now() + PATIENCE;
    let hostile_answers = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM alert_outbox WHERE last_answer LIKE 'HTTP 429%' OR last_answer LIKE 'HTTP 503%'",
        )
        .fetch_one(&db.pool)
        .await
        .expect("count")
    };
    while answered().await < 2 || hostile_answers().await < 2 {
        assert!(
            child.try_wait().expect("status").is_none(),
            "sitemon run ended after the hostile answers\n{}",
            tail()
        );
        assert!(Instant::now() < deadline, "no answer recorded\n{}", tail());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Still alive and still checking: more rows arrive after the answers.
    let stored = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM website_status")
            .fetch_one(&db.pool)
            .await
            .expect("count")
    };
    let after_answers = stored().await;
    let deadline = Instant::now() + PATIENCE;
    while stored().await < after_answers + 3 {
        assert!(
            child.try_wait().expect("status").is_none(),
            "sitemon run ended\n{}",
            tail()
        );
        assert!(Instant::now() < deadline, "the checks stopped\n{}", tail());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Not lost: pending, to be tried again at the give-up time, each channel throttled.
    let rows: Vec<(String, String, i32, f64, Option<f64>)> = sqlx::query_as(
        "SELECT o.channel, o.state, o.attempts,
                extract(epoch FROM o.next_attempt_at - o.created_at)::float8,
                extract(epoch FROM c.throttled_until - now())::float8
         FROM alert_outbox o JOIN alert_channels c ON c.name = o.channel ORDER BY o.channel",
    )
    .fetch_all(&db.pool)
    .await
    .expect("outbox");
    assert_eq!(rows.len(), 2, "{rows:?}");
    let day = 24.0 * 3600.0;
    for (channel, state, attempts, retry_at, throttle) in &rows {
        let tried = if channel == "hook" { 3 } else { 1 };
        assert_eq!((state.as_str(), *attempts), ("pending", tried), "{rows:?}");
        assert!(
            (day - 120.0..=day + 1.0).contains(retry_at),
            "{channel}: tried again {retry_at} s after it was written, not at the give-up time"
        );
        assert!(
            throttle.is_some_and(|t| t > day - 300.0 && t <= day),
            "{channel}: throttled for {throttle:?} s"
        );
    }

    // The give-up time comes (moved, not waited for): each is sent again, with its id.
    sqlx::query("UPDATE alert_outbox SET next_attempt_at = now()")
        .execute(&db.pool)
        .await
        .expect("move the retry");
    sqlx::query("UPDATE alert_channels SET throttled_until = NULL")
        .execute(&db.pool)
        .await
        .expect("end the throttle");
    let delivered = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM alert_outbox WHERE state = 'delivered'")
            .fetch_one(&db.pool)
            .await
            .expect("count")
    };
    let deadline = Instant::now() + PATIENCE;
    while delivered().await < 2 {
        assert!(Instant::now() < deadline, "not delivered\n{}", tail());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (receiver, answers) in [
        (&throttling, &[500, 500, 429, 200][..]),
        (&unavailable, &[503, 200]),
    ] {
        let received = receiver.received();
        assert_eq!(
            received.iter().map(|r| r.status).collect::<Vec<_>>(),
            answers
        );
        assert!(
            received
                .iter()
                .all(|r| r.header("idempotency-key") == received[0].header("idempotency-key")),
            "the same notification each time"
        );
    }
    support::terminate(&child);
    let status = wait_with_timeout(&mut child, STOP_PATIENCE, "sitemon run after SIGTERM");
    assert!(
        status.success(),
        "sitemon run stopped with {status}\n{}",
        tail()
    );
    unavailable.close();
    throttling.close();
}
