//! `sitemon status` over history written straight into the real PostgreSQL.

mod support;

use serde_json::{Value, json};
use sitemon_testkit::TestDb;
use support::{run, sitemon_with_database};

/// One stored check.
#[derive(Clone, Copy)]
struct Check<'a> {
    site: i32,
    offset: i64,
    age_s: i64,
    up: bool,
    code: Option<i16>,
    ms: Option<f64>,
    error: Option<&'a str>,
    cert: Option<&'a str>,
}

impl<'a> Check<'a> {
    /// A check that got an answer with `code` after `ms`: up for a 2xx.
    fn answered(site: i32, offset: i64, age_s: i64, code: i16, ms: f64) -> Self {
        Self {
            site,
            offset,
            age_s,
            up: (200..300).contains(&code),
            code: Some(code),
            ms: Some(ms),
            error: None,
            cert: None,
        }
    }

    /// A check that failed with the error kind `error`.
    fn failed(site: i32, offset: i64, age_s: i64, error: &'a str) -> Self {
        Self {
            site,
            offset,
            age_s,
            up: false,
            code: None,
            ms: None,
            error: Some(error),
            cert: None,
        }
    }

    /// The same check, over TLS with a certificate that expires at `cert`.
    fn with_cert(self, cert: &'a str) -> Self {
        Self {
            cert: Some(cert),
            ..self
        }
    }
}

async fn record(db: &TestDb, check: Check<'_>) {
    let event = json!({"tls_cert_not_after": check.cert});
    // Stored as the sync stores it: the row and its rollups in one statement.
    sqlx::query(&format!(
        "WITH source AS (
             INSERT INTO website_status (kafka_topic, kafka_partition_id, kafka_offset_id,
                 website_id, timestamp_utc, request_info, check_id, is_up, status_code,
                 response_time_ms, error_kind, location)
             VALUES ('t', 0, $1, $2, now() - make_interval(secs => $3), $4, gen_random_uuid(),
                     $5, $6, $7, $8, 'default')
             RETURNING *),
         {}
         SELECT 1",
        sitemon_core::history::rollup_ctes("source")
    ))
    .bind(check.offset)
    .bind(check.site)
    .bind(check.age_s as f64)
    .bind(event)
    .bind(check.up)
    .bind(check.code)
    .bind(check.ms)
    .bind(check.error)
    .execute(&db.pool)
    .await
    .expect("inserts a check");
}

async fn add_site(db: &TestDb, url: &str) -> i32 {
    sqlx::query_scalar("INSERT INTO websites (url, check_interval) VALUES ($1, 10) RETURNING id")
        .bind(url)
        .fetch_one(&db.pool)
        .await
        .expect("inserts a site")
}

#[tokio::test]
async fn reports_state_uptime_and_percentiles() {
    let db = TestDb::migrated().await;
    let healthy = add_site(&db, "https://healthy.invalid/").await;
    let flaky = add_site(&db, "http://flaky.invalid/").await;
    let never = add_site(&db, "http://never.invalid/").await;

    // healthy: 100 checks at 1..=100 ms over the last 100 minutes, then one two days ago.
    for i in 1..=100 {
        let check = Check::answered(healthy, i, (101 - i) * 60, 200, i as f64);
        record(&db, check.with_cert("2027-03-01T00:00:00Z")).await;
    }
    record(&db, Check::failed(healthy, 1_000, 2 * 86_400, "dns")).await;
    // flaky: up, down with a 503, and last a connect error.
    record(&db, Check::answered(flaky, 2_000, 300, 200, 40.0)).await;
    record(&db, Check::answered(flaky, 2_001, 200, 503, 20.0)).await;
    record(&db, Check::failed(flaky, 2_002, 100, "connect")).await;

    let output = run(sitemon_with_database(&db.url).args(["status", "--json"]));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(rows.len(), 3);
    let fields: Vec<&str> = {
        let mut keys: Vec<&str> = rows[0]
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        keys
    };
    assert_eq!(
        fields,
        [
            "check_interval",
            "checks",
            "degraded",
            "degraded_checks",
            "id",
            "last_checked_at",
            "last_error_kind",
            "last_status_code",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "sources",
            "tls_cert_not_after",
            "tls_verify",
            "up",
            "uptime_pct",
            "url"
        ]
    );

    let h = &rows[0];
    assert_eq!(h["id"], healthy);
    assert_eq!(
        h["checks"], 100,
        "the check two days ago is outside the 24h window"
    );
    assert_eq!(h["uptime_pct"], 100.0);
    assert_eq!(h["up"], true);
    assert_eq!(h["last_status_code"], 200);
    assert_eq!(h["last_error_kind"], Value::Null);
    // Percentiles from the latency sketches: the check of rank floor(q * (n - 1)), within
    // 2 %: 50, 95 and 99 ms of 1..=100.
    let within_2pct = |value: &Value, exact: f64| {
        let value = value.as_f64().expect("a percentile");
        assert!(
            (value - exact).abs() <= 0.02 * exact,
            "{value} is not within 2 % of {exact}"
        );
    };
    within_2pct(&h["p50_ms"], 50.0);
    within_2pct(&h["p95_ms"], 95.0);
    within_2pct(&h["p99_ms"], 99.0);
    // 24 h: the rollups, and raw rows for less than the first hour at most.
    let sources = h["sources"].as_array().expect("sources");
    assert!(
        sources
            .iter()
            .any(|s| s["source"] == "hourly" || s["source"] == "daily"),
        "{sources:?}"
    );
    for raw in sources.iter().filter(|s| s["source"] == "raw") {
        let at = |key: &str| {
            time::OffsetDateTime::parse(
                raw[key].as_str().expect("a time"),
                &time::format_description::well_known::Rfc3339,
            )
            .expect("RFC 3339")
        };
        assert!(
            at("until") - at("from") <= time::Duration::hours(1),
            "{raw}"
        );
    }
    assert_eq!(h["tls_cert_not_after"], "2027-03-01T00:00:00Z");

    let f = &rows[1];
    assert_eq!(f["checks"], 3);
    assert!((f["uptime_pct"].as_f64().expect("uptime") - 100.0 / 3.0).abs() < 1e-9);
    assert_eq!(f["up"], false);
    assert_eq!(f["last_error_kind"], "connect");
    // Only checks that got a response have a response time: 20 and 40 ms, rank 0.
    within_2pct(&f["p50_ms"], 20.0);
    assert_eq!(f["tls_cert_not_after"], Value::Null);

    let n = &rows[2];
    assert_eq!(n["id"], never);
    assert_eq!(n["checks"], 0);
    assert_eq!(n["last_checked_at"], Value::Null);
    assert_eq!(n["uptime_pct"], Value::Null);

    // A wider window takes the old check in.
    let output = run(sitemon_with_database(&db.url).args(["status", "--json", "--since", "3d"]));
    let rows: Vec<Value> = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(rows[0]["checks"], 101);
    assert!((rows[0]["uptime_pct"].as_f64().expect("uptime") - 10_000.0 / 101.0).abs() < 1e-9);

    // For people: an aligned table, no colour off a terminal.
    let output = run(sitemon_with_database(&db.url).arg("status"));
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    assert!(!text.contains('\x1b'), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("UPTIME 24h"),
        "{text}"
    );
    assert!(
        lines[1].contains("100.00%")
            && lines[1].contains(" up ")
            && lines[1].contains("2027-03-01"),
        "{text}"
    );
    assert!(
        lines[2].contains("DOWN") && lines[2].contains("connect") && lines[2].contains("33.33%"),
        "{text}"
    );
    assert!(lines[3].contains("never"), "{text}");

    let output = run(sitemon_with_database(&db.url).args(["status", "--since", "soon"]));
    assert_eq!(output.status.code(), Some(2));
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("invalid --since: \"soon\" is not a duration"),
        "{err}"
    );
    db.drop_database().await;
}

/// A degraded check (up, but slower than the site's threshold) is its own state in `status`,
/// counted as up for uptime; a site whose certificate is not verified says so.
#[tokio::test]
async fn degraded_and_unverified_show_in_status() {
    let db = TestDb::migrated().await;
    let slow = add_site(&db, "https://slow.invalid/").await;
    let internal = add_site(&db, "https://internal.invalid/").await;
    sqlx::query("UPDATE websites SET degraded_after_ms = 50 WHERE id = $1")
        .bind(slow)
        .execute(&db.pool)
        .await
        .expect("threshold");
    sqlx::query("UPDATE websites SET tls_verify = false WHERE id = $1")
        .bind(internal)
        .execute(&db.pool)
        .await
        .expect("tls_verify off");
    record(&db, Check::answered(slow, 1, 300, 200, 20.0)).await;
    record(&db, Check::answered(slow, 2, 200, 200, 90.0)).await;
    record(&db, Check::answered(slow, 3, 100, 200, 95.0)).await;
    sqlx::query(
        "UPDATE website_status SET degraded = true WHERE website_id = $1 AND response_time_ms > 50",
    )
    .bind(slow)
    .execute(&db.pool)
    .await
    .expect("degraded");
    // Rows changed by SQL: their rollups are rebuilt, as `sitemon rollup rebuild` does.
    sitemon_core::history::rebuild_rollups(&db.pool, None, |_, _| {})
        .await
        .expect("rollups rebuilt");
    record(
        &db,
        Check::answered(internal, 4, 100, 200, 10.0).with_cert("2027-05-01T00:00:00Z"),
    )
    .await;

    let output = run(sitemon_with_database(&db.url).args(["status", "--json"]));
    assert!(output.status.success());
    let rows: Vec<Value> = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(rows[0]["up"], true);
    assert_eq!(rows[0]["degraded"], true);
    assert_eq!(rows[0]["degraded_checks"], 2);
    assert_eq!(rows[0]["uptime_pct"], 100.0, "degraded counts as up");
    assert_eq!(rows[0]["tls_verify"], true);
    assert_eq!(rows[1]["degraded"], false);
    assert_eq!(rows[1]["degraded_checks"], 0);
    assert_eq!(rows[1]["tls_verify"], false);

    let output = run(sitemon_with_database(&db.url).arg("status"));
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[1].contains(" degraded "), "{text}");
    assert!(!lines[2].contains("degraded"), "{text}");
    assert!(lines[2].contains(" up "), "{text}");
    assert!(lines[2].contains("2027-05-01 (not verified)"), "{text}");
    assert!(!lines[1].contains("not verified"), "{text}");
    db.drop_database().await;
}
