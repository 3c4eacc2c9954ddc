//! `/badge/{id}/status.svg`, `/badge/{id}/uptime/{24h|7d|30d}.svg`,
//! `/badge/{id}/response/{24h|7d|30d}.svg`: flat two-part SVG badges. An unknown site gets
//! a grey "unknown" badge with a 404.
//!
//! A badge anyone may fetch (no token set, or `--public-badges`) may be cached anywhere
//! (`public, max-age=60`); one that needed the token only by the browser that fetched it
//! (`private, max-age=60`): a shared cache must not hand it to someone without the token.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sitemon_core::report::{self, SiteStatus};

use crate::AppState;
use crate::svg::{GREEN, GREY, RED, YELLOW, badge, millis, percent};
use crate::view::State as SiteState;

/// How long a badge may be cached, by anyone: a minute, like the checks it sums up.
const PUBLIC: &str = "public, max-age=60";
/// The same, by the browser that fetched it only: the badge needed the token.
const PRIVATE: &str = "private, max-age=60";

/// How a successful badge may be cached.
fn cache(state: &AppState) -> &'static str {
    if state.token.is_some() && !state.public_badges {
        PRIVATE
    } else {
        PUBLIC
    }
}

fn svg(cache: &'static str, status: StatusCode, label: &str, value: &str, color: &str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "image/svg+xml; charset=utf-8"),
            (
                header::CACHE_CONTROL,
                if status.is_success() {
                    cache
                } else {
                    "no-cache"
                },
            ),
        ],
        badge(label, value, color),
    )
        .into_response()
}

fn unknown(label: &str) -> Response {
    svg(PUBLIC, StatusCode::NOT_FOUND, label, "unknown", GREY)
}

fn unavailable(label: &str) -> Response {
    svg(
        PUBLIC,
        StatusCode::SERVICE_UNAVAILABLE,
        label,
        "unavailable",
        GREY,
    )
}

/// `24h.svg` → (the label's window, its length).
fn window(file: &str) -> Option<(&'static str, Duration)> {
    let day = Duration::from_secs(86_400);
    match file {
        "24h.svg" => Some(("24h", day)),
        "7d.svg" => Some(("7d", 7 * day)),
        "30d.svg" => Some(("30d", 30 * day)),
        _ => None,
    }
}

async fn status_of(
    state: &AppState,
    id: &str,
    window: Duration,
) -> Result<Option<SiteStatus>, sitemon_core::Error> {
    let Ok(id) = id.parse::<i32>() else {
        return Ok(None);
    };
    let (statuses, _) = report::site_statuses_of(&state.pool, window, &[id]).await?;
    Ok(statuses.into_iter().find(|s| s.id == id))
}

/// The site's state now.
pub(crate) async fn status(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let label = "status";
    match status_of(&state, &id, Duration::from_secs(3600)).await {
        Ok(Some(status)) => {
            let (word, color) = match SiteState::of(&status) {
                SiteState::Up => ("up", GREEN),
                SiteState::Degraded => ("degraded", YELLOW),
                SiteState::Down => ("down", RED),
                SiteState::Unknown => ("no data", GREY),
            };
            svg(cache(&state), StatusCode::OK, label, word, color)
        }
        Ok(None) => unknown(label),
        Err(e) => {
            tracing::warn!("badge: {e}");
            unavailable(label)
        }
    }
}

/// Uptime over 24 h, 7 d or 30 d.
pub(crate) async fn uptime(
    State(state): State<AppState>,
    Path((id, file)): Path<(String, String)>,
) -> Response {
    let Some((name, length)) = window(&file) else {
        return unknown("uptime");
    };
    let label = format!("uptime {name}");
    match status_of(&state, &id, length).await {
        Ok(Some(status)) => match status.uptime_pct {
            Some(u) => {
                let color = if u >= 99.9 {
                    GREEN
                } else if u >= 99.0 {
                    YELLOW
                } else {
                    RED
                };
                svg(cache(&state), StatusCode::OK, &label, &percent(u), color)
            }
            None => svg(cache(&state), StatusCode::OK, &label, "no data", GREY),
        },
        Ok(None) => unknown(&label),
        Err(e) => {
            tracing::warn!("badge: {e}");
            unavailable(&label)
        }
    }
}

/// p95 response time over 24 h, 7 d or 30 d.
pub(crate) async fn response(
    State(state): State<AppState>,
    Path((id, file)): Path<(String, String)>,
) -> Response {
    let Some((name, length)) = window(&file) else {
        return unknown("p95");
    };
    let label = format!("p95 {name}");
    match status_of(&state, &id, length).await {
        Ok(Some(status)) => match status.p95_ms {
            Some(ms) => svg(cache(&state), StatusCode::OK, &label, &millis(ms), GREEN),
            None => svg(cache(&state), StatusCode::OK, &label, "no data", GREY),
        },
        Ok(None) => unknown(&label),
        Err(e) => {
            tracing::warn!("badge: {e}");
            unavailable(&label)
        }
    }
}
