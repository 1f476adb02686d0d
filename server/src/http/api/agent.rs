//! `/api/agent/v1`: what agents call.

use axum::extract::State;
use axum::Json;
use hapulse_protocol::{HeartbeatAck, HeartbeatReport};

use std::time::Duration;

use axum::extract::Path;
use hapulse_protocol::{Command, CommandResult, EnrollRequest, EnrollResponse};
use serde::Deserialize;
use uuid::Uuid;

use crate::agents::commands::{self, ResultError};
use crate::fleet::ingest;
use crate::fleet::validate::{check_interval, validate};
use crate::http::error::AppError;
use crate::http::extract::{AgentAuth, ApiJson, ApiQuery};
use crate::refusal::Refusal;
use crate::state::AppState;

/// Keeps why `node_id`'s report was refused on the node (shown until it reports well again).
fn remember_refusal(state: &AppState, node_id: &str, why: &str) {
    let mut live = state.live_mut();
    if let Some(node) = live.nodes.get_mut(node_id) {
        node.refused_report = Some(crate::fleet::live::RefusedReport {
            at: chrono::Utc::now(),
            reason: why.chars().take(300).collect(),
        });
        let cluster = node.cluster.clone();
        live.changed.insert(cluster);
    }
}

/// `POST /api/agent/v1/heartbeat`: one [`HeartbeatReport`]. Answers 200 with a
/// [`HeartbeatAck`] once the report is durable (`accepted: false` for a replay), 400 naming the
/// field for a malformed report, 401 without a node credential, 403 for a report of another
/// node or into another cluster than the credential's (audited; alert
/// `agent_cluster_mismatch`), 503 when PostgreSQL is unavailable (the agent retries).
#[tracing::instrument(name = "POST /api/agent/v1/heartbeat", skip_all, fields(node_id, seq))]
pub async fn heartbeat(
    State(state): State<AppState>,
    auth: AgentAuth,
    body: Result<ApiJson<HeartbeatReport>, AppError>,
) -> Result<Json<HeartbeatAck>, AppError> {
    let report = match body
        .and_then(|ApiJson(mut r)| {
            // An agent before the bound lists every real server: counted past it, not refused.
            r.keepalived.virtual_servers = hapulse_protocol::bound_real_servers(std::mem::take(
                &mut r.keepalived.virtual_servers,
            ));
            validate(&r)
                .and_then(|()| check_interval(&r, state.settings().detector.max_heartbeat_interval))
                .map(|()| r)
                .map_err(AppError::from)
        })
        .and_then(|r| auth.require_node(&r.node_id).map(|()| r))
    {
        Ok(r) => match crate::agents::enrollment::check_cluster(
            &state.db,
            &state.credentials,
            &auth.0,
            &r.cluster,
        )
        .await
        {
            Ok(()) => r,
            Err(e) => {
                state
                    .metrics
                    .heartbeat("rejected", std::time::Duration::ZERO);
                return Err(e.into());
            }
        },
        Err(e) => {
            state
                .metrics
                .heartbeat("rejected", std::time::Duration::ZERO);
            tracing::warn!(node_id = %auth.0.node_id, error = %e, "heartbeat refused");
            let why = match &e {
                AppError::Refused(r) => Some(match &r.field {
                    Some(field) => format!("{field}: {}", r.message),
                    None => r.message.clone(),
                }),
                AppError::PayloadTooLarge(_) => Some(e.to_string()),
                _ => None,
            };
            if let Some(why) = why {
                remember_refusal(&state, &auth.0.node_id, &why);
            }
            return Err(e);
        }
    };
    tracing::Span::current()
        .record("node_id", report.node_id.as_str())
        .record("seq", report.seq);
    // Its own task: an agent that gives up waiting (timeout) must not cut a transition between
    // its commit and the update of live state.
    let node_id = report.node_id.clone();
    let task = tokio::spawn({
        let state = state.clone();
        async move { ingest::accept(&state, report).await }
    });
    let mut ack = match task.await {
        Ok(result) => result?,
        Err(e) => return Err(AppError::Internal(e.into())),
    };
    // Fallback delivery of commands, for agents whose long poll is not connected.
    if state.commands.may_have_commands(&node_id) {
        ack.commands = commands::take(&state.db, &node_id).await?;
        if ack.commands.is_empty() {
            state.commands.drained(&node_id);
        }
    }
    Ok(Json(ack))
}

/// Query of the command long poll.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollQuery {
    /// The polling node.
    pub node_id: String,
    /// Longest wait in milliseconds, at most 30000 (default 25000).
    pub wait_ms: Option<u64>,
}

/// `GET /api/agent/v1/commands?node_id=&wait_ms=`: the node's open commands, as soon as there
/// are any, or `[]` after `wait_ms`. Marks them delivered.
pub async fn poll_commands(
    State(state): State<AppState>,
    auth: AgentAuth,
    ApiQuery(q): ApiQuery<PollQuery>,
) -> Result<Json<Vec<Command>>, AppError> {
    auth.require_node(&q.node_id)?;
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(25_000).min(30_000));
    let waiter = state.commands.waiter(&q.node_id);
    let number = state.commands.begin_poll(&q.node_id);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Registered before looking, so a command issued in between still wakes this poll;
        // and a look every second whatever happens, in case a wake-up was lost.
        let notified = waiter.notified();
        if !state.commands.is_newest_poll(&q.node_id, number) {
            return Ok(Json(Vec::new()));
        }
        let commands = commands::take(&state.db, &q.node_id).await?;
        if !commands.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(Json(commands));
        }
        let next_look = (tokio::time::Instant::now() + Duration::from_secs(1)).min(deadline);
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(next_look) => {}
            _ = state.shutdown.cancelled() => return Ok(Json(Vec::new())),
        }
    }
}

/// `POST /api/agent/v1/commands/{id}/result`: how a command ended on the agent. 404 for an
/// unknown command, 403 when it belongs to another node.
pub async fn command_result(
    State(state): State<AppState>,
    auth: AgentAuth,
    Path(id): Path<Uuid>,
    ApiJson(result): ApiJson<CommandResult>,
) -> Result<Json<serde_json::Value>, AppError> {
    auth.require_node(&result.node_id)?;
    match commands::record_result(&state.db, id, &result).await {
        Ok(()) => {
            tracing::info!(command = %id, node_id = %result.node_id, outcome = ?result.outcome, message = %result.message, "command result");
            state.commands.wake_orchestrator();
            Ok(Json(serde_json::json!({ "recorded": true })))
        }
        Err(ResultError::Unknown(_)) => {
            Err(AppError::from(Refusal::not_found(format!("command {id}"))))
        }
        Err(ResultError::WrongNode(..)) => Err(AppError::from(Refusal::forbidden(
            "the command belongs to another node",
        ))),
        Err(ResultError::Sql(e)) => Err(e.into()),
    }
}

/// `POST /api/agent/v1/enroll`: an [`EnrollRequest`] (no `Authorization`: the one-time token is
/// the proof) → 200 with the node credential; 401 for a token that is unknown, used, expired or
/// for another node (or, with mTLS, without a client certificate naming the node); 429 after
/// `auth.login_max_failures_per_source` failures from one address within `auth.login_window`.
/// Audited, a throttled address's refusals once per lockout.
pub async fn enroll(
    State(state): State<AppState>,
    origin: crate::http::client::ClientOrigin,
    certificate: Option<axum::Extension<crate::tls::PeerCertificate>>,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> Result<Json<EnrollResponse>, AppError> {
    crate::http::extract::require_client_certificate(certificate.as_deref(), &state, &req.node_id)?;
    let source = origin.source();
    let node: String = req.node_id.chars().take(64).collect();
    let auth = &state.settings().auth;
    let limits = [(
        format!("enroll:{}", crate::access::throttle::source_key(&source)),
        auth.login_max_failures_per_source,
    )];
    // Checked, not reserved: an agent fleet enrolls many nodes at once, and a one-time token
    // cannot be guessed; only failures count.
    if let Err(refused) = state.login_throttle.check(&limits, auth.login_window) {
        if refused == (crate::access::throttle::Refused::Throttled { first: true }) {
            crate::access::audit::Audit {
                actor: &format!("agent:{node}"),
                role: None,
                source: Some(&source),
                action: "node_enroll",
                target: &node,
                reason: None,
                outcome: "refused: throttled",
                detail: serde_json::json!({}),
            }
            .record(&state.db)
            .await?;
        }
        return Err(AppError::from(Refusal::throttled(
            "too many failed enrollments from this address; wait a few minutes",
        )));
    }
    let outcome =
        crate::agents::enrollment::enroll(&state.db, &state.credentials, &req.node_id, &req.token)
            .await;
    if outcome.is_err() {
        let keys: Vec<String> = limits.into_iter().map(|(k, _)| k).collect();
        state.login_throttle.failed(&keys, auth.login_window);
    }
    crate::access::audit::Audit {
        actor: &format!("agent:{node}"),
        role: None,
        source: Some(&source),
        action: "node_enroll",
        target: &node,
        reason: None,
        outcome: if outcome.is_ok() {
            "enrolled"
        } else {
            "refused"
        },
        detail: serde_json::json!({}),
    }
    .record(&state.db)
    .await?;
    let credential = outcome?;
    tracing::info!(node_id = %req.node_id, source = %source, "node enrolled");
    Ok(Json(EnrollResponse {
        node_id: req.node_id,
        credential,
    }))
}
