//! A local HTTP(S) server whose paths behave as their names say, for the checks of the
//! checker and of the `sitemon` binary: nothing a test does reaches the internet.
//!
//! | path | answer |
//! | --- | --- |
//! | `/ok` | 200 with [`BODY`] |
//! | `/redirect` | 301 to `/ok` |
//! | `/loop` | 302 to itself |
//! | `/404`, `/500` | that status |
//! | `/slow` | 200 after 5 s |
//! | `/broken` | 200 promising 1000 bytes, then 10 and a hang-up |
//! | `/garbage` | bytes that are no HTTP response, then a hang-up |
//! | `/big` | 200 with [`big_body`]: 5 MiB, marks placed about the 1 MiB cap |
//! | `/pause` | 200 with [`BODY`] after [`PAUSE`] |
//! | `/maintenance` | 200 with [`MAINTENANCE_BODY`] |
//! | `/post-only` | 200 with [`BODY`] to a POST, 405 to anything else |
//! | `/redirect-307` | 307 to `/post-only?after-307` (the same request again) |
//! | `/see-other` | 303 to `/ok?after-303` (a GET) |
//! | `/hop/STATUS?LOCATION` | that redirect status (301, 302, 303, 307, 308) to the query, as it is |
//! | anything else | 404, empty |
//!
//! A request's body (by its `Content-Length`) is read and remembered with its head.
//!
//! A query does not change the answer: `/ok?first` and `/ok?second` are two sites that
//! answer alike.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The body of `/ok`.
pub const BODY: &str = "<html>all systems ok</html>";

/// How long `/pause` waits before it answers.
pub const PAUSE: Duration = Duration::from_millis(400);

/// The body of `/maintenance`.
pub const MAINTENANCE_BODY: &str = "<html>down for maintenance</html>";

/// Where the servers listen unless told otherwise.
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The most of a request head the server reads before it hangs up.
const MAX_HEAD: usize = 64 << 10;

/// A server on `127.0.0.1:0` that serves the paths of this module's table; it remembers
/// each request's head.
#[derive(Debug, Clone)]
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The head of every request so far, in arrival order.
    requests: Arc<Mutex<Vec<String>>>,
    /// Connections accepted so far.
    connections: Arc<AtomicUsize>,
}

impl TestServer {
    /// Plain HTTP.
    pub async fn http() -> Self {
        Self::start(LOCALHOST, None).await
    }

    /// Plain HTTP on another loopback address (`127.0.0.2`: another origin than `127.0.0.1`
    /// at the same port).
    pub async fn http_on(ip: IpAddr) -> Self {
        Self::start(ip, None).await
    }

    /// HTTPS with the certificate chain and key in these PEM files.
    pub async fn https(cert: &Path, key: &Path) -> Self {
        let certs = CertificateDer::pem_file_iter(cert)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", cert.display()))
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| panic!("bad certificate in {}: {e}", cert.display()));
        let key = PrivateKeyDer::from_pem_file(key)
            .unwrap_or_else(|e| panic!("cannot read the key {}: {e}", key.display()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("the certificate and key make a server configuration");
        Self::start(LOCALHOST, Some(TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start(ip: IpAddr, tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let connections: Arc<AtomicUsize> = Arc::default();
        let log = Arc::clone(&requests);
        let accepted = Arc::clone(&connections);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::Relaxed);
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
        Self {
            addr,
            requests,
            connections,
        }
    }

    /// How many connections it accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `https://localhost:PORT{path}`: the name the test certificates are for.
    pub fn https_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    /// The heads of the GET requests for `path` (with its query) so far.
    pub fn requests_for(&self, path: &str) -> Vec<String> {
        self.requests_with("GET", path)
    }

    /// The requests with `method` for `path` (with its query) so far: each its head, the
    /// blank line, and its body.
    pub fn requests_with(&self, method: &str, path: &str) -> Vec<String> {
        let prefix = format!("{method} {path} ");
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
        if head.len() > MAX_HEAD {
            return;
        }
    }
    // The body: what came after the head, and the rest of its Content-Length.
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(head.len(), |i| i + 4);
    let length = String::from_utf8_lossy(&head[..end])
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0)
        .min(MAX_HEAD);
    while head.len() < end + length {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let method = head.split(' ').next().unwrap_or("GET").to_owned();
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
        "/big" => response("200 OK", "Content-Type: text/plain\r\n", &big_body()),
        "/pause" => {
            tokio::time::sleep(PAUSE).await;
            response("200 OK", "", BODY)
        }
        "/maintenance" => response("200 OK", "", MAINTENANCE_BODY),
        "/post-only" if method == "POST" => response("200 OK", "", BODY),
        "/post-only" => response("405 Method Not Allowed", "Allow: POST\r\n", ""),
        "/redirect-307" => response(
            "307 Temporary Redirect",
            "Location: /post-only?after-307\r\n",
            "",
        ),
        "/see-other" => response("303 See Other", "Location: /ok?after-303\r\n", ""),
        hop if hop.starts_with("/hop/") => {
            let status = hop.trim_start_matches("/hop/");
            let location = path.split_once('?').map_or("", |(_, query)| query);
            response(
                &format!("{status} Redirect"),
                &format!("Location: {location}\r\n"),
                "",
            )
        }
        "/garbage" => {
            // No status line: a server that does not speak HTTP.
            let _ = stream
                .write_all(b"SSH-2.0-OpenSSH_9.6 this is no HTTP\r\n\r\n\x00\xff")
                .await;
            let _ = stream.shutdown().await;
            return;
        }
        _ => response("404 Not Found", "", ""),
    };
    // A response to HEAD has the headers of the GET's and no body.
    let reply = match (method.as_str(), reply.find("\r\n\r\n")) {
        ("HEAD", Some(end)) => reply[..end + 4].to_owned(),
        _ => reply,
    };
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The body of `/big`: 5 MiB of `x` holding four marks, placed about the checker's default
/// 1 MiB body cap: `early-mark` at 512 KiB, `edge-in` ending exactly at 1 MiB (within the
/// cap) and followed by `-more` (so `edge-in-more` straddles the cap), `late-mark` at 2 MiB.
pub fn big_body() -> String {
    const MIB: usize = 1 << 20;
    let mut body = vec![b'x'; 5 * MIB];
    let mut place = |at: usize, mark: &[u8]| body[at..at + mark.len()].copy_from_slice(mark);
    place(MIB / 2, b"early-mark");
    place(MIB - b"edge-in".len(), b"edge-in");
    place(MIB, b"-more");
    place(2 * MIB, b"late-mark");
    String::from_utf8(body).expect("ASCII")
}

/// An address on 127.0.0.1 that nothing listened on a moment ago (bound, then released):
/// for a connection that must be refused, or a server the test starts there.
pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}
