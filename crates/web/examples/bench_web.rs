//! The overview's cost against the bare queries it runs (see `scripts/bench-web` and
//! BENCHMARKS.md, "Dashboard").
//!
//! Against the database in `DATABASE_URL` (seeded by `scripts/bench-web`), RUNS times:
//! 1. the bare queries of `GET /`, as the handler runs them (core's `site_statuses` over
//!    24 h, 7 d and 30 d and the site names at once, then `daily_uptime` of the first
//!    page's sites), timed;
//! 2. `GET /` from the server running in this process, timed to the last byte;
//!
//! and the page's weight: the HTML as sent plain and gzipped, and the stylesheet, script
//! and icon it loads; then, for scale, the site page and a badge.
//!
//! Usage: cargo run --release -p sitemon-web --example bench_web (RUNS=5 by default)

use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use sitemon_core::DatabaseConfig;
use sitemon_core::report;
use sitemon_web::WebConfig;
use tokio_util::sync::CancellationToken;

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

async fn get(client: &Client, url: &str, gzip: bool) -> (u16, usize) {
    let mut request = hyper::Request::get(url);
    if gzip {
        request = request.header("accept-encoding", "gzip");
    }
    let request = request.body(Full::new(Bytes::new())).expect("a request");
    let response = client.request(request).await.expect("an answer");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    (status, body.len())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let database = DatabaseConfig::from_url(&url).expect("a database URL");
    let config = WebConfig {
        query_timeout: Duration::from_secs(120),
        ..WebConfig::new("127.0.0.1:0".parse().expect("an address"))
    };
    let pool = sitemon_web::connect(&database, &config)
        .await
        .expect("connects");
    let stop = CancellationToken::new();
    let (addr, server) = sitemon_web::start(config, pool.clone(), stop.clone())
        .await
        .expect("serves");
    let client: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let page = format!("http://{addr}/");
    // Warm both paths once (plans, caches).
    let (status, _) = get(&client, &page, false).await;
    assert_eq!(status, 200, "GET / answered {status}");

    let day = Duration::from_secs(86_400);
    let (mut bare, mut served) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let started = Instant::now();
        let (d1, _d7, _d30, names) = tokio::try_join!(
            report::site_statuses(&pool, day),
            report::site_statuses(&pool, 7 * day),
            report::site_statuses(&pool, 30 * day),
            sitemon_core::db::list_sites(&pool),
        )
        .expect("the bare queries");
        let mut ids: Vec<(bool, i32)> = d1.0.iter().map(|s| (s.up != Some(false), s.id)).collect();
        ids.sort_unstable();
        let first: Vec<i32> = ids.iter().take(100).map(|(_, id)| *id).collect();
        let days = sitemon_core::dashboard::daily_uptime(
            &pool,
            &first,
            90,
            time::OffsetDateTime::now_utc(),
        )
        .await
        .expect("the days");
        let q = started.elapsed();
        assert_eq!(days.len(), first.len());
        let sites = names.len();

        let started = Instant::now();
        let (status, _) = get(&client, &page, false).await;
        let h = started.elapsed();
        assert_eq!(status, 200);
        bare.push(ms(q));
        served.push(ms(h));
        println!(
            "run {run}: bare queries {:.0} ms, GET / {:.0} ms ({sites} sites, ratio {:.2})",
            ms(q),
            ms(h),
            ms(h) / ms(q)
        );
    }
    let (plain, gzipped) = (
        get(&client, &page, false).await.1,
        get(&client, &page, true).await.1,
    );
    let mut assets = 0;
    for path in [
        "assets/sitemon.css",
        "assets/sitemon.js",
        "assets/favicon.svg",
    ] {
        assets += get(&client, &format!("http://{addr}/{path}"), true).await.1;
    }
    let (b, s) = (median(bare.clone()), median(served.clone()));
    println!();
    println!(
        "median of {runs}: bare queries {b:.0} ms, GET / {s:.0} ms, ratio {:.2} (target < 2)",
        s / b
    );
    println!(
        "page weight: HTML {:.1} KB plain, {:.1} KB gzipped; with its stylesheet, script and icon (gzipped) {:.1} KB (target < 300 KB)",
        plain as f64 / 1024.0,
        gzipped as f64 / 1024.0,
        (gzipped + assets) as f64 / 1024.0
    );
    // For scale: the site page and a badge (each runs one `site_statuses` over every site).
    for path in ["sites/1", "sites/1?window=30d", "badge/1/uptime/30d.svg"] {
        let mut times = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            let (status, _) = get(&client, &format!("http://{addr}/{path}"), false).await;
            assert_eq!(status, 200, "GET /{path}");
            times.push(ms(started.elapsed()));
        }
        println!("GET /{path}: median of 3 {:.0} ms", median(times));
    }
    stop.cancel();
    let _ = server.await;
}
