//! The dashboard defends itself: a request must arrive within the read timeout, an idle
//! keep-alive connection is closed, connections beyond the cap are refused, a tokenless
//! loopback server checks `Host` (DNS rebinding), badges that needed the token are private.
//!
//! Raw TCP where the point is what happens on the wire; every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Server, seed};
use sitemon_core::Secret;
use sitemon_testkit::TestDb;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// The most any test here waits for the server to do something.
const BOUND: Duration = Duration::from_secs(15);

async fn connect(addr: SocketAddr) -> TcpStream {
    timeout(BOUND, TcpStream::connect(addr))
        .await
        .expect("connects within the bound")
        .expect("connects")
}

/// Reads until the server closes the connection (EOF or reset), within `within`; what it
/// sent before, or `None` if it was still open then.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// One request on a connection of its own, `Connection: close`: the whole answer, or
/// `None` if the connection was refused, reset or silent past the bound.
async fn raw_request(addr: SocketAddr, request: &str) -> Option<String> {
    let mut stream = timeout(BOUND, TcpStream::connect(addr)).await.ok()?.ok()?;
    stream.write_all(request.as_bytes()).await.ok()?;
    let answer = read_until_closed(&mut stream, BOUND).await?;
    (!answer.is_empty()).then_some(answer)
}

/// `GET path` with this `Host`.
async fn get_with_host(addr: SocketAddr, path: &str, host: &str) -> Option<String> {
    raw_request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

fn status_of(answer: &str) -> &str {
    answer.split(' ').nth(1).unwrap_or("")
}

#[tokio::test]
async fn a_trickled_request_head_is_cut_after_the_read_timeout() {
    let db = TestDb::migrated().await;
    let server = Server::start(&db, |c| c.read_timeout = Duration::from_secs(1)).await;
    let stream = connect(server.addr).await;
    let (mut read, mut write) = stream.into_split();
    write
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .expect("writes half a head");
    // A header line every 200 ms, never the blank line: always something new, never done.
    let trickle = async {
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write
                .write_all(format!("X-Slow-{i}: a\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let closed = async {
        let mut buf = [0u8; 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let cut = tokio::select! {
        () = closed => true,
        () = trickle => true,
        () = tokio::time::sleep(BOUND) => false,
    };
    assert!(cut, "a head trickled for {BOUND:?} is still being read");
    // The server goes on serving.
    let healthz = server.get("/healthz").await;
    assert_eq!(healthz.status, 200, "{}", healthz.body);
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_trickled_request_body_is_cut_after_the_read_timeout() {
    let db = TestDb::migrated().await;
    let server = Server::start(&db, |c| {
        c.token = Some(Secret::new("let-me-in"));
        c.read_timeout = Duration::from_secs(1);
    })
    .await;
    let mut stream = connect(server.addr).await;
    stream
        .write_all(
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ntoken=",
        )
        .await
        .expect("writes the head and a little body");
    let answer = read_until_closed(&mut stream, BOUND)
        .await
        .unwrap_or_else(|| panic!("a body that never comes is still awaited after {BOUND:?}"));
    assert_eq!(status_of(&answer), "408", "{answer}");
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let db = TestDb::migrated().await;
    let server = Server::start(&db, |c| c.read_timeout = Duration::from_secs(1)).await;
    let mut stream = connect(server.addr).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("writes a request");
    // The answer ("ok"), then nothing from either side.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).ends_with("ok\n") {
        let n = timeout(BOUND, stream.read(&mut buf))
            .await
            .expect("an answer within the bound")
            .expect("reads");
        assert!(
            n > 0,
            "closed before answering: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&got).into_owned();
    assert_eq!(status_of(&answer), "200", "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "kept alive: {answer}"
    );
    let rest = read_until_closed(&mut stream, BOUND).await;
    assert_eq!(
        rest.as_deref(),
        Some(""),
        "an idle keep-alive connection is still open after {BOUND:?}"
    );
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn beyond_the_cap_a_connection_is_refused_and_served_again_once_one_closes() {
    let db = TestDb::migrated().await;
    // A read timeout longer than the test: only the cap closes anything here.
    let server = Server::start(&db, |c| {
        c.max_connections = 2;
        c.read_timeout = Duration::from_secs(120);
    })
    .await;
    let first = connect(server.addr).await;
    let _second = connect(server.addr).await;
    // Accepted in order: the third finds both places taken, and is told so and closed.
    let mut third = connect(server.addr).await;
    let refused = read_until_closed(&mut third, BOUND)
        .await
        .unwrap_or_else(|| panic!("a connection beyond the cap is still open after {BOUND:?}"));
    assert!(
        refused.starts_with("HTTP/1.1 503 ") && refused.contains("too many connections"),
        "{refused:?}"
    );
    // One closes: a place is free again (once the server has seen the close).
    drop(first);
    let deadline = Instant::now() + BOUND;
    let served = loop {
        let answer = get_with_host(server.addr, "/healthz", "127.0.0.1").await;
        if let Some(answer) = answer.filter(|a| status_of(a) == "200") {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "no /healthz within {BOUND:?} after a connection closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(served.ends_with("ok\n"), "{served}");
    let metrics = get_with_host(server.addr, "/metrics", "127.0.0.1")
        .await
        .expect("/metrics answers");
    let refused: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sitemon_web_connections_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no refused counter in {metrics}"));
    assert!(refused >= 1.0, "{metrics}");
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_tokenless_loopback_server_answers_loopback_hosts_only() {
    let db = TestDb::migrated().await;
    let server = Server::start(&db, |c| {
        c.allowed_hosts = vec!["monitor.internal".to_owned()]
    })
    .await;
    let port = server.addr.port();
    for host in [
        "evil.example".to_owned(),
        format!("evil.example:{port}"),
        format!("127.0.0.1.evil.example:{port}"),
    ] {
        for path in ["/", "/api/v1/sites", "/healthz"] {
            let answer = get_with_host(server.addr, path, &host)
                .await
                .unwrap_or_else(|| panic!("{path} for {host}: no answer"));
            assert_eq!(status_of(&answer), "421", "{path} for {host}: {answer}");
            assert!(answer.contains("loopback"), "{answer}");
            assert!(!answer.contains("\"sites\""), "{answer}");
        }
    }
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "localhost".to_owned(),
        "monitor.internal".to_owned(),
    ] {
        let answer = get_with_host(server.addr, "/api/v1/sites", &host)
            .await
            .unwrap_or_else(|| panic!("no answer for {host}"));
        assert_eq!(status_of(&answer), "200", "{host}: {answer}");
    }
    server.stop().await;

    // With a token the token is the guard: any Host.
    let server = Server::start(&db, |c| c.token = Some(Secret::new("let-me-in"))).await;
    let answer = raw_request(
        server.addr,
        "GET /api/v1/sites HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer let-me-in\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("an answer");
    assert_eq!(status_of(&answer), "200", "{answer}");
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_badge_that_needed_the_token_is_private() {
    let db = TestDb::migrated().await;
    let sites = seed(&db.pool).await;
    let path = format!("/badge/{}/status.svg", sites.shop);
    let server = Server::start(&db, |c| c.token = Some(Secret::new("let-me-in"))).await;
    let badge = server
        .request("GET", &path, &[("authorization", "Bearer let-me-in")], None)
        .await;
    assert_eq!(badge.status, 200, "{}", badge.body);
    assert_eq!(badge.header("cache-control"), "private, max-age=60");
    server.stop().await;
    let public_configs: [fn(&mut sitemon_web::WebConfig); 2] = [
        |c| {
            c.token = Some(Secret::new("let-me-in"));
            c.public_badges = true;
        },
        |_| {},
    ];
    for public in public_configs {
        let server = Server::start(&db, public).await;
        let badge = server.get(&path).await;
        assert_eq!(badge.status, 200, "{}", badge.body);
        assert_eq!(badge.header("cache-control"), "public, max-age=60");
        server.stop().await;
    }
    db.drop_database().await;
}
