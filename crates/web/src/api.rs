//! `/api/v1/...`: the same numbers as the pages, in JSON (see `docs/api.md`).

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sitemon_core::dashboard::{self, DayUptime, RecentCheck};
use sitemon_core::incidents::{IncidentFilter, IncidentView};
use sitemon_core::report::{self, HistoryBucket};
use time::OffsetDateTime;

use crate::AppState;
use crate::error::{AppError, Format};
use crate::view::{self, BAR_DAYS, MAX_BUCKETS, SiteJson, duration_param, mask_incident, site_id};

const JSON: Format = Format::Json;

fn core(error: sitemon_core::Error) -> AppError {
    AppError::from_core(error, JSON)
}

/// `?window=`.
#[derive(Debug, Deserialize)]
pub(crate) struct WindowQuery {
    window: Option<String>,
}

impl WindowQuery {
    fn window(&self) -> Result<Duration, AppError> {
        duration_param("window", self.window.as_deref().unwrap_or("24h"), JSON)
    }
}

/// The answer of `/api/v1/sites`.
#[derive(Debug, Serialize)]
struct Sites {
    window_secs: u64,
    #[serde(with = "time::serde::rfc3339")]
    generated_at: OffsetDateTime,
    sites: Vec<SiteJson>,
}

/// `GET /api/v1/sites?window=24h`: every site's status over the window.
pub(crate) async fn sites(
    State(state): State<AppState>,
    Query(query): Query<WindowQuery>,
) -> Result<Response, AppError> {
    let window = query.window()?;
    let sites = view::statuses(&state.pool, window, state.urls, None)
        .await
        .map_err(core)?;
    Ok(Json(Sites {
        window_secs: window.as_secs(),
        generated_at: OffsetDateTime::now_utc(),
        sites,
    })
    .into_response())
}

/// The answer of `/api/v1/sites/{id}`.
#[derive(Debug, Serialize)]
struct Site {
    window_secs: u64,
    #[serde(flatten)]
    site: SiteJson,
    days: Vec<DayUptime>,
}

/// `GET /api/v1/sites/{id}?window=24h`: one site's status over the window and its last 90
/// days of uptime.
pub(crate) async fn site(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<WindowQuery>,
) -> Result<Response, AppError> {
    let id = site_id(&id, JSON)?;
    let window = query.window()?;
    let site = view::statuses(&state.pool, window, state.urls, Some(&[id]))
        .await
        .map_err(core)?
        .into_iter()
        .find(|s| s.status.id == id)
        .ok_or_else(|| core(sitemon_core::Error::UnknownSite { id: id.into() }))?;
    let mut days = dashboard::daily_uptime(&state.pool, &[id], BAR_DAYS, OffsetDateTime::now_utc())
        .await
        .map_err(core)?;
    Ok(Json(Site {
        window_secs: window.as_secs(),
        site,
        days: days.remove(&id).unwrap_or_default(),
    })
    .into_response())
}

/// `?since=&every=`.
#[derive(Debug, Deserialize)]
pub(crate) struct HistoryQuery {
    since: Option<String>,
    every: Option<String>,
}

/// The answer of `/api/v1/sites/{id}/history`.
#[derive(Debug, Serialize)]
struct History {
    site: i32,
    since_secs: u64,
    every_secs: u64,
    buckets: Vec<HistoryBucket>,
}

/// `GET /api/v1/sites/{id}/history?since=24h&every=1h`: core's `site_history`.
pub(crate) async fn history(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> Result<Response, AppError> {
    let id = site_id(&id, JSON)?;
    let since = duration_param("since", query.since.as_deref().unwrap_or("24h"), JSON)?;
    let every = duration_param("every", query.every.as_deref().unwrap_or("1h"), JSON)?;
    if since.as_secs() / every.as_secs() > MAX_BUCKETS {
        return Err(AppError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "more than {MAX_BUCKETS} buckets: ask for a longer `every` or a shorter `since`"
            ),
            JSON,
        ));
    }
    let buckets = report::site_history(&state.pool, id, since, every)
        .await
        .map_err(core)?;
    Ok(Json(History {
        site: id,
        since_secs: since.as_secs(),
        every_secs: every.as_secs(),
        buckets,
    })
    .into_response())
}

/// `?limit=`.
#[derive(Debug, Deserialize)]
pub(crate) struct ChecksQuery {
    limit: Option<i64>,
}

/// The answer of `/api/v1/sites/{id}/checks`.
#[derive(Debug, Serialize)]
struct Checks {
    site: i32,
    checks: Vec<RecentCheck>,
}

/// `GET /api/v1/sites/{id}/checks?limit=50`: the latest checks, newest first.
pub(crate) async fn checks(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<ChecksQuery>,
) -> Result<Response, AppError> {
    let id = site_id(&id, JSON)?;
    // An unknown site is a 404, not an empty list.
    sitemon_core::db::get_site(&state.pool, id.into())
        .await
        .map_err(core)?;
    let mut checks = dashboard::recent_checks(&state.pool, id, query.limit.unwrap_or(50))
        .await
        .map_err(core)?;
    for check in &mut checks {
        if let Some(message) = &check.error_message {
            check.error_message = Some(state.urls.in_text(message));
        }
    }
    Ok(Json(Checks { site: id, checks }).into_response())
}

/// `?open=&site=&since=`.
#[derive(Debug, Deserialize)]
pub(crate) struct IncidentsQuery {
    #[serde(default)]
    open: bool,
    site: Option<i32>,
    since: Option<String>,
}

/// The most incidents one answer lists.
const MAX_INCIDENTS: i64 = 500;

/// `GET /api/v1/incidents?open=true&site=1&since=7d`: newest first, at most 500.
pub(crate) async fn incidents(
    State(state): State<AppState>,
    Query(query): Query<IncidentsQuery>,
) -> Result<Response, AppError> {
    let since = query
        .since
        .as_deref()
        .map(|s| duration_param("since", s, JSON))
        .transpose()?;
    let filter = IncidentFilter {
        open_only: query.open,
        since,
        site: query.site,
        limit: Some(MAX_INCIDENTS),
    };
    let incidents = sitemon_core::incidents::incidents(&state.pool, &filter)
        .await
        .map_err(core)?;
    let incidents: Vec<IncidentView> = incidents
        .into_iter()
        .map(|incident| mask_incident(incident, state.urls))
        .collect();
    Ok(Json(serde_json::json!({ "incidents": incidents })).into_response())
}

/// `GET /healthz`: 200 `ok` when PostgreSQL answers, 503 otherwise. Open to all: it says
/// nothing else.
pub(crate) async fn healthz(State(state): State<AppState>) -> Response {
    let ping = sqlx::query("SELECT 1").execute(&state.pool);
    match tokio::time::timeout(Duration::from_secs(5), ping).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok\n").into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the database does not answer\n",
        )
            .into_response(),
    }
}
