//! sitemon's dashboard, JSON API and badges: `sitemon serve`.
//!
//! A read-only HTTP server over the history in PostgreSQL. Its numbers come from the same
//! `sitemon-core` queries as the CLI's `status` and `history` ([`sitemon_core::report`]),
//! the days' uptime and the latest checks from [`sitemon_core::dashboard`], the incidents
//! from [`sitemon_core::incidents`]: no second implementation of any figure.
//!
//! # Layout
//! - this file: the [`WebConfig`], the shared state and the router, [`start`].
//! - `pages`: the overview and the site page, rendered on the server (maud), and the login
//!   form.
//! - `api`: `/api/v1/...` in JSON.
//! - `badges`: `/badge/{id}/...svg`.
//! - `svg`: the uptime bars, the response-time chart and the badges as SVG.
//! - `auth`: the token (bearer header or session cookie).
//! - `mask`: URLs shown masked (by `sitemon_core::mask`) or whole (`--show-full-urls`).
//! - `metrics`: the server's own Prometheus metrics, and `/metrics`.
//! - `error`: this crate's [`Error`] and the answer of a failed request.
//! - `serve`: the accept loop: hyper with a read timeout, the cap on connections, the
//!   bound on a request body.
//!
//! # Safety
//! Everything shown is escaped (maud escapes by default); URLs are masked unless
//! [`WebConfig::show_full_urls`]; with a token every page and API call needs it; without
//! one, [`start`] refuses a non-loopback address unless [`WebConfig::public`], and answers
//! only requests whose `Host` is a loopback name or address (or one of
//! [`WebConfig::allowed_hosts`]): a page on another site cannot read it through DNS
//! rebinding. Every query runs under the pool's `statement_timeout`: a slow database gives
//! a 503 with a message. A request must arrive within [`WebConfig::read_timeout`], and at
//! most [`WebConfig::max_connections`] are served at once (more are closed at once), so
//! idle or trickling clients cannot take the process's file descriptors.
//!
//! # Example
//! ```no_run
//! use sitemon_core::DatabaseConfig;
//! use sitemon_web::WebConfig;
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let database = DatabaseConfig::from_url("postgres://sitemon:sitemon@127.0.0.1/sitemon")?;
//! let config = WebConfig::new("127.0.0.1:8080".parse()?);
//! let pool = sitemon_web::connect(&database, &config).await?;
//! let shutdown = CancellationToken::new();
//! let (addr, server) = sitemon_web::start(config, pool, shutdown.clone()).await?;
//! println!("dashboard at http://{addr}/");
//! shutdown.cancel();
//! server.await??;
//! # Ok(())
//! # }
//! ```

mod api;
mod auth;
mod badges;
mod error;
mod frame;
mod mask;
mod metrics;
mod pages;
mod serve;
mod svg;
mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::routing::{get, post};
use sitemon_core::db::PgPool;
use sitemon_core::metrics::Registry;
use sitemon_core::{DatabaseConfig, Secret};
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use error::{Error, Result};

use crate::auth::{Guarded, Token};
use crate::mask::Urls;

/// The default address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The default bound on one statement.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// The default bound on a request's arrival, and on an idle keep-alive connection.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The default cap on connections served at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The token every page and API call needs; `None`: open to whoever reaches the address.
    pub token: Option<Secret>,
    /// Serve without a token on a non-loopback address (refused otherwise).
    pub public: bool,
    /// Badges need no token, even when one is set (to embed them in a README).
    pub public_badges: bool,
    /// Show URLs whole: credentials and query values included.
    pub show_full_urls: bool,
    /// The longest one statement may run (PostgreSQL's `statement_timeout`); past it the
    /// request gets a 503.
    pub query_timeout: Duration,
    /// The longest a request's head, and apart its body, may take to arrive; the longest an
    /// idle keep-alive connection stays open (hyper waits for the next request's head with
    /// the same clock). A slow or silent client is closed, so it holds no descriptor.
    pub read_timeout: Duration,
    /// How many connections are served at once; beyond it a new connection gets a short
    /// 503 and is closed at once, so that the process keeps descriptors for its own sockets
    /// (the checker's, the sync's under `sitemon run --listen`).
    pub max_connections: usize,
    /// `Host` names (without port) served besides loopback ones when the server has no
    /// token and is not [`WebConfig::public`], e.g. a reverse proxy's name.
    pub allowed_hosts: Vec<String>,
    /// Where the server registers its metrics, served at `/metrics` with everything else
    /// registered there (the checker's and the sync's too under `sitemon run --listen`).
    pub metrics: Registry,
}

impl WebConfig {
    /// Defaults for `listen`: no token, URLs masked, 10 s per statement, 10 s to read a
    /// request, 256 connections.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            token: None,
            public: false,
            public_badges: false,
            show_full_urls: false,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            allowed_hosts: Vec::new(),
            metrics: Registry::new(),
        }
    }

    /// Refuses what cannot be served safely.
    ///
    /// # Errors
    /// [`Error::Unprotected`] for a non-loopback address without a token or `public`;
    /// [`Error::Config`] for an empty token, a query or read timeout outside 100 ms to
    /// 10 min, or `max_connections` outside 1 to 65536.
    pub fn validate(&self) -> Result<()> {
        if let Some(token) = &self.token {
            if token.expose().trim().is_empty() {
                return Err(Error::Config {
                    setting: "SITEMON_UI_TOKEN",
                    reason: "the token is empty".to_owned(),
                });
            }
        } else if !self.listen.ip().is_loopback() && !self.public {
            return Err(Error::Unprotected { addr: self.listen });
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(600)).contains(&self.query_timeout) {
            return Err(Error::Config {
                setting: "--query-timeout",
                reason: "from 100ms to 10m".to_owned(),
            });
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(600)).contains(&self.read_timeout) {
            return Err(Error::Config {
                setting: "--read-timeout",
                reason: "from 100ms to 10m".to_owned(),
            });
        }
        if !(1..=65_536).contains(&self.max_connections) {
            return Err(Error::Config {
                setting: "--max-connections",
                reason: "from 1 to 65536".to_owned(),
            });
        }
        Ok(())
    }
}

/// A pool for the server: every statement under `config.query_timeout`.
///
/// # Errors
/// core's connection errors.
pub async fn connect(database: &DatabaseConfig, config: &WebConfig) -> Result<PgPool> {
    let millis = config.query_timeout.as_millis().to_string();
    let options = database
        .options()
        .clone()
        .options([("statement_timeout", millis.as_str())]);
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(config.query_timeout)
        .connect_lazy_with(options);
    // One round trip now, so that a wrong URL fails at start and not on the first page.
    let ping = async { sqlx::query("SELECT 1").execute(&pool).await };
    match tokio::time::timeout(Duration::from_secs(10), ping).await {
        Ok(Ok(_)) => Ok(pool),
        Ok(Err(e)) => Err(Error::Core(sitemon_core::Error::DatabaseConnect {
            target: database.target().to_owned(),
            reason: sitemon_core::mask::bound_text(
                &e.to_string(),
                sitemon_core::mask::MAX_MESSAGE_BYTES,
            )
            .into_owned(),
        })),
        Err(_) => Err(Error::Core(sitemon_core::Error::DatabaseConnect {
            target: database.target().to_owned(),
            reason: "no answer within 10s".to_owned(),
        })),
    }
}

/// What every handler shares; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) pool: PgPool,
    pub(crate) token: Option<Arc<Token>>,
    pub(crate) public_badges: bool,
    pub(crate) urls: Urls,
    pub(crate) registry: Registry,
    pub(crate) metrics: Arc<metrics::WebMetrics>,
}

/// The routes, the guards and the layers; `hosts`: the `Host` check of a tokenless
/// loopback server.
fn router(state: AppState, read_timeout: Duration, hosts: Option<auth::AllowedHosts>) -> Router {
    let guarded = |routes: Router<AppState>, kind: Guarded| {
        routes.route_layer(axum::middleware::from_fn_with_state(
            (state.clone(), kind),
            auth::guard,
        ))
    };
    let pages = Router::new()
        .route("/", get(pages::overview))
        .route("/sites/{id}", get(pages::site));
    let api = Router::new()
        .route("/api/v1/sites", get(api::sites))
        .route("/api/v1/sites/{id}", get(api::site))
        .route("/api/v1/sites/{id}/history", get(api::history))
        .route("/api/v1/sites/{id}/checks", get(api::checks))
        .route("/api/v1/incidents", get(api::incidents))
        .route("/metrics", get(metrics::render));
    let badges = Router::new()
        .route("/badge/{id}/status.svg", get(badges::status))
        .route("/badge/{id}/uptime/{window}", get(badges::uptime))
        .route("/badge/{id}/response/{window}", get(badges::response));
    let open = Router::new()
        .route("/healthz", get(api::healthz))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/assets/sitemon.css", get(pages::css))
        .route("/assets/sitemon.js", get(pages::script))
        .route("/assets/favicon.svg", get(pages::favicon))
        .route("/favicon.ico", get(pages::favicon));
    let app = Router::new()
        .merge(guarded(pages, Guarded::Page))
        .merge(guarded(api, Guarded::Api))
        .merge(guarded(badges, Guarded::Badge))
        .merge(open)
        // After routing, so that the route's pattern is known.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::record,
        ))
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn_with_state(
            read_timeout,
            serve::bounded_body,
        ));
    // Before anything else reads the request: a refused Host gets no page, no body read.
    let app = match hosts {
        Some(hosts) => app.layer(axum::middleware::from_fn_with_state(
            Arc::new(hosts),
            auth::check_host,
        )),
        None => app,
    };
    app.layer(axum::middleware::map_response(security_headers))
        .layer(tower_http::compression::CompressionLayer::new())
        .with_state(state)
}

/// Headers every answer carries: no framing, no sniffing, scripts and styles only from
/// this server.
async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// Starts serving: checks the configuration, binds, and runs the server in a task of its
/// own until `shutdown` (no new connection; idle ones close; in-flight requests finish,
/// for at most the query timeout and the read timeout). Returns the address bound (useful
/// with port 0) and the task.
///
/// # Errors
/// [`Error::Unprotected`], [`Error::Config`] from [`WebConfig::validate`];
/// [`Error::Listen`].
pub async fn start(
    config: WebConfig,
    pool: PgPool,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<Result<()>>)> {
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: config.listen,
            source,
        })?;
    let bound = listener.local_addr().unwrap_or(config.listen);
    let metrics = Arc::new(metrics::WebMetrics::default());
    metrics.register(&config.metrics);
    // No token and not public: loopback only (validated), so the Host is checked.
    let hosts = (config.token.is_none() && !config.public).then(|| auth::AllowedHosts {
        listen: bound,
        extra: config.allowed_hosts.clone(),
    });
    let limits = serve::Limits {
        read_timeout: config.read_timeout,
        max_connections: config.max_connections,
        drain: config.query_timeout + config.read_timeout,
    };
    let state = AppState {
        pool,
        token: config.token.map(|t| Arc::new(Token::new(t))),
        public_badges: config.public_badges,
        urls: Urls {
            show_full: config.show_full_urls,
        },
        registry: config.metrics,
        metrics: Arc::clone(&metrics),
    };
    let app = router(state, config.read_timeout, hosts);
    let server = tokio::spawn(async move {
        serve::serve(listener, app, limits, metrics, shutdown).await;
        Ok(())
    });
    tracing::info!("dashboard at http://{bound}/");
    Ok((bound, server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_address_needs_a_token_or_public() {
        let open = WebConfig::new("0.0.0.0:8080".parse().expect("addr"));
        let error = open.validate().expect_err("refused");
        assert_eq!(
            error.to_string(),
            "refusing to serve 0.0.0.0:8080 without a token: set SITEMON_UI_TOKEN or --token-file, or pass --public to serve anyone who can reach it"
        );
        let public = WebConfig {
            public: true,
            ..open.clone()
        };
        assert!(public.validate().is_ok());
        let with_token = WebConfig {
            token: Some(Secret::new("t")),
            ..open.clone()
        };
        assert!(with_token.validate().is_ok());
        let empty = WebConfig {
            token: Some(Secret::new(" ")),
            ..open
        };
        assert!(empty.validate().is_err());
        for loopback in ["127.0.0.1:8080", "[::1]:8080"] {
            assert!(
                WebConfig::new(loopback.parse().expect("addr"))
                    .validate()
                    .is_ok()
            );
        }
    }
}
