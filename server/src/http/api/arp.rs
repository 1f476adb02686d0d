//! `POST /api/v1/clusters/{cluster}/arp-check`: ask the LAN who has each VIP now, through every
//! node's agent (an `arp_check` command), instead of waiting for their `arp_check_interval`.
//! The rounds come back in the agents' next reports (the cluster's `vips[].arp`) and, per node,
//! in the command's result.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use hapulse_protocol::Action;
use serde::Serialize;
use uuid::Uuid;

use crate::access::audit::Audit;
use crate::agents::commands::{self, NewCommand};
use crate::fleet::live::NodeStatus;
use crate::http::api::failover::ReasonRequest;
use crate::http::auth::Auth;
use crate::http::error::AppError;
use crate::http::extract::ApiJson;
use crate::refusal::Refusal;
use crate::state::AppState;

/// How long an agent may take to start an `arp_check` (a round then takes about a second per
/// interface): past it, the command expires.
const ARP_CHECK_DEADLINE: Duration = Duration::from_secs(10);

/// The ARP checks asked for.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ArpCheckAccepted {
    /// Cluster.
    pub cluster: String,
    /// One `arp_check` command per node not down, by node id.
    pub commands: Vec<ArpCheckCommand>,
}

/// One node asked.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ArpCheckCommand {
    /// Node id.
    pub node_id: String,
    /// The command's id.
    pub command_id: Uuid,
}

/// `POST /api/v1/clusters/{cluster}/arp-check` (operator), body `{reason}`: an `arp_check`
/// command to every node of the cluster that is not down (audited with the reason). 202 with
/// the commands; 400 without a reason (one line, at most 1000 bytes); 404 for an unknown
/// cluster; 409 `no_node_up` when every node is down.
pub async fn arp_check(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(cluster): Path<String>,
    ApiJson(req): ApiJson<ReasonRequest>,
) -> Result<(StatusCode, Json<ArpCheckAccepted>), AppError> {
    let reason = req.reason.as_str();
    if reason.trim().is_empty() || reason.len() > 1000 || reason.chars().any(char::is_control) {
        return Err(Refusal::invalid(
            "invalid_body",
            "reason",
            "say why, in at most 1000 bytes, on one line",
        )
        .into());
    }
    let mut tx = state.db.begin().await?;
    let epoch: Option<i64> = sqlx::query_scalar("SELECT epoch FROM clusters WHERE name = $1")
        .bind(&cluster)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(epoch) = epoch else {
        return Err(Refusal::not_found(format!("cluster {cluster:?}")).into());
    };
    let nodes: Vec<String> = state
        .live()
        .cluster_nodes(&cluster)
        .filter(|n| n.status != NodeStatus::Down)
        .map(|n| n.node_id.clone())
        .collect();
    if nodes.is_empty() {
        return Err(Refusal::conflict(
            "no_node_up",
            format!("every node of {cluster} is down: none can ask the LAN"),
        )
        .into());
    }
    let mut asked = Vec::with_capacity(nodes.len());
    for node_id in nodes {
        let command_id = commands::insert(
            &mut tx,
            &NewCommand {
                cluster: cluster.clone(),
                node_id: node_id.clone(),
                epoch: u64::try_from(epoch).unwrap_or(0),
                action: Action::ArpCheck {},
                deadline: ARP_CHECK_DEADLINE,
                switchover_id: None,
                requested_by: me.name.clone(),
            },
        )
        .await?;
        asked.push(ArpCheckCommand {
            node_id,
            command_id,
        });
    }
    Audit::by(&me, "arp_check", &cluster, "requested")
        .reason(reason)
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    for c in &asked {
        state.commands.wake(&c.node_id);
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(ArpCheckAccepted {
            cluster,
            commands: asked,
        }),
    ))
}
