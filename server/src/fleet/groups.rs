//! keepalived beyond one VRRP instance, as the REST API and the dashboard show it: sync groups
//! (`vrrp_sync_group`, instances that must move together) with a split verdict, and LVS virtual
//! servers with their real servers, per node.
//!
//! A sync group is *split* when members of it are MASTER on more than one node (not down) at
//! once: keepalived keeps a group's members in one state on one host, so this only happens when
//! the group's instances disagree across hosts (different priorities per instance, VRRP adverts
//! of one instance lost, a group configured on one host only) — each host then serves part of
//! what belongs together (say, the outside VIP on one router, the inside VIP on another).

use std::collections::{BTreeMap, BTreeSet};

use hapulse_protocol::{RealServerReport, VrrpState};
use serde::Serialize;

use crate::fleet::live::{NodeLive, NodeStatus};

/// One node's part in a sync group.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SyncGroupNodeView {
    /// Node id.
    pub node_id: String,
    /// Detector verdict on the node.
    pub node_status: NodeStatus,
    /// The group's state there as keepalived reports it (`GROUP` line or data dump); absent
    /// when the node reports members of the group but not the group itself.
    pub state: Option<VrrpState>,
    /// The group's instances that are MASTER there.
    pub master_of: Vec<String>,
    /// Whether the group has `sync_group_tracking_weight` there (keepalived's data dump);
    /// absent until the node's first data dump.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking_weight: Option<bool>,
}

/// A `vrrp_sync_group` across the nodes of a cluster.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SyncGroupView {
    /// Group name.
    pub name: String,
    /// Its member instances (every node's list together, sorted).
    pub members: Vec<String>,
    /// The nodes that report the group or one of its members, by node id.
    pub nodes: Vec<SyncGroupNodeView>,
    /// Members are MASTER on more than one node that is not down.
    pub split: bool,
    /// Why it is split, naming each node's MASTER members; absent when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The nodes where keepalived ignores the weights tracked by the group's instances (no
    /// `sync_group_tracking_weight`): hapulse's priority lever does not work there, so a
    /// switchover of the group is refused (it would not stick: the old master would preempt
    /// the VIPs back).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights_ignored_on: Vec<String>,
}

impl SyncGroupView {
    /// Why hapulse cannot move the group, when keepalived ignores its tracked weights on some
    /// node.
    pub fn weights_ignored(&self) -> Option<String> {
        (!self.weights_ignored_on.is_empty()).then(|| {
            format!(
                "sync group {} has no sync_group_tracking_weight on {}: keepalived ignores the \
                 weight of its tracked files there, and with it hapulse's priority lever (add \
                 sync_group_tracking_weight to the vrrp_sync_group block)",
                self.name,
                self.weights_ignored_on.join(", ")
            )
        })
    }
}

/// An LVS virtual server as one node reports it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VirtualServerView {
    /// Node id (the LVS director).
    pub node_id: String,
    /// Detector verdict on the node.
    pub node_status: NodeStatus,
    /// The virtual server as keepalived names it (`[10.0.0.1]:tcp:80`, `FWM 5`).
    pub name: String,
    /// Its quorum is up.
    pub up: bool,
    /// Real servers reported up (listed or not).
    pub live_real_servers: usize,
    /// Its real servers, as far as the report lists them.
    pub real_servers: Vec<RealServerReport>,
    /// Real servers the report counts without listing them (a director with more than
    /// `MAX_REAL_SERVERS_PER_REPORT` over its virtual servers).
    #[serde(skip_serializing_if = "is_zero")]
    pub unlisted_real_servers: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl VirtualServerView {
    /// It has real servers and none is up, on a node that is up: nothing serves its address.
    pub fn no_live_real_server(&self) -> bool {
        self.node_status == NodeStatus::Up && self.live_real_servers == 0
    }
}

/// The sync groups of `nodes`, by name: every group a node reports, and every group an
/// instance names as its own.
pub fn sync_groups(nodes: &[&NodeLive]) -> Vec<SyncGroupView> {
    let mut members: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for n in nodes {
        for g in &n.sync_groups {
            members
                .entry(&g.name)
                .or_default()
                .extend(g.members.iter().map(String::as_str));
        }
        for i in &n.instances {
            if let Some(g) = &i.sync_group {
                members.entry(g).or_default().insert(&i.name);
            }
        }
    }
    members
        .into_iter()
        .map(|(name, members)| sync_group_view(name, &members, nodes))
        .collect()
}

/// The verdict on sync group `name` with `members`.
fn sync_group_view(name: &str, members: &BTreeSet<&str>, nodes: &[&NodeLive]) -> SyncGroupView {
    let group_nodes: Vec<SyncGroupNodeView> = nodes
        .iter()
        .filter_map(|n| {
            let reported_group = n.sync_groups.iter().find(|g| g.name == name);
            let state = reported_group.map(|g| g.state);
            let reported: Vec<_> = n
                .instances
                .iter()
                .filter(|i| members.contains(i.name.as_str()))
                .collect();
            if state.is_none() && reported.is_empty() {
                return None;
            }
            Some(SyncGroupNodeView {
                node_id: n.node_id.clone(),
                node_status: n.status,
                state,
                master_of: reported
                    .iter()
                    .filter(|i| i.state == VrrpState::Master)
                    .map(|i| i.name.clone())
                    .collect(),
                tracking_weight: reported_group.and_then(|g| g.tracking_weight),
            })
        })
        .collect();
    let masters: Vec<&SyncGroupNodeView> = group_nodes
        .iter()
        .filter(|n| n.node_status != NodeStatus::Down && !n.master_of.is_empty())
        .collect();
    let split = masters.len() > 1;
    let reason = split.then(|| {
        let each: Vec<String> = masters
            .iter()
            .map(|n| format!("{} MASTER on {}", n.master_of.join(" "), n.node_id))
            .collect();
        format!(
            "sync group {name} is split across nodes: {}",
            each.join(", ")
        )
    });
    let weights_ignored_on = group_nodes
        .iter()
        .filter(|n| n.tracking_weight == Some(false) && n.node_status != NodeStatus::Down)
        .map(|n| n.node_id.clone())
        .collect();
    SyncGroupView {
        name: name.to_string(),
        members: members.iter().map(|m| m.to_string()).collect(),
        nodes: group_nodes,
        split,
        reason,
        weights_ignored_on,
    }
}

/// Every virtual server every node of `nodes` reports, by node then name.
pub fn virtual_servers(nodes: &[&NodeLive]) -> Vec<VirtualServerView> {
    nodes
        .iter()
        .flat_map(|n| {
            n.virtual_servers.iter().map(|v| VirtualServerView {
                node_id: n.node_id.clone(),
                node_status: n.status,
                name: v.name.clone(),
                up: v.up,
                live_real_servers: v.live_real_servers(),
                real_servers: v.real_servers.clone(),
                unlisted_real_servers: (v.omitted_up + v.omitted_down) as usize,
            })
        })
        .collect()
}

/// Every member of the sync group `instance` belongs to in `groups` (itself included); empty
/// when it belongs to none. A switchover of `instance` moves them all: keepalived moves a
/// group's members together.
pub fn moves_with<'g>(instance: &str, groups: &'g [SyncGroupView]) -> Vec<&'g str> {
    groups
        .iter()
        .find(|g| g.members.iter().any(|m| m == instance))
        .map(|g| g.members.iter().map(String::as_str).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hapulse_protocol::testing::{report, vrrp_instance};
    use hapulse_protocol::{SyncGroupReport, VirtualServerReport};

    /// Node `id` with instances VI_A and VI_B (sync group G1) in `a` and `b`.
    fn node(id: &str, a: VrrpState, b: VrrpState, group: Option<VrrpState>) -> NodeLive {
        let mut r = report(id, "c");
        for (name, state) in [("VI_A", a), ("VI_B", b)] {
            let mut i = vrrp_instance(name, state, "10.213.40.1", state == VrrpState::Master);
            i.sync_group = Some("G1".into());
            r = r.instance(i);
        }
        let mut report = r.build();
        if let Some(state) = group {
            report.keepalived.sync_groups = vec![SyncGroupReport {
                name: "G1".into(),
                state,
                members: vec!["VI_A".into(), "VI_B".into()],
                tracking_weight: Some(true),
            }];
        }
        NodeLive::from_report(&report, chrono::Utc::now(), tokio::time::Instant::now())
    }

    #[test]
    fn a_group_whose_members_are_master_on_two_nodes_is_split() {
        use VrrpState::{Backup, Master};
        let a = node("a", Master, Backup, Some(Master));
        let b = node("b", Backup, Master, Some(Master));
        let groups = sync_groups(&[&a, &b]);
        assert_eq!(groups.len(), 1);
        let g = &groups[0];
        assert_eq!(g.members, ["VI_A", "VI_B"]);
        assert!(g.split);
        assert_eq!(
            g.reason.as_deref(),
            Some("sync group G1 is split across nodes: VI_A MASTER on a, VI_B MASTER on b")
        );
    }

    #[test]
    fn a_group_together_on_one_node_is_not_split() {
        use VrrpState::{Backup, Master};
        let a = node("a", Master, Master, Some(Master));
        let b = node("b", Backup, Backup, None);
        let groups = sync_groups(&[&a, &b]);
        assert!(!groups[0].split, "{:?}", groups[0].reason);
        assert_eq!(groups[0].nodes[0].master_of, ["VI_A", "VI_B"]);
        assert_eq!(groups[0].nodes[1].state, None);
        assert_eq!(moves_with("VI_B", &groups), ["VI_A", "VI_B"]);
        assert!(moves_with("VI_X", &groups).is_empty());
    }

    #[test]
    fn a_down_node_does_not_split_a_group() {
        use VrrpState::{Backup, Master};
        let mut a = node("a", Master, Backup, Some(Master));
        a.status = NodeStatus::Down;
        let b = node("b", Backup, Master, Some(Master));
        assert!(!sync_groups(&[&a, &b])[0].split);
    }

    #[test]
    fn virtual_servers_count_their_live_real_servers() {
        let mut a = node("a", VrrpState::Master, VrrpState::Master, None);
        let rs = |address: &str, up| RealServerReport {
            address: address.into(),
            up,
            weight: None,
        };
        a.virtual_servers = vec![
            VirtualServerReport {
                name: "[10.213.40.100]:tcp:80".into(),
                up: true,
                real_servers: vec![
                    rs("[10.213.40.11]:tcp:80", true),
                    rs("[10.213.40.12]:tcp:80", false),
                ],
                omitted_up: 0,
                omitted_down: 0,
            },
            VirtualServerReport {
                name: "FWM 5".into(),
                up: false,
                real_servers: vec![rs("[10.213.40.13]:tcp:443", false)],
                omitted_up: 0,
                omitted_down: 0,
            },
        ];
        let v = virtual_servers(&[&a]);
        assert_eq!(v[0].live_real_servers, 1);
        assert!(!v[0].no_live_real_server());
        assert!(v[1].no_live_real_server());
    }
}
