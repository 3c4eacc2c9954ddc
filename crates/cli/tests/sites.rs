//! The site-management and topic commands of the `sitemon` binary, against the real services.
//!
//! Every bad input must give one line on stderr naming the input and the problem, the exit
//! status 1 (2 for usage errors), and leave the database as it was.

mod support;

use std::process::Output;

use sitemon_core::config::KafkaSettings;
use sitemon_testkit::{TestDb, random_topic, services, tls_kafka_settings};
use support::{bare_sitemon, run, sitemon_kafka, sitemon_with_database, stderr, stdout};

/// Asserts a failure: the exit status, one line on stderr that contains `expected`.
#[track_caller]
fn assert_fails(output: &Output, status: i32, expected: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(status), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(expected), "expected {expected:?} in {err:?}");
    assert!(stdout(output).is_empty(), "stdout: {}", stdout(output));
}

/// The websites table, as text, to prove that a failed command changed nothing.
async fn snapshot(db: &TestDb) -> Vec<(i32, String, i32, Option<String>)> {
    sqlx::query_as("SELECT id, url, check_interval, up_regex FROM websites ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .expect("snapshot")
}

fn add(db: &TestDb, args: &[&str]) -> Output {
    run(sitemon_with_database(&db.url).arg("add-site").args(args))
}

#[tokio::test]
async fn migrate_twice_then_add_list_remove() {
    let db = TestDb::empty().await;
    for _ in 0..2 {
        let output = run(sitemon_with_database(&db.url).arg("migrate"));
        assert!(output.status.success(), "{}", stderr(&output));
    }

    let output = add(&db, &["http://127.0.0.1:9/a"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let first: i32 = stdout(&output)
        .trim()
        .parse()
        .expect("the id alone on stdout");
    let output = add(
        &db,
        &[
            "https://example.invalid/b",
            "--interval",
            "60",
            "--regex",
            "up|ok",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let second: i32 = stdout(&output)
        .trim()
        .parse()
        .expect("the id alone on stdout");

    let output = run(sitemon_with_database(&db.url).arg("list-sites"));
    assert!(output.status.success(), "{}", stderr(&output));
    let table = stdout(&output);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("ID"), "{table}");
    assert!(lines[1].starts_with(&format!("{first} ")), "{table}");
    assert!(
        lines[1].contains("5s") && lines[1].contains("http://127.0.0.1:9/a"),
        "{table}"
    );
    assert!(
        lines[2].contains("60s") && lines[2].contains("up|ok"),
        "{table}"
    );
    // Aligned: the URL column starts at the same place on every line.
    let url_column = lines[0].find("URL").expect("URL header");
    assert_eq!(lines[1].find("http"), Some(url_column), "{table}");
    assert_eq!(lines[2].find("https"), Some(url_column), "{table}");

    let output = run(sitemon_with_database(&db.url).args(["list-sites", "--json"]));
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(
        json,
        serde_json::json!([
            {"id": first, "url": "http://127.0.0.1:9/a", "check_interval": 5, "up_regex": null},
            {"id": second, "url": "https://example.invalid/b", "check_interval": 60, "up_regex": "up|ok"},
        ])
    );

    let output = run(sitemon_with_database(&db.url).args(["remove-site", &first.to_string()]));
    assert!(output.status.success(), "{}", stderr(&output));
    let remaining = snapshot(&db).await;
    assert_eq!(remaining.len(), 1);
    assert_eq!(remaining[0].0, second);
    db.drop_database().await;
}

#[tokio::test]
async fn bad_site_input_is_refused_and_changes_nothing() {
    let db = TestDb::migrated().await;
    let existing = add(&db, &["http://127.0.0.1:9/existing"]);
    assert!(existing.status.success(), "{}", stderr(&existing));
    let existing_id = stdout(&existing).trim().to_owned();
    let before = snapshot(&db).await;

    let too_long = format!("http://example.invalid/{}", "x".repeat(2048));
    let cases: Vec<(Vec<&str>, i32, String)> = vec![
        (
            vec!["example.com"],
            1,
            "invalid URL \"example.com\": it is not absolute".into(),
        ),
        (
            vec!["ftp://example.com/"],
            1,
            "scheme \"ftp\" is not supported".into(),
        ),
        (vec!["http://"], 1, "invalid URL \"http://\"".into()),
        (vec![&too_long], 1, "at most 2048 are allowed".into()),
        (
            vec!["http://example.invalid/", "--interval", "0"],
            1,
            "invalid interval 0".into(),
        ),
        (
            vec!["http://example.invalid/", "--interval", "-5"],
            1,
            "invalid interval -5".into(),
        ),
        (
            vec!["http://example.invalid/", "--interval", "86401"],
            1,
            "invalid interval 86401".into(),
        ),
        (
            vec!["http://example.invalid/", "--interval", "often"],
            2,
            "invalid value 'often'".into(),
        ),
        (
            vec!["http://example.invalid/", "--regex", "(unclosed"],
            1,
            "invalid regex \"(unclosed\"".into(),
        ),
        (
            vec!["http://127.0.0.1:9/existing"],
            1,
            format!("http://127.0.0.1:9/existing is already registered as site {existing_id}"),
        ),
    ];
    for (args, status, expected) in &cases {
        let output = add(&db, args);
        assert_fails(&output, *status, expected);
    }
    for id in ["999999", "0", "-3", "99999999999"] {
        let output = run(sitemon_with_database(&db.url).args(["remove-site", id]));
        assert_fails(&output, 1, &format!("no site has id {id}"));
    }
    let output = run(sitemon_with_database(&db.url).args(["remove-site", "abc"]));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));

    assert_eq!(snapshot(&db).await, before);
    db.drop_database().await;
}

/// The history of each site: its number of `website_status` rows.
async fn history(db: &TestDb, site: i32) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM website_status WHERE website_id = $1")
        .bind(site)
        .fetch_one(&db.pool)
        .await
        .expect("count the history")
}

/// `remove-site` on a site with stored checks removes them too (the README: "removes a site
/// and all its history"), and leaves the other sites' history alone.
#[tokio::test]
async fn remove_site_removes_its_history() {
    let db = TestDb::migrated().await;
    let mut sites = Vec::new();
    for url in ["http://example.invalid/gone", "http://example.invalid/kept"] {
        let output = add(&db, &[url]);
        assert!(output.status.success(), "{}", stderr(&output));
        sites.push(stdout(&output).trim().parse::<i32>().expect("the id"));
    }
    let (gone, kept) = (sites[0], sites[1]);
    for (offset, site) in [gone, kept, gone, kept, gone].into_iter().enumerate() {
        sqlx::query(
            "INSERT INTO website_status (kafka_topic, kafka_partition_id, kafka_offset_id,
                 website_id, timestamp_utc, request_info, check_id, is_up, status_code)
             VALUES ('t', 0, $1, $2, now(), '{}', gen_random_uuid(), true, 200)",
        )
        .bind(offset as i64)
        .bind(site)
        .execute(&db.pool)
        .await
        .expect("a stored check");
    }
    assert_eq!((history(&db, gone).await, history(&db, kept).await), (3, 2));

    let output = run(sitemon_with_database(&db.url).args(["remove-site", &gone.to_string()]));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        history(&db, gone).await,
        0,
        "the removed site's checks stayed"
    );
    assert_eq!(
        history(&db, kept).await,
        2,
        "another site's checks went too"
    );
    let remaining: Vec<i32> = snapshot(&db).await.into_iter().map(|row| row.0).collect();
    assert_eq!(remaining, [kept]);
    db.drop_database().await;
}

/// `add-site --regex` applies sitemon's 1 MiB limit on the compiled regex, below the regex
/// crate's own 10 MiB: `[a-z]{n}` compiles to about 72 bytes per repetition, so 20,000 of them
/// (about 1.4 MiB) are refused and 10,000 (about 0.7 MiB) accepted. `site.rs` pins the limit to
/// the byte; this is the same limit seen from the command line.
#[tokio::test]
async fn add_site_refuses_a_regex_over_one_mebibyte_compiled() {
    let db = TestDb::migrated().await;
    let before = snapshot(&db).await;
    let over = "[a-z]{20000}";
    let output = add(&db, &["http://example.invalid/over", "--regex", over]);
    assert_fails(&output, 1, "invalid regex \"[a-z]{20000}\"");
    assert_eq!(snapshot(&db).await, before, "a refused regex stored a site");

    let under = "[a-z]{10000}";
    let output = add(&db, &["http://example.invalid/under", "--regex", under]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stored = snapshot(&db).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].3.as_deref(), Some(under));
    db.drop_database().await;
}

/// A wrong password is refused at once, not retried: one line that says the login was
/// refused and to check DATABASE_URL, exit status 1, never the password, nothing changed.
#[tokio::test]
async fn wrong_database_password_is_one_line_without_the_password() {
    const WRONG: &str = "wrong-pw-7f3a9";
    let db = TestDb::migrated().await;
    let url = db
        .url
        .replacen("sitemon:sitemon@", &format!("sitemon:{WRONG}@"), 1);
    assert_ne!(url, db.url, "DATABASE_URL has no password to change");
    for args in [&["add-site", "http://127.0.0.1:9/a"][..], &["list-sites"]] {
        let started = std::time::Instant::now();
        let output = run(sitemon_with_database(&url).args(args));
        let elapsed = started.elapsed();
        assert_fails(
            &output,
            1,
            &format!(
                "cannot connect to PostgreSQL at 127.0.0.1:5432/{}: the server refused the login",
                db.name
            ),
        );
        let err = stderr(&output);
        assert!(
            err.contains("check the user and password in DATABASE_URL"),
            "{err}"
        );
        assert!(!err.contains(WRONG), "{err}");
        assert!(
            !err.contains("scripts/services up"),
            "not a missing server: {err}"
        );
        // The kind is the proof; this only says it was not the 15 s connect timeout.
        assert!(
            elapsed < std::time::Duration::from_secs(10),
            "{args:?}: {elapsed:?}"
        );
    }
    assert!(snapshot(&db).await.is_empty());
    db.drop_database().await;
}

#[test]
fn unreachable_database_is_named_without_the_password() {
    let output = run(
        sitemon_with_database("postgres://sitemon:s3cret-pw@127.0.0.1:1/sitemon").arg("list-sites"),
    );
    assert_fails(
        &output,
        1,
        "cannot connect to PostgreSQL at 127.0.0.1:1/sitemon",
    );
    assert!(!stderr(&output).contains("s3cret-pw"));

    let output = run(sitemon_with_database("not a url").arg("list-sites"));
    assert_fails(&output, 2, "invalid DATABASE_URL");
    let output =
        run(sitemon_with_database("postgres://u:s3cret-pw@h:notaport/db").arg("list-sites"));
    assert_fails(&output, 2, "invalid DATABASE_URL");
    assert!(!stderr(&output).contains("s3cret-pw"));
}

/// The partition count of `topic` as the broker's metadata has it, `None` once it is gone.
async fn partitions_of(topic: &str) -> Option<usize> {
    let client = sitemon_testkit::topic::client(topic).await;
    sitemon_core::kafka::partition_count(&client, topic)
        .await
        .expect("the broker lists its topics")
}

#[tokio::test]
async fn topic_create_is_idempotent_and_delete_removes_it() {
    let topic = random_topic();
    let settings = KafkaSettings {
        brokers: services().kafka_brokers.clone(),
        topic: topic.clone(),
        ..KafkaSettings::default()
    };
    let plaintext = |args: &[&str]| run(sitemon_kafka(&settings).arg("topic").args(args));
    let output = plaintext(&["create", "--partitions", "3"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("created topic"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        partitions_of(&topic).await,
        Some(3),
        "topic create --partitions 3"
    );
    let output = plaintext(&["create"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("exists already"),
        "{}",
        stderr(&output)
    );
    let output = plaintext(&["delete"]);
    assert!(output.status.success(), "{}", stderr(&output));
    // Deletion spreads through the cluster's metadata shortly after the broker answers.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while let Some(partitions) = partitions_of(&topic).await {
        assert!(
            std::time::Instant::now() < deadline,
            "topic delete: {topic} still has {partitions} partitions after 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[test]
fn topic_commands_over_mutual_tls() {
    let topic = random_topic();
    let settings = tls_kafka_settings(&topic);
    assert!(
        settings.ca_file.is_some() && settings.cert_file.is_some() && settings.key_file.is_some()
    );
    let tls = |args: &[&str]| run(sitemon_kafka(&settings).arg("topic").args(args));
    let output = tls(&["create"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let output = tls(&["delete"]);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn bad_kafka_settings_are_named() {
    let topic = random_topic();
    let kafka = |envs: &[(&str, &str)]| {
        let mut command = bare_sitemon();
        command.env("KAFKA_TOPIC", &topic);
        for (k, v) in envs {
            command.env(k, v);
        }
        run(command.args(["topic", "create"]))
    };
    assert_fails(
        &kafka(&[("KAFKA_BROKERS", "127.0.0.1:1")]),
        1,
        "cannot connect to Kafka at 127.0.0.1:1",
    );
    assert_fails(
        &kafka(&[("KAFKA_BROKERS", "no-port")]),
        2,
        "invalid KAFKA_BROKERS: \"no-port\" is not host:port",
    );
    assert_fails(
        &kafka(&[
            ("KAFKA_BROKERS", &services().tls_brokers),
            ("KAFKA_CA_FILE", "/nonexistent/ca.pem"),
            ("KAFKA_CERT_FILE", "/nonexistent/service.cert"),
            ("KAFKA_KEY_FILE", "/nonexistent/service.key"),
        ]),
        1,
        "cannot use KAFKA_CA_FILE file /nonexistent/ca.pem",
    );
    assert_fails(
        &kafka(&[
            ("KAFKA_BROKERS", &services().tls_brokers),
            ("KAFKA_CERT_FILE", "/nonexistent/service.cert"),
        ]),
        2,
        "invalid KAFKA_KEY_FILE",
    );
    assert_fails(
        &kafka(&[
            ("KAFKA_BROKERS", &services().tls_brokers),
            ("KAFKA_SASL_MECHANISM", "GSSAPI"),
            ("KAFKA_SASL_USERNAME", "u"),
            ("KAFKA_SASL_PASSWORD", "hunter2-secret"),
        ]),
        2,
        "invalid KAFKA_SASL_MECHANISM",
    );
}
