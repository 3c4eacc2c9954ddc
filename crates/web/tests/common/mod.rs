//! A seeded database and a running server for the web tests.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use sitemon_core::history;
use sitemon_testkit::TestDb;
use sitemon_web::WebConfig;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A URL whose credentials and query values must never be shown (masked).
pub const SECRET_URL: &str = "https://alice:s3cret@shop.example.invalid/health?token=abc123&x=1";
/// The down site's URL; its error messages quote it.
pub const DOWN_URL: &str = "http://bob:hunter2@127.0.0.1:9/down?key=k3y";
/// A site URL that tries to inject a script (stored directly: user data as it could come
/// from an older validation or another writer).
pub const INJECTED_URL: &str =
    "http://inject.invalid/\"><script>window.__sitemonInjected=1</script>";
/// A site name that tries too.
pub const INJECTED_NAME: &str = "\"><img src=x onerror=\"window.__sitemonInjected=2\">";

/// The seeded sites' ids.
#[derive(Debug, Clone, Copy)]
pub struct Seeded {
    /// Up all along, named "Shop", with [`SECRET_URL`].
    pub shop: i32,
    /// Down now (its last 3 checks), with [`DOWN_URL`], an open incident.
    pub down: i32,
    /// Up but slow now (degraded).
    pub slow: i32,
    /// [`INJECTED_URL`] named [`INJECTED_NAME`], up.
    pub injected: i32,
    /// Never checked.
    pub fresh: i32,
}

async fn site(pool: &PgPool, url: &str, name: Option<&str>) -> i32 {
    sqlx::query_scalar(
        "INSERT INTO websites (url, name, check_interval) VALUES ($1, $2, 60) RETURNING id",
    )
    .bind(url)
    .bind(name)
    .fetch_one(pool)
    .await
    .unwrap_or_else(|e| panic!("site {url}: {e}"))
}

/// Stores checks as the sync does (rows and rollups in one statement). `values`: a SELECT of
/// website_id, seconds ago, is_up, degraded, status_code, response_time_ms, error_kind,
/// error message.
async fn store(pool: &PgPool, values: &str) {
    let sql = format!(
        "WITH source AS (
             INSERT INTO website_status (kafka_topic, kafka_partition_id, kafka_offset_id,
                 website_id, timestamp_utc, request_info, check_id, is_up, degraded,
                 status_code, response_time_ms, error_kind, location)
             SELECT 't', 0, row_number() OVER () + coalesce((SELECT max(kafka_offset_id) FROM website_status), 0),
                    v.w, now() - make_interval(secs => v.ago),
                    jsonb_build_object(
                        'timings_ms', jsonb_build_object('dns', 1.5, 'connect', 2.5,
                            'tls', CASE WHEN v.up THEN 20.0 END,
                            'ttfb', CASE WHEN v.up THEN v.rt - 24 END,
                            'total', coalesce(v.rt, 3000.0)),
                        'error', CASE WHEN v.msg IS NOT NULL THEN
                            jsonb_build_object('kind', v.ek, 'message', v.msg) END,
                        'tls_cert_not_after', CASE WHEN v.up THEN
                            to_char(now() + interval '40 days', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') END),
                    gen_random_uuid(), v.up, v.degraded, v.code, v.rt, v.ek, 'here'
             FROM ({values}) AS v(w, ago, up, degraded, code, rt, ek, msg)
             RETURNING *),
         {}
         SELECT count(*) FROM source",
        history::rollup_ctes("source")
    );
    sqlx::query(&sql)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("storing checks: {e}"));
}

/// Five sites with 90 days of history (a check every 6 hours, one every 5 minutes over the
/// last 2 hours), the down one with a bad day 10 days ago and an open incident.
pub async fn seed(pool: &PgPool) -> Seeded {
    let shop = site(pool, SECRET_URL, Some("Shop")).await;
    let down = site(pool, DOWN_URL, None).await;
    let slow = site(pool, "https://slow.example.invalid/", Some("Slow API")).await;
    let injected = site(pool, INJECTED_URL, Some(INJECTED_NAME)).await;
    let fresh = site(pool, "https://fresh.example.invalid/", None).await;
    for id in [shop, down, slow, injected] {
        // 90 days, every 6 h: up, 40..140 ms; the down site fails every check of day 10.
        store(
            pool,
            &format!(
                "SELECT {id}, (i * 21600 + 7200)::float8,
                        NOT ({id} = {down} AND i BETWEEN 40 AND 43), false,
                        CASE WHEN {id} = {down} AND i BETWEEN 40 AND 43 THEN NULL ELSE 200 END::smallint,
                        CASE WHEN {id} = {down} AND i BETWEEN 40 AND 43 THEN NULL ELSE 40 + (i * 37) % 100 END::float8,
                        CASE WHEN {id} = {down} AND i BETWEEN 40 AND 43 THEN 'connect' END,
                        CASE WHEN {id} = {down} AND i BETWEEN 40 AND 43
                             THEN 'cannot connect to {DOWN_URL}' END
                 FROM generate_series(0, 359) AS i"
            ),
        )
        .await;
        // The last 2 hours, every 5 min; the newest 3 checks of the down site fail, the
        // slow site's newest is degraded.
        store(
            pool,
            &format!(
                "SELECT {id}, (i * 300 + 10)::float8,
                        NOT ({id} = {down} AND i < 3),
                        {id} = {slow} AND i = 0,
                        CASE WHEN {id} = {down} AND i < 3 THEN NULL ELSE 200 END::smallint,
                        CASE WHEN {id} = {down} AND i < 3 THEN NULL
                             WHEN {id} = {slow} AND i = 0 THEN 2500
                             ELSE 50 + i END::float8,
                        CASE WHEN {id} = {down} AND i < 3 THEN 'connect' END,
                        CASE WHEN {id} = {down} AND i < 3 THEN 'cannot connect to {DOWN_URL}' END
                 FROM generate_series(0, 23) AS i"
            ),
        )
        .await;
    }
    sqlx::query(
        "INSERT INTO alert_incidents (id, website_id, opened_at, first_error, locations, channels)
         VALUES (gen_random_uuid(), $1, now() - interval '12 minutes', $2, '{here}', '{}')",
    )
    .bind(down)
    .bind(format!("connect: cannot connect to {DOWN_URL}"))
    .execute(pool)
    .await
    .expect("an incident");
    Seeded {
        shop,
        down,
        slow,
        injected,
        fresh,
    }
}

/// A server of the test's own on 127.0.0.1:0.
pub struct Server {
    pub addr: SocketAddr,
    pub stop: CancellationToken,
    pub task: JoinHandle<sitemon_web::Result<()>>,
}

impl Server {
    pub async fn start(db: &TestDb, config: impl FnOnce(&mut WebConfig)) -> Self {
        let mut web = WebConfig::new("127.0.0.1:0".parse().expect("an address"));
        config(&mut web);
        let database = sitemon_core::DatabaseConfig::from_url(&db.url).expect("test URL");
        let pool = sitemon_web::connect(&database, &web)
            .await
            .expect("the server's pool connects");
        let stop = CancellationToken::new();
        let (addr, task) = sitemon_web::start(web, pool, stop.clone())
            .await
            .expect("the server starts");
        Self { addr, stop, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops the server, at most 10 s.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the server stops within 10 s")
            .expect("the server task does not panic")
            .expect("the server stops cleanly");
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.request("GET", path, &[], None).await
    }

    /// One request, at most 30 s.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Answer {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let mut request = hyper::Request::builder().method(method).uri(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
            .expect("a request");
        let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer within 30 s"))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = tokio::time::timeout(Duration::from_secs(30), response.into_body().collect())
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no body within 30 s"))
            .expect("a body")
            .to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

/// An answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}
