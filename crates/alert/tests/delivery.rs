//! The delivery loop against real receivers on loopback: an HTTP server the test runs
//! (webhook, Slack, PagerDuty) and a real SMTP server (Debian's python3-aiosmtpd).

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use sitemon_alert::admin;
use sitemon_alert::delivery::{self, DeliveryConfig};
use sitemon_alert::{ChannelSettings, Policy, Processor};
use sitemon_core::SiteAlerts;
use sitemon_core::retry::Backoff;
use sitemon_testkit::TestDb;
use sitemon_testkit::receiver::{self, Receiver, wait_until};
use sqlx::PgPool;
use support::*;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SECRET: &str = "webhook-signing-secret";
const ROUTING_KEY: &str = "R0UTINGKEY0000000000000000000001";

/// Quick retries for a test: 100 ms doubling to 1 s.
fn fast() -> DeliveryConfig {
    DeliveryConfig {
        backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(1)),
        poll_every: Duration::from_millis(100),
        claim_for: Duration::from_secs(20),
        ..DeliveryConfig::default()
    }
}

/// The delivery loop running in the test, stopped (with a bound) by [`Running::stop`].
struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<sitemon_alert::Result<()>>,
}

fn start(pool: &PgPool, config: DeliveryConfig) -> Running {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(delivery::run(pool.clone(), config, shutdown.clone()));
    Running { shutdown, task }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the delivery loop stops within 30 s")
            .expect("no panic")
            .expect("no error");
    }
}

#[derive(Debug, sqlx::FromRow)]
struct Delivery {
    id: Uuid,
    channel: String,
    kind: String,
    incident_id: Option<Uuid>,
    state: String,
    attempts: i32,
    last_answer: Option<String>,
}

async fn deliveries(pool: &PgPool) -> Vec<Delivery> {
    sqlx::query_as(
        "SELECT id, channel, kind, incident_id, state, attempts, last_answer FROM alert_outbox
         ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .expect("outbox")
}

/// Two sites each go down and come back: 4 notifications per channel.
async fn two_incidents(db: &TestDb) -> Vec<Uuid> {
    let processor = Processor::new(Policy::default());
    let mut incidents = Vec::new();
    for n in 0..2 {
        let site = site(&db.pool, n, SiteAlerts::default()).await;
        let events = pattern(site, "eu", an_hour_ago(), "ddduu");
        incidents.push(events[2].check_id);
        apply(&db.pool, &processor, &events).await;
    }
    incidents
}

/// Checks `X-Sitemon-Signature: t=<unix seconds>,v1=<hex>` as a receiver does: the HMAC-SHA256
/// of `<t>.<body>` under `secret`, compared in constant time (`ring::hmac::verify`), and `t`
/// within 5 minutes of now. Returns `t`.
fn verify_signature(secret: &str, header: &str, body: &[u8]) -> Result<i64, String> {
    let mut timestamp = None;
    let mut tag = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", hex)) => tag = Some(hex),
            _ => return Err(format!("unexpected part {part:?} in {header:?}")),
        }
    }
    let (Some(timestamp), Some(hex)) = (timestamp, tag) else {
        return Err(format!("no t= or v1= in {header:?}"));
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if (now - timestamp).abs() > 300 {
        return Err(format!("t={timestamp} is more than 5 minutes from {now}"));
    }
    let tag: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("v1 is not hex: {e}"))?;
    let mut signed = format!("{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::verify(&key, &signed, &tag)
        .map_err(|_| "the signature does not match".to_owned())?;
    Ok(timestamp)
}

#[tokio::test]
async fn a_receiver_refusing_then_failing_then_back_gets_every_notification_once() {
    let db = TestDb::migrated().await;
    let receiver = Receiver::refusing().await;
    let channels = [
        (
            "hook",
            ChannelSettings::webhook("hook", &receiver.url("/hook"), Some(SECRET)),
        ),
        (
            "slack",
            ChannelSettings::slack("slack", &receiver.url("/slack")),
        ),
        (
            "pager",
            ChannelSettings::pagerduty("pager", ROUTING_KEY, Some(&receiver.url("/v2/enqueue"))),
        ),
    ];
    for (name, settings) in channels {
        admin::add_channel(&db.pool, name, &settings.expect("valid"))
            .await
            .expect("added");
    }
    let incidents = two_incidents(&db).await;
    let running = start(&db.pool, fast());

    // Connection refused: every row is tried, more than once, and stays pending.
    wait_until(
        "every notification tried twice against a closed port",
        Duration::from_secs(30),
        || async {
            let rows = deliveries(&db.pool).await;
            rows.len() == 12 && rows.iter().all(|r| r.attempts >= 2)
        },
    )
    .await;
    for row in deliveries(&db.pool).await {
        assert_eq!(row.state, "pending", "{row:?}");
        let answer = row.last_answer.clone().unwrap_or_default();
        assert!(answer.starts_with("cannot connect"), "{row:?}");
        assert!(
            !answer.contains("/hook") && !answer.contains(ROUTING_KEY),
            "{answer}"
        );
    }

    // Listening, but answering 500: still pending.
    receiver.answer_with(500);
    receiver.listen().await;
    wait_until(
        "a 500 for every notification",
        Duration::from_secs(30),
        || async {
            let rows = deliveries(&db.pool).await;
            rows.iter().all(|r| {
                r.last_answer
                    .as_deref()
                    .is_some_and(|a| a.starts_with("HTTP 500"))
            })
        },
    )
    .await;
    assert!(
        deliveries(&db.pool)
            .await
            .iter()
            .all(|r| r.state == "pending")
    );

    // Back: every notification arrives.
    receiver.answer_with(200);
    wait_until(
        "every notification delivered",
        Duration::from_secs(30),
        || async {
            deliveries(&db.pool)
                .await
                .iter()
                .all(|r| r.state == "delivered")
        },
    )
    .await;
    running.stop().await;

    let rows = deliveries(&db.pool).await;
    let accepted: Vec<_> = receiver
        .received()
        .into_iter()
        .filter(|r| r.status == 200)
        .collect();
    assert_eq!(accepted.len(), 12, "one accepted request per notification");

    // The webhook: the Idempotency-Key is the row's id, the body is the notification with the
    // same id, signed with the channel's secret.
    let hooks: Vec<_> = accepted.iter().filter(|r| r.path == "/hook").collect();
    let mut keys: Vec<String> = hooks
        .iter()
        .map(|r| {
            r.header("idempotency-key")
                .expect("an Idempotency-Key")
                .to_owned()
        })
        .collect();
    keys.sort();
    let mut hook_ids: Vec<String> = rows
        .iter()
        .filter(|r| r.channel == "hook")
        .map(|r| r.id.to_string())
        .collect();
    hook_ids.sort();
    assert_eq!(keys, hook_ids);
    for request in &hooks {
        let body = request.json();
        assert_eq!(body["id"], request.header("idempotency-key").expect("key"));
        let header = request
            .header("x-sitemon-signature")
            .expect("a signed webhook");
        verify_signature(SECRET, header, &request.body).expect("a valid signature");
        // The signature covers the timestamp: another t, or another secret, does not verify.
        let (t, v1) = header.split_once(',').expect("t=…,v1=…");
        let moved = t.trim_start_matches("t=").parse::<i64>().expect("t") + 1;
        assert!(verify_signature(SECRET, &format!("t={moved},{v1}"), &request.body).is_err());
        assert!(verify_signature("another secret", header, &request.body).is_err());
        assert!(
            incidents
                .iter()
                .any(|i| body["incident_id"] == i.to_string()),
            "{body}"
        );
        assert!(["down", "resolved"].contains(&body["kind"].as_str().expect("kind")));
        assert!(
            body["text"]
                .as_str()
                .expect("text")
                .contains("127.0.0.1:9/site-")
        );
    }

    // PagerDuty: a trigger and a resolve per incident, the incident id as dedup_key.
    let mut pager: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for request in accepted.iter().filter(|r| r.path == "/v2/enqueue") {
        let body = request.json();
        assert_eq!(body["routing_key"], ROUTING_KEY);
        assert!(body["payload"]["summary"].is_string() && body["payload"]["severity"].is_string());
        pager
            .entry(body["dedup_key"].as_str().expect("dedup_key").to_owned())
            .or_default()
            .push(body["event_action"].as_str().expect("action").to_owned());
    }
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for incident in &incidents {
        expected.insert(
            incident.to_string(),
            vec!["resolve".into(), "trigger".into()],
        );
    }
    for actions in pager.values_mut() {
        actions.sort();
    }
    assert_eq!(pager, expected);

    // Slack: {"text": ...}, a DOWN and a RESOLVED per incident.
    let mut texts: Vec<String> = accepted
        .iter()
        .filter(|r| r.path == "/slack")
        .map(|r| r.json()["text"].as_str().expect("text").to_owned())
        .collect();
    texts.sort();
    assert_eq!(texts.len(), 4);
    assert_eq!(
        texts.iter().filter(|t| t.starts_with("DOWN: ")).count(),
        2,
        "{texts:?}"
    );
    assert_eq!(
        texts.iter().filter(|t| t.starts_with("RESOLVED: ")).count(),
        2,
        "{texts:?}"
    );
    receiver.close();
    db.drop_database().await;
}

#[tokio::test]
async fn retry_after_of_a_429_is_honoured() {
    let db = TestDb::migrated().await;
    let receiver = Receiver::ok().await;
    receiver.next_answer(429, Some(2));
    let settings = ChannelSettings::webhook("hook", &receiver.url("/hook"), None).expect("valid");
    admin::add_channel(&db.pool, "hook", &settings)
        .await
        .expect("added");
    let site = site(&db.pool, 0, SiteAlerts::default()).await;
    let processor = Processor::new(Policy::default());
    apply(
        &db.pool,
        &processor,
        &pattern(site, "eu", an_hour_ago(), "ddd"),
    )
    .await;
    let running = start(&db.pool, fast());
    wait_until(
        "the notification delivered",
        Duration::from_secs(30),
        || async {
            deliveries(&db.pool)
                .await
                .iter()
                .all(|r| r.state == "delivered")
        },
    )
    .await;
    running.stop().await;
    let received = receiver.received();
    assert_eq!(
        received.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 200]
    );
    let gap = received[1].at - received[0].at;
    // The back-off alone would have waited 100 ms ± 25 %.
    assert!(
        gap >= Duration::from_millis(1900),
        "retried after {gap:?}, not after Retry-After: 2"
    );
    assert_eq!(
        received[0].header("idempotency-key"),
        received[1].header("idempotency-key"),
        "a retry carries the same id"
    );
    let rows = deliveries(&db.pool).await;
    assert_eq!(rows[0].attempts, 2);
    receiver.close();
    db.drop_database().await;
}

#[tokio::test]
async fn a_rejecting_receiver_fails_at_once_and_a_failing_one_after_the_give_up_time() {
    let db = TestDb::migrated().await;
    let rejecting = Receiver::ok().await;
    rejecting.answer_with(404);
    let failing = Receiver::ok().await;
    failing.answer_with(503);
    for (name, receiver) in [("gone", &rejecting), ("broken", &failing)] {
        let settings = ChannelSettings::webhook(name, &receiver.url("/hook"), None).expect("valid");
        admin::add_channel(&db.pool, name, &settings)
            .await
            .expect("added");
    }
    let site = site(&db.pool, 0, SiteAlerts::default()).await;
    let processor = Processor::new(Policy::default());
    apply(
        &db.pool,
        &processor,
        &pattern(site, "eu", an_hour_ago(), "ddd"),
    )
    .await;
    let config = DeliveryConfig {
        give_up_after: Duration::from_secs(3),
        ..fast()
    };
    let running = start(&db.pool, config);
    wait_until(
        "both notifications finished",
        Duration::from_secs(30),
        || async {
            deliveries(&db.pool)
                .await
                .iter()
                .all(|r| r.state != "pending")
        },
    )
    .await;
    running.stop().await;
    let rows = deliveries(&db.pool).await;
    let gone = rows.iter().find(|r| r.channel == "gone").expect("row");
    assert_eq!(
        (gone.state.as_str(), gone.attempts),
        ("failed", 1),
        "{gone:?}"
    );
    assert!(
        gone.last_answer
            .as_deref()
            .is_some_and(|a| a.starts_with("HTTP 404")),
        "{gone:?}"
    );
    let broken = rows.iter().find(|r| r.channel == "broken").expect("row");
    assert_eq!(broken.state, "failed");
    assert!(broken.attempts >= 3, "{broken:?}");
    assert!(
        broken
            .last_answer
            .as_deref()
            .is_some_and(|a| a.starts_with("gave up after") && a.contains("HTTP 503")),
        "{broken:?}"
    );
    assert_eq!(rejecting.received().len(), 1);
    rejecting.close();
    failing.close();
    db.drop_database().await;
}

/// A real SMTP server: `python3 -m aiosmtpd` writing a maildir, killed on drop.
struct SmtpServer {
    port: u16,
    maildir: PathBuf,
    child: tokio::process::Child,
}

impl SmtpServer {
    async fn start() -> Self {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            probe.local_addr().expect("addr").port()
        };
        let maildir =
            std::env::temp_dir().join(format!("sitemon-maildir-{}", Uuid::new_v4().simple()));
        // Debian's python3-aiosmtpd, installed by `scripts/services up`; /usr/bin/python3 is
        // the interpreter it is installed for.
        let child = tokio::process::Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start /usr/bin/python3 -m aiosmtpd: run `scripts/services up` to install python3-aiosmtpd");
        let mut server = Self {
            port,
            maildir,
            child,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "aiosmtpd exited at start ({status}): is python3-aiosmtpd installed? `scripts/services up` installs it"
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "aiosmtpd did not listen within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    /// The messages received so far, as text.
    fn messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect()
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        let _ = std::fs::remove_dir_all(&self.maildir);
    }
}

#[tokio::test]
async fn email_goes_over_smtp_with_the_notification_id_as_message_id() {
    let db = TestDb::migrated().await;
    let smtp = SmtpServer::start().await;
    let settings = ChannelSettings::email(
        "mail",
        "ops@example.com",
        &format!("smtp://127.0.0.1:{}", smtp.port),
        Some("sitemon <alerts@example.com>"),
    )
    .expect("valid");
    admin::add_channel(&db.pool, "mail", &settings)
        .await
        .expect("added");
    let site = site(&db.pool, 0, SiteAlerts::default()).await;
    let processor = Processor::new(Policy::default());
    apply(
        &db.pool,
        &processor,
        &pattern(site, "eu", an_hour_ago(), "ddduu"),
    )
    .await;
    let running = start(&db.pool, fast());
    wait_until("both emails delivered", Duration::from_secs(30), || async {
        deliveries(&db.pool)
            .await
            .iter()
            .all(|r| r.state == "delivered")
    })
    .await;
    running.stop().await;
    let rows = deliveries(&db.pool).await;
    assert_eq!(rows.len(), 2);
    let messages = smtp.messages();
    assert_eq!(messages.len(), 2, "{messages:?}");
    for row in &rows {
        let message = messages
            .iter()
            .find(|m| m.contains(&format!("<{}@sitemon>", row.id)))
            .unwrap_or_else(|| panic!("no message with the Message-ID of {row:?}"));
        assert!(message.contains("To: ops@example.com"), "{message}");
        let subject = if row.kind == "down" {
            "Subject: DOWN: "
        } else {
            "Subject: RESOLVED: "
        };
        assert!(message.contains(subject), "{message}");
        assert!(
            row.last_answer
                .as_deref()
                .is_some_and(|a| a.starts_with("SMTP 250")),
            "{row:?}"
        );
        assert_eq!(row.incident_id, rows[0].incident_id);
    }
    smtp.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn two_delivery_loops_on_one_outbox_send_each_notification_once() {
    let db = TestDb::migrated().await;
    let receiver = Receiver::ok().await;
    for name in ["a", "b", "c"] {
        let settings = ChannelSettings::webhook(name, &receiver.url(&format!("/{name}")), None)
            .expect("valid");
        admin::add_channel(&db.pool, name, &settings)
            .await
            .expect("added");
    }
    let processor = Processor::new(Policy::default());
    let mut expected = 0;
    for n in 0..10 {
        let site = site(&db.pool, n, SiteAlerts::default()).await;
        apply(
            &db.pool,
            &processor,
            &pattern(site, "eu", an_hour_ago(), "ddduu"),
        )
        .await;
        expected += 6;
    }
    // Two at a time: thirty passes each, every one racing the other loop's.
    let config = DeliveryConfig {
        concurrency: 2,
        ..fast()
    };
    let first = start(&db.pool, config.clone());
    let second = start(&db.pool, config);
    wait_until(
        "every notification delivered",
        Duration::from_secs(60),
        || async {
            deliveries(&db.pool)
                .await
                .iter()
                .all(|r| r.state == "delivered")
        },
    )
    .await;
    first.stop().await;
    second.stop().await;
    let mut keys: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("idempotency-key").expect("a key").to_owned())
        .collect();
    assert_eq!(keys.len(), expected, "one request per notification");
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), expected, "no notification sent twice");
    assert!(deliveries(&db.pool).await.iter().all(|r| r.attempts == 1));
    receiver.close();
    db.drop_database().await;
}

#[tokio::test]
async fn a_loop_killed_with_a_request_in_flight_leaves_it_to_be_sent_again_with_the_same_id() {
    let db = TestDb::migrated().await;
    let receiver = Receiver::ok().await;
    receiver.next_answer(receiver::HANG, None);
    let settings = ChannelSettings::webhook("hook", &receiver.url("/hook"), None).expect("valid");
    admin::add_channel(&db.pool, "hook", &settings)
        .await
        .expect("added");
    let site = site(&db.pool, 0, SiteAlerts::default()).await;
    let processor = Processor::new(Policy::default());
    apply(
        &db.pool,
        &processor,
        &pattern(site, "eu", an_hour_ago(), "ddd"),
    )
    .await;
    let config = DeliveryConfig {
        claim_for: Duration::from_secs(2),
        ..fast()
    };

    // The first loop's request hangs; the loop is killed (aborted, no clean stop).
    let killed = start(&db.pool, config.clone());
    wait_until("the request in flight", Duration::from_secs(30), || async {
        receiver.received().len() == 1
    })
    .await;
    killed.task.abort();
    let _ = killed.task.await;
    let row = &deliveries(&db.pool).await[0];
    assert_eq!(
        (row.state.as_str(), row.attempts),
        ("pending", 1),
        "{row:?}"
    );

    // Another loop takes it once the claim expires, and the receiver sees the same id.
    let second = start(&db.pool, config);
    wait_until(
        "the notification delivered by the second loop",
        Duration::from_secs(30),
        || async {
            deliveries(&db.pool)
                .await
                .iter()
                .all(|r| r.state == "delivered")
        },
    )
    .await;
    second.stop().await;
    let received = receiver.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(
        received[0].header("idempotency-key"),
        received[1].header("idempotency-key")
    );
    assert_eq!(
        received[1].header("idempotency-key"),
        Some(deliveries(&db.pool).await[0].id.to_string().as_str())
    );
    assert_eq!(
        received[1].body, received[0].body,
        "the same notification, byte for byte"
    );
    receiver.close();
    db.drop_database().await;
}

/// `next_attempt_at` and `throttled_until` of a channel's rows, as seconds from now.
async fn waits(pool: &PgPool, channel: &str) -> (Vec<f64>, Option<f64>) {
    let rows: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM next_attempt_at - now())::float8 FROM alert_outbox
         WHERE channel = $1 ORDER BY id",
    )
    .bind(channel)
    .fetch_all(pool)
    .await
    .expect("outbox");
    let throttle: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM throttled_until - now())::float8 FROM alert_channels
         WHERE name = $1",
    )
    .bind(channel)
    .fetch_one(pool)
    .await
    .expect("channel");
    (rows, throttle)
}

#[tokio::test]
async fn a_retry_after_of_2_pow_64_minus_1_waits_until_the_give_up_time_without_a_panic() {
    let db = TestDb::migrated().await;
    // A 500 first, so that the notification is more than a second old when the 429 comes:
    // the old code added 2^64 - 1 s to that age and panicked.
    let throttling = Receiver::ok().await;
    throttling.next_answer(500, None);
    throttling.next_answer(429, Some(u64::MAX));
    let unavailable = Receiver::ok().await;
    unavailable.next_answer(503, Some(99_999_999_999));
    for (name, receiver) in [("throttling", &throttling), ("unavailable", &unavailable)] {
        let settings = ChannelSettings::webhook(name, &receiver.url("/hook"), None).expect("valid");
        admin::add_channel(&db.pool, name, &settings)
            .await
            .expect("added");
    }
    let site = site(&db.pool, 0, SiteAlerts::default()).await;
    let processor = Processor::new(Policy::default());
    apply(
        &db.pool,
        &processor,
        &pattern(site, "eu", an_hour_ago(), "ddd"),
    )
    .await;
    // The retry after the 500 comes 1.1 to 1.9 s later.
    let config = DeliveryConfig {
        backoff: Backoff::new(Duration::from_millis(1500), Duration::from_secs(2)),
        ..fast()
    };
    let running = start(&db.pool, config);
    wait_until(
        "both hostile answers recorded",
        Duration::from_secs(30),
        || async {
            deliveries(&db.pool).await.iter().all(|r| {
                r.last_answer
                    .as_deref()
                    .is_some_and(|a| a.starts_with("HTTP 429") || a.starts_with("HTTP 503"))
            }) || running.task.is_finished()
        },
    )
    .await;
    // The loop is alive (the old code panicked adding the wait to the row's age), and stops
    // cleanly.
    assert!(!running.task.is_finished(), "the delivery loop ended");
    running.stop().await;
    let day = 24.0 * 3600.0;
    for name in ["throttling", "unavailable"] {
        let row = deliveries(&db.pool)
            .await
            .into_iter()
            .find(|r| r.channel == name)
            .expect("row");
        // Not lost: still pending, to be tried again at the give-up time (24 h after it was
        // written), and its channel throttled as long.
        let tried = if name == "throttling" { 2 } else { 1 };
        assert_eq!(
            (row.state.as_str(), row.attempts),
            ("pending", tried),
            "{row:?}"
        );
        let (rows, throttle) = waits(&db.pool, name).await;
        assert!(
            rows[0] > day - 120.0 && rows[0] <= day,
            "{name}: retried in {} s, not at the give-up time",
            rows[0]
        );
        let throttle = throttle.expect("the channel is throttled");
        assert!(
            throttle > day - 120.0 && throttle <= day,
            "{name}: {throttle} s"
        );
    }
    throttling.close();
    unavailable.close();
    db.drop_database().await;
}

#[tokio::test]
async fn a_blackholed_receiver_holds_its_own_channel_only() {
    let db = TestDb::migrated().await;
    // Takes every request and never answers: each attempt lasts the 10 s request timeout.
    let hole = Receiver::ok().await;
    hole.answer_with(receiver::HANG);
    let good = Receiver::ok().await;
    for (name, receiver) in [("hole", &hole), ("good", &good)] {
        let settings = ChannelSettings::webhook(name, &receiver.url("/hook"), None).expect("valid");
        admin::add_channel(&db.pool, name, &settings)
            .await
            .expect("added");
    }
    let processor = Processor::new(Policy::default());
    let first = site(&db.pool, 0, SiteAlerts::default()).await;
    apply(
        &db.pool,
        &processor,
        &pattern(first, "eu", an_hour_ago(), "ddd"),
    )
    .await;
    let running = start(&db.pool, fast());
    wait_until(
        "the first notification at both receivers",
        Duration::from_secs(30),
        || async { hole.received().len() == 1 && good.received().len() == 1 },
    )
    .await;

    // While the hole's request hangs, two more sites go down: the healthy channel gets
    // their notifications while the hole's first attempt is still unanswered.
    for n in 1..=2 {
        let more = site(&db.pool, n, SiteAlerts::default()).await;
        apply(
            &db.pool,
            &processor,
            &pattern(more, "eu", an_hour_ago(), "ddd"),
        )
        .await;
    }
    wait_until(
        "the healthy channel's later notifications",
        Duration::from_secs(60),
        || async { good.received().len() == 3 },
    )
    .await;
    let rows = deliveries(&db.pool).await;
    let in_flight: Vec<_> = rows
        .iter()
        .filter(|r| r.channel == "hole" && r.attempts == 1 && r.last_answer.is_none())
        .collect();
    assert_eq!(
        in_flight.len(),
        1,
        "the hole's first request is still in flight (not yet released by its timeout) when \
         the healthy channel is done: {rows:?}"
    );
    assert_eq!(
        hole.received().len(),
        1,
        "one request at a time to the hole"
    );
    assert!(
        rows.iter()
            .filter(|r| r.channel == "good")
            .all(|r| r.state == "delivered"),
        "{rows:?}"
    );
    running.stop().await;
    hole.close();
    good.close();
    db.drop_database().await;
}

#[tokio::test]
async fn a_throttled_channel_waits_its_retry_after_for_every_row_while_the_others_go_on() {
    let db = TestDb::migrated().await;
    let slow = Receiver::ok().await;
    slow.next_answer(429, Some(4));
    let good = Receiver::ok().await;
    for (name, receiver) in [("slow", &slow), ("good", &good)] {
        let settings = ChannelSettings::webhook(name, &receiver.url("/hook"), None).expect("valid");
        admin::add_channel(&db.pool, name, &settings)
            .await
            .expect("added");
    }
    let processor = Processor::new(Policy::default());
    for n in 0..3 {
        let site = site(&db.pool, n, SiteAlerts::default()).await;
        apply(
            &db.pool,
            &processor,
            &pattern(site, "eu", an_hour_ago(), "ddd"),
        )
        .await;
    }
    let running = start(&db.pool, fast());
    wait_until(
        "every notification delivered",
        Duration::from_secs(60),
        || async {
            deliveries(&db.pool)
                .await
                .iter()
                .all(|r| r.state == "delivered")
        },
    )
    .await;
    running.stop().await;
    let slow_requests = slow.received();
    assert_eq!(
        slow_requests.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 200, 200, 200],
        "one 429, then each notification once"
    );
    // No row of the throttled channel was tried before its Retry-After (the back-off alone
    // would have waited 100 ms, and the other rows none at all).
    for later in &slow_requests[1..] {
        let gap = later.at - slow_requests[0].at;
        assert!(
            gap >= Duration::from_millis(3900),
            "a request {gap:?} after the 429, not after Retry-After: 4"
        );
    }
    // The other channel did not wait for it.
    let good_requests = good.received();
    assert_eq!(good_requests.len(), 3);
    assert!(
        good_requests.iter().all(|r| r.at < slow_requests[1].at),
        "the healthy channel was held by the throttled one"
    );
    slow.close();
    good.close();
    db.drop_database().await;
}
