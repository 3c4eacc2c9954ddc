//! The checker against the real broker and PostgreSQL: one site per behaviour, each event
//! read back from the topic and asserted field by field.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use sitemon_checker::partitioner::partition_for_key;
use sitemon_core::{ErrorKind, KafkaConfig, db};
use sitemon_testkit::events::assert_ticks_accounted;
use sitemon_testkit::http::{TestServer, free_port};
use sitemon_testkit::{TestDb, kafka_config, random_topic, services, tls_kafka_settings};
use support::{
    Stored, add_site, by_site, checker_config, counter, fixture, skipped_ticks, start_checker,
    wait_for_events,
};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// Rows a user could only have written with SQL, bypassing `sitemon add-site`.
async fn add_by_sql(db: &TestDb, url: &str, regex: Option<&str>) -> i32 {
    sqlx::query_scalar(
        "INSERT INTO websites (url, check_interval, up_regex) VALUES ($1, 2, $2) RETURNING id",
    )
    .bind(url)
    .bind(regex)
    .fetch_one(&db.pool)
    .await
    .expect("insert by SQL")
}

fn error_kind(stored: &Stored) -> Option<ErrorKind> {
    stored.event.error.as_ref().map(|e| e.kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_behaviour_makes_the_right_event() {
    let (db, topic, http, client) = fixture().await;
    let certs = &services().cert_dir;
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let self_signed = TestServer::https(
        &fixtures.join("self-signed.pem"),
        &fixtures.join("self-signed.key"),
    )
    .await;
    let trusted = TestServer::https(&certs.join("server.pem"), &certs.join("server.key")).await;

    let matching = add_site(&db, &http.url("/ok?m"), 2, Some("systems ok")).await;
    let not_matching = add_site(&db, &http.url("/ok?n"), 2, Some("^down$")).await;
    let no_regex = add_site(&db, &http.url("/ok"), 2, None).await;
    let redirect = add_site(&db, &http.url("/redirect"), 2, None).await;
    let redirect_loop = add_site(&db, &http.url("/loop"), 2, None).await;
    let not_found = add_site(&db, &http.url("/404"), 2, None).await;
    let server_error = add_site(&db, &http.url("/500"), 2, None).await;
    let slow = add_site(&db, &http.url("/slow"), 2, None).await;
    let refused = add_site(&db, &format!("http://{}/", free_port()), 2, None).await;
    let unresolvable = add_site(&db, "http://no-such-host.invalid/", 2, None).await;
    let untrusted = add_site(&db, &self_signed.https_url("/ok"), 2, None).await;
    let https_ok = add_site(&db, &trusted.https_url("/ok"), 2, None).await;
    let broken_body = add_site(&db, &http.url("/broken"), 2, None).await;
    let not_http = add_site(&db, &http.url("/garbage"), 2, None).await;
    let bad_url = add_by_sql(&db, "htp:/not a url", None).await;
    let bad_regex = add_by_sql(&db, &http.url("/ok?r"), Some("(unclosed")).await;
    let all = [
        matching,
        not_matching,
        no_regex,
        redirect,
        redirect_loop,
        not_found,
        server_error,
        slow,
        refused,
        unresolvable,
        untrusted,
        https_ok,
        broken_body,
        not_http,
        bad_url,
        bad_regex,
    ];

    let mut config = checker_config(&db, kafka_config(&topic));
    config.timeout = Some(Duration::from_secs(1));
    config.extra_root_certs = vec![
        rustls::pki_types::pem::PemObject::from_pem_file(certs.join("ca.pem")).expect("ca.pem"),
    ];
    let started = OffsetDateTime::now_utc();
    let checker = start_checker(config);

    let events = wait_for_events(&client, &topic, Duration::from_secs(30), |events| {
        let seen: HashSet<i32> = events.iter().map(|s| s.event.website_id).collect();
        all.iter().all(|id| seen.contains(id))
    })
    .await;
    checker.stop_within(Duration::from_secs(30)).await;
    let finished = OffsetDateTime::now_utc();
    let sites = by_site(&events);
    let first = |id: i32| -> &Stored {
        &sites
            .get(&id)
            .unwrap_or_else(|| panic!("no event for site {id}"))[0]
    };

    // Fields every event has.
    for stored in &events {
        let e = &stored.event;
        assert_eq!(e.schema, sitemon_core::event::EVENT_SCHEMA_VERSION);
        assert_eq!(e.schema, 2);
        assert_eq!(e.check_id.get_version_num(), 7);
        assert_eq!(e.location, "test-location");
        assert!(e.checked_at >= started && e.checked_at <= finished, "{e:?}");
        assert_eq!(stored.key, e.website_id.to_string().into_bytes());
        assert!(e.timings_ms.total >= 0.0);
        assert_eq!(
            e.up,
            e.error.is_none()
                && e.status_code.is_some_and(|s| (200..300).contains(&s))
                && e.regex_matched != Some(false)
        );
    }
    let check_ids: HashSet<_> = events.iter().map(|s| s.event.check_id).collect();
    assert_eq!(check_ids.len(), events.len(), "a check_id appears twice");

    let e = &first(matching).event;
    assert!(e.up);
    // Query values are masked in the event (they may be tokens): `?m` becomes `?m=***`.
    assert_eq!(e.url, http.url("/ok?m=***"));
    assert_eq!(e.status_code, Some(200));
    assert_eq!(e.regex.as_deref(), Some("systems ok"));
    assert_eq!(e.regex_matched, Some(true));
    assert_eq!(e.error, None);
    assert_eq!(e.redirects, 0);
    assert_eq!(e.final_url.as_deref(), Some(http.url("/ok?m=***").as_str()));
    assert_eq!(e.response_time_ms, Some(e.timings_ms.total));
    let t = e.timings_ms;
    assert!(
        t.dns.is_some() && t.connect.is_some() && t.ttfb.is_some(),
        "{t:?}"
    );
    assert_eq!(t.tls, None);
    let phases = t.dns.unwrap_or(0.0) + t.connect.unwrap_or(0.0) + t.ttfb.unwrap_or(0.0);
    assert!(phases <= t.total, "{t:?}");
    assert_eq!(e.tls_cert_not_after, None);
    let request = &http.requests_for("/ok?m")[0];
    assert!(
        request.contains(&format!(
            "user-agent: sitemon/{}\r\n",
            sitemon_core::VERSION
        )),
        "{request}"
    );
    assert!(
        request.contains(&format!("host: {}\r\n", http.addr)),
        "{request}"
    );

    let e = &first(not_matching).event;
    assert!(!e.up);
    assert_eq!(e.status_code, Some(200));
    assert_eq!(e.regex.as_deref(), Some("^down$"));
    assert_eq!(e.regex_matched, Some(false));
    assert_eq!(e.error, None);

    let e = &first(no_regex).event;
    assert!(e.up);
    assert_eq!(
        (e.status_code, e.regex.as_deref(), e.regex_matched),
        (Some(200), None, None)
    );

    let e = &first(redirect).event;
    assert!(e.up);
    assert_eq!(e.status_code, Some(200));
    assert_eq!(e.redirects, 1);
    assert_eq!(e.url, http.url("/redirect"));
    assert_eq!(e.final_url.as_deref(), Some(http.url("/ok").as_str()));

    let e = &first(redirect_loop).event;
    assert!(!e.up);
    assert_eq!(
        error_kind(first(redirect_loop)),
        Some(ErrorKind::TooManyRedirects)
    );
    assert_eq!(e.redirects, 5);
    assert_eq!(
        (e.status_code, e.response_time_ms, e.final_url.as_deref()),
        (None, None, None)
    );
    assert_eq!(
        http.requests_for("/loop").len() % 6,
        0,
        "6 requests a check"
    );

    for (id, status) in [(not_found, 404), (server_error, 500)] {
        let e = &first(id).event;
        assert!(!e.up);
        assert_eq!(e.status_code, Some(status));
        assert_eq!(e.error, None, "an HTTP status is an answer, not a failure");
        assert_eq!(e.response_time_ms, Some(e.timings_ms.total));
    }

    let e = &first(slow).event;
    assert!(!e.up);
    assert_eq!(error_kind(first(slow)), Some(ErrorKind::Timeout));
    assert_eq!((e.status_code, e.response_time_ms), (None, None));
    assert!(e.timings_ms.connect.is_some() && e.timings_ms.ttfb.is_none());
    assert!(
        e.timings_ms.total >= 1000.0,
        "the whole second was waited: {:?}",
        e.timings_ms
    );

    let e = &first(refused).event;
    assert_eq!(error_kind(first(refused)), Some(ErrorKind::Connect));
    let message = &e
        .error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default();
    assert!(message.contains("127.0.0.1"), "{message}");
    assert!(e.timings_ms.dns.is_some() && e.timings_ms.connect.is_some());
    assert_eq!((e.timings_ms.ttfb, e.status_code), (None, None));

    let e = &first(unresolvable).event;
    assert_eq!(error_kind(first(unresolvable)), Some(ErrorKind::Dns));
    assert!(
        e.error
            .as_ref()
            .is_some_and(|e| e.message.contains("no-such-host.invalid"))
    );
    assert!(e.timings_ms.dns.is_some());
    assert_eq!(e.timings_ms.connect, None);

    let e = &first(untrusted).event;
    assert!(!e.up);
    assert_eq!(error_kind(first(untrusted)), Some(ErrorKind::Tls));
    assert!(e.timings_ms.tls.is_some() && e.timings_ms.ttfb.is_none());
    assert_eq!((e.status_code, e.tls_cert_not_after), (None, None));

    let e = &first(https_ok).event;
    assert!(e.up, "{e:?}");
    assert_eq!(e.status_code, Some(200));
    assert!(e.timings_ms.tls.is_some());
    let not_after = e.tls_cert_not_after.expect("the leaf certificate's expiry");
    assert!(
        not_after > OffsetDateTime::now_utc() + time::Duration::days(300),
        "{not_after}"
    );

    let e = &first(broken_body).event;
    assert!(!e.up);
    assert_eq!(error_kind(first(broken_body)), Some(ErrorKind::Body));
    assert_eq!(
        e.status_code,
        Some(200),
        "the response arrived; its body broke off"
    );
    assert_eq!(e.response_time_ms, Some(e.timings_ms.total));

    let e = &first(not_http).event;
    assert!(!e.up);
    assert_eq!(error_kind(first(not_http)), Some(ErrorKind::Http), "{e:?}");
    let message = e
        .error
        .as_ref()
        .map(|e| e.message.as_str())
        .unwrap_or_default();
    assert!(
        message.contains(&http.url("")),
        "names the origin: {message}"
    );
    assert_eq!(
        (e.status_code, e.response_time_ms, e.final_url.as_deref()),
        (None, None, None),
        "no response arrived"
    );
    assert!(e.timings_ms.connect.is_some() && e.timings_ms.ttfb.is_some());

    let e = &first(bad_url).event;
    assert!(!e.up);
    assert_eq!(e.url, "htp:/not a url");
    assert_eq!(error_kind(first(bad_url)), Some(ErrorKind::InvalidUrl));
    assert!(
        e.error
            .as_ref()
            .is_some_and(|e| e.message.contains("not a url"))
    );
    assert_eq!(
        (e.timings_ms.dns, e.status_code, e.final_url.as_deref()),
        (None, None, None)
    );

    let e = &first(bad_regex).event;
    assert!(!e.up);
    assert_eq!(error_kind(first(bad_regex)), Some(ErrorKind::InvalidRegex));
    assert_eq!(e.regex.as_deref(), Some("(unclosed"));
    assert_eq!((e.regex_matched, e.status_code), (None, None));
    assert!(
        http.requests_for("/ok?r").is_empty(),
        "a site with a broken regex is not fetched"
    );

    // Partitioning: each record sits where Kafka's default partitioner puts its key.
    let partitions = sitemon_core::kafka::partition_count(&client, &topic)
        .await
        .expect("metadata")
        .expect("created");
    assert_eq!(
        partitions, 6,
        "a missing topic is created with 6 partitions"
    );
    for stored in &events {
        assert_eq!(
            stored.partition,
            partition_for_key(&stored.key, partitions),
            "{stored:?}"
        );
    }
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_second_site_is_checked_six_times_in_twelve_seconds() {
    let (db, topic, http, client) = fixture().await;
    let site = add_site(&db, &http.url("/ok"), 2, None).await;
    let config = checker_config(&db, kafka_config(&topic));
    let metrics = config.metrics.clone();
    let checker = start_checker(config);
    // Time from the first check on, so that the spread of first checks does not count.
    let first = wait_for_events(&client, &topic, Duration::from_secs(20), |e| !e.is_empty()).await;
    assert_eq!(first.len(), 1);
    tokio::time::sleep(Duration::from_secs(12) - Duration::from_millis(300)).await;
    checker.stop().await;
    let events = support::read_all(&client, &topic).await;
    let since_first: Vec<_> = events
        .iter()
        .filter(|s| s.event.website_id == site && s.event.checked_at >= first[0].event.checked_at)
        .collect();
    // Six ticks in 12 s, give or take one at the edges; a tick a busy machine missed is
    // counted as skipped, never lost.
    let skipped = skipped_ticks(&metrics);
    assert!(
        since_first.len() <= 7 && since_first.len() as u64 + skipped >= 5,
        "{} events, {skipped} skipped ticks",
        since_first.len()
    );
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produces_over_mutual_tls() {
    let (db, topic, http, client) = fixture().await;
    let site = add_site(&db, &http.url("/ok"), 1, None).await;
    let tls = KafkaConfig::new(tls_kafka_settings(&topic)).expect("tls settings");
    let checker = start_checker(checker_config(&db, tls));
    let events = wait_for_events(&client, &topic, Duration::from_secs(30), |e| e.len() >= 2).await;
    checker.stop().await;
    assert!(events.len() >= 2, "{} events over mTLS", events.len());
    assert!(
        events
            .iter()
            .all(|s| s.event.website_id == site && s.event.up)
    );
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_sites_added_changed_and_removed() {
    let (db, topic, http, client) = fixture().await;
    let steady = add_site(&db, &http.url("/ok?steady"), 1, None).await;
    let config = checker_config(&db, kafka_config(&topic));
    let metrics = config.metrics.clone();
    let checker = start_checker(config);
    wait_for_events(&client, &topic, Duration::from_secs(20), |e| !e.is_empty()).await;

    // Added: checked within 3 s.
    let added_at = OffsetDateTime::now_utc();
    let added = add_site(&db, &http.url("/ok?added"), 1, None).await;
    let events = wait_for_events(&client, &topic, Duration::from_secs(10), |e| {
        e.iter().any(|s| s.event.website_id == added)
    })
    .await;
    let first = by_site(&events)[&added][0].event.checked_at;
    assert!(
        first - added_at < time::Duration::seconds(3),
        "first check after {}",
        first - added_at
    );

    // Changed regex: applies from the next check.
    sqlx::query("UPDATE websites SET up_regex = 'nothing like this' WHERE id = $1")
        .bind(added)
        .execute(&db.pool)
        .await
        .expect("update");
    let changed_at = OffsetDateTime::now_utc();
    let events = wait_for_events(&client, &topic, Duration::from_secs(10), |e| {
        e.iter()
            .any(|s| s.event.website_id == added && s.event.regex.is_some())
    })
    .await;
    let changed = by_site(&events)[&added]
        .iter()
        .find(|s| s.event.regex.is_some())
        .map(|s| s.event.clone())
        .expect("an event with the new regex");
    assert!(changed.checked_at - changed_at < time::Duration::seconds(3));
    assert_eq!(changed.regex_matched, Some(false));
    assert!(!changed.up);

    // Removed: no check starts 3 s after.
    db::delete_site(&db.pool, i64::from(added))
        .await
        .expect("delete");
    let removed_at = OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_secs(5)).await;
    checker.stop().await;
    let events = support::read_all(&client, &topic).await;
    let sites = by_site(&events);
    let late: Vec<_> = sites[&added]
        .iter()
        .filter(|s| s.event.checked_at > removed_at + time::Duration::seconds(3))
        .collect();
    assert!(late.is_empty(), "{late:?}");
    // The other site went on through all of it: every tick from the start to the stop
    // checked or counted as skipped, whatever the test's phases took. (A fixed count, or a
    // largest gap, would depend on how long they took and on the machine's load.)
    let steady_checks: Vec<_> = sites[&steady].iter().map(|s| s.event.checked_at).collect();
    assert!(
        steady_checks.len() >= 5,
        "the other site: {steady_checks:?}"
    );
    assert_ticks_accounted(
        &steady_checks,
        time::Duration::SECOND,
        skipped_ticks(&metrics),
        0,
    );
    let last = steady_checks.last().copied().expect("checks");
    assert!(
        last > removed_at + time::Duration::seconds(3),
        "the other site was no longer checked after the removal: last check {last}"
    );
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_cannot_be_created_is_one_clear_error() {
    let db = TestDb::migrated().await;
    let topic = random_topic();
    let mut config = checker_config(&db, kafka_config(&topic));
    // More replicas than the single test broker has.
    config.replication_factor = 3;
    let error = sitemon_checker::run(config, CancellationToken::new())
        .await
        .expect_err("cannot create");
    let message = error.to_string();
    assert!(message.contains(&topic), "{message}");
    assert!(message.contains("could not be created"), "{message}");
    assert!(!message.contains('\n'), "{message}");
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_again_with_fewer_partitions_gets_every_site_by_the_new_count() {
    let (db, topic, http, client) = fixture().await;
    let mut sites = Vec::new();
    for i in 0..12 {
        sites.push(add_site(&db, &http.url(&format!("/ok?{i}")), 1, None).await);
    }
    let mut config = checker_config(&db, kafka_config(&topic));
    config.partition_poll_every = Duration::from_secs(1);
    let checker = start_checker(config);
    let every_site = |events: &[Stored]| {
        let seen: HashSet<i32> = events.iter().map(|s| s.event.website_id).collect();
        sites.iter().all(|site| seen.contains(site))
    };
    let events = wait_for_events(&client, &topic, Duration::from_secs(30), every_site).await;
    assert!(every_site(&events), "every site checked on the first topic");

    sitemon_core::kafka::delete_topic(&client, &topic)
        .await
        .expect("deletes");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while sitemon_core::kafka::partition_count(&client, &topic)
        .await
        .expect("metadata")
        .is_some()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still there after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sitemon_core::kafka::create_topic(&client, &topic, 2, 1)
        .await
        .expect("creates the topic again, with 2 partitions");
    let recreated = tokio::time::Instant::now();

    // Within a few seconds every site's events land where Kafka's partitioner puts them for
    // two partitions; the checker keeps producing, so wait for every site.
    let events = wait_for_events(&client, &topic, Duration::from_secs(45), every_site).await;
    assert!(
        every_site(&events),
        "every site checked into the new topic within 45 s"
    );
    let late: Vec<_> = events
        .iter()
        .filter(|s| s.event.checked_at > OffsetDateTime::now_utc() - time::Duration::seconds(3))
        .collect();
    assert!(!late.is_empty(), "the checker goes on producing");
    for stored in &late {
        assert_eq!(
            stored.partition,
            partition_for_key(&stored.key, 2),
            "{stored:?}"
        );
    }
    assert!(
        events.iter().all(|s| s.partition < 2),
        "the new topic has two partitions"
    );
    tracing::info!(after = ?recreated.elapsed(), "every site reached the new topic");
    checker.stop().await;
    db.drop_database().await;
}

/// Each site's events sit in its partition in check order: read in offset order, as a
/// consumer reads them, never sorted by `checked_at` first (a sort would hide a reorder).
/// A long linger puts several checks of a site in each batch, so that the order within a
/// batch counts as well as the order of the batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sites_events_are_in_check_order_in_its_partition() {
    let (db, topic, http, client) = fixture().await;
    let mut sites = Vec::new();
    for i in 0..6 {
        sites.push(add_site(&db, &http.url(&format!("/ok?order{i}")), 1, None).await);
    }
    let mut config = checker_config(&db, kafka_config(&topic));
    config.linger = Duration::from_millis(2500);
    let checker = start_checker(config);
    let enough = |events: &[Stored]| {
        sites.iter().all(|site| {
            events
                .iter()
                .filter(|s| s.event.website_id == *site)
                .count()
                >= 6
        })
    };
    let events = wait_for_events(&client, &topic, Duration::from_secs(60), enough).await;
    checker.stop_within(Duration::from_secs(30)).await;
    assert!(enough(&events), "6 checks of every site within 60 s");

    // `read_all` returns each partition's records in offset order.
    for site in &sites {
        let mut seen = HashSet::new();
        let mut along_offsets: Vec<(i32, i64, OffsetDateTime)> = Vec::new();
        for stored in events.iter().filter(|s| s.event.website_id == *site) {
            // A batch the broker kept although the producer saw an error is sent again:
            // a repeat of a check already seen, not a reorder.
            if seen.insert(stored.event.check_id) {
                along_offsets.push((stored.partition, stored.offset, stored.event.checked_at));
            }
        }
        let partitions: HashSet<i32> = along_offsets.iter().map(|(p, _, _)| *p).collect();
        assert_eq!(partitions.len(), 1, "site {site} in one partition");
        for pair in along_offsets.windows(2) {
            assert!(
                pair[0].1 < pair[1].1 && pair[0].2 <= pair[1].2,
                "site {site}: the check at offset {} ({}) comes after the one at offset {} \
                 ({}):\n{along_offsets:?}",
                pair[1].1,
                pair[1].2,
                pair[0].1,
                pair[0].2
            );
        }
    }
    db.drop_database().await;
}

/// The linger gathers the events of that time into one produce request (the broker's load
/// follows the requests, not the events): ten sites a second on one partition with a 1 s
/// linger go in about one request a second, where sending each event on its own would take
/// ten. Counts only: `sitemon_checker_produce_requests_total` against the events produced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linger_sends_the_events_of_that_time_in_one_request() {
    let (db, topic, http, client) = fixture().await;
    sitemon_testkit::topic::create(&topic, 1).await;
    for i in 0..10 {
        add_site(&db, &http.url(&format!("/ok?linger{i}")), 1, None).await;
    }
    let mut config = checker_config(&db, kafka_config(&topic));
    config.linger = Duration::from_secs(1);
    let metrics = config.metrics.clone();
    let checker = start_checker(config);
    let events = wait_for_events(&client, &topic, Duration::from_secs(60), |e| e.len() >= 40).await;
    assert!(events.len() >= 40, "40 events within 60 s");
    checker.stop_within(Duration::from_secs(30)).await;
    let requests = counter(&metrics, "sitemon_checker_produce_requests_total");
    let produced = counter(&metrics, "sitemon_events_produced_total");
    assert!(produced >= 40, "{produced} events produced");
    assert!(
        requests >= 1 && requests * 4 <= produced,
        "{produced} events in {requests} produce requests: a 1 s linger should send about \
         ten events per request"
    );
    db.drop_database().await;
}

/// The body cap (default 1 MiB): a 5 MiB body is read up to the cap and the regex searched
/// in what was read; the check ends as usual, up or down by what the first MiB holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_first_mib_of_a_body_is_searched() {
    let (db, topic, http, client) = fixture().await;
    let cases = [
        ("early-mark", true),
        ("edge-in", true),
        ("edge-in-more", false),
        ("late-mark", false),
    ];
    let mut sites = Vec::new();
    for (i, (regex, found)) in cases.into_iter().enumerate() {
        let site = add_site(&db, &http.url(&format!("/big?{i}")), 2, Some(regex)).await;
        sites.push((site, regex, found));
    }
    let checker = start_checker(checker_config(&db, kafka_config(&topic)));
    let every_site = |events: &[Stored]| {
        let seen: HashSet<i32> = events.iter().map(|s| s.event.website_id).collect();
        sites.iter().all(|(site, _, _)| seen.contains(site))
    };
    let events = wait_for_events(&client, &topic, Duration::from_secs(30), every_site).await;
    checker.stop_within(Duration::from_secs(30)).await;
    assert!(every_site(&events), "every site checked within 30 s");
    let by = by_site(&events);
    for (site, regex, found) in sites {
        let e = &by[&site][0].event;
        assert_eq!(
            e.error, None,
            "{regex}: the check ends without error: {e:?}"
        );
        assert_eq!(e.status_code, Some(200), "{regex}");
        assert_eq!(
            e.regex_matched,
            Some(found),
            "{regex:?} {} in the first MiB",
            if found { "lies" } else { "does not lie" }
        );
        assert_eq!(e.up, found, "{regex}");
    }
    db.drop_database().await;
}
