//! What the pages and the API read, assembled from core's queries: the rows of the
//! overview, and the parameters (windows, bucket lengths) a request may give.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::StatusCode;
use serde::Serialize;
use sitemon_core::dashboard::{self, DayUptime};
use sitemon_core::db::PgPool;
use sitemon_core::incidents::IncidentView;
use sitemon_core::report::{self, SiteStatus};
use time::OffsetDateTime;

use crate::error::{AppError, Format};
use crate::mask::Urls;

/// The days of uptime bars.
pub(crate) const BAR_DAYS: u32 = 90;
/// The longest window a request may ask for.
pub(crate) const MAX_WINDOW: Duration = Duration::from_secs(400 * 86_400);
/// The most buckets a history request may ask for.
pub(crate) const MAX_BUCKETS: u64 = 2_000;

/// A window or a bucket length from a query string: `24h`, `7d`, `30m`, `90s`; from a
/// minute to 400 days.
pub(crate) fn duration_param(
    name: &'static str,
    text: &str,
    format: Format,
) -> Result<Duration, AppError> {
    let parsed = humantime::parse_duration(text.trim()).ok();
    match parsed {
        Some(d) if d >= Duration::from_secs(60) && d <= MAX_WINDOW => Ok(d),
        _ => Err(AppError::new(
            axum::http::StatusCode::BAD_REQUEST,
            format!(
                "{name}: {:?} is not a duration from 1m to 400d such as 24h, 7d or 30d",
                text.chars().take(40).collect::<String>()
            ),
            format,
        )),
    }
}

/// A site's state now, in a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum State {
    Down,
    Degraded,
    Up,
    Unknown,
}

impl State {
    pub(crate) fn of(status: &SiteStatus) -> Self {
        match (status.up, status.degraded) {
            (Some(false), _) => Self::Down,
            (Some(true), Some(true)) => Self::Degraded,
            (Some(true), _) => Self::Up,
            (None, _) => Self::Unknown,
        }
    }

    pub(crate) fn word(self) -> &'static str {
        match self {
            Self::Down => "down",
            Self::Degraded => "degraded",
            Self::Up => "up",
            Self::Unknown => "unknown",
        }
    }
}

/// A site's status over a window as the API answers it: core's [`SiteStatus`] (its URL
/// masked), its name and its state in a word.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SiteJson {
    pub(crate) name: Option<String>,
    pub(crate) state: State,
    #[serde(flatten)]
    pub(crate) status: SiteStatus,
}

/// The names of the sites that have one.
pub(crate) async fn names(pool: &PgPool) -> Result<HashMap<i32, String>, sitemon_core::Error> {
    Ok(sitemon_core::db::list_sites(pool)
        .await?
        .into_iter()
        .filter_map(|s| Some((s.id, s.settings.name?)))
        .collect())
}

/// The status over `window` of every site, or of the sites `ids`, URLs as `urls` shows them.
pub(crate) async fn statuses(
    pool: &PgPool,
    window: Duration,
    urls: Urls,
    ids: Option<&[i32]>,
) -> Result<Vec<SiteJson>, sitemon_core::Error> {
    let (statuses, _) = match ids {
        Some(ids) => report::site_statuses_of(pool, window, ids).await?,
        None => report::site_statuses(pool, window).await?,
    };
    let names = names(pool).await?;
    Ok(statuses
        .into_iter()
        .map(|mut status| {
            status.url = urls.show(&status.url);
            SiteJson {
                name: names.get(&status.id).cloned(),
                state: State::of(&status),
                status,
            }
        })
        .collect())
}

/// A row of the overview.
#[derive(Debug, Clone)]
pub(crate) struct OverviewRow {
    pub(crate) name: Option<String>,
    pub(crate) state: State,
    /// The status over 24 h (the latest check's fields are the same in every window).
    pub(crate) day: SiteStatus,
    pub(crate) uptime_7d: Option<f64>,
    pub(crate) uptime_30d: Option<f64>,
    pub(crate) days: Vec<DayUptime>,
}

/// The overview's rows: every site matching `filter` (name or URL, as shown), the down
/// ones first, then degraded, up, unknown; by id within each; `page` of `per_page`.
/// Returns the rows and the number of sites matching.
pub(crate) async fn overview(
    pool: &PgPool,
    urls: Urls,
    filter: &str,
    page: usize,
    per_page: usize,
) -> Result<(Vec<OverviewRow>, usize), sitemon_core::Error> {
    let day = Duration::from_secs(86_400);
    let (d1, d7, d30, names) = tokio::try_join!(
        report::site_statuses(pool, day),
        report::site_statuses(pool, 7 * day),
        report::site_statuses(pool, 30 * day),
        names(pool),
    )?;
    let week: HashMap<i32, Option<f64>> = d7.0.iter().map(|s| (s.id, s.uptime_pct)).collect();
    let month: HashMap<i32, Option<f64>> = d30.0.iter().map(|s| (s.id, s.uptime_pct)).collect();
    let needle = filter.trim().to_lowercase();
    let mut rows: Vec<OverviewRow> =
        d1.0.into_iter()
            .map(|mut status| {
                status.url = urls.show(&status.url);
                OverviewRow {
                    name: names.get(&status.id).cloned(),
                    state: State::of(&status),
                    uptime_7d: week.get(&status.id).copied().flatten(),
                    uptime_30d: month.get(&status.id).copied().flatten(),
                    day: status,
                    days: Vec::new(),
                }
            })
            .filter(|row| {
                needle.is_empty()
                    || row.day.url.to_lowercase().contains(&needle)
                    || row
                        .name
                        .as_ref()
                        .is_some_and(|n| n.to_lowercase().contains(&needle))
            })
            .collect();
    rows.sort_by_key(|row| (row.state, row.day.id));
    let matching = rows.len();
    let mut rows: Vec<OverviewRow> = rows
        .into_iter()
        .skip(page.saturating_mul(per_page))
        .take(per_page)
        .collect();
    let ids: Vec<i32> = rows.iter().map(|r| r.day.id).collect();
    let mut days = dashboard::daily_uptime(pool, &ids, BAR_DAYS, OffsetDateTime::now_utc()).await?;
    for row in &mut rows {
        row.days = days.remove(&row.day.id).unwrap_or_default();
    }
    Ok((rows, matching))
}

/// A site id from the path: a number, or 404.
pub(crate) fn site_id(text: &str, format: Format) -> Result<i32, AppError> {
    text.parse::<i32>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            AppError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no site has id {:?}",
                    text.chars().take(40).collect::<String>()
                ),
                format,
            )
        })
}

/// An incident with its URL masked, in its error too.
pub(crate) fn mask_incident(mut incident: IncidentView, urls: crate::mask::Urls) -> IncidentView {
    let url = std::mem::take(&mut incident.url);
    incident.first_error = incident.first_error.as_deref().map(|e| urls.in_text(e));
    incident.url = urls.show(&url);
    incident
}
