//! A small web server with a few kinds of site, for `scripts/demo` to watch.
//!
//! ```text
//! cargo run --example demo_server -- 127.0.0.1:8480
//! ```
//!
//! | path        | answer                                               |
//! | ----------- | ---------------------------------------------------- |
//! | `/`         | 200, "Welcome to the sitemon demo"                    |
//! | `/health`   | 200, "status: ok"                                    |
//! | `/slow`     | 200 after 1.5 s                                      |
//! | `/flaky`    | 200 or 503, alternating                              |
//! | `/down`     | 503, "maintenance"                                   |
//! | `/moved`    | 301 to `/health`                                     |
//! | `/hook`     | a webhook receiver: prints each alert notification's `text`, 200 |
//! | anything else | 404                                                |
//!
//! The query string is ignored, so `/?a` and `/?b` are two sites with one page.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8480".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("demo server on http://{}", listener.local_addr()?);
    let flaky = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(serve(stream, Arc::clone(&flaky)));
    }
}

async fn serve(mut stream: TcpStream, flaky: Arc<AtomicU64>) {
    let mut request = [0_u8; 8192];
    let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut request)).await
    else {
        return;
    };
    let head = String::from_utf8_lossy(&request[..n]).into_owned();
    let target = head.split_whitespace().nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/");
    if path == "/hook" {
        receive(&mut stream, head.into_bytes()).await;
        return;
    }
    let (status, extra_header, body) = match path {
        "/" => ("200 OK", "", "<h1>Welcome to the sitemon demo</h1>"),
        "/health" => ("200 OK", "", "status: ok"),
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            ("200 OK", "", "status: ok, eventually")
        }
        "/flaky" if flaky.fetch_add(1, Ordering::Relaxed) % 2 == 0 => ("200 OK", "", "status: ok"),
        "/flaky" | "/down" => ("503 Service Unavailable", "", "maintenance"),
        "/moved" => ("301 Moved Permanently", "Location: /health\r\n", "moved"),
        _ => ("404 Not Found", "", "not found"),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\n{extra_header}Content-Type: text/html\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A webhook from `sitemon alert`: reads the whole body, prints the notification's one-line
/// `text`, answers 200.
async fn receive(stream: &mut TcpStream, mut request: Vec<u8>) {
    let length = |request: &[u8]| {
        let text = String::from_utf8_lossy(request);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let length = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })?;
        (body.len() >= length).then(|| body[..length].to_owned())
    };
    let mut buf = [0_u8; 8192];
    let body = loop {
        if let Some(body) = length(&request) {
            break body;
        }
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => request.extend_from_slice(&buf[..n]),
            _ => return,
        }
    };
    let text = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["text"].as_str().map(str::to_owned))
        .unwrap_or(body);
    println!("webhook received: {text}");
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await;
    let _ = stream.shutdown().await;
}
