//! Metrics for Prometheus, and a small HTTP server for them.
//!
//! The metric families are `prometheus-client`'s (the Prometheus project's own crate): the
//! checker and the sync create their counters, gauges and histograms, register them in a
//! [`Registry`], and update them without locks. [`serve`] answers `GET /metrics` with the
//! OpenMetrics text of everything registered.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// The `prometheus-client` crate whose metrics the [`Registry`] holds, re-exported so that an
/// embedding service registers its own families next to sitemon's with the same version.
pub use prometheus_client;

/// The `Content-Type` of [`Registry::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metric families of one process, shared by whoever registers and whoever serves them;
/// cheap to clone.
///
/// The checker and the sync register theirs when they start; run both in one process with
/// the same `Registry` and `/metrics` shows both.
#[derive(Default, Clone)]
pub struct Registry {
    inner: Arc<Mutex<prometheus_client::registry::Registry>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers metric families: `register` gets the registry, locked while it runs.
    ///
    /// `prometheus-client` writes a counter's `_total` and the help's full stop itself:
    /// register `myservice_requests` with help `Requests served`.
    ///
    /// ```
    /// use sitemon_core::metrics::Registry;
    /// use sitemon_core::metrics::prometheus_client::metrics::counter::Counter;
    ///
    /// let registry = Registry::new();
    /// let requests = Counter::<u64>::default();
    /// registry.register(|r| r.register("myservice_requests", "Requests served", requests.clone()));
    /// requests.inc();
    /// assert!(registry.render().contains("myservice_requests_total 1\n"));
    /// ```
    pub fn register(&self, register: impl FnOnce(&mut prometheus_client::registry::Registry)) {
        register(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Everything registered, in the OpenMetrics text format (ending with `# EOF`).
    pub fn render(&self) -> String {
        let mut text = String::new();
        let registry = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        // Writing to a String cannot fail, nor can the encoders of the metric types we use.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

/// Serves `GET /metrics` on `addr` until `shutdown`; returns the address bound (useful with
/// port 0) once listening, and runs the server in a task of its own.
///
/// # Errors
/// [`Error::Config`] when the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config {
            setting: "--metrics-addr",
            reason: format!("cannot listen on {addr}: {e}"),
        })?;
    let bound = listener.local_addr().unwrap_or(addr);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!("metrics: accept failed: {e}");
                        continue;
                    }
                },
            };
            let registry = registry.clone();
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let registry = registry.clone();
                    async move { Ok::<_, std::convert::Infallible>(respond(&request, &registry)) }
                });
            tokio::spawn(async move {
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                // A scrape is small: a slow or stuck client is cut off.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(30), connection).await;
            });
        }
    });
    Ok(bound)
}

fn respond(request: &Request<hyper::body::Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if request.uri().path() == "/metrics" {
        (StatusCode::OK, CONTENT_TYPE, registry.render())
    } else {
        (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "try /metrics\n".to_owned(),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::histogram::Histogram;

    #[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct KindLabel {
        kind: String,
    }

    fn registry() -> Registry {
        let counters = Family::<KindLabel, Counter>::default();
        counters
            .get_or_create(&KindLabel {
                kind: "a\"b".into(),
            })
            .inc_by(3);
        counters
            .get_or_create(&KindLabel { kind: "c".into() })
            .inc_by(4);
        let histogram = Histogram::new([0.1, 1.0]);
        for value in [0.05, 0.5, 5.0] {
            histogram.observe(value);
        }
        let registry = Registry::new();
        registry.register(|r| {
            r.register("t", "A counter", counters);
            r.register("t_seconds", "A histogram", histogram);
        });
        registry
    }

    #[test]
    fn renders_openmetrics_text() {
        let text = registry().render();
        for line in [
            "# TYPE t counter",
            "t_total{kind=\"a\\\"b\"} 3",
            "t_total{kind=\"c\"} 4",
            "# TYPE t_seconds histogram",
            "t_seconds_bucket{le=\"0.1\"} 1",
            "t_seconds_bucket{le=\"+Inf\"} 3",
            "t_seconds_sum 5.55",
            "t_seconds_count 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[tokio::test]
    async fn serves_metrics_with_the_openmetrics_type() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let stop = CancellationToken::new();
        let addr = serve(([127, 0, 0, 1], 0).into(), registry(), stop.clone())
            .await
            .expect("listens");
        let get = |path: &'static str| async move {
            let mut stream = tokio::net::TcpStream::connect(addr)
                .await
                .expect("connects");
            let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.expect("sends");
            let mut response = String::new();
            stream.read_to_string(&mut response).await.expect("reads");
            response
        };
        let response = get("/metrics").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(
            response
                .to_lowercase()
                .contains(&format!("content-type: {CONTENT_TYPE}")),
            "{response}"
        );
        assert!(response.ends_with("\n# EOF\n"), "{response}");
        assert!(response.contains("\nt_seconds_count 3\n"), "{response}");
        assert!(get("/other").await.starts_with("HTTP/1.1 404"));
        stop.cancel();
    }
}
