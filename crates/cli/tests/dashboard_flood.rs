//! `sitemon run --listen` under a flood of idle connections to its dashboard: the process
//! keeps file descriptors for its own sockets, so `/healthz` still answers and the checks
//! go on (new rows, up, for every site).
//!
//! The child runs under `prlimit --nofile=1024:1024` (util-linux), the limit most systems
//! start a process with: far fewer descriptors than the 3,000 connections of the flood, so
//! that a server accepting every connection would run out (as `axum::serve` did).

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sitemon_testkit::http::{TestServer, free_port};
use sitemon_testkit::{TestDb, random_topic, services};
use support::wait_with_timeout;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

/// The idle connections opened at once.
const FLOOD: usize = 3_000;
/// The child's open-file limit, soft and hard.
const CHILD_NOFILE: u64 = 1_024;

/// Kills the process if the test ends before stopping it.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET /healthz`: the status, or `None` if the connection was refused, reset or silent
/// for 5 s.
async fn healthz(addr: SocketAddr) -> Option<u16> {
    let request = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        answer.split(' ').nth(1)?.parse().ok()
    };
    timeout(Duration::from_secs(5), request).await.ok()?
}

async fn up_rows(db: &TestDb, site: i32) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM website_status WHERE website_id = $1 AND is_up")
        .bind(site)
        .fetch_one(&db.pool)
        .await
        .expect("counts")
}

/// Waits at most `within` until every site has `at_least` up rows more than `before`.
async fn wait_for_up_rows(
    db: &TestDb,
    sites: &[i32],
    before: &[i64],
    at_least: i64,
    within: Duration,
    what: &str,
) -> Vec<i64> {
    let deadline = Instant::now() + within;
    loop {
        let mut now = Vec::new();
        for site in sites {
            now.push(up_rows(db, *site).await);
        }
        if now.iter().zip(before).all(|(n, b)| n - b >= at_least) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: up rows {before:?} -> {now:?} in {within:?}, wanted {at_least} more each"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_leave_healthz_and_the_checks_alone() {
    // The test holds the flood's sockets: it needs more descriptors than most defaults.
    let own = rlimit::increase_nofile_limit(u64::MAX).expect("the open-file limit");
    assert!(
        own >= FLOOD as u64 + 512,
        "this test needs an open-file limit of {} (ulimit -n), it has {own}",
        FLOOD + 512
    );
    let db = TestDb::migrated().await;
    let topic = random_topic();
    let target = TestServer::http().await;
    let mut sites = Vec::new();
    for path in ["/ok", "/ok?second"] {
        let id: i32 = sqlx::query_scalar(
            "INSERT INTO websites (url, check_interval) VALUES ($1, 1) RETURNING id",
        )
        .bind(target.url(path))
        .fetch_one(&db.pool)
        .await
        .expect("adds a site");
        sites.push(id);
    }
    let listen = free_port();
    let child = Command::new("prlimit")
        .arg(format!("--nofile={CHILD_NOFILE}:{CHILD_NOFILE}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_sitemon"))
        .args(["run", "--batch-wait", "50", "--partitions", "1"])
        .args(["--listen", &listen.to_string()])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("KAFKA_BROKERS", &services().kafka_brokers)
        .env("KAFKA_TOPIC", &topic)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starts sitemon run under prlimit (util-linux)");
    let mut guard = Guard(child);

    // Running: the dashboard answers and both sites are checked and stored.
    let deadline = Instant::now() + Duration::from_secs(60);
    while healthz(listen).await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the dashboard of sitemon run did not answer in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let zero = vec![0; sites.len()];
    let before = wait_for_up_rows(
        &db,
        &sites,
        &zero,
        2,
        Duration::from_secs(60),
        "before the flood",
    )
    .await;

    // The flood: connections that never send a byte, all held open by the test.
    let mut connecting = JoinSet::new();
    for _ in 0..FLOOD {
        connecting.spawn(async move {
            timeout(Duration::from_secs(3), TcpStream::connect(listen))
                .await
                .ok()
                .and_then(Result::ok)
        });
    }
    let mut flood = Vec::with_capacity(FLOOD);
    while let Some(joined) = connecting.join_next().await {
        if let Some(stream) = joined.expect("a connect task") {
            flood.push(stream);
        }
    }
    eprintln!("flood: {} of {FLOOD} connections established", flood.len());
    assert!(
        flood.len() > CHILD_NOFILE as usize,
        "only {} connections: the flood does not exceed the child's {CHILD_NOFILE} descriptors",
        flood.len()
    );

    // The checks go on: new up rows for every site, the flood just opened.
    let flooded = Instant::now();
    wait_for_up_rows(
        &db,
        &sites,
        &before,
        3,
        Duration::from_secs(60),
        "during the flood",
    )
    .await;
    eprintln!("flood: 3 more up rows a site after {:?}", flooded.elapsed());
    // `/healthz` answers within a bounded time (as soon as a place is free).
    let deadline = flooded + Duration::from_secs(60);
    while healthz(listen).await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "no /healthz within 60 s of a flood of {} idle connections",
            flood.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("flood: /healthz answered after {:?}", flooded.elapsed());
    drop(flood);

    let pid = guard.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let status = wait_with_timeout(
        &mut guard.0,
        Duration::from_secs(60),
        "sitemon run after SIGTERM",
    );
    assert_eq!(status.code(), Some(0), "a clean stop");
    db.drop_database().await;
}
