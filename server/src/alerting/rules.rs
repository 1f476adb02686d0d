//! The alert vocabulary and the rules: severities, conditions (a rule's finding, with its
//! fingerprint), the rule table, and [`evaluate`], the pure function that turns a cluster's view
//! and evidence into conditions. No state, no storage: the engine ([`crate::alerting::engine`])
//! runs it, silences match its conditions, the outbox words them.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hapulse_protocol::{LinkState, ReplicationRole, VrrpState};
use serde::Serialize;

use crate::config::Thresholds;
use crate::fleet::live::{NodeLive, NodeStatus};
use crate::fleet::view::{ClusterView, Health, LinkMemberView};

/// How bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Wake someone.
    Critical,
    /// Look at it today.
    Warning,
    /// Worth knowing; nothing is broken.
    Info,
}

impl Severity {
    /// `critical` or `warning`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// A rule's finding right now.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// `rule:cluster/what`.
    pub fingerprint: String,
    /// Rule name, one of [`RULES`].
    pub rule: &'static str,
    /// Severity.
    pub severity: Severity,
    /// Cluster.
    pub cluster: String,
    /// Node, when it concerns one.
    pub node_id: Option<String>,
    /// VRRP instance, when it concerns one.
    pub instance: Option<String>,
    /// Replication link, when it concerns one.
    pub link: Option<String>,
    /// One sentence for people.
    pub summary: String,
    /// How long it must hold before the alert fires.
    pub hold: Duration,
}

/// An unplanned change of an instance's MASTER, seen by the server.
#[derive(Debug, Clone, PartialEq)]
pub struct Failover {
    /// Cluster.
    pub cluster: String,
    /// VRRP instance.
    pub instance: String,
    /// The MASTER before.
    pub from: String,
    /// The MASTER now.
    pub to: String,
    /// When the server saw the new MASTER.
    pub at: DateTime<Utc>,
}

/// A VRRP role change (an event the server stored), for the flapping rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleChange {
    /// Cluster.
    pub cluster: String,
    /// VRRP instance.
    pub instance: String,
    /// When the server recorded it.
    pub at: DateTime<Utc>,
}

/// Remembers each instance's last single MASTER, to notice when another node takes over.
/// Starts empty: after a server restart the first MASTER seen is the baseline, not a failover.
#[derive(Debug, Default)]
pub struct MasterTracker {
    last: HashMap<(String, String), String>,
}

impl MasterTracker {
    /// Compares the views with the MASTERs seen before and returns the changes (with `at` =
    /// `now`). An instance with no MASTER or two keeps its last single MASTER, so `a` → none →
    /// `b` is one change from `a` to `b`.
    pub fn observe(&mut self, views: &[ClusterView], now: DateTime<Utc>) -> Vec<Failover> {
        let mut changes = Vec::new();
        for c in views {
            for i in &c.instances {
                let Some(master) = &i.master else { continue };
                let key = (c.name.clone(), i.name.clone());
                match self.last.insert(key, master.clone()) {
                    Some(before) if before != *master => changes.push(Failover {
                        cluster: c.name.clone(),
                        instance: i.name.clone(),
                        from: before,
                        to: master.clone(),
                        at: now,
                    }),
                    _ => {}
                }
            }
        }
        changes
    }
}

/// Everything the rules look at for one cluster besides its view.
#[derive(Debug, Default)]
pub struct Evidence<'a> {
    /// The cluster's nodes as last reported.
    pub nodes: Vec<&'a NodeLive>,
    /// Its VRRP role changes within the flap window.
    pub role_changes: Vec<&'a RoleChange>,
    /// Its unplanned MASTER changes still within `failover_notice_for`.
    pub failovers: Vec<&'a Failover>,
    /// The arbiter's latest verdicts on it, one per VRRP instance.
    pub verdicts: &'a [crate::failover::evidence::Verdict],
    /// Its failover runs that failed in the last 24 h and nobody acknowledged: (id, error).
    pub failed_failovers: Vec<&'a (uuid::Uuid, String)>,
    /// Nodes refused in the last minute for reporting into another cluster than their
    /// credential's: this cluster's nodes that claimed another, and other clusters' nodes that
    /// claimed this one.
    pub cluster_mismatches: Vec<&'a crate::agents::enrollment::Mismatch>,
}

/// `a.b.c` is older than `x.y.z` (numeric parts compared in order; anything unparsable is not
/// older).
fn version_behind(agent: &str, server: &str) -> bool {
    let parts = |v: &str| -> Option<Vec<u64>> {
        v.split(['.', '-', '+'])
            .take(3)
            .map(|p| p.parse().ok())
            .collect()
    };
    match (parts(agent), parts(server)) {
        (Some(a), Some(s)) => a < s,
        _ => false,
    }
}

/// The conditions in a cluster: its view, its nodes' reports and its recent role changes, with
/// the thresholds for that cluster, at `now`.
pub fn evaluate(
    c: &ClusterView,
    evidence: &Evidence<'_>,
    t: &Thresholds,
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let mut f = Findings {
        cluster: &c.name,
        out: Vec::new(),
    };
    nodes_down(&mut f, c);
    instance_rules(&mut f, c);
    replication_rules(&mut f, c, t);
    flapping(&mut f, evidence, t, now);
    recent_failovers(&mut f, evidence, t, now);
    arbiter_verdict(&mut f, evidence);
    failed_failovers(&mut f, evidence);
    agent_rules(&mut f, evidence, t);
    check_failing(&mut f, c, evidence);
    cluster_mismatches(&mut f, evidence);
    arp_rules(&mut f, c);
    pacemaker(&mut f, c);
    keepalived_group_rules(&mut f, c);
    f.out
}

/// Per VIP the nodes' ARP checks asked for ([`crate::fleet::arp`]): `vip_answered_by_several`
/// (critical: an IP-level split brain, clients reach whichever host their neighbour cache
/// names) when more than one host answers, and `vip_answered_by_non_holder` when a host other
/// than the instance's MASTER answers (critical when nobody else does: every client then reaches
/// the wrong host; warning beside the holder, where `vip_answered_by_several` fires too). At
/// once: each is the result of a whole ARP round. They resolve when the next rounds hear the
/// holder alone, or when no node's check of the VIP counts any more.
fn arp_rules(f: &mut Findings<'_>, c: &ClusterView) {
    for i in &c.instances {
        for v in &i.vips {
            let Some(arp) = &v.arp else { continue };
            let about = Subject {
                instance: Some(&i.name),
                ..Subject::default()
            };
            let heard = arp.answered_text();
            if arp.answered_by_several {
                f.push(
                    "vip_answered_by_several",
                    Severity::Critical,
                    format!("{}/{}", i.name, v.vip),
                    about,
                    format!(
                        "{} of {}/{} is answered on the LAN by several hosts: {heard}",
                        v.vip, c.name, i.name
                    ),
                    AT_ONCE,
                );
            }
            if !arp.non_holders.is_empty() {
                let alone = arp.non_holders.len() == arp.answered_by.len();
                f.push(
                    "vip_answered_by_non_holder",
                    if alone {
                        Severity::Critical
                    } else {
                        Severity::Warning
                    },
                    format!("{}/{}", i.name, v.vip),
                    about,
                    format!(
                        "{} of {}/{} is answered on the LAN by {}, not its MASTER ({}): {heard}",
                        v.vip,
                        c.name,
                        i.name,
                        arp.non_holders.join(", "),
                        i.master.as_deref().unwrap_or("none")
                    ),
                    AT_ONCE,
                );
            }
        }
    }
}

/// The Pacemaker verdicts of the cluster's view ([`crate::fleet::pacemaker::verdicts`]), each
/// its own rule: `pacemaker_split` and `pacemaker_no_quorum` after 10 s (Corosync re-forms its
/// membership within a few token timeouts), `pacemaker_resource_stopped` after 30 s (a
/// resource moving or restarting is briefly stopped), `pacemaker_failed_action` and
/// `pacemaker_not_connected` at once.
fn pacemaker(f: &mut Findings<'_>, c: &ClusterView) {
    let Some(p) = &c.pacemaker else { return };
    for v in &p.verdicts {
        let (rule, hold) = match v.kind {
            "pacemaker_split" => ("pacemaker_split", Duration::from_secs(10)),
            "pacemaker_no_quorum" => ("pacemaker_no_quorum", Duration::from_secs(10)),
            "pacemaker_resource_stopped" => ("pacemaker_resource_stopped", Duration::from_secs(30)),
            "pacemaker_failed_action" => ("pacemaker_failed_action", AT_ONCE),
            _ => ("pacemaker_not_connected", AT_ONCE),
        };
        let severity = if v.severity == "critical" {
            Severity::Critical
        } else {
            Severity::Warning
        };
        f.push(
            rule,
            severity,
            v.what.clone(),
            Subject {
                node: v.node_id.as_deref(),
                ..Subject::default()
            },
            format!("{}: {}", c.name, v.message),
            hold,
        );
    }
}

/// `check_failing`: per node not down and per service check it reports not passing (after the
/// check's own fall count, so at once). Critical when the check is tied to an instance the node
/// is MASTER of, or to a link it is primary of (the service people use is failing); warning
/// otherwise (a standby's check: it could not take over). It resolves when the check passes
/// again, when the node stops reporting it, or when the node is down (`node_down` then says
/// more).
fn check_failing(f: &mut Findings<'_>, c: &ClusterView, evidence: &Evidence<'_>) {
    for n in evidence
        .nodes
        .iter()
        .filter(|n| n.status != NodeStatus::Down)
    {
        for check in n.checks.iter().filter(|k| !k.passing) {
            let master_of = check
                .vrrp_instance
                .as_deref()
                .filter(|i| n.instance(i).is_some_and(|i| i.state == VrrpState::Master));
            let primary_of = check.link.as_deref().filter(|l| {
                n.link(l)
                    .is_some_and(|l| l.role == ReplicationRole::Primary)
            });
            let (severity, serves) = match (master_of, primary_of) {
                (Some(i), _) => (Severity::Critical, format!(", MASTER of {i},")),
                (None, Some(l)) => (Severity::Critical, format!(", primary of {l},")),
                (None, None) => (Severity::Warning, String::new()),
            };
            f.push(
                "check_failing",
                severity,
                format!("{}/{}", n.node_id, check.name),
                Subject {
                    node: Some(&n.node_id),
                    instance: check.vrrp_instance.as_deref(),
                    link: check.link.as_deref(),
                },
                format!(
                    "{} on {}{serves} in {}: {} {}",
                    crate::fleet::live::failing_check_text(check),
                    n.node_id,
                    c.name,
                    check.kind.as_str(),
                    check.target
                ),
                AT_ONCE,
            );
        }
    }
}

/// `sync_group_split` (critical): members of one keepalived sync group are MASTER on different
/// nodes, so what must be served together is served apart. `no_live_real_server` (critical):
/// an LVS virtual server on a node that is up has no real server up, so nothing answers behind
/// its address.
fn keepalived_group_rules(f: &mut Findings<'_>, c: &ClusterView) {
    for g in &c.sync_groups {
        if let Some(reason) = &g.reason {
            f.push(
                "sync_group_split",
                Severity::Critical,
                g.name.clone(),
                Subject::default(),
                format!("{} in {}", reason, c.name),
                AT_ONCE,
            );
        }
    }
    for v in c.virtual_servers.iter().filter(|v| v.no_live_real_server()) {
        f.push(
            "no_live_real_server",
            Severity::Critical,
            format!("{}/{}", v.node_id, v.name),
            Subject {
                node: Some(&v.node_id),
                ..Subject::default()
            },
            format!(
                "virtual server {} on {} in {} has no live real server ({} configured, none up)",
                v.name,
                v.node_id,
                c.name,
                v.real_servers.len() + v.unlisted_real_servers
            ),
            AT_ONCE,
        );
    }
}

/// `agent_cluster_mismatch`: a node's agent reported itself into a cluster its credential is
/// not bound to (refused): a misconfigured agent, or one trying to become a vote, a candidate or
/// a master where it does not belong.
fn cluster_mismatches(f: &mut Findings<'_>, evidence: &Evidence<'_>) {
    for m in &evidence.cluster_mismatches {
        f.push(
            "agent_cluster_mismatch",
            Severity::Critical,
            m.node_id.clone(),
            Subject {
                node: Some(&m.node_id),
                ..Subject::default()
            },
            format!(
                "node {} (enrolled in {}) reports itself into {}: refused; fix its agent's cluster, or move the node (POST /api/v1/nodes/{}/move)",
                m.node_id, m.bound, m.claimed, m.node_id
            ),
            AT_ONCE,
        );
    }
}

/// Raised at once, without a hold.
const AT_ONCE: Duration = Duration::ZERO;

/// What a condition concerns besides its cluster: a node, a VRRP instance, a replication link.
#[derive(Debug, Default, Clone, Copy)]
struct Subject<'a> {
    node: Option<&'a str>,
    instance: Option<&'a str>,
    link: Option<&'a str>,
}

/// The conditions found so far in one cluster, in the order the rules found them.
struct Findings<'c> {
    cluster: &'c str,
    out: Vec<Condition>,
}

impl Findings<'_> {
    /// Records a condition of `rule` about `what` (the last part of its fingerprint).
    fn push(
        &mut self,
        rule: &'static str,
        severity: Severity,
        what: String,
        about: Subject<'_>,
        summary: String,
        hold: Duration,
    ) {
        self.out.push(Condition {
            fingerprint: format!("{rule}:{}/{what}", self.cluster),
            rule,
            severity,
            cluster: self.cluster.to_string(),
            node_id: about.node.map(str::to_string),
            instance: about.instance.map(str::to_string),
            link: about.link.map(str::to_string),
            summary,
            hold,
        });
    }
}

/// `node_down`: a node of the cluster sends no heartbeats.
fn nodes_down(f: &mut Findings<'_>, c: &ClusterView) {
    for n in c.nodes.iter().filter(|n| n.status == NodeStatus::Down) {
        f.push(
            "node_down",
            Severity::Critical,
            n.node_id.clone(),
            Subject {
                node: Some(&n.node_id),
                ..Subject::default()
            },
            match &n.refused_report {
                None => format!(
                    "node {} in {} sends no heartbeats (down since {})",
                    n.node_id,
                    c.name,
                    n.status_since.format("%H:%M:%S UTC")
                ),
                Some(r) => format!(
                    "node {} in {} sends heartbeats the server refuses (down since {}): {}",
                    n.node_id,
                    c.name,
                    n.status_since.format("%H:%M:%S UTC"),
                    r.reason
                ),
            },
            AT_ONCE,
        );
    }
}

/// Per VRRP instance: `split_brain` or `no_master` from its health, `vrrp_config_drift` when its
/// members' configurations disagree, then `instance_fault` for
/// each up member in FAULT.
fn instance_rules(f: &mut Findings<'_>, c: &ClusterView) {
    for i in &c.instances {
        let about = Subject {
            instance: Some(&i.name),
            ..Subject::default()
        };
        match i.health {
            Health::SplitBrain => f.push(
                "split_brain",
                Severity::Critical,
                i.name.clone(),
                about,
                format!(
                    "split brain in {}/{}: {}",
                    c.name,
                    i.name,
                    i.reasons.join("; ")
                ),
                AT_ONCE,
            ),
            Health::NoMaster => f.push(
                "no_master",
                Severity::Critical,
                i.name.clone(),
                about,
                format!(
                    "{}/{} has no MASTER: the service behind its VIP is down",
                    c.name, i.name
                ),
                AT_ONCE,
            ),
            _ => {}
        }
        if !i.drift.is_empty() {
            f.push(
                "vrrp_config_drift",
                Severity::Warning,
                i.name.clone(),
                about,
                format!(
                    "the nodes of {}/{} disagree on its keepalived configuration: {}",
                    c.name,
                    i.name,
                    i.drift.join("; ")
                ),
                AT_ONCE,
            );
        }
        for m in i
            .members
            .iter()
            .filter(|m| m.state == VrrpState::Fault && m.node_status == NodeStatus::Up)
        {
            f.push(
                "instance_fault",
                Severity::Warning,
                format!("{}/{}", i.name, m.node_id),
                Subject {
                    node: Some(&m.node_id),
                    ..about
                },
                {
                    let why = m.failing_tracks();
                    if why.is_empty() {
                        format!("{} is in FAULT on {} ({})", i.name, m.node_id, c.name)
                    } else {
                        format!(
                            "{} is in FAULT on {} ({}): {}",
                            i.name,
                            m.node_id,
                            c.name,
                            why.join(", ")
                        )
                    }
                },
                AT_ONCE,
            );
        }
    }
}

/// Per replication link: `split_brain`, then each up secondary's `replication_broken` and
/// `replication_lag`, then `vip_not_on_primary`.
fn replication_rules(f: &mut Findings<'_>, c: &ClusterView, t: &Thresholds) {
    for r in &c.replication {
        let about = Subject {
            link: Some(&r.link),
            ..Subject::default()
        };
        if r.health == Health::SplitBrain {
            f.push(
                "split_brain",
                Severity::Critical,
                r.link.clone(),
                about,
                format!(
                    "split brain on {} in {}: {}",
                    r.link,
                    c.name,
                    r.reasons.join("; ")
                ),
                AT_ONCE,
            );
        }
        for m in r
            .members
            .iter()
            .filter(|m| m.role == ReplicationRole::Secondary && m.node_status == NodeStatus::Up)
        {
            secondary_rules(f, &r.link, m, t);
        }
        // A database on a DRBD device runs on one host at a time: the DRBD resource under it
        // holds the other copies.
        let on_drbd = r.kind != hapulse_protocol::ReplicationKind::Drbd
            && c.replication.iter().any(|d| {
                d.kind == hapulse_protocol::ReplicationKind::Drbd
                    && d.vrrp_instance.is_some()
                    && d.vrrp_instance == r.vrrp_instance
            });
        if !on_drbd {
            redundancy_lost(f, r);
        }
        if r.vip_on_primary == Some(false) {
            f.push(
                "vip_not_on_primary",
                Severity::Warning,
                r.link.clone(),
                Subject {
                    instance: r.vrrp_instance.as_deref(),
                    ..about
                },
                format!(
                    "{} in {}: {}",
                    r.link,
                    c.name,
                    r.reasons.last().cloned().unwrap_or_default()
                ),
                AT_ONCE,
            );
        }
    }
}

/// `redundancy_lost`: a link with one primary (not a database on a DRBD device) has a member
/// that is up but is neither primary nor standby — its database is stopped or does not answer (an old primary a move left
/// stopped, a rejoin that failed) — for a minute (a rejoin restarts it within that). The
/// cluster then runs on fewer copies than it was built with.
fn redundancy_lost(f: &mut Findings<'_>, r: &crate::fleet::view::ReplicationView) {
    let Some(primary) = r.primary.as_deref() else {
        return;
    };
    for m in r.members.iter().filter(|m| {
        m.node_status == NodeStatus::Up
            && m.node_id != primary
            && !matches!(
                m.role,
                ReplicationRole::Primary | ReplicationRole::Secondary
            )
    }) {
        let why = m
            .error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        f.push(
            "redundancy_lost",
            Severity::Critical,
            format!("{}/{}", r.link, m.node_id),
            Subject {
                node: Some(&m.node_id),
                link: Some(&r.link),
                ..Subject::default()
            },
            format!(
                "{} on {} is {}{why}, not a standby of {primary}: the cluster runs without that copy until it rejoins",
                r.link,
                m.node_id,
                m.state.as_str()
            ),
            Duration::from_secs(60),
        );
    }
}

/// An up secondary of `link`: `replication_broken` when its link is not running,
/// `replication_lag` when it is further behind than the thresholds allow.
fn secondary_rules(f: &mut Findings<'_>, link: &str, m: &LinkMemberView, t: &Thresholds) {
    let about = Subject {
        node: Some(&m.node_id),
        link: Some(link),
        ..Subject::default()
    };
    if matches!(
        m.state,
        LinkState::Disconnected | LinkState::Stopped | LinkState::Down
    ) {
        let why = m
            .error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        f.push(
            "replication_broken",
            Severity::Critical,
            format!("{link}/{}", m.node_id),
            about,
            format!("{link} on {} is {}{why}", m.node_id, m.state.as_str()),
            AT_ONCE,
        );
    }
    let over_bytes = m.lag_bytes.is_some_and(|b| b > t.lag_bytes);
    let over_seconds = m.lag_seconds.is_some_and(|l| l > t.lag_seconds);
    if over_bytes || over_seconds {
        f.push(
            "replication_lag",
            Severity::Warning,
            format!("{link}/{}", m.node_id),
            about,
            format!(
                "{link} on {} is {} bytes / {:.1} s behind",
                m.node_id,
                m.lag_bytes.unwrap_or(0),
                m.lag_seconds.unwrap_or(0.0)
            ),
            t.lag_for,
        );
    }
}

/// `flapping`: an instance changed VRRP role more than `flap_max_changes` times within
/// `flap_window` (instances in name order).
fn flapping(f: &mut Findings<'_>, evidence: &Evidence<'_>, t: &Thresholds, now: DateTime<Utc>) {
    let mut changes: HashMap<&str, usize> = HashMap::new();
    for r in evidence
        .role_changes
        .iter()
        .filter(|r| now - r.at <= chrono::Duration::from_std(t.flap_window).unwrap_or_default())
    {
        *changes.entry(r.instance.as_str()).or_default() += 1;
    }
    let mut flapping: Vec<(&str, usize)> = changes
        .into_iter()
        .filter(|(_, n)| *n > t.flap_max_changes as usize)
        .collect();
    flapping.sort();
    let cluster = f.cluster;
    for (instance, n) in flapping {
        f.push(
            "flapping",
            Severity::Warning,
            instance.to_string(),
            Subject {
                instance: Some(instance),
                ..Subject::default()
            },
            format!(
                "{cluster}/{instance} is flapping: {n} VRRP role changes in the last {}",
                humantime::format_duration(t.flap_window)
            ),
            AT_ONCE,
        );
    }
}

/// `failover`: an unplanned MASTER change seen less than `failover_notice_for` ago.
fn recent_failovers(
    f: &mut Findings<'_>,
    evidence: &Evidence<'_>,
    t: &Thresholds,
    now: DateTime<Utc>,
) {
    let cluster = f.cluster;
    for fo in evidence.failovers.iter().filter(|fo| {
        now - fo.at < chrono::Duration::from_std(t.failover_notice_for).unwrap_or_default()
    }) {
        f.push(
            "failover",
            Severity::Warning,
            format!("{}@{}", fo.instance, fo.at.format("%Y-%m-%dT%H:%M:%S%.3fZ")),
            Subject {
                node: Some(&fo.to),
                instance: Some(&fo.instance),
                link: None,
            },
            format!(
                "failover in {cluster}/{}: {} took over from {} at {}",
                fo.instance,
                fo.to,
                fo.from,
                fo.at.format("%H:%M:%S UTC")
            ),
            AT_ONCE,
        );
    }
}

/// `failover_blocked` / `failover_proposed`: the arbiter (unless off) found a failover needed
/// but not allowed, or proposed one for an operator to confirm.
fn arbiter_verdict(f: &mut Findings<'_>, evidence: &Evidence<'_>) {
    for v in evidence
        .verdicts
        .iter()
        .filter(|v| v.mode != crate::failover::decision::Mode::Off)
    {
        arbiter_verdict_on(f, v);
    }
}

/// [`arbiter_verdict`] for one VRRP instance's verdict (an alert per instance).
fn arbiter_verdict_on(f: &mut Findings<'_>, v: &crate::failover::evidence::Verdict) {
    let cluster = f.cluster;
    let (candidate, reason) = (v.decision.candidate(), v.decision.reason());
    let instance = Some(v.instance.as_str());
    let key = format!("arbiter {}", v.instance);
    match &v.decision {
        crate::failover::decision::Decision::Alert { .. } => f.push(
            "failover_blocked",
            Severity::Critical,
            key,
            Subject {
                instance,
                ..Subject::default()
            },
            format!("{cluster}: a failover is needed but not allowed now: {reason}"),
            AT_ONCE,
        ),
        crate::failover::decision::Decision::Propose { .. } => f.push(
            "failover_proposed",
            Severity::Critical,
            key,
            Subject {
                node: candidate,
                instance,
                link: None,
            },
            format!(
                "{cluster}: failover to {} proposed, confirm it on the cluster page: {reason}",
                candidate.unwrap_or("?")
            ),
            AT_ONCE,
        ),
        _ => {}
    }
}

/// `failover_failed`: a failover run that failed recently and nobody acknowledged.
fn failed_failovers(f: &mut Findings<'_>, evidence: &Evidence<'_>) {
    let cluster = f.cluster;
    for (id, error) in evidence.failed_failovers.iter() {
        f.push(
            "failover_failed",
            Severity::Critical,
            id.to_string(),
            Subject::default(),
            format!("{cluster}: failover {id} failed: {error}"),
            AT_ONCE,
        );
    }
}

/// Per up node, from its agent's report: `clock_skew`, `agent_spool`, `agent_version`.
fn agent_rules(f: &mut Findings<'_>, evidence: &Evidence<'_>, t: &Thresholds) {
    for n in evidence.nodes.iter().filter(|n| n.status == NodeStatus::Up) {
        clock_skew(f, n, t);
        agent_spool(f, n, t);
        agent_version(f, n);
    }
}

/// The subject of a rule about one node.
fn node_subject(n: &NodeLive) -> Subject<'_> {
    Subject {
        node: Some(&n.node_id),
        ..Subject::default()
    }
}

/// `clock_skew`: a live report's clock is further from the server's than `clock_skew_max`.
fn clock_skew(f: &mut Findings<'_>, n: &NodeLive, t: &Thresholds) {
    // A report replayed from the spool is old by design; only a live one shows the clock.
    let skew = (n.last_observed_at - n.last_heartbeat_at).num_milliseconds();
    let max = t.clock_skew_max.as_millis() as i64;
    if n.spool_depth == 0 && skew.abs() > max {
        f.push(
            "clock_skew",
            Severity::Warning,
            n.node_id.clone(),
            node_subject(n),
            format!(
                "the clock on {} is {:.1} s {} the server's (tolerated: {})",
                n.node_id,
                skew.abs() as f64 / 1000.0,
                if skew > 0 { "ahead of" } else { "behind" },
                humantime::format_duration(t.clock_skew_max)
            ),
            Duration::from_secs(30),
        );
    }
}

/// `agent_spool`: the agent holds more unsent reports than `spool_depth_max`, or dropped some.
fn agent_spool(f: &mut Findings<'_>, n: &NodeLive, t: &Thresholds) {
    if n.spool_depth > t.spool_depth_max || n.spool_dropped > 0 {
        f.push(
            "agent_spool",
            Severity::Warning,
            n.node_id.clone(),
            node_subject(n),
            format!(
                "the agent on {} has {} unsent reports in its spool and dropped {} since it started",
                n.node_id, n.spool_depth, n.spool_dropped
            ),
            AT_ONCE,
        );
    }
}

/// `agent_version`: the agent is older than the server or speaks another protocol version.
fn agent_version(f: &mut Findings<'_>, n: &NodeLive) {
    let server_version = env!("CARGO_PKG_VERSION");
    if version_behind(&n.agent_version, server_version)
        || n.protocol_version != hapulse_protocol::PROTOCOL_VERSION
    {
        f.push(
            "agent_version",
            Severity::Info,
            n.node_id.clone(),
            node_subject(n),
            format!(
                "the agent on {} runs {} (protocol {}); the server runs {server_version} (protocol {})",
                n.node_id,
                n.agent_version,
                n.protocol_version,
                hapulse_protocol::PROTOCOL_VERSION
            ),
            AT_ONCE,
        );
    }
}

/// The rules' names.
pub const RULES: [&str; 28] = [
    "node_down",
    "no_master",
    "split_brain",
    "instance_fault",
    "vrrp_config_drift",
    "replication_broken",
    "replication_lag",
    "redundancy_lost",
    "vip_not_on_primary",
    "flapping",
    "failover",
    "failover_blocked",
    "failover_proposed",
    "failover_failed",
    "clock_skew",
    "agent_spool",
    "agent_version",
    "agent_cluster_mismatch",
    "check_failing",
    "vip_answered_by_several",
    "vip_answered_by_non_holder",
    "pacemaker_split",
    "pacemaker_no_quorum",
    "pacemaker_resource_stopped",
    "pacemaker_failed_action",
    "pacemaker_not_connected",
    "sync_group_split",
    "no_live_real_server",
];

/// Rules that report an event rather than a state: they end quietly, without a resolved
/// message.
pub const EVENT_RULES: [&str; 1] = ["failover"];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AlertSettings;
    use crate::fleet::live::{Live, NodeLive};
    use crate::fleet::view;
    use hapulse_protocol::testing::{pg_link, report, vrrp_instance};
    use hapulse_protocol::ReplicationLinkReport;

    fn node(
        id: &str,
        state: VrrpState,
        held: bool,
        status: NodeStatus,
        link: Option<(ReplicationRole, LinkState, u64)>,
    ) -> NodeLive {
        let mut instance = vrrp_instance("VI_1", state, "10.0.0.1", held);
        instance.vrid = Some(1);
        instance.interface = None;
        let mut report = report(id, "c").instance(instance);
        if let Some((role, state, lag)) = link {
            report = report.link(ReplicationLinkReport {
                lag_seconds: Some(0.0),
                ..pg_link(role, state, lag)
            });
        }
        let report = report.build();
        let mut n = NodeLive::from_report(&report, Utc::now(), tokio::time::Instant::now());
        n.status = status;
        n
    }

    fn rules(nodes: Vec<NodeLive>) -> Vec<(&'static str, Severity, String)> {
        let mut live = Live::default();
        for n in nodes {
            live.nodes.insert(n.node_id.clone(), n);
        }
        let view = view::cluster_view(&live, "c", Utc::now()).unwrap();
        let evidence = Evidence {
            nodes: live.nodes.values().collect(),
            ..Default::default()
        };
        evaluate(
            &view,
            &evidence,
            &AlertSettings::default().thresholds("c"),
            Utc::now(),
        )
        .into_iter()
        .map(|c| (c.rule, c.severity, c.fingerprint))
        .collect()
    }

    #[test]
    fn a_split_sync_group_and_a_virtual_server_without_real_servers_alert() {
        use hapulse_protocol::{RealServerReport, SyncGroupReport, VirtualServerReport};
        // VI_1 (group G1 with VI_2) is MASTER on a; VI_2 is MASTER on b.
        let mut a = node("a", VrrpState::Master, true, NodeStatus::Up, None);
        let mut b = node("b", VrrpState::Backup, false, NodeStatus::Up, None);
        let mut vi2_a = vrrp_instance("VI_2", VrrpState::Backup, "10.0.0.2", false);
        let mut vi2_b = vrrp_instance("VI_2", VrrpState::Master, "10.0.0.2", true);
        for (n, vi2) in [(&mut a, &mut vi2_a), (&mut b, &mut vi2_b)] {
            n.instances[0].sync_group = Some("G1".into());
            vi2.sync_group = Some("G1".into());
            n.instances.push(vi2.clone());
            n.sync_groups = vec![SyncGroupReport {
                name: "G1".into(),
                state: VrrpState::Master,
                members: vec!["VI_1".into(), "VI_2".into()],
                tracking_weight: Some(true),
            }];
        }
        a.virtual_servers = vec![VirtualServerReport {
            name: "[10.0.0.1]:tcp:80".into(),
            up: false,
            real_servers: vec![RealServerReport {
                address: "[10.0.0.11]:tcp:80".into(),
                up: false,
                weight: None,
            }],
            omitted_up: 0,
            omitted_down: 0,
        }];
        let found = rules(vec![a, b]);
        assert!(
            found.contains(&(
                "sync_group_split",
                Severity::Critical,
                "sync_group_split:c/G1".into()
            )),
            "{found:?}"
        );
        assert!(
            found.contains(&(
                "no_live_real_server",
                Severity::Critical,
                "no_live_real_server:c/a/[10.0.0.1]:tcp:80".into()
            )),
            "{found:?}"
        );
    }

    #[test]
    fn a_healthy_pair_raises_nothing() {
        let found = rules(vec![
            node(
                "a",
                VrrpState::Master,
                true,
                NodeStatus::Up,
                Some((ReplicationRole::Primary, LinkState::Streaming, 0)),
            ),
            node(
                "b",
                VrrpState::Backup,
                false,
                NodeStatus::Up,
                Some((ReplicationRole::Secondary, LinkState::Streaming, 0)),
            ),
        ]);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn nodes_that_disagree_on_the_advert_interval_raise_a_drift_warning() {
        let with_advert = |id, state, held, ms| {
            let mut n = node(id, state, held, NodeStatus::Up, None);
            n.instances[0].advert_interval_ms = Some(ms);
            n
        };
        let found = rules(vec![
            with_advert("a", VrrpState::Master, true, 1000),
            with_advert("b", VrrpState::Backup, false, 1000),
        ]);
        assert!(found.is_empty(), "{found:?}");
        let found = rules(vec![
            with_advert("a", VrrpState::Master, true, 1000),
            with_advert("b", VrrpState::Backup, false, 2000),
        ]);
        assert_eq!(
            found,
            [(
                "vrrp_config_drift",
                Severity::Warning,
                "vrrp_config_drift:c/VI_1".to_string()
            )]
        );
    }

    #[test]
    fn vips_answered_by_a_stranger_or_the_wrong_host_raise_the_arp_rules() {
        let with_arp = |id, state, held: bool, mac: &str, heard: &[&str]| {
            let mut n = node(id, state, held, NodeStatus::Up, None);
            n.arp = report(id, "c")
                .arp(
                    &[("eth0", mac)],
                    vec![hapulse_protocol::testing::arp_probe(
                        "VI_1", "10.0.0.1", held, heard,
                    )],
                )
                .build()
                .arp;
            n
        };
        let (mac_a, mac_b, stranger) = (
            "52:54:00:00:00:0a",
            "52:54:00:00:00:0b",
            "52:54:00:00:00:99",
        );
        let fine = rules(vec![
            with_arp("a", VrrpState::Master, true, mac_a, &[]),
            with_arp("b", VrrpState::Backup, false, mac_b, &[mac_a]),
        ]);
        assert!(fine.is_empty(), "{fine:?}");
        let found = rules(vec![
            with_arp("a", VrrpState::Master, true, mac_a, &[stranger]),
            with_arp("b", VrrpState::Backup, false, mac_b, &[mac_a, stranger]),
        ]);
        assert_eq!(
            found,
            [
                (
                    "vip_answered_by_several",
                    Severity::Critical,
                    "vip_answered_by_several:c/VI_1/10.0.0.1".to_string()
                ),
                (
                    "vip_answered_by_non_holder",
                    Severity::Warning,
                    "vip_answered_by_non_holder:c/VI_1/10.0.0.1".to_string()
                )
            ]
        );
        // The master lost the address, a stranger answers alone: critical.
        let found = rules(vec![
            with_arp("a", VrrpState::Master, false, mac_a, &[stranger]),
            with_arp("b", VrrpState::Backup, false, mac_b, &[stranger]),
        ]);
        assert!(
            found.contains(&(
                "vip_answered_by_non_holder",
                Severity::Critical,
                "vip_answered_by_non_holder:c/VI_1/10.0.0.1".to_string()
            )),
            "{found:?}"
        );
    }

    #[test]
    fn a_database_left_stopped_beside_the_primary_is_lost_redundancy() {
        let primary = || {
            node(
                "a",
                VrrpState::Master,
                true,
                NodeStatus::Up,
                Some((ReplicationRole::Primary, LinkState::Streaming, 0)),
            )
        };
        // b is up, its database stopped (the probe says down, role unknown).
        let found = rules(vec![
            primary(),
            node(
                "b",
                VrrpState::Backup,
                false,
                NodeStatus::Up,
                Some((ReplicationRole::Unknown, LinkState::Down, 0)),
            ),
        ]);
        assert!(
            found.contains(&(
                "redundancy_lost",
                Severity::Critical,
                "redundancy_lost:c/postgresql:pg/b".into()
            )),
            "{found:?}"
        );
        // A node that is down is node_down's; a standby, replication_broken's or nobody's.
        for (status, role, state) in [
            (NodeStatus::Down, ReplicationRole::Unknown, LinkState::Down),
            (
                NodeStatus::Up,
                ReplicationRole::Secondary,
                LinkState::Disconnected,
            ),
            (
                NodeStatus::Up,
                ReplicationRole::Secondary,
                LinkState::Streaming,
            ),
        ] {
            let found = rules(vec![
                primary(),
                node(
                    "b",
                    VrrpState::Backup,
                    false,
                    status,
                    Some((role, state, 0)),
                ),
            ]);
            assert!(
                !found.iter().any(|(r, _, _)| *r == "redundancy_lost"),
                "{status:?} {role:?} {state:?}: {found:?}"
            );
        }
    }

    #[test]
    fn ha_failure_modes() {
        let found = rules(vec![
            node(
                "a",
                VrrpState::Master,
                true,
                NodeStatus::Down,
                Some((ReplicationRole::Primary, LinkState::Streaming, 0)),
            ),
            node(
                "b",
                VrrpState::Backup,
                false,
                NodeStatus::Up,
                Some((ReplicationRole::Secondary, LinkState::Disconnected, 1 << 30)),
            ),
        ]);
        let names: Vec<&str> = found.iter().map(|f| f.0).collect();
        for expected in [
            "node_down",
            "no_master",
            "replication_broken",
            "replication_lag",
        ] {
            assert!(
                names.contains(&expected),
                "{expected} missing from {found:?}"
            );
        }
        assert!(found
            .iter()
            .any(|f| f.2 == "node_down:c/a" && f.1 == Severity::Critical));

        let found = rules(vec![
            node("a", VrrpState::Master, true, NodeStatus::Up, None),
            node("b", VrrpState::Master, true, NodeStatus::Up, None),
        ]);
        assert_eq!(
            found.iter().filter(|f| f.0 == "split_brain").count(),
            1,
            "{found:?}"
        );

        let found = rules(vec![
            node(
                "a",
                VrrpState::Backup,
                false,
                NodeStatus::Up,
                Some((ReplicationRole::Primary, LinkState::Streaming, 0)),
            ),
            node(
                "b",
                VrrpState::Master,
                true,
                NodeStatus::Up,
                Some((ReplicationRole::Secondary, LinkState::Streaming, 0)),
            ),
            node("c", VrrpState::Fault, false, NodeStatus::Up, None),
        ]);
        let names: Vec<&str> = found.iter().map(|f| f.0).collect();
        assert!(
            names.contains(&"vip_not_on_primary") && names.contains(&"instance_fault"),
            "{found:?}"
        );
    }

    fn conditions(
        nodes: Vec<NodeLive>,
        role_changes: &[RoleChange],
        failovers: &[Failover],
        t: &Thresholds,
    ) -> Vec<Condition> {
        let mut live = Live::default();
        for n in nodes {
            live.nodes.insert(n.node_id.clone(), n);
        }
        let view = view::cluster_view(&live, "c", Utc::now()).unwrap();
        let evidence = Evidence {
            nodes: live.nodes.values().collect(),
            role_changes: role_changes.iter().collect(),
            failovers: failovers.iter().collect(),
            ..Default::default()
        };
        evaluate(&view, &evidence, t, Utc::now())
    }

    fn pair() -> Vec<NodeLive> {
        vec![
            node("a", VrrpState::Master, true, NodeStatus::Up, None),
            node("b", VrrpState::Backup, false, NodeStatus::Up, None),
        ]
    }

    #[test]
    fn flapping_counts_role_changes_within_the_window() {
        let t = AlertSettings::default().thresholds("c");
        let change = |secs_ago: i64| RoleChange {
            cluster: "c".into(),
            instance: "VI_1".into(),
            at: Utc::now() - chrono::Duration::seconds(secs_ago),
        };
        // Four changes are allowed; a fifth, or five old ones, is not flapping.
        let four: Vec<RoleChange> = (0..4).map(|i| change(i * 10)).collect();
        assert!(conditions(pair(), &four, &[], &t).is_empty());
        let old: Vec<RoleChange> = (0..5).map(|i| change(3600 + i)).collect();
        assert!(conditions(pair(), &old, &[], &t).is_empty());
        let five: Vec<RoleChange> = (0..5).map(|i| change(i * 10)).collect();
        let found = conditions(pair(), &five, &[], &t);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].fingerprint, "flapping:c/VI_1");
        assert!(
            found[0].summary.contains("5 VRRP role changes"),
            "{found:?}"
        );
    }

    #[test]
    fn a_new_master_is_a_failover_once_and_for_a_while() {
        let mut tracker = MasterTracker::default();
        let view = |master: &str| {
            let mut live = Live::default();
            for (id, state) in [("a", VrrpState::Backup), ("b", VrrpState::Backup)] {
                let state = if id == master {
                    VrrpState::Master
                } else {
                    state
                };
                live.nodes.insert(
                    id.into(),
                    node(id, state, id == master, NodeStatus::Up, None),
                );
            }
            vec![view::cluster_view(&live, "c", Utc::now()).unwrap()]
        };
        let now = Utc::now();
        // The first MASTER seen is a baseline, not a failover (a server restart).
        assert!(tracker.observe(&view("a"), now).is_empty());
        assert!(tracker.observe(&view("a"), now).is_empty());
        // No MASTER for a moment, then b: one failover from a to b.
        assert!(tracker.observe(&view("none"), now).is_empty());
        let changes = tracker.observe(&view("b"), now);
        assert_eq!(changes.len(), 1);
        assert_eq!(
            (changes[0].from.as_str(), changes[0].to.as_str()),
            ("a", "b")
        );

        let t = AlertSettings::default().thresholds("c");
        let found = conditions(pair(), &[], &changes, &t);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].rule, found[0].severity),
            ("failover", Severity::Warning)
        );
        assert!(found[0].summary.contains("b took over from a"), "{found:?}");
        let mut stale = changes.clone();
        stale[0].at = Utc::now() - chrono::Duration::minutes(6);
        assert!(conditions(pair(), &[], &stale, &t).is_empty());
    }

    #[test]
    fn agent_clock_spool_and_version_rules() {
        let t = AlertSettings::default().thresholds("c");
        let mut nodes = pair();
        nodes[0].last_observed_at = nodes[0].last_heartbeat_at + chrono::Duration::seconds(8);
        nodes[1].spool_depth = 301;
        let found = conditions(nodes, &[], &[], &t);
        let skew = found.iter().find(|c| c.rule == "clock_skew").unwrap();
        assert!(skew.summary.contains("8.0 s ahead of"), "{skew:?}");
        assert_eq!(skew.hold, Duration::from_secs(30));
        assert!(
            found.iter().any(|c| c.fingerprint == "agent_spool:c/b"),
            "{found:?}"
        );

        // A report replayed from a spool is old, not skewed.
        let mut nodes = pair();
        nodes[0].last_observed_at = nodes[0].last_heartbeat_at - chrono::Duration::minutes(5);
        nodes[0].spool_depth = 10;
        assert!(conditions(nodes, &[], &[], &t).is_empty());

        let mut nodes = pair();
        nodes[1].agent_version = "0.0.9".into();
        nodes[0].spool_dropped = 1;
        let found = conditions(nodes, &[], &[], &t);
        let version = found.iter().find(|c| c.rule == "agent_version").unwrap();
        assert_eq!(version.severity, Severity::Info);
        assert!(
            found.iter().any(|c| c.fingerprint == "agent_spool:c/a"),
            "{found:?}"
        );
        assert!(version_behind("0.1.0", "0.1.1") && version_behind("0.9.9", "1.0.0"));
        assert!(!version_behind("0.1.0", "0.1.0") && !version_behind("1.0.0", "0.9.0"));
        assert!(!version_behind("dev", "0.1.0"));
    }

    #[test]
    fn thresholds_can_be_set_per_cluster() {
        let mut s = AlertSettings::default();
        s.clusters.insert(
            "batch".into(),
            crate::config::ClusterThresholds {
                lag_bytes_threshold: Some(1 << 40),
                flap_max_changes: Some(20),
                ..Default::default()
            },
        );
        let batch = s.thresholds("batch");
        let other = s.thresholds("prod");
        assert_eq!((batch.lag_bytes, batch.flap_max_changes), (1 << 40, 20));
        assert_eq!((other.lag_bytes, other.flap_max_changes), (64 << 20, 4));
        assert_eq!(batch.lag_for, other.lag_for);
    }
}
