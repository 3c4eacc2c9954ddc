//! A real HTTP receiver on 127.0.0.1 that records every request and answers as the test
//! tells it (webhooks, Slack, PagerDuty stand-ins for the alert tests).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status the receiver answered.
    pub status: u16,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// The "status" that makes the receiver take a request and never answer it.
pub const HANG: u16 = 0;

/// How the receiver answers the next requests: the queue first (one answer each), then the
/// standing answer.
#[derive(Debug)]
struct Script {
    queue: VecDeque<(u16, Option<u64>)>,
    standing: u16,
}

/// The receiver.
#[derive(Debug, Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<Script>>,
    stop: CancellationToken,
}

impl Receiver {
    /// A receiver whose port is chosen but not listened on yet: connections are refused
    /// until [`Receiver::listen`].
    pub async fn refusing() -> Self {
        let probe = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = probe.local_addr().expect("addr");
        drop(probe);
        Self {
            addr,
            received: Arc::default(),
            script: Arc::new(Mutex::new(Script {
                queue: VecDeque::new(),
                standing: 200,
            })),
            stop: CancellationToken::new(),
        }
    }

    /// A receiver listening at once, answering 200.
    pub async fn ok() -> Self {
        let receiver = Self::refusing().await;
        receiver.listen().await;
        receiver
    }

    /// Starts listening on its port.
    pub async fn listen(&self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("the receiver's port is free again");
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = this.stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else { continue };
                let this = this.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let this = this.clone();
                        async move { Ok::<_, std::convert::Infallible>(this.answer(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    }

    /// Stops listening (connections in hand finish).
    pub fn close(&self) {
        self.stop.cancel();
    }

    /// From now on answer `status`.
    pub fn answer_with(&self, status: u16) {
        self.script.lock().expect("script").standing = status;
    }

    /// Answer the next request with `status` (and `Retry-After` seconds), once.
    pub fn next_answer(&self, status: u16, retry_after: Option<u64>) {
        self.script
            .lock()
            .expect("script")
            .queue
            .push_back((status, retry_after));
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        let headers = request
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .unwrap_or_default();
        let (status, retry_after) = {
            let mut script = self.script.lock().expect("script");
            script.queue.pop_front().unwrap_or((script.standing, None))
        };
        self.received.lock().expect("received").push(Received {
            path,
            headers,
            body,
            status,
            at: Instant::now(),
        });
        if status == HANG {
            // Recorded, never answered: a request in flight.
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let mut response = Response::builder().status(status);
        if let Some(seconds) = retry_after {
            response = response.header("retry-after", seconds.to_string());
        }
        response
            .body(Full::new(Bytes::from_static(b"{\"status\":\"noted\"}")))
            .expect("a response")
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("received").clone()
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Waits until `done` holds, polling every 50 ms, for at most `limit`; panics naming `what`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(
            Instant::now() < deadline,
            "gave up after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
