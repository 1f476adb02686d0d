//! Rejoins of nodes that come back: a node the server keeps fenced (the old master of a
//! failover, a fenced second primary) that is up again, reports the cluster's database link and
//! is not a primary (the arbiter stops a kept-fenced node's primary first) gets a run of kind
//! `rejoin`: its database is rewound (or re-cloned) and started as a standby of the leader,
//! while the node stays fenced — lifting the fence stays a person's decision, and now it can be
//! made (`POST …/nodes/{node}/unfence` needs a streaming standby). Nothing here promotes,
//! demotes a running primary or moves a VIP. Off with `failover.clusters.*.auto_rejoin = false`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hapulse_protocol::ReplicationRole;

use crate::access::auth::Principal;
use crate::failover::evidence::Gathered;
use crate::fleet::live::NodeStatus;
use crate::fleet::view::ClusterView;
use crate::state::AppState;
use crate::switchover::drivers;

/// A node whose rejoin was started is not tried again for this long (a rejoin that failed
/// says why in its run, and `redundancy_lost` alerts meanwhile).
const RETRY_AFTER: Duration = Duration::from_secs(600);

/// The kept-fenced nodes of `c` that should rejoin the leader's link now: up, reporting the
/// link, not a primary, and not already streaming from the leader. None while the leader is
/// not heard, is not the link's one primary, or the link has no driver.
pub(crate) fn returned(c: &ClusterView, g: &Gathered, kept: &BTreeSet<String>) -> Vec<String> {
    let Some(key) = g.link.as_deref() else {
        return Vec::new();
    };
    let Some(link) = c.replication.iter().find(|r| r.link == key) else {
        return Vec::new();
    };
    if g.leader_status != NodeStatus::Up
        || g.unmovable.is_some()
        || link.primary.as_deref() != Some(g.leader.as_str())
        || drivers::Driver::of(link.kind).is_err()
    {
        return Vec::new();
    }
    // Streaming means connected to a live primary, and the link has one: the leader.
    link.members
        .iter()
        .filter(|m| {
            kept.contains(&m.node_id)
                && m.node_status == NodeStatus::Up
                && m.node_id != g.leader
                && m.role != ReplicationRole::Primary
                && !(m.role == ReplicationRole::Secondary
                    && m.state == hapulse_protocol::LinkState::Streaming)
        })
        .map(|m| m.node_id.clone())
        .collect()
}

/// Starts a rejoin for each node [`returned`] names that was not tried in the last 10 minutes
/// (`tried`, by cluster and node), when the cluster rebuilds by itself (`auto_rejoin`), as
/// `who` (the arbiter). One run at a time per cluster: the next node waits for the next round.
pub(crate) async fn rejoin_returned(
    state: &AppState,
    tried: &mut BTreeMap<(String, String), tokio::time::Instant>,
    c: &ClusterView,
    g: &Gathered,
    kept: &BTreeSet<String>,
    who: &Principal,
) {
    let auto = state
        .settings
        .failover
        .clusters
        .get(&c.name)
        .is_none_or(|p| p.auto_rejoin);
    if !auto {
        return;
    }
    let now = tokio::time::Instant::now();
    tried.retain(|_, at| now.duration_since(*at) < RETRY_AFTER);
    let Some(node) = returned(c, g, kept)
        .into_iter()
        .find(|n| !tried.contains_key(&(c.name.clone(), n.clone())))
    else {
        return;
    };
    tried.insert((c.name.clone(), node.clone()), now);
    let reason = format!(
        "{node} is back and kept fenced: its database rejoins as a standby of {}",
        g.leader
    );
    match crate::switchover::request::start_rejoin(state, c, g, &node, &reason, who).await {
        Ok(id) => {
            tracing::warn!(cluster = %c.name, node = %node, switchover = %id, "rejoining a returned node as a standby of the leader")
        }
        Err(e) => {
            tracing::error!(cluster = %c.name, node = %node, error = %e, "cannot start the rejoin of a returned node; trying again in 10 min")
        }
    }
}
