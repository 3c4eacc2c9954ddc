//! What the checker's integration tests share: HTTP(S) servers on 127.0.0.1:0 that
//! misbehave on request, and reading the events back from the real topic.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rskafka::client::Client;
use rskafka::client::partition::UnknownTopicHandling;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sitemon_checker::CheckerConfig;
use sitemon_core::{CheckEvent, DatabaseConfig, KafkaConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

pub const BODY: &str = "<html>all systems ok</html>";

/// A server whose paths behave as their names say; it remembers each request's head.
#[derive(Debug, Clone)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl TestServer {
    /// Plain HTTP.
    pub async fn http() -> Self {
        Self::start(None).await
    }

    /// HTTPS with the certificate and key in these PEM files.
    pub async fn https(cert: &std::path::Path, key: &std::path::Path) -> Self {
        let certs = CertificateDer::pem_file_iter(cert)
            .expect("cert file")
            .collect::<Result<Vec<_>, _>>()
            .expect("certs");
        let key = PrivateKeyDer::from_pem_file(key).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        Self::start(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = Arc::clone(&requests);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = Arc::clone(&log);
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve(stream, log).await,
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                serve(stream, log).await;
                            }
                        }
                    }
                });
            }
        });
        Self { addr, requests }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn https_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    /// The heads of the requests for `path` so far.
    pub fn requests_for(&self, path: &str) -> Vec<String> {
        let prefix = format!("GET {path} ");
        self.requests
            .lock()
            .expect("requests")
            .iter()
            .filter(|r| r.starts_with(&prefix))
            .cloned()
            .collect()
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, log: Arc<Mutex<Vec<String>>>) {
    let mut head = Vec::new();
    let mut buf = [0_u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 << 10 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
    log.lock().expect("log").push(head);
    let response = |status: &str, extra: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let reply = match path.split('?').next().unwrap_or("/") {
        "/ok" => response("200 OK", "Content-Type: text/html\r\n", BODY),
        "/redirect" => response("301 Moved Permanently", "Location: /ok\r\n", ""),
        "/loop" => response("302 Found", "Location: /loop\r\n", ""),
        "/404" => response("404 Not Found", "", "no such page"),
        "/500" => response("500 Internal Server Error", "", "broken"),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            response("200 OK", "", BODY)
        }
        "/broken" => {
            // Promise 1000 bytes, send 10, hang up.
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
                .await;
            let _ = stream.shutdown().await;
            return;
        }
        _ => response("404 Not Found", "", ""),
    };
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A port nothing listens on (bound, then released).
pub async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A checker configuration for a test database and topic, quick to notice changes.
pub fn checker_config(db: &sitemon_testkit::TestDb, kafka: KafkaConfig) -> CheckerConfig {
    let mut config = CheckerConfig::new(DatabaseConfig::from_url(&db.url).expect("db url"), kafka);
    config.location = "test-location".into();
    config.progress_every = Duration::from_secs(1);
    config.flush_timeout = Duration::from_secs(20);
    config
}

/// An event read back from the topic, with where it was.
#[derive(Debug, Clone)]
pub struct Stored {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub event: CheckEvent,
}

/// Every event in the topic so far.
pub async fn read_all(client: &Client, topic: &str) -> Vec<Stored> {
    let partitions = sitemon_core::kafka::partition_count(client, topic)
        .await
        .expect("metadata")
        .expect("the topic exists");
    let mut out = Vec::new();
    for partition in 0..partitions as i32 {
        let pc = client
            .partition_client(topic, partition, UnknownTopicHandling::Retry)
            .await
            .expect("partition client");
        let mut offset = 0;
        loop {
            let (records, high_watermark) = tokio::time::timeout(
                Duration::from_secs(20),
                pc.fetch_records(offset, 1..10_000_000, 100),
            )
            .await
            .expect("fetch in time")
            .expect("fetch");
            for record in records {
                offset = record.offset + 1;
                let value = record.record.value.clone().unwrap_or_default();
                let event = CheckEvent::from_json(&value).expect("every record is an event");
                out.push(Stored {
                    partition,
                    offset: record.offset,
                    key: record.record.key.clone().unwrap_or_default(),
                    value,
                    event,
                });
            }
            if offset >= high_watermark {
                break;
            }
        }
    }
    out
}

/// Polls the topic until `done` says the events suffice, for at most `within`.
pub async fn wait_for_events(
    client: &Client,
    topic: &str,
    within: Duration,
    done: impl Fn(&[Stored]) -> bool,
) -> Vec<Stored> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let events = match sitemon_core::kafka::partition_count(client, topic).await {
            Ok(Some(_)) => read_all(client, topic).await,
            _ => Vec::new(),
        };
        if done(&events) || tokio::time::Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The events of each site, in topic order.
pub fn by_site(events: &[Stored]) -> HashMap<i32, Vec<Stored>> {
    let mut map: HashMap<i32, Vec<Stored>> = HashMap::new();
    for stored in events {
        map.entry(stored.event.website_id)
            .or_default()
            .push(stored.clone());
    }
    for list in map.values_mut() {
        list.sort_by_key(|s| s.event.checked_at);
    }
    map
}

/// Logs to the test output (`--nocapture` shows them).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,rskafka=warn,sqlx=warn")
        .with_test_writer()
        .try_init();
}
