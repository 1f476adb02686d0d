//! Builders of agent reports for tests (feature `testing`, enabled by the other crates'
//! dev-dependencies only; never in a release build). One place spells out a whole
//! [`HeartbeatReport`], so a new field is added here once, and each test states only what it is
//! about.

use chrono::Utc;
use uuid::Uuid;

use crate::{
    ArbitrationReport, ArpReport, HeartbeatReport, InterfaceMac, KeepalivedReport, LinkState,
    ReplicationKind, ReplicationLinkReport, ReplicationRole, VipArpProbe, VrrpInstanceReport,
    VrrpState, PROTOCOL_VERSION,
};

/// A [`HeartbeatReport`] under construction; [`ReportBuilder::build`] returns it.
#[derive(Debug, Clone)]
pub struct ReportBuilder {
    report: HeartbeatReport,
}

/// A report of node `node_id` in cluster `cluster`: this protocol version, agent version
/// `test`, boot id nil, seq 1, observed now, a state change, heartbeat interval 1 s, host name
/// = node id, uptime 1 s, load 0, keepalived running with no instance, no replication link, no
/// arbitration probes, an empty spool.
pub fn report(node_id: &str, cluster: &str) -> ReportBuilder {
    ReportBuilder {
        report: HeartbeatReport {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "test".into(),
            node_id: node_id.into(),
            cluster: cluster.into(),
            boot_id: Uuid::nil(),
            seq: 1,
            observed_at: Utc::now(),
            state_change: true,
            heartbeat_interval_ms: 1000,
            hostname: node_id.into(),
            uptime_seconds: 1,
            load1: 0.0,
            keepalived: KeepalivedReport {
                running: true,
                instances: Vec::new(),
                sync_groups: Vec::new(),
                virtual_servers: Vec::new(),
            },
            replication: Vec::new(),
            arbitration: None,
            spool_depth: 0,
            spool_dropped: 0,
            highest_epoch: 0,
            checks: Vec::new(),
            arp: None,
            pacemaker: None,
        },
    }
}

impl ReportBuilder {
    /// The agent run's boot id.
    pub fn boot_id(mut self, boot_id: Uuid) -> Self {
        self.report.boot_id = boot_id;
        self
    }

    /// The report's sequence number within its boot id.
    pub fn seq(mut self, seq: u64) -> Self {
        self.report.seq = seq;
        self
    }

    /// The agent's heartbeat interval, milliseconds.
    pub fn interval_ms(mut self, interval_ms: u64) -> Self {
        self.report.heartbeat_interval_ms = interval_ms;
        self
    }

    /// The agent's software version.
    pub fn agent_version(mut self, version: &str) -> Self {
        self.report.agent_version = version.into();
        self
    }

    /// The host name.
    pub fn hostname(mut self, hostname: &str) -> Self {
        self.report.hostname = hostname.into();
        self
    }

    /// Whether keepalived runs.
    pub fn keepalived_running(mut self, running: bool) -> Self {
        self.report.keepalived.running = running;
        self
    }

    /// Adds a VRRP instance.
    pub fn instance(mut self, instance: VrrpInstanceReport) -> Self {
        self.report.keepalived.instances.push(instance);
        self
    }

    /// Adds a replication link.
    pub fn link(mut self, link: ReplicationLinkReport) -> Self {
        self.report.replication.push(link);
        self
    }

    /// The arbitration probes' results.
    pub fn arbitration(mut self, arbitration: ArbitrationReport) -> Self {
        self.report.arbitration = Some(arbitration);
        self
    }

    /// What its ARP probes heard: `interfaces` (name, MAC) and `probes`, interval 2 s.
    pub fn arp(mut self, interfaces: &[(&str, &str)], probes: Vec<VipArpProbe>) -> Self {
        self.report.arp = Some(ArpReport {
            interval_ms: 2000,
            interfaces: interfaces
                .iter()
                .map(|(name, mac)| InterfaceMac {
                    name: (*name).into(),
                    mac: (*mac).into(),
                })
                .collect(),
            probes,
        });
        self
    }

    /// The report.
    pub fn build(self) -> HeartbeatReport {
        self.report
    }
}

/// An ARP probe of `vip` of instance `instance` on `eth0`, made now, that heard `answered_by`;
/// `held_here` when the prober held the VIP itself.
pub fn arp_probe(instance: &str, vip: &str, held_here: bool, answered_by: &[&str]) -> VipArpProbe {
    VipArpProbe {
        instance: instance.into(),
        vip: vip.into(),
        interface: "eth0".into(),
        probed_at: Utc::now(),
        held_here,
        answered_by: answered_by.iter().map(|m| (*m).into()).collect(),
        answers_dropped: 0,
        error: None,
    }
}

/// VRRP instance `name` in `state`: VRID 51 on `eth0`, base and effective priority 100, one VIP
/// `vip`, held when `held`, no transition time, counters zero.
pub fn vrrp_instance(name: &str, state: VrrpState, vip: &str, held: bool) -> VrrpInstanceReport {
    VrrpInstanceReport {
        name: name.into(),
        vrid: Some(51),
        interface: Some("eth0".into()),
        state,
        base_priority: Some(100),
        effective_priority: Some(100),
        vips: vec![vip.into()],
        held_vips: if held { vec![vip.into()] } else { Vec::new() },
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

/// PostgreSQL link `pg` tied to instance `VI_1`, in `role` and `state`, with `lag_bytes` of lag
/// (and `lag_bytes` / 10⁶ seconds), no peer, no error.
pub fn pg_link(role: ReplicationRole, state: LinkState, lag_bytes: u64) -> ReplicationLinkReport {
    ReplicationLinkReport {
        kind: ReplicationKind::Postgresql,
        name: "pg".into(),
        role,
        peer: None,
        state,
        lag_bytes: Some(lag_bytes),
        lag_seconds: Some(lag_bytes as f64 / 1e6),
        vrrp_instance: Some("VI_1".into()),
        error: None,
        raw: Default::default(),
    }
}
