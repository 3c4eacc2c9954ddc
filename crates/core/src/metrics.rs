//! Metrics in the Prometheus text format, and a small HTTP server for them.
//!
//! The checker and the sync keep their counters in atomics; each implements [`Collect`] to
//! write them out when Prometheus scrapes `/metrics`. Nothing here allocates on the hot path.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// Something that writes metrics when scraped.
pub trait Collect: Send + Sync {
    /// Writes the current values.
    fn collect(&self, out: &mut Exposition);
}

/// The collectors of one process.
#[derive(Default, Clone)]
pub struct Registry {
    collectors: Arc<RwLock<Vec<Arc<dyn Collect>>>>,
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

    /// Adds a collector.
    pub fn register(&self, collector: Arc<dyn Collect>) {
        self.collectors
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(collector);
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Exposition::default();
        for collector in self
            .collectors
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            collector.collect(&mut out);
        }
        out.text
    }
}

/// The text being written for one scrape.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
    /// The last family whose `# HELP` was written, so labelled series share one header.
    last_family: String,
}

/// The kinds of metric families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

impl Exposition {
    fn header(&mut self, name: &str, help: &str, kind: Kind) {
        if self.last_family == name {
            return;
        }
        self.last_family = name.to_owned();
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn series(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{key}=\"");
                for c in val.chars() {
                    match c {
                        '\\' => self.text.push_str("\\\\"),
                        '"' => self.text.push_str("\\\""),
                        '\n' => self.text.push_str("\\n"),
                        c => self.text.push(c),
                    }
                }
                self.text.push('"');
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// One series of a counter or gauge family. Write the series of a family one after
    /// another.
    pub fn sample(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        self.header(name, help, kind);
        self.series(name, labels, value);
    }

    /// A histogram series.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        histogram: &Histogram,
    ) {
        self.header(name, help, Kind::Histogram);
        let mut cumulative = 0;
        let bucket = format!("{name}_bucket");
        for (bound, count) in histogram.bounds.iter().zip(&histogram.counts) {
            cumulative += count.load(Relaxed);
            let le = bound.to_string();
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.series(&bucket, &with_le, cumulative as f64);
        }
        let total = histogram.count.load(Relaxed);
        let mut with_le = labels.to_vec();
        with_le.push(("le", "+Inf"));
        self.series(&bucket, &with_le, total as f64);
        let sum = f64::from_bits(histogram.sum_bits.load(Relaxed));
        self.series(&format!("{name}_sum"), labels, sum);
        self.series(&format!("{name}_count"), labels, total as f64);
    }
}

/// A histogram with fixed buckets, safe to observe from every task at once.
#[derive(Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_bits: AtomicU64,
}

impl Histogram {
    /// Buckets with these upper bounds (ascending).
    pub fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.to_vec(),
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Buckets for request durations in seconds, 5 ms to 30 s.
    pub fn for_durations() -> Self {
        Self::new(&[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ])
    }

    /// Records one value.
    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|bound| value <= *bound) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        let _ = self.sum_bits.fetch_update(Relaxed, Relaxed, |bits| {
            Some((f64::from_bits(bits) + value).to_bits())
        });
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
        (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            registry.render(),
        )
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

    struct Fixed(Histogram);

    impl Collect for Fixed {
        fn collect(&self, out: &mut Exposition) {
            out.sample(
                "t_total",
                "A counter.",
                Kind::Counter,
                &[("kind", "a\"b")],
                3.0,
            );
            out.sample(
                "t_total",
                "A counter.",
                Kind::Counter,
                &[("kind", "c")],
                4.0,
            );
            out.histogram("t_seconds", "A histogram.", &[], &self.0);
        }
    }

    #[test]
    fn renders_the_text_format() {
        let histogram = Histogram::new(&[0.1, 1.0]);
        histogram.observe(0.05);
        histogram.observe(0.5);
        histogram.observe(5.0);
        let registry = Registry::new();
        registry.register(Arc::new(Fixed(histogram)));
        assert_eq!(
            registry.render(),
            "# HELP t_total A counter.\n# TYPE t_total counter\n\
             t_total{kind=\"a\\\"b\"} 3\nt_total{kind=\"c\"} 4\n\
             # HELP t_seconds A histogram.\n# TYPE t_seconds histogram\n\
             t_seconds_bucket{le=\"0.1\"} 1\nt_seconds_bucket{le=\"1\"} 2\n\
             t_seconds_bucket{le=\"+Inf\"} 3\nt_seconds_sum 5.55\nt_seconds_count 3\n"
        );
    }
}
