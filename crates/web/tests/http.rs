//! Every endpoint of `sitemon serve` over HTTP against a seeded database of the test's own:
//! status codes, content types, JSON shapes, escaping, masking, the token, a slow database.

mod common;

use std::time::Duration;

use common::{DOWN_URL, INJECTED_NAME, INJECTED_URL, SECRET_URL, Server, seed};
use sitemon_core::Secret;
use sitemon_testkit::TestDb;

/// Equal, to within JSON's decimal text parsed back (an ulp or so).
fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * b.abs().max(1.0),
        (a, b) => a == b,
    }
}

/// No secret of a URL in `body`.
fn assert_masked(what: &str, body: &str) {
    for secret in ["s3cret", "alice", "abc123", "hunter2", "k3y"] {
        assert!(!body.contains(secret), "{what} shows {secret:?}:\n{body}");
    }
}

/// Neither a secret of a URL nor a raw injected tag in the HTML `body`.
fn assert_masked_and_escaped(what: &str, body: &str) {
    assert_masked(what, body);
    assert!(
        !body.contains("<script>window.__sitemonInjected"),
        "{what} has the injected script raw:\n{body}"
    );
    assert!(
        !body.contains("<img src=x"),
        "{what} has the injected tag raw:\n{body}"
    );
}

#[tokio::test]
async fn the_overview_lists_the_down_site_first_masked_and_escaped() {
    let db = TestDb::migrated().await;
    let sites = seed(&db.pool).await;
    let server = Server::start(&db, |_| {}).await;
    let page = server.get("/").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    assert!(
        page.header("content-security-policy")
            .contains("script-src 'self'")
    );
    assert_masked_and_escaped("the overview", &page.body);
    // The injected name shows as text.
    assert!(
        page.body
            .contains("&quot;&gt;&lt;img src=x onerror=&quot;window.__sitemonInjected=2&quot;&gt;"),
        "{}",
        page.body
    );
    // Masked URLs, whole otherwise.
    assert!(
        page.body
            .contains("https://***@shop.example.invalid/health?token=***&amp;x=***")
    );
    // Rows in order: down, degraded, up (by id), never checked.
    let row = |id: i32| {
        page.body
            .find(&format!("href=\"/sites/{id}\""))
            .unwrap_or_else(|| panic!("site {id} listed"))
    };
    assert!(row(sites.down) < row(sites.slow), "down first");
    assert!(row(sites.slow) < row(sites.shop), "degraded before up");
    assert!(row(sites.shop) < row(sites.injected));
    assert!(row(sites.injected) < row(sites.fresh), "never checked last");
    let down_row = &page.body[row(sites.down) - 200..row(sites.down)];
    assert!(down_row.contains("data-state=\"down\""), "{down_row}");
    assert!(
        down_row.contains(">Down</span>"),
        "marked down in text: {down_row}"
    );
    // 90 bars a site, each with its figure.
    assert_eq!(page.body.matches("<rect").count(), 5 * 90);
    assert!(
        page.body.contains("100% up, 4 checks</title>"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("<rect class=\"bad\""),
        "the down site's bad day"
    );
    assert!(page.body.contains("1 down"));
    // The filter, server-side (the script filters as one types).
    let filtered = server.get("/?q=shop").await;
    assert_eq!(filtered.status, 200);
    assert!(
        filtered
            .body
            .contains(&format!("href=\"/sites/{}\"", sites.shop))
    );
    assert!(
        !filtered
            .body
            .contains(&format!("href=\"/sites/{}\"", sites.down))
    );
    // Nobody searches the masked secrets.
    let probing = server.get("/?q=s3cret").await;
    assert!(
        !probing
            .body
            .contains(&format!("href=\"/sites/{}\"", sites.shop))
    );
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn the_site_page_has_the_chart_the_bars_the_checks_and_the_incident() {
    let db = TestDb::migrated().await;
    let sites = seed(&db.pool).await;
    let server = Server::start(&db, |_| {}).await;
    for window in ["24h", "7d", "30d"] {
        let page = server
            .get(&format!("/sites/{}?window={window}", sites.down))
            .await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
        assert_masked_and_escaped("the site page", &page.body);
        assert!(page.body.contains("<svg class=\"chart\""), "{}", page.body);
        assert!(page.body.contains("class=\"p95\" d=\"M"), "a p95 line");
        assert_eq!(page.body.matches("<svg class=\"bars\"").count(), 1);
        assert!(page.body.contains("Last 50 checks"));
        assert!(page.body.contains(">connect</span>"), "the error kind");
        assert!(
            page.body
                .contains("cannot connect to http://***@127.0.0.1:9/down?key=***")
        );
        assert!(
            page.body.contains("<strong class=\"bad\">open</strong>"),
            "the incident"
        );
        assert!(
            page.body
                .contains(&format!("aria-current=\"page\">{window}<"))
        );
    }
    let injected = server.get(&format!("/sites/{}", sites.injected)).await;
    assert_eq!(injected.status, 200);
    assert_masked_and_escaped("the injected site's page", &injected.body);
    // Timing phases of an up site.
    let shop = server.get(&format!("/sites/{}", sites.shop)).await;
    assert!(shop.body.contains("<rect class=\"dns\""), "{}", shop.body);
    assert!(shop.body.contains("<rect class=\"ttfb\""));
    assert!(shop.body.contains("<title>Shop · sitemon</title>"));
    // Unknown and malformed.
    for path in ["/sites/999999", "/sites/abc", "/sites/0"] {
        let missing = server.get(path).await;
        assert_eq!(missing.status, 404, "{path}");
        assert_eq!(missing.header("content-type"), "text/html; charset=utf-8");
    }
    let bad = server
        .get(&format!("/sites/{}?window=2y", sites.shop))
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(server.get("/nowhere").await.status, 404);
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn the_api_answers_core_s_numbers_in_json() {
    let db = TestDb::migrated().await;
    let sites = seed(&db.pool).await;
    let server = Server::start(&db, |_| {}).await;

    let answer = server.get("/api/v1/sites?window=7d").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("content-type"), "application/json");
    assert_masked("/api/v1/sites", &answer.body);
    let json = answer.json();
    assert_eq!(json["window_secs"], 7 * 86_400);
    let listed = json["sites"].as_array().expect("sites");
    assert_eq!(listed.len(), 5);
    // The numbers are core's own.
    let (core, _) = sitemon_core::report::site_statuses(&db.pool, Duration::from_secs(7 * 86_400))
        .await
        .expect("core's status");
    for site in listed {
        let id = site["id"].as_i64().expect("an id") as i32;
        let expected = core.iter().find(|s| s.id == id).expect("in core's answer");
        assert_eq!(site["checks"], expected.checks, "{site}");
        assert!(
            close(site["uptime_pct"].as_f64(), expected.uptime_pct),
            "{site}"
        );
        assert!(close(site["p95_ms"].as_f64(), expected.p95_ms), "{site}");
    }
    let state = |id: i32| {
        listed
            .iter()
            .find(|s| s["id"] == id)
            .map(|s| s["state"].clone())
            .expect("listed")
    };
    assert_eq!(state(sites.down), "down");
    assert_eq!(state(sites.slow), "degraded");
    assert_eq!(state(sites.shop), "up");
    assert_eq!(state(sites.fresh), "unknown");
    let shop = listed.iter().find(|s| s["id"] == sites.shop).expect("shop");
    assert_eq!(shop["name"], "Shop");
    assert_eq!(
        shop["url"],
        "https://***@shop.example.invalid/health?token=***&x=***"
    );
    for key in [
        "last_checked_at",
        "up",
        "degraded",
        "last_status_code",
        "last_error_kind",
        "uptime_pct",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "checks",
        "tls_cert_not_after",
    ] {
        assert!(shop.get(key).is_some(), "{key} in {shop}");
    }

    let one = server.get(&format!("/api/v1/sites/{}", sites.down)).await;
    assert_eq!(one.status, 200, "{}", one.body);
    let one = one.json();
    assert_eq!(one["state"], "down");
    assert_eq!(one["last_error_kind"], "connect");
    let days = one["days"].as_array().expect("days");
    assert_eq!(days.len(), 90);
    assert!(
        days.iter()
            .any(|d| d["uptime_pct"].as_f64().is_some_and(|u| u < 99.0)),
        "the bad day"
    );
    assert!(
        days[89]["day"].as_str().is_some_and(|d| d.len() == 10),
        "{}",
        days[89]
    );

    let history = server
        .get(&format!(
            "/api/v1/sites/{}/history?since=24h&every=1h",
            sites.shop
        ))
        .await;
    assert_eq!(history.status, 200, "{}", history.body);
    let history = history.json();
    let buckets = history["buckets"].as_array().expect("buckets");
    let core = sitemon_core::report::site_history(
        &db.pool,
        sites.shop,
        Duration::from_secs(86_400),
        Duration::from_secs(3600),
    )
    .await
    .expect("core's history");
    assert_eq!(buckets.len(), core.len());
    // The same buckets as `sitemon history` (floats to within an ulp of JSON's text).
    for (got, want) in buckets.iter().zip(&core) {
        let want_json = serde_json::to_value(want).expect("JSON");
        assert_eq!(got["bucket_start"], want_json["bucket_start"]);
        assert_eq!(got["checks"], want.checks);
        for (key, value) in [
            ("uptime_pct", want.uptime_pct),
            ("p50_ms", want.p50_ms),
            ("p95_ms", want.p95_ms),
            ("p99_ms", want.p99_ms),
        ] {
            assert!(
                close(got[key].as_f64(), value),
                "{key}: {got} against {want:?}"
            );
        }
    }

    let checks = server
        .get(&format!("/api/v1/sites/{}/checks", sites.down))
        .await;
    assert_eq!(checks.status, 200, "{}", checks.body);
    assert_masked("/checks", &checks.body);
    let checks = checks.json();
    let checks = checks["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 50);
    assert_eq!(checks[0]["up"], false);
    assert_eq!(checks[0]["timings_ms"]["dns"], 1.5);
    assert_eq!(
        checks[0]["error_message"],
        "cannot connect to http://***@127.0.0.1:9/down?key=***"
    );

    let incidents = server.get("/api/v1/incidents?open=true").await;
    assert_eq!(incidents.status, 200, "{}", incidents.body);
    assert_masked("/incidents", &incidents.body);
    let incidents = incidents.json();
    let list = incidents["incidents"].as_array().expect("incidents");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["website_id"], sites.down);
    assert_eq!(list[0]["url"], "http://***@127.0.0.1:9/down?key=***");
    let none = server
        .get(&format!("/api/v1/incidents?site={}", sites.shop))
        .await;
    assert_eq!(none.json()["incidents"], serde_json::json!([]));

    for (path, status) in [
        ("/api/v1/sites/999999".to_owned(), 404),
        ("/api/v1/sites/x".to_owned(), 404),
        ("/api/v1/sites/999999/history".to_owned(), 404),
        ("/api/v1/sites/999999/checks".to_owned(), 404),
        ("/api/v1/sites?window=soon".to_owned(), 400),
        (
            format!("/api/v1/sites/{}/history?since=400d&every=1m", sites.shop),
            400,
        ),
        (format!("/api/v1/sites/{}/checks?limit=0", sites.shop), 400),
        ("/api/v1/nothing".to_owned(), 404),
    ] {
        let answer = server.get(&path).await;
        assert_eq!(answer.status, status, "{path}: {}", answer.body);
        assert_eq!(answer.header("content-type"), "application/json", "{path}");
        assert!(answer.json()["error"].is_string(), "{path}");
    }
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn badges_are_svg_and_an_unknown_site_is_a_grey_404() {
    let db = TestDb::migrated().await;
    let sites = seed(&db.pool).await;
    let server = Server::start(&db, |_| {}).await;
    let badge = |path: String| {
        let server = &server;
        async move {
            let answer = server.get(&path).await;
            assert_eq!(
                answer.header("content-type"),
                "image/svg+xml; charset=utf-8",
                "{path}"
            );
            assert!(
                answer
                    .body
                    .starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
                "{path}"
            );
            answer
        }
    };
    let down = badge(format!("/badge/{}/status.svg", sites.down)).await;
    assert_eq!(down.status, 200);
    assert_eq!(down.header("cache-control"), "public, max-age=60");
    assert!(
        down.body.contains("<title>status: down</title>"),
        "{}",
        down.body
    );
    assert!(down.body.contains("#e05d44"));
    let up = badge(format!("/badge/{}/status.svg", sites.shop)).await;
    assert!(up.body.contains("<title>status: up</title>"));
    for window in ["24h", "7d", "30d"] {
        let uptime = badge(format!("/badge/{}/uptime/{window}.svg", sites.shop)).await;
        assert_eq!(uptime.status, 200);
        assert!(
            uptime
                .body
                .contains(&format!("<title>uptime {window}: 100%</title>")),
            "{}",
            uptime.body
        );
        let response = badge(format!("/badge/{}/response/{window}.svg", sites.shop)).await;
        assert_eq!(response.status, 200);
        assert!(
            response.body.contains(&format!("<title>p95 {window}: ")),
            "{}",
            response.body
        );
        assert!(response.body.contains(" ms</title>"));
    }
    let degraded = badge(format!("/badge/{}/uptime/24h.svg", sites.down)).await;
    assert!(degraded.body.contains("#e05d44") || degraded.body.contains("#dfb317"));
    for path in [
        "/badge/999999/status.svg".to_owned(),
        "/badge/abc/status.svg".to_owned(),
        "/badge/999999/uptime/24h.svg".to_owned(),
        format!("/badge/{}/uptime/1y.svg", sites.shop),
        format!("/badge/{}/response/2h.svg", sites.shop),
    ] {
        let unknown = badge(path.clone()).await;
        assert_eq!(unknown.status, 404, "{path}");
        assert!(
            unknown.body.contains(": unknown</title>"),
            "{path}: {}",
            unknown.body
        );
        assert!(unknown.body.contains("#9f9f9f"), "grey");
    }
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn with_a_token_everything_but_healthz_needs_it() {
    let db = TestDb::migrated().await;
    let sites = seed(&db.pool).await;
    let server = Server::start(&db, |c| c.token = Some(Secret::new("let-me-in"))).await;
    let page = server.get("/").await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(page.header("location"), "/login");
    assert_eq!(
        server.get(&format!("/sites/{}", sites.shop)).await.status,
        303
    );
    for path in ["/api/v1/sites", "/api/v1/incidents", "/metrics"] {
        let api = server.get(path).await;
        assert_eq!(api.status, 401, "{path}");
        assert!(
            api.header("www-authenticate").starts_with("Bearer"),
            "{path}"
        );
    }
    let badge = server
        .get(&format!("/badge/{}/status.svg", sites.shop))
        .await;
    assert_eq!(badge.status, 401);
    assert!(!badge.body.contains("status: up"));
    assert_eq!(server.get("/healthz").await.status, 200);
    assert_eq!(server.get("/assets/sitemon.css").await.status, 200);
    let login = server.get("/login").await;
    assert_eq!(login.status, 200);
    assert!(login.body.contains("type=\"password\" name=\"token\""));

    // The bearer header.
    let bearer = [("authorization", "Bearer let-me-in")];
    let api = server.request("GET", "/api/v1/sites", &bearer, None).await;
    assert_eq!(api.status, 200);
    let wrong = server
        .request(
            "GET",
            "/api/v1/sites",
            &[("authorization", "Bearer let-me-i")],
            None,
        )
        .await;
    assert_eq!(wrong.status, 401);

    // The login form and its cookie.
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let refused = server
        .request("POST", "/login", &form, Some("token=nope"))
        .await;
    assert_eq!(refused.status, 401);
    assert!(refused.headers.get("set-cookie").is_none());
    let accepted = server
        .request("POST", "/login", &form, Some("token=let-me-in"))
        .await;
    assert_eq!(accepted.status, 303, "{}", accepted.body);
    let cookie = accepted.header("set-cookie").to_owned();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(
        !cookie.contains("let-me-in"),
        "the cookie is not the token: {cookie}"
    );
    let pair = cookie.split(';').next().expect("name=value").to_owned();
    let with_cookie = [("cookie", pair.as_str())];
    let page = server.request("GET", "/", &with_cookie, None).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("action=\"/logout\""));
    let metrics = server.request("GET", "/metrics", &with_cookie, None).await;
    assert_eq!(metrics.status, 200);
    let forged = server
        .request("GET", "/", &[("cookie", "sitemon_session=let-me-in")], None)
        .await;
    assert_eq!(forged.status, 303);
    server.stop().await;

    // --public-badges: badges open, the rest still closed.
    let server = Server::start(&db, |c| {
        c.token = Some(Secret::new("let-me-in"));
        c.public_badges = true;
    })
    .await;
    let badge = server
        .get(&format!("/badge/{}/status.svg", sites.shop))
        .await;
    assert_eq!(badge.status, 200);
    assert!(badge.body.contains("status: up"));
    assert_eq!(server.get("/api/v1/sites").await.status, 401);
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn show_full_urls_shows_them_escaped() {
    let db = TestDb::migrated().await;
    seed(&db.pool).await;
    let server = Server::start(&db, |c| c.show_full_urls = true).await;
    let page = server.get("/").await;
    assert!(
        page.body
            .contains("https://alice:s3cret@shop.example.invalid/health?token=abc123&amp;x=1")
    );
    assert!(
        page.body.contains("http://inject.invalid/&quot;&gt;&lt;script&gt;window.__sitemonInjected=1&lt;/script&gt;"),
        "{}",
        page.body
    );
    assert!(!page.body.contains(INJECTED_URL));
    assert!(!page.body.contains(INJECTED_NAME));
    let api = server.get("/api/v1/sites").await.json();
    let urls: Vec<&str> = api["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .filter_map(|s| s["url"].as_str())
        .collect();
    assert!(urls.contains(&SECRET_URL) && urls.contains(&DOWN_URL) && urls.contains(&INJECTED_URL));
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_network_address_without_a_token_is_refused() {
    let db = TestDb::migrated().await;
    let mut config = sitemon_web::WebConfig::new("0.0.0.0:0".parse().expect("addr"));
    let database = sitemon_core::DatabaseConfig::from_url(&db.url).expect("URL");
    let pool = sitemon_web::connect(&database, &config)
        .await
        .expect("pool");
    let stop = tokio_util::sync::CancellationToken::new();
    let refused = sitemon_web::start(config.clone(), pool.clone(), stop.clone())
        .await
        .expect_err("refused");
    assert!(refused.to_string().contains("--public"), "{refused}");
    config.public = true;
    let (addr, task) = sitemon_web::start(config, pool, stop.clone())
        .await
        .expect("public serves");
    assert!(addr.ip().is_unspecified());
    stop.cancel();
    task.await.expect("no panic").expect("stops cleanly");
    db.drop_database().await;
}

#[tokio::test]
async fn a_slow_database_gives_a_503_with_a_message() {
    let db = TestDb::migrated().await;
    let sites = seed(&db.pool).await;
    let server = Server::start(&db, |c| c.query_timeout = Duration::from_millis(500)).await;
    // A transaction holds every table the pages read.
    let mut blocker = db.pool.begin().await.expect("a transaction");
    sqlx::query("LOCK TABLE websites, website_status_daily IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .expect("locks");
    for path in [
        "/api/v1/sites".to_owned(),
        format!("/api/v1/sites/{}/checks", sites.shop),
    ] {
        let api = server.get(&path).await;
        assert_eq!(api.status, 503, "{path}: {}", api.body);
        assert_eq!(api.header("retry-after"), "10");
        let message = api.json()["error"].as_str().expect("a message").to_owned();
        assert!(message.starts_with("the database is slow"), "{message}");
    }
    let page = server.get("/").await;
    assert_eq!(page.status, 503);
    assert!(page.body.contains("the database is slow"), "{}", page.body);
    let badge = server
        .get(&format!("/badge/{}/status.svg", sites.shop))
        .await;
    assert_eq!(badge.status, 503);
    blocker.rollback().await.expect("rollback");
    assert_eq!(server.get("/api/v1/sites").await.status, 200);
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn healthz_metrics_and_assets() {
    let db = TestDb::migrated().await;
    seed(&db.pool).await;
    let server = Server::start(&db, |_| {}).await;
    let health = server.get("/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    assert_eq!(server.get("/").await.status, 200);
    let metrics = server.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("content-type"),
        sitemon_core::metrics::CONTENT_TYPE
    );
    assert!(
        metrics
            .body
            .contains("sitemon_web_requests_total{route=\"/\",status=\"200\"} 1"),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("sitemon_web_request_seconds_count{route=\"/healthz\"} 1")
    );
    assert!(metrics.body.ends_with("# EOF\n"));
    let js = server.get("/assets/sitemon.js").await;
    assert_eq!(js.header("content-type"), "text/javascript; charset=utf-8");
    assert!(js.body.contains("DOMParser"));
    let css = server.get("/assets/sitemon.css").await;
    assert_eq!(css.header("content-type"), "text/css; charset=utf-8");
    // Compressed when asked for.
    let gzip = server
        .request("GET", "/", &[("accept-encoding", "gzip")], None)
        .await;
    assert_eq!(gzip.header("content-encoding"), "gzip");
    server.stop().await;
    db.drop_database().await;
}
