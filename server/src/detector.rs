//! The failure detector: a node that misses `suspect_after_missed` heartbeats (counted in its own
//! interval) is suspect, after `down_after_missed` it is down. Each verdict is an event, stored
//! before live state changes. A node comes back up when a report arrives (see [`crate::ingest`]).

use std::time::Duration;

use chrono::Utc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::config::DetectorSettings;
use crate::db;
use crate::live::{EventKind, NewEvent, NodeStatus};
use crate::state::AppState;

/// The verdict on a node silent for `silence` whose heartbeat interval is `interval`.
pub fn assess(silence: Duration, interval: Duration, settings: &DetectorSettings) -> NodeStatus {
    let interval_ms = interval.as_millis().max(1);
    let missed = silence.as_millis() / interval_ms;
    if missed >= u128::from(settings.down_after_missed) {
        NodeStatus::Down
    } else if missed >= u128::from(settings.suspect_after_missed) {
        NodeStatus::Suspect
    } else {
        NodeStatus::Up
    }
}

/// Runs the detector until `shutdown`.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let settings = state.settings.detector;
    let mut tick = tokio::time::interval(settings.check_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = check(&state, Instant::now()).await {
            tracing::warn!(error = %e, "failure detector could not record a verdict; retrying");
        }
    }
}

/// One pass: records every node whose verdict got worse since the last pass.
pub async fn check(state: &AppState, now: Instant) -> Result<(), sqlx::Error> {
    let settings = state.settings.detector;
    let worse: Vec<(String, NodeStatus)> = state
        .live()
        .nodes
        .values()
        .filter_map(|n| {
            let verdict = assess(
                now.saturating_duration_since(n.last_seen),
                Duration::from_millis(n.heartbeat_interval_ms),
                &settings,
            );
            (verdict > n.status).then(|| (n.node_id.clone(), verdict))
        })
        .collect();
    for (node_id, verdict) in worse {
        let _serial = state.transitions.lock().await;
        // Look again under the lock: a report may have arrived meanwhile.
        let Some((cluster, from, silence)) = state.live().nodes.get(&node_id).and_then(|n| {
            let silence = Instant::now().saturating_duration_since(n.last_seen);
            let still = assess(
                silence,
                Duration::from_millis(n.heartbeat_interval_ms),
                &settings,
            );
            (still > n.status).then(|| (n.cluster.clone(), n.status, silence))
        }) else {
            continue;
        };
        let at = Utc::now();
        let kind = if verdict == NodeStatus::Down {
            EventKind::NodeDown
        } else {
            EventKind::NodeSuspect
        };
        let event = NewEvent {
            at,
            cluster: cluster.clone(),
            node_id: Some(node_id.clone()),
            instance: None,
            link: None,
            kind,
            from_state: Some(from.as_str().into()),
            to_state: Some(verdict.as_str().into()),
            message: format!(
                "node {node_id} is {}: no heartbeat for {} ms",
                verdict.as_str(),
                silence.as_millis()
            ),
            detail: serde_json::json!({ "silence_ms": silence.as_millis() as u64 }),
        };
        let mut tx = state.db.begin().await?;
        db::store_status(&mut tx, &node_id, verdict, at).await?;
        db::insert_events(&mut tx, std::slice::from_ref(&event)).await?;
        tx.commit().await?;
        tracing::warn!(cluster = %cluster, node_id = %node_id, status = verdict.as_str(), silence_ms = silence.as_millis() as u64, "{}", event.message);
        state.metrics.event(kind);
        if let Some(n) = state.live_mut().nodes.get_mut(&node_id) {
            n.status = verdict;
            n.status_since = at;
        }
        state.announce(&cluster);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: DetectorSettings = DetectorSettings {
        suspect_after_missed: 2,
        down_after_missed: 3,
        check_interval: Duration::from_millis(100),
    };

    #[test]
    fn counts_missed_heartbeats_in_the_nodes_own_interval() {
        let second = Duration::from_secs(1);
        let ms = Duration::from_millis;
        assert_eq!(assess(ms(0), second, &SETTINGS), NodeStatus::Up);
        assert_eq!(assess(ms(1999), second, &SETTINGS), NodeStatus::Up);
        assert_eq!(assess(ms(2000), second, &SETTINGS), NodeStatus::Suspect);
        assert_eq!(assess(ms(2999), second, &SETTINGS), NodeStatus::Suspect);
        assert_eq!(assess(ms(3000), second, &SETTINGS), NodeStatus::Down);
        // A node with a 250 ms interval is down after 750 ms.
        assert_eq!(assess(ms(749), ms(250), &SETTINGS), NodeStatus::Suspect);
        assert_eq!(assess(ms(750), ms(250), &SETTINGS), NodeStatus::Down);
        // A zero interval (never accepted by validation) cannot divide by zero.
        assert_eq!(assess(ms(5), Duration::ZERO, &SETTINGS), NodeStatus::Down);
    }
}
