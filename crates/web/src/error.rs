//! The error type of `sitemon-web`, and [`AppError`]: what a handler answers when it fails.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Everything that can go wrong starting the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server would be open to the network without a token.
    #[error(
        "refusing to serve {addr} without a token: set SITEMON_UI_TOKEN or --token-file, or pass --public to serve anyone who can reach it"
    )]
    Unprotected {
        /// The address asked for.
        addr: std::net::SocketAddr,
    },

    /// A setting that cannot be used.
    #[error("invalid {setting}: {reason}")]
    Config {
        /// The flag.
        setting: &'static str,
        /// What is wrong.
        reason: String,
    },

    /// The address cannot be listened on.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// An error of `sitemon-core` (connecting to PostgreSQL).
    #[error(transparent)]
    Core(#[from] sitemon_core::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a failed request is answered: a page for people, JSON for the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Html,
    Json,
}

/// A failed request: its status and one line for whoever asked.
#[derive(Debug)]
pub(crate) struct AppError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    pub(crate) format: Format,
}

impl AppError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>, format: Format) -> Self {
        Self {
            status,
            message: message.into(),
            format,
        }
    }

    /// A core error: an unknown site is 404, a bad parameter 400, a database that is slow or
    /// away 503 (never its raw message: it may name the server).
    pub(crate) fn from_core(error: sitemon_core::Error, format: Format) -> Self {
        use sitemon_core::Error as E;
        let (status, message) = match &error {
            E::UnknownSite { id } => (StatusCode::NOT_FOUND, format!("no site has id {id}")),
            E::Config { .. } => (StatusCode::BAD_REQUEST, error.to_string()),
            E::Timeout { operation, after } => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the database is slow: {operation} took more than {} s; try again later",
                    after.as_secs()
                ),
            ),
            E::Database { doing, source } => {
                let cancelled = matches!(source.as_ref(), sqlx::Error::Database(e)
                    if e.code().as_deref() == Some("57014"));
                if cancelled {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "the database is slow: {doing} took longer than the statement timeout; try again later"
                        ),
                    )
                } else {
                    tracing::warn!("{error}");
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("the database failed while {doing}; try again later"),
                    )
                }
            }
            _ => {
                tracing::warn!("{error}");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database is not available; try again later".to_owned(),
                )
            }
        };
        Self::new(status, message, format)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut response = match self.format {
            Format::Json => (
                self.status,
                axum::Json(serde_json::json!({ "error": self.message })),
            )
                .into_response(),
            Format::Html => (
                self.status,
                crate::frame::error_page(self.status, &self.message),
            )
                .into_response(),
        };
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        }
        response
    }
}
