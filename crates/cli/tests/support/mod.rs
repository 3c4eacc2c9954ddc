//! Helpers shared by the tests of the `sitemon` binary: the command with a clean
//! environment, local HTTP targets, producing with kcat, reading `/metrics`.
//!
//! Each test binary uses its own subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sitemon_testkit::{TestDb, services};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// `sitemon` with only the test's settings: the database, the plaintext brokers, the topic.
pub(crate) fn sitemon(db: &TestDb, topic: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sitemon"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("KAFKA_BROKERS", &services().kafka_brokers)
        .env("KAFKA_TOPIC", topic);
    command
}

/// Sends SIGTERM, as a service manager does.
pub(crate) fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -TERM {}", child.id());
}

/// A server on 127.0.0.1 answering 200 "ok", or 500 on paths that contain `/500`.
pub(crate) async fn http_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0_u8; 4096];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]);
                let status = if head.contains("/500") {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// A port that was free a moment ago.
pub(crate) fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
    listener.local_addr().expect("an address")
}

/// The body of `GET /metrics` from `addr`, or `None` while nothing answers there yet.
pub(crate) fn scrape(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: sitemon\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// The value of the series written exactly as `series` (name and labels).
pub(crate) fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The value of the first series whose line starts with `prefix` (a name, or a name and the
/// opening brace of its labels).
pub(crate) fn first_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// The sum of the series whose lines start with `prefix`.
pub(crate) fn sum_values(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#') && line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A pseudo-random number from the clock, for kill moments and ids.
pub(crate) fn random() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos();
    (nanos as u64).wrapping_mul(6364136223846793005) >> 20
}

/// A realistic check event as the checker writes it, with a unique `check_id` (built by hand:
/// the JSON is the contract, not our types).
pub(crate) fn event_json(website_id: i32, n: u64) -> Vec<u8> {
    let check_id = format!(
        "{:08x}-{:04x}-7{:03x}-8{:03x}-{:012x}",
        random() as u32,
        n & 0xffff,
        website_id & 0xfff,
        n >> 16 & 0xfff,
        random() & 0xffff_ffff_ffff
    );
    let up = n % 5 != 0;
    serde_json::json!({
        "schema": 1,
        "check_id": check_id,
        "website_id": website_id,
        "url": format!("https://site-{website_id}.example/"),
        "location": "eu-north",
        "checked_at": "2026-11-28T13:14:15.123456Z",
        "up": up,
        "status_code": if up { 200 } else { 503 },
        "response_time_ms": 12.5 + (n % 100) as f64,
        "regex": null,
        "regex_matched": null,
        "error": null,
        "timings_ms": {"dns": 0.4, "connect": 1.1, "tls": 6.0, "ttfb": 10.0, "total": 12.5},
        "redirects": 0,
        "final_url": format!("https://site-{website_id}.example/"),
        "tls_cert_not_after": "2027-03-01T12:00:00Z",
    })
    .to_string()
    .into_bytes()
}

/// A count from `sql`, whose one parameter is the topic.
pub(crate) async fn count(db: &TestDb, sql: &str, topic: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(topic)
        .fetch_one(&db.pool)
        .await
        .expect("count")
}

/// Produces `key\tvalue` lines with kcat (to `partition`, or by kcat's partitioner), and
/// waits for the broker's acknowledgement.
pub(crate) fn kcat_produce(topic: &str, partition: Option<i32>, lines: &[u8]) {
    let mut command = Command::new("kcat");
    command
        .args(["-P", "-b", &services().kafka_brokers, "-t", topic])
        .args(["-K", "\t", "-X", "acks=all"]);
    if let Some(partition) = partition {
        command.args(["-p", &partition.to_string()]);
    }
    let mut kcat = command
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat runs (scripts/services up installs it)");
    kcat.stdin
        .take()
        .expect("stdin")
        .write_all(lines)
        .expect("kcat reads");
    let output = kcat.wait_with_output().expect("kcat exits");
    assert!(
        output.status.success(),
        "kcat failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
