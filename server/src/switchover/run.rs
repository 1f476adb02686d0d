//! The life of a run: started in the background ([`spawn`], and [`recover`] at start-up), it
//! waits for its scheduled time, checks the plan again against the cluster as it is now, runs
//! the steps in order through the executor ([`super::executor`]) with a timeout each, and — however it ends —
//! lifts a fence it set, expires its commands and records the outcome, the event and the audit
//! row.
//!
//! Steps: `pre_hook` → (`stop_old_primary` → `wait_for_catch_up` → `promote_target`, with a
//! database) → `set_priorities` → `move_vip` → `verify` → `post_hook` for a switchover;
//! `fence_old_master` → (`promote_target`) → `set_priorities` → `take_vip` → `verify` for a
//! failover. The move sticks: before the VIP moves, every other member's priority is lowered
//! below the target's through its priority track file, so preemption cannot take it back. The
//! VIP then moves at once: the old master's instance is fenced (weight-0 track file → FAULT →
//! priority-0 advert), and the fence is lifted as soon as the target is MASTER.

use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;

use crate::access::audit::Audit;
use crate::agents::commands;
use crate::fleet::live::EventKind;
use crate::state::AppState;
use crate::switchover::executor::{Run, StepOutcome};
use crate::switchover::plan::{cluster_view, plan, SwitchoverRequest};
use crate::switchover::steps::StepName;
use crate::switchover::store::{event, get};

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
    let mut run = Run::new(state, sw.clone());
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
        let outcome = run.run_step(&name).await;
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
            if step == StepName::PromoteTarget.as_str() {
                described.push_str(" The promotion may still complete on its own: check the target before restarting the old primary, or there will be two primaries.");
            }
            if run.fenced() {
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
