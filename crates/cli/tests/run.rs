//! `sitemon run`: migrate, check and sync in one process, against the real services.

mod support;

use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sitemon_testkit::http::{TestServer, free_port};
use sitemon_testkit::{TestDb, random_topic};
use support::{scrape, sitemon, sum_values, wait_with_timeout};

/// Kills the process if the test ends before stopping it.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn migrates_checks_and_stores_in_one_process() {
    // A password of its own: `sitemon`'s equals its user name, printed everywhere.
    let (db, password) = TestDb::empty_with_own_role().await;
    let topic = random_topic();
    let metrics_addr = free_port();
    let child = sitemon(&db, &topic)
        .args([
            "--log-format",
            "json",
            "run",
            "--batch-wait",
            "50",
            "--partitions",
            "2",
        ])
        .args(["--metrics-addr", &metrics_addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut guard = Guard(child);

    // `run` creates the schema; then a site appears and is checked and stored.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let migrated: bool = sqlx::query_scalar("SELECT to_regclass('websites') IS NOT NULL")
            .fetch_one(&db.pool)
            .await
            .expect("asks");
        if migrated {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sitemon run did not migrate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let site: i32 = sqlx::query_scalar(
        "INSERT INTO websites (url, check_interval) VALUES ($1, 1) RETURNING id",
    )
    .bind(TestServer::http().await.url("/ok"))
    .fetch_one(&db.pool)
    .await
    .expect("adds a site");
    loop {
        let stored: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM website_status WHERE website_id = $1 AND is_up",
        )
        .bind(site)
        .fetch_one(&db.pool)
        .await
        .expect("counts");
        if stored >= 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sitemon run stored {stored} checks of the site in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // One /metrics for both halves.
    let metrics = scrape(metrics_addr).expect("serves /metrics");
    let checks = sum_values(&metrics, "sitemon_checks_total{");
    assert!(checks >= 3.0, "{metrics}");
    let stored = sum_values(&metrics, "sitemon_sync_events_total");
    assert!(stored >= 3.0, "{metrics}");
    assert!(
        metrics.contains("sitemon_check_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(metrics.contains("sitemon_sync_partition_lag{"), "{metrics}");

    let pid = guard.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let status = wait_with_timeout(
        &mut guard.0,
        Duration::from_secs(60),
        "sitemon run after SIGTERM",
    );
    let mut log = String::new();
    if let Some(mut stderr) = guard.0.stderr.take() {
        let _ = stderr.read_to_string(&mut log);
    }
    assert_eq!(status.code(), Some(0), "a clean stop: {log}");

    // --log-format json: every line one JSON object, for log shippers; no secret in them.
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 5, "{log}");
    for line in lines {
        let entry: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            entry["level"].is_string() && entry["fields"].is_object(),
            "{line}"
        );
    }
    assert!(
        !log.contains(&password),
        "the log shows the database password"
    );
    db.drop_database().await;
}

/// Degraded end to end: a site applied from a file with `degraded_after_ms` below the test
/// server's `/pause`, checked and stored by `sitemon run`: its rows say degraded, and so does
/// `sitemon status` (up for uptime); a quick site beside it is not degraded. (The slow site's
/// 3 s interval is its timeout too: far above the 400 ms of `/pause`, so a loaded machine does
/// not turn a check into a timeout.)
#[tokio::test]
async fn a_slow_site_is_degraded_in_its_rows_and_in_status() {
    let db = TestDb::migrated().await;
    let topic = random_topic();
    let server = TestServer::http().await;
    let file = std::env::temp_dir().join(format!("{topic}.yaml"));
    std::fs::write(
        &file,
        format!(
            "sites:\n  - url: {}\n    interval: 3\n    degraded_after_ms: 150\n  - url: {}\n    interval: 1\n    degraded_after_ms: 900\n",
            server.url("/pause"),
            server.url("/ok")
        ),
    )
    .expect("write the sites file");
    let output = support::run(sitemon(&db, &topic).args(["apply", file.to_str().expect("UTF-8")]));
    assert!(output.status.success(), "{}", support::stderr(&output));
    let _ = std::fs::remove_file(&file);
    let ids: Vec<i32> = sqlx::query_scalar("SELECT id FROM websites ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .expect("ids");
    let (slow, quick) = (ids[0], ids[1]);

    let child = sitemon(&db, &topic)
        .args(["run", "--batch-wait", "50"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    let mut guard = Guard(child);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let count = |site: i32, degraded: bool| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM website_status WHERE website_id = $1 AND is_up AND degraded = $2",
            )
            .bind(site)
            .bind(degraded)
            .fetch_one(&pool)
            .await
            .expect("counts")
        }
    };
    loop {
        let (slow_degraded, quick_up) = (count(slow, true).await, count(quick, false).await);
        if slow_degraded >= 2 && quick_up >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "in 60 s: {slow_degraded} degraded checks of /pause, {quick_up} quick ones of /ok"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pid = guard.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let status = wait_with_timeout(&mut guard.0, Duration::from_secs(60), "sitemon run");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        count(slow, false).await,
        0,
        "every up check of /pause is degraded"
    );
    assert_eq!(count(quick, true).await, 0, "no check of /ok is degraded");

    let output = support::run(sitemon(&db, &topic).args(["status", "--json"]));
    assert!(output.status.success(), "{}", support::stderr(&output));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(rows[0]["degraded"], true, "{rows:?}");
    assert_eq!(rows[0]["uptime_pct"], 100.0, "{rows:?}");
    assert_eq!(rows[0]["degraded_checks"], rows[0]["checks"], "{rows:?}");
    assert_eq!(rows[1]["degraded"], false, "{rows:?}");
    assert_eq!(rows[1]["degraded_checks"], 0, "{rows:?}");
    let output = support::run(sitemon(&db, &topic).arg("status"));
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[1].contains(" degraded "), "{text}");
    assert!(lines[2].contains(" up "), "{text}");
    db.drop_database().await;
}
