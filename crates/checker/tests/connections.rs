//! A fresh connection per check: against a server that keeps every connection open for more
//! requests (HTTP/1.1 keep-alive, whatever the client asks), the checker's N checks are N
//! accepted connections of one request each. A checker that pooled or reused a connection
//! would send a second request over one of them.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sitemon_testkit::kafka_config;
use support::{add_site, checker_config, fixture, start_checker, wait_for_events};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the keep-alive server saw.
#[derive(Debug, Default)]
struct Seen {
    connections: AtomicUsize,
    requests: AtomicUsize,
    /// Requests that came over a connection that had already carried one.
    reused: AtomicUsize,
}

/// A server on 127.0.0.1 that answers every request with 200 and keeps the connection open
/// for the next one; returns its address and what it saw.
async fn keep_alive_server() -> (std::net::SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let counts = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            counts.connections.fetch_add(1, Ordering::SeqCst);
            let counts = Arc::clone(&counts);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0_u8; 4096];
                let mut served = 0;
                loop {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let end = head
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .expect("a whole head")
                        + 4;
                    head.drain(..end);
                    counts.requests.fetch_add(1, Ordering::SeqCst);
                    if served > 0 {
                        counts.reused.fetch_add(1, Ordering::SeqCst);
                    }
                    served += 1;
                    let reply =
                        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=60\r\n\r\nok";
                    if stream.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_check_opens_a_connection_of_its_own() {
    let (db, topic, _http, client) = fixture().await;
    let (addr, seen) = keep_alive_server().await;
    let site = add_site(&db, &format!("http://{addr}/"), 1, None).await;
    let checker = start_checker(checker_config(&db, kafka_config(&topic)));
    let enough = |events: &[support::Stored]| {
        events.iter().filter(|s| s.event.website_id == site).count() >= 5
    };
    let events = wait_for_events(&client, &topic, Duration::from_secs(60), enough).await;
    assert!(enough(&events), "5 checks within 60 s");
    checker.stop_within(Duration::from_secs(30)).await;

    let checks = support::checks_of(&support::read_all(&client, &topic).await, site);
    assert!(checks.iter().all(|e| e.up), "{checks:?}");
    let (connections, requests, reused) = (
        seen.connections.load(Ordering::SeqCst),
        seen.requests.load(Ordering::SeqCst),
        seen.reused.load(Ordering::SeqCst),
    );
    assert_eq!(reused, 0, "a request came over a connection used before");
    assert_eq!(requests, checks.len(), "one request per check");
    assert_eq!(connections, checks.len(), "one connection per check");
    db.drop_database().await;
}
