//! The alerting commands of the `sitemon` binary against the real PostgreSQL: channels,
//! maintenance windows, add-site's alert flags and `sitemon alerts`. Secrets never appear in
//! any output; bad input gives one line and writes nothing.

mod support;

use std::process::Output;

use sitemon_alert::{Policy, Processor};
use sitemon_core::event::EVENT_SCHEMA_VERSION;
use sitemon_core::{CheckError, CheckEvent, ErrorKind, Method, ProbeTimings};
use sitemon_testkit::TestDb;
use support::{run, sitemon_with_database, stderr, stdout};
use time::OffsetDateTime;
use uuid::Uuid;

/// A token that would show if any secret were printed.
const TOKEN: &str = "XyzzySecretToken0042";

fn sitemon(db: &TestDb, args: &[&str]) -> Output {
    run(sitemon_with_database(&db.url).args(args))
}

#[track_caller]
fn assert_ok(output: &Output) {
    assert!(output.status.success(), "stderr: {}", stderr(output));
    assert_no_secret(output);
}

#[track_caller]
fn assert_no_secret(output: &Output) {
    let all = format!("{}{}", stdout(output), stderr(output));
    assert!(!all.contains(TOKEN), "a secret was printed: {all}");
}

#[track_caller]
fn assert_fails(output: &Output, expected: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.contains(expected), "expected {expected:?} in {err:?}");
    assert_no_secret(output);
}

#[track_caller]
fn assert_usage(output: &Output, expected: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.contains(expected), "expected {expected:?} in {err:?}");
    assert_no_secret(output);
}

async fn channel_rows(db: &TestDb) -> Vec<(String, String)> {
    sqlx::query_as("SELECT name, kind FROM alert_channels ORDER BY name")
        .fetch_all(&db.pool)
        .await
        .expect("channels")
}

/// A receiver on 127.0.0.1 that answers every request 200 after reading it whole, and
/// keeps each request's text.
async fn receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let log: std::sync::Arc<std::sync::Mutex<Vec<String>>> = std::sync::Arc::default();
    let requests = std::sync::Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let requests = std::sync::Arc::clone(&requests);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0_u8; 4096];
                loop {
                    let text = String::from_utf8_lossy(&seen).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            requests.lock().expect("log").push(text);
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                                .await;
                            return;
                        }
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    (url, log)
}

// Multi-threaded: the receiver runs while the test thread waits for the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_are_added_listed_masked_tested_and_removed() {
    let db = TestDb::migrated().await;
    let (url, requests) = receiver().await;
    let hook = format!("{url}?token={TOKEN}");
    assert_ok(&sitemon(
        &db,
        &[
            "channel",
            "add",
            "hook",
            "--webhook",
            &hook,
            "--secret",
            TOKEN,
        ],
    ));
    let slack = format!("https://hooks.slack.example/services/{TOKEN}");
    assert_ok(&sitemon(
        &db,
        &["channel", "add", "slack", "--slack", &slack],
    ));
    assert_ok(&sitemon(
        &db,
        &["channel", "add", "pager", "--pagerduty", TOKEN],
    ));
    let smtp = format!("smtps://alerts:{TOKEN}@smtp.example.invalid");
    assert_ok(&sitemon(
        &db,
        &[
            "channel",
            "add",
            "mail",
            "--email",
            "ops@example.com",
            "--smtp",
            &smtp,
        ],
    ));

    let list = sitemon(&db, &["channel", "list"]);
    assert_ok(&list);
    let text = stdout(&list);
    assert!(
        text.contains("hook") && text.contains("webhook") && text.contains("(signed)"),
        "{text}"
    );
    assert!(text.contains("https://hooks.slack.example/…"), "{text}");
    assert!(text.contains("routing key …0042"), "{text}");
    assert!(
        text.contains("ops@example.com via smtps://smtp.example.invalid/…"),
        "{text}"
    );
    let json = sitemon(&db, &["channel", "list", "--json"]);
    assert_ok(&json);
    let listed: serde_json::Value = serde_json::from_str(&stdout(&json)).expect("JSON");
    assert_eq!(listed.as_array().expect("array").len(), 4);

    // A test notification to the local server: its answer is printed.
    let tested = sitemon(&db, &["channel", "test", "hook"]);
    assert_ok(&tested);
    assert_eq!(stdout(&tested), "delivered: HTTP 200: ok\n");
    let requests = requests.lock().expect("log").clone();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0].starts_with(&format!("POST /hook?token={TOKEN} HTTP/1.1")),
        "{}",
        requests[0]
    );
    assert!(requests[0].contains("\"kind\":\"test\""), "{}", requests[0]);
    assert!(
        requests[0]
            .to_ascii_lowercase()
            .contains("x-sitemon-signature: t="),
        "{}",
        requests[0]
    );
    // A channel whose receiver is not there: exit 1, the reason, no URL.
    let closed = sitemon_testkit::http::free_port();
    let url = format!("http://{closed}/{TOKEN}");
    assert_ok(&sitemon(
        &db,
        &["channel", "add", "nowhere", "--webhook", &url],
    ));
    assert_fails(
        &sitemon(&db, &["channel", "test", "nowhere"]),
        "cannot connect",
    );

    assert_ok(&sitemon(&db, &["channel", "remove", "slack"]));
    assert_fails(
        &sitemon(&db, &["channel", "remove", "slack"]),
        "no channel is named \"slack\"",
    );
    assert_fails(
        &sitemon(&db, &["channel", "test", "slack"]),
        "no channel is named \"slack\"",
    );
    let names: Vec<String> = channel_rows(&db).await.into_iter().map(|c| c.0).collect();
    assert_eq!(names, ["hook", "mail", "nowhere", "pager"]);
    db.drop_database().await;
}

#[tokio::test]
async fn bad_channel_settings_give_one_line_and_write_nothing() {
    let db = TestDb::migrated().await;
    assert_ok(&sitemon(
        &db,
        &["channel", "add", "taken", "--pagerduty", "abc123"],
    ));
    let before = channel_rows(&db).await;
    let opportunistic = format!("smtp://u:{TOKEN}@mail.example.com:587?tls=opportunistic");
    let cases: [(&[&str], &str); 9] = [
        (
            &["bad name!", "--webhook", "https://x.example/"],
            "a name is 1 to 64",
        ),
        (
            &["w", "--webhook", &format!("ftp://x.example/{TOKEN}")],
            "--webhook must be an absolute http",
        ),
        (
            &["w", "--webhook", &format!("{TOKEN}.example/hook")],
            "--webhook must be an absolute http",
        ),
        (
            &["s", "--slack", &format!("hooks.slack.com/{TOKEN}")],
            "--slack must be an absolute http",
        ),
        (
            &["p", "--pagerduty", &format!("{TOKEN} !")],
            "--pagerduty must be the integration's routing key",
        ),
        (
            &[
                "m",
                "--email",
                "ops@example.com",
                "--smtp",
                &format!("smtp://u:{TOKEN}@mail.example.com"),
            ],
            "clear text",
        ),
        (
            &["m", "--email", "ops@example.com", "--smtp", &opportunistic],
            "--smtp would send its password in clear text",
        ),
        (
            &[
                "m",
                "--email",
                &format!("{TOKEN}-not-an-address"),
                "--smtp",
                "smtps://mail.example.com",
            ],
            "--email must be an address",
        ),
        (&["taken", "--pagerduty", TOKEN], "exists already"),
    ];
    for (args, expected) in cases {
        let mut all = vec!["channel", "add"];
        all.extend_from_slice(args);
        let output = sitemon(&db, &all);
        if expected == "exists already" {
            assert_fails(&output, expected);
        } else {
            // Refused before any I/O: a usage error, exit 2, one line.
            assert_usage(&output, expected);
        }
    }
    // Usage errors (no kind, two kinds): exit 2, nothing written.
    let none = sitemon(&db, &["channel", "add", "x"]);
    assert_eq!(none.status.code(), Some(2), "{}", stderr(&none));
    let two = sitemon(
        &db,
        &[
            "channel",
            "add",
            "x",
            "--slack",
            "https://a.example/",
            "--pagerduty",
            TOKEN,
        ],
    );
    assert_eq!(two.status.code(), Some(2), "{}", stderr(&two));
    assert_eq!(channel_rows(&db).await, before);
    db.drop_database().await;
}

#[tokio::test]
async fn maintenance_windows_are_added_listed_and_removed() {
    let db = TestDb::migrated().await;
    let site = stdout(&sitemon(&db, &["add-site", "http://127.0.0.1:9/a"]))
        .trim()
        .to_owned();
    let added = sitemon(
        &db,
        &[
            "maintenance",
            "add",
            "--site",
            &site,
            "--from",
            "2026-12-01T02:00:00Z",
            "--until",
            "2026-12-01T04:00:00Z",
        ],
    );
    assert_ok(&added);
    let id = stdout(&added).trim().to_owned();
    assert_ok(&sitemon(
        &db,
        &["maintenance", "add", "--from", "now", "--until", "+1h"],
    ));
    let list = sitemon(&db, &["maintenance", "list"]);
    assert_ok(&list);
    let text = stdout(&list);
    let line: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with(&format!("{id} ")))
        .expect("the window's line")
        .split_whitespace()
        .collect();
    assert_eq!(
        line,
        [
            id.as_str(),
            site.as_str(),
            "2026-12-01T02:00:00Z",
            "2026-12-01T04:00:00Z"
        ]
    );
    assert!(text.contains(" all "), "{text}");

    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM alert_maintenance")
            .fetch_one(&db.pool)
            .await
            .expect("count")
    };
    assert_fails(
        &sitemon(
            &db,
            &[
                "maintenance",
                "add",
                "--from",
                "2026-12-01T04:00:00Z",
                "--until",
                "2026-12-01T02:00:00Z",
            ],
        ),
        "invalid --until: the window must end after it starts",
    );
    assert_fails(
        &sitemon(
            &db,
            &[
                "maintenance",
                "add",
                "--site",
                "999999",
                "--from",
                "now",
                "--until",
                "+1h",
            ],
        ),
        "no site has id 999999",
    );
    let bad_time = sitemon(
        &db,
        &["maintenance", "add", "--from", "tomorrow", "--until", "+1h"],
    );
    assert_eq!(bad_time.status.code(), Some(2), "{}", stderr(&bad_time));
    assert!(
        stderr(&bad_time).contains("--from"),
        "{}",
        stderr(&bad_time)
    );
    assert_eq!(count().await, 2);

    assert_ok(&sitemon(&db, &["maintenance", "remove", &id]));
    assert_fails(
        &sitemon(&db, &["maintenance", "remove", &id]),
        &format!("no maintenance window has id {id}"),
    );
    assert_eq!(count().await, 1);
    db.drop_database().await;
}

/// The alert columns of `websites`.
type AlertColumns = (
    Option<i32>,
    Option<i32>,
    Option<i32>,
    Option<f64>,
    Option<i32>,
    Option<Vec<String>>,
);

#[tokio::test]
async fn add_site_stores_alert_settings_and_refuses_bad_ones_writing_nothing() {
    let db = TestDb::migrated().await;
    assert_ok(&sitemon(
        &db,
        &["channel", "add", "ops", "--pagerduty", "abc123"],
    ));
    let added = sitemon(
        &db,
        &[
            "add-site",
            "http://127.0.0.1:9/a",
            "--failure-threshold",
            "5",
            "--success-threshold",
            "1",
            "--min-locations",
            "2",
            "--reminder-every",
            "30m",
            "--cert-expiry-days",
            "7",
            "--channels",
            "ops",
        ],
    );
    assert_ok(&added);
    let id: i32 = stdout(&added).trim().parse().expect("the id");
    let row: AlertColumns = sqlx::query_as(
        "SELECT failure_threshold, success_threshold, min_locations,
                EXTRACT(EPOCH FROM reminder_every)::float8, cert_expiry_days, channels
         FROM websites WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .expect("the site");
    assert_eq!(
        row,
        (
            Some(5),
            Some(1),
            Some(2),
            Some(1800.0),
            Some(7),
            Some(vec!["ops".to_owned()])
        )
    );
    // Without alert flags every column stays NULL (the service's defaults).
    let plain = sitemon(
        &db,
        &["add-site", "http://127.0.0.1:9/b", "--reminder-every", "0"],
    );
    assert_ok(&plain);
    let reminder: Option<f64> = sqlx::query_scalar("SELECT EXTRACT(EPOCH FROM reminder_every)::float8 FROM websites WHERE url = 'http://127.0.0.1:9/b'")
        .fetch_one(&db.pool)
        .await
        .expect("the site");
    assert_eq!(
        reminder,
        Some(0.0),
        "--reminder-every 0 turns reminders off for this site"
    );

    let sites = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM websites")
            .fetch_one(&db.pool)
            .await
            .expect("count")
    };
    let cases: [(&[&str], &str); 5] = [
        (
            &["--failure-threshold", "0"],
            "invalid alerts.failure_threshold 0: must be a whole number from 1 to 1000",
        ),
        (
            &["--min-locations", "101"],
            "invalid alerts.min_locations 101",
        ),
        (
            &["--cert-expiry-days", "-1"],
            "invalid alerts.cert_expiry_days \"-1\"",
        ),
        (
            &["--channels", "ops,nope"],
            "invalid alerts.channels \"nope\": no channel has this name",
        ),
        (
            &["--channels", "bad name"],
            "invalid alerts.channels \"bad name\"",
        ),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["add-site", "http://127.0.0.1:9/c"];
        args.extend_from_slice(flags);
        assert_fails(&sitemon(&db, &args), expected);
    }
    assert_eq!(sites().await, 2, "nothing written");
    db.drop_database().await;
}

fn event(site: i32, at: OffsetDateTime, up: bool) -> CheckEvent {
    CheckEvent {
        schema: EVENT_SCHEMA_VERSION,
        check_id: Uuid::now_v7(),
        website_id: site,
        url: "http://127.0.0.1:9/a".to_owned(),
        location: "eu".to_owned(),
        checked_at: at,
        up,
        status_code: up.then_some(200),
        response_time_ms: up.then_some(3.0),
        regex: None,
        regex_matched: None,
        error: (!up).then(|| CheckError {
            kind: ErrorKind::Connect,
            message: "connection refused".to_owned(),
        }),
        timings_ms: ProbeTimings::default(),
        redirects: 0,
        final_url: None,
        tls_cert_not_after: None,
        method: Method::Get,
        expect_status: None,
        regex_must_not_match: None,
        regex_must_not_match_found: None,
        degraded_after_ms: None,
        degraded: false,
        failed_assertion: None,
    }
}

#[tokio::test]
async fn alerts_lists_incidents_with_their_notifications_and_no_secret() {
    let db = TestDb::migrated().await;
    let hook = format!("http://127.0.0.1:9/{TOKEN}");
    assert_ok(&sitemon(
        &db,
        &[
            "channel",
            "add",
            "hook",
            "--webhook",
            &hook,
            "--secret",
            TOKEN,
        ],
    ));
    let a: i32 = stdout(&sitemon(&db, &["add-site", "http://127.0.0.1:9/a"]))
        .trim()
        .parse()
        .expect("id");
    let b: i32 = stdout(&sitemon(&db, &["add-site", "http://127.0.0.1:9/b"]))
        .trim()
        .parse()
        .expect("id");
    let processor = Processor::new(Policy::default());
    let start = OffsetDateTime::now_utc() - time::Duration::minutes(30);
    let mut events = Vec::new();
    for (i, up) in [false, false, false, true, true].into_iter().enumerate() {
        events.push(event(a, start + time::Duration::seconds(10 * i as i64), up));
    }
    for i in 0..3 {
        events.push(event(b, start + time::Duration::seconds(10 * i), false));
    }
    let mut tx = db.pool.begin().await.expect("begin");
    processor.apply(&mut tx, &events).await.expect("apply");
    tx.commit().await.expect("commit");

    let all = sitemon(&db, &["alerts", "--json"]);
    assert_ok(&all);
    let incidents: serde_json::Value = serde_json::from_str(&stdout(&all)).expect("JSON");
    let incidents = incidents.as_array().expect("array");
    assert_eq!(incidents.len(), 2);
    let resolved = incidents
        .iter()
        .find(|i| i["website_id"] == a)
        .expect("site a's incident");
    assert_eq!(resolved["id"], events[2].check_id.to_string());
    assert_eq!(resolved["duration_secs"], 20);
    assert_eq!(resolved["locations"], serde_json::json!(["eu"]));
    let kinds: Vec<&str> = resolved["notifications"]
        .as_array()
        .expect("notifications")
        .iter()
        .map(|n| n["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, ["down", "resolved"]);
    assert_eq!(resolved["notifications"][0]["state"], "pending");

    let open = sitemon(&db, &["alerts", "--open"]);
    assert_ok(&open);
    let text = stdout(&open);
    assert_eq!(
        text.lines().count(),
        2,
        "a header and site b's incident: {text}"
    );
    assert!(
        text.contains("http://127.0.0.1:9/b")
            && text.contains("open")
            && text.contains("down hook: pending"),
        "{text}"
    );
    let recent = sitemon(&db, &["alerts", "--since", "1m", "--json"]);
    assert_ok(&recent);
    assert_eq!(stdout(&recent).trim(), "[]");
    db.drop_database().await;
}
