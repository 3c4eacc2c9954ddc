//! One check of one site: a fresh connection, every phase timed, redirects followed, the body
//! read up to a cap and searched with the site's regex.
//!
//! A fresh connection per check is deliberate: a pooled connection (or a resumed TLS session)
//! would hide exactly the DNS, connect and TLS failures and costs a monitor exists to see.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, CONNECTION, HOST, HeaderValue, LOCATION, USER_AGENT};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use regex::Regex;
use rustls::pki_types::{CertificateDer, ServerName};
use sitemon_core::{CheckError, ErrorKind, ProbeTimings};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::chain;
use crate::target::Target;
use crate::tls_expiry::not_after;

/// The most redirects a check follows; one more is a `too_many_redirects` failure.
pub(crate) const MAX_REDIRECTS: u32 = 5;

/// What one check found; [`crate::check`] turns it into a `CheckEvent`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    pub(crate) status: Option<u16>,
    pub(crate) regex_matched: Option<bool>,
    pub(crate) error: Option<CheckError>,
    pub(crate) timings: ProbeTimings,
    pub(crate) redirects: u32,
    pub(crate) final_url: Option<String>,
    pub(crate) cert_not_after: Option<OffsetDateTime>,
}

impl Outcome {
    /// A final 2xx response arrived, its body was read, and the regex (if any) matched.
    pub(crate) fn is_up(&self) -> bool {
        self.error.is_none()
            && self.status.is_some_and(|s| (200..300).contains(&s))
            && self.regex_matched != Some(false)
    }

    /// A check that could not even start: an unusable URL or regex from the table.
    pub(crate) fn failed_before_start(kind: ErrorKind, message: String) -> Self {
        Self {
            error: Some(CheckError { kind, message }),
            ..Self::default()
        }
    }
}

/// Everything a check needs that is the same for all checks.
#[derive(Clone)]
pub(crate) struct Prober {
    tls: TlsConnector,
    user_agent: HeaderValue,
    max_body_bytes: usize,
    resolver: Resolver,
}

/// Where a check's addresses come from.
#[derive(Debug, Clone, Default)]
enum Resolver {
    /// The system's resolver (`getaddrinfo`), in the order it answers.
    #[default]
    System,
    /// Fixed answers by name, in the order given: names a unit test needs (a dead address
    /// first, then a live one) that no hosts file of a test machine holds.
    #[cfg(test)]
    Fixed(std::collections::HashMap<String, Vec<IpAddr>>),
}

impl Resolver {
    /// The addresses of `host`, in the order to try them.
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Failure> {
        let dns_error = |reason: String| {
            Failure::new(ErrorKind::Dns, format!("cannot resolve {host}: {reason}"))
        };
        let addresses: Vec<SocketAddr> = match self {
            Self::System => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| dns_error(e.to_string()))?
                .collect(),
            #[cfg(test)]
            Self::Fixed(names) => names
                .get(host)
                .into_iter()
                .flatten()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect(),
        };
        if addresses.is_empty() {
            return Err(dns_error("no address".into()));
        }
        Ok(addresses)
    }
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("user_agent", &self.user_agent)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

impl Prober {
    /// A prober trusting the Mozilla roots (plus `extra_roots`), with TLS session resumption
    /// off so that every check pays, and measures, a full handshake.
    pub(crate) fn new(
        max_body_bytes: usize,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<Self, String> {
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in extra_roots {
            roots
                .add(cert.clone())
                .map_err(|e| format!("extra CA certificate not usable: {e}"))?;
        }
        let mut config = builder.with_root_certificates(roots).with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            tls: TlsConnector::from(Arc::new(config)),
            user_agent: HeaderValue::from_static(concat!("sitemon/", env!("CARGO_PKG_VERSION"))),
            max_body_bytes,
            resolver: Resolver::System,
        })
    }

    /// Checks `target` once, within `timeout` for the whole check.
    pub(crate) async fn check(
        &self,
        target: &Target,
        regex: Option<&Regex>,
        timeout: Duration,
    ) -> Outcome {
        let started = Instant::now();
        let mut outcome = Outcome::default();
        let result = tokio::time::timeout(timeout, self.follow(target, regex, &mut outcome)).await;
        outcome.timings.total = ms(started.elapsed());
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(failure)) => Some(failure),
            Err(_) => Some(Failure::new(
                ErrorKind::Timeout,
                format!(
                    "no complete response from {} within {:.3} s",
                    outcome.final_url.as_deref().unwrap_or(&target.url),
                    timeout.as_secs_f64()
                ),
            )),
        };
        if let Some(Failure { kind, message }) = failure {
            // Only a body that broke off keeps the response it belonged to.
            if kind != ErrorKind::Body {
                outcome.status = None;
                outcome.final_url = None;
                outcome.regex_matched = None;
            }
            outcome.error = Some(CheckError { kind, message });
        }
        outcome
    }

    async fn follow(
        &self,
        first: &Target,
        regex: Option<&Regex>,
        outcome: &mut Outcome,
    ) -> Result<(), Failure> {
        let mut target = first.clone();
        loop {
            outcome.final_url = Some(target.url.clone());
            let hop = self.fetch(&target, outcome).await?;
            let location = match hop {
                Hop::Redirect(location) => location,
                Hop::Final(FinalResponse {
                    response,
                    connection,
                }) => {
                    outcome.status = Some(response.status().as_u16());
                    let body = self.read_body(response.into_body()).await;
                    drop(connection);
                    let body = body?;
                    if let Some(regex) = regex {
                        outcome.regex_matched =
                            Some(regex.is_match(&String::from_utf8_lossy(&body)));
                    }
                    return Ok(());
                }
            };
            if outcome.redirects == MAX_REDIRECTS {
                return Err(Failure::new(
                    ErrorKind::TooManyRedirects,
                    format!(
                        "more than {MAX_REDIRECTS} redirects (the last to {location:?} from {})",
                        target.url
                    ),
                ));
            }
            let next = target.redirect(&location).map_err(|reason| {
                Failure::new(
                    ErrorKind::Http,
                    format!("{} redirects to {location:?}: {reason}", target.url),
                )
            })?;
            outcome.redirects += 1;
            target = next;
        }
    }

    /// One request over a fresh connection.
    async fn fetch(&self, target: &Target, outcome: &mut Outcome) -> Result<Hop, Failure> {
        let timings = &mut outcome.timings;

        let phase = Instant::now();
        let addresses = self.resolver.resolve(&target.host, target.port).await;
        add(&mut timings.dns, phase.elapsed());
        let addresses = addresses?;

        let phase = Instant::now();
        let stream = connect(&addresses).await;
        add(&mut timings.connect, phase.elapsed());
        let stream = stream?;
        // Small requests: no reason to let Nagle hold them back.
        let _ = stream.set_nodelay(true);

        outcome.cert_not_after = None;
        if !target.https {
            return self.exchange(stream, target, &mut outcome.timings).await;
        }
        let server_name = match target.host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(target.host.clone()).map_err(|e| {
                Failure::new(
                    ErrorKind::Tls,
                    format!("{:?} is not a TLS server name: {e}", target.host),
                )
            })?,
        };
        let phase = Instant::now();
        let tls = self.tls.connect(server_name, stream).await;
        add(&mut outcome.timings.tls, phase.elapsed());
        let tls = tls.map_err(|e| {
            Failure::new(
                ErrorKind::Tls,
                format!(
                    "TLS handshake with {} failed: {}",
                    target.authority,
                    chain(&e)
                ),
            )
        })?;
        outcome.cert_not_after = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| not_after(leaf));
        self.exchange(tls, target, &mut outcome.timings).await
    }

    async fn exchange<S>(
        &self,
        io: S,
        target: &Target,
        timings: &mut ProbeTimings,
    ) -> Result<Hop, Failure>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let http_error = |e: hyper::Error| {
            Failure::new(
                ErrorKind::Http,
                format!("{}: {}", target.origin(), chain(&e)),
            )
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(http_error)?;
        // The connection task lives as long as this check's response: aborted on drop.
        let connection = AbortOnDrop(tokio::spawn(connection));
        let request = Request::get(target.path_and_query.as_str())
            .header(HOST, target.authority.as_str())
            .header(USER_AGENT, self.user_agent.clone())
            .header(ACCEPT, "*/*")
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| Failure::new(ErrorKind::InvalidUrl, format!("{}: {e}", target.url)))?;
        let phase = Instant::now();
        let response = sender.send_request(request).await;
        add(&mut timings.ttfb, phase.elapsed());
        let response = response.map_err(http_error)?;
        if is_redirect(response.status()) {
            if let Some(location) = response.headers().get(LOCATION) {
                let location = String::from_utf8_lossy(location.as_bytes()).into_owned();
                return Ok(Hop::Redirect(location));
            }
        }
        Ok(Hop::Final(FinalResponse {
            response,
            connection,
        }))
    }

    /// Reads up to `max_body_bytes`; what lies beyond is not read (not an error).
    async fn read_body(&self, mut body: hyper::body::Incoming) -> Result<Vec<u8>, Failure> {
        let mut buffer = Vec::new();
        while buffer.len() < self.max_body_bytes {
            match body.frame().await {
                None => break,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        let room = self.max_body_bytes - buffer.len();
                        buffer.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                Some(Err(e)) => {
                    return Err(Failure::new(
                        ErrorKind::Body,
                        format!(
                            "the body broke off after {} bytes: {}",
                            buffer.len(),
                            chain(&e)
                        ),
                    ));
                }
            }
        }
        Ok(buffer)
    }
}

struct FinalResponse {
    response: hyper::Response<hyper::body::Incoming>,
    /// Keeps the connection driven while the body is read.
    connection: AbortOnDrop,
}

enum Hop {
    Redirect(String),
    Final(FinalResponse),
}

struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug)]
struct Failure {
    kind: ErrorKind,
    message: String,
}

impl Failure {
    fn new(kind: ErrorKind, message: String) -> Self {
        Self { kind, message }
    }
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// Tries each address in turn until one accepts.
async fn connect(addresses: &[SocketAddr]) -> Result<TcpStream, Failure> {
    let mut failures = Vec::new();
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(e) => failures.push(format!("{address}: {e}")),
        }
    }
    Err(Failure::new(
        ErrorKind::Connect,
        format!("cannot connect to {}", failures.join("; ")),
    ))
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn add(phase: &mut Option<f64>, duration: Duration) {
    *phase = Some(phase.unwrap_or(0.0) + ms(duration));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_needs_2xx_no_error_and_a_matching_regex() {
        let mut outcome = Outcome {
            status: Some(204),
            ..Outcome::default()
        };
        assert!(outcome.is_up());
        outcome.regex_matched = Some(false);
        assert!(!outcome.is_up());
        outcome.regex_matched = Some(true);
        outcome.status = Some(301);
        assert!(!outcome.is_up());
        outcome.status = Some(200);
        outcome.error = Some(CheckError {
            kind: ErrorKind::Body,
            message: "broke off".into(),
        });
        assert!(!outcome.is_up());
    }

    /// A name whose first address refuses the connection and whose second is a live server:
    /// the check tries the second and is up; the dead address alone is a `connect` failure
    /// naming it.
    #[tokio::test]
    async fn each_resolved_address_is_tried_in_turn() {
        let server = sitemon_testkit::http::TestServer::http().await;
        let port = server.addr.port();
        // Nothing listens on ::1 nor on 127.0.0.2 at the server's port: it is bound to
        // 127.0.0.1 alone.
        let dead: [IpAddr; 2] = ["::1".parse().expect("ip"), "127.0.0.2".parse().expect("ip")];
        let live: IpAddr = "127.0.0.1".parse().expect("ip");
        let mut prober = Prober::new(1 << 20, &[]).expect("prober");
        prober.resolver = Resolver::Fixed(
            [
                ("dead-first.test".to_owned(), vec![dead[0], dead[1], live]),
                ("dead-only.test".to_owned(), dead.to_vec()),
            ]
            .into(),
        );
        let check = |host: &str| {
            let target = Target::parse(&format!("http://{host}:{port}/ok?{host}")).expect("url");
            let prober = prober.clone();
            async move { prober.check(&target, None, Duration::from_secs(10)).await }
        };

        let outcome = check("dead-first.test").await;
        assert!(outcome.is_up(), "{outcome:?}");
        assert_eq!(outcome.status, Some(200));
        assert_eq!(server.requests_for("/ok?dead-first.test").len(), 1);

        let outcome = check("dead-only.test").await;
        let error = outcome.error.expect("no address accepts");
        assert_eq!(error.kind, ErrorKind::Connect, "{}", error.message);
        for address in [format!("[::1]:{port}"), format!("127.0.0.2:{port}")] {
            assert!(error.message.contains(&address), "{}", error.message);
        }
    }
}
