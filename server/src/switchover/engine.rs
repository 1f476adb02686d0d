//! Planned switchover: move the master role of a VRRP instance (and the primary of the
//! replication link tied to it) to a chosen node, on purpose and safely.
//!
//! 1. **Preflight** ([`plan`]): the target exists, is up, is a BACKUP member of the instance,
//!    its lag is within the limit; the instance has exactly one master; no other switchover runs.
//! 2. **Accept** ([`create`]): in one transaction the cluster's epoch is raised (row lock) and
//!    the switchover row inserted; a partial unique index lets only one switchover per cluster be
//!    scheduled or running, so a concurrent request gets 409.
//! 3. **Run** ([`spawn`]): a state machine, recorded step by step. Steps send epoch-fenced
//!    commands to agents and wait for their results and for the reported state to follow:
//!    `pre_hook` → (`stop_old_primary` → `wait_for_catch_up` → `promote_target`, with a
//!    database) → `set_priorities` → `move_vip` → `verify` → `post_hook`. Each step has a
//!    timeout; on failure the run stops, lifts a fence it set, and records where it stopped and
//!    what state the cluster is in.
//!
//! The move sticks: before the VIP moves, every other member's priority is lowered below the
//! target's through its priority track file, so preemption cannot take it back. The VIP then
//! moves at once: the old master's instance is fenced (weight-0 track file → FAULT →
//! priority-0 advert), and the fence is lifted as soon as the target is MASTER.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hapulse_protocol::{Action, LinkState, RefusalReason, ReplicationRole, VrrpState};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

use crate::access::audit::Audit;
use crate::access::auth::Principal;
use crate::agents::commands::{self, NewCommand};
use crate::fleet::live::{EventKind, NewEvent, NodeStatus};
use crate::fleet::view::{self, ClusterView};
use crate::state::AppState;
use crate::switchover::error::SwitchoverError;

/// Body of `POST /api/v1/clusters/{cluster}/switchover`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchoverRequest {
    /// The node that should become master.
    pub target_node: String,
    /// VRRP instance to move; may be left out when the cluster has one.
    #[serde(default)]
    pub instance: Option<String>,
    /// Why (kept in the audit log and the event).
    pub reason: String,
    /// Only plan and preview; change nothing (200 instead of 202).
    #[serde(default)]
    pub dry_run: bool,
    /// Refuse when the target's replication lag is above this many bytes.
    #[serde(default)]
    pub max_lag_bytes: Option<u64>,
    /// Start at this time instead of now.
    #[serde(default)]
    pub scheduled_at: Option<DateTime<Utc>>,
}

/// One step of the plan and, once running, how it went.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Step {
    /// Step name (`move_vip`, …).
    pub name: String,
    /// What it does, for people.
    pub description: String,
    /// `pending`, `running`, `succeeded`, `skipped`, `failed`.
    pub state: String,
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// What happened.
    pub message: Option<String>,
}

/// The preview of a switchover (or the plan of a failover).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Plan {
    /// `switchover` (planned, the old master alive) or `failover` (the old master lost).
    pub kind: String,
    /// Cluster.
    pub cluster: String,
    /// VRRP instance.
    pub instance: String,
    /// The current master.
    pub old_master: String,
    /// The future master.
    pub target_node: String,
    /// The replication link moved with it (`postgresql:pg`), if the cluster has one tied to the
    /// instance with its primary on the old master.
    pub link: Option<String>,
    /// The target's replication lag now, bytes.
    pub target_lag_bytes: Option<u64>,
    /// The target's replication lag now, seconds.
    pub target_lag_seconds: Option<f64>,
    /// What would be lost if the old primary died now instead: the target's lag. A switchover
    /// itself loses nothing: it stops writes and waits for the target to catch up.
    pub data_at_risk_bytes: Option<u64>,
    /// Expected duration in seconds (VIP move ≈ 1 s with fencing; a database adds a shutdown,
    /// catch-up and promotion).
    pub expected_seconds: u64,
    /// The VIPs that move.
    pub vips: Vec<String>,
    /// The ordered steps.
    pub steps: Vec<Step>,
}

fn step(name: &str, description: String) -> Step {
    Step {
        name: name.into(),
        description,
        state: "pending".into(),
        started_at: None,
        finished_at: None,
        message: None,
    }
}

fn conflict(code: &'static str, message: String) -> SwitchoverError {
    SwitchoverError::Conflict { code, message }
}

/// The view of `name` with its epoch, or [`SwitchoverError::NotFound`].
pub async fn cluster_view(state: &AppState, name: &str) -> Result<ClusterView, SwitchoverError> {
    crate::fleet::clusters::with_epoch(state, name)
        .await?
        .ok_or_else(|| SwitchoverError::NotFound(format!("cluster {name:?}")))
}

/// Preflight and plan. Errors name the reason: 404 unknown cluster or target, 400 a missing
/// instance, 409 for a state that forbids the move.
pub fn plan(cluster: &ClusterView, req: &SwitchoverRequest) -> Result<Plan, SwitchoverError> {
    let instance = match &req.instance {
        Some(name) => cluster
            .instances
            .iter()
            .find(|i| &i.name == name)
            .ok_or_else(|| {
                SwitchoverError::invalid(
                    "invalid_body",
                    "instance",
                    format!("cluster {} has no VRRP instance {name:?}", cluster.name),
                )
            })?,
        None if cluster.instances.len() == 1 => &cluster.instances[0],
        None => {
            return Err(SwitchoverError::invalid(
                "invalid_body",
                "instance",
                format!("cluster {} has several instances; name one", cluster.name),
            ))
        }
    };
    if req.reason.trim().is_empty()
        || req.reason.len() > 1000
        || req.reason.chars().any(char::is_control)
    {
        return Err(SwitchoverError::invalid(
            "invalid_body",
            "reason",
            "say why, in at most 1000 bytes, on one line",
        ));
    }
    if let Some(at) = req.scheduled_at {
        let now = Utc::now();
        if at < now - chrono::Duration::minutes(1) || at > now + chrono::Duration::days(7) {
            return Err(SwitchoverError::invalid(
                "invalid_body",
                "scheduled_at",
                "must be between now and 7 days ahead",
            ));
        }
    }
    let Some(target_summary) = cluster.nodes.iter().find(|n| n.node_id == req.target_node) else {
        return Err(SwitchoverError::NotFound(format!(
            "target node {:?} in cluster {}",
            req.target_node, cluster.name
        )));
    };
    let Some(target) = instance
        .members
        .iter()
        .find(|m| m.node_id == req.target_node)
    else {
        return Err(conflict(
            "target_not_member",
            format!("{} is not a member of {}", req.target_node, instance.name),
        ));
    };
    if target_summary.status != NodeStatus::Up {
        return Err(conflict(
            "target_down",
            format!(
                "{} is {}: it must be up",
                req.target_node,
                target_summary.status.as_str()
            ),
        ));
    }
    if target.state != VrrpState::Backup {
        return Err(conflict(
            "target_not_backup",
            format!(
                "{} is {} in {}: it must be BACKUP",
                req.target_node, target.state, instance.name
            ),
        ));
    }
    let Some(old_master) = instance.master.clone() else {
        return Err(conflict(
            "no_single_master",
            format!(
                "{} has {} masters ({}); a switchover needs one healthy master",
                instance.name,
                instance.masters.len(),
                instance.masters.join(", ")
            ),
        ));
    };
    if let Some(down) = instance
        .members
        .iter()
        .find(|m| m.node_status != NodeStatus::Up)
    {
        return Err(conflict(
            "member_down",
            format!(
                "{} is {}: every member of {} must be up to change priorities safely",
                down.node_id,
                down.node_status.as_str(),
                instance.name
            ),
        ));
    }
    // A database tied to this instance moves with it, and only from the old master.
    let tied: Vec<&view::ReplicationView> = cluster
        .replication
        .iter()
        .filter(|r| r.vrrp_instance.as_deref() == Some(instance.name.as_str()))
        .collect();
    if let Some(elsewhere) = tied
        .iter()
        .find(|r| r.primary.as_deref() != Some(old_master.as_str()))
    {
        return Err(conflict(
            "primary_elsewhere",
            format!(
                "{} is tied to {} but its primary is {}, not the master {old_master}: fix that first",
                elsewhere.link,
                instance.name,
                if elsewhere.primaries.is_empty() { "nobody".into() } else { elsewhere.primaries.join(", ") }
            ),
        ));
    }
    let link = tied.first().copied();
    let target_link = link.and_then(|l| l.members.iter().find(|m| m.node_id == req.target_node));
    if let Some(l) = link {
        match target_link {
            // Only a streaming standby receives the WAL the old primary's shutdown sends.
            Some(m) if m.role == ReplicationRole::Secondary && m.state == LinkState::Streaming => {}
            Some(m) => {
                return Err(conflict(
                    "target_not_standby",
                    format!(
                        "{} is {} and {} on {}: it must be a streaming standby",
                        req.target_node,
                        m.role.as_str(),
                        m.state.as_str(),
                        l.link
                    ),
                ))
            }
            None => {
                return Err(conflict(
                    "target_not_standby",
                    format!("{} does not report {}", req.target_node, l.link),
                ))
            }
        }
    }
    let lag_bytes = target_link.and_then(|m| m.lag_bytes);
    match (req.max_lag_bytes, lag_bytes, link) {
        (Some(max), Some(lag), _) if lag > max => {
            return Err(conflict(
                "lag_too_high",
                format!(
                    "{}'s lag is {lag} bytes, above the limit of {max}",
                    req.target_node
                ),
            ))
        }
        (Some(_), None, Some(l)) => {
            return Err(conflict(
                "lag_unknown",
                format!(
                    "{}'s lag on {} is unknown, so max_lag_bytes cannot be checked",
                    req.target_node, l.link
                ),
            ))
        }
        _ => {}
    }
    let mut steps = vec![step(
        "pre_hook",
        format!(
            "run the pre-switchover hook on {old_master} and {} (where enabled); a failure aborts",
            req.target_node
        ),
    )];
    if let Some(l) = link {
        steps.push(step("stop_old_primary", format!("stop writes: fast shutdown of the {} primary on {old_master} (its standbys receive all WAL first)", l.link)));
        steps.push(step(
            "wait_for_catch_up",
            format!(
                "wait until {} has replayed everything it received",
                req.target_node
            ),
        ));
        steps.push(step(
            "promote_target",
            format!("promote {} to {} primary", req.target_node, l.link),
        ));
    }
    steps.push(step(
        "set_priorities",
        format!(
            "make it stick: lower every other member of {} below {}'s priority",
            instance.name, req.target_node
        ),
    ));
    steps.push(step("move_vip", format!("fence {} on {old_master} (FAULT, priority-0 advert) until {} is MASTER, then lift the fence", instance.name, req.target_node)));
    steps.push(step(
        "verify",
        format!(
            "{} is MASTER and holds the VIP, {old_master} is not, for 3 s",
            req.target_node
        ),
    ));
    steps.push(step(
        "post_hook",
        "run the post-switchover hook (where enabled)".into(),
    ));
    Ok(Plan {
        kind: "switchover".into(),
        cluster: cluster.name.clone(),
        instance: instance.name.clone(),
        old_master,
        target_node: req.target_node.clone(),
        link: link.map(|l| l.link.clone()),
        target_lag_bytes: lag_bytes,
        target_lag_seconds: target_link.and_then(|m| m.lag_seconds),
        data_at_risk_bytes: lag_bytes,
        expected_seconds: if link.is_some() { 10 } else { 3 },
        vips: instance.vips.iter().map(|v| v.vip.clone()).collect(),
        steps,
    })
}

/// The plan of a failover: the old master `old_master` is lost (the arbiter's evidence says so),
/// `target` takes over. Steps: fence the old master (the cluster's fencing hook, or nothing when
/// the cluster accepts the risk), promote the target's database, lower every other reachable
/// member's priority, wait for the target to be MASTER with the VIP, verify.
pub fn failover_plan(
    cluster: &ClusterView,
    instance: &str,
    link: Option<&str>,
    old_master: &str,
    target: &str,
) -> Plan {
    let mut steps = vec![step(
        "fence_old_master",
        format!("fence {old_master}: run the fencing hook (STONITH) and require its success, unless the cluster accepts the risk"),
    )];
    if let Some(l) = link {
        steps.push(step(
            "promote_target",
            format!("promote {target} to {l} primary"),
        ));
    }
    steps.push(step(
        "set_priorities",
        format!("make it stick: lower every other reachable member of {instance} below {target}'s priority"),
    ));
    steps.push(step(
        "take_vip",
        format!("{target} is MASTER of {instance} with the VIP"),
    ));
    steps.push(step(
        "verify",
        format!("{target} is MASTER and holds the VIP, {old_master} is not, for 3 s"),
    ));
    let view = cluster.instances.iter().find(|i| i.name == instance);
    let target_link = link.and_then(|k| {
        cluster
            .replication
            .iter()
            .find(|r| r.link == k)?
            .members
            .iter()
            .find(|m| m.node_id == target)
    });
    Plan {
        kind: "failover".into(),
        cluster: cluster.name.clone(),
        instance: instance.to_string(),
        old_master: old_master.to_string(),
        target_node: target.to_string(),
        link: link.map(str::to_string),
        target_lag_bytes: target_link.and_then(|m| m.lag_bytes),
        target_lag_seconds: target_link.and_then(|m| m.lag_seconds),
        data_at_risk_bytes: target_link.and_then(|m| m.lag_bytes),
        expected_seconds: if link.is_some() { 5 } else { 2 },
        vips: view.map_or_else(Vec::new, |i| i.vips.iter().map(|v| v.vip.clone()).collect()),
        steps,
    }
}

/// Accepts and starts a failover of `g.instance` from the leader to `candidate` (the arbiter's
/// decision, or a person's confirmation): raises the epoch, stores it, runs it. 409 when another
/// switchover or failover of the cluster is scheduled or running.
pub async fn start_failover(
    state: &AppState,
    cluster: &ClusterView,
    g: &crate::failover::evidence::Gathered,
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
    let req = SwitchoverRequest {
        target_node: candidate.to_string(),
        instance: Some(g.instance.clone()),
        reason: reason.chars().take(1000).collect(),
        dry_run: false,
        max_lag_bytes: None,
        scheduled_at: None,
    };
    let (id, _) = create(state, &plan, &req, who, automatic).await?;
    spawn(state.clone(), id);
    Ok(id)
}

/// A stored switchover, as `GET /api/v1/switchovers/{id}` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Switchover {
    /// Id.
    pub id: Uuid,
    /// `switchover` or `failover`.
    pub kind: String,
    /// Started by the arbiter, not a person.
    pub automatic: bool,
    /// When a person acknowledged this automatic failover (lifts the anti-flapping hold).
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// Who acknowledged it.
    pub acknowledged_by: Option<String>,
    /// Cluster.
    pub cluster: String,
    /// VRRP instance.
    pub instance: String,
    /// Future master.
    pub target_node: String,
    /// Master when it was requested.
    pub old_master: String,
    /// Replication link moved with it.
    pub link: Option<String>,
    /// Why.
    pub reason: String,
    /// Who asked.
    pub requested_by: String,
    /// `scheduled`, `running`, `succeeded`, `failed`, `cancelled`.
    pub state: String,
    /// The cluster epoch it raised.
    pub epoch: u64,
    /// When it was requested.
    pub created_at: DateTime<Utc>,
    /// When it should start.
    pub scheduled_at: Option<DateTime<Utc>>,
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Steps with their states.
    pub steps: Vec<Step>,
    /// Where and why it stopped, and the state it left the cluster in.
    pub error: Option<String>,
}

/// Loads a switchover.
pub async fn get(pool: &sqlx::PgPool, id: Uuid) -> Result<Option<Switchover>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT id, kind, automatic, acknowledged_at, acknowledged_by, cluster, instance, target_node,
                old_master, link, reason, requested_by, state, epoch,
                created_at, scheduled_at, started_at, finished_at, steps, error
           FROM switchovers WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let steps: sqlx::types::Json<Vec<Step>> = r.try_get("steps")?;
    Ok(Some(Switchover {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        automatic: r.try_get("automatic")?,
        acknowledged_at: r.try_get("acknowledged_at")?,
        acknowledged_by: r.try_get("acknowledged_by")?,
        cluster: r.try_get("cluster")?,
        instance: r.try_get("instance")?,
        target_node: r.try_get("target_node")?,
        old_master: r.try_get("old_master")?,
        link: r.try_get("link")?,
        reason: r.try_get("reason")?,
        requested_by: r.try_get("requested_by")?,
        state: r.try_get("state")?,
        epoch: r.try_get::<i64, _>("epoch")? as u64,
        created_at: r.try_get("created_at")?,
        scheduled_at: r.try_get("scheduled_at")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        steps: steps.0,
        error: r.try_get("error")?,
    }))
}

/// Accepts a planned switchover or a failover (`plan.kind`; `automatic` when the arbiter started
/// it): raises the cluster's epoch and stores it in one transaction. 409 `switchover_running`
/// when another one is scheduled or running.
pub async fn create(
    state: &AppState,
    plan: &Plan,
    req: &SwitchoverRequest,
    who: &Principal,
    automatic: bool,
) -> Result<(Uuid, u64), SwitchoverError> {
    let id = Uuid::new_v4();
    let mut tx = state.db.begin().await?;
    let epoch: i64 =
        sqlx::query_scalar("UPDATE clusters SET epoch = epoch + 1 WHERE name = $1 RETURNING epoch")
            .bind(&plan.cluster)
            .fetch_one(&mut *tx)
            .await?;
    let inserted = sqlx::query(
        "INSERT INTO switchovers (id, cluster, instance, target_node, old_master, link, reason, requested_by,
                                  requested_from, state, epoch, max_lag_bytes, scheduled_at, steps, kind, automatic)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'scheduled', $10, $11, $12, $13, $14, $15)",
    )
    .bind(id)
    .bind(&plan.cluster)
    .bind(&plan.instance)
    .bind(&plan.target_node)
    .bind(&plan.old_master)
    .bind(&plan.link)
    .bind(&req.reason)
    .bind(&who.name)
    .bind(&who.source)
    .bind(epoch)
    .bind(req.max_lag_bytes.map(|b| b.min(i64::MAX as u64) as i64))
    .bind(req.scheduled_at)
    .bind(sqlx::types::Json(&plan.steps))
    .bind(&plan.kind)
    .bind(automatic)
    .execute(&mut *tx)
    .await;
    if let Err(sqlx::Error::Database(e)) = &inserted {
        if e.constraint() == Some("switchovers_one_active") {
            return Err(conflict(
                "switchover_running",
                format!(
                    "another switchover or failover of {} is scheduled or running",
                    plan.cluster
                ),
            ));
        }
    }
    inserted?;
    // The audit row commits with the switchover: accepted means recorded.
    let target = format!("{}/{} → {}", plan.cluster, plan.instance, plan.target_node);
    Audit::by(who, &plan.kind, &target, "accepted")
        .reason(&req.reason)
        .detail(serde_json::json!({ "switchover_id": id, "epoch": epoch, "automatic": automatic }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((id, epoch as u64))
}

/// Cancels a switchover that has not started. 409 when it has.
pub async fn cancel(state: &AppState, id: Uuid, who: &Principal) -> Result<(), SwitchoverError> {
    let updated = sqlx::query("UPDATE switchovers SET state = 'cancelled', finished_at = now() WHERE id = $1 AND state = 'scheduled' AND started_at IS NULL")
        .bind(id)
        .execute(&state.db)
        .await?;
    if updated.rows_affected() == 0 {
        return match get(&state.db, id).await? {
            None => Err(SwitchoverError::NotFound(format!("switchover {id}"))),
            Some(s) => Err(conflict(
                "switchover_started",
                format!(
                    "switchover {id} is {}; only a scheduled one can be cancelled",
                    s.state
                ),
            )),
        };
    }
    Audit::by(who, "switchover_cancel", &id.to_string(), "cancelled")
        .record(&state.db)
        .await?;
    Ok(())
}

/// Marks switchovers a previous server process left running as failed, and starts the scheduled
/// ones. Called at start-up.
pub async fn recover(state: &AppState) -> Result<(), sqlx::Error> {
    let interrupted: Vec<(Uuid, String)> = sqlx::query_as(
        "UPDATE switchovers SET state = 'failed', finished_at = now(),
                error = 'interrupted: the server stopped while it ran; check the cluster page before acting (a fence may still be set)'
          WHERE state = 'running' RETURNING id, cluster",
    )
    .fetch_all(&state.db)
    .await?;
    for (id, cluster) in interrupted {
        tracing::error!(switchover = %id, cluster = %cluster, "switchover interrupted by a server restart");
    }
    let scheduled: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM switchovers WHERE state = 'scheduled'")
            .fetch_all(&state.db)
            .await?;
    for id in scheduled {
        spawn(state.clone(), id);
    }
    Ok(())
}

/// Runs switchover `id` in the background.
pub fn spawn(state: AppState, id: Uuid) {
    tokio::spawn(async move {
        if let Err(e) = run(&state, id).await {
            tracing::error!(switchover = %id, error = %e, "switchover could not be recorded");
        }
    });
}

/// The run: waits for `scheduled_at`, checks the plan again against the cluster as it is now,
/// then runs the steps in order. Whatever happens (a step failing, the database failing), it
/// lifts a fence it set, expires its commands and records how it ended.
async fn run(state: &AppState, id: Uuid) -> Result<(), sqlx::Error> {
    let Some(sw) = get(&state.db, id).await? else {
        return Ok(());
    };
    if let Some(at) = sw.scheduled_at {
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = state.shutdown.cancelled() => return Ok(()),
        }
    }
    let started = sqlx::query("UPDATE switchovers SET state = 'running', started_at = now() WHERE id = $1 AND state = 'scheduled'")
        .bind(id)
        .execute(&state.db)
        .await?;
    if started.rows_affected() == 0 {
        return Ok(()); // cancelled meanwhile
    }
    let mut run = Run {
        state,
        sw: sw.clone(),
        fenced: false,
        epoch: sw.epoch,
        checkpoint_lsn: None,
    };
    // The alerts this switchover will cause, and only those, are silenced while it runs.
    let silence = crate::alerting::silences::create(
        &state.db,
        &crate::alerting::silences::NewSilence {
            cluster: Some(sw.cluster.clone()),
            node_id: None,
            rules: SWITCHOVER_SILENCES.iter().map(|r| r.to_string()).collect(),
            severity: None,
            maintenance: false,
            starts_at: None,
            ends_at: Utc::now() + chrono::Duration::minutes(10),
            author: sw.requested_by.clone(),
            reason: format!("switchover {id} of {} to {}", sw.instance, sw.target_node),
        },
        Some(id),
    )
    .await
    .map_err(|e| tracing::warn!(error = %e, "cannot silence the switchover's alerts"))
    .ok();
    log_db(
        event(
            state,
            &sw,
            EventKind::SwitchoverStarted,
            format!(
                "{} of {} from {} to {} started: {}",
                sw.kind, sw.instance, sw.old_master, sw.target_node, sw.reason
            ),
        )
        .await,
    );
    // A scheduled switchover was planned earlier: the cluster must still allow it. A failover
    // was decided on the evidence of this very moment.
    let replanned = if sw.kind == "failover" {
        Ok(())
    } else {
        match cluster_view(state, &sw.cluster).await {
            Ok(view) => {
                let req = SwitchoverRequest {
                    target_node: sw.target_node.clone(),
                    instance: Some(sw.instance.clone()),
                    reason: sw.reason.clone(),
                    dry_run: true,
                    max_lag_bytes: None,
                    scheduled_at: None,
                };
                plan(&view, &req).map_err(|e| e.to_string()).and_then(|p| {
                    if p.old_master == sw.old_master && p.link == sw.link {
                        Ok(())
                    } else {
                        Err(format!(
                            "the cluster changed since the request (master now {}, link {:?})",
                            p.old_master, p.link
                        ))
                    }
                })
            }
            Err(e) => Err(e.to_string()),
        }
    };
    let mut failure = replanned.err().map(|e| ("preflight".to_string(), e));
    for index in 0..sw.steps.len() {
        if failure.is_some() {
            break;
        }
        let name = sw.steps[index].name.clone();
        log_db(run.mark(index, "running", None).await);
        let limit = step_timeout(&name);
        let outcome = tokio::time::timeout(limit, run.step(&name))
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {limit:?}")));
        match outcome {
            Ok(StepOutcome::Done(message)) => {
                log_db(run.mark(index, "succeeded", Some(message)).await)
            }
            Ok(StepOutcome::Skipped(message)) => {
                log_db(run.mark(index, "skipped", Some(message)).await)
            }
            Err(message) => {
                log_db(run.mark(index, "failed", Some(message.clone())).await);
                failure = Some((name, message));
            }
        }
    }
    let (final_state, error) = match failure {
        None => ("succeeded", None),
        Some((step, message)) => {
            let mut described = format!("stopped at {step}: {message}.");
            if step == "promote_target" {
                described.push_str(" The promotion may still complete on its own: check the target before restarting the old primary, or there will be two primaries.");
            }
            if run.fenced {
                described.push_str(&run.lift_fence().await);
            }
            described.push_str(&run.describe_state());
            ("failed", Some(described))
        }
    };
    if let Some(silence) = &silence {
        // A little after the end, so the last reports of the move settle first.
        let end = sqlx::query(
            "UPDATE silences SET ends_at = now() + interval '15 seconds' WHERE id = $1",
        )
        .bind(silence.id)
        .execute(&state.db)
        .await;
        log_db(end.map(|_| ()));
    }
    if final_state == "succeeded" {
        // The target is the master of this epoch now; a lost old master stays fenced.
        let recorded = async {
            let mut tx = state.db.begin().await?;
            sqlx::query("UPDATE clusters SET leader = $2 WHERE name = $1")
                .bind(&sw.cluster)
                .bind(&sw.target_node)
                .execute(&mut *tx)
                .await?;
            if sw.kind == "failover" {
                let reason = format!("the old master of failover {id}");
                crate::failover::fences::keep_fenced(&mut tx, &sw.cluster, &sw.old_master, &reason)
                    .await?;
            }
            tx.commit().await
        };
        log_db(recorded.await);
    }
    // None of this switchover's commands may run from now on.
    log_db(commands::expire_switchover(&state.db, id).await.map(|_| ()));
    let mut recorded = false;
    for attempt in 0..5u64 {
        let done = sqlx::query("UPDATE switchovers SET state = $2, finished_at = now(), error = $3 WHERE id = $1 AND state = 'running'")
            .bind(id)
            .bind(final_state)
            .bind(&error)
            .execute(&state.db)
            .await;
        match done {
            Ok(_) => {
                recorded = true;
                break;
            }
            Err(e) => {
                tracing::error!(switchover = %id, error = %e, attempt, "cannot record the switchover's end; retrying");
                tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
            }
        }
    }
    if !recorded {
        tracing::error!(switchover = %id, state = final_state, error = ?error, "the switchover's end is not recorded; the next server start marks it failed");
    }
    let (kind, message) = match &error {
        None => (
            EventKind::SwitchoverSucceeded,
            format!(
                "{} of {} to {} succeeded",
                sw.kind, sw.instance, sw.target_node
            ),
        ),
        Some(e) => (
            EventKind::SwitchoverFailed,
            format!(
                "{} of {} to {} failed, {e}",
                sw.kind, sw.instance, sw.target_node
            ),
        ),
    };
    log_db(event(state, &sw, kind, message).await);
    let target = format!("{}/{} → {}", sw.cluster, sw.instance, sw.target_node);
    let audit = Audit {
        actor: &sw.requested_by,
        role: None,
        source: None,
        action: &sw.kind,
        target: &target,
        reason: Some(&sw.reason),
        outcome: final_state,
        detail: serde_json::json!({ "switchover_id": id, "error": error }),
    };
    log_db(audit.record(&state.db).await);
    state.announce(&sw.cluster);
    Ok(())
}

/// Logs a database error that must not stop a running switchover's bookkeeping.
fn log_db(result: Result<(), sqlx::Error>) {
    if let Err(e) = result {
        tracing::error!(error = %e, "switchover bookkeeping failed");
    }
}

/// Rules a switchover trips on purpose while it runs (the old master in FAULT, the VIP and the
/// primary briefly apart, the database stopped): silenced for its duration.
const SWITCHOVER_SILENCES: [&str; 5] = [
    "instance_fault",
    "no_master",
    "vip_not_on_primary",
    "replication_broken",
    "replication_lag",
];

fn step_timeout(name: &str) -> Duration {
    match name {
        "stop_old_primary" | "promote_target" | "pre_hook" | "post_hook" => Duration::from_secs(90),
        "wait_for_catch_up" => Duration::from_secs(60),
        _ => Duration::from_secs(30),
    }
}

async fn event(
    state: &AppState,
    sw: &Switchover,
    kind: EventKind,
    message: String,
) -> Result<(), sqlx::Error> {
    let e = NewEvent {
        at: Utc::now(),
        cluster: sw.cluster.clone(),
        node_id: Some(sw.target_node.clone()),
        instance: Some(sw.instance.clone()),
        link: sw.link.clone(),
        kind,
        from_state: Some(sw.old_master.clone()),
        to_state: Some(sw.target_node.clone()),
        message,
        detail: serde_json::json!({ "switchover_id": sw.id, "epoch": sw.epoch, "reason": sw.reason, "requested_by": sw.requested_by }),
    };
    let mut tx = state.db.begin().await?;
    crate::fleet::store::insert_events(&mut tx, std::slice::from_ref(&e)).await?;
    tx.commit().await?;
    state.metrics.event(kind);
    state.announce(&sw.cluster);
    Ok(())
}

enum StepOutcome {
    Done(String),
    Skipped(String),
}

struct Run<'a> {
    state: &'a AppState,
    sw: Switchover,
    /// The old master's fence is set and must be lifted if the run stops.
    fenced: bool,
    /// The epoch commands carry: the switchover's, or a newer one for the compensation after a
    /// failure (so a late copy of one of its own commands cannot undo it).
    epoch: u64,
    /// The old primary's shutdown checkpoint, as its agent reported it after the stop.
    checkpoint_lsn: Option<u64>,
}

impl Run<'_> {
    async fn mark(
        &mut self,
        index: usize,
        state: &str,
        message: Option<String>,
    ) -> Result<(), sqlx::Error> {
        let now = Utc::now();
        if let Some(step) = self.sw.steps.get_mut(index) {
            if state == "running" {
                step.started_at = Some(now);
            } else {
                step.finished_at = Some(now);
            }
            step.state = state.to_string();
            step.message = message;
            tracing::info!(switchover = %self.sw.id, step = %step.name, state, message = ?step.message, "switchover step");
        }
        sqlx::query("UPDATE switchovers SET steps = $2 WHERE id = $1")
            .bind(self.sw.id)
            .bind(sqlx::types::Json(&self.sw.steps))
            .execute(&self.state.db)
            .await?;
        self.state.announce(&self.sw.cluster);
        Ok(())
    }

    /// Issues one command to `node` (with the run's epoch) and waits for its result:
    /// Ok((message, facts)) when it succeeded; Err((description, refused)) when it failed, was
    /// refused, or no result came in time.
    async fn command(
        &self,
        node: &str,
        action: Action,
    ) -> Result<(String, BTreeMap<String, String>), (String, Option<RefusalReason>)> {
        let new = NewCommand {
            cluster: self.sw.cluster.clone(),
            node_id: node.to_string(),
            epoch: self.epoch,
            action,
            deadline: Duration::from_secs(30),
            switchover_id: Some(self.sw.id),
            requested_by: self.sw.requested_by.clone(),
        };
        let id = async {
            let mut tx = self.state.db.begin().await?;
            let id = commands::insert(&mut tx, &new).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(id)
        }
        .await
        .map_err(|e| (format!("cannot store the command for {node}: {e}"), None))?;
        // NOTIFY wakes every replica's long polls; this wakes ours even if the listener is
        // reconnecting.
        self.state.commands.wake(node);
        let kind = new.action.kind();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(85);
        loop {
            let waiting = self.state.commands.result_arrived();
            let status = commands::status(&self.state.db, id)
                .await
                .map_err(|e| (format!("reading command {id}: {e}"), None))?;
            match status {
                Some(s) if s.state == "succeeded" => {
                    return Ok((format!("{node}: {}", s.result.unwrap_or_default()), s.data))
                }
                Some(s) if s.state == "refused" => {
                    return Err((
                        format!("{node} refused {kind}: {}", s.result.unwrap_or_default()),
                        s.refusal,
                    ))
                }
                Some(s) if s.state == "failed" || s.state == "expired" => {
                    return Err((
                        format!(
                            "{node}: {kind} {}: {}",
                            s.state,
                            s.result
                                .unwrap_or_else(|| "no result before the deadline".into())
                        ),
                        None,
                    ))
                }
                _ => {}
            }
            if tokio::time::Instant::now() > deadline {
                return Err((format!("{node} did not answer {kind}"), None));
            }
            tokio::select! {
                _ = waiting => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// [`Run::command`], keeping only the message.
    async fn command_message(&self, node: &str, action: Action) -> Result<String, String> {
        self.command(node, action)
            .await
            .map(|(m, _)| m)
            .map_err(|(m, _)| m)
    }

    /// Polls live state every 50 ms until `check` holds, or fails with `what` after `limit`.
    async fn until(
        &self,
        limit: Duration,
        what: &str,
        check: impl Fn(&ClusterView) -> bool,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let holds = view::cluster_view(&self.state.live(), &self.sw.cluster, Utc::now())
                .is_some_and(|c| check(&c));
            if holds {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("{what} did not happen within {limit:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn describe_state(&self) -> String {
        let live = self.state.live();
        let Some(c) = view::cluster_view(&live, &self.sw.cluster, Utc::now()) else {
            return String::new();
        };
        let mut out = String::new();
        if let Some(i) = c.instances.iter().find(|i| i.name == self.sw.instance) {
            out.push_str(&format!(
                " Now: {} master {}, VIP on {}.",
                i.name,
                if i.masters.is_empty() {
                    "none".into()
                } else {
                    i.masters.join(", ")
                },
                i.vips
                    .iter()
                    .flat_map(|v| v.holders.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(l) = self
            .sw
            .link
            .as_ref()
            .and_then(|k| c.replication.iter().find(|r| &r.link == k))
        {
            out.push_str(&format!(
                " {} primary: {}.",
                l.link,
                if l.primaries.is_empty() {
                    "none".into()
                } else {
                    l.primaries.join(", ")
                }
            ));
        }
        out
    }

    fn link_member<'c>(
        c: &'c ClusterView,
        link: &str,
        node: &str,
    ) -> Option<&'c view::LinkMemberView> {
        c.replication
            .iter()
            .find(|r| r.link == link)?
            .members
            .iter()
            .find(|m| m.node_id == node)
    }

    /// Lifts the old master's fence with a newer epoch; says how that went.
    async fn lift_fence(&mut self) -> String {
        let raised: Result<i64, sqlx::Error> = sqlx::query_scalar(
            "UPDATE clusters SET epoch = epoch + 1 WHERE name = $1 RETURNING epoch",
        )
        .bind(&self.sw.cluster)
        .fetch_one(&self.state.db)
        .await;
        if let Ok(epoch) = raised {
            self.epoch = epoch as u64;
        }
        let old = self.sw.old_master.clone();
        match self.command(&old, Action::Fence { instance: self.sw.instance.clone(), fenced: false }).await {
            Ok(_) => {
                self.fenced = false;
                " The fence on the old master was lifted.".into()
            }
            Err((e, _)) => format!(" The fence on the old master could NOT be lifted ({e}): its instance stays in FAULT until its fence file holds 0."),
        }
    }

    /// Waits (15 s at most) until the target is the instance's only MASTER and holds the VIP.
    async fn target_takes_vip(&self) -> Result<(), String> {
        let (target, instance) = (self.sw.target_node.clone(), self.sw.instance.clone());
        self.until(
            Duration::from_secs(15),
            "the target becoming MASTER with the VIP",
            |c| {
                c.instances.iter().any(|i| {
                    i.name == instance
                        && i.master.as_deref() == Some(target.as_str())
                        && i.members.iter().any(|m| m.node_id == target && m.holds_vip)
                })
            },
        )
        .await
    }

    /// STONITH before a promotion: the cluster's fencing hook must succeed; without one the step
    /// is skipped only when the cluster accepts the risk.
    async fn fence_old_master(&self) -> Result<StepOutcome, String> {
        let sw = &self.sw;
        let policy = self.state.settings.failover.clusters.get(&sw.cluster);
        let Some(hook) = policy.and_then(|p| p.fencing_hook.as_ref()) else {
            return if policy.is_some_and(|p| p.accept_unfenced) {
                Ok(StepOutcome::Skipped(format!(
                    "no fencing hook: the cluster accepts the risk (failover.clusters.{}.accept_unfenced); agents that self-fence are the only fence",
                    sw.cluster
                )))
            } else {
                Err(format!(
                    "{} cannot be fenced: no fencing hook (failover.clusters.{}.fencing_hook) and the cluster does not accept the risk",
                    sw.old_master, sw.cluster
                ))
            };
        };
        let limit = policy.map_or(Duration::from_secs(30), |p| p.fencing_timeout);
        // Validated non-empty at start-up (failover.clusters.*.fencing_hook).
        let (program, args) = hook.split_first().ok_or("empty fencing hook")?;
        let child = tokio::process::Command::new(program)
            .args(args)
            .env("HAPULSE_CLUSTER", &sw.cluster)
            .env("HAPULSE_NODE_ID", &sw.old_master)
            .env("HAPULSE_TARGET", &sw.target_node)
            .env("HAPULSE_EPOCH", sw.epoch.to_string())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(limit, child)
            .await
            .map_err(|_| format!("the fencing hook {program} did not finish within {limit:?}"))?
            .map_err(|e| format!("cannot run the fencing hook {program}: {e}"))?;
        let text = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        let tail: String = {
            let t = text.trim();
            let start = t.len().saturating_sub(300);
            t.get(start..).unwrap_or(t).to_string()
        };
        if output.status.success() {
            Ok(StepOutcome::Done(format!(
                "fencing hook fenced {}: {tail}",
                sw.old_master
            )))
        } else {
            Err(format!(
                "the fencing hook failed ({}): {tail}; no promotion without a fenced old master",
                output.status
            ))
        }
    }

    /// The target's link as live state shows it.
    fn target_link(&self) -> Option<view::LinkMemberView> {
        let key = self.sw.link.as_ref()?;
        let live = self.state.live();
        let c = view::cluster_view(&live, &self.sw.cluster, Utc::now())?;
        Self::link_member(&c, key, &self.sw.target_node).cloned()
    }

    /// The replay position the target last reported (raw `replay_lsn` of its standby link).
    fn target_replay_lsn(&self) -> Option<u64> {
        let key = self.sw.link.as_ref()?;
        let live = self.state.live();
        let node = live.nodes.get(&self.sw.target_node)?;
        let link = node.link(key)?;
        hapulse_protocol::parse_lsn(link.raw.get("replay_lsn")?)
    }

    async fn step(&mut self, name: &str) -> Result<StepOutcome, String> {
        let sw = self.sw.clone();
        let link_name = sw
            .link
            .as_ref()
            .map(|l| l.split_once(':').map_or(l.as_str(), |(_, n)| n).to_string());
        match name {
            "pre_hook" | "post_hook" => {
                let phase = if name == "pre_hook" { "pre" } else { "post" };
                let env = BTreeMap::from([
                    ("CLUSTER".to_string(), sw.cluster.clone()),
                    ("INSTANCE".to_string(), sw.instance.clone()),
                    ("TARGET".to_string(), sw.target_node.clone()),
                    ("OLD_MASTER".to_string(), sw.old_master.clone()),
                    ("REASON".to_string(), sw.reason.clone()),
                    ("EPOCH".to_string(), sw.epoch.to_string()),
                ]);
                let mut ran = Vec::new();
                for node in [&sw.old_master, &sw.target_node] {
                    match self
                        .command(
                            node,
                            Action::Hook {
                                phase: phase.into(),
                                env: env.clone(),
                            },
                        )
                        .await
                    {
                        Ok((m, _)) => ran.push(m),
                        // A host that has not enabled hooks has none to run.
                        Err((_, Some(RefusalReason::NotEnabled))) => {}
                        Err((m, _)) => return Err(m),
                    }
                }
                Ok(if ran.is_empty() {
                    StepOutcome::Skipped("no hook enabled on either node".into())
                } else {
                    StepOutcome::Done(ran.join("; "))
                })
            }
            "stop_old_primary" => {
                let link = link_name.ok_or("no link")?;
                // Only a standby that is streaming now receives the WAL the shutdown sends.
                match self.target_link() {
                    Some(m) if m.state == LinkState::Streaming => {}
                    Some(m) => {
                        return Err(format!(
                        "{} is {} on {}, not streaming: stopping the primary now could lose data",
                        sw.target_node,
                        m.state.as_str(),
                        link
                    ))
                    }
                    None => return Err(format!("{} does not report the link", sw.target_node)),
                }
                let (message, data) = self
                    .command(&sw.old_master, Action::PostgresStop { link })
                    .await
                    .map_err(|(m, _)| m)?;
                self.checkpoint_lsn = data
                    .get("shutdown_checkpoint_lsn")
                    .and_then(|l| hapulse_protocol::parse_lsn(l));
                Ok(StepOutcome::Done(match self.checkpoint_lsn {
                    Some(_) => format!(
                        "{message} (shutdown checkpoint {})",
                        data.get("shutdown_checkpoint_lsn")
                            .map_or("", String::as_str)
                    ),
                    None => message,
                }))
            }
            "wait_for_catch_up" => {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(55);
                let mut seen = 0;
                loop {
                    // With the old primary's shutdown checkpoint: replayed past it. Without: two
                    // looks in a row with nothing received left to replay.
                    let caught_up = match self.checkpoint_lsn {
                        Some(checkpoint) => self
                            .target_replay_lsn()
                            .is_some_and(|replayed| replayed > checkpoint),
                        None => {
                            seen = if self.target_link().and_then(|m| m.lag_bytes) == Some(0) {
                                seen + 1
                            } else {
                                0
                            };
                            seen >= 2
                        }
                    };
                    if caught_up {
                        return Ok(StepOutcome::Done(match self.checkpoint_lsn {
                            Some(_) => format!("{} has replayed past the old primary's shutdown checkpoint", sw.target_node),
                            None => format!("{} has replayed all it received (no shutdown checkpoint reported: configure data_directory and pg_controldata)", sw.target_node),
                        }));
                    }
                    if tokio::time::Instant::now() > deadline {
                        return Err(format!(
                            "{} has not caught up (replayed {:?})",
                            sw.target_node,
                            self.target_replay_lsn()
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            "promote_target" => {
                // pg_promote(true, …) returns once the promotion is complete; `verify` checks
                // that the target reports itself primary.
                let link = link_name.ok_or("no link")?;
                let message = self
                    .command_message(&sw.target_node, Action::PostgresPromote { link })
                    .await?;
                Ok(StepOutcome::Done(message))
            }
            "set_priorities" => {
                let members: Vec<(String, Option<u8>)> = {
                    let live = self.state.live();
                    view::cluster_view(&live, &sw.cluster, Utc::now())
                        .and_then(|c| c.instances.into_iter().find(|i| i.name == sw.instance))
                        .map(|i| {
                            // A failover leaves out the lost old master (and any member that is
                            // down): it is kept fenced until it rejoins.
                            i.members
                                .into_iter()
                                .filter(|m| m.node_status == NodeStatus::Up)
                                .map(|m| (m.node_id, m.base_priority))
                                .collect()
                        })
                        .unwrap_or_default()
                };
                let target_base = members
                    .iter()
                    .find(|(n, _)| *n == sw.target_node)
                    .and_then(|(_, b)| *b)
                    .ok_or("the target's base priority is unknown (no JSON dump yet)")?;
                // The target first, the old master last: while the others are lowered, no third
                // node can rank above the target and preempt.
                let mut order: Vec<&(String, Option<u8>)> = members.iter().collect();
                order.sort_by_key(|(n, _)| (*n != sw.target_node, *n == sw.old_master));
                let mut done = Vec::new();
                for (node, base) in order {
                    let offset = if *node == sw.target_node {
                        0
                    } else {
                        let base = base.ok_or(format!("{node}'s base priority is unknown"))?;
                        (i32::from(target_base) - 10 - i32::from(base)).clamp(-253, 0)
                    };
                    let message = self
                        .command_message(
                            node,
                            Action::SetPriorityOffset {
                                instance: sw.instance.clone(),
                                offset,
                            },
                        )
                        .await?;
                    done.push(format!("{node} {offset:+}: {message}"));
                }
                Ok(StepOutcome::Done(done.join("; ")))
            }
            "move_vip" => {
                // Counted as set from the moment it is asked for: if the answer is lost, the
                // fence is lifted anyway on failure.
                self.fenced = true;
                self.command_message(
                    &sw.old_master,
                    Action::Fence {
                        instance: sw.instance.clone(),
                        fenced: true,
                    },
                )
                .await?;
                self.target_takes_vip().await?;
                self.command_message(
                    &sw.old_master,
                    Action::Fence {
                        instance: sw.instance.clone(),
                        fenced: false,
                    },
                )
                .await?;
                self.fenced = false;
                Ok(StepOutcome::Done(format!(
                    "{} is MASTER with the VIP; the fence on {} is lifted",
                    sw.target_node, sw.old_master
                )))
            }
            "verify" => {
                let (target, old, instance, key) = (
                    sw.target_node.clone(),
                    sw.old_master.clone(),
                    sw.instance.clone(),
                    sw.link.clone(),
                );
                let holds = |c: &ClusterView| {
                    let vrrp = c.instances.iter().any(|i| {
                        i.name == instance
                            && i.master.as_deref() == Some(target.as_str())
                            && i.members.iter().any(|m| m.node_id == target && m.holds_vip)
                            && i.members.iter().any(|m| {
                                m.node_id == old
                                    && (m.node_status != NodeStatus::Up
                                        || (m.state != VrrpState::Master && !m.holds_vip))
                            })
                    });
                    let db = key.as_ref().is_none_or(|k| {
                        Self::link_member(c, k, &target)
                            .is_some_and(|m| m.role == ReplicationRole::Primary)
                    });
                    vrrp && db
                };
                self.until(Duration::from_secs(15), "the new roles settling", holds)
                    .await?;
                tokio::time::sleep(Duration::from_secs(3)).await;
                let still = view::cluster_view(&self.state.live(), &sw.cluster, Utc::now())
                    .is_some_and(|c| holds(&c));
                if still {
                    Ok(StepOutcome::Done(format!(
                        "{} is MASTER with the VIP and stays",
                        sw.target_node
                    )))
                } else {
                    Err(format!(
                        "{} did not keep the master role for 3 s",
                        sw.target_node
                    ))
                }
            }
            "fence_old_master" => self.fence_old_master().await,
            "take_vip" => {
                self.target_takes_vip().await?;
                Ok(StepOutcome::Done(format!(
                    "{} is MASTER with the VIP",
                    sw.target_node
                )))
            }
            other => Err(format!("unknown step {other}")),
        }
    }
}
