//! What the REST API and the dashboard show, computed from live state: per VRRP instance its
//! master, its VIP holders and a health verdict; per cluster the worst of its instances.
//!
//! These shapes are the public JSON of `/api/v1`; scripts outside the project depend on the field
//! names, so keep them stable.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use hapulse_protocol::{
    LinkState, ReplicationKind, ReplicationLinkReport, ReplicationRole, ServiceCheckReport,
    VrrpCounters, VrrpState,
};
use serde::Serialize;
use uuid::Uuid;

use crate::fleet::live::{Live, NodeLive, NodeStatus};

/// Health verdict of an instance or a cluster, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// One MASTER holding every VIP, every member up and ready to take over.
    Healthy,
    /// It works, but something is off: a member suspect, down, in FAULT or stopped, no standby,
    /// or the master not holding its VIP.
    Degraded,
    /// No reachable node is MASTER: the service behind the VIP is likely down.
    NoMaster,
    /// Two nodes are MASTER, or two nodes hold one VIP, at once.
    SplitBrain,
}

impl Health {
    /// `healthy`, `degraded`, `no_master`, `split_brain`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::NoMaster => "no_master",
            Health::SplitBrain => "split_brain",
        }
    }
}

/// One node's part in a VRRP instance.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MemberView {
    /// Node id.
    pub node_id: String,
    /// Detector verdict on the node.
    pub node_status: NodeStatus,
    /// VRRP state on that node.
    pub state: VrrpState,
    /// Configured priority.
    pub base_priority: Option<u8>,
    /// Effective priority.
    pub effective_priority: Option<u8>,
    /// True when the node holds at least one of the instance's VIPs.
    pub holds_vip: bool,
    /// The VIPs it holds.
    pub held_vips: Vec<String>,
    /// When keepalived last changed the state there.
    pub last_transition: Option<DateTime<Utc>>,
    /// Its `track_script` entries there with their status (keepalived's data dump): why it is
    /// in FAULT (a failing weight-0 script) or why its priority dropped (a failing script's
    /// negative weight). Empty when none, or from agents that do not report them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracked_scripts: Vec<hapulse_protocol::TrackedItem>,
    /// Its `track_interface` entries there with their link status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracked_interfaces: Vec<hapulse_protocol::TrackedItem>,
}

impl MemberView {
    /// Its tracked scripts and interfaces that are failing (`BAD`), for people:
    /// `script chk_db BAD (weight -10)`; empty when all pass.
    pub fn failing_tracks(&self) -> Vec<String> {
        let scripts = self.tracked_scripts.iter().map(|t| ("script", t));
        let interfaces = self.tracked_interfaces.iter().map(|t| ("interface", t));
        scripts
            .chain(interfaces)
            .filter(|(_, t)| t.status == Some(hapulse_protocol::TrackStatus::Bad))
            .map(|(what, t)| {
                let effect = if t.weight == 0 {
                    "FAULT".to_string()
                } else {
                    format!("weight {:+}", t.weight)
                };
                format!("{what} {} BAD ({effect})", t.name)
            })
            .collect()
    }
}

/// One VIP and who has it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VipView {
    /// The address.
    pub vip: String,
    /// Nodes (not down) whose kernel has it; more than one is a split brain.
    pub holders: Vec<String>,
    /// Who the LAN says has it: the hosts that answered the nodes' ARP requests, and the
    /// verdicts `answered_by_several` and `non_holders` (see [`crate::fleet::arp`]). Absent
    /// while no node's ARP check of it counts (agents with `arp_check_interval = "0s"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arp: Option<crate::fleet::arp::VipArp>,
}

/// A VRRP instance across the nodes of a cluster.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InstanceView {
    /// Instance name.
    pub name: String,
    /// Virtual router id (from the first member that reports one).
    pub vrid: Option<u8>,
    /// Verdict.
    pub health: Health,
    /// Why the verdict is not `healthy`, one sentence each.
    pub reasons: Vec<String>,
    /// The MASTER node when there is exactly one.
    pub master: Option<String>,
    /// Every node (not down) in state MASTER.
    pub masters: Vec<String>,
    /// Each VIP with its holders.
    pub vips: Vec<VipView>,
    /// Members, by node id.
    pub members: Vec<MemberView>,
    /// Where the members' keepalived configurations disagree (VRID, advertisement interval,
    /// VIPs, authentication type), one sentence each with every node's value: VRRP misbehaves
    /// quietly when they do. Empty when they agree.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
    /// The keepalived sync group it belongs to (as the first member naming one reports it):
    /// a switchover moves the group's other instances with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_group: Option<String>,
}

/// A node in a cluster listing.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodeSummary {
    /// Node id.
    pub node_id: String,
    /// Host name.
    pub hostname: String,
    /// Detector verdict.
    pub status: NodeStatus,
    /// Since when.
    pub status_since: DateTime<Utc>,
    /// When its last heartbeat arrived (server clock).
    pub last_heartbeat_at: DateTime<Utc>,
    /// Milliseconds since then, when the answer was built.
    pub heartbeat_age_ms: i64,
    /// keepalived's main process is alive.
    pub keepalived_running: bool,
    /// Agent version.
    pub agent_version: String,
    /// Its service checks (`[[checks]]` in its agent), by name, as last reported: `passing`
    /// after the check's rise/fall counts, the latest attempt's `detail`. Empty without checks.
    pub checks: Vec<ServiceCheckReport>,
    /// How many of them are not passing.
    pub checks_failing: usize,
    /// Its last report the server refused, since it last accepted one (why a node that runs
    /// looks silent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_report: Option<crate::fleet::live::RefusedReport>,
}

/// A cluster with its verdict.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// Cluster name.
    pub name: String,
    /// Worst verdict of its instances (degraded when a node is not up).
    pub health: Health,
    /// Why, one sentence each.
    pub reasons: Vec<String>,
    /// Nodes reporting on time.
    pub nodes_up: usize,
    /// Nodes known.
    pub nodes_total: usize,
    /// Nodes, by id.
    pub nodes: Vec<NodeSummary>,
    /// Instances, by name.
    pub instances: Vec<InstanceView>,
    /// Replication links (PostgreSQL, MySQL, DRBD), by key.
    pub replication: Vec<ReplicationView>,
    /// The cluster's epoch: raised by every switchover; commands carry it (fencing token).
    pub epoch: u64,
    /// The Pacemaker cluster its nodes report (`[pacemaker]` in their agents): verdicts, each
    /// member's partition, the status. Absent when no node reports one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pacemaker: Option<crate::fleet::pacemaker::PacemakerClusterView>,
    /// keepalived's sync groups (instances that move together), with a split verdict. Empty
    /// when no node reports one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sync_groups: Vec<crate::fleet::groups::SyncGroupView>,
    /// keepalived's LVS virtual servers, per node, with their real servers. Empty when no node
    /// runs LVS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_servers: Vec<crate::fleet::groups::VirtualServerView>,
}

/// One node's end of a replication link.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LinkMemberView {
    /// Node id.
    pub node_id: String,
    /// Detector verdict on the node.
    pub node_status: NodeStatus,
    /// Its role.
    pub role: ReplicationRole,
    /// Link state as it sees it.
    pub state: LinkState,
    /// The other end as it names it.
    pub peer: Option<String>,
    /// Lag in bytes.
    pub lag_bytes: Option<u64>,
    /// Lag in seconds.
    pub lag_seconds: Option<f64>,
    /// Why the source could not be asked.
    pub error: Option<String>,
    /// Why hapulse cannot move this member's server, when it cannot: a MySQL server that is not
    /// MariaDB (its raw `version`), or one whose agent does not report its version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unmovable: Option<String>,
}

/// A replication link across the nodes of a cluster: who is primary, how far behind each
/// standby is, and whether the VIP is where the primary is.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReplicationView {
    /// `kind:name` (`postgresql:pg`).
    pub link: String,
    /// Source kind.
    pub kind: ReplicationKind,
    /// Link name.
    pub name: String,
    /// Verdict.
    pub health: Health,
    /// Why the verdict is not `healthy`.
    pub reasons: Vec<String>,
    /// The primary when there is exactly one.
    pub primary: Option<String>,
    /// Every node (not down) that says it is primary.
    pub primaries: Vec<String>,
    /// VRRP instance whose VIP should follow the primary (configured, or the cluster's only one).
    pub vrrp_instance: Option<String>,
    /// Nodes holding that instance's VIPs.
    pub vip_holders: Vec<String>,
    /// True when the VIP is on the primary, false when it is elsewhere, absent when there is
    /// nothing to compare.
    pub vip_on_primary: Option<bool>,
    /// Members, by node id.
    pub members: Vec<LinkMemberView>,
}

/// Everything about one node.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodeView {
    /// Summary fields.
    #[serde(flatten)]
    pub summary: NodeSummary,
    /// Cluster.
    pub cluster: String,
    /// Current agent run.
    pub boot_id: Uuid,
    /// Highest accepted sequence number in that run.
    pub last_seq: u64,
    /// Agent heartbeat interval (ms).
    pub heartbeat_interval_ms: u64,
    /// Agent protocol version.
    pub protocol_version: u32,
    /// When the agent took its last snapshot (agent clock).
    pub last_observed_at: DateTime<Utc>,
    /// Host uptime (s).
    pub uptime_seconds: u64,
    /// One-minute load average.
    pub load1: f64,
    /// Reports waiting in the agent's spool.
    pub spool_depth: u64,
    /// Reports its spool dropped.
    pub spool_dropped: u64,
    /// Its VRRP instances.
    pub instances: Vec<NodeInstanceView>,
    /// Its replication links, as it reported them.
    pub replication: Vec<ReplicationLinkReport>,
    /// What it reaches (reference address, peers), as it last reported.
    pub arbitration: Option<hapulse_protocol::ArbitrationReport>,
}

/// A VRRP instance as one node reports it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodeInstanceView {
    /// Instance name.
    pub name: String,
    /// Virtual router id.
    pub vrid: Option<u8>,
    /// Interface.
    pub interface: Option<String>,
    /// State.
    pub state: VrrpState,
    /// Configured priority.
    pub base_priority: Option<u8>,
    /// Effective priority.
    pub effective_priority: Option<u8>,
    /// VIPs of the instance.
    pub vips: Vec<String>,
    /// Those the node holds.
    pub held_vips: Vec<String>,
    /// True when it holds at least one.
    pub holds_vip: bool,
    /// When keepalived last changed the state.
    pub last_transition: Option<DateTime<Utc>>,
    /// keepalived counters.
    pub counters: VrrpCounters,
    /// The instance's advert interval in milliseconds as keepalived dumps it (`advert_int 1` →
    /// 1000, `advert_int 0.25` with VRRPv3 → 250); absent before the node's first JSON dump.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advert_interval_ms: Option<u32>,
}

fn summary(node: &NodeLive, now: DateTime<Utc>) -> NodeSummary {
    NodeSummary {
        node_id: node.node_id.clone(),
        hostname: node.hostname.clone(),
        status: node.status,
        status_since: node.status_since,
        last_heartbeat_at: node.last_heartbeat_at,
        heartbeat_age_ms: (now - node.last_heartbeat_at).num_milliseconds().max(0),
        keepalived_running: node.keepalived_running,
        agent_version: node.agent_version.clone(),
        checks: node.checks.clone(),
        checks_failing: node.checks.iter().filter(|c| !c.passing).count(),
        refused_report: node.refused_report.clone(),
    }
}

/// A health verdict being built: the worst health so far and every reason, in order.
struct Verdict {
    /// Worst health so far.
    health: Health,
    /// Why it is not healthy, one sentence each.
    reasons: Vec<String>,
}

impl Verdict {
    /// Healthy, for no reason yet.
    fn new() -> Self {
        Verdict {
            health: Health::Healthy,
            reasons: Vec::new(),
        }
    }

    /// Makes the verdict at least `health`, because of `reason`.
    fn worsen(&mut self, health: Health, reason: String) {
        self.health = self.health.max(health);
        self.reasons.push(reason);
    }
}

/// The verdict on one instance from its members' reports.
pub fn instance_view(name: &str, nodes: &[&NodeLive]) -> InstanceView {
    let vrid = nodes
        .iter()
        .filter_map(|n| n.instance(name))
        .find_map(|i| i.vrid);
    let members = instance_members(name, nodes);
    let vips = vip_holders(name, nodes);
    // A down node's last report is stale: its keepalived may be long gone. Only nodes that still
    // report count as masters and holders.
    let masters: Vec<String> = members
        .iter()
        .filter(|m| m.state == VrrpState::Master && m.node_status != NodeStatus::Down)
        .map(|m| m.node_id.clone())
        .collect();
    let mut verdict = Verdict::new();
    split_brain_reasons(&masters, &vips, &mut verdict);
    if masters.is_empty() {
        verdict.worsen(Health::NoMaster, "no reachable node is MASTER".into());
    }
    vip_placement_reasons(&masters, &vips, &mut verdict);
    member_reasons(name, &members, &masters, &mut verdict);
    let single = crate::fleet::arp::single_master(name, nodes);
    InstanceView {
        name: name.to_string(),
        vrid,
        health: verdict.health,
        reasons: verdict.reasons,
        master: if masters.len() == 1 {
            masters.first().cloned()
        } else {
            None
        },
        masters,
        vips: vips
            .into_iter()
            .map(|(vip, holders)| {
                let arp = crate::fleet::arp::vip_arp(name, &vip, single, nodes);
                VipView { vip, holders, arp }
            })
            .collect(),
        members,
        drift: config_drift(name, nodes),
        sync_group: nodes
            .iter()
            .filter_map(|n| n.instance(name))
            .find_map(|i| i.sync_group.clone()),
    }
}

/// Where the nodes (not down) that report instance `name` disagree on its configuration: the
/// virtual router id, the advertisement interval, the VIPs and the authentication type (values
/// a node has not reported yet, before its first JSON dump, are left out). One sentence per
/// setting that differs, naming each node's value: `advert interval differs: a 1000 ms, b 2000 ms`.
pub fn config_drift(name: &str, nodes: &[&NodeLive]) -> Vec<String> {
    let reports: Vec<(&str, &hapulse_protocol::VrrpInstanceReport)> = nodes
        .iter()
        .filter(|n| n.status != NodeStatus::Down)
        .filter_map(|n| Some((n.node_id.as_str(), n.instance(name)?)))
        .collect();
    let mut drift = Vec::new();
    let mut differs = |what: &str, values: Vec<(&str, String)>| {
        let distinct: std::collections::BTreeSet<&String> = values.iter().map(|(_, v)| v).collect();
        if distinct.len() > 1 {
            let each: Vec<String> = values.iter().map(|(n, v)| format!("{n} {v}")).collect();
            drift.push(format!("{what} differs: {}", each.join(", ")));
        }
    };
    let each = |f: &dyn Fn(&hapulse_protocol::VrrpInstanceReport) -> Option<String>| {
        reports
            .iter()
            .filter_map(|(n, i)| Some((*n, f(i)?)))
            .collect::<Vec<_>>()
    };
    differs("VRID", each(&|i| i.vrid.map(|v| v.to_string())));
    differs(
        "advert interval",
        each(&|i| i.advert_interval_ms.map(|ms| format!("{ms} ms"))),
    );
    differs(
        "VIPs",
        each(&|i| {
            let mut vips = i.vips.clone();
            vips.sort();
            (!vips.is_empty()).then(|| format!("[{}]", vips.join(" ")))
        }),
    );
    differs("authentication", each(&|i| i.auth_type.clone()));
    drift
}

/// `: script chk BAD (FAULT)` when the member has failing tracked scripts or interfaces (why it
/// is in FAULT, or why its priority dropped), else nothing.
fn tracks_text(m: &MemberView) -> String {
    let failing = m.failing_tracks();
    if failing.is_empty() {
        String::new()
    } else {
        format!(": {}", failing.join(", "))
    }
}

/// The members of instance `name`: every node of `nodes` that reports it, in order.
fn instance_members(name: &str, nodes: &[&NodeLive]) -> Vec<MemberView> {
    nodes
        .iter()
        .filter_map(|node| Some((node, node.instance(name)?)))
        .map(|(node, instance)| MemberView {
            node_id: node.node_id.clone(),
            node_status: node.status,
            state: instance.state,
            base_priority: instance.base_priority,
            effective_priority: instance.effective_priority,
            holds_vip: instance.holds_vip(),
            held_vips: instance.held_vips.clone(),
            last_transition: instance.last_transition,
            tracked_scripts: instance.tracked_scripts.clone(),
            tracked_interfaces: instance.tracked_interfaces.clone(),
        })
        .collect()
}

/// Every VIP of instance `name` (as any member configures it) with the nodes, not down, whose
/// kernel holds it.
fn vip_holders(name: &str, nodes: &[&NodeLive]) -> BTreeMap<String, Vec<String>> {
    let mut vips: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for node in nodes {
        let Some(instance) = node.instance(name) else {
            continue;
        };
        for vip in &instance.vips {
            vips.entry(vip.clone()).or_default();
        }
        if node.status != NodeStatus::Down {
            for vip in &instance.held_vips {
                vips.entry(vip.clone())
                    .or_default()
                    .push(node.node_id.clone());
            }
        }
    }
    vips
}

/// Split brain: more than one MASTER, or a VIP on more than one node.
fn split_brain_reasons(
    masters: &[String],
    vips: &BTreeMap<String, Vec<String>>,
    verdict: &mut Verdict,
) {
    if masters.len() > 1 {
        verdict.worsen(
            Health::SplitBrain,
            format!("{} nodes are MASTER: {}", masters.len(), masters.join(", ")),
        );
    }
    for (vip, holders) in vips {
        if holders.len() > 1 {
            verdict.worsen(
                Health::SplitBrain,
                format!(
                    "VIP {vip} is on {} nodes: {}",
                    holders.len(),
                    holders.join(", ")
                ),
            );
        }
    }
}

/// VIPs out of place: held by no node, held by a node that is not MASTER, or a MASTER holding
/// none of them.
fn vip_placement_reasons(
    masters: &[String],
    vips: &BTreeMap<String, Vec<String>>,
    verdict: &mut Verdict,
) {
    for (vip, holders) in vips {
        if holders.is_empty() {
            verdict.worsen(Health::Degraded, format!("no node holds VIP {vip}"));
        }
        for holder in holders.iter().filter(|h| !masters.contains(h)) {
            verdict.worsen(
                Health::Degraded,
                format!("VIP {vip} is on {holder}, which is not MASTER"),
            );
        }
    }
    for master in masters {
        let holds_any = vips.values().any(|holders| holders.contains(master));
        if !vips.is_empty() && !holds_any {
            verdict.worsen(
                Health::Degraded,
                format!("MASTER {master} holds none of the VIPs"),
            );
        }
    }
}

/// Members that cannot take over (node not up; instance in FAULT, STOP or INIT), and a single
/// MASTER without a standby ready.
fn member_reasons(name: &str, members: &[MemberView], masters: &[String], verdict: &mut Verdict) {
    for m in members {
        if m.node_status != NodeStatus::Up {
            verdict.worsen(
                Health::Degraded,
                format!("node {} is {}", m.node_id, m.node_status.as_str()),
            );
        } else if matches!(
            m.state,
            VrrpState::Fault | VrrpState::Stop | VrrpState::Init
        ) {
            verdict.worsen(
                Health::Degraded,
                format!("{} is {} on {}{}", name, m.state, m.node_id, tracks_text(m)),
            );
        }
    }
    let standbys = members
        .iter()
        .filter(|m| m.state == VrrpState::Backup && m.node_status == NodeStatus::Up)
        .count();
    if masters.len() == 1 && standbys == 0 {
        verdict.worsen(Health::Degraded, "no standby is ready to take over".into());
    }
}

/// The view of `cluster`, or `None` when no node belongs to it.
pub fn cluster_view(live: &Live, cluster: &str, now: DateTime<Utc>) -> Option<ClusterView> {
    let nodes: Vec<&NodeLive> = live.cluster_nodes(cluster).collect();
    cluster_view_of(cluster, nodes, now)
}

/// The view of `cluster` from its nodes (`None` without any).
pub fn cluster_view_of(
    cluster: &str,
    nodes: Vec<&NodeLive>,
    now: DateTime<Utc>,
) -> Option<ClusterView> {
    if nodes.is_empty() {
        return None;
    }
    let mut names: Vec<&str> = nodes
        .iter()
        .flat_map(|n| n.instances.iter().map(|i| i.name.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    let instances: Vec<InstanceView> = names
        .iter()
        .map(|name| instance_view(name, &nodes))
        .collect();
    let mut health = instances
        .iter()
        .map(|i| i.health)
        .max()
        .unwrap_or(Health::NoMaster);
    let mut reasons: Vec<String> = instances
        .iter()
        .flat_map(|i| i.reasons.iter().map(move |r| format!("{}: {r}", i.name)))
        .collect();
    let pacemaker = crate::fleet::pacemaker::cluster_view(&nodes);
    if let Some(p) = &pacemaker {
        // A Pacemaker cluster without keepalived: its health is Pacemaker's.
        if instances.is_empty() {
            health = Health::Healthy;
        }
        for v in &p.verdicts {
            health = health.max(match v.kind {
                "pacemaker_split" => Health::SplitBrain,
                _ => Health::Degraded,
            });
            reasons.push(format!("Pacemaker: {}", v.message));
        }
    } else if instances.is_empty() {
        reasons.push("no VRRP instance reported".into());
    }
    let mut keys: Vec<String> = nodes
        .iter()
        .flat_map(|n| n.replication.iter().map(|l| l.key()))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let replication: Vec<ReplicationView> = keys
        .iter()
        .map(|k| replication_view(k, &nodes, &instances))
        .collect();
    for r in &replication {
        health = health.max(r.health);
        reasons.extend(
            r.reasons
                .iter()
                .map(|reason| format!("{}: {reason}", r.link)),
        );
    }
    for node in &nodes {
        if node.status != NodeStatus::Up
            && !instances
                .iter()
                .any(|i| i.members.iter().any(|m| m.node_id == node.node_id))
        {
            health = health.max(Health::Degraded);
            reasons.push(format!("node {} is {}", node.node_id, node.status.as_str()));
        }
    }
    for node in &nodes {
        if let Some(r) = &node.refused_report {
            health = health.max(Health::Degraded);
            reasons.push(format!(
                "the server refuses node {}'s reports: {}",
                node.node_id, r.reason
            ));
        }
    }
    let (sync_groups, virtual_servers) =
        groups_and_virtual_servers(&nodes, &mut health, &mut reasons);
    Some(ClusterView {
        name: cluster.to_string(),
        health,
        reasons,
        nodes_up: nodes.iter().filter(|n| n.status == NodeStatus::Up).count(),
        nodes_total: nodes.len(),
        nodes: nodes.iter().map(|n| summary(n, now)).collect(),
        instances,
        replication,
        epoch: 0,
        pacemaker,
        sync_groups,
        virtual_servers,
    })
}

/// keepalived's sync groups and LVS virtual servers of the cluster's `nodes`; a split group or
/// a virtual server without a live real server degrades `health`, with its reason.
fn groups_and_virtual_servers(
    nodes: &[&NodeLive],
    health: &mut Health,
    reasons: &mut Vec<String>,
) -> (
    Vec<crate::fleet::groups::SyncGroupView>,
    Vec<crate::fleet::groups::VirtualServerView>,
) {
    let sync_groups = crate::fleet::groups::sync_groups(nodes);
    for g in &sync_groups {
        for reason in g.reason.iter().cloned().chain(g.weights_ignored()) {
            *health = (*health).max(Health::Degraded);
            reasons.push(reason);
        }
    }
    let virtual_servers = crate::fleet::groups::virtual_servers(nodes);
    for v in virtual_servers.iter().filter(|v| v.no_live_real_server()) {
        *health = (*health).max(Health::Degraded);
        reasons.push(format!(
            "virtual server {} on {} has no live real server",
            v.name, v.node_id
        ));
    }
    (sync_groups, virtual_servers)
}

/// The verdict on one replication link from its members' reports and the cluster's instances.
pub fn replication_view(
    key: &str,
    nodes: &[&NodeLive],
    instances: &[InstanceView],
) -> ReplicationView {
    let links: Vec<(&NodeLive, &ReplicationLinkReport)> = nodes
        .iter()
        .filter_map(|node| Some((*node, node.link(key)?)))
        .collect();
    // Kind and name as the last member reports them; the instance as the first that names one.
    let kind = links
        .last()
        .map_or(ReplicationKind::Postgresql, |(_, l)| l.kind);
    let name = links
        .last()
        .map(|(_, l)| l.name.clone())
        .unwrap_or_default();
    let configured_instance = links.iter().find_map(|(_, l)| l.vrrp_instance.clone());
    let members: Vec<LinkMemberView> = links.iter().map(|(n, l)| link_member(n, l)).collect();
    let primaries: Vec<String> = members
        .iter()
        .filter(|m| m.role == ReplicationRole::Primary && m.node_status != NodeStatus::Down)
        .map(|m| m.node_id.clone())
        .collect();
    let mut verdict = Verdict::new();
    primary_reasons(&primaries, &mut verdict);
    link_state_reasons(&members, &primaries, &mut verdict);
    let vrrp_instance =
        configured_instance.or_else(|| (instances.len() == 1).then(|| instances[0].name.clone()));
    let vip_holders = instance_vip_holders(vrrp_instance.as_deref(), instances);
    let vip_on_primary = match (primaries.as_slice(), vip_holders.is_empty()) {
        ([primary], false) => Some(vip_holders.iter().all(|h| h == primary)),
        _ => None,
    };
    if vip_on_primary == Some(false) {
        verdict.worsen(
            Health::Degraded,
            format!(
                "the VIP of {} is on {} but the primary is {}",
                vrrp_instance.as_deref().unwrap_or("?"),
                vip_holders.join(", "),
                primaries.join(", ")
            ),
        );
    }
    ReplicationView {
        link: key.to_string(),
        kind,
        name,
        health: verdict.health,
        reasons: verdict.reasons,
        primary: (primaries.len() == 1).then(|| primaries[0].clone()),
        primaries,
        vrrp_instance,
        vip_holders,
        vip_on_primary,
        members,
    }
}

/// `node`'s end of a replication link, as it reports `link`.
fn link_member(node: &NodeLive, link: &ReplicationLinkReport) -> LinkMemberView {
    LinkMemberView {
        node_id: node.node_id.clone(),
        node_status: node.status,
        role: link.role,
        state: link.state,
        peer: link.peer.clone(),
        lag_bytes: link.lag_bytes,
        lag_seconds: link.lag_seconds,
        error: link.error.clone(),
        unmovable: unmovable(node, link),
    }
}

/// Why hapulse cannot move `node`'s server of `link` (see [`LinkMemberView::unmovable`]).
fn unmovable(node: &NodeLive, link: &ReplicationLinkReport) -> Option<String> {
    if link.kind != hapulse_protocol::ReplicationKind::Mysql || link.state == LinkState::Down {
        return None;
    }
    match link.raw.get("version") {
        Some(v) if v.contains("MariaDB") => None,
        Some(v) => Some(format!(
            "{} runs MySQL {v}: hapulse observes MySQL replication and moves only MariaDB's",
            node.node_id
        )),
        None => Some(format!(
            "{}'s agent does not report its MySQL server's version",
            node.node_id
        )),
    }
}

/// Split brain when more than one reachable node is primary; no master when none is.
fn primary_reasons(primaries: &[String], verdict: &mut Verdict) {
    if primaries.len() > 1 {
        verdict.worsen(
            Health::SplitBrain,
            format!(
                "{} nodes are primary: {}",
                primaries.len(),
                primaries.join(", ")
            ),
        );
    } else if primaries.is_empty() {
        verdict.worsen(Health::NoMaster, "no reachable node is primary".into());
    }
}

/// Members whose link is not replicating, and a single primary without a standby replicating.
fn link_state_reasons(members: &[LinkMemberView], primaries: &[String], verdict: &mut Verdict) {
    for m in members {
        match m.state {
            LinkState::Streaming | LinkState::CatchingUp => {}
            // A primary without standbys says disconnected; the standbys' own view is reported
            // below, so only say it when no standby reports at all.
            LinkState::Disconnected if m.role == ReplicationRole::Primary => {}
            state => verdict.worsen(
                Health::Degraded,
                format!(
                    "{} on {}{}",
                    state.as_str(),
                    m.node_id,
                    m.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
            ),
        }
    }
    let standbys = members
        .iter()
        .filter(|m| {
            m.role == ReplicationRole::Secondary
                && m.node_status == NodeStatus::Up
                && matches!(m.state, LinkState::Streaming | LinkState::CatchingUp)
        })
        .count();
    if primaries.len() == 1 && standbys == 0 {
        verdict.worsen(Health::Degraded, "no standby is replicating".into());
    }
}

/// The nodes holding any VIP of the VRRP instance named `instance` (sorted, once each); empty
/// without an instance or when it is not among `instances`.
fn instance_vip_holders(instance: Option<&str>, instances: &[InstanceView]) -> Vec<String> {
    instance
        .and_then(|i| instances.iter().find(|v| v.name == i))
        .map(|i| {
            let mut holders: Vec<String> = i
                .vips
                .iter()
                .flat_map(|v| v.holders.iter().cloned())
                .collect();
            holders.sort();
            holders.dedup();
            holders
        })
        .unwrap_or_default()
}

/// Every cluster, by name.
pub fn clusters(live: &Live, now: DateTime<Utc>) -> Vec<ClusterView> {
    live.by_cluster()
        .into_iter()
        .filter_map(|(c, nodes)| cluster_view_of(c, nodes, now))
        .collect()
}

/// The view of one node, or `None` when unknown.
pub fn node_view(live: &Live, node_id: &str, now: DateTime<Utc>) -> Option<NodeView> {
    let node = live.nodes.get(node_id)?;
    Some(NodeView {
        summary: summary(node, now),
        cluster: node.cluster.clone(),
        boot_id: node.boot_id,
        last_seq: node.last_seq,
        heartbeat_interval_ms: node.heartbeat_interval_ms,
        protocol_version: node.protocol_version,
        last_observed_at: node.last_observed_at,
        uptime_seconds: node.uptime_seconds,
        load1: node.load1,
        spool_depth: node.spool_depth,
        spool_dropped: node.spool_dropped,
        instances: node
            .instances
            .iter()
            .map(|i| NodeInstanceView {
                name: i.name.clone(),
                vrid: i.vrid,
                interface: i.interface.clone(),
                state: i.state,
                base_priority: i.base_priority,
                effective_priority: i.effective_priority,
                vips: i.vips.clone(),
                held_vips: i.held_vips.clone(),
                holds_vip: i.holds_vip(),
                last_transition: i.last_transition,
                counters: i.counters.clone(),
                advert_interval_ms: i.advert_interval_ms,
            })
            .collect(),
        replication: node.replication.clone(),
        arbitration: node.arbitration.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hapulse_protocol::testing::{report, vrrp_instance};

    fn node(id: &str, state: VrrpState, held: &[&str], status: NodeStatus) -> NodeLive {
        let mut instance = vrrp_instance("VI_1", state, "10.0.0.100", false);
        instance.held_vips = held.iter().map(|s| s.to_string()).collect();
        let report = report(id, "c").instance(instance).build();
        let mut n = NodeLive::from_report(&report, Utc::now(), tokio::time::Instant::now());
        n.status = status;
        n
    }

    fn verdict(nodes: &[NodeLive]) -> InstanceView {
        let refs: Vec<&NodeLive> = nodes.iter().collect();
        instance_view("VI_1", &refs)
    }

    const VIP: &[&str] = &["10.0.0.100"];

    #[test]
    fn a_member_in_fault_says_which_tracked_script_or_interface_fails() {
        use hapulse_protocol::{TrackStatus, TrackedItem};
        let a = node("a", VrrpState::Master, VIP, NodeStatus::Up);
        let mut b = node("b", VrrpState::Fault, &[], NodeStatus::Up);
        let item = |name: &str, weight, status| TrackedItem {
            name: name.into(),
            weight,
            status: Some(status),
        };
        b.instances[0].tracked_scripts = vec![
            item("chk_db", 0, TrackStatus::Bad),
            item("chk_ok", 0, TrackStatus::Good),
        ];
        b.instances[0].tracked_interfaces = vec![item("eth1", -20, TrackStatus::Bad)];
        let v = verdict(&[a, b]);
        assert!(
            v.reasons.contains(
                &"VI_1 is FAULT on b: script chk_db BAD (FAULT), interface eth1 BAD (weight -20)"
                    .to_string()
            ),
            "{:?}",
            v.reasons
        );
        assert_eq!(v.members[1].tracked_scripts.len(), 2);
    }

    #[test]
    fn healthy_pair() {
        let v = verdict(&[
            node("a", VrrpState::Master, VIP, NodeStatus::Up),
            node("b", VrrpState::Backup, &[], NodeStatus::Up),
        ]);
        assert_eq!(v.health, Health::Healthy, "{:?}", v.reasons);
        assert_eq!(v.master.as_deref(), Some("a"));
        assert_eq!(v.vips[0].holders, vec!["a".to_string()]);
        assert_eq!(v.vrid, Some(51));
    }

    #[test]
    fn members_that_disagree_on_their_configuration_are_named_with_their_values() {
        let mut a = node("a", VrrpState::Master, VIP, NodeStatus::Up);
        let mut b = node("b", VrrpState::Backup, &[], NodeStatus::Up);
        let same = verdict(&[a.clone(), b.clone()]);
        assert!(same.drift.is_empty(), "{:?}", same.drift);
        let set = |n: &mut NodeLive, f: &dyn Fn(&mut hapulse_protocol::VrrpInstanceReport)| {
            n.instances
                .iter_mut()
                .filter(|i| i.name == "VI_1")
                .for_each(f)
        };
        set(&mut a, &|i| {
            i.advert_interval_ms = Some(1000);
            i.auth_type = Some("pass".into());
        });
        set(&mut b, &|i| {
            i.advert_interval_ms = Some(3000);
            i.vrid = Some(52);
            i.vips = vec!["10.0.0.101".into()];
        });
        let v = verdict(&[a.clone(), b.clone()]);
        assert_eq!(
            v.drift,
            [
                "VRID differs: a 51, b 52",
                "advert interval differs: a 1000 ms, b 3000 ms",
                "VIPs differs: a [10.0.0.100], b [10.0.0.101]"
            ],
            "authentication not reported by b yet: not compared"
        );
        // A node that is down does not count.
        b.status = NodeStatus::Down;
        assert!(verdict(&[a, b]).drift.is_empty());
    }

    #[test]
    fn two_masters_or_two_holders_is_split_brain() {
        let v = verdict(&[
            node("a", VrrpState::Master, VIP, NodeStatus::Up),
            node("b", VrrpState::Master, VIP, NodeStatus::Up),
        ]);
        assert_eq!(v.health, Health::SplitBrain);
        assert_eq!(v.master, None);
        assert_eq!(v.masters.len(), 2);
        // keepalived SIGKILLed on the old master leaves the VIP configured there.
        let v = verdict(&[
            node("a", VrrpState::Stop, VIP, NodeStatus::Up),
            node("b", VrrpState::Master, VIP, NodeStatus::Up),
        ]);
        assert_eq!(v.health, Health::SplitBrain, "{:?}", v.reasons);
        assert_eq!(v.master.as_deref(), Some("b"));
    }

    #[test]
    fn no_master_and_degraded() {
        let v = verdict(&[
            node("a", VrrpState::Backup, &[], NodeStatus::Up),
            node("b", VrrpState::Fault, &[], NodeStatus::Up),
        ]);
        assert_eq!(v.health, Health::NoMaster);
        let v = verdict(&[
            node("a", VrrpState::Master, VIP, NodeStatus::Up),
            node("b", VrrpState::Backup, &[], NodeStatus::Suspect),
        ]);
        assert_eq!(v.health, Health::Degraded);
        assert!(
            v.reasons.iter().any(|r| r.contains("suspect")),
            "{:?}",
            v.reasons
        );
        let v = verdict(&[node("a", VrrpState::Master, VIP, NodeStatus::Up)]);
        assert_eq!(v.health, Health::Degraded, "a lone master has no standby");
        let v = verdict(&[
            node("a", VrrpState::Master, &[], NodeStatus::Up),
            node("b", VrrpState::Backup, &[], NodeStatus::Up),
        ]);
        assert_eq!(v.health, Health::Degraded, "master without its VIP");
        let v = verdict(&[
            node("a", VrrpState::Master, &[], NodeStatus::Up),
            node("b", VrrpState::Backup, VIP, NodeStatus::Up),
        ]);
        assert_eq!(
            v.health,
            Health::Degraded,
            "the VIP is on the BACKUP: {:?}",
            v.reasons
        );
        assert!(
            v.reasons.iter().any(|r| r.contains("not MASTER")),
            "{:?}",
            v.reasons
        );
    }

    #[test]
    fn a_down_nodes_stale_master_does_not_count() {
        let v = verdict(&[
            node("a", VrrpState::Master, VIP, NodeStatus::Down),
            node("b", VrrpState::Master, VIP, NodeStatus::Up),
        ]);
        assert_eq!(v.health, Health::Degraded, "{:?}", v.reasons);
        assert_eq!(v.master.as_deref(), Some("b"));
        assert_eq!(v.vips[0].holders, vec!["b".to_string()]);
    }

    #[test]
    fn cluster_verdict_is_the_worst_instance() {
        let mut live = Live::default();
        for n in [
            node("a", VrrpState::Master, VIP, NodeStatus::Up),
            node("b", VrrpState::Master, &[], NodeStatus::Up),
        ] {
            live.nodes.insert(n.node_id.clone(), n);
        }
        let c = cluster_view(&live, "c", Utc::now()).unwrap();
        assert_eq!(c.health, Health::SplitBrain);
        assert_eq!((c.nodes_up, c.nodes_total), (2, 2));
        assert!(cluster_view(&live, "other", Utc::now()).is_none());
    }
}
