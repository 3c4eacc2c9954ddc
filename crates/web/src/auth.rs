//! The UI token: a bearer header, or the session cookie the login form sets.
//!
//! The cookie holds an HMAC of a fixed text under the token, never the token itself; it is
//! `HttpOnly` (no script reads it) and `SameSite=Strict` (no other site's page sends it).

use axum::extract::{Request, State};
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

#[cfg(test)]
mod tests {
    use super::*;

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
