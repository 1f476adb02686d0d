//! The automatic-failover API: what the arbiter thinks and why, a person's confirmation of a
//! proposed failover, the acknowledgement that lifts the anti-flapping hold, lifting a kept
//! fence once a node has rejoined, and the global switch.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::failover::pauses::Pause;
use crate::failover::requests::{self, FailoverRequest};
use crate::failover::status::FailoverStatus;
use crate::http::auth::Auth;
use crate::http::error::AppError;
use crate::http::extract::ApiJson;
use crate::state::AppState;

/// `GET /api/v1/clusters/{cluster}/failover`: the policy, the current verdict and its evidence,
/// the recent verdicts. 404 for an unknown cluster.
pub async fn status(
    State(state): State<AppState>,
    Path(cluster): Path<String>,
) -> Result<Json<FailoverStatus>, AppError> {
    Ok(Json(requests::load_status(&state, &cluster).await?))
}

/// Answer of an accepted failover.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FailoverAccepted {
    /// The failover run (`GET /api/v1/switchovers/{id}`).
    pub id: Uuid,
}

/// `POST /api/v1/clusters/{cluster}/failover` (operator): a person confirms a failover to
/// `target_node`. The same evidence rules as the arbiter's apply — the leader must be lost to
/// the server and to a majority of its peers, the target must be up and reach the reference
/// address — but not the mode, the global switch or the anti-flapping hold; beyond the
/// data-loss bound only with `accept_data_loss`. When the proposal was the database following
/// the VIP (keepalived moved it to `target_node`, a standby), the confirmation runs that lossless
/// switchover instead. 409 with the arbiter's reason otherwise.
pub async fn confirm(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(cluster): Path<String>,
    ApiJson(req): ApiJson<FailoverRequest>,
) -> Result<(StatusCode, Json<FailoverAccepted>), AppError> {
    crate::access::sessions::require_recent_password(&state, &me)?;
    let id = requests::request_failover(&state, &cluster, &req, &me).await?;
    Ok((StatusCode::ACCEPTED, Json(FailoverAccepted { id })))
}

/// Body of acknowledgements and fence lifts.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonRequest {
    /// Why (kept in the audit log), one line.
    pub reason: String,
}

/// `POST /api/v1/switchovers/{id}/acknowledge` (operator): a person has looked at this failover
/// or automatic step-down; the anti-flapping hold it set is lifted and its `failover_failed`
/// alert ends. 404 for an unknown run (or a planned switchover a person asked for), 409 when
/// already acknowledged.
pub async fn acknowledge(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<Uuid>,
    ApiJson(req): ApiJson<ReasonRequest>,
) -> Result<Json<serde_json::Value>, AppError> {
    requests::acknowledge_failover(&state, id, &req.reason, &me).await?;
    Ok(Json(serde_json::json!({ "id": id, "acknowledged": true })))
}

/// `POST /api/v1/clusters/{cluster}/nodes/{node_id}/unfence` (operator): lifts the fence on a
/// node that was kept fenced (self-fenced when isolated, fenced as a second master) once it has
/// rejoined: it must be up, not the leader, and — with a replication link — a streaming standby.
/// Its priority is first lowered below the leader's, so it does not take the VIP back. 409 with
/// the reason otherwise.
pub async fn unfence(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((cluster, node)): Path<(String, String)>,
    ApiJson(req): ApiJson<ReasonRequest>,
) -> Result<Json<serde_json::Value>, AppError> {
    let offset = requests::unfence(&state, &cluster, &node, &req.reason, &me).await?;
    Ok(Json(serde_json::json!({
        "node_id": node,
        "priority_offset": offset,
        "fence": "lifting",
    })))
}

/// `POST /api/v1/clusters/{cluster}/pacemaker/move` (operator): moves a Pacemaker resource to
/// a node, through one member's agent (`pacemaker_move`: `crm_resource --move`, then `--clear`
/// once it runs there), under the cluster's epoch. 202 with the queued command; 400, 404, 409
/// as [`crate::switchover::pacemaker::request_move`] says; 403 `password_needed` for a session
/// whose password was not given within `auth.reauth_window` (it moves a master, as a
/// switchover does).
pub async fn pacemaker_move(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(cluster): Path<String>,
    ApiJson(req): ApiJson<crate::switchover::pacemaker::PacemakerMoveRequest>,
) -> Result<
    (
        StatusCode,
        Json<crate::switchover::pacemaker::PacemakerMoveAccepted>,
    ),
    AppError,
> {
    crate::access::sessions::require_recent_password(&state, &me)?;
    let accepted = crate::switchover::pacemaker::request_move(&state, &cluster, &req, &me).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// Body of `PUT /api/v1/failover`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchRequest {
    /// false stops every automatic action at once; true allows them again.
    pub automatic_enabled: bool,
    /// Why (kept in the audit log), one line.
    pub reason: String,
}

/// `PUT /api/v1/failover` (admin, not limited to some clusters: 403 otherwise): the global
/// switch. Stored, so it survives restarts.
pub async fn set_switch(
    State(state): State<AppState>,
    Auth(me): Auth,
    ApiJson(req): ApiJson<SwitchRequest>,
) -> Result<Json<serde_json::Value>, AppError> {
    me.require_unscoped("the global automatic-failover switch")?;
    requests::set_automatic(&state, req.automatic_enabled, &req.reason, &me).await?;
    Ok(Json(
        serde_json::json!({ "automatic_enabled": req.automatic_enabled }),
    ))
}

/// `PUT /api/v1/clusters/{cluster}/pause` (operator): pauses the cluster until it is resumed —
/// verdicts are reached and recorded, nothing is done automatically (no failover, step-down or
/// fencing). 200 with the pause; 400 without a one-line reason; 404 for an unknown cluster.
pub async fn pause(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(cluster): Path<String>,
    ApiJson(req): ApiJson<ReasonRequest>,
) -> Result<Json<Pause>, AppError> {
    Ok(Json(
        requests::pause(&state, &cluster, &req.reason, &me).await?,
    ))
}

/// `DELETE /api/v1/clusters/{cluster}/pause` (operator): resumes automatic actions. 404 when the
/// cluster is not paused by hand (a maintenance window ends by itself or at
/// `DELETE /api/v1/silences/{id}`).
pub async fn resume(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(cluster): Path<String>,
) -> Result<Json<serde_json::Value>, AppError> {
    requests::resume(&state, &cluster, &me).await?;
    Ok(Json(
        serde_json::json!({ "cluster": cluster, "paused": false }),
    ))
}
