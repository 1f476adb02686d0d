//! The stored runs: a switchover or failover row (`switchovers`) with its steps, accepted in one
//! transaction with the cluster's epoch raise and its audit row, loaded, cancelled while still
//! scheduled; the bookkeeping of a run as it goes (started, steps saved, end recorded, runs a
//! stopped server left behind failed at start-up) and the events it leaves in the cluster's
//! history. Runs of one cluster go at once only on different instances and nodes: a partial
//! unique index (`switchovers_one_active`) allows one scheduled or running run per VRRP
//! instance, and a trigger (`switchovers_nodes_free`) none that touches a node of another
//! ([`Plan::nodes`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

use crate::access::audit::Audit;
use crate::access::auth::Principal;
use crate::fleet::live::{EventKind, NewEvent};
use crate::refusal::Refusal;
use crate::state::AppState;
use crate::switchover::error::SwitchoverError;
use crate::switchover::plan::{Plan, Step, SwitchoverRequest};

/// A stored switchover, as `GET /api/v1/switchovers/{id}` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Switchover {
    /// Id.
    pub id: Uuid,
    /// `switchover`, `failover` or `vip_follow` ([`Plan::kind`](crate::switchover::plan::Plan)).
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
    /// Its epoch: the cluster's, raised when it was accepted, again when it started and when it
    /// undid what it did.
    pub epoch: u64,
    /// The nodes it touches (sorted; empty for a run stored by a server before moves per
    /// node): no other active run touches one of them.
    pub nodes: Vec<String>,
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
                old_master, link, reason, requested_by, state, epoch, nodes,
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
        nodes: r.try_get("nodes")?,
        created_at: r.try_get("created_at")?,
        scheduled_at: r.try_get("scheduled_at")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        steps: steps.0,
        error: r.try_get("error")?,
    }))
}

/// Accepts a planned switchover or a failover (`plan.kind`; `automatic` when the arbiter started
/// it): raises the cluster's epoch and stores it in one transaction, cancelling a scheduled
/// switchover a failover or an automatic move makes moot. 409 `switchover_running` when another
/// one of the same instance, or touching one of the same nodes, is running (or scheduled, for a
/// person's switchover).
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
    // A failover, or any automatic move, answers the cluster as it is now: a switchover
    // scheduled against the old roles is moot. A rejoin moves nothing.
    if (plan.kind == "failover" || automatic) && plan.kind != "rejoin" {
        cancel_moot(&mut tx, plan, who).await?;
    }
    let inserted = sqlx::query(
        "INSERT INTO switchovers (id, cluster, instance, target_node, old_master, link, reason, requested_by,
                                  requested_from, state, epoch, max_lag_bytes, scheduled_at, steps, kind, automatic, nodes)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'scheduled', $10, $11, $12, $13, $14, $15, $16)",
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
    .bind(&plan.nodes)
    .execute(&mut *tx)
    .await;
    if let Err(sqlx::Error::Database(e)) = &inserted {
        if e.constraint() == Some("switchovers_one_active") {
            return Err(SwitchoverError::from(Refusal::conflict(
                "switchover_running",
                format!(
                    "another switchover or failover of {} is scheduled or running on {} or on one of {}",
                    plan.cluster,
                    plan.instance,
                    plan.nodes.join(", ")
                ),
            )));
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

/// A failover or an automatic move makes a switchover that is scheduled but not started moot
/// when it would touch the same instance or nodes (it was planned against roles that are gone):
/// cancels it in the move's transaction, says why in its `error`, and audits it. A move of
/// another instance on other nodes is left alone.
async fn cancel_moot(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    plan: &Plan,
    who: &Principal,
) -> Result<(), sqlx::Error> {
    const WHY: &str =
        "cancelled: a failover or automatic move of the same instance or nodes made it moot";
    let cluster = plan.cluster.as_str();
    let moot: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE switchovers SET state = 'cancelled', finished_at = now(), error = $2
          WHERE cluster = $1 AND state = 'scheduled' AND started_at IS NULL
            AND (instance = $3 OR cardinality(nodes) = 0 OR cardinality($4::text[]) = 0
                 OR nodes && $4::text[])
          RETURNING id",
    )
    .bind(cluster)
    .bind(WHY)
    .bind(&plan.instance)
    .bind(&plan.nodes)
    .fetch_all(&mut **tx)
    .await?;
    for id in moot {
        tracing::warn!(cluster, switchover_id = %id, "scheduled switchover cancelled by a failover or automatic move");
        Audit::by(who, "switchover_cancel", &id.to_string(), "cancelled")
            .reason(WHY)
            .record(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Cancels a switchover that has not started. 409 when it has.
pub async fn cancel(state: &AppState, id: Uuid, who: &Principal) -> Result<(), SwitchoverError> {
    let updated = sqlx::query("UPDATE switchovers SET state = 'cancelled', finished_at = now() WHERE id = $1 AND state = 'scheduled' AND started_at IS NULL")
        .bind(id)
        .execute(&state.db)
        .await?;
    if updated.rows_affected() == 0 {
        return match get(&state.db, id).await? {
            None => Err(SwitchoverError::from(Refusal::not_found(format!(
                "switchover {id}"
            )))),
            Some(s) => Err(SwitchoverError::from(Refusal::conflict(
                "switchover_started",
                format!(
                    "switchover {id} is {}; only a scheduled one can be cancelled",
                    s.state
                ),
            ))),
        };
    }
    Audit::by(who, "switchover_cancel", &id.to_string(), "cancelled")
        .record(&state.db)
        .await?;
    Ok(())
}

/// Marks scheduled run `id` running; `false` when it is no longer scheduled (cancelled
/// meanwhile).
pub(super) async fn start(pool: &sqlx::PgPool, id: Uuid) -> Result<Option<u64>, sqlx::Error> {
    // A run waits (scheduled for later, or for its executor) while moves of other instances on
    // other nodes raise the cluster's epoch: it takes a new one as it starts, so its commands
    // are never older than one its nodes have already seen.
    let epoch: Option<i64> = sqlx::query_scalar(
        "WITH raised AS (
             UPDATE clusters SET epoch = epoch + 1
              WHERE name = (SELECT cluster FROM switchovers WHERE id = $1 AND state = 'scheduled')
              RETURNING epoch)
         UPDATE switchovers SET state = 'running', started_at = now(),
                                epoch = (SELECT epoch FROM raised)
          WHERE id = $1 AND state = 'scheduled'
          RETURNING epoch",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(epoch.map(|e| e as u64))
}

/// Raises the cluster's epoch for running run `id` (the commands that undo what a stopped run
/// did) and records it as the run's: commands outside runs sent to its nodes meanwhile carry it
/// ([`crate::agents::commands::insert`]).
pub(super) async fn raise_epoch(pool: &sqlx::PgPool, id: Uuid) -> Result<u64, sqlx::Error> {
    let epoch: i64 = sqlx::query_scalar(
        "WITH raised AS (
             UPDATE clusters SET epoch = epoch + 1
              WHERE name = (SELECT cluster FROM switchovers WHERE id = $1)
              RETURNING epoch)
         UPDATE switchovers SET epoch = (SELECT epoch FROM raised) WHERE id = $1
          RETURNING epoch",
    )
    .bind(id)
    .fetch_one(pool)
    .await?;
    Ok(epoch as u64)
}

/// Stores the steps of run `id` with their states.
pub(super) async fn save_steps(
    pool: &sqlx::PgPool,
    id: Uuid,
    steps: &[Step],
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE switchovers SET steps = $2 WHERE id = $1")
        .bind(id)
        .bind(sqlx::types::Json(steps))
        .execute(pool)
        .await?;
    Ok(())
}

/// Records how running run `id` ended: `state` (`succeeded`, `failed`) and the error.
pub(super) async fn finish(
    pool: &sqlx::PgPool,
    id: Uuid,
    state: &str,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE switchovers SET state = $2, finished_at = now(), error = $3 WHERE id = $1 AND state = 'running'")
        .bind(id)
        .bind(state)
        .bind(error)
        .execute(pool)
        .await?;
    Ok(())
}

/// Finished runs per (kind, outcome: `succeeded`, `failed`, `cancelled`), for `/metrics`.
pub async fn finished_counts(
    pool: &sqlx::PgPool,
) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT kind, state, count(*) FROM switchovers
          WHERE state IN ('succeeded', 'failed', 'cancelled') GROUP BY kind, state",
    )
    .fetch_all(pool)
    .await
}

/// Marks the runs a previous server process left running as failed; their ids and clusters.
pub(super) async fn fail_interrupted(
    pool: &sqlx::PgPool,
) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE switchovers SET state = 'failed', finished_at = now(),
                error = 'interrupted: the server stopped while it ran; check the cluster page before acting (a fence may still be set)'
          WHERE state = 'running' RETURNING id, cluster",
    )
    .fetch_all(pool)
    .await
}

/// The ids of the scheduled runs.
pub(super) async fn scheduled(pool: &sqlx::PgPool) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM switchovers WHERE state = 'scheduled'")
        .fetch_all(pool)
        .await
}

/// Logs a database error that must not stop a running switchover's bookkeeping.
pub(super) fn log_db(result: Result<(), sqlx::Error>) {
    if let Err(e) = result {
        tracing::error!(error = %e, "switchover bookkeeping failed");
    }
}

/// Records an event of run `sw` in its cluster's history and tells the dashboards.
pub(super) async fn event(
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
