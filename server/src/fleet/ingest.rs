//! Accepting a heartbeat report: de-duplicate, derive transitions, store, update live state.
//!
//! Two paths. A report that changes nothing but counters and timestamps only updates live state
//! and records its history sample in memory (written with its minute, see
//! [`crate::history::writer`]). A report that changes something (a new node, a
//! node back from suspect/down, a new agent run, a role, a priority, a VIP, keepalived up/down,
//! a service check's state)
//! takes the transition path: queued with the other changed reports of the moment and written
//! together under the transitions lock, in one transaction (watermark rows locked and checked,
//! nodes and instances stored, events inserted).
//! A changed report is answered after its commit, so an acknowledged change is never lost; a
//! report that changes nothing is answered from memory (a crash loses at most the raw samples
//! of the minute in progress). The node
//! counts as heard (for the failure detector) the moment its report arrives and again when it
//! is answered: its agent sends the next report only after the answer, so time the server took
//! is not the node's silence (an overloaded server would otherwise declare its fleet down,
//! and every node back from down takes the slower transition path).

use chrono::Utc;
use hapulse_protocol::{
    HeartbeatAck, HeartbeatReport, LinkState, ReplicationLinkReport, ReplicationRole,
    VrrpInstanceReport, PROTOCOL_VERSION,
};

use crate::fleet::pending::PendingTransition;
use crate::fleet::store as db;
use crate::fleet::validate::IngestError;
use std::collections::HashMap;
use std::sync::PoisonError;

use crate::fleet::live::{transitions, NewEvent, NodeLive, NodeStatus};
use crate::state::AppState;
/// The fields of an instance that are stored; counters and timestamps alone do not make a write.
fn stored_key(i: &VrrpInstanceReport) -> impl PartialEq + '_ {
    (
        &i.name,
        i.vrid,
        &i.interface,
        i.state,
        i.base_priority,
        i.effective_priority,
        &i.vips,
        &i.held_vips,
    )
}

fn needs_store(previous: &NodeLive, report: &HeartbeatReport) -> bool {
    let mut instances = report.keepalived.instances.iter().collect::<Vec<_>>();
    instances.sort_by(|a, b| a.name.cmp(&b.name));
    previous.cluster != report.cluster
        || previous.hostname != report.hostname
        || previous.agent_version != report.agent_version
        || previous.heartbeat_interval_ms != report.heartbeat_interval_ms
        || previous.instances.len() != instances.len()
        || previous
            .instances
            .iter()
            .zip(&instances)
            .any(|(a, b)| stored_key(a) != stored_key(b))
        || link_keys(&previous.replication) != link_keys(&report.replication)
        || check_keys(&previous.checks) != check_keys(&report.checks)
        || arp_key(previous.arp.as_ref()) != arp_key(report.arp.as_ref())
        || pacemaker_key(previous.pacemaker.as_ref()) != pacemaker_key(report.pacemaker.as_ref())
        || keepalived_extras_changed(previous, report, &instances)
}

/// What of an ARP report can change a verdict: the interfaces' MACs and, per VIP probed, whether
/// the node held it, who answered (sorted) and whether the probe failed. Probe times alone do
/// not send a report down the transition path.
type ArpKey<'a> = (
    Vec<(&'a str, &'a str)>,
    Vec<(&'a str, &'a str, bool, Vec<&'a str>, bool)>,
);

fn arp_key(arp: Option<&hapulse_protocol::ArpReport>) -> Option<ArpKey<'_>> {
    arp.map(|a| {
        let mut interfaces: Vec<_> = a
            .interfaces
            .iter()
            .map(|i| (i.name.as_str(), i.mac.as_str()))
            .collect();
        interfaces.sort_unstable();
        let mut probes: Vec<_> = a
            .probes
            .iter()
            .map(|p| {
                let mut macs: Vec<&str> = p.answered_by.iter().map(String::as_str).collect();
                macs.sort_unstable();
                (
                    p.instance.as_str(),
                    p.vip.as_str(),
                    p.held_here,
                    macs,
                    p.error.is_some(),
                )
            })
            .collect();
        probes.sort_unstable();
        (interfaces, probes)
    })
}

/// What of a Pacemaker view is stored as state: all but the nodes' resource counts (which
/// change with every start and stop the resources' own fields already show).
fn pacemaker_key(
    p: Option<&hapulse_protocol::PacemakerReport>,
) -> Option<hapulse_protocol::PacemakerReport> {
    p.map(|p| {
        let mut key = p.clone();
        for n in &mut key.nodes {
            n.resources_running = 0;
        }
        key
    })
}

/// Sync groups, LVS virtual and real servers, or an instance's sync group or tracked scripts
/// and interfaces changed: the transition path records the `real_server_state` events and the
/// cluster's views are built again (none of it is stored in a row).
fn keepalived_extras_changed(
    previous: &NodeLive,
    report: &HeartbeatReport,
    sorted_instances: &[&VrrpInstanceReport],
) -> bool {
    previous.sync_groups != report.keepalived.sync_groups
        || previous.virtual_servers != report.keepalived.virtual_servers
        || previous
            .instances
            .iter()
            .zip(sorted_instances)
            .any(|(a, b)| {
                (&a.sync_group, &a.tracked_scripts, &a.tracked_interfaces)
                    != (&b.sync_group, &b.tracked_scripts, &b.tracked_interfaces)
            })
}

/// A check's stored state: name, kind, target, passing, tie. The latest attempt's outcome,
/// detail, count and duration alone change nothing stored (they stay in memory), so a failing
/// check whose error text varies does not send every report down the transition path.
type CheckKey<'a> = (
    &'a str,
    hapulse_protocol::ServiceCheckKind,
    &'a str,
    bool,
    Option<&'a str>,
    Option<&'a str>,
);

/// The stored fields of `checks`, by name.
fn check_keys(checks: &[hapulse_protocol::ServiceCheckReport]) -> Vec<CheckKey<'_>> {
    let mut keys: Vec<_> = checks
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.kind,
                c.target.as_str(),
                c.passing,
                c.vrrp_instance.as_deref(),
                c.link.as_deref(),
            )
        })
        .collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    keys
}

/// A link's stored state: key, role, state, peer, VRRP instance, whether it has an error.
type LinkKey<'a> = (
    String,
    ReplicationRole,
    LinkState,
    &'a Option<String>,
    &'a Option<String>,
    bool,
);

/// The fields of the links that are stored as state; lag alone goes to history only.
fn link_keys(links: &[ReplicationLinkReport]) -> Vec<LinkKey<'_>> {
    let mut keys: Vec<_> = links
        .iter()
        .map(|l| {
            (
                l.key(),
                l.role,
                l.state,
                &l.peer,
                &l.vrrp_instance,
                l.error.is_some(),
            )
        })
        .collect();
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    keys
}

/// Reference reachable, (peer, reachable), self-fenced at.
type Reach<'a> = (
    Option<bool>,
    Vec<(&'a str, bool)>,
    Option<chrono::DateTime<Utc>>,
);

/// What the arbiter reads of an arbitration report: who is reachable, and the self-fence
/// (round-trip times and failure counts change every report and decide nothing).
fn reach(a: &Option<hapulse_protocol::ArbitrationReport>) -> Option<Reach<'_>> {
    a.as_ref().map(|a| {
        (
            a.reference.as_ref().map(|r| r.reachable),
            a.peers
                .iter()
                .map(|p| (p.node_id.as_str(), p.reach.reachable))
                .collect(),
            a.self_fenced_at,
        )
    })
}

/// Accepts one validated report. Replays (already accepted `(boot_id, seq)`) answer
/// `accepted: false` and write nothing.
pub async fn accept(
    state: &AppState,
    report: HeartbeatReport,
) -> Result<HeartbeatAck, IngestError> {
    let started = std::time::Instant::now();
    let arrived = tokio::time::Instant::now();
    let ack = |accepted| HeartbeatAck {
        seq: report.seq,
        accepted,
        protocol_version: PROTOCOL_VERSION,
        commands: Vec::new(),
    };
    let fast_path = {
        let mut live = state.live_mut();
        if let Some(node) = live.nodes.get_mut(&report.node_id) {
            // Heard, whatever becomes of the report (a replay, a failed write): it is alive.
            node.last_seen = node.last_seen.max(arrived);
        }
        match live.nodes.get(&report.node_id) {
            Some(node) if node.is_replay(&report) => {
                state.metrics.heartbeat("duplicate", started.elapsed());
                return Ok(ack(false));
            }
            Some(node) => {
                node.status == NodeStatus::Up
                    && node.boot_id == report.boot_id
                    && node.keepalived_running == report.keepalived.running
                    && !needs_store(node, &report)
            }
            None => false,
        }
    };
    let received_at = Utc::now();
    if fast_path {
        let mut guard = state.live_mut();
        let live = &mut *guard;
        if let Some(node) = live.nodes.get_mut(&report.node_id) {
            if node.is_replay(&report) {
                // A copy of this report was accepted while this one was on its way.
                state.metrics.heartbeat("duplicate", started.elapsed());
                return Ok(ack(false));
            }
            if reach(&node.arbitration) != reach(&report.arbitration) {
                live.changed.insert(report.cluster.clone());
            }
            // Heard again now, as it is answered.
            node.apply(&report, received_at, tokio::time::Instant::now());
        }
        // Recorded under the live-state lock: the sample of a report is recorded once.
        state.history.record(&report, received_at);
    } else {
        if !record_transition(state, report.clone(), received_at, arrived).await? {
            state.metrics.heartbeat("duplicate", started.elapsed());
            return Ok(ack(false));
        }
        state.history.record(&report, received_at);
    }
    raise_epoch_floor(state, &report).await?;
    state.metrics.heartbeat("accepted", started.elapsed());
    Ok(ack(true))
}

/// Most transitions written in one transaction.
const MAX_TRANSITION_BATCH: usize = 1000;

/// The transition path: returns false when the report is a replay. Group commit: the report
/// joins the queue, and whoever holds the transitions lock writes everything queued in one
/// transaction, so 10,000 nodes coming back at once (after a network cut, or a server restart)
/// cost a few commits rather than 10,000 in a row.
async fn record_transition(
    state: &AppState,
    report: HeartbeatReport,
    received_at: chrono::DateTime<Utc>,
    arrived: tokio::time::Instant,
) -> Result<bool, IngestError> {
    let (done, result) = tokio::sync::oneshot::channel();
    state
        .pending_transitions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(PendingTransition {
            report,
            received_at,
            arrived,
            done,
        });
    let mut result = result;
    loop {
        {
            let _serial = state.transitions.lock().await;
            let batch: Vec<PendingTransition> = {
                let mut queue = state
                    .pending_transitions
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let n = queue.len().min(MAX_TRANSITION_BATCH);
                queue.drain(..n).collect()
            };
            if !batch.is_empty() {
                write_transitions(state, batch).await;
            }
        }
        // Ours was written by this holder of the lock or an earlier one (which answered before
        // letting the lock go), or it is still queued behind a full batch.
        match result.try_recv() {
            Ok(outcome) => return outcome,
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => continue,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                return Err(IngestError::Unavailable)
            }
        }
    }
}

/// Writes `batch` (reports in arrival order) in one transaction under the transitions lock and
/// answers each: events derived against the live state (and against the reports before it in
/// the batch, for the same node), watermarks locked and checked, nodes and events stored, one
/// commit; then live state updated and the clusters announced. Should the transaction fail,
/// every report of the batch gets the error (its agent retries).
async fn write_transitions(state: &AppState, batch: Vec<PendingTransition>) {
    // Per report: None for a replay, else the node after it and its events.
    let mut prepared: Vec<Option<(NodeLive, Vec<NewEvent>)>> = Vec::with_capacity(batch.len());
    {
        let live = state.live();
        let mut batch_nodes: HashMap<&str, NodeLive> = HashMap::new();
        for job in &batch {
            let report = &job.report;
            let previous = batch_nodes
                .get(report.node_id.as_str())
                .or_else(|| live.nodes.get(&report.node_id));
            if previous.is_some_and(|p| p.is_replay(report)) {
                prepared.push(None);
                continue;
            }
            let mut events = transitions(previous, report, &live);
            let mut node = match previous {
                Some(p) => {
                    let mut n = p.clone();
                    n.apply(report, job.received_at, job.arrived);
                    n
                }
                None => NodeLive::from_report(report, job.received_at, job.arrived),
            };
            if node.status != NodeStatus::Up {
                node.status = NodeStatus::Up;
                node.status_since = job.received_at;
            }
            let others: Vec<&NodeLive> = live
                .cluster_nodes(&report.cluster)
                .filter(|n| n.node_id != report.node_id)
                .collect();
            events.extend(crate::fleet::arp::events(
                &others,
                previous,
                &node,
                report.observed_at,
            ));
            batch_nodes.insert(&report.node_id, node.clone());
            prepared.push(Some((node, events)));
        }
    }
    let stored = store_transitions(state, &batch, &mut prepared).await;
    if let Err(e) = stored {
        tracing::warn!(error = %e, reports = batch.len(), "transitions not stored");
        for job in batch {
            let _ = job.done.send(Err(IngestError::Unavailable));
        }
        return;
    }
    let mut clusters = std::collections::BTreeSet::new();
    {
        // Committed: each report is answered now, and its node heard now.
        let answered = tokio::time::Instant::now();
        let mut live = state.live_mut();
        for (node, events) in prepared.iter().flatten() {
            for e in events {
                tracing::info!(cluster = %e.cluster, node_id = ?e.node_id, instance = ?e.instance, kind = e.kind.as_str(), "{}", e.message);
                state.metrics.event(e.kind);
            }
            // A newer report of the same run may have been applied meanwhile (the agent
            // retried while this one was in flight): never go back in time.
            let newer = live
                .nodes
                .get(&node.node_id)
                .is_some_and(|n| n.boot_id == node.boot_id && n.last_seq > node.last_seq);
            if !newer {
                live.changed.insert(node.cluster.clone());
                clusters.insert(node.cluster.clone());
                let mut node = node.clone();
                node.last_seen = node.last_seen.max(answered);
                if let Some(old) = live.nodes.insert(node.node_id.clone(), node) {
                    // A node that moved to another cluster changed both.
                    live.changed.insert(old.cluster.clone());
                    clusters.insert(old.cluster);
                }
            }
        }
    }
    for cluster in &clusters {
        state.announce(cluster);
    }
    for (job, outcome) in batch.into_iter().zip(prepared) {
        let _ = job.done.send(Ok(outcome.is_some()));
    }
}

/// The database part of [`write_transitions`]: reports the stored watermark shows as replays
/// are set to None in `prepared`.
async fn store_transitions(
    state: &AppState,
    batch: &[PendingTransition],
    prepared: &mut [Option<(NodeLive, Vec<NewEvent>)>],
) -> Result<(), sqlx::Error> {
    let mut tx = state.db.begin().await?;
    let ids: Vec<&str> = batch.iter().map(|j| j.report.node_id.as_str()).collect();
    let watermarks = db::lock_watermarks(&mut tx, &ids).await?;
    let mut events = Vec::new();
    let mut nodes = Vec::with_capacity(batch.len());
    for (job, slot) in batch.iter().zip(prepared.iter_mut()) {
        let report = &job.report;
        if watermarks
            .get(&report.node_id)
            .is_some_and(|(boot_id, last_seq)| {
                *boot_id == report.boot_id && report.seq <= *last_seq
            })
        {
            *slot = None;
        }
        if let Some((node, node_events)) = slot {
            nodes.push(&*node);
            events.extend(node_events.iter().cloned());
        }
    }
    db::store_nodes(&mut tx, &nodes).await?;
    db::insert_events(&mut tx, &events).await?;
    tx.commit().await
}

/// An agent that has seen a higher epoch than the database holds (the database was restored from
/// a backup taken before the agent's last command) raises its cluster's epoch to it, so the
/// next switchover's commands are not refused as stale by every agent. Costs a database write
/// only when a report names a higher epoch than this server has seen reported.
async fn raise_epoch_floor(state: &AppState, report: &HeartbeatReport) -> Result<(), IngestError> {
    let known = |floors: &std::collections::HashMap<String, u64>| {
        floors.get(&report.cluster).copied().unwrap_or(0)
    };
    let floors = &state.epoch_floors;
    if report.highest_epoch <= known(&floors.lock().unwrap_or_else(PoisonError::into_inner)) {
        return Ok(());
    }
    let raised: Option<i64> = sqlx::query_scalar(
        "UPDATE clusters SET epoch = $2 WHERE name = $1 AND epoch < $2 RETURNING epoch",
    )
    .bind(&report.cluster)
    .bind(i64::try_from(report.highest_epoch).unwrap_or(i64::MAX))
    .fetch_optional(&state.db)
    .await
    .map_err(|e| {
        tracing::warn!(error = %e, "epoch floor not stored");
        IngestError::Unavailable
    })?;
    if raised.is_some() {
        tracing::warn!(cluster = %report.cluster, node_id = %report.node_id, epoch = report.highest_epoch,
            "an agent has seen a higher epoch than the database holds (restored from a backup?): the cluster's epoch is raised to it");
    }
    let mut floors = floors.lock().unwrap_or_else(PoisonError::into_inner);
    let entry = floors.entry(report.cluster.clone()).or_default();
    *entry = (*entry).max(report.highest_epoch);
    Ok(())
}
