//! What the arbiter knew when it decided: each peer's view of the leader ([`Witness`]), the
//! unit's evidence ([`Gathered`]), the verdict kept per VRRP instance ([`Verdict`]), and their
//! translation into the pure decision's inputs ([`evidence`], [`candidates`]).

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::failover::decision::{self as failover, Candidate, Decision, Evidence, VipElsewhere};
use crate::fleet::live::NodeStatus;

/// One peer's view of the leader.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Witness {
    /// Peer node id.
    pub node_id: String,
    /// Detector verdict on the peer.
    pub status: NodeStatus,
    /// It is up and its agent reports arbitration probes: its view counts.
    pub counts: bool,
    /// Its last ICMP echo to the leader was answered (None: it does not probe the leader).
    pub pings_leader: Option<bool>,
    /// It is BACKUP in the instance while no node but the leader is MASTER: adverts arrive.
    pub hears_adverts: bool,
    /// Its replication link is streaming (shown, not counted: see the module documentation).
    pub replication_streaming: Option<bool>,
    /// Its verdict: it sees the leader.
    pub sees_leader: bool,
    /// It reaches the reference address (None: no arbitration probes).
    pub reaches_reference: Option<bool>,
    /// Candidate priority (0: never promoted).
    pub priority: u32,
    /// Replication lag counted against the data-loss bound, bytes: the larger of what it last
    /// reported (received, not replayed) and what the leader last reported for its standbys.
    pub lag_bytes: Option<u64>,
    /// The same in seconds.
    pub lag_seconds: Option<f64>,
    /// It is a standby of the tied replication link (always true without one): only a standby
    /// may be promoted.
    pub standby: bool,
    /// A node maintenance window covers it: it is not a candidate.
    #[serde(default)]
    pub in_maintenance: bool,
    /// WAL the leader had written by its last report ([`Gathered::leader_current_lsn`]) that
    /// this standby had not received (by its `receive_lsn`), bytes: counted against the
    /// data-loss bound beside `lag_bytes`, so a standby the leader no longer listed (restarted,
    /// cut off) is not taken for "0 bytes behind". None: unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreceived_bytes: Option<u64>,
    /// How far it has received the leader's data (PostgreSQL `pg_last_wal_receive_lsn()`,
    /// `0/3045B78`), from its answer at decision time or else its last report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_lsn: Option<String>,
    /// Asked for its position before a failover: true when it answered in time (the position
    /// and lag above are from that answer), false when it stayed silent (they are from its last
    /// report); None when not asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_fresh: Option<bool>,
    /// Its first service check tied to the instance or to a link tied to it that is not
    /// passing (`check pg-port failing (connection refused)`): it is not a candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_check: Option<String>,
    /// Another VRRP instance of the cluster it is MASTER of (N+1: a spare already serving
    /// another service): a free candidate is chosen before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serves: Option<String>,
    /// It is MASTER of the instance and its kernel holds every VIP of it (keepalived already gave
    /// them to it: after the leader's adverts stopped, the highest remaining VRRP priority takes
    /// over): between candidates equal by every other rule it is chosen, so the VIP stays put.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub holds_vip: bool,
}

/// What the arbiter knew about a cluster when it decided.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Gathered {
    /// The VRRP instance judged.
    pub instance: String,
    /// The replication link tied to it (`postgresql:pg`).
    pub link: Option<String>,
    /// The master of the current epoch.
    pub leader: String,
    /// Detector verdict on the leader.
    pub leader_status: NodeStatus,
    /// The leader's state in the instance as its agent last reported it (`STOP` when its
    /// keepalived is not running; None: it does not report the instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub leader_vrrp: Option<hapulse_protocol::VrrpState>,
    /// The leader reaches the reference address (None: unknown).
    pub leader_reaches_reference: Option<bool>,
    /// When the server last accepted a report of the leader (server clock; None: it never
    /// reported).
    pub leader_reported_at: Option<DateTime<Utc>>,
    /// The leader's own WAL position by its last report (PostgreSQL `pg_current_wal_lsn()`),
    /// if it was a primary that reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_current_lsn: Option<String>,
    /// With a tied replication link: another node is the instance's only MASTER and only VIP
    /// holder while the leader (the primary) is not MASTER, and since when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip_elsewhere: Option<VipElsewhere>,
    /// Why the instance's data cannot be moved, when it cannot: a tied replication link with
    /// no driver able to promote it (see [`crate::switchover::drivers`]). Then no automatic
    /// move is made and nothing is fenced for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmovable: Option<String>,
    /// Every other node.
    pub witnesses: Vec<Witness>,
}

/// The arbiter's latest verdict on one VRRP instance of a cluster (its unit: the instance and
/// the link that carries its data).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Verdict {
    /// The VRRP instance judged.
    pub instance: String,
    /// When it was reached.
    pub at: DateTime<Utc>,
    /// The cluster's mode: `off`, `notify`, `auto`.
    pub mode: failover::Mode,
    /// Why the cluster is paused (a maintenance window), if it is: verdicts are reached and
    /// recorded, but nothing is done automatically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// What to do and why.
    #[schema(value_type = Object)]
    pub decision: Decision,
    /// What it was based on (None: no leader known).
    pub evidence: Option<Gathered>,
}

/// The key of a unit (a VRRP instance of a cluster) in the arbiter's memory: `cluster/instance`
/// (a cluster name never holds a `/`).
pub fn unit_key(cluster: &str, instance: &str) -> String {
    format!("{cluster}/{instance}")
}

/// The decision's view of the evidence.
pub fn evidence(g: &Gathered) -> Evidence {
    let counted: Vec<&Witness> = g.witnesses.iter().filter(|w| w.counts).collect();
    Evidence {
        master: g.leader.clone(),
        server_hears_master: g.leader_status == NodeStatus::Up,
        peers_reporting: counted.len(),
        peers_seeing_master: counted.iter().filter(|w| w.sees_leader).count(),
        master_reaches_reference: g.leader_reaches_reference,
        vip_elsewhere: g.vip_elsewhere.clone(),
        unmovable: g.unmovable.clone(),
    }
}

/// The decision's view of the candidates.
pub fn candidates(g: &Gathered) -> Vec<Candidate> {
    g.witnesses
        .iter()
        .map(|w| Candidate {
            node_id: w.node_id.clone(),
            up: w.status == NodeStatus::Up,
            priority: w.priority,
            reaches_reference: w.reaches_reference == Some(true),
            // Both count: what it received but has not replayed (and what the leader last said
            // its standbys lacked), and what the leader had written that it never received.
            lag_bytes: match (w.lag_bytes, w.unreceived_bytes) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, _) => a,
            },
            lag_seconds: w.lag_seconds,
            standby: w.standby,
            in_maintenance: w.in_maintenance,
            position: w
                .receive_lsn
                .as_deref()
                .and_then(hapulse_protocol::parse_lsn),
            streaming: w.replication_streaming == Some(true),
            failing_check: w.failing_check.clone(),
            serves: w.serves.clone(),
            holds_vip: w.holds_vip,
        })
        .collect()
}

/// WAL written up to `current` (the leader's position, `0/3045B78`) that a standby received
/// only up to `received`, bytes; None when either is unknown.
pub fn unreceived(current: Option<&str>, received: Option<&str>) -> Option<u64> {
    let current = hapulse_protocol::parse_lsn(current?)?;
    let received = hapulse_protocol::parse_lsn(received?)?;
    Some(current.saturating_sub(received))
}
