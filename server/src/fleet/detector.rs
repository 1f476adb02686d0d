//! The failure detector: a node that misses `suspect_after_missed` heartbeats (counted in its own
//! interval) is suspect, after `down_after_missed` it is down. Each verdict is an event, stored
//! before live state changes. A node comes back up when a report arrives (see [`crate::fleet::ingest`]).

use std::time::Duration;

use chrono::Utc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::config::DetectorSettings;
use crate::fleet::live::{EventKind, NewEvent, NodeStatus};
use crate::fleet::store as db;
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
    let settings = state.settings().detector;
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

/// One pass: records every node whose verdict got worse since the last pass, all in one
/// transaction (100 nodes lost at once cost one commit, not 100).
pub async fn check(state: &AppState, now: Instant) -> Result<(), sqlx::Error> {
    let settings = state.settings().detector;
    let verdict_of = |n: &crate::fleet::live::NodeLive, now: Instant| {
        let silence = now.saturating_duration_since(n.last_seen);
        let verdict = assess(
            silence,
            Duration::from_millis(n.heartbeat_interval_ms),
            &settings,
        );
        (verdict > n.status).then_some((verdict, silence))
    };
    let any_worse = state
        .live()
        .nodes
        .values()
        .any(|n| verdict_of(n, now).is_some());
    if !any_worse {
        return Ok(());
    }
    let _serial = state.transitions.lock().await;
    // Looked at under the lock: a report may have arrived meanwhile.
    let at = Utc::now();
    let (events, verdicts): (Vec<NewEvent>, Vec<NodeStatus>) = state
        .live()
        .nodes
        .values()
        .filter_map(|n| {
            let (verdict, silence) = verdict_of(n, Instant::now())?;
            let kind = if verdict == NodeStatus::Down {
                EventKind::NodeDown
            } else {
                EventKind::NodeSuspect
            };
            let event = NewEvent {
                at,
                cluster: n.cluster.clone(),
                node_id: Some(n.node_id.clone()),
                instance: None,
                link: None,
                kind,
                from_state: Some(n.status.as_str().into()),
                to_state: Some(verdict.as_str().into()),
                message: format!(
                    "node {} is {}: no heartbeat for {} ms",
                    n.node_id,
                    verdict.as_str(),
                    silence.as_millis()
                ),
                detail: serde_json::json!({ "silence_ms": silence.as_millis() as u64 }),
            };
            Some((event, verdict))
        })
        .unzip();
    let statuses: Vec<(&str, NodeStatus)> = events
        .iter()
        .zip(&verdicts)
        .filter_map(|(e, v)| Some((e.node_id.as_deref()?, *v)))
        .collect();
    let mut tx = state.db.begin().await?;
    db::store_statuses(&mut tx, &statuses, at).await?;
    db::insert_events(&mut tx, &events).await?;
    tx.commit().await?;
    let mut clusters = std::collections::BTreeSet::new();
    {
        let mut live = state.live_mut();
        for (event, verdict) in events.iter().zip(&verdicts) {
            tracing::warn!(cluster = %event.cluster, node_id = ?event.node_id, status = verdict.as_str(), "{}", event.message);
            state.metrics.event(event.kind);
            if let Some(n) = event.node_id.as_ref().and_then(|id| live.nodes.get_mut(id)) {
                n.status = *verdict;
                n.status_since = at;
            }
            live.changed.insert(event.cluster.clone());
            clusters.insert(event.cluster.clone());
        }
    }
    for cluster in &clusters {
        state.announce(cluster);
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
        max_heartbeat_interval: Duration::from_secs(10),
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
