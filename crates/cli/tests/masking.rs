//! A URL's password leaves nowhere but `export`: sites with `user:secret@` in their URL, a
//! redirect to another URL with a password and a token, an error that quotes such URLs, and a
//! 300 KB `Location`, checked by `sitemon run --listen` (checker, sync, alerts, dashboard in
//! one process); then the events in Kafka, the rows, the CLI's outputs, the API's checks and
//! the webhook notifications are searched for the password.

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use sitemon_testkit::http::free_port;
use sitemon_testkit::receiver::{Receiver, wait_until};
use sitemon_testkit::{TestDb, random_topic};
use support::{run, sitemon, sitemon_with_database, stderr, stdout, terminate, wait_with_timeout};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// The password every URL of this test carries: it must appear in no output but `export`'s.
const SECRET: &str = "secret";
/// The most the test waits for the pipeline: a bound against hanging, not a speed.
const PATIENCE: Duration = Duration::from_secs(120);
/// The size of the hostile `Location`.
const HUGE: usize = 300_000;
/// The mark of a cut message and its number, at most.
const MARK: usize = 40;

/// Kills the process if the test ends before stopping it.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server whose answers quote passwords: `/hop` redirects to `/down` with a password and a
/// token, `/down` is a 500, `/bad` redirects to a `Location` that is no URL (the error quotes
/// it), `/huge` to a 300 KB one.
async fn hostile_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < (512 << 10) {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split(' ').nth(1).unwrap_or("/");
                let path = path.split('?').next().unwrap_or("/");
                let (status, location) = match path {
                    "/hop" => (
                        "302 Found",
                        format!("http://hop:{SECRET}@{addr}/down?token={SECRET}"),
                    ),
                    "/bad" => (
                        "302 Found",
                        format!("http://q:{SECRET}@[not-a-host/x?token={SECRET}"),
                    ),
                    "/huge" => (
                        "302 Found",
                        format!("http://z:{SECRET}@[{}", "x".repeat(HUGE)),
                    ),
                    _ => ("500 Internal Server Error", String::new()),
                };
                let location = if location.is_empty() {
                    String::new()
                } else {
                    format!("Location: {location}\r\n")
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\n{location}Content-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// `GET path` from the dashboard at `addr`: (status, body), or `None` while nothing answers.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Fails naming `what` when `text` holds the password.
fn assert_no_secret(what: &str, text: &str) {
    if let Some(at) = text.find(SECRET) {
        let start = text[..at]
            .char_indices()
            .rev()
            .nth(80)
            .map_or(0, |(i, _)| i);
        let end = (at + 80).min(text.len());
        let end = (end..=text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        panic!("{what} holds the password: …{}…", &text[start..end]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_leaves_but_through_export() {
    let db = TestDb::migrated().await;
    let topic = random_topic();
    let server = hostile_server().await;
    let receiver = Receiver::ok().await;
    for (name, path, full) in [("hook", "/hook", false), ("full", "/full", true)] {
        let mut command = sitemon_with_database(&db.url);
        command.args(["channel", "add", name, "--webhook", &receiver.url(path)]);
        if full {
            command.arg("--full-urls");
        }
        let added = run(&mut command);
        assert!(added.status.success(), "{}", stderr(&added));
    }
    let hop = format!("http://user:{SECRET}@{server}/hop");
    let bad = format!("http://user:{SECRET}@{server}/bad?token={SECRET}");
    let huge = format!("http://{server}/huge");
    let mut sites = Vec::new();
    for url in [&hop, &bad, &huge] {
        let id: i32 = sqlx::query_scalar(
            "INSERT INTO websites (url, check_interval) VALUES ($1, 1) RETURNING id",
        )
        .bind(url)
        .fetch_one(&db.pool)
        .await
        .expect("adds a site");
        sites.push(id);
    }

    let listen = free_port();
    let log_path = std::env::temp_dir().join(sitemon_testkit::unique_name("sitemon-masking"));
    let log_file = std::fs::File::create(&log_path).expect("log file");
    let child = sitemon(&db, &topic)
        .args(["run", "--partitions", "1", "--listen", &listen.to_string()])
        .args(["--failure-threshold", "1", "--success-threshold", "1"])
        .args(["--reminder-every", "0", "--cert-expiry-days", "0"])
        .args(["--alert-start", "earliest"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .spawn()
        .expect("sitemon run starts");
    let mut guard = Guard(child);

    // Every site has stored checks (the 300 KB one too: its event is not dropped), and both
    // channels have a down notification of the two sites whose URL has a password.
    wait_until("rows of every site", PATIENCE, || async {
        let stored: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT website_id) FROM website_status WHERE website_id = ANY($1)",
        )
        .bind(&sites)
        .fetch_one(&db.pool)
        .await
        .expect("counts");
        stored == 3
    })
    .await;
    wait_until(
        "a notification of each site on each channel",
        PATIENCE,
        || {
            let received = receiver.received();
            let sites = sites.clone();
            async move {
                ["/hook", "/full"].iter().all(|path| {
                    sites.iter().all(|site| {
                        received.iter().any(|r| {
                            r.path == *path
                                && r.json()["site"]["id"].as_i64() == Some(i64::from(*site))
                        })
                    })
                })
            }
        },
    )
    .await;

    // The events in Kafka.
    let client = sitemon_core::kafka::connect(&sitemon_testkit::kafka_config(&topic))
        .await
        .expect("connects");
    let records = sitemon_testkit::topic::read(&client, &topic)
        .await
        .expect("the topic exists");
    assert!(!records.is_empty());
    for record in &records {
        let value = record.value.clone().expect("a value");
        assert_no_secret("an event in Kafka", &String::from_utf8_lossy(&value));
        let event = sitemon_core::CheckEvent::from_json(&value).expect("an event");
        if let Some(error) = &event.error {
            assert!(
                error.message.len() <= sitemon_core::mask::MAX_MESSAGE_BYTES + MARK,
                "an event's message of {} bytes",
                error.message.len()
            );
        }
    }

    // The rows, and the bounded message of the 300 KB `Location`.
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT request_info::text FROM website_status WHERE website_id = ANY($1)",
    )
    .bind(&sites)
    .fetch_all(&db.pool)
    .await
    .expect("rows");
    for row in &rows {
        assert_no_secret("a row of website_status", row);
    }
    let messages: Vec<String> = sqlx::query_scalar(
        "SELECT request_info -> 'error' ->> 'message' FROM website_status WHERE website_id = $1",
    )
    .bind(sites[2])
    .fetch_all(&db.pool)
    .await
    .expect("messages");
    assert!(!messages.is_empty());
    for message in &messages {
        assert!(
            message.len() <= sitemon_core::mask::MAX_MESSAGE_BYTES + MARK,
            "a message of {} bytes is stored",
            message.len()
        );
        assert!(message.ends_with(" bytes]"), "not marked as cut: {message}");
    }
    let errors: Vec<String> = sqlx::query_scalar(
        "SELECT coalesce(first_error, '') FROM alert_incidents WHERE website_id = ANY($1)",
    )
    .bind(&sites)
    .fetch_all(&db.pool)
    .await
    .expect("incidents");
    for error in &errors {
        assert_no_secret("an incident's first error", error);
    }

    // The CLI's outputs.
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["list-sites"],
        &["list-sites", "--json"],
        &["alerts"],
        &["alerts", "--json"],
        &["channel", "list"],
        &["history", &sites[1].to_string()],
    ] {
        let output = run(sitemon_with_database(&db.url).args(args));
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
        assert_no_secret(&format!("sitemon {args:?}"), &stdout(&output));
        assert_no_secret(&format!("sitemon {args:?} (stderr)"), &stderr(&output));
    }
    let duplicate = run(sitemon_with_database(&db.url).args(["add-site", &hop]));
    assert!(!duplicate.status.success());
    assert!(
        stderr(&duplicate).contains("already registered"),
        "{}",
        stderr(&duplicate)
    );
    assert_no_secret("the duplicate-URL error", &stderr(&duplicate));

    // The dashboard's API and site page.
    for site in &sites {
        for path in [
            format!("/api/v1/sites/{site}/checks"),
            format!("/sites/{site}"),
            format!("/api/v1/sites/{site}"),
        ] {
            let deadline = Instant::now() + Duration::from_secs(30);
            let body = loop {
                match get(listen, &path) {
                    Some((200, body)) => break body,
                    other => assert!(Instant::now() < deadline, "GET {path}: {other:?}"),
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            assert_no_secret(&format!("GET {path}"), &body);
        }
    }

    // The notifications: masked but on the channel that asked for full URLs.
    let received = receiver.received();
    for request in received.iter().filter(|r| r.path == "/hook") {
        assert_no_secret(
            "a webhook notification",
            &String::from_utf8_lossy(&request.body),
        );
    }
    let full = received
        .iter()
        .find(|r| r.path == "/full" && r.json()["site"]["id"].as_i64() == Some(i64::from(sites[0])))
        .expect("a notification on the full-URL channel");
    assert_eq!(full.json()["site"]["url"], hop.as_str());

    // `update-site --url` masks the URL before and after the change.
    let updated = run(sitemon_with_database(&db.url).args([
        "update-site",
        &sites[0].to_string(),
        "--url",
        &format!("{hop}?token={SECRET}"),
    ]));
    assert!(updated.status.success(), "{}", stderr(&updated));
    assert!(stdout(&updated).starts_with("~ "), "{}", stdout(&updated));
    assert_no_secret("update-site", &stdout(&updated));

    // Only `export`, which must round-trip, prints the password.
    let exported = run(sitemon_with_database(&db.url).arg("export"));
    assert!(exported.status.success(), "{}", stderr(&exported));
    assert!(
        stdout(&exported).contains(&format!("user:{SECRET}@")),
        "{}",
        stdout(&exported)
    );

    terminate(&guard.0);
    let status = wait_with_timeout(&mut guard.0, Duration::from_secs(60), "sitemon run");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    assert!(status.success(), "{status}");
    assert_no_secret("sitemon run's log", &log);
    db.drop_database().await;
}
