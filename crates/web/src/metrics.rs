//! The server's own metrics (requests by route and status, their duration) and `/metrics`,
//! the OpenMetrics text of everything registered in core's [`Registry`].

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use sitemon_core::metrics::Registry;

use crate::AppState;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    /// The route's pattern (`/sites/{id}`), never the path asked for: bounded labels.
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: String,
}

/// The families the server updates.
#[derive(Debug)]
pub(crate) struct WebMetrics {
    requests: Family<RouteStatus, Counter>,
    seconds: Family<Route, Histogram, fn() -> Histogram>,
    /// Connections closed at once because `max_connections` were open.
    pub(crate) refused: Counter,
}

impl Default for WebMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            seconds: Family::new_with_constructor(|| {
                Histogram::new([
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
            }),
            refused: Counter::default(),
        }
    }
}

impl WebMetrics {
    pub(crate) fn register(&self, registry: &Registry) {
        registry.register(|r| {
            r.register(
                "sitemon_web_requests",
                "HTTP requests answered by the dashboard, by route and status",
                self.requests.clone(),
            );
            r.register(
                "sitemon_web_request_seconds",
                "Time to answer a dashboard request, by route",
                self.seconds.clone(),
            );
            r.register(
                "sitemon_web_connections_refused",
                "Connections the dashboard closed at once because --max-connections were open",
                self.refused.clone(),
            );
        });
    }
}

/// Counts and times every request.
pub(crate) async fn record(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_owned(), |m| m.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .seconds
        .get_or_create(&Route {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .requests
        .get_or_create(&RouteStatus {
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// `GET /metrics`.
pub(crate) async fn render(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, sitemon_core::metrics::CONTENT_TYPE)],
        state.registry.render(),
    )
        .into_response()
}
