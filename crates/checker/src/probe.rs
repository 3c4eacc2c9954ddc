//! One HTTP check of one site's [`CheckPlan`]: a fresh connection, every phase timed, redirects
//! followed, the body read up to a cap and searched with the site's regexes. It reports what
//! it saw (an [`Observation`]); whether that is up is [`crate::verdict`]'s to say.
//!
//! A fresh connection per check is deliberate: a pooled connection (or a resumed TLS session)
//! would hide exactly the DNS, connect and TLS failures and costs a monitor exists to see.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{
    ACCEPT, AUTHORIZATION, CONNECTION, COOKIE, HOST, HeaderName, HeaderValue, LOCATION,
    PROXY_AUTHORIZATION, USER_AGENT,
};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use sitemon_core::{CheckError, ErrorKind, ProbeTimings};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::IpNet;
use crate::error::{Error, chain};
use crate::plan::{CheckPlan, Request, Searches};
use crate::target::{Chain, Credentials, Target, without_userinfo};
use crate::tls_expiry::not_after;
use crate::verdict::Observation;

/// The most redirects a check follows; one more is a `too_many_redirects` failure.
pub(crate) const MAX_REDIRECTS: u32 = 5;

/// Everything a check needs that is the same for all checks.
#[derive(Clone)]
pub(crate) struct Prober {
    tls: TlsConnector,
    /// For sites with `tls_verify` off: any certificate is accepted (its expiry still read).
    tls_unverified: TlsConnector,
    user_agent: HeaderValue,
    max_body_bytes: usize,
    resolver: Resolver,
    /// `--deny-cidr`: addresses no check connects to.
    deny: Arc<[IpNet]>,
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
            .field("deny", &self.deny)
            .finish_non_exhaustive()
    }
}

impl Prober {
    /// A prober trusting the Mozilla roots (plus `extra_roots`), with TLS session resumption
    /// off so that every check pays, and measures, a full handshake; it never connects to an
    /// address in `deny`.
    ///
    /// # Errors
    /// [`Error::Config`] naming `extra_root_certs` when a certificate cannot be used.
    pub(crate) fn new(
        max_body_bytes: usize,
        extra_roots: &[CertificateDer<'static>],
        deny: &[IpNet],
    ) -> crate::error::Result<Self> {
        let refused = |reason: String| Error::Config {
            setting: "extra_root_certs",
            reason,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| refused(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in extra_roots {
            roots
                .add(cert.clone())
                .map_err(|e| refused(format!("extra CA certificate not usable: {e}")))?;
        }
        let mut config = builder.with_root_certificates(roots).with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut unverified = config.clone();
        unverified
            .dangerous()
            .set_certificate_verifier(Arc::new(AnyCertificate(provider)));
        Ok(Self {
            tls: TlsConnector::from(Arc::new(config)),
            tls_unverified: TlsConnector::from(Arc::new(unverified)),
            user_agent: HeaderValue::from_static(concat!("sitemon/", env!("CARGO_PKG_VERSION"))),
            max_body_bytes,
            resolver: Resolver::System,
            deny: deny.into(),
        })
    }

    /// Checks `plan` once, within `timeout` for the whole check, and says what it saw.
    pub(crate) async fn check(&self, plan: &CheckPlan, timeout: Duration) -> Observation {
        let started = Instant::now();
        let target = &plan.target;
        let mut outcome = Observation::default();
        let result = tokio::time::timeout(
            timeout,
            self.follow(target, &plan.request, plan.searches(), &mut outcome),
        )
        .await;
        outcome.timings.total = ms(started.elapsed());
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(failure)) => Some(failure),
            Err(_) => Some(Failure::new(
                ErrorKind::Timeout,
                format!(
                    "no complete response from {} within {:.3} s",
                    without_userinfo(outcome.final_url.as_deref().unwrap_or(&target.url)),
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
                outcome.must_not_match_found = None;
            }
            outcome.error = Some(CheckError { kind, message });
        }
        outcome
    }

    async fn follow(
        &self,
        first: &Target,
        request: &Request,
        searches: Searches<'_>,
        outcome: &mut Observation,
    ) -> Result<(), Failure> {
        let mut target = first.clone();
        let mut method = request.method.clone();
        let mut body = request.body.clone();
        let mut chain = Chain::new(first);
        loop {
            outcome.final_url = Some(target.url.clone());
            let credentials = if chain.enter(&target) {
                Trust::Site(first.credentials.as_ref())
            } else {
                Trust::Elsewhere
            };
            let hop = self
                .fetch(
                    &target,
                    request,
                    &method,
                    body.clone(),
                    credentials,
                    outcome,
                )
                .await?;
            let (location, status) = match hop {
                Hop::Redirect(location, status) => (location, status),
                Hop::Final(FinalResponse {
                    response,
                    connection,
                }) => {
                    outcome.status = Some(response.status().as_u16());
                    let body = self.read_body(response.into_body()).await;
                    drop(connection);
                    let body = body?;
                    if searches.regex.is_some() || searches.must_not_match.is_some() {
                        let text = String::from_utf8_lossy(&body);
                        outcome.regex_matched = searches.regex.map(|r| r.is_match(&text));
                        outcome.must_not_match_found =
                            searches.must_not_match.map(|r| r.is_match(&text));
                    }
                    return Ok(());
                }
            };
            // As browsers do: 303, and 301 or 302 after a POST, go on with a GET without
            // the body; 307 and 308 repeat the request as it was.
            if status == StatusCode::SEE_OTHER
                || (method == Method::POST
                    && matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND))
            {
                method = Method::GET;
                body = Bytes::new();
            }
            if outcome.redirects == MAX_REDIRECTS {
                return Err(Failure::new(
                    ErrorKind::TooManyRedirects,
                    format!(
                        "more than {MAX_REDIRECTS} redirects (the last to {location:?} from {})",
                        target.shown()
                    ),
                ));
            }
            let next = target.redirect(&location).map_err(|reason| {
                Failure::new(
                    ErrorKind::Http,
                    format!("{} redirects to {location:?}: {reason}", target.shown()),
                )
            })?;
            // A 307 or 308 repeats the body: only to the site's own origin (see `Chain`).
            // Sent without it the request would be another one, judged as if it were the
            // site's; better to say so.
            if !body.is_empty() && !chain.trusts(&next) {
                return Err(Failure::new(
                    ErrorKind::Http,
                    format!(
                        "{} answered {} to {}, another origin than the site's: the site's \
                         body goes to its own origin only (register the new URL as the site)",
                        target.shown(),
                        status.as_u16(),
                        next.shown()
                    ),
                ));
            }
            outcome.redirects += 1;
            target = next;
        }
    }

    /// One request over a fresh connection, with the credentials `credentials` allows.
    async fn fetch(
        &self,
        target: &Target,
        request: &Request,
        method: &Method,
        body: Bytes,
        credentials: Trust<'_>,
        outcome: &mut Observation,
    ) -> Result<Hop, Failure> {
        let timings = &mut outcome.timings;

        let phase = Instant::now();
        let addresses = self.resolver.resolve(&target.host, target.port).await;
        add(&mut timings.dns, phase.elapsed());
        let addresses = self.allowed(target, addresses?)?;

        let phase = Instant::now();
        let stream = connect(&addresses).await;
        add(&mut timings.connect, phase.elapsed());
        let stream = stream?;
        // Small requests: no reason to let Nagle hold them back.
        let _ = stream.set_nodelay(true);

        outcome.cert_not_after = None;
        let exchange = Exchange {
            target,
            request,
            method,
            body,
            credentials,
        };
        if !target.https {
            return self.exchange(stream, exchange, &mut outcome.timings).await;
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
        let connector = if request.tls_verify {
            &self.tls
        } else {
            &self.tls_unverified
        };
        let tls = connector.connect(server_name, stream).await;
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
        self.exchange(tls, exchange, &mut outcome.timings).await
    }

    async fn exchange<S>(
        &self,
        io: S,
        exchange: Exchange<'_>,
        timings: &mut ProbeTimings,
    ) -> Result<Hop, Failure>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Exchange {
            target,
            request,
            method,
            body,
            credentials,
        } = exchange;
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
        let mut http_request = hyper::Request::builder()
            .method(method.clone())
            .uri(target.path_and_query.as_str())
            .header(HOST, target.authority.as_str())
            .header(USER_AGENT, self.user_agent.clone())
            .header(ACCEPT, "*/*")
            .header(CONNECTION, "close")
            .body(Full::new(body))
            .map_err(|e| Failure::new(ErrorKind::InvalidUrl, format!("{}: {e}", target.shown())))?;
        let trusted = matches!(credentials, Trust::Site(_));
        for (name, value) in &request.headers {
            if trusted || !is_credential(name) {
                http_request
                    .headers_mut()
                    .insert(name.clone(), value.clone());
            }
        }
        // The URL's userinfo, unless the site's own `Authorization` header says otherwise.
        if let Trust::Site(Some(basic)) = credentials {
            if !http_request.headers().contains_key(AUTHORIZATION) {
                if let Ok(mut value) = HeaderValue::from_str(basic.header_value()) {
                    value.set_sensitive(true);
                    http_request.headers_mut().insert(AUTHORIZATION, value);
                }
            }
        }
        let phase = Instant::now();
        let response = sender.send_request(http_request).await;
        add(&mut timings.ttfb, phase.elapsed());
        let response = response.map_err(http_error)?;
        if request.follow_redirects && is_redirect(response.status()) {
            if let Some(location) = response.headers().get(LOCATION) {
                let location = String::from_utf8_lossy(location.as_bytes()).into_owned();
                return Ok(Hop::Redirect(location, response.status()));
            }
        }
        Ok(Hop::Final(FinalResponse {
            response,
            connection,
        }))
    }

    /// The addresses of `target` outside the deny list, in their order; none left is a
    /// `connect` failure before any connection.
    fn allowed(
        &self,
        target: &Target,
        addresses: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Failure> {
        if self.deny.is_empty() {
            return Ok(addresses);
        }
        let (allowed, denied): (Vec<SocketAddr>, Vec<SocketAddr>) =
            addresses.into_iter().partition(|address| {
                let ip = address.ip().to_canonical();
                !self.deny.iter().any(|net| net.contains(&ip))
            });
        if allowed.is_empty() {
            let denied: Vec<String> = denied.iter().map(|a| a.ip().to_string()).collect();
            return Err(Failure::new(
                ErrorKind::Connect,
                format!(
                    "{} resolves only to denied addresses ({}): the checker's --deny-cidr \
                     keeps it away from them",
                    target.host,
                    denied.join(", ")
                ),
            ));
        }
        Ok(allowed)
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
    /// To the `Location`, with the redirect's status.
    Redirect(String, StatusCode),
    Final(FinalResponse),
}

/// One request of a check: to where, with what.
struct Exchange<'a> {
    target: &'a Target,
    request: &'a Request,
    /// The request's method; a redirect may have turned a POST into a GET.
    method: &'a Method,
    body: Bytes,
    credentials: Trust<'a>,
}

/// What of the site's credentials one request carries, as [`Chain`] decides.
#[derive(Debug, Clone, Copy)]
enum Trust<'a> {
    /// The site's origin, the chain never having left it: the credential headers, and the
    /// URL's userinfo (if any) as Basic auth unless the site has its own `Authorization`.
    Site(Option<&'a Credentials>),
    /// Another origin, or any hop after the chain left the site's: no credential header and
    /// no userinfo.
    Elsewhere,
}

/// The verifier of sites with `tls_verify` off: any certificate for any name is accepted,
/// but the handshake's signatures are still checked (the server holds the certificate's key).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
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

/// The site headers that carry credentials: sent only where [`Chain`] trusts the hop, as curl,
/// browsers and Go's client drop them on a redirect to another origin.
fn is_credential(name: &HeaderName) -> bool {
    name == AUTHORIZATION || name == PROXY_AUTHORIZATION || name == COOKIE
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
    use crate::plan::Assertions;
    use crate::verdict::judge;
    use sitemon_core::SiteSettings;

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
        let mut prober = Prober::new(1 << 20, &[], &[]).expect("prober");
        prober.resolver = Resolver::Fixed(
            [
                ("dead-first.test".to_owned(), vec![dead[0], dead[1], live]),
                ("dead-only.test".to_owned(), dead.to_vec()),
            ]
            .into(),
        );
        let check = |host: &str| {
            let url = format!("http://{host}:{port}/ok?{host}");
            let prober = prober.clone();
            let plan = CheckPlan::from_settings(&SiteSettings::new(&url)).expect("a GET");
            async move { prober.check(&plan, Duration::from_secs(10)).await }
        };

        let outcome = check("dead-first.test").await;
        assert!(judge(&Assertions::default(), &outcome).up, "{outcome:?}");
        assert_eq!(outcome.status, Some(200));
        assert_eq!(server.requests_for("/ok?dead-first.test").len(), 1);

        let outcome = check("dead-only.test").await;
        let error = outcome.error.expect("no address accepts");
        assert_eq!(error.kind, ErrorKind::Connect, "{}", error.message);
        for address in [format!("[::1]:{port}"), format!("127.0.0.2:{port}")] {
            assert!(error.message.contains(&address), "{}", error.message);
        }
    }

    /// The deny list matches an IPv4-mapped IPv6 address as its IPv4 address, skips denied
    /// addresses of a name and still tries the others.
    #[tokio::test]
    async fn denied_addresses_are_skipped_mapped_ones_too() {
        let server = sitemon_testkit::http::TestServer::http().await;
        let port = server.addr.port();
        let deny = [crate::config::parse_cidr("127.0.0.2/32").expect("cidr")];
        let mut prober = Prober::new(1 << 20, &[], &deny).expect("prober");
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().expect("ip");
        let live: IpAddr = "127.0.0.1".parse().expect("ip");
        prober.resolver = Resolver::Fixed(
            [
                ("mixed.test".to_owned(), vec![mapped, live]),
                ("mapped.test".to_owned(), vec![mapped]),
            ]
            .into(),
        );
        let check = |host: &str| {
            let url = format!("http://{host}:{port}/ok?{host}");
            let prober = prober.clone();
            let plan = CheckPlan::from_settings(&SiteSettings::new(&url)).expect("a GET");
            async move { prober.check(&plan, Duration::from_secs(10)).await }
        };

        let outcome = check("mixed.test").await;
        assert!(judge(&Assertions::default(), &outcome).up, "{outcome:?}");
        let error = check("mapped.test").await.error.expect("denied");
        assert_eq!(error.kind, ErrorKind::Connect, "{}", error.message);
        assert!(
            error
                .message
                .contains("mapped.test resolves only to denied addresses (::ffff:127.0.0.2)"),
            "{}",
            error.message
        );
    }
}
