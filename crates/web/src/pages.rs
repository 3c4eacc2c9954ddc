//! The pages, rendered on the server with maud (escaped by default): the overview `/`, the
//! site page `/sites/{id}`, the login form; and the vendored stylesheet and script.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use sitemon_core::dashboard::{self, RecentCheck};
use sitemon_core::incidents::IncidentFilter;
use sitemon_core::report::{self, SiteStatus};
use time::OffsetDateTime;

use crate::AppState;
use crate::error::{AppError, Format};
use crate::frame::{error_page, layout};
use crate::svg::{millis, percent, response_chart, uptime_bars, uptime_class};
use crate::view::{self, BAR_DAYS, OverviewRow, State as SiteState, mask_incident, site_id};

const HTML: Format = Format::Html;
/// Rows of the overview per page.
pub(crate) const PER_PAGE: usize = 100;

const CSS: &str = include_str!("../assets/sitemon.css");
const SCRIPT: &str = include_str!("../assets/sitemon.js");
const FAVICON: &str = include_str!("../assets/favicon.svg");

fn core(error: sitemon_core::Error) -> AppError {
    AppError::from_core(error, HTML)
}

fn page(title: &str, state: &AppState, body: Markup) -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        layout(title, state.token.is_some(), body),
    )
        .into_response()
}

/// `?q=&page=`.
#[derive(Debug, Deserialize)]
pub(crate) struct OverviewQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    page: usize,
}

/// "12 s ago", "5 min ago", "3 h ago", "2 d ago".
fn ago(at: OffsetDateTime, now: OffsetDateTime) -> String {
    let secs = (now - at).whole_seconds().max(0);
    match secs {
        0..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        3600..86_400 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn pill(state: SiteState) -> Markup {
    let text = match state {
        SiteState::Down => "Down",
        SiteState::Degraded => "Degraded",
        SiteState::Up => "Up",
        SiteState::Unknown => "No data",
    };
    html! { span class={ "pill " (state.word()) } { (text) } }
}

fn result(status: &SiteStatus) -> Markup {
    html! {
        @if let Some(kind) = &status.last_error_kind {
            span.error-kind { (kind) }
        } @else if let Some(code) = status.last_status_code {
            (code)
        } @else {
            "–"
        }
    }
}

fn uptime_cell(label: &str, uptime: Option<f64>) -> Markup {
    let (class, word) = uptime_class(uptime);
    html! {
        td.num data-label=(label) title=(word) {
            @match uptime {
                Some(u) => span class=(class) { (percent(u)) },
                None => span.none { "–" },
            }
        }
    }
}

fn tls(not_after: Option<OffsetDateTime>, now: OffsetDateTime) -> Markup {
    html! {
        @match not_after {
            Some(at) => {
                @let days = (at - now).whole_days();
                span class=(if days < 14 { "bad" } else if days < 30 { "fair" } else { "" })
                    title={ "certificate valid until " (rfc3339(at)) } {
                    @if days < 0 { "expired" } @else { (days) " d" }
                }
            }
            None => span.none { "–" },
        }
    }
}

fn overview_row(row: &OverviewRow, now: OffsetDateTime) -> Markup {
    let status = &row.day;
    let search = format!(
        "{} {}",
        row.name.as_deref().unwrap_or(""),
        status.url.to_lowercase()
    )
    .to_lowercase();
    html! {
        tr data-state=(row.state.word()) data-search=(search) {
            td.state { (pill(row.state)) }
            td.site {
                a href={ "/sites/" (status.id) } {
                    @if let Some(name) = &row.name { (name) } @else { (status.url) }
                }
                @if row.name.is_some() { div.url { (status.url) } }
            }
            td.last data-label="Last check" {
                @match status.last_checked_at {
                    Some(at) => time datetime=(rfc3339(at)) title=(rfc3339(at)) { (ago(at, now)) },
                    None => span.none { "never" },
                }
                " · " (result(status))
            }
            (uptime_cell("24h", status.uptime_pct))
            (uptime_cell("7d", row.uptime_7d))
            (uptime_cell("30d", row.uptime_30d))
            td.num data-label="p95" {
                @match status.p95_ms { Some(ms) => (millis(ms)), None => span.none { "–" } }
            }
            td.num data-label="TLS" { (tls(status.tls_cert_not_after, now)) }
            td.bars { (uptime_bars(&row.days)) }
        }
    }
}

/// `GET /`: every site, the down ones first.
pub(crate) async fn overview(
    State(state): State<AppState>,
    Query(query): Query<OverviewQuery>,
) -> Result<Response, AppError> {
    let page_no = query.page.min(100_000);
    let (rows, matching) = view::overview(&state.pool, state.urls, &query.q, page_no, PER_PAGE)
        .await
        .map_err(core)?;
    let now = OffsetDateTime::now_utc();
    let count = |s: SiteState| rows.iter().filter(|r| r.state == s).count();
    let pages = matching.div_ceil(PER_PAGE).max(1);
    let body = html! {
        section.toolbar {
            h1 { "Sites" }
            form.filter method="get" action="/" role="search" {
                label for="filter" class="sr-only" { "Filter sites by name or URL" }
                input #filter type="search" name="q" value=(query.q)
                    placeholder="Filter by name or URL" autocomplete="off";
            }
        }
        div #live {
            p.summary #summary {
                strong.bad { (count(SiteState::Down)) " down" } " · "
                strong.fair { (count(SiteState::Degraded)) " degraded" } " · "
                strong.good { (count(SiteState::Up)) " up" }
                @if count(SiteState::Unknown) > 0 { " · " (count(SiteState::Unknown)) " without checks" }
                " · " span #shown { (matching) " sites" }
            }
            @if rows.is_empty() {
                p.empty { "No site matches. Register one with " code { "sitemon add-site URL" } "." }
            } @else {
                table.sites {
                    thead {
                        tr {
                            th scope="col" { "State" }
                            th scope="col" { "Site" }
                            th scope="col" { "Last check" }
                            th.num scope="col" { abbr title="uptime over the last 24 hours" { "24 h" } }
                            th.num scope="col" { abbr title="uptime over the last 7 days" { "7 d" } }
                            th.num scope="col" { abbr title="uptime over the last 30 days" { "30 d" } }
                            th.num scope="col" { abbr title="95th percentile response time over 24 hours" { "p95" } }
                            th.num scope="col" { abbr title="days until the TLS certificate expires" { "TLS" } }
                            th scope="col" { "Last " (BAR_DAYS) " days" }
                        }
                    }
                    tbody data-sites="" {
                        @for row in &rows { (overview_row(row, now)) }
                    }
                }
            }
            @if pages > 1 {
                nav.pager aria-label="pages" {
                    @if page_no > 0 { a href={ "/?page=" (page_no - 1) "&q=" (query_value(&query.q)) } { "← previous" } }
                    span { "page " (page_no + 1) " of " (pages) }
                    @if page_no + 1 < pages { a href={ "/?page=" (page_no + 1) "&q=" (query_value(&query.q)) } { "next →" } }
                }
            }
        }
    };
    Ok(page("Sites", &state, body))
}

fn query_value(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// `?window=`.
#[derive(Debug, Deserialize)]
pub(crate) struct SiteQuery {
    window: Option<String>,
}

const WINDOWS: [(&str, u64); 3] = [("24h", 86_400), ("7d", 7 * 86_400), ("30d", 30 * 86_400)];

/// `GET /sites/{id}?window=24h|7d|30d`.
pub(crate) async fn site(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<SiteQuery>,
) -> Result<Response, AppError> {
    let id = site_id(&id, HTML)?;
    let window_name = query.window.as_deref().unwrap_or("24h");
    let Some(&(window_name, window_secs)) = WINDOWS.iter().find(|(n, _)| *n == window_name) else {
        return Err(AppError::new(
            StatusCode::BAD_REQUEST,
            "window: one of 24h, 7d, 30d",
            HTML,
        ));
    };
    let window = Duration::from_secs(window_secs);
    let pool = &state.pool;
    let site = sitemon_core::db::get_site(pool, id.into())
        .await
        .map_err(core)?;
    let now = OffsetDateTime::now_utc();
    let every = Duration::from_secs(3600);
    let incidents_filter = IncidentFilter {
        site: Some(id),
        limit: Some(20),
        ..IncidentFilter::default()
    };
    let ids = [id];
    let (statuses, history, days, checks, incidents) = tokio::try_join!(
        report::site_statuses_of(pool, window, &ids),
        report::site_history(pool, id, window, every),
        dashboard::daily_uptime(pool, &ids, BAR_DAYS, now),
        dashboard::recent_checks(pool, id, 50),
        sitemon_core::incidents::incidents(pool, &incidents_filter),
    )
    .map_err(core)?;
    let Some(mut status) = statuses.0.into_iter().find(|s| s.id == id) else {
        return Err(core(sitemon_core::Error::UnknownSite { id: id.into() }));
    };
    status.url = state.urls.show(&status.url);
    let site_state = SiteState::of(&status);
    let days = days.get(&id).cloned().unwrap_or_default();
    let title = site
        .settings
        .name
        .clone()
        .unwrap_or_else(|| status.url.clone());
    let from = now - window;
    let incidents: Vec<_> = incidents
        .into_iter()
        .map(|i| mask_incident(i, state.urls))
        .collect();
    let body = html! {
        section.site-head {
            p.crumbs { a href="/" { "← all sites" } }
            h1 { (pill(site_state)) " " span #site-title { (title) } }
            p.url #site-url { (status.url) }
            nav.windows aria-label="window" {
                @for (name, _) in WINDOWS {
                    @if name == window_name {
                        a href={ "?window=" (name) } aria-current="page" { (name) }
                    } @else {
                        a href={ "?window=" (name) } { (name) }
                    }
                }
            }
        }
        div #live {
            section.cards {
                div.card { div.k { "Uptime " (window_name) } div.v { @match status.uptime_pct { Some(u) => (percent(u)), None => "–" } } }
                div.card { div.k { "p50" } div.v { @match status.p50_ms { Some(ms) => (millis(ms)), None => "–" } } }
                div.card { div.k { "p95" } div.v { @match status.p95_ms { Some(ms) => (millis(ms)), None => "–" } } }
                div.card { div.k { "p99" } div.v { @match status.p99_ms { Some(ms) => (millis(ms)), None => "–" } } }
                div.card { div.k { "Checks" } div.v { (status.checks) } }
                div.card { div.k { "Last check" } div.v {
                    @match status.last_checked_at { Some(at) => (ago(at, now)), None => "never" }
                    " · " (result(&status))
                } }
                div.card { div.k { "TLS certificate" } div.v { (tls(status.tls_cert_not_after, now)) } }
            }
            section.panel {
                h2 { "Response time, " (window_name) }
                p.legend { span.key.p50 {} "p50 " span.key.p95 {} "p95 (per hour)" }
                (response_chart(&history, from, now, every.as_secs() as i64))
            }
            section.panel {
                h2 { "Uptime, last " (BAR_DAYS) " days" }
                div.bars-wide { (uptime_bars(&days)) }
            }
            section.panel {
                h2 { "Timing of the latest checks" }
                (phases(&checks[..checks.len().min(10)]))
            }
            section.panel {
                h2 { "Last " (checks.len()) " checks" }
                (check_table(&checks, &state))
            }
            section.panel {
                h2 { "Incidents" }
                @if incidents.is_empty() {
                    p.empty { "No incident." }
                } @else {
                    table.list {
                        thead { tr { th { "Opened" } th { "State" } th { "Duration" } th { "Locations" } th { "First error" } } }
                        tbody {
                            @for incident in &incidents {
                                tr {
                                    td { time datetime=(rfc3339(incident.opened_at)) { (rfc3339(incident.opened_at)) } }
                                    td { @if incident.resolved_at.is_some() { "resolved" } @else { strong.bad { "open" } } }
                                    td { (humantime::format_duration(Duration::from_secs(incident.duration_secs.max(0) as u64))) }
                                    td { (incident.locations.join(", ")) }
                                    td { (incident.first_error.as_deref().unwrap_or("–")) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&title, &state, body))
}

/// The phases of the latest checks, a stacked bar each and the figures.
fn phases(checks: &[RecentCheck]) -> Markup {
    let longest = checks
        .iter()
        .filter_map(|c| c.timings_ms.map(|t| t.total))
        .fold(1.0_f64, f64::max);
    html! {
        @if checks.is_empty() {
            p.empty { "No check yet." }
        } @else {
            table.list.phases {
                thead { tr { th { "Check" } th.num { "DNS" } th.num { "Connect" } th.num { "TLS" } th.num { "TTFB" } th.num { "Total" } th { "" } } }
                tbody {
                    @for check in checks {
                        @let t = check.timings_ms.unwrap_or_default();
                        tr {
                            td { time datetime=(rfc3339(check.checked_at)) { (short(check.checked_at)) } }
                            @for phase in [t.dns, t.connect, t.tls, t.ttfb] {
                                td.num { @match phase { Some(ms) => (millis(ms)), None => "–" } }
                            }
                            td.num { (millis(t.total)) }
                            td.stack {
                                svg viewBox="0 0 200 10" width="200" height="10" role="img" aria-hidden="true" {
                                    @for (class, x, w) in stack(&t, longest) {
                                        rect class=(class) x=(format!("{x:.1}")) width=(format!("{w:.1}")) height="10" {}
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The phases of a check as (class, x, width) on a 200-wide bar where `longest` fills it.
fn stack(t: &sitemon_core::ProbeTimings, longest: f64) -> Vec<(&'static str, f64, f64)> {
    let mut x = 0.0;
    [
        ("dns", t.dns),
        ("connect", t.connect),
        ("tls", t.tls),
        ("ttfb", t.ttfb),
    ]
    .into_iter()
    .map(|(class, phase)| {
        let w = phase.unwrap_or(0.0).max(0.0) / longest * 200.0;
        let at = x;
        x += w;
        (class, at, w)
    })
    .collect()
}

fn short(at: OffsetDateTime) -> String {
    at.format(time::macros::format_description!(
        "[month repr:short] [day] [hour]:[minute]:[second]"
    ))
    .unwrap_or_default()
}

fn check_table(checks: &[RecentCheck], state: &AppState) -> Markup {
    html! {
        @if checks.is_empty() {
            p.empty { "No check yet." }
        } @else {
            table.list.checks {
                thead { tr { th { "When" } th { "Location" } th { "Result" } th.num { "Status" } th.num { "Time" } th { "Error" } } }
                tbody {
                    @for check in checks {
                        @let s = match (check.up, check.degraded) {
                            (Some(false), _) => SiteState::Down,
                            (Some(true), true) => SiteState::Degraded,
                            (Some(true), false) => SiteState::Up,
                            (None, _) => SiteState::Unknown,
                        };
                        tr {
                            td { time datetime=(rfc3339(check.checked_at)) { (short(check.checked_at)) } }
                            td { (check.location.as_deref().unwrap_or("–")) }
                            td { (pill(s)) }
                            td.num { @match check.status_code { Some(c) => (c), None => "–" } }
                            td.num { @match check.response_time_ms { Some(ms) => (millis(ms)), None => "–" } }
                            td {
                                @if let Some(kind) = &check.error_kind { span.error-kind { (kind) } " " }
                                @if let Some(message) = &check.error_message {
                                    span.message { (state.urls.in_text(message)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /login`.
pub(crate) async fn login_form(State(state): State<AppState>) -> Response {
    if state.token.is_none() {
        return Redirect::to("/").into_response();
    }
    login_page(StatusCode::OK, None)
}

fn login_page(status: StatusCode, error: Option<&str>) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        layout(
            "Log in",
            false,
            html! {
                section.login {
                    h1 { "Log in" }
                    @if let Some(error) = error { p.bad role="alert" { (error) } }
                    form method="post" action="/login" {
                        label for="token" { "Token (SITEMON_UI_TOKEN)" }
                        input #token type="password" name="token" autocomplete="current-password" required;
                        button type="submit" { "Log in" }
                    }
                }
            },
        ),
    )
        .into_response()
}

/// The login form's fields.
#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    token: String,
}

/// `POST /login`: the right token sets the session cookie.
pub(crate) async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    let Some(token) = &state.token else {
        return Redirect::to("/").into_response();
    };
    if !token.matches(form.token.trim()) {
        return login_page(StatusCode::UNAUTHORIZED, Some("That is not the token."));
    }
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    (
        [(header::SET_COOKIE, token.set_cookie(secure))],
        Redirect::to("/"),
    )
        .into_response()
}

/// `POST /logout`: forgets the session cookie.
pub(crate) async fn logout() -> Response {
    (
        [(
            header::SET_COOKIE,
            format!(
                "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
                crate::auth::COOKIE
            ),
        )],
        Redirect::to("/login"),
    )
        .into_response()
}

/// `GET /assets/sitemon.css`.
pub(crate) async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

/// `GET /assets/sitemon.js`.
pub(crate) async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        SCRIPT,
    )
        .into_response()
}

/// `GET /assets/favicon.svg` (and `/favicon.ico`, where browsers look by themselves).
pub(crate) async fn favicon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        FAVICON,
    )
        .into_response()
}

/// Anything else: 404.
pub(crate) async fn not_found(uri: axum::http::Uri) -> Response {
    let path = uri.path();
    let message = "No such page.";
    if path.starts_with("/api/") {
        return AppError::new(StatusCode::NOT_FOUND, message, Format::Json).into_response();
    }
    (
        StatusCode::NOT_FOUND,
        error_page(StatusCode::NOT_FOUND, message),
    )
        .into_response()
}
