//! Asking for a switchover: preflight against the cluster as it is now (with its epoch), the
//! plan, and — unless it is a dry run — the stored run, started at once or at its scheduled time.
//! Shared by the REST API and the dashboard; refusals are audited too.

use chrono::Utc;
use serde::Serialize;
use uuid::Uuid;

use crate::access::audit::Audit;
use crate::access::auth::Principal;
use crate::state::AppState;
use crate::switchover::engine::{cluster_view, create, plan, spawn, Plan, SwitchoverRequest};
use crate::switchover::error::SwitchoverError;

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
        Some(m) => Err(SwitchoverError::Conflict {
            code: "cluster_in_maintenance",
            message: format!(
                "{cluster} is in maintenance until {} ({}: {})",
                m.ends_at.format("%Y-%m-%d %H:%M UTC"),
                m.author,
                m.reason
            ),
        }),
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
