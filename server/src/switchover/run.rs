//! The life of a run: started in the background ([`spawn`], and [`recover`] at start-up), it
//! waits for its scheduled time, checks the plan again against the cluster as it is now, runs
//! the steps in order through the executor with a timeout each, and — however it ends — lifts
//! a fence it set, expires its commands and records the outcome, the event and the audit row.
//!
//! Steps: `pre_hook` → (`stop_old_primary` → `wait_for_catch_up` → `promote_target`, with a
//! database) → `set_priorities` → `move_vip` → `verify` → `post_hook` (→ `repoint_standbys` →
//! `rejoin_old_primary`, with a database) for a switchover; `fence_old_master` →
//! (`promote_target`) → `set_priorities` → `take_vip` → `verify` (→ `repoint_standbys`) for a
//! failover; `rejoin_old_primary` alone for a rejoin. The redundancy steps of a move do not stop
//! the run when they fail: the move stands, the event says what was not rebuilt and
//! `redundancy_lost` alerts. The move sticks: before the VIP moves, every other member's
//! priority is lowered below the target's through its priority track file, so preemption cannot
//! take it back. The VIP then moves at once: the old master's instance is fenced (weight-0 track
//! file → FAULT → priority-0 advert), and the fence is lifted as soon as the target is MASTER.
//! With a stack (DRBD under a database), the database steps run per layer: stops top-down,
//! promotions bottom-up.

use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;

use crate::access::audit::Audit;
use crate::agents::commands;
use crate::alerting::silences::{self, NewSilence, Silence};
use crate::fleet::live::EventKind;
use crate::fleet::view::ClusterView;
use crate::state::AppState;
use crate::switchover::executor::Run;
use crate::switchover::plan::{
    cluster_view, plan, rejoin_plan, vip_follow_plan, Plan, SwitchoverRequest,
};
use crate::switchover::store::{self, event, get, log_db, Switchover};

/// Marks switchovers a previous server process left running as failed, and starts the scheduled
/// ones. Called at start-up.
pub async fn recover(state: &AppState) -> Result<(), sqlx::Error> {
    for (id, cluster) in store::fail_interrupted(&state.db).await? {
        tracing::error!(switchover = %id, cluster = %cluster, "switchover interrupted by a server restart");
    }
    for id in store::scheduled(&state.db).await? {
        spawn(state.clone(), id);
    }
    Ok(())
}

/// Runs switchover `id` in the background.
///
/// Only while this replica leads: the run stops where it is (at its next await) the moment the
/// lead is lost, and the next leader fails it as interrupted; on a follower nothing runs.
pub fn spawn(state: AppState, id: Uuid) {
    let scope = state.leadership.scope();
    tokio::spawn(async move {
        tokio::select! {
            biased;
            _ = scope.cancelled() => {
                tracing::error!(switchover = %id, "this replica stopped leading: the switchover stops here; the next leader fails it as interrupted");
            }
            result = run(&state, id) => {
                if let Err(e) = result {
                    tracing::error!(switchover = %id, error = %e, "switchover could not be recorded");
                }
            }
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
    let Some(epoch) = store::start(&state.db, id).await? else {
        return Ok(()); // cancelled meanwhile
    };
    let sw = Switchover { epoch, ..sw };
    let mut run = Run::new(state, sw.clone());
    let silence = silence_alerts(state, &sw).await;
    let started = format!(
        "{} of {} from {} to {} started: {}",
        sw.kind, sw.instance, sw.old_master, sw.target_node, sw.reason
    );
    log_db(event(state, &sw, EventKind::SwitchoverStarted, started).await);
    let failure = match replan(state, &sw).await {
        Ok(()) => run.run_steps().await,
        Err(e) => Some(("preflight".to_string(), e)),
    };
    let error = match failure {
        None => None,
        Some((step, message)) => Some(run.stopped(&step, &message).await),
    };
    let unrestored = run.redundancy_failures().join("; ");
    if let Some(silence) = &silence {
        log_db(end_silence(state, silence).await);
    }
    if error.is_none() {
        log_db(record_new_master(state, &sw).await);
    }
    // None of this switchover's commands may run from now on.
    log_db(commands::expire_switchover(&state.db, id).await.map(|_| ()));
    let final_state = if error.is_none() {
        "succeeded"
    } else {
        "failed"
    };
    record_end(state, id, final_state, error.as_deref()).await;
    report_end(state, &sw, final_state, error, &unrestored).await;
    Ok(())
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

/// Silences the alerts this switchover will cause, and only those, for 10 minutes at most;
/// `None` (logged) when the silence cannot be stored.
async fn silence_alerts(state: &AppState, sw: &Switchover) -> Option<Silence> {
    silences::create(
        &state.db,
        &NewSilence {
            cluster: Some(sw.cluster.clone()),
            node_id: None,
            rules: SWITCHOVER_SILENCES.iter().map(|r| r.to_string()).collect(),
            severity: None,
            maintenance: false,
            starts_at: None,
            ends_at: Utc::now() + chrono::Duration::minutes(10),
            author: sw.requested_by.clone(),
            reason: format!(
                "switchover {} of {} to {}",
                sw.id, sw.instance, sw.target_node
            ),
        },
        Some(sw.id),
    )
    .await
    .map_err(|e| tracing::warn!(error = %e, "cannot silence the switchover's alerts"))
    .ok()
}

/// Ends the run's silence a little after the end, so the last reports of the move settle first.
async fn end_silence(state: &AppState, silence: &Silence) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE silences SET ends_at = now() + interval '15 seconds' WHERE id = $1")
        .bind(silence.id)
        .execute(&state.db)
        .await?;
    Ok(())
}

/// Preflight again for a switchover: it was planned earlier, and the cluster must still allow it
/// with the same master and link. A failover was decided on the evidence of this very moment. A
/// VIP follow needs the target still MASTER of the instance and a streaming standby. A rejoin
/// needs the target still the link's primary and the node not a primary.
async fn replan(state: &AppState, sw: &Switchover) -> Result<(), String> {
    if sw.kind == "failover" {
        return Ok(());
    }
    let view = cluster_view(state, &sw.cluster)
        .await
        .map_err(|e| e.to_string())?;
    let p = replanned(&view, sw)?;
    // The run holds the nodes it was accepted with: one that joined the unit since (say a new
    // member of the instance) may be in another run, and would get this run's commands.
    let joined: Vec<&str> = p
        .nodes
        .iter()
        .filter(|n| !sw.nodes.is_empty() && !sw.nodes.contains(n))
        .map(String::as_str)
        .collect();
    if !joined.is_empty() {
        return Err(format!(
            "{} joined {} since the request: plan the move again",
            joined.join(", "),
            sw.instance
        ));
    }
    Ok(())
}

/// The plan of `sw` made again on `view`, or why it no longer holds.
fn replanned(view: &ClusterView, sw: &Switchover) -> Result<Plan, String> {
    if sw.kind == "rejoin" {
        let link = sw.link.as_deref().ok_or("a rejoin without a link")?;
        return rejoin_plan(view, &sw.instance, link, &sw.old_master, &sw.target_node)
            .map_err(|e| e.to_string());
    }
    if sw.kind == "vip_follow" {
        let link = sw.link.as_deref().ok_or("a VIP follow without a link")?;
        let p = vip_follow_plan(view, &sw.instance, link, &sw.old_master, &sw.target_node)
            .map_err(|e| e.to_string())?;
        let holder = view
            .instances
            .iter()
            .find(|i| i.name == sw.instance)
            .and_then(|i| i.master.clone());
        return if holder.as_deref() == Some(sw.target_node.as_str()) {
            Ok(p)
        } else {
            Err(format!(
                "keepalived moved the VIP again (master now {}): nothing to follow",
                holder.as_deref().unwrap_or("none")
            ))
        };
    }
    let req = SwitchoverRequest {
        target_node: sw.target_node.clone(),
        instance: Some(sw.instance.clone()),
        reason: sw.reason.clone(),
        dry_run: true,
        max_lag_bytes: None,
        scheduled_at: None,
    };
    let p = plan(view, &req).map_err(|e| e.to_string())?;
    if p.old_master == sw.old_master && p.link == sw.link {
        Ok(p)
    } else {
        Err(format!(
            "the cluster changed since the request (master now {}, link {:?})",
            p.old_master, p.link
        ))
    }
}

/// After a success: the target is the master of this epoch now; a lost old master (failover)
/// stays fenced.
async fn record_new_master(state: &AppState, sw: &Switchover) -> Result<(), sqlx::Error> {
    let mut tx = state.db.begin().await?;
    crate::failover::leaders::store(&mut tx, &sw.cluster, &sw.instance, &sw.target_node).await?;
    if sw.kind == "failover" {
        let reason = format!("the old master of failover {}", sw.id);
        crate::failover::fences::keep_fenced(
            &mut tx,
            &sw.cluster,
            &sw.old_master,
            &sw.instance,
            &reason,
        )
        .await?;
    }
    tx.commit().await
}

/// Records how the run ended, trying 5 times (waiting 1, 2, 4, 8, 16 s between); if it never
/// succeeds, the next server start marks the run failed.
async fn record_end(state: &AppState, id: Uuid, final_state: &str, error: Option<&str>) {
    for attempt in 0..5u64 {
        match store::finish(&state.db, id, final_state, error).await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(switchover = %id, error = %e, attempt, "cannot record the switchover's end; retrying");
                tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
            }
        }
    }
    tracing::error!(switchover = %id, state = final_state, error = ?error, "the switchover's end is not recorded; the next server start marks it failed");
}

/// The end in the cluster's history and the audit log, and the dashboards told; `unrestored`
/// says what the redundancy steps could not rebuild (empty: nothing).
async fn report_end(
    state: &AppState,
    sw: &Switchover,
    final_state: &str,
    error: Option<String>,
    unrestored: &str,
) {
    let (kind, message) = match &error {
        None if unrestored.is_empty() => (
            EventKind::SwitchoverSucceeded,
            format!(
                "{} of {} to {} succeeded",
                sw.kind, sw.instance, sw.target_node
            ),
        ),
        None => (
            EventKind::SwitchoverSucceeded,
            format!(
                "{} of {} to {} succeeded, but redundancy is not restored: {unrestored}",
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
    log_db(event(state, sw, kind, message).await);
    let target = format!("{}/{} → {}", sw.cluster, sw.instance, sw.target_node);
    let audit = Audit {
        actor: &sw.requested_by,
        role: None,
        source: None,
        action: &sw.kind,
        target: &target,
        reason: Some(&sw.reason),
        outcome: final_state,
        detail: serde_json::json!({
            "switchover_id": sw.id,
            "error": error,
            "redundancy_not_restored": (!unrestored.is_empty()).then_some(unrestored),
        }),
    };
    log_db(audit.record(&state.db).await);
    state.announce(&sw.cluster);
}
