//! Wire types shared by the hapulse node agent and server.
//!
//! The agent POSTs a [`HeartbeatReport`] as JSON to `/api/agent/v1/heartbeat` and the server
//! answers with a [`HeartbeatAck`]. Every report is a full snapshot of what the agent observes, so
//! the server can derive transitions (role change, VIP move) by comparing snapshots, and a lost
//! report never leaves the server with a partial picture.
//!
//! De-duplication: a report is identified by `(node_id, boot_id, seq)`. `seq` starts at 1 each time
//! the agent process starts (a new `boot_id`) and only grows. The server ignores a report whose
//! `seq` is not above the highest it has accepted for that node and boot id, so replaying the
//! agent's spool after an outage never doubles an event.

use std::fmt;

#[cfg(feature = "logging")]
pub mod logging;
pub mod preflight;
#[cfg(feature = "testing")]
pub mod testing;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Version of the agent ↔ server protocol. A server accepts reports of this version and of
/// [`OLDEST_PROTOCOL_VERSION`] onwards, so servers are upgraded first and
/// agents one host at a time after; others are refused (HTTP 400, code `protocol_version`).
///
/// Version 2 added [`HeartbeatReport::highest_epoch`]; version 3 [`HeartbeatReport::checks`]
/// and [`HeartbeatReport::arp`]; version 4 [`SyncGroupReport::tracking_weight`] and
/// [`VirtualServerReport::omitted_up`]/`omitted_down`.
pub const PROTOCOL_VERSION: u32 = 4;

/// The oldest protocol version a server of this version still accepts.
pub const OLDEST_PROTOCOL_VERSION: u32 = 1;

/// Path of the heartbeat endpoint, relative to the server's base URL.
pub const HEARTBEAT_PATH: &str = "/api/agent/v1/heartbeat";

/// One agent report: who is speaking, how the host is, and every VRRP instance it observes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatReport {
    /// [`PROTOCOL_VERSION`] of the agent that built this report.
    pub protocol_version: u32,
    /// Version of the agent software (its crate version, e.g. `0.1.0`).
    pub agent_version: String,
    /// Stable node id from the agent's configuration (not its address).
    pub node_id: String,
    /// Cluster the node belongs to, from the agent's configuration.
    pub cluster: String,
    /// Random id chosen each time the agent process starts; `seq` restarts with it.
    pub boot_id: Uuid,
    /// Sequence number of this report within `boot_id`, starting at 1.
    pub seq: u64,
    /// When the agent took this snapshot (agent clock).
    pub observed_at: DateTime<Utc>,
    /// True when this snapshot differs from the previous one in a way that matters (role, VIP,
    /// priority, keepalived up/down). Such reports are spooled on disk while the server is down.
    pub state_change: bool,
    /// The agent's heartbeat interval in milliseconds; the server's failure detector counts
    /// missed heartbeats against it.
    pub heartbeat_interval_ms: u64,
    /// Host name from the kernel (`uname -n`).
    pub hostname: String,
    /// Host uptime in seconds (`/proc/uptime`).
    pub uptime_seconds: u64,
    /// One-minute load average (`/proc/loadavg`).
    pub load1: f64,
    /// keepalived as this agent sees it.
    pub keepalived: KeepalivedReport,
    /// Replication links this host takes part in (PostgreSQL, MySQL/MariaDB, DRBD), from the
    /// probes enabled in the agent's configuration. Absent from agents without probes.
    #[serde(default)]
    pub replication: Vec<ReplicationLinkReport>,
    /// What this host reaches: the cluster's reference address and its peers (ICMP echo), for
    /// the automatic-failover decision. Absent from agents without `[arbitration]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arbitration: Option<ArbitrationReport>,
    /// Number of state-change reports waiting in the agent's on-disk spool when this one was sent.
    pub spool_depth: u64,
    /// Reports the agent's spool had to drop since it started because it was full.
    pub spool_dropped: u64,
    /// The highest command epoch this agent has seen (it refuses lower ones): a server whose
    /// database was restored from a backup raises its cluster's epoch above it before issuing
    /// commands. 0 from agents of protocol version 1.
    #[serde(default)]
    pub highest_epoch: u64,
    /// The host's service checks (`[[checks]]` in the agent), each with its state after its
    /// rise/fall counts. Absent from agents without checks (and before protocol version 3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<ServiceCheckReport>,
    /// Who answers ARP for the cluster's VIPs on the LAN, as this host last asked, and this
    /// host's interfaces' MAC addresses (so the server can name who answered). Absent from
    /// agents with `arp_check_interval = "0s"` (and before protocol version 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arp: Option<ArpReport>,
    /// The Pacemaker cluster this host is a member of, as its `crm_mon` shows it (`[pacemaker]`
    /// in the agent). Absent from agents without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pacemaker: Option<PacemakerReport>,
}

/// Most interfaces an [`ArpReport`] may list; a server refuses a report with more (400).
pub const MAX_ARP_INTERFACES: usize = 64;
/// Most VIP probes an [`ArpReport`] may carry (one per VIP of the host's instances).
pub const MAX_ARP_PROBES: usize = 256;
/// Most distinct MAC addresses one [`VipArpProbe`] may list; an agent keeps the first ones
/// heard and sets [`VipArpProbe::answers_dropped`].
pub const MAX_ARP_ANSWERS: usize = 16;
/// Longest [`VipArpProbe::error`] a server accepts, in bytes.
pub const MAX_ARP_ERROR_BYTES: usize = 256;

/// What the LAN answers for the cluster's VIPs, as one agent asked it (ARP requests, as
/// `arping` sends them), every `arp_check_interval`. A host does not hear its own kernel's
/// answer, so a probe also says whether the host held the VIP itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArpReport {
    /// The agent's `arp_check_interval`, milliseconds.
    pub interval_ms: u64,
    /// This host's interfaces that have a hardware address, by name, at most
    /// [`MAX_ARP_INTERFACES`]: the server maps an answering MAC address to its node with them.
    pub interfaces: Vec<InterfaceMac>,
    /// The latest probe of each VIP of the host's VRRP instances, at most [`MAX_ARP_PROBES`].
    pub probes: Vec<VipArpProbe>,
}

/// One interface of a host and its hardware address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InterfaceMac {
    /// Interface name (`eth0`), at most 15 bytes as the kernel allows (`IFNAMSIZ` - 1).
    pub name: String,
    /// Its MAC address, lower-case, colon-separated (`52:54:00:12:34:56`).
    pub mac: String,
}

/// One ARP probe of one VIP: who answered "who has VIP?" on the instance's interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VipArpProbe {
    /// The VRRP instance the VIP belongs to.
    pub instance: String,
    /// The VIP (`10.0.0.100`).
    pub vip: String,
    /// The interface the request went out on (the instance's `ifp_ifname`).
    pub interface: String,
    /// When the request was sent (agent clock).
    pub probed_at: DateTime<Utc>,
    /// This host had the VIP on an interface when it asked: its kernel answers the LAN for it,
    /// but a host does not hear its own answer, so it counts itself.
    pub held_here: bool,
    /// The distinct sender MAC addresses (ARP `sha`, lower-case, colon-separated) of the
    /// replies for the VIP heard within the wait, in the order heard, at most
    /// [`MAX_ARP_ANSWERS`]. Empty: nobody else answered.
    pub answered_by: Vec<String>,
    /// Replies from further MAC addresses beyond [`MAX_ARP_ANSWERS`] that were not listed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub answers_dropped: u32,
    /// Why the probe could not be made (no such interface, no permission to open a raw
    /// socket); `answered_by` is then empty and means nothing. At most
    /// [`MAX_ARP_ERROR_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// True when `mac` is a MAC address as reports write it: six lower-case hex pairs separated by
/// colons.
pub fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts.iter().all(|p| {
            p.len() == 2
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// How a service check asks its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServiceCheckKind {
    /// A TCP connection to `host:port` is accepted.
    Tcp,
    /// An HTTP(S) GET answers the expected status (and body text, when configured).
    Http,
    /// An ICMP echo to the address is answered.
    Icmp,
    /// A program (no shell) exits 0.
    Exec,
}

impl ServiceCheckKind {
    /// `tcp`, `http`, `icmp`, `exec`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceCheckKind::Tcp => "tcp",
            ServiceCheckKind::Http => "http",
            ServiceCheckKind::Icmp => "icmp",
            ServiceCheckKind::Exec => "exec",
        }
    }
}

/// Most service checks one report may carry; a server refuses a report with more (400), so an
/// agent refuses a configuration with more.
pub const MAX_SERVICE_CHECKS: usize = 64;

/// Longest [`ServiceCheckReport::target`] and `detail` a server accepts, in bytes (no control
/// characters either): an agent refuses a configured target beyond it.
pub const MAX_CHECK_TEXT_BYTES: usize = 1024;

/// One service check on one host (the `mon` idea: a service asked every few seconds), as
/// the agent reports it with every heartbeat; a change of `passing` is a state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceCheckReport {
    /// The check's name, unique on the host (`[[checks]] name`).
    pub name: String,
    /// How it asks.
    pub kind: ServiceCheckKind,
    /// What it asks, for people: `127.0.0.1:5432`, a URL without credentials, an address, a
    /// program's name. Never a secret.
    pub target: String,
    /// The check's state after its rise/fall counts: passing until `fall` attempts in a row
    /// failed, failing until `rise` in a row succeeded. A check not attempted yet is passing.
    pub passing: bool,
    /// The latest attempt succeeded.
    pub last_ok: bool,
    /// Attempts in a row with the latest attempt's outcome.
    pub consecutive: u32,
    /// What the latest attempt found: the error, the HTTP status, the program's exit code and
    /// first line of output (at most 200 characters).
    pub detail: String,
    /// How long the latest attempt took, milliseconds.
    pub duration_ms: Option<f64>,
    /// When `passing` last changed (agent clock); None while it has not changed since the
    /// agent started.
    pub changed_at: Option<DateTime<Utc>>,
    /// The VRRP instance whose service this is: a host where it fails is not promoted for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vrrp_instance: Option<String>,
    /// The replication link whose service this is (`kind:name`, e.g. `postgresql:pg`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// Most Pacemaker nodes one report may carry ([`PacemakerReport::nodes`]).
pub const MAX_PACEMAKER_NODES: usize = 32;
/// Most Pacemaker resources one report may carry ([`PacemakerReport::resources`], primitives and
/// clone instances); the agent keeps the first ones in `crm_mon`'s order and says how many it
/// left out in [`PacemakerReport::resources_omitted`].
pub const MAX_PACEMAKER_RESOURCES: usize = 128;
/// Most failed actions one report may carry ([`PacemakerReport::failures`]); further ones are
/// counted in [`PacemakerReport::failures_omitted`].
pub const MAX_PACEMAKER_FAILURES: usize = 32;
/// Longest Pacemaker name (node, resource, agent, task, role, error) a server accepts, in bytes,
/// without control characters.
pub const MAX_PACEMAKER_TEXT_BYTES: usize = 256;

/// A Pacemaker/Corosync cluster as one member's `crm_mon --output-as=xml` shows it (Pacemaker
/// 2.1; the older `--as-xml` form has the same elements). Each member reports its own view: members
/// of one cluster that name different DCs or see different members online are in different
/// partitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PacemakerReport {
    /// `crm_mon` answered with the cluster's status. False when Pacemaker is not running here or
    /// `crm_mon` failed: `error` says why and the other fields are empty.
    pub connected: bool,
    /// Why `crm_mon` gave no status (its `status` message, the exit code, a parse error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The Pacemaker node name of this host (the node whose `name` is the host name), when found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_node: Option<String>,
    /// The Designated Controller of this member's partition (`current_dc name`), None when there
    /// is none (the partition is still electing, or Pacemaker is starting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dc: Option<String>,
    /// This member's partition has quorum (`current_dc with_quorum`).
    pub with_quorum: bool,
    /// The cluster's nodes as this member sees them, in `crm_mon`'s order.
    pub nodes: Vec<PacemakerNode>,
    /// Resources: each primitive (inside groups, clones and bundles too; a clone's instances
    /// have ids such as `web:0`), in `crm_mon`'s order.
    pub resources: Vec<PacemakerResource>,
    /// Resources left out beyond [`MAX_PACEMAKER_RESOURCES`].
    #[serde(default)]
    pub resources_omitted: u32,
    /// Failed resource actions (`crm_mon`'s `failures`), until cleaned up.
    pub failures: Vec<PacemakerFailure>,
    /// Failed actions left out beyond [`MAX_PACEMAKER_FAILURES`].
    #[serde(default)]
    pub failures_omitted: u32,
}

impl PacemakerReport {
    /// The node named `name`, if this member's view has it.
    pub fn node(&self, name: &str) -> Option<&PacemakerNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Names of the nodes online in this member's view, sorted: its partition's membership.
    pub fn online_nodes(&self) -> Vec<&str> {
        let mut online: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.online)
            .map(|n| n.name.as_str())
            .collect();
        online.sort_unstable();
        online
    }
}

/// One Pacemaker node (`crm_mon`'s `nodes/node`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PacemakerNode {
    /// Node name (`name`), as in Corosync's node list.
    pub name: String,
    /// A member of this partition (`online`).
    pub online: bool,
    /// In standby: runs no resources (`standby`, or `standby_onfail` after a failure).
    pub standby: bool,
    /// In maintenance mode: Pacemaker neither starts, stops nor monitors its resources
    /// (`maintenance`).
    pub maintenance: bool,
    /// Unclean: its state is not known and it must be fenced (`unclean`).
    pub unclean: bool,
    /// Resources running on it (`resources_running`).
    pub resources_running: u32,
}

/// One Pacemaker resource, a primitive or a clone instance (`crm_mon`'s `resources//resource`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PacemakerResource {
    /// Resource id (`id`; a clone instance's has `:N`).
    pub id: String,
    /// The group, clone or bundle it belongs to (its `id`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Resource agent (`resource_agent`, `ocf:pacemaker:Dummy`).
    pub agent: String,
    /// Current role (`role`): `Started`, `Stopped`, `Promoted`, `Unpromoted` (`Master`/`Slave`
    /// before Pacemaker 2.1), `Starting`, `Stopping`, `Migrating`, `Unknown`.
    pub role: String,
    /// The role the configuration asks for (`target_role`), when set: `Stopped` means it was
    /// stopped on purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_role: Option<String>,
    /// Running somewhere (`active`).
    pub active: bool,
    /// In a failed state (`failed`).
    pub failed: bool,
    /// Managed by Pacemaker (`managed`); false in maintenance or when made unmanaged.
    pub managed: bool,
    /// Blocked: Pacemaker cannot start or stop it until a person acts (`blocked`).
    pub blocked: bool,
    /// Nodes it runs on (its `node` children's `name`); more than one for a resource that must
    /// run once means it is active in several places.
    pub nodes: Vec<String>,
}

impl PacemakerResource {
    /// Stopped although nobody asked for it (its `target_role` is not `Stopped`).
    pub fn stopped_unexpectedly(&self) -> bool {
        !self.active
            && !self
                .target_role
                .as_deref()
                .is_some_and(|r| r.eq_ignore_ascii_case("stopped"))
    }
}

/// One failed resource action (`crm_mon`'s `failures/failure`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PacemakerFailure {
    /// The resource (from `op_key`, `dummy_monitor_5000` → `dummy`).
    pub resource: String,
    /// The operation (`task`: `monitor`, `start`, `stop`, …).
    pub task: String,
    /// The node it failed on (`node`).
    pub node: String,
    /// The agent's exit code (`exitcode`, OCF: 7 not running, 1 generic error, …).
    pub exit_code: i32,
    /// The exit status's meaning (`exitstatus`, `not running`), with `exitreason` when given.
    pub exit_reason: String,
    /// When it failed, as `crm_mon` prints it (`last-rc-change`, `2026-12-07 16:48:20Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rc_change: Option<String>,
}

/// keepalived on one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeepalivedReport {
    /// True when the pid in keepalived's pid file names a live process.
    pub running: bool,
    /// Every VRRP instance this host knows (from the JSON dump and the notify FIFO). When
    /// keepalived is not running, the instances it last had are reported in state `STOP`.
    pub instances: Vec<VrrpInstanceReport>,
    /// keepalived's `vrrp_sync_group`s on this host (instances that move together), from its
    /// data dump and the notify FIFO's `GROUP` lines. Absent from agents that do not read them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sync_groups: Vec<SyncGroupReport>,
    /// keepalived's LVS `virtual_server`s on this host with their real servers, from the notify
    /// FIFO's `VS` and `RS` lines. Absent when keepalived runs no checker (no LVS configured).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_servers: Vec<VirtualServerReport>,
}

/// Most sync groups, virtual servers, tracked scripts or tracked interfaces one report (or one
/// instance) may carry, and most members of one sync group; a server refuses more (400).
pub const MAX_KEEPALIVED_ITEMS: usize = 256;

/// Most real servers of one virtual server a server accepts (400 beyond).
pub const MAX_REAL_SERVERS: usize = 1024;

/// Most real servers one report lists, over all its virtual servers: about 100 KiB of JSON, well
/// within the server's body limit. An agent counts the ones past it in each virtual server's
/// `omitted_up`/`omitted_down` instead of listing them (and a server does the same with a
/// report of an agent before this bound).
pub const MAX_REAL_SERVERS_PER_REPORT: usize = 2048;

/// Longest name of a sync group, tracked script or interface, virtual or real server a server
/// accepts, in bytes (no control characters).
pub const MAX_KEEPALIVED_NAME_BYTES: usize = 128;

/// One keepalived `vrrp_sync_group` on one host: its members go to MASTER, BACKUP or FAULT
/// together on this host (keepalived.conf(5), `vrrp_sync_group`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncGroupReport {
    /// Group name (`VRRP Sync Group = NAME, STATE` in keepalived's data dump, `GROUP "NAME"` on
    /// the notify FIFO).
    pub name: String,
    /// The group's state on this host, as keepalived last reported it.
    pub state: VrrpState,
    /// Member instance names (`VRRP member instances :` in the data dump); empty until the
    /// first data dump.
    pub members: Vec<String>,
    /// Whether the group is configured with `sync_group_tracking_weight` (the data dump's
    /// `sync group tracking weight set`): without it keepalived ignores the weight of every
    /// tracked file, script and interface of the group's instances, and with it hapulse's
    /// priority lever. None until the first data dump (or from an agent before this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_weight: Option<bool>,
}

/// Whether a tracked `vrrp_script` currently succeeds (keepalived's data dump, `Status = GOOD`
/// or `BAD`: the script's result has reached `rise`, or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TrackStatus {
    /// Passing (keepalived `GOOD`, or an interface that is UP and RUNNING).
    Good,
    /// Failing (keepalived `BAD`, or an interface that is down or has no carrier): with weight
    /// 0 the instance goes to FAULT, otherwise the weight is added to its priority.
    Bad,
}

impl TrackStatus {
    /// `good` or `bad`.
    pub fn as_str(self) -> &'static str {
        match self {
            TrackStatus::Good => "good",
            TrackStatus::Bad => "bad",
        }
    }
}

/// One `track_script` or `track_interface` entry of a VRRP instance, from keepalived's data
/// dump (`Tracked scripts :` / `Tracked interfaces :` → `NAME weight W`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrackedItem {
    /// Script name (`vrrp_script NAME`) or interface name.
    pub name: String,
    /// Weight keepalived applies: 0 means a failure puts the instance in FAULT; otherwise added
    /// to the priority while failing (negative) or passing (positive), in priority points.
    pub weight: i32,
    /// Current status; absent when the dump did not say (a script with no `VRRP Script` block,
    /// an interface missing from the `Interfaces` section).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TrackStatus>,
}

/// One keepalived LVS `virtual_server` on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VirtualServerReport {
    /// The virtual server as keepalived names it on the notify FIFO (`check/check_data.c`
    /// `format_vs`): `[10.0.0.1]:tcp:80`, `FWM 5`, or `[GROUP]:80` for a virtual server group.
    pub name: String,
    /// Its quorum is up (`VS NAME UP`): enough live real-server weight.
    pub up: bool,
    /// Its real servers, as the FIFO last reported them (within
    /// [`MAX_REAL_SERVERS_PER_REPORT`] over the report).
    pub real_servers: Vec<RealServerReport>,
    /// Real servers up that the report does not list (past [`MAX_REAL_SERVERS_PER_REPORT`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted_up: u32,
    /// Real servers down that the report does not list.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted_down: u32,
}

impl VirtualServerReport {
    /// Real servers reported up, listed or not.
    pub fn live_real_servers(&self) -> usize {
        self.real_servers.iter().filter(|r| r.up).count() + self.omitted_up as usize
    }
}

/// `servers` with at most [`MAX_REAL_SERVERS_PER_REPORT`] real servers listed over all of
/// them, in order: the ones past it are counted in their virtual server's `omitted_up` and
/// `omitted_down`, so a large LVS director's report stays within the server's body limit and
/// its live counts stay right.
pub fn bound_real_servers(mut servers: Vec<VirtualServerReport>) -> Vec<VirtualServerReport> {
    let mut budget = MAX_REAL_SERVERS_PER_REPORT;
    for vs in &mut servers {
        let keep = vs.real_servers.len().min(budget);
        budget -= keep;
        for rs in vs.real_servers.drain(keep..) {
            let omitted = if rs.up {
                &mut vs.omitted_up
            } else {
                &mut vs.omitted_down
            };
            *omitted = omitted.saturating_add(1);
        }
    }
    servers
}

/// One LVS `real_server` of a virtual server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RealServerReport {
    /// The real server as keepalived names it on the notify FIFO (`format_rs`):
    /// `[192.168.1.10]:tcp:80`.
    pub address: String,
    /// Its health checks pass (`RS … UP`).
    pub up: bool,
    /// Its IPVS weight, when known; keepalived's FIFO lines do not carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
}

/// One keepalived `vrrp_instance` on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VrrpInstanceReport {
    /// Instance name (keepalived `iname`, e.g. `VI_1`).
    pub name: String,
    /// Virtual router id, 1..=255 (keepalived `vrid`); absent until the first JSON dump.
    pub vrid: Option<u8>,
    /// Interface the instance runs on (keepalived `ifp_ifname`).
    pub interface: Option<String>,
    /// Current VRRP state.
    pub state: VrrpState,
    /// Configured priority (keepalived `base_priority`).
    pub base_priority: Option<u8>,
    /// Priority after track scripts and files (keepalived `effective_priority`; the notify FIFO
    /// also carries it).
    pub effective_priority: Option<u8>,
    /// The instance's VIPs as bare addresses (`10.0.0.100`), without prefix length.
    pub vips: Vec<String>,
    /// Those of `vips` that the kernel has on an interface of this host right now (netlink): the
    /// ground truth of who holds a VIP, whatever keepalived last said.
    pub held_vips: Vec<String>,
    /// When keepalived last changed this instance's state (keepalived `last_transition`).
    pub last_transition: Option<DateTime<Utc>>,
    /// keepalived's counters for this instance (`become_master`, `release_master`,
    /// `advert_rcvd`, `advert_sent`, `pri_zero_sent`, `pri_zero_rcvd`), as dumped.
    pub counters: VrrpCounters,
    /// The configured advertisement interval in milliseconds (keepalived `adver_int`, seconds
    /// in the dump); absent until the first JSON dump (and before protocol version 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advert_interval_ms: Option<u32>,
    /// VRRP authentication (keepalived `auth_type`: `none`, `pass` or `ah`; never the
    /// password, which keepalived itself dumps as asterisks); absent until the first dump.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_type: Option<String>,
    /// Gratuitous ARPs keepalived sends for each VIP the moment this instance becomes MASTER
    /// (keepalived `garp_rep` in the dump's data, `vrrp_garp_master_repeat`, default 5). The
    /// dump's `stats` count no gratuitous ARP (keepalived 2.2), so this is the configured burst,
    /// not a count of frames sent. Absent until the first JSON dump.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub garp_master_repeat: Option<u32>,
    /// Seconds after becoming MASTER when keepalived sends the same burst again (keepalived
    /// `garp_delay`, `vrrp_garp_master_delay`, default 5; 0: no second burst). Absent until the
    /// first JSON dump.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub garp_master_delay_s: Option<u32>,
    /// The `vrrp_sync_group` this instance belongs to (data dump `Sync group = NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_group: Option<String>,
    /// Its `track_script` entries with their status: why it is in FAULT or its priority dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracked_scripts: Vec<TrackedItem>,
    /// Its `track_interface` entries with their link status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracked_interfaces: Vec<TrackedItem>,
}

impl VrrpInstanceReport {
    /// True when this host holds at least one of the instance's VIPs.
    pub fn holds_vip(&self) -> bool {
        !self.held_vips.is_empty()
    }
}

/// keepalived's per-instance counters (the `stats` object of its JSON dump).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VrrpCounters {
    /// Times the instance became MASTER.
    pub become_master: u64,
    /// Times the instance gave MASTER up.
    pub release_master: u64,
    /// Adverts received.
    pub advert_rcvd: u64,
    /// Adverts sent.
    pub advert_sent: u64,
    /// Priority-0 adverts sent (a clean stop or FAULT hands over at once).
    pub pri_zero_sent: u64,
    /// Priority-0 adverts received.
    pub pri_zero_rcvd: u64,
}

/// VRRP instance state as keepalived names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum VrrpState {
    /// Starting up (keepalived state 0).
    Init,
    /// Standby (keepalived state 1).
    Backup,
    /// Holds the master role (keepalived state 2).
    Master,
    /// Failed a track check or its interface is down (keepalived state 3).
    Fault,
    /// keepalived is not running, or stopped the instance.
    Stop,
}

impl VrrpState {
    /// The name keepalived uses (`MASTER`, `BACKUP`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            VrrpState::Init => "INIT",
            VrrpState::Backup => "BACKUP",
            VrrpState::Master => "MASTER",
            VrrpState::Fault => "FAULT",
            VrrpState::Stop => "STOP",
        }
    }

    /// Parses the upper-case name (`MASTER`, `BACKUP`, `FAULT`, `STOP`, `INIT`).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "INIT" => VrrpState::Init,
            "BACKUP" => VrrpState::Backup,
            "MASTER" => VrrpState::Master,
            "FAULT" => VrrpState::Fault,
            "STOP" => VrrpState::Stop,
            _ => return None,
        })
    }
}

impl fmt::Display for VrrpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Kind of replication a link is.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationKind {
    /// PostgreSQL streaming replication.
    Postgresql,
    /// MySQL or MariaDB replication.
    Mysql,
    /// A DRBD resource.
    Drbd,
}

impl ReplicationKind {
    /// `postgresql`, `mysql`, `drbd`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicationKind::Postgresql => "postgresql",
            ReplicationKind::Mysql => "mysql",
            ReplicationKind::Drbd => "drbd",
        }
    }
}

/// This host's role in a replication link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationRole {
    /// Source of the data: PostgreSQL primary, MySQL source, DRBD Primary.
    Primary,
    /// Receiver: PostgreSQL standby, MySQL replica, DRBD Secondary.
    Secondary,
    /// Not known (the database is down, say).
    Unknown,
}

impl ReplicationRole {
    /// `primary`, `secondary`, `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicationRole::Primary => "primary",
            ReplicationRole::Secondary => "secondary",
            ReplicationRole::Unknown => "unknown",
        }
    }
}

/// State of a replication link, in hapulse's words across the three sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Data flows and the receiver is caught up or following (PostgreSQL `streaming`, MySQL IO
    /// and SQL threads running, DRBD `Established`).
    Streaming,
    /// The receiver is connected and behind on purpose or by load: PostgreSQL `catchup` or
    /// `startup`, DRBD resync (`SyncSource`/`SyncTarget`).
    CatchingUp,
    /// Replay or apply is paused on the receiver (PostgreSQL `pg_wal_replay_pause()`, MySQL SQL
    /// thread stopped while IO runs).
    Paused,
    /// The link is configured but not connected (no WAL receiver, MySQL IO thread stopped,
    /// DRBD not `Connected`).
    Disconnected,
    /// Replication is stopped on purpose (MySQL both threads stopped) or not configured here.
    Stopped,
    /// The source could not be asked (database down, command failed); `error` says why.
    Down,
}

impl LinkState {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Streaming => "streaming",
            LinkState::CatchingUp => "catching_up",
            LinkState::Paused => "paused",
            LinkState::Disconnected => "disconnected",
            LinkState::Stopped => "stopped",
            LinkState::Down => "down",
        }
    }
}

/// One replication link as one host sees it: one per configured PostgreSQL or MySQL probe and
/// per DRBD resource. A PostgreSQL primary folds its standbys (`pg_stat_replication` rows) into
/// its one link: `peer` lists them, the lag is the largest, `raw` has each standby's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicationLinkReport {
    /// Source kind.
    pub kind: ReplicationKind,
    /// Name: the probe's configured name (PostgreSQL, MySQL) or the DRBD resource name.
    pub name: String,
    /// This host's role.
    pub role: ReplicationRole,
    /// The other end: standby `application_name` (client address) on a PostgreSQL primary, the
    /// sending host on a standby, the MySQL source host, the DRBD peer's name.
    pub peer: Option<String>,
    /// Link state.
    pub state: LinkState,
    /// How far the receiver is behind, in bytes: PostgreSQL WAL bytes not yet replayed
    /// (`pg_wal_lsn_diff`), DRBD out-of-sync data (KiB × 1024). MySQL gives no byte lag.
    pub lag_bytes: Option<u64>,
    /// How far behind in seconds: PostgreSQL `replay_lag` (primary) or time since the last
    /// replayed transaction while WAL is pending (standby), MySQL `Seconds_Behind_Source`.
    pub lag_seconds: Option<f64>,
    /// The VRRP instance whose VIP should follow this link's primary (from the probe's
    /// configuration), for the "VIP holder is not the primary" check.
    pub vrrp_instance: Option<String>,
    /// Why the source could not be asked, when `state` is `down`.
    pub error: Option<String>,
    /// The fields the source gave, as text, by their own names (`replay_lsn`, `Last_IO_Error`,
    /// `peer-disk-state` …).
    pub raw: std::collections::BTreeMap<String, String>,
}

impl ReplicationLinkReport {
    /// Identity of the link on its node and in its cluster: `kind:name` (`postgresql:pg`).
    pub fn key(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.name)
    }
}

/// Reachability as one agent measures it, every probe interval, with ICMP echo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArbitrationReport {
    /// The cluster's reference address (typically the gateway, as the Linux-HA `ping` node
    /// recommends): a node that cannot reach it must not take over.
    pub reference: Option<Reachability>,
    /// The other members of the cluster, from the agent's `[[arbitration.peers]]`.
    #[serde(default)]
    pub peers: Vec<PeerReachability>,
    /// The agent found its host isolated (reference, every peer and the server unreachable for
    /// `self_fence_after`) and fenced its own VRRP instances (and stopped a primary database
    /// where configured) at this time; the fence stays until the server lifts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_fenced_at: Option<DateTime<Utc>>,
}

/// The outcome of the latest probes of one address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reachability {
    /// The address probed (IPv4 or IPv6).
    #[schema(value_type = String, format = "ip")]
    pub address: std::net::IpAddr,
    /// The latest probe was answered within the probe timeout.
    pub reachable: bool,
    /// Round-trip time of the latest answered probe, milliseconds.
    pub rtt_ms: Option<f64>,
    /// Probes in a row that went unanswered (0 when `reachable`).
    pub consecutive_failures: u32,
}

/// [`Reachability`] of one peer node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PeerReachability {
    /// The peer's node id.
    pub node_id: String,
    /// How it answers.
    pub reach: Reachability,
}

/// Node ids, cluster names and replication link names: 1-64 characters of `A-Z a-z 0-9 . _ -`.
/// The agent checks its configuration with it, the server every report.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Pacemaker node names and resource ids as the server and agent accept them in a command: 1 to
/// [`MAX_PACEMAKER_TEXT_BYTES`] bytes of `A-Z a-z 0-9 . _ - :` not starting with `-` (Pacemaker
/// ids are XML ids, a clone instance adds `:N`; node names are host names), so one can never be
/// read as an option of `crm_resource`.
pub fn valid_pacemaker_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_PACEMAKER_TEXT_BYTES
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

/// Parses a PostgreSQL LSN (`16/B374D848`, as `pg_lsn` prints it) into a byte position.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    let high = u64::from_str_radix(high, 16).ok()?;
    let low = u64::from_str_radix(low, 16).ok()?;
    (high <= u32::MAX as u64 && low <= u32::MAX as u64).then_some((high << 32) | low)
}

/// Splits a database address, `HOST:PORT` (`10.0.0.11:5432`, `db1.example:5432`,
/// `[2001:db8::11]:5432`), into host and port. The host may hold only letters, digits, `.`,
/// `-`, `_` and, in brackets, `:` (an IPv6 address), so it is safe inside a libpq connection
/// string; the port is 1-65535. Err says what is wrong.
pub fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    let bad = || format!("{text:?} is not HOST:PORT (10.0.0.11:5432, [2001:db8::11]:5432)");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(bad)?;
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        // An IPv6 address, which prints with letters, digits and colons only.
        let ip: std::net::Ipv6Addr = v6.parse().map_err(|_| bad())?;
        return Ok((ip.to_string(), port));
    }
    let safe = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_');
    if host.is_empty() || host.len() > 253 || !host.bytes().all(safe) {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// Path of the enrollment endpoint, relative to the server's base URL.
pub const ENROLL_PATH: &str = "/api/agent/v1/enroll";

/// `POST {ENROLL_PATH}`: trade a one-time enrollment token for this node's credential. The
/// request needs no `Authorization` header: the token is the proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The node the token was created for.
    pub node_id: String,
    /// The enrollment token (`hpe_…`).
    pub token: String,
}

/// The answer to an accepted enrollment (HTTP 200); 401 when the token is unknown, used, expired
/// or for another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnrollResponse {
    /// The node the credential is bound to.
    pub node_id: String,
    /// The node credential (`hpn_…`): keep it secret, send it as `Authorization: Bearer`.
    pub credential: String,
}

/// The server's answer to an accepted heartbeat (HTTP 200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatAck {
    /// The `seq` this answer is for.
    pub seq: u64,
    /// False when the server had already accepted this `(boot_id, seq)` (a replay): nothing was
    /// written again.
    pub accepted: bool,
    /// Server protocol version.
    pub protocol_version: u32,
    /// Commands waiting for this node: the fallback when the long poll is not connected.
    /// Commands this agent cannot read (an action a newer server added) are left out.
    #[serde(default, deserialize_with = "readable_commands")]
    pub commands: Vec<Command>,
}

/// The commands of `values` this agent can read; the others (an action a newer server added,
/// which this agent could not run anyway) are logged by the caller's absence and left to
/// expire on the server at their deadline.
pub fn readable_commands_of(values: Vec<serde_json::Value>) -> Vec<Command> {
    values
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect()
}

fn readable_commands<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Command>, D::Error> {
    let values: Vec<serde_json::Value> = Deserialize::deserialize(d)?;
    Ok(readable_commands_of(values))
}

/// Path of the agent's long poll for commands, relative to the server's base URL.
pub const COMMANDS_PATH: &str = "/api/agent/v1/commands";

/// Something the server asks one agent to do. Durable on the server before it is sent; the agent
/// executes each `id` at most once and refuses an `epoch` lower than the highest it has seen.
///
/// An answer the agent reads: fields it does not know (from a newer server) are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Command {
    /// Unique id.
    pub id: Uuid,
    /// Cluster.
    pub cluster: String,
    /// The node that must run it.
    pub node_id: String,
    /// The cluster's epoch when the command was issued (fencing token).
    pub epoch: u64,
    /// What to do.
    pub action: Action,
    /// After this instant the command must not start.
    pub deadline: DateTime<Utc>,
    /// The switchover it belongs to, if any (passed to hooks).
    pub switchover_id: Option<Uuid>,
}

/// The actions an agent can run; each must also be enabled in the agent's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    /// Write `offset` to the instance's priority track file (a keepalived `vrrp_track_file`
    /// with `weight 1`): effective priority = base priority + offset, no reload needed.
    SetPriorityOffset {
        /// VRRP instance.
        instance: String,
        /// Added to the base priority, -253..=253.
        offset: i32,
    },
    /// Write 1 (fenced) or 0 to the instance's fence track file (`weight 0`): non-zero puts the
    /// instance in FAULT, which sends a priority-0 advert so a backup takes the VIP at once.
    Fence {
        /// VRRP instance.
        instance: String,
        /// True to fence, false to lift the fence.
        fenced: bool,
    },
    /// Stop the PostgreSQL server of `link` (fast shutdown: every connected standby receives the
    /// WAL up to the shutdown checkpoint before the server exits).
    PostgresStop {
        /// Replication link name (`pg`).
        link: String,
    },
    /// Promote the PostgreSQL standby of `link` (`SELECT pg_promote()`).
    PostgresPromote {
        /// Replication link name.
        link: String,
    },
    /// Make the PostgreSQL server of `link` a streaming standby of the primary at
    /// `primary_host:primary_port` (that primary's advertised address, raw `advertise_address`
    /// of its report). A running standby is re-pointed (`ALTER SYSTEM SET primary_conninfo`, then
    /// `pg_reload_conf()`: PostgreSQL 13 and later apply it without a restart). A stopped server
    /// (the old primary after a move) is rewound from the new primary (`pg_rewind
    /// --write-recovery-conf`, which also writes `standby.signal` and `primary_conninfo`; the
    /// operator's re-clone command when the rewind fails) and started. A running primary is
    /// refused: it must be stopped first, so the command never demotes a live primary. The
    /// connection string is the agent's `standby_conninfo` plus `host` and `port`: no
    /// credential travels in the command.
    PostgresFollow {
        /// Replication link name.
        link: String,
        /// Host (name or address) of the new primary.
        primary_host: String,
        /// Port of the new primary.
        primary_port: u16,
    },
    /// Start the stopped PostgreSQL server of `link` with its configured start command, as it
    /// is (a primary on a DRBD device that this host just made Primary, say). Refused while it
    /// runs.
    PostgresStart {
        /// Replication link name.
        link: String,
    },
    /// Stop writes on the MySQL/MariaDB server of `link`: `SET GLOBAL read_only = ON`, then
    /// end every client session that could still write (not the replication threads), and
    /// report the server's last binary-log position in the result's data (`gtid_binlog_pos`,
    /// MariaDB's `@@gtid_binlog_pos`, e.g. `0-1-42`): every transaction committed before the
    /// stop is at or before it. The server keeps running, read-only.
    MysqlStop {
        /// Replication link name (`db`).
        link: String,
    },
    /// Wait until the replica of `link` has applied every transaction up to `gtid_pos` (the old
    /// primary's final `gtid_binlog_pos`), with MariaDB's `MASTER_GTID_WAIT(gtid_pos, timeout)`.
    MysqlCatchUp {
        /// Replication link name.
        link: String,
        /// GTID position (`0-1-42`, several domains comma-separated).
        gtid_pos: String,
    },
    /// Make the server of `link` the writable primary: a replica stops receiving
    /// (`STOP SLAVE IO_THREAD`), applies everything it received (`MASTER_GTID_WAIT` on its
    /// `Gtid_IO_Pos`, the SQL thread started if it was stopped), forgets its source
    /// (`STOP SLAVE; RESET SLAVE ALL`) and turns `read_only` off; a server that replicates from
    /// nobody (an old primary made read-only by `mysql_stop`) only turns `read_only` off.
    MysqlPromote {
        /// Replication link name.
        link: String,
    },
    /// Make the server of `link` a replica of the primary at `primary_host:primary_port` (its
    /// raw `advertise_address`), with GTIDs (`CHANGE MASTER TO … MASTER_USE_GTID=slave_pos;
    /// START SLAVE`) and `read_only` on. A stopped server is started first (the agent's
    /// `start_command`); an old primary takes its own `gtid_binlog_pos` as the position it
    /// continues from, so a transaction the new primary never had stops it with MariaDB's
    /// error instead of diverging silently. A writable server is refused: it is made read-only
    /// (`mysql_stop`) first, so the command never demotes a live primary. The replication user
    /// and password come from the agent's configuration: no credential travels in the command.
    MysqlFollow {
        /// Replication link name.
        link: String,
        /// Host (name or address) of the new primary.
        primary_host: String,
        /// Port of the new primary.
        primary_port: u16,
    },
    /// `drbdadm primary|secondary RESOURCE`. Before `primary` the agent checks with
    /// `drbdsetup status --json RESOURCE` that the local disk is `UpToDate`: an `Inconsistent`
    /// or `Outdated` disk is never promoted.
    DrbdRole {
        /// DRBD resource.
        resource: String,
        /// `primary` or `secondary`.
        role: ReplicationRole,
    },
    /// Run the operator's hook for `phase` (`pre` or `post`) with the switchover's details in
    /// its environment. A non-zero exit of a `pre` hook aborts the switchover.
    Hook {
        /// `pre` or `post`.
        phase: String,
        /// `HAPULSE_*` variables for the hook (names without the prefix, values as text).
        env: std::collections::BTreeMap<String, String>,
    },
    /// Remove `address` (a VIP of `instance`) from this host's interfaces because keepalived is
    /// not running here: a keepalived that was killed (SIGKILL sends no goodbye) leaves its
    /// addresses configured, and a stale VIP beside the live holder answers clients that then
    /// reach a host without the service. The agent checks that keepalived is not running before
    /// it removes anything (while it runs, it owns its addresses: the command fails).
    RemoveVip {
        /// VRRP instance the address belongs to.
        instance: String,
        /// The address, as keepalived reports it (`10.0.0.100`).
        address: String,
    },
    /// Probe every replication link now and answer with what it says, in the result's `data`
    /// (`{link}.role`, `{link}.state`, `{link}.receive_lsn`, `{link}.replay_lsn`,
    /// `{link}.lag_bytes`, `{link}.lag_seconds`, `{link}` being `postgresql:pg`): the arbiter asks
    /// the candidates this before it picks one for a failover. Read-only, so it needs no entry in
    /// `actions.enabled`.
    ReportPositions {},
    /// Ask the LAN who has each VIP now (an ARP check round, see [`ArpReport`]) instead of at
    /// the next `arp_check_interval`, and answer with what it heard in the result's `data`
    /// (`{instance}/{vip}`: the answering MAC addresses separated by spaces, `self` first when
    /// this host held the VIP, or `error: …`); the next report carries the round. Read-only, so
    /// it needs no entry in `actions.enabled`.
    ArpCheck {},
    /// Move a Pacemaker resource to `node`: `crm_resource --move --resource R --node N` (a
    /// location constraint `cli-prefer-R` that Pacemaker obeys by stopping and starting it
    /// there), then, once `crm_mon` shows it running on `node` (or the action's timeout passed),
    /// `crm_resource --clear --resource R`, so the resource is not pinned there for ever. Fails
    /// when it did not arrive; the constraint is cleared either way.
    PacemakerMove {
        /// Resource id (`dummy`, a group's id).
        resource: String,
        /// Pacemaker node name of the destination.
        node: String,
    },
}

impl Action {
    /// Short name of the action (`set_priority_offset`, `fence`, …), as enabled in the agent's
    /// `actions.enabled`.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::SetPriorityOffset { .. } => "set_priority_offset",
            Action::Fence { .. } => "fence",
            Action::PostgresStop { .. } => "postgres_stop",
            Action::PostgresPromote { .. } => "postgres_promote",
            Action::PostgresFollow { .. } => "postgres_follow",
            Action::PostgresStart { .. } => "postgres_start",
            Action::MysqlStop { .. } => "mysql_stop",
            Action::MysqlCatchUp { .. } => "mysql_catch_up",
            Action::MysqlPromote { .. } => "mysql_promote",
            Action::MysqlFollow { .. } => "mysql_follow",
            Action::DrbdRole { .. } => "drbd_role",
            Action::Hook { .. } => "hook",
            Action::RemoveVip { .. } => "remove_vip",
            Action::ReportPositions {} => "report_positions",
            Action::ArpCheck {} => "arp_check",
            Action::PacemakerMove { .. } => "pacemaker_move",
        }
    }

    /// It only reads: allowed without an entry in the agent's `actions.enabled`.
    pub fn read_only(&self) -> bool {
        matches!(self, Action::ReportPositions {} | Action::ArpCheck {})
    }
}

/// How a command ended on the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandOutcome {
    /// It ran and did what it says.
    Succeeded,
    /// It ran and failed (non-zero exit, SQL error, …).
    Failed,
    /// It was not run: lower epoch than seen, already executed, not enabled, past its deadline.
    /// The reason is in [`CommandResult::refusal`].
    Refused,
}

/// Why an agent refused a command without running it: the machine-readable counterpart of the
/// result's message. Serialized in snake_case (`not_enabled`, `stale_epoch`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// The command is for another node or cluster than the agent's.
    WrongNode,
    /// Its epoch is lower than the highest the agent has seen: a newer switchover superseded it.
    StaleEpoch,
    /// Its deadline had passed when the agent received it.
    DeadlinePassed,
    /// Its action kind is not listed in the agent's `actions.enabled`.
    NotEnabled,
    /// The agent started this command id before and does not know how it ended (it stopped
    /// while the command ran); it is not run a second time.
    AlreadyExecuted,
}

impl RefusalReason {
    /// The wire name: `wrong_node`, `stale_epoch`, `deadline_passed`, `not_enabled`,
    /// `already_executed`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::WrongNode => "wrong_node",
            RefusalReason::StaleEpoch => "stale_epoch",
            RefusalReason::DeadlinePassed => "deadline_passed",
            RefusalReason::NotEnabled => "not_enabled",
            RefusalReason::AlreadyExecuted => "already_executed",
        }
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Path of the result endpoint, relative to the server's base URL: `{COMMANDS_PATH}/{id}/result`.
pub fn command_result_path(id: Uuid) -> String {
    format!("{COMMANDS_PATH}/{id}/result")
}

/// What the agent reports after a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandResult {
    /// The node reporting (must be the command's node).
    pub node_id: String,
    /// Outcome.
    pub outcome: CommandOutcome,
    /// What happened, for people (why it was refused, the error, the hook's output tail).
    pub message: String,
    /// Facts for the orchestrator, by name: `shutdown_checkpoint_lsn` after `postgres_stop`
    /// (everything committed before the stop is before it).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub data: std::collections::BTreeMap<String, String>,
    /// Why the agent refused the command: set exactly when `outcome` is `refused`, absent
    /// otherwise (and from agents older than this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<RefusalReason>,
}

/// Error body of every hapulse HTTP API: a stable machine-readable `code`, a message for people,
/// and the offending field when one is to blame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiError {
    /// Stable code, e.g. `invalid_body`, `unauthorized`, `database_unavailable`.
    pub code: String,
    /// What went wrong, safe to show.
    pub message: String,
    /// The request field at fault, when there is one (e.g. `keepalived.instances[0].state`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// With code `not_leader` (HTTP 503 from a server replica that does not lead): the
    /// leader's `advertise_url`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_addresses_are_host_and_port_safe_in_a_conninfo() {
        let ok = |t: &str| parse_host_port(t).unwrap();
        assert_eq!(ok("10.0.0.11:5432"), ("10.0.0.11".into(), 5432));
        assert_eq!(ok("db-1.example_x:6432"), ("db-1.example_x".into(), 6432));
        assert_eq!(ok("[2001:db8::11]:5432"), ("2001:db8::11".into(), 5432));
        for bad in [
            "",
            "10.0.0.11",
            "10.0.0.11:0",
            "10.0.0.11:65536",
            ":5432",
            "a b:5432",
            "h' dbname=x:5432",
            "host=evil:5432",
            "2001:db8::11:5432",
            "[not-v6]:5432",
            "h\n:5432",
        ] {
            assert!(parse_host_port(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn vrrp_state_round_trips_through_its_name() {
        for state in [
            VrrpState::Init,
            VrrpState::Backup,
            VrrpState::Master,
            VrrpState::Fault,
            VrrpState::Stop,
        ] {
            assert_eq!(VrrpState::parse(state.as_str()), Some(state));
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        assert_eq!(VrrpState::parse("master"), None);
    }

    #[test]
    fn refusal_reasons_are_named_as_on_the_wire() {
        for reason in [
            RefusalReason::WrongNode,
            RefusalReason::StaleEpoch,
            RefusalReason::DeadlinePassed,
            RefusalReason::NotEnabled,
            RefusalReason::AlreadyExecuted,
        ] {
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
        }
    }

    #[test]
    fn a_command_result_carries_its_refusal_only_when_there_is_one() {
        // From an agent older than the field, or a command that ran: no `refusal` key.
        let ran: CommandResult =
            serde_json::from_str(r#"{"node_id":"n1","outcome":"succeeded","message":"ok"}"#)
                .unwrap();
        assert_eq!(ran.refusal, None);
        assert!(!serde_json::to_string(&ran).unwrap().contains("refusal"));
        let refused = CommandResult {
            outcome: CommandOutcome::Refused,
            refusal: Some(RefusalReason::NotEnabled),
            ..ran
        };
        let json = serde_json::to_string(&refused).unwrap();
        assert!(json.contains(r#""refusal":"not_enabled""#), "{json}");
        assert_eq!(
            serde_json::from_str::<CommandResult>(&json).unwrap(),
            refused
        );
    }

    #[test]
    fn macs_are_six_lower_case_hex_pairs() {
        assert!(valid_mac("52:54:00:12:ab:cd"));
        for bad in [
            "",
            "52:54:00:12:AB:CD",
            "52:54:00:12:ab",
            "52:54:00:12:ab:cd:ef",
            "52-54-00-12-ab-cd",
            "5:54:00:12:ab:cd0",
            "g2:54:00:12:ab:cd",
        ] {
            assert!(!valid_mac(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let json = r#"{"running":true,"instances":[],"extra":1}"#;
        let err = serde_json::from_str::<KeepalivedReport>(json).unwrap_err();
        assert!(err.to_string().contains("unknown field `extra`"), "{err}");
    }
}
