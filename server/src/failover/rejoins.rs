//! Rejoins: standbys that follow nobody are made to follow the leader again, without a person.
//! Two kinds of node get a run of kind `rejoin` (its database rewound, or re-cloned, and
//! started as a standby of the leader; or, running, re-pointed to it):
//!
//! - a node the server keeps fenced (the old master of a failover, a fenced second primary)
//!   that is up again, reports the cluster's database link, and is not a primary (the arbiter
//!   stops a kept-fenced node's primary first) nor streaming. It stays fenced: lifting the fence
//!   stays a person's decision, and now it can be made (`POST …/nodes/{node}/unfence` needs a
//!   streaming standby);
//! - a standby that is up but has followed nobody for [`ADRIFT_FOR`] while the leader is heard
//!   and is the link's one primary: one that was down during a failover and came back still
//!   pointing at the old primary, say. A standby that cannot follow is kept fenced by its run,
//!   so keepalived never gives the VIP to a host whose data stopped at another timeline.
//!
//! Nothing here promotes, demotes a running primary or moves a VIP. Off with
//! `failover.clusters.*.auto_rejoin = false`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hapulse_protocol::{LinkState, ReplicationRole};

use crate::access::auth::Principal;
use crate::failover::evidence::Gathered;
use crate::fleet::live::NodeStatus;
use crate::fleet::view::{ClusterView, LinkMemberView, ReplicationView};
use crate::state::AppState;

/// A node whose rejoin was started is not tried again for this long (a rejoin that failed
/// says why in its run, and `redundancy_lost` or `replication_broken` alerts meanwhile).
const RETRY_AFTER: Duration = Duration::from_secs(600);

/// A standby that follows nobody this long is re-pointed: a brief disconnection (the primary
/// restarting, a network blip) heals by itself well within it.
pub(crate) const ADRIFT_FOR: Duration = Duration::from_secs(30);

/// The leader's link in `c`, when rejoining makes sense: the leader is heard, is the link's
/// one primary, and the link can be moved.
fn leaders_link<'c>(c: &'c ClusterView, g: &Gathered) -> Option<&'c ReplicationView> {
    let key = g.link.as_deref()?;
    let link = c.replication.iter().find(|r| r.link == key)?;
    let ready = g.leader_status == NodeStatus::Up
        && g.unmovable.is_none()
        && link.primary.as_deref() == Some(g.leader.as_str());
    ready.then_some(link)
}

/// A member that is up, not the leader, not a primary, and not streaming (from the leader: the
/// link's one primary).
fn not_following(m: &LinkMemberView, g: &Gathered) -> bool {
    m.node_status == NodeStatus::Up
        && m.node_id != g.leader
        && m.role != ReplicationRole::Primary
        && !(m.role == ReplicationRole::Secondary && m.state == LinkState::Streaming)
}

/// The standbys of the leader's link in `c` that are up, not kept fenced, and follow nobody
/// now (their WAL receiver disconnected): adrift, if it lasts.
pub(crate) fn adrift(c: &ClusterView, g: &Gathered, kept: &BTreeSet<String>) -> Vec<String> {
    let Some(link) = leaders_link(c, g) else {
        return Vec::new();
    };
    link.members
        .iter()
        .filter(|m| {
            !kept.contains(&m.node_id)
                && not_following(m, g)
                && m.role == ReplicationRole::Secondary
                && m.state == LinkState::Disconnected
        })
        .map(|m| m.node_id.clone())
        .collect()
}

/// The nodes of `c` that should rejoin the leader's link now: kept-fenced nodes that are up,
/// report the link, and neither are a primary nor stream; and the standbys in `long_adrift`
/// (adrift for [`ADRIFT_FOR`], by the caller's clock) that still are. None while the leader is
/// not heard, is not the link's one primary, or the link has no driver.
pub(crate) fn returned(
    c: &ClusterView,
    g: &Gathered,
    kept: &BTreeSet<String>,
    long_adrift: &BTreeSet<String>,
) -> Vec<String> {
    let Some(link) = leaders_link(c, g) else {
        return Vec::new();
    };
    let adrift_now = adrift(c, g, kept);
    link.members
        .iter()
        .filter(|m| {
            (kept.contains(&m.node_id) && not_following(m, g))
                || (long_adrift.contains(&m.node_id) && adrift_now.contains(&m.node_id))
        })
        .map(|m| m.node_id.clone())
        .collect()
}

/// What the arbiter remembers for rejoins, by cluster and node: when a rejoin was last started,
/// and since when a standby has been adrift.
#[derive(Debug, Default)]
pub(crate) struct Rejoins {
    tried: BTreeMap<(String, String), tokio::time::Instant>,
    adrift_since: BTreeMap<(String, String), tokio::time::Instant>,
}

impl Rejoins {
    /// One round for the unit of cluster `c` whose leader's evidence is `g` (`kept`: the nodes
    /// kept fenced in its instance): notes who
    /// is adrift, then starts a rejoin, as `who` (the arbiter), for one node [`returned`] names
    /// that was not tried in the last 10 minutes — when the cluster rebuilds by itself
    /// (`auto_rejoin`). One run at a time per cluster: the next node waits for a next round.
    /// True when a rejoin run started.
    pub(crate) async fn round(
        &mut self,
        state: &AppState,
        c: &ClusterView,
        g: &Gathered,
        kept: &BTreeSet<String>,
        who: &Principal,
    ) -> bool {
        // Remembered per unit (cluster and instance): a standby adrift on one instance's link
        // may stream on another's.
        let unit = crate::failover::evidence::unit_key(&c.name, &g.instance);
        let auto = state
            .settings()
            .failover
            .clusters
            .get(&c.name)
            .is_none_or(|p| p.auto_rejoin);
        if !auto {
            return false;
        }
        let now = tokio::time::Instant::now();
        self.tried
            .retain(|_, at| now.duration_since(*at) < RETRY_AFTER);
        let adrift_now = adrift(c, g, kept);
        self.adrift_since
            .retain(|(u, node), _| u != &unit || adrift_now.contains(node));
        for node in &adrift_now {
            self.adrift_since
                .entry((unit.clone(), node.clone()))
                .or_insert(now);
        }
        let long_adrift: BTreeSet<String> = adrift_now
            .into_iter()
            .filter(|n| {
                self.adrift_since
                    .get(&(unit.clone(), n.clone()))
                    .is_some_and(|since| now.duration_since(*since) >= ADRIFT_FOR)
            })
            .collect();
        let Some(node) = returned(c, g, kept, &long_adrift)
            .into_iter()
            .find(|n| !self.tried.contains_key(&(unit.clone(), n.clone())))
        else {
            return false;
        };
        self.tried.insert((unit, node.clone()), now);
        let reason = if kept.contains(&node) {
            format!(
                "{node} is back and kept fenced: its database rejoins as a standby of {}",
                g.leader
            )
        } else {
            format!(
                "{node}'s standby has followed nobody for {} s: it is made to follow {}",
                ADRIFT_FOR.as_secs(),
                g.leader
            )
        };
        match crate::switchover::request::start_rejoin(state, c, g, &node, &reason, who).await {
            Ok(id) => {
                tracing::warn!(cluster = %c.name, node = %node, switchover = %id, "{reason}");
                true
            }
            Err(e) => {
                tracing::error!(cluster = %c.name, node = %node, error = %e, "cannot start the rejoin of a node; trying again in 10 min");
                false
            }
        }
    }
}
