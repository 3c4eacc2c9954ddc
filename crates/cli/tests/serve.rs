//! `sitemon serve` and `sitemon run --listen`: the dashboard from the binary, its refusals
//! (a network address without a token, a token file that cannot be read) and its stop.

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use sitemon_testkit::http::free_port;
use sitemon_testkit::{TestDb, random_topic};
use support::{run, sitemon, sitemon_with_database, stderr, terminate, wait_with_timeout};

/// Kills the process if the test ends before stopping it.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` with `headers`: (status, body), or `None` while nothing answers.
fn get(addr: SocketAddr, path: &str, headers: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Waits at most `within` for `GET path` to answer `status`.
fn wait_for(addr: SocketAddr, path: &str, headers: &str, status: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        match get(addr, path, headers) {
            Some((s, body)) if s == status => return body,
            other if Instant::now() >= deadline => {
                panic!("GET {path} did not answer {status} within {within:?}: {other:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn a_network_address_without_a_token_is_a_usage_error() {
    // Refused before any I/O: the database URL points nowhere.
    let output = run(
        sitemon_with_database("postgres://nobody@127.0.0.1:1/none").args([
            "serve",
            "--listen",
            "0.0.0.0:0",
        ]),
    );
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: refusing to serve 0.0.0.0:0 without a token: set SITEMON_UI_TOKEN or --token-file, or pass --public"),
        "{err}"
    );
    let output = run(
        sitemon_with_database("postgres://nobody@127.0.0.1:1/none").args([
            "serve",
            "--token-file",
            "/nonexistent/sitemon-token",
        ]),
    );
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(
        err.contains("invalid --token-file: cannot read /nonexistent/sitemon-token"),
        "{err}"
    );
}

#[tokio::test]
async fn serve_needs_its_token_masks_urls_and_stops_on_sigterm() {
    let db = TestDb::migrated().await;
    sqlx::query("INSERT INTO websites (url) VALUES ('https://u:pw-in-url@a.invalid/x?k=v')")
        .execute(&db.pool)
        .await
        .expect("a site");
    let token_file = std::env::temp_dir().join(format!("sitemon-token-{}", db.name));
    std::fs::write(&token_file, "tok-3141\n").expect("token file");
    let addr = free_port();
    let child = sitemon_with_database(&db.url)
        .args(["serve", "--listen", &addr.to_string()])
        .arg("--token-file")
        .arg(&token_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    let mut guard = Guard(child);
    wait_for(addr, "/healthz", "", 200, Duration::from_secs(30));
    assert_eq!(get(addr, "/", "").map(|a| a.0), Some(303));
    assert_eq!(get(addr, "/api/v1/sites", "").map(|a| a.0), Some(401));
    let body = wait_for(
        addr,
        "/api/v1/sites",
        "Authorization: Bearer tok-3141\r\n",
        200,
        Duration::from_secs(10),
    );
    assert!(body.contains("https://***@a.invalid/x?k=***"), "{body}");
    assert!(!body.contains("pw-in-url"), "{body}");
    terminate(&guard.0);
    let status = wait_with_timeout(&mut guard.0, Duration::from_secs(15), "sitemon serve");
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_file(&token_file);
    db.drop_database().await;
}

#[tokio::test]
async fn run_listen_serves_the_dashboard_and_the_pipeline_s_metrics() {
    let db = TestDb::empty().await;
    let topic = random_topic();
    let addr = free_port();
    let child = sitemon(&db, &topic)
        .args(["run", "--partitions", "1", "--listen", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    let mut guard = Guard(child);
    let page = wait_for(addr, "/", "", 200, Duration::from_secs(60));
    assert!(page.contains("<h1>Sites</h1>"), "{page}");
    // One /metrics: the checker's, the sync's and the dashboard's families.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = wait_for(addr, "/metrics", "", 200, Duration::from_secs(10));
        if ["sitemon_checks", "sitemon_web_requests"]
            .iter()
            .all(|family| metrics.contains(&format!("# TYPE {family} ")))
            && metrics.contains("# TYPE sitemon_sync_")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "families missing from:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    terminate(&guard.0);
    let status = wait_with_timeout(&mut guard.0, Duration::from_secs(30), "sitemon run");
    assert!(status.success(), "{status}");
    db.drop_database().await;
}
