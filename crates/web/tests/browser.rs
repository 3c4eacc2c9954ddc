//! The dashboard in a real browser: Debian's chromium, driven through chromedriver
//! (WebDriver, with `fantoccini`), loads the overview and a site page of a seeded database.
//!
//! Checked: the down site is listed first and marked down in text; 90 bars per site and the
//! chart's SVG are there; the filter box filters; the browser logged no console error; the
//! injected `"><script>` URL and name show as text and run nothing. Screenshots of both
//! pages, and one of the overview at a phone's width (where nothing may be wider than the
//! screen), go to `target/screenshots/`, or to `SITEMON_SCREENSHOTS_DIR`:
//! `SITEMON_SCREENSHOTS_DIR=docs/screenshots` refreshes the ones the README shows.
//!
//! `scripts/services up` installs chromium and chromium-driver. Without them this test says
//! so loudly and passes, except in CI (`CI` set), where it fails.

mod common;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Server, seed};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt as _;
use serde_json::{Value, json};
use sitemon_testkit::TestDb;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The browser's console, through chromedriver's log endpoint (`goog:loggingPrefs`).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({ "type": "browser" }).to_string()),
        )
    }
}

/// The console's entries at level SEVERE (errors, refused scripts, failed loads).
async fn console_errors(client: &Client) -> Vec<String> {
    let entries = client
        .issue_cmd(BrowserLog)
        .await
        .expect("the browser's log");
    entries
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Whether the browser is installed; if not, says so loudly, and fails in CI.
fn browser_installed() -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let message = format!(
        "THE BROWSER TEST DID NOT RUN: {} missing; `scripts/services up` installs Debian's \
         chromium and chromium-driver",
        missing.join(" and ")
    );
    assert!(
        std::env::var_os("CI").is_none(),
        "{message} (CI is set: failing)"
    );
    eprintln!("\n\n!!!!! {message} !!!!!\n");
    false
}

/// chromedriver on a free port, killed when dropped.
async fn chromedriver() -> (tokio::process::Child, String) {
    let port = sitemon_testkit::http::free_port().port();
    let child = tokio::process::Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver starts");
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "chromedriver did not listen on {port} within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (child, format!("http://127.0.0.1:{port}"))
}

async fn browser(webdriver: &str) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1360,1000", "--hide-scrollbars"],
        }),
    );
    capabilities.insert("goog:loggingPrefs".to_owned(), json!({ "browser": "ALL" }));
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    tokio::time::timeout(
        Duration::from_secs(60),
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(webdriver),
    )
    .await
    .expect("chromium starts within 60 s")
    .expect("a WebDriver session")
}

/// Runs `script` (a function body returning a value) in the page.
async fn eval(client: &Client, script: &str) -> Value {
    client
        .execute(script, Vec::new())
        .await
        .unwrap_or_else(|e| panic!("{script}: {e}"))
}

/// Waits at most 10 s for `script` to return true.
async fn wait_until(client: &Client, script: &str) {
    let started = Instant::now();
    while eval(client, script).await != json!(true) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not true within 10 s: {script}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn screenshot_path(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    match std::env::var_os("SITEMON_SCREENSHOTS_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target/screenshots"),
    }
    .join(name)
}

async fn full_page_screenshot(client: &Client, name: &str) {
    let height = eval(client, "return document.documentElement.scrollHeight;")
        .await
        .as_u64()
        .unwrap_or(1000)
        .clamp(600, 4000) as u32;
    client
        .set_window_size(1360, height + 100)
        .await
        .expect("resizes");
    let png = client.screenshot().await.expect("a screenshot");
    let path = screenshot_path(name);
    std::fs::create_dir_all(path.parent().expect("a folder")).expect("the screenshots' folder");
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[tokio::test]
async fn the_dashboard_works_in_chromium() {
    if !browser_installed() {
        return;
    }
    let db = TestDb::migrated().await;
    let sites = seed(&db.pool).await;
    // URLs masked, as by default (the screenshots show that); a second server below shows
    // them whole, so that the injected URL reaches the page and only escaping holds it.
    let server = Server::start(&db, |_| {}).await;
    let (_driver, webdriver) = chromedriver().await;
    let client = browser(&webdriver).await;

    let checked = AssertUnwindSafe(check_pages(&client, &db, &server, sites))
        .catch_unwind()
        .await;
    // The browser goes whatever happened: a failed check must not leave chromium running.
    let closed = tokio::time::timeout(Duration::from_secs(30), client.close()).await;
    if let Err(panic) = checked {
        std::panic::resume_unwind(panic);
    }
    closed
        .expect("the browser closes within 30 s")
        .expect("the browser closes");
    server.stop().await;
    db.drop_database().await;
}

/// Everything the test checks in the browser, on `server` (URLs masked) and on a second
/// server of its own that shows them whole.
async fn check_pages(client: &Client, db: &TestDb, server: &Server, sites: common::Seeded) {
    client
        .goto(&server.url("/"))
        .await
        .expect("the overview loads");
    let rows = client
        .find_all(Locator::Css("tbody[data-sites] tr"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 5);
    let first = rows[0].text().await.expect("text");
    assert!(
        first.contains("DOWN"),
        "the first row is marked down in text: {first}"
    );
    assert!(
        first.contains("127.0.0.1:9/down"),
        "the down site first: {first}"
    );
    // 90 bars a site, their figures on hover.
    let bars = eval(
        client,
        "return [...document.querySelectorAll('tbody tr')].map(r => r.querySelectorAll('svg.bars rect').length);",
    )
    .await;
    assert_eq!(bars, json!([90, 90, 90, 90, 90]));
    // The injection shows as text and ran nothing.
    let injected = eval(client, "return window.__sitemonInjected === undefined;").await;
    assert_eq!(injected, json!(true), "the injected script ran");
    let body_text = client
        .find(Locator::Css("body"))
        .await
        .expect("body")
        .text()
        .await
        .expect("text");
    assert!(body_text.contains("\"><img src=x onerror=\"window.__sitemonInjected=2\">"));
    assert_eq!(
        eval(
            client,
            "return document.querySelectorAll('main script, main img').length;"
        )
        .await,
        json!(0),
        "no element came from site data"
    );

    // The filter box filters as one types.
    let filter = client
        .find(Locator::Id("filter"))
        .await
        .expect("the filter box");
    filter.send_keys("slow").await.expect("types");
    wait_until(
        client,
        "return [...document.querySelectorAll('tbody tr')].filter(r => !r.hidden).length === 1;",
    )
    .await;
    let visible = eval(
        client,
        "return [...document.querySelectorAll('tbody tr')].filter(r => !r.hidden).map(r => r.innerText).join();",
    )
    .await;
    assert!(
        visible.as_str().is_some_and(|t| t.contains("Slow API")),
        "{visible}"
    );
    // Cleared: every row again.
    eval(client, "const f = document.getElementById('filter'); f.value = ''; f.dispatchEvent(new Event('input')); return true;").await;
    wait_until(
        client,
        "return [...document.querySelectorAll('tbody tr')].every(r => !r.hidden);",
    )
    .await;
    // The page refreshes itself in place (the script replaces #live): mark it and wait.
    eval(
        client,
        "document.getElementById('live').dataset.old = '1'; return true;",
    )
    .await;
    let started = Instant::now();
    while eval(
        client,
        "return document.getElementById('live').dataset.old === '1';",
    )
    .await
        == json!(true)
    {
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "no refresh within 25 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        eval(
            client,
            "return document.querySelectorAll('tbody tr').length;"
        )
        .await,
        json!(5)
    );
    assert_eq!(
        eval(
            client,
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;"
        )
        .await,
        json!(true),
        "the overview is wider than the window"
    );
    full_page_screenshot(client, "overview.png").await;
    let errors = console_errors(client).await;
    assert!(
        errors.is_empty(),
        "console errors on the overview: {errors:#?}"
    );

    // A phone's width: nothing wider than the screen.
    client.set_window_size(390, 844).await.expect("resizes");
    wait_until(
        client,
        "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
    )
    .await;
    let png = client.screenshot().await.expect("a screenshot");
    std::fs::write(screenshot_path("overview-phone.png"), png).expect("a phone screenshot");

    client.set_window_size(1360, 1000).await.expect("resizes");
    client
        .goto(&server.url(&format!("/sites/{}", sites.shop)))
        .await
        .expect("the site page loads");
    assert_eq!(
        eval(
            client,
            "return document.querySelectorAll('svg.chart path.p95').length;"
        )
        .await,
        json!(1)
    );
    assert_eq!(
        eval(
            client,
            "return document.querySelectorAll('svg.bars rect').length;"
        )
        .await,
        json!(90)
    );
    let title = client
        .find(Locator::Id("site-title"))
        .await
        .expect("title")
        .text()
        .await
        .expect("text");
    assert_eq!(title, "Shop");
    full_page_screenshot(client, "site.png").await;
    let errors = console_errors(client).await;
    assert!(
        errors.is_empty(),
        "console errors on the site page: {errors:#?}"
    );

    // URLs whole: the injected one is on the page, as text.
    let full = Server::start(db, |c| c.show_full_urls = true).await;
    client.set_window_size(1360, 1000).await.expect("resizes");
    client
        .goto(&full.url("/"))
        .await
        .expect("the overview loads");
    let body_text = client
        .find(Locator::Css("body"))
        .await
        .expect("body")
        .text()
        .await
        .expect("text");
    assert!(
        body_text.contains("\"><script>window.__sitemonInjected=1</script>"),
        "the injected URL is shown as text"
    );
    assert_eq!(
        eval(client, "return window.__sitemonInjected === undefined;").await,
        json!(true),
        "the injected script ran"
    );
    assert_eq!(
        eval(
            client,
            "return document.querySelectorAll('main script, main img').length;"
        )
        .await,
        json!(0),
        "no element came from site data"
    );
    client
        .goto(&full.url(&format!("/sites/{}", sites.injected)))
        .await
        .expect("the injected site's page loads");
    assert_eq!(
        eval(client, "return window.__sitemonInjected === undefined;").await,
        json!(true),
        "the injected script ran on its site page"
    );
    let url = client
        .find(Locator::Id("site-url"))
        .await
        .expect("url")
        .text()
        .await
        .expect("text");
    assert_eq!(url, common::INJECTED_URL);
    let errors = console_errors(client).await;
    assert!(
        errors.is_empty(),
        "console errors on the injected site's page: {errors:#?}"
    );

    full.stop().await;
}
