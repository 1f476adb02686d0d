//! Starting a run. A switchover request: preflight against the cluster as it is now (with its
//! epoch), the plan, and — unless it is a dry run — the stored run, started at once or at its
//! scheduled time; shared by the REST API and the dashboard, refusals audited too. A failover:
//! the arbiter's (or a person's confirmed) decision, planned, stored and started at once.

use chrono::Utc;
use serde::Serialize;
use uuid::Uuid;

use crate::access::audit::Audit;
use crate::access::auth::Principal;
use crate::failover::evidence::Gathered;
use crate::fleet::view::ClusterView;
use crate::refusal::Refusal;
use crate::state::AppState;
use crate::switchover::error::SwitchoverError;
use crate::switchover::plan::{
    cluster_view, failover_plan, plan, rejoin_plan, vip_follow_plan, Plan, SwitchoverRequest,
};
use crate::switchover::run::spawn;
use crate::switchover::store::create;

/// Answer of a switchover request: the plan, and the id once accepted.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SwitchoverAccepted {
    /// Id (absent for a dry run).
    pub id: Option<Uuid>,
    /// `planned` (dry run) or `scheduled`.
    pub state: &'static str,
    /// The cluster epoch the switchover raised (absent for a dry run).
    pub epoch: Option<u64>,
    /// The preview.
    pub plan: Plan,
}

/// Preflight, plan and (unless a dry run) accept and start a switchover; shared by the REST API
/// and the dashboard. Refusals are audited too.
pub async fn request_switchover(
    state: &AppState,
    cluster: &str,
    req: SwitchoverRequest,
    who: &Principal,
) -> Result<SwitchoverAccepted, SwitchoverError> {
    let view = cluster_view(state, cluster).await?;
    let now = Utc::now();
    let in_maintenance = crate::alerting::silences::current(&state.db)
        .await?
        .into_iter()
        .find(|s| {
            s.maintenance
                && s.starts_at <= now
                && s.node_id.is_none()
                && s.cluster.as_deref() == Some(cluster)
        });
    let planned = match in_maintenance {
        Some(m) => Err(SwitchoverError::from(Refusal::conflict(
            "cluster_in_maintenance",
            format!(
                "{cluster} is in maintenance until {} ({}: {})",
                m.ends_at.format("%Y-%m-%d %H:%M UTC"),
                m.author,
                m.reason
            ),
        ))),
        None => plan(&view, &req),
    };
    let plan = match planned {
        Ok(p) => p,
        Err(e) => {
            if !req.dry_run {
                let target = format!("{cluster} → {}", req.target_node);
                let outcome = format!("refused: {e}");
                Audit::by(who, "switchover", &target, &outcome)
                    .reason(&req.reason)
                    .record(&state.db)
                    .await?;
            }
            return Err(e);
        }
    };
    if req.dry_run {
        return Ok(SwitchoverAccepted {
            id: None,
            state: "planned",
            epoch: None,
            plan,
        });
    }
    let (id, epoch) = create(state, &plan, &req, who, false).await?;
    spawn(state.clone(), id);
    Ok(SwitchoverAccepted {
        id: Some(id),
        state: "scheduled",
        epoch: Some(epoch),
        plan,
    })
}

/// Accepts and starts a failover of `g.instance` from the leader to `candidate` (the arbiter's
/// decision, or a person's confirmation): raises the epoch, stores it, runs it. 409 when another
/// switchover or failover of the cluster is scheduled or running.
pub async fn start_failover(
    state: &AppState,
    cluster: &ClusterView,
    g: &Gathered,
    candidate: &str,
    reason: &str,
    automatic: bool,
    who: &Principal,
) -> Result<Uuid, SwitchoverError> {
    let plan = failover_plan(
        cluster,
        &g.instance,
        g.link.as_deref(),
        &g.leader,
        candidate,
    );
    start(state, &plan, reason, automatic, who).await
}

/// Accepts and starts a VIP follow (the arbiter's decision, or a person's confirmation of its
/// proposal): the database primary of `g.link` moves from the leader to `holder`, which keepalived
/// made MASTER. 409 when the holder is not a streaming standby, there is no tied link, or another
/// switchover or failover of the cluster is scheduled or running.
pub async fn start_vip_follow(
    state: &AppState,
    cluster: &ClusterView,
    g: &Gathered,
    holder: &str,
    reason: &str,
    automatic: bool,
    who: &Principal,
) -> Result<Uuid, SwitchoverError> {
    let link = tied_link(cluster, g, "nothing follows the VIP")?;
    let plan = vip_follow_plan(cluster, &g.instance, link, &g.leader, holder)?;
    start(state, &plan, reason, automatic, who).await
}

/// Accepts and starts a rejoin (the arbiter's, for a kept-fenced node that came back): the
/// database of `node` rejoins `g.link` as a standby of the leader. 409 as [`rejoin_plan`]
/// refuses, or when another run of the cluster is scheduled or running.
pub async fn start_rejoin(
    state: &AppState,
    cluster: &ClusterView,
    g: &Gathered,
    node: &str,
    reason: &str,
    who: &Principal,
) -> Result<Uuid, SwitchoverError> {
    let link = tied_link(cluster, g, "nothing rejoins")?;
    let plan = rejoin_plan(cluster, &g.instance, link, node, &g.leader)?;
    start(state, &plan, reason, true, who).await
}

/// The link tied to the evidence's instance, or a 409 `no_tied_link` ending with `so`.
fn tied_link<'g>(
    cluster: &ClusterView,
    g: &'g Gathered,
    so: &str,
) -> Result<&'g str, SwitchoverError> {
    g.link.as_deref().ok_or_else(|| {
        SwitchoverError::from(Refusal::conflict(
            "no_tied_link",
            format!(
                "{} has no database tied to {}: {so}",
                cluster.name, g.instance
            ),
        ))
    })
}

/// Stores `plan` under a new epoch and runs it at once.
async fn start(
    state: &AppState,
    plan: &Plan,
    reason: &str,
    automatic: bool,
    who: &Principal,
) -> Result<Uuid, SwitchoverError> {
    let req = SwitchoverRequest {
        target_node: plan.target_node.clone(),
        instance: Some(plan.instance.clone()),
        reason: reason.chars().take(1000).collect(),
        dry_run: false,
        max_lag_bytes: None,
        scheduled_at: None,
    };
    let (id, _) = create(state, plan, &req, who, automatic).await?;
    spawn(state.clone(), id);
    Ok(id)
}
