//! `GET /metrics`: the Prometheus exposition, refreshed from live state, the leadership, the
//! arbiter's verdicts and two small counts from the database (firing alerts, finished runs).

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::http::auth::Auth;
use crate::http::error::AppError;
use crate::metrics::Scrape;
use crate::state::AppState;

/// `GET /metrics`: Prometheus exposition of every cluster; 403 for a principal limited to some
/// clusters (a scrape concerns the whole fleet). When the database cannot be read, the series
/// counted there keep their last values and the rest is served.
pub async fn metrics(State(state): State<AppState>, Auth(me): Auth) -> Response {
    if let Err(refusal) = me.require_unscoped("/metrics") {
        return AppError::from(refusal).into_response();
    }
    let alerts_firing = crate::alerting::engine::firing_counts(&state.db)
        .await
        .map_err(|e| tracing::warn!(error = %e, "metrics: firing alerts not counted"))
        .ok();
    let runs = crate::switchover::store::finished_counts(&state.db)
        .await
        .map_err(|e| tracing::warn!(error = %e, "metrics: finished runs not counted"))
        .ok();
    let verdicts = state
        .verdicts
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .flat_map(|(cluster, vs)| vs.iter().map(|v| (cluster.clone(), v.decision.action())))
        .collect();
    let body = state.metrics.render(&Scrape {
        live: &state.live(),
        now: chrono::Utc::now(),
        settings: &state.settings().metrics,
        is_leader: state.leadership.is_leader(),
        leader_url: state.leadership.leader_url(),
        verdicts,
        receivers: crate::alerting::notify::receiver_labels(&state.settings().alerts),
        alerts_firing,
        runs,
    });
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
