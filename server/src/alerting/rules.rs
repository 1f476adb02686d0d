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
use crate::fleet::view::{ClusterView, Health};

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
    /// The arbiter's latest verdict on it.
    pub verdict: Option<&'a crate::failover::evidence::Verdict>,
    /// Its failover runs that failed in the last 24 h and nobody acknowledged: (id, error).
    pub failed_failovers: Vec<&'a (uuid::Uuid, String)>,
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
    let mut out = Vec::new();
    let mut push = |rule: &'static str,
                    severity,
                    what: String,
                    node: Option<&str>,
                    instance: Option<&str>,
                    link: Option<&str>,
                    summary: String,
                    hold| {
        out.push(Condition {
            fingerprint: format!("{rule}:{}/{what}", c.name),
            rule,
            severity,
            cluster: c.name.clone(),
            node_id: node.map(str::to_string),
            instance: instance.map(str::to_string),
            link: link.map(str::to_string),
            summary,
            hold,
        });
    };
    let at_once = Duration::ZERO;
    for n in c.nodes.iter().filter(|n| n.status == NodeStatus::Down) {
        push(
            "node_down",
            Severity::Critical,
            n.node_id.clone(),
            Some(&n.node_id),
            None,
            None,
            format!(
                "node {} in {} sends no heartbeats (down since {})",
                n.node_id,
                c.name,
                n.status_since.format("%H:%M:%S UTC")
            ),
            at_once,
        );
    }
    for i in &c.instances {
        match i.health {
            Health::SplitBrain => push(
                "split_brain",
                Severity::Critical,
                i.name.clone(),
                None,
                Some(&i.name),
                None,
                format!(
                    "split brain in {}/{}: {}",
                    c.name,
                    i.name,
                    i.reasons.join("; ")
                ),
                at_once,
            ),
            Health::NoMaster => push(
                "no_master",
                Severity::Critical,
                i.name.clone(),
                None,
                Some(&i.name),
                None,
                format!(
                    "{}/{} has no MASTER: the service behind its VIP is down",
                    c.name, i.name
                ),
                at_once,
            ),
            _ => {}
        }
        for m in i
            .members
            .iter()
            .filter(|m| m.state == VrrpState::Fault && m.node_status == NodeStatus::Up)
        {
            push(
                "instance_fault",
                Severity::Warning,
                format!("{}/{}", i.name, m.node_id),
                Some(&m.node_id),
                Some(&i.name),
                None,
                format!("{} is in FAULT on {} ({})", i.name, m.node_id, c.name),
                at_once,
            );
        }
    }
    for r in &c.replication {
        if r.health == Health::SplitBrain {
            push(
                "split_brain",
                Severity::Critical,
                r.link.clone(),
                None,
                None,
                Some(&r.link),
                format!(
                    "split brain on {} in {}: {}",
                    r.link,
                    c.name,
                    r.reasons.join("; ")
                ),
                at_once,
            );
        }
        for m in r
            .members
            .iter()
            .filter(|m| m.role == ReplicationRole::Secondary && m.node_status == NodeStatus::Up)
        {
            if matches!(
                m.state,
                LinkState::Disconnected | LinkState::Stopped | LinkState::Down
            ) {
                let why = m
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                push(
                    "replication_broken",
                    Severity::Critical,
                    format!("{}/{}", r.link, m.node_id),
                    Some(&m.node_id),
                    None,
                    Some(&r.link),
                    format!("{} on {} is {}{why}", r.link, m.node_id, m.state.as_str()),
                    at_once,
                );
            }
            let over_bytes = m.lag_bytes.is_some_and(|b| b > t.lag_bytes);
            let over_seconds = m.lag_seconds.is_some_and(|l| l > t.lag_seconds);
            if over_bytes || over_seconds {
                push(
                    "replication_lag",
                    Severity::Warning,
                    format!("{}/{}", r.link, m.node_id),
                    Some(&m.node_id),
                    None,
                    Some(&r.link),
                    format!(
                        "{} on {} is {} bytes / {:.1} s behind",
                        r.link,
                        m.node_id,
                        m.lag_bytes.unwrap_or(0),
                        m.lag_seconds.unwrap_or(0.0)
                    ),
                    t.lag_for,
                );
            }
        }
        if r.vip_on_primary == Some(false) {
            push(
                "vip_not_on_primary",
                Severity::Warning,
                r.link.clone(),
                None,
                r.vrrp_instance.as_deref(),
                Some(&r.link),
                format!(
                    "{} in {}: {}",
                    r.link,
                    c.name,
                    r.reasons.last().cloned().unwrap_or_default()
                ),
                at_once,
            );
        }
    }
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
    for (instance, n) in flapping {
        push(
            "flapping",
            Severity::Warning,
            instance.to_string(),
            None,
            Some(instance),
            None,
            format!(
                "{}/{instance} is flapping: {n} VRRP role changes in the last {}",
                c.name,
                humantime::format_duration(t.flap_window)
            ),
            at_once,
        );
    }
    for f in evidence.failovers.iter().filter(|f| {
        now - f.at < chrono::Duration::from_std(t.failover_notice_for).unwrap_or_default()
    }) {
        push(
            "failover",
            Severity::Warning,
            format!("{}@{}", f.instance, f.at.format("%Y-%m-%dT%H:%M:%S%.3fZ")),
            Some(&f.to),
            Some(&f.instance),
            None,
            format!(
                "failover in {}/{}: {} took over from {} at {}",
                c.name,
                f.instance,
                f.to,
                f.from,
                f.at.format("%H:%M:%S UTC")
            ),
            at_once,
        );
    }
    if let Some(v) = evidence
        .verdict
        .filter(|v| v.mode != crate::failover::decision::Mode::Off)
    {
        let (candidate, reason) = (v.decision.candidate(), v.decision.reason());
        match &v.decision {
            crate::failover::decision::Decision::Alert { .. } => push(
                "failover_blocked",
                Severity::Critical,
                "arbiter".into(),
                None,
                v.evidence.as_ref().map(|g| g.instance.as_str()),
                None,
                format!(
                    "{}: a failover is needed but not allowed now: {reason}",
                    c.name
                ),
                at_once,
            ),
            crate::failover::decision::Decision::Propose { .. } => push(
                "failover_proposed",
                Severity::Critical,
                "arbiter".into(),
                candidate,
                v.evidence.as_ref().map(|g| g.instance.as_str()),
                None,
                format!(
                    "{}: failover to {} proposed, confirm it on the cluster page: {reason}",
                    c.name,
                    candidate.unwrap_or("?")
                ),
                at_once,
            ),
            _ => {}
        }
    }
    for (id, error) in evidence.failed_failovers.iter() {
        push(
            "failover_failed",
            Severity::Critical,
            id.to_string(),
            None,
            None,
            None,
            format!("{}: failover {id} failed: {error}", c.name),
            at_once,
        );
    }
    for n in evidence.nodes.iter().filter(|n| n.status == NodeStatus::Up) {
        // A report replayed from the spool is old by design; only a live one shows the clock.
        let skew = (n.last_observed_at - n.last_heartbeat_at).num_milliseconds();
        let max = t.clock_skew_max.as_millis() as i64;
        if n.spool_depth == 0 && skew.abs() > max {
            push(
                "clock_skew",
                Severity::Warning,
                n.node_id.clone(),
                Some(&n.node_id),
                None,
                None,
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
        if n.spool_depth > t.spool_depth_max || n.spool_dropped > 0 {
            push(
                "agent_spool",
                Severity::Warning,
                n.node_id.clone(),
                Some(&n.node_id),
                None,
                None,
                format!(
                    "the agent on {} has {} unsent reports in its spool and dropped {} since it started",
                    n.node_id, n.spool_depth, n.spool_dropped
                ),
                at_once,
            );
        }
        let server_version = env!("CARGO_PKG_VERSION");
        if version_behind(&n.agent_version, server_version)
            || n.protocol_version != hapulse_protocol::PROTOCOL_VERSION
        {
            push(
                "agent_version",
                Severity::Info,
                n.node_id.clone(),
                Some(&n.node_id),
                None,
                None,
                format!(
                    "the agent on {} runs {} (protocol {}); the server runs {server_version} (protocol {})",
                    n.node_id,
                    n.agent_version,
                    n.protocol_version,
                    hapulse_protocol::PROTOCOL_VERSION
                ),
                at_once,
            );
        }
    }
    out
}

/// The rules' names.
pub const RULES: [&str; 15] = [
    "node_down",
    "no_master",
    "split_brain",
    "instance_fault",
    "replication_broken",
    "replication_lag",
    "vip_not_on_primary",
    "flapping",
    "failover",
    "failover_blocked",
    "failover_proposed",
    "failover_failed",
    "clock_skew",
    "agent_spool",
    "agent_version",
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
