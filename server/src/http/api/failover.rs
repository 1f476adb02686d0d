//! The automatic-failover API: what the arbiter thinks and why, a person's confirmation of a
//! proposed failover, the acknowledgement that lifts the anti-flapping hold, lifting a kept
//! fence once a node has rejoined, and the global switch.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use hapulse_protocol::{Action, LinkState, ReplicationRole};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

use crate::access::audit::Audit;
use crate::access::auth::{Auth, Principal};
use crate::agents::commands::{self, NewCommand};
use crate::failover::arbiter::{self, Verdict};
use crate::failover::decision::{self as failover, Decision, Mode};
use crate::fleet::live::NodeStatus;
use crate::http::error::AppError;
use crate::http::extract::ApiJson;
use crate::state::AppState;

/// One stored verdict.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DecisionRow {
    /// When.
    pub at: DateTime<Utc>,
    /// `nothing`, `wait`, `alert`, `propose`, `failover`, `step_down`, `fence`.
    pub action: String,
    /// The node to promote (or, for `fence`, the node fenced).
    pub candidate: Option<String>,
    /// Why, for people.
    pub reason: String,
}

/// The cluster's policy as configured.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PolicyView {
    /// `off`, `notify`, `auto`.
    pub mode: Mode,
    /// Largest lag of an automatic promotion, bytes.
    pub max_lag_bytes: u64,
    /// …seconds.
    pub max_lag_seconds: f64,
    /// Anti-flapping hold after an automatic failover, seconds.
    pub anti_flap_seconds: u64,
    /// A fencing hook (STONITH) is configured.
    pub fencing_hook: bool,
    /// The cluster promotes without fencing an unreachable old master.
    pub accept_unfenced: bool,
}

/// `GET /api/v1/clusters/{cluster}/failover`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FailoverStatus {
    /// Cluster.
    pub cluster: String,
    /// The global switch: false stops every automatic action.
    pub automatic_enabled: bool,
    /// The cluster's policy.
    pub policy: PolicyView,
    /// The master of the current epoch.
    pub leader: Option<String>,
    /// The arbiter's latest verdict with its evidence (absent until its first round).
    pub verdict: Option<Verdict>,
    /// The last 20 changes of verdict, newest first.
    pub decisions: Vec<DecisionRow>,
    /// The latest automatic failover when nobody acknowledged it yet: while it is within the
    /// anti-flapping hold, no other automatic failover runs.
    pub unacknowledged_failover: Option<Uuid>,
}

/// `GET /api/v1/clusters/{cluster}/failover`: the policy, the current verdict and its evidence,
/// the recent verdicts. 404 for an unknown cluster.
pub async fn status(
    State(state): State<AppState>,
    Path(cluster): Path<String>,
) -> Result<Json<FailoverStatus>, AppError> {
    load_status(&state, &cluster).await.map(Json)
}

/// The failover status of `cluster` (shared with the dashboard).
pub async fn load_status(state: &AppState, cluster: &str) -> Result<FailoverStatus, AppError> {
    let leader: Option<Option<String>> =
        sqlx::query_scalar("SELECT leader FROM clusters WHERE name = $1")
            .bind(cluster)
            .fetch_optional(&state.db)
            .await?;
    let Some(leader) = leader else {
        return Err(AppError::NotFound(format!("cluster {cluster:?}")));
    };
    let rows = sqlx::query(
        "SELECT at, action, candidate, reason FROM failover_decisions
          WHERE cluster = $1 ORDER BY id DESC LIMIT 20",
    )
    .bind(cluster)
    .fetch_all(&state.db)
    .await?;
    let decisions = rows
        .iter()
        .map(|r| {
            Ok(DecisionRow {
                at: r.try_get("at")?,
                action: r.try_get("action")?,
                candidate: r.try_get("candidate")?,
                reason: r.try_get("reason")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    let unacknowledged_failover: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM (SELECT id, acknowledged_at FROM switchovers
                          WHERE cluster = $1 AND automatic AND kind = 'failover'
                          ORDER BY created_at DESC LIMIT 1) last
          WHERE acknowledged_at IS NULL",
    )
    .bind(cluster)
    .fetch_optional(&state.db)
    .await?;
    let enabled = arbiter::automatic_enabled(state).await?;
    let p = state.settings.failover.policy(cluster, enabled);
    Ok(FailoverStatus {
        cluster: cluster.to_string(),
        automatic_enabled: enabled,
        policy: PolicyView {
            mode: p.mode,
            max_lag_bytes: p.max_lag_bytes,
            max_lag_seconds: p.max_lag_seconds,
            anti_flap_seconds: p.anti_flap.as_secs(),
            fencing_hook: p.fencing_hook,
            accept_unfenced: p.accept_unfenced,
        },
        leader,
        verdict: state
            .verdicts
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(cluster)
            .cloned(),
        decisions,
        unacknowledged_failover,
    })
}

/// Body of `POST /api/v1/clusters/{cluster}/failover`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailoverRequest {
    /// The node to promote.
    pub target_node: String,
    /// Why (kept in the audit log).
    pub reason: String,
    /// Promote even when the target is further behind than the cluster's data-loss bound: the
    /// transactions it has not received are lost.
    #[serde(default)]
    pub accept_data_loss: bool,
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
/// data-loss bound only with `accept_data_loss`. 409 with the arbiter's reason otherwise.
pub async fn confirm(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(cluster): Path<String>,
    ApiJson(req): ApiJson<FailoverRequest>,
) -> Result<(StatusCode, Json<FailoverAccepted>), AppError> {
    request_failover(&state, &cluster, &req, &me)
        .await
        .map(|id| (StatusCode::ACCEPTED, Json(FailoverAccepted { id })))
}

/// Checks and starts a person's failover; audited whether accepted or refused.
pub async fn request_failover(
    state: &AppState,
    cluster: &str,
    req: &FailoverRequest,
    who: &Principal,
) -> Result<Uuid, AppError> {
    if req.reason.trim().is_empty()
        || req.reason.len() > 1000
        || req.reason.chars().any(char::is_control)
    {
        return Err(AppError::invalid(
            "invalid_body",
            "reason",
            "say why, in at most 1000 bytes, on one line",
        ));
    }
    let view = crate::http::api::v1::cluster_with_epoch(state, cluster).await?;
    let target = format!("{cluster} → {}", req.target_node);
    let verdict = state
        .verdicts
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(cluster)
        .cloned();
    let Some(g) = verdict.and_then(|v| v.evidence) else {
        return Err(AppError::Conflict {
            code: "no_evidence",
            message: format!("the arbiter knows no leader of {cluster} yet"),
        });
    };
    let mut policy = state.settings.failover.policy(cluster, true);
    policy.mode = Mode::Auto;
    policy.anti_flap = std::time::Duration::ZERO;
    policy.grace = std::time::Duration::ZERO;
    if req.accept_data_loss {
        policy.max_lag_bytes = u64::MAX;
        policy.max_lag_seconds = f64::INFINITY;
    }
    let mut candidates = arbiter::candidates(&g);
    candidates.retain(|c| c.node_id == req.target_node);
    if candidates.is_empty() {
        return Err(AppError::NotFound(format!(
            "node {:?} in cluster {cluster} (other than the leader {})",
            req.target_node, g.leader
        )));
    }
    let decision = failover::decide(&failover::Situation {
        now: Utc::now(),
        policy,
        evidence: arbiter::evidence(&g),
        candidates,
        history: failover::History {
            operation_running: false,
            server_started_at: state.started_at,
            last_automatic: None,
        },
    });
    let started = match &decision {
        Decision::Failover { reason, .. } => {
            // Kept with the failover and in its audit row.
            let loss = if req.accept_data_loss {
                "; data loss beyond the bound accepted"
            } else {
                ""
            };
            let reason = format!("{} (confirmed{loss}: {reason})", req.reason);
            crate::switchover::engine::start_failover(
                state,
                &view,
                &g,
                &req.target_node,
                &reason,
                false,
                who,
            )
            .await
        }
        other => Err(AppError::Conflict {
            code: "failover_refused",
            message: other.reason().to_string(),
        }),
    };
    if let Err(e) = &started {
        Audit::by(who, "failover", &target, &format!("refused: {e}"))
            .reason(&req.reason)
            .detail(serde_json::json!({ "accept_data_loss": req.accept_data_loss }))
            .record(&state.db)
            .await?;
    }
    started
}

/// Body of acknowledgements and fence lifts.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonRequest {
    /// Why (kept in the audit log), one line.
    pub reason: String,
}

fn check_reason(reason: &str) -> Result<(), AppError> {
    if reason.trim().is_empty() || reason.len() > 1000 || reason.chars().any(char::is_control) {
        return Err(AppError::invalid(
            "invalid_body",
            "reason",
            "say why, in at most 1000 bytes, on one line",
        ));
    }
    Ok(())
}

/// `POST /api/v1/switchovers/{id}/acknowledge` (operator): a person has looked at this automatic
/// failover; the anti-flapping hold it set is lifted and its `failover_failed` alert ends. 404
/// for an unknown (or not automatic) failover, 409 when already acknowledged.
pub async fn acknowledge(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<Uuid>,
    ApiJson(req): ApiJson<ReasonRequest>,
) -> Result<Json<serde_json::Value>, AppError> {
    acknowledge_failover(&state, id, &req.reason, &me).await?;
    Ok(Json(serde_json::json!({ "id": id, "acknowledged": true })))
}

/// Acknowledges failover `id` for `me` (shared with the dashboard); audited.
pub async fn acknowledge_failover(
    state: &AppState,
    id: Uuid,
    reason: &str,
    me: &Principal,
) -> Result<(), AppError> {
    check_reason(reason)?;
    let sw = crate::switchover::engine::get(&state.db, id)
        .await?
        .filter(|s| me.may_see(&s.cluster) && s.kind == "failover")
        .ok_or_else(|| AppError::NotFound(format!("failover {id}")))?;
    let mut tx = state.db.begin().await?;
    let done = sqlx::query(
        "UPDATE switchovers SET acknowledged_at = now(), acknowledged_by = $2
          WHERE id = $1 AND acknowledged_at IS NULL",
    )
    .bind(id)
    .bind(&me.name)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::Conflict {
            code: "already_acknowledged",
            message: format!("failover {id} is acknowledged already"),
        });
    }
    Audit::by(me, "failover_acknowledge", &id.to_string(), "acknowledged")
        .reason(reason)
        .detail(serde_json::json!({ "cluster": sw.cluster }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    state.announce(&sw.cluster);
    Ok(())
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
    check_reason(&req.reason)?;
    let view = crate::http::api::v1::cluster_with_epoch(&state, &cluster).await?;
    let verdict = state
        .verdicts
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&cluster)
        .cloned();
    let g = verdict
        .and_then(|v| v.evidence)
        .ok_or_else(|| AppError::Conflict {
            code: "no_evidence",
            message: format!("the arbiter knows no leader of {cluster} yet"),
        })?;
    let refuse = |message: String| AppError::Conflict {
        code: "not_rejoined",
        message,
    };
    if node == g.leader {
        return Err(refuse(format!("{node} is the leader of {cluster}")));
    }
    let summary = view
        .nodes
        .iter()
        .find(|n| n.node_id == node)
        .ok_or_else(|| AppError::NotFound(format!("node {node:?} in cluster {cluster}")))?;
    if summary.status != NodeStatus::Up {
        return Err(refuse(format!("{node} is {}", summary.status.as_str())));
    }
    if let Some(link) = &g.link {
        let member = view
            .replication
            .iter()
            .find(|r| &r.link == link)
            .and_then(|r| r.members.iter().find(|m| m.node_id == node));
        match member {
            Some(m) if m.role == ReplicationRole::Secondary && m.state == LinkState::Streaming => {}
            Some(m) => {
                return Err(refuse(format!(
                    "{node} is {} and {} on {link}: rejoin it as a streaming standby of {} first",
                    m.role.as_str(),
                    m.state.as_str(),
                    g.leader
                )))
            }
            None => return Err(refuse(format!("{node} does not report {link}"))),
        }
    }
    let instance = view
        .instances
        .iter()
        .find(|i| i.name == g.instance)
        .ok_or_else(|| refuse(format!("{node} does not report {}", g.instance)))?;
    let base = |n: &str| {
        instance
            .members
            .iter()
            .find(|m| m.node_id == n)
            .and_then(|m| m.base_priority)
    };
    let (Some(leader_base), Some(own_base)) = (base(&g.leader), base(&node)) else {
        return Err(refuse(
            "base priorities are unknown (no JSON dump yet)".into(),
        ));
    };
    let offset = (i32::from(leader_base) - 10 - i32::from(own_base)).clamp(-253, 0);
    let mut tx = state.db.begin().await?;
    for action in [
        Action::SetPriorityOffset {
            instance: g.instance.clone(),
            offset,
        },
        Action::Fence {
            instance: g.instance.clone(),
            fenced: false,
        },
    ] {
        commands::insert(
            &mut tx,
            &NewCommand {
                cluster: cluster.clone(),
                node_id: node.clone(),
                epoch: view.epoch,
                action,
                deadline: std::time::Duration::from_secs(60),
                switchover_id: None,
                requested_by: me.name.clone(),
            },
        )
        .await?;
    }
    sqlx::query("DELETE FROM kept_fenced WHERE cluster = $1 AND node_id = $2")
        .bind(&cluster)
        .bind(&node)
        .execute(&mut *tx)
        .await?;
    Audit::by(&me, "unfence", &format!("{cluster}/{node}"), "accepted")
        .reason(&req.reason)
        .detail(serde_json::json!({ "priority_offset": offset, "epoch": view.epoch }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    state.commands.wake(&node);
    Ok(Json(serde_json::json!({
        "node_id": node,
        "priority_offset": offset,
        "fence": "lifting",
    })))
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

/// `PUT /api/v1/failover` (admin): the global switch. Stored, so it survives restarts.
pub async fn set_switch(
    State(state): State<AppState>,
    Auth(me): Auth,
    ApiJson(req): ApiJson<SwitchRequest>,
) -> Result<Json<serde_json::Value>, AppError> {
    check_reason(&req.reason)?;
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "INSERT INTO runtime_settings (key, value, updated_by) VALUES ($1, $2, $3)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now(),
                                         updated_by = EXCLUDED.updated_by",
    )
    .bind(arbiter::SWITCH_KEY)
    .bind(sqlx::types::Json(req.automatic_enabled))
    .bind(&me.name)
    .execute(&mut *tx)
    .await?;
    let outcome = if req.automatic_enabled {
        "enabled"
    } else {
        "disabled"
    };
    Audit::by(&me, "automatic_failover", "all clusters", outcome)
        .reason(&req.reason)
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::warn!(by = %me.name, enabled = req.automatic_enabled, reason = %req.reason, "automatic failover switched");
    state.announce("*");
    Ok(Json(
        serde_json::json!({ "automatic_enabled": req.automatic_enabled }),
    ))
}
