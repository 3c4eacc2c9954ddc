//! The per-site settings of issue 13 against a local server: each changes what is sent (seen
//! by the server) and how the answer is judged (seen in the event on the real topic).

mod support;

use std::collections::HashSet;
use std::time::Duration;

use sitemon_core::{Assertion, ErrorKind, Method, NewSite, SiteSettings, db};
use sitemon_testkit::http::{MAINTENANCE_BODY, PAUSE, TestServer};
use sitemon_testkit::kafka_config;
use support::{Stored, by_site, checker_config, fixture, start_checker, wait_for_events};

/// Registers a site with `change` applied to the defaults (interval 2 s), validated as
/// `add-site` and `apply` validate it.
async fn site(
    db: &sitemon_testkit::TestDb,
    url: &str,
    change: impl FnOnce(&mut SiteSettings),
) -> i32 {
    let mut settings = SiteSettings::new(url);
    settings.interval = 2;
    change(&mut settings);
    let site = NewSite::from_settings(settings).expect("valid settings");
    db::insert_site(&db.pool, &site).await.expect("insert")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_setting_changes_the_request_and_the_verdict() {
    let (db, topic, http, client) = fixture().await;
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let self_signed = TestServer::https(
        &fixtures.join("self-signed.pem"),
        &fixtures.join("self-signed.key"),
    )
    .await;

    let head = site(&db, &http.url("/ok?head"), |s| s.method = Method::Head).await;
    let post = site(&db, &http.url("/post-only?post"), |s| {
        s.method = Method::Post;
        s.body = Some("{\"q\": \"sitemon\"}".into());
        s.headers
            .insert("Content-Type".into(), "application/json".into());
    })
    .await;
    let get_post_only = site(&db, &http.url("/post-only?get"), |_| {}).await;
    let post_307 = site(&db, &http.url("/redirect-307"), |s| {
        s.method = Method::Post;
        s.body = Some("again".into());
    })
    .await;
    let post_303 = site(&db, &http.url("/see-other"), |s| {
        s.method = Method::Post;
        s.body = Some("once".into());
    })
    .await;
    let headers = site(&db, &http.url("/ok?headers"), |s| {
        s.headers.insert("X-Token".into(), "t0ken".into());
        s.headers.insert("User-Agent".into(), "probe/1".into());
    })
    .await;
    let expect_404 = site(&db, &http.url("/404?expected"), |s| {
        s.expect_status = Some("404".into());
    })
    .await;
    let expect_range = site(&db, &http.url("/ok?range"), |s| {
        s.expect_status = Some("300-399, 500".into());
    })
    .await;
    let maintenance = site(&db, &http.url("/maintenance"), |s| {
        s.regex_must_not_match = Some("maintenance".into());
    })
    .await;
    let no_maintenance = site(&db, &http.url("/ok?no-maintenance"), |s| {
        s.regex_must_not_match = Some("maintenance".into());
    })
    .await;
    let degraded = site(&db, &http.url("/pause?degraded"), |s| {
        s.degraded_after_ms = Some(100);
    })
    .await;
    let not_degraded = site(&db, &http.url("/pause?not-degraded"), |s| {
        s.degraded_after_ms = Some(1500);
    })
    .await;
    let short_timeout = site(&db, &http.url("/slow?short"), |s| {
        s.interval = 4;
        s.timeout_ms = Some(700);
    })
    .await;
    let no_follow = site(&db, &http.url("/redirect?no-follow"), |s| {
        s.follow_redirects = false;
    })
    .await;
    let no_follow_301 = site(&db, &http.url("/redirect?no-follow-301"), |s| {
        s.follow_redirects = false;
        s.expect_status = Some("301".into());
    })
    .await;
    let unverified = site(&db, &self_signed.https_url("/ok"), |s| s.tls_verify = false).await;
    let all = [
        head,
        post,
        get_post_only,
        post_307,
        post_303,
        headers,
        expect_404,
        expect_range,
        maintenance,
        no_maintenance,
        degraded,
        not_degraded,
        short_timeout,
        no_follow,
        no_follow_301,
        unverified,
    ];

    let checker = start_checker(checker_config(&db, kafka_config(&topic)));
    let events = wait_for_events(&client, &topic, Duration::from_secs(40), |events| {
        let seen: HashSet<i32> = events.iter().map(|s| s.event.website_id).collect();
        all.iter().all(|id| seen.contains(id))
    })
    .await;
    checker.stop_within(Duration::from_secs(30)).await;
    let sites = by_site(&events);
    let first = |id: i32| -> &Stored {
        &sites
            .get(&id)
            .unwrap_or_else(|| panic!("no event for site {id} within 40 s"))[0]
    };

    // HEAD: the server saw a HEAD, no GET; no body came back, and none was searched.
    let e = &first(head).event;
    assert!(e.up, "{e:?}");
    assert_eq!(e.method, Method::Head);
    assert_eq!(e.status_code, Some(200));
    assert!(!http.requests_with("HEAD", "/ok?head").is_empty());
    assert!(http.requests_for("/ok?head").is_empty(), "no GET was sent");

    // POST: the body arrived as sent, with its length and the site's header.
    let e = &first(post).event;
    assert!(e.up, "{e:?}");
    assert_eq!(e.method, Method::Post);
    let request = &http.requests_with("POST", "/post-only?post")[0];
    let (head_text, body) = request.split_once("\r\n\r\n").expect("head and body");
    assert_eq!(body, "{\"q\": \"sitemon\"}");
    let head_lower = head_text.to_ascii_lowercase();
    let lines: Vec<&str> = head_lower.lines().collect();
    assert!(lines.contains(&"content-length: 16"), "{request}");
    assert!(
        lines.contains(&"content-type: application/json"),
        "{request}"
    );
    // The same URL with GET is answered 405: down by its status.
    let e = &first(get_post_only).event;
    assert!(!e.up);
    assert_eq!(e.status_code, Some(405));
    assert_eq!(e.failed_assertion, Some(Assertion::Status));
    assert_eq!(e.method, Method::Get);

    // Redirects of a POST: a 307 repeats it, body and all; a 303 goes on with a GET, no body.
    let e = &first(post_307).event;
    assert!(e.up, "{e:?}");
    assert_eq!(e.redirects, 1);
    let again = &http.requests_with("POST", "/post-only?after-307")[0];
    assert!(again.ends_with("\r\n\r\nagain"), "{again}");
    let e = &first(post_303).event;
    assert!(e.up, "{e:?}");
    assert_eq!(e.redirects, 1);
    let after = &http.requests_for("/ok?after-303")[0];
    assert!(
        after.ends_with("\r\n\r\n"),
        "a GET without the body: {after}"
    );
    assert!(http.requests_with("POST", "/ok?after-303").is_empty());

    // Headers arrive; one of sitemon's own (User-Agent) is replaced, not doubled.
    let request = http.requests_for("/ok?headers")[0].to_ascii_lowercase();
    assert!(request.contains("x-token: t0ken\r\n"), "{request}");
    assert!(request.contains("user-agent: probe/1\r\n"), "{request}");
    assert_eq!(request.matches("user-agent:").count(), 1, "{request}");

    // expect_status: a 404 expected is up; a 200 outside the list is down.
    let e = &first(expect_404).event;
    assert!(e.up, "{e:?}");
    assert_eq!(
        (e.status_code, e.expect_status.as_deref()),
        (Some(404), Some("404"))
    );
    assert_eq!(e.failed_assertion, None);
    let e = &first(expect_range).event;
    assert!(!e.up);
    assert_eq!(e.status_code, Some(200));
    assert_eq!(e.expect_status.as_deref(), Some("300-399,500"));
    assert_eq!(e.failed_assertion, Some(Assertion::Status));

    // regex_must_not_match: found is down, absent is up.
    let e = &first(maintenance).event;
    assert!(!e.up);
    assert!(MAINTENANCE_BODY.contains("maintenance"));
    assert_eq!(e.regex_must_not_match.as_deref(), Some("maintenance"));
    assert_eq!(e.regex_must_not_match_found, Some(true));
    assert_eq!(e.failed_assertion, Some(Assertion::RegexMustNotMatch));
    let e = &first(no_maintenance).event;
    assert!(e.up);
    assert_eq!(e.regex_must_not_match_found, Some(false));

    // degraded_after_ms: /pause answers after 400 ms, slower than 100, quicker than 1500.
    let e = &first(degraded).event;
    assert!(e.up, "degraded is still up: {e:?}");
    assert!(e.degraded, "{e:?}");
    assert_eq!(e.degraded_after_ms, Some(100));
    assert!(e.response_time_ms.unwrap_or_default() >= PAUSE.as_secs_f64() * 1000.0);
    let e = &first(not_degraded).event;
    assert!(e.up && !e.degraded, "{e:?}");

    // timeout_ms: the site's 700 ms, not the checker's default (its 4 s interval).
    let e = &first(short_timeout).event;
    assert_eq!(e.error.as_ref().map(|e| e.kind), Some(ErrorKind::Timeout));
    let message = e.error.as_ref().map(|e| e.message.as_str()).unwrap_or("");
    assert!(message.contains("within 0.700 s"), "{message}");
    assert!(
        e.timings_ms.total >= 700.0,
        "the site's 700 ms were waited: {:?}",
        e.timings_ms
    );

    // follow_redirects off: the 301 is the answer (down by default, up when expected).
    let e = &first(no_follow).event;
    assert!(!e.up);
    assert_eq!((e.status_code, e.redirects), (Some(301), 0));
    assert_eq!(e.failed_assertion, Some(Assertion::Status));
    assert!(
        http.requests_for("/ok").is_empty(),
        "the redirect to /ok was not followed"
    );
    let e = &first(no_follow_301).event;
    assert!(e.up, "{e:?}");
    assert_eq!(e.status_code, Some(301));

    // tls_verify off: a self-signed certificate is accepted, its expiry still read.
    let e = &first(unverified).event;
    assert!(e.up, "{e:?}");
    assert!(e.timings_ms.tls.is_some());
    assert!(e.tls_cert_not_after.is_some());

    db.drop_database().await;
}

/// A row written by SQL with settings `add-site` refuses is checked anyway and reported as
/// `invalid_settings`, without a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_written_by_sql_that_cannot_be_used_are_reported() {
    let (db, topic, http, client) = fixture().await;
    let id: i32 = sqlx::query_scalar(
        "INSERT INTO websites (url, check_interval, expect_status, headers)
         VALUES ($1, 2, '300-200', '{\"X-A\": \"b\"}') RETURNING id",
    )
    .bind(http.url("/ok?sql"))
    .fetch_one(&db.pool)
    .await
    .expect("insert by SQL");
    let checker = start_checker(checker_config(&db, kafka_config(&topic)));
    let events = wait_for_events(&client, &topic, Duration::from_secs(30), |e| !e.is_empty()).await;
    checker.stop_within(Duration::from_secs(30)).await;
    let e = &events.first().expect("an event within 30 s").event;
    assert_eq!(e.website_id, id);
    assert!(!e.up);
    let error = e.error.as_ref().expect("an error");
    assert_eq!(error.kind, ErrorKind::InvalidSettings);
    assert!(error.message.contains("300-200"), "{}", error.message);
    assert!(http.requests_for("/ok?sql").is_empty(), "nothing was sent");
    db.drop_database().await;
}
