//! The UI token: a bearer header, or the session cookie the login form sets.
//!
//! The cookie holds an HMAC of a fixed text under the token, never the token itself; it is
//! `HttpOnly` (no script reads it) and `SameSite=Strict` (no other site's page sends it).
//!
//! Without a token (loopback only), the `Host` check: a page of another site whose name
//! the attacker re-points at 127.0.0.1 (DNS rebinding) would read the dashboard as its own
//! origin; its requests carry the attacker's name in `Host`, and are refused.

use axum::extract::{Request, State};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use ring::hmac;
use sitemon_core::Secret;

use crate::AppState;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "sitemon_session";

/// The token, and the cookie value it gives.
#[derive(Debug)]
pub(crate) struct Token {
    token: Secret,
    session: String,
}

impl Token {
    pub(crate) fn new(token: Secret) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, token.expose().as_bytes());
        let tag = hmac::sign(&key, b"sitemon dashboard session v1");
        let session = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Self { token, session }
    }

    /// Whether `given` is the token (in time that does not depend on where they differ).
    pub(crate) fn matches(&self, given: &str) -> bool {
        same(given.as_bytes(), self.token.expose().as_bytes())
    }

    /// The `Set-Cookie` value of a session.
    pub(crate) fn set_cookie(&self, secure: bool) -> String {
        format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000{}",
            self.session,
            if secure { "; Secure" } else { "" }
        )
    }

    /// Whether the request carries the token or a session.
    pub(crate) fn allows(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.strip_prefix("Bearer "))
            .any(|t| self.matches(t.trim()));
        bearer
            || headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
                .any(|value| same(value.as_bytes(), self.session.as_bytes()))
    }
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a protected route is, for the answer to a request without the token.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Guarded {
    /// A page: sent to the login form.
    Page,
    /// The API and `/metrics`: 401 with `WWW-Authenticate`.
    Api,
    /// A badge: 401, unless `--public-badges`.
    Badge,
}

/// Lets a request through when no token is set, or when it carries it.
pub(crate) async fn guard(
    State((state, guarded)): State<(AppState, Guarded)>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    if matches!(guarded, Guarded::Badge) && state.public_badges {
        return next.run(request).await;
    }
    if token.allows(request.headers()) {
        return next.run(request).await;
    }
    match guarded {
        Guarded::Page => Redirect::to("/login").into_response(),
        Guarded::Api => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"sitemon\"")],
            axum::Json(serde_json::json!({
                "error": "this server needs its token: send `Authorization: Bearer TOKEN`"
            })),
        )
            .into_response(),
        Guarded::Badge => (
            StatusCode::UNAUTHORIZED,
            [
                (header::CONTENT_TYPE, "image/svg+xml"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            crate::svg::badge("sitemon", "unauthorized", crate::svg::GREY),
        )
            .into_response(),
    }
}

/// The `Host` values a tokenless loopback server answers.
#[derive(Debug, Clone)]
pub(crate) struct AllowedHosts {
    /// The address listened on (its IP is served, whatever it is).
    pub(crate) listen: SocketAddr,
    /// More names, e.g. a reverse proxy's (`--allowed-host`), compared without case.
    pub(crate) extra: Vec<String>,
}

impl AllowedHosts {
    /// Whether `host` (a `Host` header or a URI's authority, with or without a port)
    /// names this server: `localhost`, a loopback address, the address listened on, or
    /// one of the extra names.
    pub(crate) fn allows(&self, host: &str) -> bool {
        let host = host.trim();
        let name = match host.strip_prefix('[') {
            // `[::1]` or `[::1]:8080`.
            Some(rest) => match rest.split_once(']') {
                Some((ip, port)) if port.is_empty() || is_port(port) => ip,
                _ => return false,
            },
            None => match host.rsplit_once(':') {
                Some((name, port)) if is_port(port) => name,
                Some(_) => return false,
                None => host,
            },
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.eq_ignore_ascii_case("localhost") {
            return true;
        }
        if let Ok(ip) = name.parse::<Ipv4Addr>() {
            return ip.is_loopback() || IpAddr::V4(ip) == self.listen.ip();
        }
        if let Ok(ip) = name.parse::<Ipv6Addr>() {
            // Only in brackets, as a URL writes it.
            return host.starts_with('[')
                && (ip.is_loopback() || IpAddr::V6(ip) == self.listen.ip());
        }
        self.extra
            .iter()
            .any(|extra| extra.eq_ignore_ascii_case(name))
    }
}

/// `:8080` without the colon: digits only.
fn is_port(port: &str) -> bool {
    let port = port.strip_prefix(':').unwrap_or(port);
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// Refuses, with a 421 and one line, a request whose `Host` (and absolute URI, if any)
/// does not name this server; a request with neither is refused too.
pub(crate) async fn check_host(
    State(hosts): State<Arc<AllowedHosts>>,
    request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(header::HOST)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let authority = request.uri().authority().map(|a| a.as_str());
    let named = header.is_some() || authority.is_some();
    if named && header.into_iter().chain(authority).all(|h| hosts.allows(h)) {
        return next.run(request).await;
    }
    (
        StatusCode::MISDIRECTED_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!(
            "this dashboard has no token, so it answers only requests for localhost or a loopback address: open http://{}/, or set a token or --allowed-host\n",
            hosts.listen
        ),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_or_allowed_names_pass() {
        let hosts = AllowedHosts {
            listen: "127.0.0.1:8080".parse().expect("addr"),
            extra: vec!["Monitor.Internal".to_owned()],
        };
        for good in [
            "localhost",
            "LOCALHOST:8080",
            "localhost.:1",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.3.4.5:9",
            "[::1]",
            "[::1]:8080",
            "monitor.internal",
            "monitor.internal:443",
        ] {
            assert!(hosts.allows(good), "{good}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "10.0.0.1:8080",
            "::1",
            "[::1]x",
            "localhost:80:80",
            "localhost:http",
            "[::ffff:10.0.0.1]",
            "",
        ] {
            assert!(!hosts.allows(bad), "{bad}");
        }
        let any = AllowedHosts {
            listen: "[::1]:8080".parse().expect("addr"),
            extra: Vec::new(),
        };
        assert!(
            any.allows("[::1]:8080") && any.allows("127.0.0.1") && !any.allows("monitor.internal")
        );
    }

    #[test]
    fn the_token_or_its_session_lets_in() {
        let token = Token::new(Secret::new("t0ken"));
        let mut headers = HeaderMap::new();
        assert!(!token.allows(&headers));
        headers.insert(
            header::AUTHORIZATION,
            "Bearer wrong".parse().expect("header"),
        );
        assert!(!token.allows(&headers));
        headers.insert(
            header::AUTHORIZATION,
            "Bearer t0ken".parse().expect("header"),
        );
        assert!(token.allows(&headers));
        let mut headers = HeaderMap::new();
        let cookie = token.set_cookie(false);
        let pair = cookie.split(';').next().expect("a pair");
        assert!(
            !pair.contains("t0ken"),
            "the cookie is not the token: {cookie}"
        );
        headers.insert(
            header::COOKIE,
            format!("a=b; {pair}").parse().expect("header"),
        );
        assert!(token.allows(&headers));
        headers.insert(
            header::COOKIE,
            format!("{COOKIE}=t0ken").parse().expect("header"),
        );
        assert!(!token.allows(&headers));
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    }
}
