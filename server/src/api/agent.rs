//! `/api/agent/v1`: what agents call.

use axum::extract::State;
use axum::Json;
use hapulse_protocol::{HeartbeatAck, HeartbeatReport};

use super::{AgentAuth, ApiJson};
use crate::error::AppError;
use crate::ingest;
use crate::state::AppState;

/// `POST /api/agent/v1/heartbeat`: one [`HeartbeatReport`]. Answers 200 with a
/// [`HeartbeatAck`] once the report is durable (`accepted: false` for a replay), 400 naming the
/// field for a malformed report, 401 without the agent token, 503 when PostgreSQL is unavailable
/// (the agent retries).
#[tracing::instrument(name = "POST /api/agent/v1/heartbeat", skip_all, fields(node_id, seq))]
pub async fn heartbeat(
    State(state): State<AppState>,
    _auth: AgentAuth,
    body: Result<ApiJson<HeartbeatReport>, AppError>,
) -> Result<Json<HeartbeatAck>, AppError> {
    let report = match body.and_then(|ApiJson(r)| ingest::validate(&r).map(|()| r)) {
        Ok(r) => r,
        Err(e) => {
            state
                .metrics
                .heartbeat("rejected", std::time::Duration::ZERO);
            tracing::warn!(error = %e, "heartbeat refused");
            return Err(e);
        }
    };
    tracing::Span::current()
        .record("node_id", report.node_id.as_str())
        .record("seq", report.seq);
    // Its own task: an agent that gives up waiting (timeout) must not cut a transition between
    // its commit and the update of live state.
    let task = tokio::spawn(async move { ingest::accept(&state, report).await });
    match task.await {
        Ok(result) => result.map(Json),
        Err(e) => Err(AppError::Internal(e.into())),
    }
}
