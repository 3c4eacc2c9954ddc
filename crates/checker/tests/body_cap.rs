//! The 1 MiB body cap keeps a check's memory flat: the probe stops reading a 5 MiB body at
//! the cap and hangs up, instead of reading (and holding, or even discarding) the rest.
//!
//! The server sends the first 1.25 MiB at once and the rest slowly, 64 KiB every 200 ms
//! (over 12 s, past the check's 10 s timeout), and notes whether the client hung up before
//! the end. A probe that stops at the cap ends its check at once, up, with the match of the
//! first MiB, while the server is still sending; one that reads past the cap (to keep it or
//! to throw it away) waits for the slow part and its check times out. Which bytes are
//! searched is `checks.rs`'s `only_the_first_mib_of_a_body_is_searched`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sitemon_testkit::kafka_config;
use support::{add_site, checker_config, fixture, start_checker, wait_for_events};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const MIB: usize = 1 << 20;
const BODY: usize = 5 * MIB;
const FAST: usize = MIB + MIB / 4;
const CHUNK: usize = 64 << 10;

/// What the server saw of one response.
#[derive(Debug, Default)]
struct Sent {
    requests: AtomicUsize,
    /// Body bytes the socket took before the client hung up (or all of them).
    bytes: AtomicUsize,
    /// The client hung up before the whole body was sent.
    cut: AtomicBool,
}

/// A server on 127.0.0.1 sending a 5 MiB body, `early-mark` at 512 KiB, the part past
/// [`FAST`] slowly.
async fn slow_big_body_server() -> (std::net::SocketAddr, Arc<Sent>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sent = Arc::new(Sent::default());
    let seen = Arc::clone(&sent);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0_u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.requests.fetch_add(1, Ordering::SeqCst);
                let mut body = vec![b'x'; BODY];
                body[MIB / 2..MIB / 2 + 10].copy_from_slice(b"early-mark");
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n");
                if stream.write_all(head.as_bytes()).await.is_err() {
                    seen.cut.store(true, Ordering::SeqCst);
                    return;
                }
                for (i, chunk) in body.chunks(CHUNK).enumerate() {
                    if i * CHUNK >= FAST {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    if stream.write_all(chunk).await.is_err() {
                        seen.cut.store(true, Ordering::SeqCst);
                        return;
                    }
                    seen.bytes.fetch_add(chunk.len(), Ordering::SeqCst);
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5_mib_body_is_read_to_the_cap_and_the_connection_dropped() {
    let (db, topic, _http, client) = fixture().await;
    let (addr, sent) = slow_big_body_server().await;
    // Interval 10 s: a 10 s timeout, shorter than the slow part of the body.
    let site = add_site(&db, &format!("http://{addr}/big"), 10, Some("early-mark")).await;
    let checker = start_checker(checker_config(&db, kafka_config(&topic)));
    let checked = |events: &[support::Stored]| events.iter().any(|s| s.event.website_id == site);
    let events = wait_for_events(&client, &topic, Duration::from_secs(60), checked).await;
    checker.stop_within(Duration::from_secs(30)).await;
    assert!(checked(&events), "the site checked within 60 s");

    let e = &support::checks_of(&events, site)[0];
    assert_eq!(
        e.error, None,
        "the check ends at the cap, without waiting for the rest: {e:?}"
    );
    assert_eq!(e.status_code, Some(200));
    assert_eq!(e.regex_matched, Some(true), "the mark in the first MiB");
    assert!(e.up);

    // The server: the client hung up while the body was still coming.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !sent.cut.load(Ordering::SeqCst) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client read the whole body: {sent:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        sent.bytes.load(Ordering::SeqCst) < BODY,
        "the whole body was sent: {sent:?}"
    );
    db.drop_database().await;
}
