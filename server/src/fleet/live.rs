//! Live state: the latest report of every node, in memory. It is a cache of the `nodes` and
//! `vrrp_instances` tables, rebuilt from them at start-up; every change to it that matters is
//! written to PostgreSQL first.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use hapulse_protocol::{
    ArbitrationReport, HeartbeatReport, ReplicationLinkReport, ServiceCheckReport,
    VrrpInstanceReport, VrrpState,
};
use serde::Serialize;
use tokio::time::Instant;
use uuid::Uuid;

/// The failure detector's verdict on a node, ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Heartbeats arrive on time.
    Up,
    /// `suspect_after_missed` heartbeats missed.
    Suspect,
    /// `down_after_missed` heartbeats missed.
    Down,
}

impl NodeStatus {
    /// `up`, `suspect` or `down`, as stored in `nodes.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Up => "up",
            NodeStatus::Suspect => "suspect",
            NodeStatus::Down => "down",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "up" => NodeStatus::Up,
            "suspect" => NodeStatus::Suspect,
            "down" => NodeStatus::Down,
            _ => return None,
        })
    }
}

/// What the server knows about one node.
#[derive(Debug, Clone)]
pub struct NodeLive {
    /// Stable node id.
    pub node_id: String,
    /// Cluster it belongs to.
    pub cluster: String,
    /// Host name the agent reported.
    pub hostname: String,
    /// Agent software version.
    pub agent_version: String,
    /// Agent protocol version.
    pub protocol_version: u32,
    /// Agent run id of the last accepted report.
    pub boot_id: Uuid,
    /// Highest accepted `seq` within `boot_id`.
    pub last_seq: u64,
    /// The agent's heartbeat interval (ms).
    pub heartbeat_interval_ms: u64,
    /// When the last report arrived (server clock).
    pub last_heartbeat_at: DateTime<Utc>,
    /// When the node was last heard from, on the monotonic clock, for the detector: set as a
    /// report arrives, before it is stored, and again when the server answers it. An agent
    /// has one report in flight and sends the next after the answer, so the server's own
    /// slowness (a slow commit, a queue) never counts as the node's silence.
    pub last_seen: Instant,
    /// When the agent took its last snapshot (agent clock).
    pub last_observed_at: DateTime<Utc>,
    /// Detector verdict.
    pub status: NodeStatus,
    /// Since when `status` holds.
    pub status_since: DateTime<Utc>,
    /// Host uptime (s).
    pub uptime_seconds: u64,
    /// One-minute load average.
    pub load1: f64,
    /// keepalived's main process is alive.
    pub keepalived_running: bool,
    /// VRRP instances, sorted by name.
    pub instances: Vec<VrrpInstanceReport>,
    /// keepalived's sync groups on the node, from its last report; in memory only (every
    /// heartbeat carries them).
    pub sync_groups: Vec<hapulse_protocol::SyncGroupReport>,
    /// keepalived's LVS virtual servers on the node with their real servers, from its last
    /// report; in memory only, their changes are stored as `real_server_state` events.
    pub virtual_servers: Vec<hapulse_protocol::VirtualServerReport>,
    /// Reports waiting in the agent's spool when it sent the last one.
    pub spool_depth: u64,
    /// Reports the agent's spool dropped.
    pub spool_dropped: u64,
    /// Replication links, sorted by key (`kind:name`).
    pub replication: Vec<ReplicationLinkReport>,
    /// What the agent reaches (reference address, peers), from its last report; in memory only
    /// (the arbiter's grace period after a server start covers its absence).
    pub arbitration: Option<ArbitrationReport>,
    /// The host's service checks, sorted by name, as its last report gave them. Stored (in
    /// `nodes.checks`) when a check appears, goes, or changes its state, target or tie; the
    /// latest attempt's detail and duration alone are kept in memory.
    pub checks: Vec<ServiceCheckReport>,
    /// Who answered ARP for the cluster's VIPs as this node last asked, and its interfaces' MAC
    /// addresses (in memory only: every report carries the latest round again). None from
    /// agents without ARP checks.
    pub arp: Option<hapulse_protocol::ArpReport>,
    /// The Pacemaker cluster as this node's `crm_mon` showed it in its last report (None from
    /// agents without `[pacemaker]`). Stored (in `nodes.pacemaker`) when its DC, quorum, a
    /// node's flags, a resource's role or place or the failed actions change.
    pub pacemaker: Option<hapulse_protocol::PacemakerReport>,
    /// The last report of this node the server refused (400: malformed, out of bounds) since
    /// it last accepted one: a node whose reports are refused looks silent, and this says why.
    /// In memory only; cleared by the next accepted report.
    pub refused_report: Option<RefusedReport>,
}

/// A node's report the server refused.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct RefusedReport {
    /// When (server clock).
    pub at: DateTime<Utc>,
    /// Why, as the agent was answered (the field and the rule; at most 300 characters).
    pub reason: String,
}

impl NodeLive {
    /// A node as its first accepted report describes it.
    pub fn from_report(report: &HeartbeatReport, received_at: DateTime<Utc>, now: Instant) -> Self {
        let mut node = NodeLive {
            node_id: report.node_id.clone(),
            cluster: report.cluster.clone(),
            hostname: String::new(),
            agent_version: String::new(),
            protocol_version: 0,
            boot_id: report.boot_id,
            last_seq: 0,
            heartbeat_interval_ms: 0,
            last_heartbeat_at: received_at,
            last_seen: now,
            last_observed_at: report.observed_at,
            status: NodeStatus::Up,
            status_since: received_at,
            uptime_seconds: 0,
            load1: 0.0,
            keepalived_running: false,
            instances: Vec::new(),
            sync_groups: Vec::new(),
            virtual_servers: Vec::new(),
            spool_depth: 0,
            spool_dropped: 0,
            replication: Vec::new(),
            arbitration: None,
            checks: Vec::new(),
            arp: None,
            pacemaker: None,
            refused_report: None,
        };
        node.apply(report, received_at, now);
        node
    }

    /// Takes everything a report says (not the detector status).
    pub fn apply(&mut self, report: &HeartbeatReport, received_at: DateTime<Utc>, now: Instant) {
        self.cluster.clone_from(&report.cluster);
        self.hostname.clone_from(&report.hostname);
        self.agent_version.clone_from(&report.agent_version);
        self.protocol_version = report.protocol_version;
        self.boot_id = report.boot_id;
        self.last_seq = report.seq;
        self.heartbeat_interval_ms = report.heartbeat_interval_ms;
        self.last_heartbeat_at = received_at;
        self.last_seen = self.last_seen.max(now);
        self.last_observed_at = report.observed_at;
        self.uptime_seconds = report.uptime_seconds;
        self.load1 = report.load1;
        self.keepalived_running = report.keepalived.running;
        let mut instances = report.keepalived.instances.clone();
        instances.sort_by(|a, b| a.name.cmp(&b.name));
        self.instances = instances;
        self.sync_groups.clone_from(&report.keepalived.sync_groups);
        self.virtual_servers
            .clone_from(&report.keepalived.virtual_servers);
        self.spool_depth = report.spool_depth;
        self.spool_dropped = report.spool_dropped;
        self.refused_report = None;
        let mut links = report.replication.clone();
        links.sort_by_key(ReplicationLinkReport::key);
        self.replication = links;
        self.arbitration.clone_from(&report.arbitration);
        let mut checks = report.checks.clone();
        checks.sort_by(|a, b| a.name.cmp(&b.name));
        self.checks = checks;
        self.arp.clone_from(&report.arp);
        self.pacemaker.clone_from(&report.pacemaker);
    }

    /// True when `report` was already accepted (same run, `seq` not above the watermark).
    pub fn is_replay(&self, report: &HeartbeatReport) -> bool {
        self.boot_id == report.boot_id && report.seq <= self.last_seq
    }

    /// The replication link with key `key` (`postgresql:pg`).
    pub fn link(&self, key: &str) -> Option<&ReplicationLinkReport> {
        self.replication.iter().find(|l| l.key() == key)
    }

    /// The instance named `name`.
    pub fn instance(&self, name: &str) -> Option<&VrrpInstanceReport> {
        self.instances.iter().find(|i| i.name == name)
    }

    /// Its service checks that are not passing and are tied to VRRP instance `instance` or to
    /// one of the replication links `links` (`postgresql:pg`), by name.
    pub fn failing_tied_checks<'a>(
        &'a self,
        instance: &'a str,
        links: &'a [&'a str],
    ) -> impl Iterator<Item = &'a ServiceCheckReport> + 'a {
        self.checks
            .iter()
            .filter(|c| !c.passing)
            .filter(move |c| check_tied(c, instance, links))
    }
}

/// `check` is tied to VRRP instance `instance` or to one of the links `links`.
pub fn check_tied(check: &ServiceCheckReport, instance: &str, links: &[&str]) -> bool {
    check.vrrp_instance.as_deref() == Some(instance)
        || check.link.as_deref().is_some_and(|l| links.contains(&l))
}

/// A failing check for people, as failover reasons and refusals show it: `check pg-port
/// failing (connection refused)`.
pub fn failing_check_text(check: &ServiceCheckReport) -> String {
    if check.detail.is_empty() {
        format!("check {} failing", check.name)
    } else {
        format!("check {} failing ({})", check.name, check.detail)
    }
}

/// Every node the server knows, by node id.
#[derive(Debug, Default)]
pub struct Live {
    /// Nodes by id.
    pub nodes: BTreeMap<String, NodeLive>,
    /// Clusters with a node whose stored state, detector status or reachability changed since
    /// the arbiter last took this set (it looks at only these between its sweeps).
    pub changed: std::collections::BTreeSet<String>,
}

impl Live {
    /// Nodes of `cluster`, by id.
    pub fn cluster_nodes<'a>(
        &'a self,
        cluster: &'a str,
    ) -> impl Iterator<Item = &'a NodeLive> + 'a {
        self.nodes.values().filter(move |n| n.cluster == cluster)
    }

    /// Every cluster (sorted) with its nodes (by node id), in one pass over the nodes.
    pub fn by_cluster(&self) -> BTreeMap<&str, Vec<&NodeLive>> {
        let mut out: BTreeMap<&str, Vec<&NodeLive>> = BTreeMap::new();
        for n in self.nodes.values() {
            out.entry(n.cluster.as_str()).or_default().push(n);
        }
        out
    }
}

/// A transition to record in the `events` table.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct NewEvent {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Cluster.
    pub cluster: String,
    /// Node, when the event concerns one.
    pub node_id: Option<String>,
    /// VRRP instance, when the event concerns one.
    pub instance: Option<String>,
    /// Replication link (`postgresql:pg`), when the event concerns one.
    pub link: Option<String>,
    /// One of [`EventKind`]'s names.
    pub kind: EventKind,
    /// State before (e.g. `BACKUP`, `up`).
    pub from_state: Option<String>,
    /// State after.
    pub to_state: Option<String>,
    /// One sentence for people.
    pub message: String,
    /// Structured details (JSON object).
    pub detail: serde_json::Value,
}

/// Kinds of events. Stored by name; scripts filter on these names, keep them stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A node reported for the first time, or again after being suspect or down.
    NodeUp,
    /// A node missed `suspect_after_missed` heartbeats.
    NodeSuspect,
    /// A node missed `down_after_missed` heartbeats.
    NodeDown,
    /// A VRRP instance changed state on a node (MASTER/BACKUP/FAULT/STOP/INIT).
    RoleChange,
    /// An instance's effective priority changed on a node.
    PriorityChange,
    /// A node gained a VIP (the kernel has it on an interface).
    VipAcquired,
    /// A node lost a VIP.
    VipReleased,
    /// keepalived's main process started or stopped on a node.
    KeepalivedStarted,
    /// See [`EventKind::KeepalivedStarted`].
    KeepalivedStopped,
    /// An agent started a new run (new `boot_id`).
    AgentRestarted,
    /// A VRRP instance a node reported before is gone from its reports (keepalived reloaded
    /// without it).
    InstanceRemoved,
    /// A replication link appeared, or changed state (streaming, catching up, paused,
    /// disconnected, stopped, down).
    ReplicationState,
    /// A replication link changed role on a node (primary ↔ secondary): a promotion or demotion.
    ReplicationRole,
    /// A replication link a node reported before is gone from its reports.
    ReplicationRemoved,
    /// A planned switchover started.
    SwitchoverStarted,
    /// A planned switchover finished as planned.
    SwitchoverSucceeded,
    /// A planned switchover stopped on a failure.
    SwitchoverFailed,
    /// One report changed more than [`MAX_EVENTS_PER_REPORT`] things: the rest were counted
    /// (by kind, in `detail`) instead of recorded one by one.
    EventsDropped,
    /// A service check of a node stopped passing (after its fall count), or was first reported
    /// failing.
    CheckFailing,
    /// A service check of a node passes again (after its rise count).
    CheckPassing,
    /// More than one host answers ARP for a VIP (an IP-level split brain), as the nodes' ARP
    /// checks heard it.
    VipAnsweredBySeveral,
    /// A host other than the instance's MASTER answers ARP for a VIP.
    VipAnsweredByNonHolder,
    /// A VIP flagged before is answered by its holder alone again (or by nobody).
    VipArpConsistent,
    /// A Pacemaker resource runs on other nodes than before (a move, by `crm_resource --move`,
    /// a constraint, a failure or a node leaving), as the partition's DC reports it.
    PacemakerResourceMoved,
    /// A Pacemaker resource's role changed other than by a move (`Started` → `Stopped`,
    /// `Unpromoted` → `Promoted`, …), as the partition's DC reports it.
    PacemakerResourceRole,
    /// A failed Pacemaker resource action appeared (`crm_mon`'s failures), as the partition's
    /// DC reports it.
    PacemakerFailedAction,
    /// A node's Pacemaker partition gained or lost quorum, or its DC changed, as that node
    /// reports it.
    PacemakerPartition,
    /// An LVS real server (or a virtual server's quorum) went up or down on a node
    /// (keepalived's `RS`/`VS` notify lines).
    RealServerState,
}

impl EventKind {
    /// The stored name (`role_change`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::NodeUp => "node_up",
            EventKind::NodeSuspect => "node_suspect",
            EventKind::NodeDown => "node_down",
            EventKind::RoleChange => "role_change",
            EventKind::PriorityChange => "priority_change",
            EventKind::VipAcquired => "vip_acquired",
            EventKind::VipReleased => "vip_released",
            EventKind::KeepalivedStarted => "keepalived_started",
            EventKind::KeepalivedStopped => "keepalived_stopped",
            EventKind::AgentRestarted => "agent_restarted",
            EventKind::InstanceRemoved => "instance_removed",
            EventKind::ReplicationState => "replication_state",
            EventKind::ReplicationRole => "replication_role",
            EventKind::ReplicationRemoved => "replication_removed",
            EventKind::SwitchoverStarted => "switchover_started",
            EventKind::SwitchoverSucceeded => "switchover_succeeded",
            EventKind::SwitchoverFailed => "switchover_failed",
            EventKind::EventsDropped => "events_dropped",
            EventKind::CheckFailing => "check_failing",
            EventKind::CheckPassing => "check_passing",
            EventKind::VipAnsweredBySeveral => "vip_answered_by_several",
            EventKind::VipAnsweredByNonHolder => "vip_answered_by_non_holder",
            EventKind::VipArpConsistent => "vip_arp_consistent",
            EventKind::PacemakerResourceMoved => "pacemaker_resource_moved",
            EventKind::PacemakerResourceRole => "pacemaker_resource_role",
            EventKind::PacemakerFailedAction => "pacemaker_failed_action",
            EventKind::PacemakerPartition => "pacemaker_partition",
            EventKind::RealServerState => "real_server_state",
        }
    }

    /// Every kind, for metrics and filters.
    pub const ALL: [EventKind; 28] = [
        EventKind::NodeUp,
        EventKind::NodeSuspect,
        EventKind::NodeDown,
        EventKind::RoleChange,
        EventKind::PriorityChange,
        EventKind::VipAcquired,
        EventKind::VipReleased,
        EventKind::KeepalivedStarted,
        EventKind::KeepalivedStopped,
        EventKind::AgentRestarted,
        EventKind::InstanceRemoved,
        EventKind::ReplicationState,
        EventKind::ReplicationRole,
        EventKind::ReplicationRemoved,
        EventKind::SwitchoverStarted,
        EventKind::SwitchoverSucceeded,
        EventKind::SwitchoverFailed,
        EventKind::EventsDropped,
        EventKind::CheckFailing,
        EventKind::CheckPassing,
        EventKind::VipAnsweredBySeveral,
        EventKind::VipAnsweredByNonHolder,
        EventKind::VipArpConsistent,
        EventKind::PacemakerResourceMoved,
        EventKind::PacemakerResourceRole,
        EventKind::PacemakerFailedAction,
        EventKind::PacemakerPartition,
        EventKind::RealServerState,
    ];

    /// Which events a report over [`MAX_EVENTS_PER_REPORT`] keeps first (lower first): what
    /// the node is and who is master before priorities and VIP details.
    fn keep_rank(self) -> u8 {
        match self {
            EventKind::NodeUp
            | EventKind::NodeSuspect
            | EventKind::NodeDown
            | EventKind::AgentRestarted
            | EventKind::KeepalivedStarted
            | EventKind::KeepalivedStopped
            | EventKind::SwitchoverStarted
            | EventKind::SwitchoverSucceeded
            | EventKind::SwitchoverFailed
            | EventKind::EventsDropped => 0,
            EventKind::RoleChange
            | EventKind::ReplicationRole
            | EventKind::PacemakerResourceMoved
            | EventKind::PacemakerPartition => 1,
            EventKind::ReplicationState
            | EventKind::InstanceRemoved
            | EventKind::ReplicationRemoved
            | EventKind::CheckFailing
            | EventKind::CheckPassing
            | EventKind::VipAnsweredBySeveral
            | EventKind::VipAnsweredByNonHolder
            | EventKind::VipArpConsistent
            | EventKind::PacemakerResourceRole
            | EventKind::PacemakerFailedAction
            | EventKind::RealServerState => 2,
            EventKind::PriorityChange => 3,
            EventKind::VipAcquired | EventKind::VipReleased => 4,
        }
    }
}

/// Most events one report records. A report may carry 256 instances of 64 VIPs each, so an
/// agent (or whoever holds its credential) could otherwise write thousands of rows per report;
/// beyond this, the most telling events are kept and the rest counted in one `events_dropped`.
pub const MAX_EVENTS_PER_REPORT: usize = 300;

/// Keeps at most [`MAX_EVENTS_PER_REPORT`] of `out` (node and role events first, in their
/// original order) and counts the rest, by kind, in one `events_dropped` event.
fn cap_events(report: &HeartbeatReport, out: &mut Vec<NewEvent>) {
    if out.len() <= MAX_EVENTS_PER_REPORT {
        return;
    }
    let mut order: Vec<usize> = (0..out.len()).collect();
    order.sort_by_key(|&i| out[i].kind.keep_rank());
    let mut keep = vec![false; out.len()];
    for &i in &order[..MAX_EVENTS_PER_REPORT - 1] {
        keep[i] = true;
    }
    let mut by_kind = std::collections::BTreeMap::<&'static str, usize>::new();
    let mut kept = Vec::with_capacity(MAX_EVENTS_PER_REPORT);
    for (e, keep) in out.drain(..).zip(keep) {
        if keep {
            kept.push(e);
        } else {
            *by_kind.entry(e.kind.as_str()).or_default() += 1;
        }
    }
    let dropped: usize = by_kind.values().sum();
    let summary = by_kind
        .iter()
        .map(|(kind, n)| format!("{n} {kind}"))
        .collect::<Vec<_>>()
        .join(", ");
    kept.push(node_event(
        report,
        EventKind::EventsDropped,
        None,
        None,
        None,
        format!(
            "{} changed {dropped} more things in one report than the {MAX_EVENTS_PER_REPORT} \
             events recorded per report ({summary}); its page shows its current state",
            report.node_id
        ),
        serde_json::json!({ "dropped": dropped, "by_kind": by_kind }),
    ));
    *out = kept;
}

/// The events that accepting `report` causes, given what the server knew of the node before
/// (`None`: never seen) and of its cluster (`live`, for who held a VIP before). Event times are
/// the agent's `observed_at`.
pub fn transitions(
    previous: Option<&NodeLive>,
    report: &HeartbeatReport,
    live: &Live,
) -> Vec<NewEvent> {
    let mut out = Vec::new();
    node_events(previous, report, &mut out);
    keepalived_event(previous, report, &mut out);
    for instance in &report.keepalived.instances {
        let before = previous.and_then(|p| p.instance(&instance.name));
        role_and_priority_events(report, before, instance, &mut out);
        vip_events(report, live, before, instance, &mut out);
    }
    removed_instance_events(previous, report, &mut out);
    replication_events(previous, report, &mut out);
    check_events(previous, report, &mut out);
    pacemaker_events(
        previous.and_then(|p| p.pacemaker.as_ref()),
        report,
        &mut out,
    );
    real_server_events(previous, report, &mut out);
    cap_events(report, &mut out);
    out
}

/// An event about the reporting node, at its `observed_at`, not about a replication link.
fn node_event(
    report: &HeartbeatReport,
    kind: EventKind,
    instance: Option<&str>,
    from: Option<String>,
    to: Option<String>,
    message: String,
    detail: serde_json::Value,
) -> NewEvent {
    NewEvent {
        at: report.observed_at,
        cluster: report.cluster.clone(),
        node_id: Some(report.node_id.clone()),
        instance: instance.map(str::to_string),
        link: None,
        kind,
        from_state: from,
        to_state: to,
        message,
        detail,
    }
}

/// The node's first report, its return from suspect or down, and a restart of its agent.
fn node_events(previous: Option<&NodeLive>, report: &HeartbeatReport, out: &mut Vec<NewEvent>) {
    let node = &report.node_id;
    match previous {
        None => out.push(node_event(
            report,
            EventKind::NodeUp,
            None,
            None,
            Some("up".into()),
            format!("node {node} ({}) reported for the first time", report.hostname),
            serde_json::json!({ "hostname": report.hostname, "agent_version": report.agent_version }),
        )),
        Some(p) => {
            if p.status != NodeStatus::Up {
                out.push(node_event(
                    report,
                    EventKind::NodeUp,
                    None,
                    Some(p.status.as_str().into()),
                    Some("up".into()),
                    format!("node {node} is reporting again"),
                    serde_json::json!({}),
                ));
            }
            if p.boot_id != report.boot_id {
                out.push(node_event(
                    report,
                    EventKind::AgentRestarted,
                    None,
                    None,
                    None,
                    format!("agent on {node} restarted"),
                    serde_json::json!({ "boot_id": report.boot_id, "previous_boot_id": p.boot_id }),
                ));
            }
        }
    }
}

/// keepalived started or stopped since the last report, or is not running in the first one.
fn keepalived_event(
    previous: Option<&NodeLive>,
    report: &HeartbeatReport,
    out: &mut Vec<NewEvent>,
) {
    let node = &report.node_id;
    let was_running = previous.map(|p| p.keepalived_running);
    if was_running.is_some_and(|r| r != report.keepalived.running)
        || (was_running.is_none() && !report.keepalived.running)
    {
        let (kind, verb) = if report.keepalived.running {
            (EventKind::KeepalivedStarted, "started")
        } else {
            (EventKind::KeepalivedStopped, "is not running")
        };
        out.push(node_event(
            report,
            kind,
            None,
            None,
            None,
            format!("keepalived on {node} {verb}"),
            serde_json::json!({}),
        ));
    }
}

/// A reported instance's change of VRRP state (or its first state), and of its effective
/// priority unless it is stopped; `before` is the instance in the node's previous report.
/// For a takeover (the instance now MASTER, its burst known from keepalived's dump): the
/// gratuitous ARPs keepalived announces the VIPs with, for the event's message and `detail`
/// (`per_vip`, `again_after_s`, `vips`, `total`: every VIP, both bursts). The configured burst,
/// not a count: keepalived's dump counts none.
fn takeover_garps(instance: &VrrpInstanceReport) -> Option<(String, serde_json::Value)> {
    if instance.state != VrrpState::Master {
        return None;
    }
    let per_vip = instance.garp_master_repeat?;
    let delay = instance.garp_master_delay_s.unwrap_or(0);
    let vips = u32::try_from(instance.vips.len()).unwrap_or(u32::MAX);
    let bursts = if delay > 0 { 2 } else { 1 };
    let total = per_vip.saturating_mul(vips).saturating_mul(bursts);
    let again = if delay > 0 {
        format!(" and {per_vip} more after {delay} s")
    } else {
        String::new()
    };
    Some((
        format!(" (keepalived announces it with {per_vip} gratuitous ARPs per VIP at once{again}: {total} for {vips} VIP(s))"),
        serde_json::json!({ "per_vip": per_vip, "again_after_s": delay, "vips": vips, "total": total }),
    ))
}

fn role_and_priority_events(
    report: &HeartbeatReport,
    before: Option<&VrrpInstanceReport>,
    instance: &VrrpInstanceReport,
    out: &mut Vec<NewEvent>,
) {
    let node = &report.node_id;
    let name = Some(instance.name.as_str());
    let old_state = before.map(|b| b.state);
    if old_state != Some(instance.state) {
        let mut message = match old_state {
            Some(old) => format!("{} on {node}: {old} → {}", instance.name, instance.state),
            None => format!("{} on {node}: {}", instance.name, instance.state),
        };
        let mut detail = serde_json::json!({ "effective_priority": instance.effective_priority, "keepalived_last_transition": instance.last_transition });
        if let Some((text, garp)) = takeover_garps(instance) {
            message.push_str(&text);
            detail["gratuitous_arps"] = garp;
        }
        out.push(node_event(
            report,
            EventKind::RoleChange,
            name,
            old_state.map(|s| s.as_str().into()),
            Some(instance.state.as_str().into()),
            message,
            detail,
        ));
    }
    if let Some(b) = before {
        if b.effective_priority != instance.effective_priority && instance.state != VrrpState::Stop
        {
            out.push(node_event(
                report,
                EventKind::PriorityChange,
                name,
                b.effective_priority.map(|p| p.to_string()),
                instance.effective_priority.map(|p| p.to_string()),
                format!(
                    "{} on {node}: effective priority {} → {}",
                    instance.name,
                    b.effective_priority.map_or("?".into(), |p| p.to_string()),
                    instance
                        .effective_priority
                        .map_or("?".into(), |p| p.to_string())
                ),
                serde_json::json!({ "base_priority": instance.base_priority }),
            ));
        }
    }
}

/// The VIPs a reported instance gained (naming the other nodes of the cluster, not down, that
/// hold it too) and released since `before`, its previous report.
fn vip_events(
    report: &HeartbeatReport,
    live: &Live,
    before: Option<&VrrpInstanceReport>,
    instance: &VrrpInstanceReport,
    out: &mut Vec<NewEvent>,
) {
    let node = &report.node_id;
    let name = Some(instance.name.as_str());
    let held_before: &[String] = before.map_or(&[], |b| &b.held_vips);
    for vip in instance
        .held_vips
        .iter()
        .filter(|v| !held_before.contains(v))
    {
        let previous_holders: Vec<&str> = live
            .cluster_nodes(&report.cluster)
            .filter(|n| &n.node_id != node && n.status != NodeStatus::Down)
            .filter(|n| n.instances.iter().any(|i| i.held_vips.contains(vip)))
            .map(|n| n.node_id.as_str())
            .collect();
        let message = if previous_holders.is_empty() {
            format!("VIP {vip} ({}) is now on {node}", instance.name)
        } else {
            format!(
                "VIP {vip} ({}) is now on {node}, also held by {}",
                instance.name,
                previous_holders.join(", ")
            )
        };
        out.push(node_event(
            report,
            EventKind::VipAcquired,
            name,
            None,
            Some(vip.clone()),
            message,
            serde_json::json!({ "vip": vip, "other_holders": previous_holders }),
        ));
    }
    for vip in held_before
        .iter()
        .filter(|v| !instance.held_vips.contains(v))
    {
        out.push(vip_released(report, &instance.name, vip));
    }
}

/// `vip` of instance `instance` left the reporting node.
fn vip_released(report: &HeartbeatReport, instance: &str, vip: &str) -> NewEvent {
    let node = &report.node_id;
    node_event(
        report,
        EventKind::VipReleased,
        Some(instance),
        Some(vip.to_string()),
        None,
        format!("VIP {vip} ({instance}) left {node}"),
        serde_json::json!({ "vip": vip }),
    )
}

/// The instances of the node's previous report that this one no longer has: the VIPs they
/// held are released, then the instance is removed.
fn removed_instance_events(
    previous: Option<&NodeLive>,
    report: &HeartbeatReport,
    out: &mut Vec<NewEvent>,
) {
    let node = &report.node_id;
    let gone = previous
        .into_iter()
        .flat_map(|p| p.instances.iter())
        .filter(|old| {
            !report
                .keepalived
                .instances
                .iter()
                .any(|i| i.name == old.name)
        });
    for old in gone {
        for vip in &old.held_vips {
            out.push(vip_released(report, &old.name, vip));
        }
        out.push(node_event(
            report,
            EventKind::InstanceRemoved,
            Some(&old.name),
            Some(old.state.as_str().into()),
            None,
            format!(
                "{} is no longer configured on {node} (was {})",
                old.name, old.state
            ),
            serde_json::json!({}),
        ));
    }
}

/// Replication links that appeared or changed state or role since the node's previous report,
/// then the links it no longer reports.
fn replication_events(
    previous: Option<&NodeLive>,
    report: &HeartbeatReport,
    out: &mut Vec<NewEvent>,
) {
    let node = &report.node_id;
    let old_links: &[ReplicationLinkReport] = previous.map_or(&[], |p| &p.replication);
    for link in &report.replication {
        let key = link.key();
        let before = old_links.iter().find(|l| l.key() == key);
        link_events(report, before, link, out);
    }
    for old in old_links
        .iter()
        .filter(|o| !report.replication.iter().any(|l| l.key() == o.key()))
    {
        let mut e = node_event(
            report,
            EventKind::ReplicationRemoved,
            None,
            Some(old.state.as_str().into()),
            None,
            format!("{} is no longer reported by {node}", old.key()),
            serde_json::json!({}),
        );
        e.link = Some(old.key());
        out.push(e);
    }
}

/// A reported link's change of state (or its first state) and of role since `before`, its
/// previous report.
fn link_events(
    report: &HeartbeatReport,
    before: Option<&ReplicationLinkReport>,
    link: &ReplicationLinkReport,
    out: &mut Vec<NewEvent>,
) {
    let node = &report.node_id;
    let key = link.key();
    let mut push = |kind, from: Option<&str>, to: &str, message: String| {
        let mut e = node_event(
            report,
            kind,
            None,
            from.map(str::to_string),
            Some(to.to_string()),
            message,
            serde_json::json!({ "peer": link.peer, "lag_bytes": link.lag_bytes, "lag_seconds": link.lag_seconds, "error": link.error }),
        );
        e.link = Some(key.clone());
        out.push(e);
    };
    if before.map(|b| b.state) != Some(link.state) {
        let why = link
            .error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        let message = match before {
            Some(b) => format!(
                "{key} on {node}: {} → {}{why}",
                b.state.as_str(),
                link.state.as_str()
            ),
            None => format!(
                "{key} on {node}: {} {}{why}",
                link.role.as_str(),
                link.state.as_str()
            ),
        };
        push(
            EventKind::ReplicationState,
            before.map(|b| b.state.as_str()),
            link.state.as_str(),
            message,
        );
    }
    if let Some(b) = before.filter(|b| b.role != link.role) {
        let message = format!(
            "{key} on {node}: {} → {}",
            b.role.as_str(),
            link.role.as_str()
        );
        push(
            EventKind::ReplicationRole,
            Some(b.role.as_str()),
            link.role.as_str(),
            message,
        );
    }
}

/// Service checks whose `passing` changed since the node's previous report
/// (`check_passing`/`check_failing`), and checks first reported failing. A check first reported
/// passing, and a check that is no longer reported, make no event.
fn check_events(previous: Option<&NodeLive>, report: &HeartbeatReport, out: &mut Vec<NewEvent>) {
    let node = &report.node_id;
    let old: &[ServiceCheckReport] = previous.map_or(&[], |p| &p.checks);
    for check in &report.checks {
        let before = old.iter().find(|o| o.name == check.name).map(|o| o.passing);
        if before == Some(check.passing) || (before.is_none() && check.passing) {
            continue;
        }
        let (kind, message) = if check.passing {
            (
                EventKind::CheckPassing,
                format!("check {} on {node} passes again", check.name),
            )
        } else {
            (
                EventKind::CheckFailing,
                format!("{} on {node}", failing_check_text(check)),
            )
        };
        let state = |passing: bool| if passing { "passing" } else { "failing" };
        let mut e = node_event(
            report,
            kind,
            check.vrrp_instance.as_deref(),
            before.map(|b| state(b).to_string()),
            Some(state(check.passing).to_string()),
            message,
            serde_json::json!({
                "check": check.name,
                "kind": check.kind.as_str(),
                "target": check.target,
                "detail": check.detail,
                "consecutive": check.consecutive,
                "duration_ms": check.duration_ms,
                "changed_at": check.changed_at,
            }),
        );
        e.link.clone_from(&check.link);
        out.push(e);
    }
}

/// Pacemaker changes since the node's previous report. The node's own partition (quorum
/// gained or lost, a new DC) from every member; the cluster's resources (moves, role changes)
/// and new failed actions only from the member that is its partition's DC (its `local_node` is
/// the `dc`), so a cluster of N members records each once, not N times.
fn pacemaker_events(
    before: Option<&hapulse_protocol::PacemakerReport>,
    report: &HeartbeatReport,
    out: &mut Vec<NewEvent>,
) {
    let (Some(before), Some(now)) = (before, report.pacemaker.as_ref()) else {
        return;
    };
    if !now.connected || !before.connected {
        return;
    }
    let node = &report.node_id;
    let partition = |r: &hapulse_protocol::PacemakerReport| {
        format!(
            "DC {}, {}",
            r.dc.as_deref().unwrap_or("none"),
            if r.with_quorum { "quorum" } else { "no quorum" }
        )
    };
    if (before.dc.as_ref(), before.with_quorum) != (now.dc.as_ref(), now.with_quorum) {
        out.push(node_event(
            report,
            EventKind::PacemakerPartition,
            None,
            Some(partition(before)),
            Some(partition(now)),
            format!("Pacemaker on {node}: {} → {}", partition(before), partition(now)),
            serde_json::json!({ "dc": now.dc, "with_quorum": now.with_quorum, "online": now.online_nodes() }),
        ));
    }
    if now.local_node.is_none() || now.local_node != now.dc {
        return;
    }
    pacemaker_resource_events(before, now, report, out);
    let known = |f: &hapulse_protocol::PacemakerFailure| {
        before
            .failures
            .iter()
            .any(|o| (&o.resource, &o.task, &o.node) == (&f.resource, &f.task, &f.node))
    };
    for f in now.failures.iter().filter(|f| !known(f)) {
        out.push(node_event(
            report,
            EventKind::PacemakerFailedAction,
            None,
            None,
            Some(f.exit_reason.clone()),
            format!(
                "Pacemaker: {} of {} failed on {} (exit {}: {})",
                f.task, f.resource, f.node, f.exit_code, f.exit_reason
            ),
            serde_json::to_value(f).unwrap_or_default(),
        ));
    }
}

/// Resources of `now` that run elsewhere than in `before` (`pacemaker_resource_moved`) or
/// changed role in place (`pacemaker_resource_role`); resources new in `now` make no event.
fn pacemaker_resource_events(
    before: &hapulse_protocol::PacemakerReport,
    now: &hapulse_protocol::PacemakerReport,
    report: &HeartbeatReport,
    out: &mut Vec<NewEvent>,
) {
    for r in &now.resources {
        let Some(old) = before.resources.iter().find(|o| o.id == r.id) else {
            continue;
        };
        let detail = serde_json::json!({ "resource": r.id, "agent": r.agent, "from_nodes": old.nodes, "to_nodes": r.nodes, "role": r.role, "target_role": r.target_role });
        if !old.nodes.is_empty() && !r.nodes.is_empty() && old.nodes != r.nodes {
            out.push(node_event(
                report,
                EventKind::PacemakerResourceMoved,
                None,
                Some(old.nodes.join(",")),
                Some(r.nodes.join(",")),
                format!(
                    "Pacemaker resource {} moved: {} → {}",
                    r.id,
                    old.nodes.join(", "),
                    r.nodes.join(", ")
                ),
                detail,
            ));
        } else if old.role != r.role {
            let place = |n: &[String]| {
                if n.is_empty() {
                    String::new()
                } else {
                    format!(" on {}", n.join(", "))
                }
            };
            out.push(node_event(
                report,
                EventKind::PacemakerResourceRole,
                None,
                Some(old.role.clone()),
                Some(r.role.clone()),
                format!(
                    "Pacemaker resource {}: {}{} → {}{}",
                    r.id,
                    old.role,
                    place(&old.nodes),
                    r.role,
                    place(&r.nodes)
                ),
                detail,
            ));
        }
    }
}

/// `real_server_state` events: each LVS virtual server whose quorum, and each real server whose
/// health, changed since the node's last report (or is first reported down): the history of a
/// cluster's real servers.
fn real_server_events(
    previous: Option<&NodeLive>,
    report: &HeartbeatReport,
    out: &mut Vec<NewEvent>,
) {
    let node = &report.node_id;
    let old: &[hapulse_protocol::VirtualServerReport] =
        previous.map_or(&[], |p| &p.virtual_servers);
    let word = |up: bool| if up { "up" } else { "down" };
    for vs in &report.keepalived.virtual_servers {
        let before = old.iter().find(|o| o.name == vs.name);
        let mut changes: Vec<(Option<&str>, Option<bool>, bool)> = Vec::new();
        let was_up = before.map(|b| b.up);
        if was_up != Some(vs.up) && !(was_up.is_none() && vs.up) {
            changes.push((None, was_up, vs.up));
        }
        for rs in &vs.real_servers {
            let was = before
                .and_then(|b| b.real_servers.iter().find(|o| o.address == rs.address))
                .map(|o| o.up);
            // Not listed before, but maybe counted unlisted (a large director): no news.
            let unlisted_before = before.is_some_and(|b| b.omitted_up + b.omitted_down > 0);
            if was.is_none() && unlisted_before {
                continue;
            }
            if was != Some(rs.up) && !(was.is_none() && rs.up) {
                changes.push((Some(&rs.address), was, rs.up));
            }
        }
        for (real, was, up) in changes {
            let message = match real {
                Some(rs) => format!(
                    "real server {rs} of {} on {node} is {} ({} of {} live)",
                    vs.name,
                    word(up),
                    vs.live_real_servers(),
                    vs.real_servers.len() + (vs.omitted_up + vs.omitted_down) as usize
                ),
                None => format!("virtual server {} on {node}: quorum {}", vs.name, word(up)),
            };
            out.push(node_event(
                report,
                EventKind::RealServerState,
                None,
                was.map(|w| word(w).to_string()),
                Some(word(up).to_string()),
                message,
                serde_json::json!({ "virtual_server": vs.name, "real_server": real }),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(seq: u64, instances: Vec<VrrpInstanceReport>) -> HeartbeatReport {
        let mut report = hapulse_protocol::testing::report("a", "c").seq(seq).build();
        report.keepalived.instances = instances;
        report
    }

    fn instance(name: &str, state: VrrpState, held: bool, priority: u8) -> VrrpInstanceReport {
        VrrpInstanceReport {
            name: name.into(),
            vrid: Some(1),
            interface: Some("eth0".into()),
            state,
            base_priority: Some(100),
            effective_priority: Some(priority),
            vips: vec!["10.0.0.1".into()],
            held_vips: if held {
                vec!["10.0.0.1".into()]
            } else {
                vec![]
            },
            last_transition: None,
            counters: Default::default(),
            advert_interval_ms: None,
            auth_type: None,
            garp_master_repeat: None,
            garp_master_delay_s: None,
            sync_group: None,
            tracked_scripts: Vec::new(),
            tracked_interfaces: Vec::new(),
        }
    }

    fn kinds(events: &[NewEvent]) -> Vec<(&'static str, Option<String>, Option<String>)> {
        events
            .iter()
            .map(|e| (e.kind.as_str(), e.from_state.clone(), e.to_state.clone()))
            .collect()
    }

    #[test]
    fn derives_role_priority_vip_and_removal_events() {
        let live = Live::default();
        let first = report(
            1,
            vec![
                instance("VI_1", VrrpState::Backup, false, 100),
                instance("VI_2", VrrpState::Master, true, 100),
            ],
        );
        let events = transitions(None, &first, &live);
        assert_eq!(events[0].kind, EventKind::NodeUp);
        let before = NodeLive::from_report(&first, Utc::now(), Instant::now());

        // Nothing changed: no events.
        assert!(transitions(
            Some(&before),
            &report(2, first.keepalived.instances.clone()),
            &live
        )
        .is_empty());

        let next = report(3, vec![instance("VI_1", VrrpState::Master, true, 110)]);
        let events = transitions(Some(&before), &next, &live);
        assert_eq!(
            kinds(&events),
            vec![
                ("role_change", Some("BACKUP".into()), Some("MASTER".into())),
                ("priority_change", Some("100".into()), Some("110".into())),
                ("vip_acquired", None, Some("10.0.0.1".into())),
                ("vip_released", Some("10.0.0.1".into()), None),
                ("instance_removed", Some("MASTER".into()), None),
            ]
        );
        assert_eq!(events[4].instance.as_deref(), Some("VI_2"));
    }

    #[test]
    fn a_takeover_event_names_keepalived_s_gratuitous_arps() {
        let live = Live::default();
        let first = report(1, vec![instance("VI_1", VrrpState::Backup, false, 100)]);
        let before = NodeLive::from_report(&first, Utc::now(), Instant::now());
        let mut master = instance("VI_1", VrrpState::Master, true, 100);
        master.vips.push("10.0.0.2".into());
        master.garp_master_repeat = Some(5);
        master.garp_master_delay_s = Some(1);
        let events = transitions(Some(&before), &report(2, vec![master.clone()]), &live);
        let takeover = events
            .iter()
            .find(|e| e.kind == EventKind::RoleChange)
            .unwrap();
        assert!(
            takeover
                .message
                .ends_with("(keepalived announces it with 5 gratuitous ARPs per VIP at once and 5 more after 1 s: 20 for 2 VIP(s))"),
            "{}",
            takeover.message
        );
        assert_eq!(
            takeover.detail["gratuitous_arps"],
            serde_json::json!({"per_vip": 5, "again_after_s": 1, "vips": 2, "total": 20})
        );
        // No second burst; and nothing said before the dump told, or when leaving MASTER.
        master.garp_master_delay_s = Some(0);
        let events = transitions(Some(&before), &report(3, vec![master.clone()]), &live);
        assert_eq!(events[0].detail["gratuitous_arps"]["total"], 10);
        master.garp_master_repeat = None;
        let events = transitions(Some(&before), &report(4, vec![master]), &live);
        assert!(events[0].detail.get("gratuitous_arps").is_none());
        let after = NodeLive::from_report(
            &report(5, vec![instance("VI_1", VrrpState::Master, true, 100)]),
            Utc::now(),
            Instant::now(),
        );
        let mut backup = instance("VI_1", VrrpState::Backup, false, 100);
        backup.garp_master_repeat = Some(5);
        let events = transitions(Some(&after), &report(6, vec![backup]), &live);
        assert!(events[0].detail.get("gratuitous_arps").is_none());
    }

    /// The largest report the server accepts (256 instances of 64 VIPs, every one changing)
    /// records at most [`MAX_EVENTS_PER_REPORT`] rows: every role change, then the count of the
    /// rest by kind.
    #[test]
    fn a_huge_report_records_its_role_changes_and_counts_the_rest() {
        let live = Live::default();
        let many = |state: VrrpState, held: bool| {
            (0..crate::fleet::validate::MAX_INSTANCES)
                .map(|n| {
                    let mut i = instance(&format!("VI_{n}"), state, held, 100);
                    i.vips = (0..crate::fleet::validate::MAX_VIPS)
                        .map(|v| format!("10.{}.{}.{v}", n / 256, n % 256))
                        .collect();
                    i.held_vips = if held { i.vips.clone() } else { vec![] };
                    i
                })
                .collect::<Vec<_>>()
        };
        let first = report(1, many(VrrpState::Backup, false));
        assert!(crate::fleet::validate::validate(&first).is_ok());
        let before = NodeLive::from_report(&first, Utc::now(), Instant::now());
        let next = report(2, many(VrrpState::Master, true));
        assert!(crate::fleet::validate::validate(&next).is_ok());
        let events = transitions(Some(&before), &next, &live);
        assert_eq!(events.len(), MAX_EVENTS_PER_REPORT);
        let roles = events
            .iter()
            .filter(|e| e.kind == EventKind::RoleChange)
            .count();
        assert_eq!(roles, crate::fleet::validate::MAX_INSTANCES);
        let last = &events[MAX_EVENTS_PER_REPORT - 1];
        assert_eq!(last.kind, EventKind::EventsDropped);
        let total = crate::fleet::validate::MAX_INSTANCES * (1 + crate::fleet::validate::MAX_VIPS);
        assert_eq!(
            last.detail["dropped"],
            serde_json::json!(total - (MAX_EVENTS_PER_REPORT - 1))
        );
        // Kept events stay in the order they happened: VI_0's role change, then its VIPs.
        assert_eq!(events[0].kind, EventKind::RoleChange);
        assert_eq!(events[1].kind, EventKind::VipAcquired);
        assert_eq!(events[1].instance.as_deref(), Some("VI_0"));

        // Below the cap nothing is dropped or added.
        let small = report(3, vec![instance("VI_0", VrrpState::Backup, false, 100)]);
        assert!(!transitions(Some(&before), &small, &live)
            .iter()
            .any(|e| e.kind == EventKind::EventsDropped));
    }
}
