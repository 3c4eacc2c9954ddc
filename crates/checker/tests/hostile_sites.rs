//! Issue 21 from the checker's side, against servers on loopback: a site's credentials and its
//! body go to its own origin only (a second origin is 127.0.0.2, another port, or http after
//! https), a URL's `user:password@` is sent as Basic auth and nowhere else, and the
//! `--deny-cidr` networks are never connected to.

mod support;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use sitemon_checker::config::parse_cidr;
use sitemon_core::{CheckEvent, ErrorKind, Method, NewSite, SiteSettings, db};
use sitemon_testkit::http::TestServer;
use sitemon_testkit::kafka_config;
use support::{by_site, checker_config, fixture, start_checker, wait_for_events};

/// The credential headers every site below sends, in the case a user might write them; the
/// values are what must never reach another origin.
const CREDENTIAL_HEADERS: [(&str, &str); 3] = [
    ("AUTHORIZATION", "Bearer s3cret-token"),
    ("proxy-authorization", "Basic cHJveHktczNjcmV0"),
    ("Cookie", "session=c00kie-s3cret"),
];

/// A site header that is no credential: kept on every hop (README).
const API_KEY: (&str, &str) = ("X-Api-Key", "k3y-kept");

/// `user:p@ss` as a URL writes it, and as Basic auth sends it.
const USERINFO: &str = "user:p%40ss";
const BASIC: &str = "authorization: Basic dXNlcjpwQHNz";

/// Registers a site (interval 2 s) with the credential headers, `change` applied last.
async fn site(
    db: &sitemon_testkit::TestDb,
    url: &str,
    change: impl FnOnce(&mut SiteSettings),
) -> i32 {
    let mut settings = SiteSettings::new(url);
    settings.interval = 2;
    for (name, value) in CREDENTIAL_HEADERS.iter().chain([&API_KEY]) {
        settings.headers.insert((*name).into(), (*value).into());
    }
    change(&mut settings);
    let site = NewSite::from_settings(settings).expect("valid settings");
    db::insert_site(&db.pool, &site).await.expect("insert")
}

/// The head of the first request with `method` for `path` the server saw, lower-cased.
fn head(server: &TestServer, method: &str, path: &str) -> String {
    server
        .requests_with(method, path)
        .first()
        .unwrap_or_else(|| panic!("{} saw no {method} {path}", server.addr))
        .to_ascii_lowercase()
}

fn assert_credentials(head: &str, sent: bool) {
    for (name, value) in CREDENTIAL_HEADERS {
        let line = format!(
            "{}: {}\r\n",
            name.to_ascii_lowercase(),
            value.to_ascii_lowercase()
        );
        assert_eq!(head.contains(&line), sent, "{name} sent={sent}? {head}");
        if !sent {
            assert!(!head.contains(&name.to_ascii_lowercase()), "{head}");
        }
    }
    let api_key = format!("x-api-key: {}\r\n", API_KEY.1);
    assert!(
        head.contains(&api_key),
        "other headers go on every hop: {head}"
    );
}

/// Waits for one event of each of `sites` (40 s at most) and stops the checker.
async fn first_events(
    client: &rskafka::client::Client,
    topic: &str,
    checker: support::RunningChecker,
    sites: &[i32],
) -> impl Fn(i32) -> CheckEvent + use<> {
    let events = wait_for_events(client, topic, Duration::from_secs(40), |events| {
        let seen: HashSet<i32> = events.iter().map(|s| s.event.website_id).collect();
        sites.iter().all(|id| seen.contains(id))
    })
    .await;
    checker.stop_within(Duration::from_secs(30)).await;
    let by_site = by_site(&events);
    move |id| {
        by_site
            .get(&id)
            .unwrap_or_else(|| panic!("no event for site {id} within 40 s"))[0]
            .event
            .clone()
    }
}

fn error_of(event: &CheckEvent) -> (ErrorKind, String) {
    let error = event.error.as_ref().unwrap_or_else(|| panic!("{event:?}"));
    (error.kind, error.message.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_bodies_go_to_the_sites_origin_only() {
    let (db, topic, a, client) = fixture().await;
    // Another origin on another loopback address, one on another port, and https.
    let b = TestServer::http_on(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))).await;
    let port = TestServer::http().await;
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let tls = TestServer::https(
        &fixtures.join("self-signed.pem"),
        &fixtures.join("self-signed.key"),
    )
    .await;
    let hop = |server: &TestServer, status: u16, location: &str| {
        server.url(&format!("/hop/{status}?{location}"))
    };

    let same = site(&db, &hop(&a, 302, "/ok?same"), |_| {}).await;
    let cross = site(&db, &hop(&a, 302, &b.url("/ok?cross")), |_| {}).await;
    let other_port = site(&db, &hop(&a, 301, &port.url("/ok?port")), |_| {}).await;
    // a → b → a: once the chain has left the site's origin, nothing comes back with it.
    let back = site(
        &db,
        &hop(&a, 302, &hop(&b, 302, &a.url("/ok?back"))),
        |_| {},
    )
    .await;
    // https → http on the same host name.
    let downgrade = site(
        &db,
        &tls.https_url(&format!(
            "/hop/302?http://localhost:{}/ok?downgrade",
            a.addr.port()
        )),
        |s| s.tls_verify = false,
    )
    .await;
    // A 307 repeats the POST and its body on the site's origin only.
    let post = |s: &mut SiteSettings| {
        s.method = Method::Post;
        s.body = Some("s3cret-body".into());
    };
    let same_307 = site(&db, &hop(&a, 307, "/post-only?same-307"), post).await;
    let cross_307 = site(&db, &hop(&a, 307, &b.url("/post-only?cross-307")), post).await;
    let cross_308_no_body = site(&db, &hop(&a, 308, &b.url("/ok?cross-308")), |_| {}).await;
    // A URL's userinfo: Basic auth on the site's origin, never in the Host or request line.
    let with_userinfo = |path: &str| format!("http://{USERINFO}@{}{path}", a.addr);
    let userinfo = site(&db, &with_userinfo("/ok?userinfo"), |s| s.headers.clear()).await;
    let userinfo_same = site(&db, &with_userinfo("/hop/302?/ok?userinfo-same"), |s| {
        s.headers.clear()
    })
    .await;
    let userinfo_cross = site(
        &db,
        &with_userinfo(&format!("/hop/302?{}", b.url("/ok?userinfo-cross"))),
        |s| s.headers.clear(),
    )
    .await;
    // The site's own Authorization header wins over the userinfo.
    let header_wins = site(&db, &with_userinfo("/ok?header-wins"), |_| {}).await;
    let all = [
        same,
        cross,
        other_port,
        back,
        downgrade,
        same_307,
        cross_307,
        cross_308_no_body,
        userinfo,
        userinfo_same,
        userinfo_cross,
        header_wins,
    ];

    let checker = start_checker(checker_config(&db, kafka_config(&topic)));
    let first = first_events(&client, &topic, checker, &all).await;
    for id in all {
        if id != cross_307 {
            let e = first(id);
            assert!(e.up, "{e:?}");
        }
    }

    // The same origin keeps them; another host, another port, a way back, or http after
    // https do not.
    assert_credentials(&head(&a, "GET", "/ok?same"), true);
    assert_credentials(&head(&b, "GET", "/ok?cross"), false);
    assert_credentials(&head(&port, "GET", "/ok?port"), false);
    assert_credentials(&head(&a, "GET", "/ok?back"), false);
    assert_credentials(&head(&a, "GET", "/ok?downgrade"), false);
    // The first hop had them all.
    assert_credentials(
        &head(&a, "GET", &format!("/hop/302?{}", b.url("/ok?cross"))),
        true,
    );

    // 307 on the same origin: method, body and credentials again.
    let again = head(&a, "POST", "/post-only?same-307");
    assert!(again.ends_with("\r\n\r\ns3cret-body"), "{again}");
    assert_credentials(&again, true);
    // 307 to another origin: the check fails, saying why, and nothing reaches b.
    let (kind, message) = error_of(&first(cross_307));
    assert_eq!(kind, ErrorKind::Http, "{message}");
    assert!(message.contains("307"), "{message}");
    assert!(message.contains("another origin"), "{message}");
    assert!(
        b.requests_with("POST", "/post-only?cross-307").is_empty()
            && b.requests_for("/post-only?cross-307").is_empty(),
        "nothing of a cross-origin 307 reaches the other origin"
    );
    // A 308 of a GET (no body) to another origin is simply followed, without credentials.
    assert_eq!(first(cross_308_no_body).redirects, 1);
    assert_credentials(&head(&b, "GET", "/ok?cross-308"), false);

    // Userinfo: Basic auth of the decoded `user:p@ss`; the Host and the request line without it.
    for path in ["/ok?userinfo", "/ok?userinfo-same"] {
        let raw = &a.requests_for(path)[0];
        assert!(raw.contains(&format!("{BASIC}\r\n")), "{raw}");
        let seen = head(&a, "GET", path);
        assert!(
            seen.starts_with(&format!("get {path} http/1.1\r\n")),
            "{seen}"
        );
        assert!(
            seen.contains(&format!("\r\nhost: {}\r\n", a.addr)),
            "{seen}"
        );
        assert!(!seen.contains("p%40ss") && !seen.contains("p@ss"), "{seen}");
        assert!(!seen.contains("user:"), "{seen}");
    }
    let seen = head(&b, "GET", "/ok?userinfo-cross");
    assert!(!seen.contains("authorization"), "{seen}");
    let seen = head(&a, "GET", "/ok?header-wins");
    assert_credentials(&seen, true);
    assert_eq!(
        seen.matches("authorization:").count(),
        2,
        "and proxy-: {seen}"
    );
    assert!(!seen.contains("basic dxnlcjpwqhnz"), "{seen}");

    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_networks_are_never_connected_to() {
    let (db, topic, a, client) = fixture().await;
    let denied = TestServer::http_on(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))).await;
    let allowed = TestServer::http_on(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3))).await;

    let direct = site(&db, &denied.url("/ok?direct"), |_| {}).await;
    let redirected = site(
        &db,
        &a.url(&format!("/hop/302?{}", denied.url("/ok?redirected"))),
        |_| {},
    )
    .await;
    let elsewhere = site(&db, &allowed.url("/ok?elsewhere"), |_| {}).await;

    let mut config = checker_config(&db, kafka_config(&topic));
    config.deny_cidrs = vec![
        parse_cidr("127.0.0.2/32").expect("cidr"),
        parse_cidr("169.254.0.0/16").expect("cidr"),
    ];
    let checker = start_checker(config);
    let first = first_events(&client, &topic, checker, &[direct, redirected, elsewhere]).await;

    for id in [direct, redirected] {
        let e = first(id);
        let (kind, message) = error_of(&e);
        assert_eq!(kind, ErrorKind::Connect, "{message}");
        assert!(
            message.contains("resolves only to denied addresses (127.0.0.2)"),
            "{message}"
        );
        assert!(!e.up);
    }
    // The redirect's first hop was made; the denied hop was not.
    assert_eq!(first(redirected).redirects, 1);
    assert!(
        !a.requests_for(&format!("/hop/302?{}", denied.url("/ok?redirected")))
            .is_empty()
    );
    assert_eq!(
        denied.connections(),
        0,
        "a denied address is never connected to"
    );
    let e = first(elsewhere);
    assert!(e.up, "{e:?}");

    db.drop_database().await;
}
