//! What people ask of automatic failover (shared by the REST API and the dashboard): the status
//! of a cluster, a confirmed failover, the acknowledgement that lifts the anti-flapping hold,
//! lifting a kept fence once a node has rejoined, and the global switch. Each is audited.

use chrono::Utc;
use hapulse_protocol::{Action, LinkState, ReplicationRole};
use serde::Deserialize;
use sqlx::Row;
use uuid::Uuid;

use crate::access::audit::Audit;
use crate::access::auth::Principal;
use crate::agents::commands::{self, NewCommand};
use crate::failover::arbiter;
use crate::failover::decision::{self as failover, Decision, Mode};
use crate::failover::evidence;
use crate::failover::pauses::{self, Pause};
use crate::failover::status::{DecisionRow, FailoverStatus, PolicyView, UnacknowledgedMove};
use crate::fleet::live::NodeStatus;
use crate::fleet::view::ClusterView;
use crate::refusal::Refusal;
use crate::state::AppState;
use crate::switchover::error::SwitchoverError;

/// Why a request about automatic failover was refused or failed; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    /// Refused: a malformed request (400, naming the field: `reason`), an unknown cluster, node
    /// or failover (404), or the cluster's current state (409, with its code: `no_evidence`,
    /// `failover_refused`, `already_acknowledged`, `not_rejoined`).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Starting the failover run was refused or failed.
    #[error(transparent)]
    Run(#[from] SwitchoverError),
    /// PostgreSQL failed (HTTP 503 when it is unavailable, else 500).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The failover status of `cluster` (shared with the dashboard).
pub async fn load_status(state: &AppState, cluster: &str) -> Result<FailoverStatus, FailoverError> {
    let leader: Option<Option<String>> =
        sqlx::query_scalar("SELECT leader FROM clusters WHERE name = $1")
            .bind(cluster)
            .fetch_optional(&state.db)
            .await?;
    let Some(leader) = leader else {
        return Err(FailoverError::from(Refusal::not_found(format!(
            "cluster {cluster:?}"
        ))));
    };
    let rows = sqlx::query(
        "SELECT at, instance, action, candidate, reason FROM failover_decisions
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
                instance: r.try_get("instance")?,
                action: r.try_get("action")?,
                candidate: r.try_get("candidate")?,
                reason: r.try_get("reason")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    // Each instance's latest automatic move, when not acknowledged (an acknowledged one lifts
    // its instance's hold even when an older one was not).
    let unacknowledged: Vec<UnacknowledgedMove> = sqlx::query_as::<_, (String, Uuid)>(
        "SELECT instance, id FROM (SELECT DISTINCT ON (instance) instance, id, acknowledged_at, created_at
                                     FROM switchovers
                                    WHERE cluster = $1 AND automatic AND kind <> 'rejoin'
                                    ORDER BY instance, created_at DESC) last
          WHERE acknowledged_at IS NULL ORDER BY created_at DESC",
    )
    .bind(cluster)
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|(instance, id)| UnacknowledgedMove { instance, id })
    .collect();
    let enabled = arbiter::automatic_enabled(state).await?;
    let pause = pauses::of(&state.db, cluster).await?;
    let verdicts = verdicts_of(state, cluster);
    let p = state.settings().failover.policy(cluster, enabled);
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
        verdict: verdicts.first().cloned(),
        verdicts,
        decisions,
        unacknowledged_failover: unacknowledged.first().map(|u| u.id),
        unacknowledged,
        pause,
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
    /// The VRRP instance to fail over; needed only in a cluster of several instances.
    #[serde(default)]
    pub instance: Option<String>,
}

/// Checks and starts a person's failover; audited whether accepted or refused.
pub async fn request_failover(
    state: &AppState,
    cluster: &str,
    req: &FailoverRequest,
    who: &Principal,
) -> Result<Uuid, FailoverError> {
    check_reason(&req.reason)?;
    let view = crate::switchover::plan::cluster_view(state, cluster).await?;
    let target = format!("{cluster} → {}", req.target_node);
    let g = unit_evidence(state, cluster, req.instance.as_deref())?;
    let mut policy = state.settings().failover.policy(cluster, true);
    policy.mode = Mode::Auto;
    policy.anti_flap = std::time::Duration::ZERO;
    policy.grace = std::time::Duration::ZERO;
    if req.accept_data_loss {
        policy.max_lag_bytes = u64::MAX;
        policy.max_lag_seconds = f64::INFINITY;
    }
    let mut candidates = evidence::candidates(&g);
    candidates.retain(|c| c.node_id == req.target_node);
    if candidates.is_empty() {
        return Err(FailoverError::from(Refusal::not_found(format!(
            "node {:?} in cluster {cluster} (other than the leader {})",
            req.target_node, g.leader
        ))));
    }
    let decision = failover::decide(&failover::Situation {
        now: Utc::now(),
        policy,
        evidence: evidence::evidence(&g),
        candidates,
        history: failover::History {
            operation_running: false,
            server_started_at: state.judging_since(),
            last_automatic: None,
            // A person acts: a pause holds back automatic actions only.
            paused: None,
        },
    });
    let started = start_confirmed(state, &view, &g, req, &decision, who).await;
    if let Err(e) = &started {
        Audit::by(who, "failover", &target, &format!("refused: {e}"))
            .reason(&req.reason)
            .detail(serde_json::json!({ "accept_data_loss": req.accept_data_loss }))
            .record(&state.db)
            .await?;
    }
    started
}

/// Starts what the arbiter's rules decided for a person's request: a failover, or the database
/// following the VIP (the lossless switchover the proposal was for); 409 with the reason for
/// anything else.
async fn start_confirmed(
    state: &AppState,
    view: &ClusterView,
    g: &evidence::Gathered,
    req: &FailoverRequest,
    decision: &Decision,
    who: &Principal,
) -> Result<Uuid, FailoverError> {
    match decision {
        Decision::Failover { reason, .. } => {
            // Kept with the failover and in its audit row.
            let loss = if req.accept_data_loss {
                "; data loss beyond the bound accepted"
            } else {
                ""
            };
            let reason = format!("{} (confirmed{loss}: {reason})", req.reason);
            crate::switchover::request::start_failover(
                state,
                view,
                g,
                &req.target_node,
                &reason,
                false,
                who,
            )
            .await
            .map_err(FailoverError::from)
        }
        // The proposal was the database following the VIP: the same lossless switchover.
        Decision::FollowVip { reason, .. } => crate::switchover::request::start_vip_follow(
            state,
            view,
            g,
            &req.target_node,
            &format!("{} (confirmed: {reason})", req.reason),
            false,
            who,
        )
        .await
        .map_err(FailoverError::from),
        other => Err(FailoverError::from(Refusal::conflict(
            "failover_refused",
            other.reason().to_string(),
        ))),
    }
}

/// One line saying why: refused (400, field `reason`) when empty, longer than 1000 bytes or
/// with control characters.
fn check_reason(reason: &str) -> Result<(), FailoverError> {
    if reason.trim().is_empty() || reason.len() > 1000 || reason.chars().any(char::is_control) {
        return Err(FailoverError::from(Refusal::invalid(
            "invalid_body",
            "reason",
            "say why, in at most 1000 bytes, on one line",
        )));
    }
    Ok(())
}

/// Acknowledges failover `id` for `me` (shared with the dashboard); audited.
pub async fn acknowledge_failover(
    state: &AppState,
    id: Uuid,
    reason: &str,
    me: &Principal,
) -> Result<(), FailoverError> {
    check_reason(reason)?;
    let sw = crate::switchover::store::get(&state.db, id)
        .await?
        .filter(|s| {
            me.may_see(&s.cluster) && (s.kind == "failover" || s.automatic) && s.kind != "rejoin"
        })
        .ok_or_else(|| FailoverError::from(Refusal::not_found(format!("failover {id}"))))?;
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
        return Err(FailoverError::from(Refusal::conflict(
            "already_acknowledged",
            format!("failover {id} is acknowledged already"),
        )));
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

/// Lifts the fence on `node` of `cluster` for `me` once it has rejoined (see the REST handler
/// for the rules) in every VRRP instance it is kept fenced in (every instance it runs when kept
/// without one): lowers its priority below each instance's leader, then unfences it, under the
/// current epoch; audited. A `no_evidence` conflict, nothing lifted, while the arbiter knows no
/// leader of one of those instances. Returns the priority offset set
/// (the lowest, with several instances).
pub async fn unfence(
    state: &AppState,
    cluster: &str,
    node: &str,
    reason: &str,
    me: &Principal,
) -> Result<i32, FailoverError> {
    check_reason(reason)?;
    let view = crate::switchover::plan::cluster_view(state, cluster).await?;
    // The instances it is kept fenced in ('' or none kept: every instance it runs).
    let kept: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT instance FROM ({}) kept WHERE cluster = $1 AND node_id = $2",
        crate::failover::fences::ALL_KEPT
    ))
    .bind(cluster)
    .bind(node)
    .fetch_all(&state.db)
    .await?;
    let everywhere = kept.is_empty() || kept.iter().any(String::is_empty);
    let mut lifts = Vec::new();
    for v in unit_verdicts(state, cluster)? {
        let runs_it = view
            .instances
            .iter()
            .any(|i| i.name == v.instance && i.members.iter().any(|m| m.node_id == node));
        if !(everywhere || kept.contains(&v.instance)) {
            continue;
        }
        let Some(g) = v.evidence else {
            if runs_it {
                return Err(FailoverError::from(Refusal::conflict(
                    "no_evidence",
                    format!(
                        "the arbiter knows no leader of {} in {cluster} yet: {node} stays fenced there",
                        v.instance
                    ),
                )));
            }
            continue;
        };
        if runs_it || g.leader == node {
            lifts.push((g.instance.clone(), rejoined(&view, &g, cluster, node)?));
        }
    }
    let Some(offset) = lifts.iter().map(|(_, o)| *o).min() else {
        return Err(FailoverError::from(Refusal::not_found(format!(
            "node {node:?} in a VRRP instance of cluster {cluster}"
        ))));
    };
    let mut tx = state.db.begin().await?;
    let actions = lifts.into_iter().flat_map(|(instance, offset)| {
        [
            Action::SetPriorityOffset {
                instance: instance.clone(),
                offset,
            },
            Action::Fence {
                instance,
                fenced: false,
            },
        ]
    });
    for action in actions {
        commands::insert(
            &mut tx,
            &NewCommand {
                cluster: cluster.to_string(),
                node_id: node.to_string(),
                epoch: view.epoch,
                action,
                deadline: std::time::Duration::from_secs(60),
                switchover_id: None,
                requested_by: me.name.clone(),
            },
        )
        .await?;
    }
    crate::failover::fences::forget(&mut tx, Some(cluster), node).await?;
    Audit::by(me, "unfence", &format!("{cluster}/{node}"), "accepted")
        .reason(reason)
        .detail(serde_json::json!({ "priority_offset": offset, "epoch": view.epoch }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    state.commands.wake(node);
    Ok(offset)
}

/// The evidence behind the arbiter's latest verdict on `instance` of `cluster` (it names the
/// leader); `instance` may be left out when the cluster has one. A 400 `instance_required` when
/// it has several and none is named, a 404 for an instance it does not have, a `no_evidence`
/// conflict while the arbiter knows no leader.
fn unit_evidence(
    state: &AppState,
    cluster: &str,
    instance: Option<&str>,
) -> Result<evidence::Gathered, FailoverError> {
    let verdicts = verdicts_of(state, cluster);
    let verdict = match instance {
        Some(name) => verdicts
            .into_iter()
            .find(|v| v.instance == name)
            .ok_or_else(|| {
                Refusal::not_found(format!("VRRP instance {name:?} in cluster {cluster}"))
            })?,
        None if verdicts.len() > 1 => {
            let names: Vec<&str> = verdicts.iter().map(|v| v.instance.as_str()).collect();
            return Err(FailoverError::from(Refusal::invalid(
                "instance_required",
                "instance",
                format!(
                    "{cluster} has several VRRP instances ({}): name one",
                    names.join(", ")
                ),
            )));
        }
        None => verdicts
            .into_iter()
            .next()
            .ok_or_else(|| no_evidence(cluster))?,
    };
    verdict.evidence.ok_or_else(|| no_evidence(cluster))
}

/// A `no_evidence` conflict: the arbiter knows no leader yet.
fn no_evidence(cluster: &str) -> FailoverError {
    FailoverError::from(Refusal::conflict(
        "no_evidence",
        format!("the arbiter knows no leader of {cluster} yet"),
    ))
}

/// The arbiter's latest verdicts on `cluster`, one per VRRP instance (none before its first
/// round).
fn verdicts_of(state: &AppState, cluster: &str) -> Vec<evidence::Verdict> {
    state
        .verdicts
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(cluster)
        .cloned()
        .unwrap_or_default()
}

/// The arbiter's latest verdicts on `cluster`, one per VRRP instance; a `no_evidence` conflict
/// while it has none.
fn unit_verdicts(state: &AppState, cluster: &str) -> Result<Vec<evidence::Verdict>, FailoverError> {
    let found = verdicts_of(state, cluster);
    if found.is_empty() {
        return Err(no_evidence(cluster));
    }
    Ok(found)
}

/// A `not_rejoined` conflict.
fn not_rejoined(message: String) -> FailoverError {
    FailoverError::from(Refusal::conflict("not_rejoined", message))
}

/// Checks that `node` has rejoined `cluster` under leader `g.leader`: it is not the leader, it
/// is up, and it is a streaming standby on the leader's link (if any). Returns the priority
/// offset that puts it below the leader.
fn rejoined(
    view: &ClusterView,
    g: &evidence::Gathered,
    cluster: &str,
    node: &str,
) -> Result<i32, FailoverError> {
    if node == g.leader {
        return Err(not_rejoined(format!("{node} is the leader of {cluster}")));
    }
    let summary = view
        .nodes
        .iter()
        .find(|n| n.node_id == node)
        .ok_or_else(|| {
            FailoverError::from(Refusal::not_found(format!(
                "node {node:?} in cluster {cluster}"
            )))
        })?;
    if summary.status != NodeStatus::Up {
        return Err(not_rejoined(format!(
            "{node} is {}",
            summary.status.as_str()
        )));
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
                return Err(not_rejoined(format!(
                    "{node} is {} and {} on {link}: rejoin it as a streaming standby of {} first",
                    m.role.as_str(),
                    m.state.as_str(),
                    g.leader
                )))
            }
            None => return Err(not_rejoined(format!("{node} does not report {link}"))),
        }
    }
    priority_offset(view, g, node)
}

/// The priority offset that puts `node` 10 below the leader in the leader's instance (clamped
/// to what keepalived accepts, never raising it); a `not_rejoined` conflict while the base
/// priorities are unknown.
fn priority_offset(
    view: &ClusterView,
    g: &evidence::Gathered,
    node: &str,
) -> Result<i32, FailoverError> {
    let instance = view
        .instances
        .iter()
        .find(|i| i.name == g.instance)
        .ok_or_else(|| not_rejoined(format!("{node} does not report {}", g.instance)))?;
    let base = |n: &str| {
        instance
            .members
            .iter()
            .find(|m| m.node_id == n)
            .and_then(|m| m.base_priority)
    };
    let (Some(leader_base), Some(own_base)) = (base(&g.leader), base(node)) else {
        return Err(not_rejoined(
            "base priorities are unknown (no JSON dump yet)".into(),
        ));
    };
    Ok((i32::from(leader_base) - 10 - i32::from(own_base)).clamp(-253, 0))
}

/// Turns every automatic action on or off (the global switch, stored in `runtime_settings` so it
/// survives restarts), for `me`; audited.
pub async fn set_automatic(
    state: &AppState,
    enabled: bool,
    reason: &str,
    me: &Principal,
) -> Result<(), FailoverError> {
    check_reason(reason)?;
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "INSERT INTO runtime_settings (key, value, updated_by) VALUES ($1, $2, $3)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now(),
                                         updated_by = EXCLUDED.updated_by",
    )
    .bind(crate::failover::arbiter::SWITCH_KEY)
    .bind(sqlx::types::Json(enabled))
    .bind(&me.name)
    .execute(&mut *tx)
    .await?;
    let outcome = if enabled { "enabled" } else { "disabled" };
    Audit::by(me, "automatic_failover", "all clusters", outcome)
        .reason(reason)
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::warn!(by = %me.name, enabled = enabled, reason = %reason, "automatic failover switched");
    state.announce("*");
    Ok(())
}

/// Pauses `cluster` for `me` until it is resumed (`reason` says why; a pause already there is
/// replaced), audited: the arbiter keeps judging and recording it, and acts on nothing. 404 for
/// a cluster the server does not know.
pub async fn pause(
    state: &AppState,
    cluster: &str,
    reason: &str,
    me: &Principal,
) -> Result<Pause, FailoverError> {
    check_reason(reason)?;
    let mut tx = state.db.begin().await?;
    let known: Option<i32> = sqlx::query_scalar("SELECT 1 FROM clusters WHERE name = $1")
        .bind(cluster)
        .fetch_optional(&mut *tx)
        .await?;
    if known.is_none() {
        return Err(FailoverError::from(Refusal::not_found(format!(
            "cluster {cluster:?}"
        ))));
    }
    let pause = pauses::set(&mut tx, cluster, &me.name, reason).await?;
    Audit::by(me, "cluster_pause", cluster, "paused")
        .reason(reason)
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::warn!(cluster, by = %me.name, reason, "cluster paused: no automatic action until resumed");
    state.announce(cluster);
    Ok(pause)
}

/// Lifts `cluster`'s pause for `me`, audited. 404 when it is not paused.
pub async fn resume(state: &AppState, cluster: &str, me: &Principal) -> Result<(), FailoverError> {
    let mut tx = state.db.begin().await?;
    if !pauses::clear(&mut tx, cluster).await? {
        return Err(FailoverError::from(Refusal::not_found(format!(
            "a pause of cluster {cluster:?}"
        ))));
    }
    Audit::by(me, "cluster_resume", cluster, "resumed")
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::warn!(cluster, by = %me.name, "cluster resumed: automatic actions allowed again");
    state.announce(cluster);
    Ok(())
}
