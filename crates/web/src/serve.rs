//! The accept loop: HTTP/1.1 on hyper with a timer, a cap on open connections, and a bound
//! on reading a request.
//!
//! `axum::serve` builds hyper without a timer (tokio-rs/axum#2741): no header read timeout,
//! no limit on connections, so idle or trickling clients could take every file descriptor
//! of the process (under `sitemon run --listen`, the checker's too). Here:
//! - a request's head must arrive within [`Limits::read_timeout`] (hyper's
//!   `header_read_timeout`). Hyper starts that clock whenever it waits for a request: on a
//!   new connection and again after each answer, so an idle keep-alive connection is closed
//!   after the same time;
//! - a request's body must arrive whole within the same time, and hold at most
//!   [`MAX_BODY`] bytes ([`bounded_body`]);
//! - at most [`Limits::max_connections`] connections are served at once; beyond that a new
//!   connection is accepted and closed at once with a short 503 (it leaves the kernel's
//!   backlog and holds no descriptor), so the process keeps descriptors for its own sockets;
//! - on shutdown no connection is accepted, idle ones close, in-flight requests finish
//!   (for at most [`Limits::drain`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::WebMetrics;

/// The largest request body read (the login form is a few bytes).
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// What one answer to a connection beyond the cap says, before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 1\r\ncontent-length: 37\r\n\r\nsitemon: too many connections, retry\n";

/// How often, at most, the refused connections are logged.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// The bounds the server keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The longest a request's head (and, apart, its body) may take to arrive; also the
    /// longest an idle keep-alive connection stays open.
    pub(crate) read_timeout: Duration,
    /// How many connections are served at once.
    pub(crate) max_connections: usize,
    /// The longest shutdown waits for in-flight requests.
    pub(crate) drain: Duration,
}

/// Serves `app` on `listener` until `shutdown`, within `limits`.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<WebMetrics>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .keep_alive(true);
    let mut refused_since_log = 0u64;
    let mut last_log: Option<Instant> = None;
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if !is_connection_error(&e) {
                        // EMFILE and the like: wait a little rather than spin.
                        tracing::warn!("dashboard: cannot accept a connection: {e}");
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(Duration::from_millis(200)) => {}
                        }
                    }
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            // Best effort, never waits: a full socket buffer just loses the line.
            let _ = stream.try_write(BUSY);
            drop(stream);
            metrics.refused.inc();
            refused_since_log += 1;
            if last_log.is_none_or(|at| at.elapsed() >= REFUSED_LOG_EVERY) {
                tracing::warn!(
                    "dashboard: {refused_since_log} connection(s) refused: {} open, the most allowed (--max-connections)",
                    limits.max_connections
                );
                refused_since_log = 0;
                last_log = Some(Instant::now());
            }
            continue;
        };
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                // A client that went away or was too slow: its own business.
                tracing::debug!("dashboard connection: {e}");
            }
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(limits.drain, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "dashboard: {} connection(s) still open after {}; stopping without them",
            tracker.len(),
            humantime::format_duration(limits.drain)
        );
    }
}

/// Errors of one connection that the accept loop just skips (as hyper's and axum's do).
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Reads the whole body of a request, at most [`MAX_BODY`] bytes within `read_timeout`,
/// before the handler sees it: a client that trickles a body holds no handler.
pub(crate) async fn bounded_body(
    State(read_timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = match tokio::time::timeout(read_timeout, axum::body::to_bytes(body, MAX_BODY)).await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return if too_large {
                one_line(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is over {MAX_BODY} bytes"),
                )
            } else {
                one_line(
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read".to_owned(),
                )
            };
        }
        Err(_) => {
            return one_line(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {}",
                    humantime::format_duration(read_timeout)
                ),
            );
        }
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// A plain-text answer that closes the connection.
fn one_line(status: StatusCode, message: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CONNECTION, "close"),
        ],
        format!("{message}\n"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_busy_answer_says_its_length() {
        let text = std::str::from_utf8(super::BUSY).expect("ASCII");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        assert!(
            format!("{head}\r\n").contains(&format!("content-length: {}\r\n", body.len())),
            "{text}"
        );
    }
}
