//! Verdicts on a Pacemaker cluster from what its members' agents report (`crm_mon`'s view on
//! each host, [`PacemakerReport`]).
//!
//! Every member reports the whole cluster as its own partition sees it. Members that name
//! different DCs, or see different nodes online, are in different partitions: a split. The
//! cluster-wide verdicts (a resource stopped, failed actions) are read from the partitions that
//! have quorum (the one Pacemaker lets run resources), or from every partition when none has.
//! Pure functions: the alert rules and the cluster's API answer and page call them.

use std::collections::BTreeSet;

use hapulse_protocol::PacemakerReport;
use serde::Serialize;

use crate::fleet::live::{NodeLive, NodeStatus};

/// A Pacemaker cluster as hapulse shows it: its verdicts, each member's partition, and the
/// status as one member shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PacemakerClusterView {
    /// Findings ([`verdicts`]), worst first as found: split, no quorum, stopped resources,
    /// failed actions.
    pub verdicts: Vec<PacemakerVerdict>,
    /// Each member that reports Pacemaker, by node id: its partition as it sees it.
    pub members: Vec<PacemakerMemberView>,
    /// The member whose view `status` is: a member of a partition with quorum, the DC itself
    /// first.
    pub reported_by: Option<String>,
    /// The cluster's nodes, resources and failed actions as `reported_by` sees them.
    pub status: Option<PacemakerReport>,
}

/// One member's partition.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PacemakerMemberView {
    /// hapulse node id.
    pub node_id: String,
    /// Detector verdict on the node (a down node's view is not used for verdicts).
    pub node_status: NodeStatus,
    /// Its Pacemaker node name, when its host name is one.
    pub local_node: Option<String>,
    /// `crm_mon` answered.
    pub connected: bool,
    /// Why not.
    pub error: Option<String>,
    /// The DC its partition names.
    pub dc: Option<String>,
    /// Its partition has quorum.
    pub with_quorum: bool,
    /// Nodes online in its partition, sorted.
    pub online: Vec<String>,
}

/// The Pacemaker part of a cluster's view, None when none of `nodes` reports Pacemaker.
pub fn cluster_view(nodes: &[&NodeLive]) -> Option<PacemakerClusterView> {
    let reporting: Vec<(&NodeLive, &PacemakerReport)> = nodes
        .iter()
        .filter_map(|n| Some((*n, n.pacemaker.as_ref()?)))
        .collect();
    if reporting.is_empty() {
        return None;
    }
    let live: Vec<(&str, &PacemakerReport)> = reporting
        .iter()
        .filter(|(n, _)| n.status != NodeStatus::Down)
        .map(|(n, r)| (n.node_id.as_str(), *r))
        .collect();
    let speaker = live
        .iter()
        .filter(|(_, r)| r.connected)
        .max_by_key(|(_, r)| {
            (
                r.with_quorum,
                r.local_node.is_some() && r.local_node == r.dc,
            )
        });
    Some(PacemakerClusterView {
        verdicts: verdicts(&live),
        members: reporting
            .iter()
            .map(|(n, r)| PacemakerMemberView {
                node_id: n.node_id.clone(),
                node_status: n.status,
                local_node: r.local_node.clone(),
                connected: r.connected,
                error: r.error.clone(),
                dc: r.dc.clone(),
                with_quorum: r.with_quorum,
                online: r.online_nodes().into_iter().map(str::to_string).collect(),
            })
            .collect(),
        reported_by: speaker.map(|(n, _)| n.to_string()),
        status: speaker.map(|(_, r)| (*r).clone()),
    })
}

/// One finding on a Pacemaker cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PacemakerVerdict {
    /// What: `pacemaker_split` (members in different partitions), `pacemaker_no_quorum` (a
    /// member's partition has no quorum), `pacemaker_resource_stopped` (a resource not running
    /// although nobody set its `target-role` to `Stopped`, or blocked), `pacemaker_failed_action`
    /// (a failed resource operation not yet cleaned up), `pacemaker_not_connected` (`crm_mon`
    /// on a member gives no status).
    pub kind: &'static str,
    /// `critical` or `warning`.
    pub severity: &'static str,
    /// The hapulse node it concerns, when one (the member that reports it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// The Pacemaker resource it concerns, when one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Stable part of the alert's fingerprint: the resource, `resource/task/node`, a node id.
    pub what: String,
    /// One sentence for people.
    pub message: String,
}

/// One member's partition: its DC and the nodes it sees online.
fn partition(r: &PacemakerReport) -> (Option<&str>, Vec<&str>) {
    (r.dc.as_deref(), r.online_nodes())
}

/// The verdicts on one cluster, from `members`: (hapulse node id, its report), for the nodes
/// that are not down, in node id order.
pub fn verdicts(members: &[(&str, &PacemakerReport)]) -> Vec<PacemakerVerdict> {
    let mut out = Vec::new();
    for (node, r) in members.iter().filter(|(_, r)| !r.connected) {
        out.push(PacemakerVerdict {
            kind: "pacemaker_not_connected",
            severity: "warning",
            node_id: Some(node.to_string()),
            resource: None,
            what: node.to_string(),
            message: format!(
                "crm_mon on {node} gives no status: {}",
                r.error.as_deref().unwrap_or("no reason given")
            ),
        });
    }
    let connected: Vec<(&str, &PacemakerReport)> = members
        .iter()
        .filter(|(_, r)| r.connected)
        .copied()
        .collect();
    split(&connected, &mut out);
    for (node, r) in connected.iter().filter(|(_, r)| !r.with_quorum) {
        out.push(PacemakerVerdict {
            kind: "pacemaker_no_quorum",
            severity: "critical",
            node_id: Some(node.to_string()),
            resource: None,
            what: node.to_string(),
            message: format!(
                "the partition of {node} (DC {}, online {}) has no quorum: Pacemaker applies its \
                 no-quorum-policy there",
                r.dc.as_deref().unwrap_or("none"),
                list(&r.online_nodes())
            ),
        });
    }
    let quorate: Vec<_> = connected.iter().filter(|(_, r)| r.with_quorum).collect();
    let views: Vec<_> = if quorate.is_empty() {
        connected.iter().collect()
    } else {
        quorate
    };
    resources(&views, &mut out);
    out
}

/// `pacemaker_split` when the connected members are in more than one partition.
fn split(connected: &[(&str, &PacemakerReport)], out: &mut Vec<PacemakerVerdict>) {
    let partitions: BTreeSet<_> = connected.iter().map(|(_, r)| partition(r)).collect();
    if partitions.len() < 2 {
        return;
    }
    let sides: Vec<String> = connected
        .iter()
        .map(|(node, r)| {
            let (dc, online) = partition(r);
            format!(
                "{node} sees DC {} with {}",
                dc.unwrap_or("none"),
                list(&online)
            )
        })
        .collect();
    out.push(PacemakerVerdict {
        kind: "pacemaker_split",
        severity: "critical",
        node_id: None,
        resource: None,
        what: "partitions".into(),
        message: format!(
            "members are in {} partitions: {}",
            partitions.len(),
            sides.join("; ")
        ),
    });
}

/// Resources stopped or blocked and failed actions, each once across the `views`.
fn resources(views: &[&(&str, &PacemakerReport)], out: &mut Vec<PacemakerVerdict>) {
    let mut seen = BTreeSet::new();
    for (node, r) in views {
        for x in &r.resources {
            let stopped = x.stopped_unexpectedly();
            if !(stopped || x.blocked) || !seen.insert(("stopped", x.id.clone())) {
                continue;
            }
            let how = if x.blocked {
                "is blocked (Pacemaker cannot start or stop it until someone acts)"
            } else {
                "is stopped, and its target-role does not ask for that"
            };
            out.push(PacemakerVerdict {
                kind: "pacemaker_resource_stopped",
                severity: "critical",
                node_id: None,
                resource: Some(x.id.clone()),
                what: x.id.clone(),
                message: format!("resource {} ({}) {how}, as {node} sees it", x.id, x.agent),
            });
        }
        for f in &r.failures {
            let what = format!("{}/{}/{}", f.resource, f.task, f.node);
            if !seen.insert(("failed", what.clone())) {
                continue;
            }
            out.push(PacemakerVerdict {
                kind: "pacemaker_failed_action",
                severity: "warning",
                node_id: None,
                resource: Some(f.resource.clone()),
                what,
                message: format!(
                    "{} of {} failed on {} (exit {}: {}){}; crm_resource --cleanup clears it",
                    f.task,
                    f.resource,
                    f.node,
                    f.exit_code,
                    f.exit_reason,
                    f.last_rc_change
                        .as_deref()
                        .map(|t| format!(" at {t}"))
                        .unwrap_or_default()
                ),
            });
        }
    }
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "no node online".into()
    } else {
        format!("[{}]", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hapulse_protocol::{PacemakerFailure, PacemakerNode, PacemakerResource};

    fn node(name: &str, online: bool) -> PacemakerNode {
        PacemakerNode {
            name: name.into(),
            online,
            standby: false,
            maintenance: false,
            unclean: false,
            resources_running: 0,
        }
    }

    fn resource(on: &[&str], target_role: Option<&str>) -> PacemakerResource {
        PacemakerResource {
            id: "dummy".into(),
            parent: None,
            agent: "ocf:pacemaker:Dummy".into(),
            role: if on.is_empty() { "Stopped" } else { "Started" }.into(),
            target_role: target_role.map(str::to_string),
            active: !on.is_empty(),
            failed: false,
            managed: true,
            blocked: false,
            nodes: on.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The view of a member: DC `dc`, nodes h1 and h2 with those in `online` online.
    fn view(dc: &str, quorum: bool, online: &[&str], on: &[&str]) -> PacemakerReport {
        PacemakerReport {
            connected: true,
            error: None,
            local_node: None,
            dc: Some(dc.into()),
            with_quorum: quorum,
            nodes: ["h1", "h2"]
                .iter()
                .map(|n| node(n, online.contains(n)))
                .collect(),
            resources: vec![resource(on, None)],
            resources_omitted: 0,
            failures: Vec::new(),
            failures_omitted: 0,
        }
    }

    fn kinds(v: &[PacemakerVerdict]) -> Vec<(&str, Option<&str>)> {
        v.iter().map(|v| (v.kind, v.node_id.as_deref())).collect()
    }

    #[test]
    fn a_healthy_cluster_has_no_verdict() {
        let a = view("h1", true, &["h1", "h2"], &["h1"]);
        let b = a.clone();
        assert_eq!(verdicts(&[("db1", &a), ("db2", &b)]), []);
    }

    #[test]
    fn members_with_different_dcs_are_a_split_and_each_side_lacks_quorum() {
        // As captured from the lab cluster with its link cut: each side its own DC.
        let a = view("h1", false, &["h1"], &[]);
        let b = view("h2", false, &["h2"], &[]);
        let v = verdicts(&[("db1", &a), ("db2", &b)]);
        assert_eq!(
            kinds(&v),
            [
                ("pacemaker_split", None),
                ("pacemaker_no_quorum", Some("db1")),
                ("pacemaker_no_quorum", Some("db2")),
                ("pacemaker_resource_stopped", None),
            ]
        );
        assert_eq!(
            v[0].message,
            "members are in 2 partitions: db1 sees DC h1 with [h1]; db2 sees DC h2 with [h2]"
        );
        assert_eq!(v[3].what, "dummy", "once, not once per side");
    }

    #[test]
    fn the_same_dc_with_different_membership_is_a_split_too() {
        let a = view("h1", true, &["h1", "h2"], &["h1"]);
        let b = view("h1", true, &["h1"], &["h1"]);
        assert_eq!(
            kinds(&verdicts(&[("db1", &a), ("db2", &b)]))[0].0,
            "pacemaker_split"
        );
    }

    #[test]
    fn a_resource_stopped_on_purpose_is_no_verdict_a_blocked_one_is() {
        let mut a = view("h1", true, &["h1", "h2"], &[]);
        a.resources[0].target_role = Some("Stopped".into());
        assert_eq!(verdicts(&[("db1", &a)]), []);
        a.resources[0] = resource(&["h1"], None);
        a.resources[0].blocked = true;
        let v = verdicts(&[("db1", &a)]);
        assert_eq!(kinds(&v), [("pacemaker_resource_stopped", None)]);
        assert!(v[0].message.contains("is blocked"), "{}", v[0].message);
    }

    #[test]
    fn the_quorate_partition_speaks_for_the_resources() {
        // db2's side has no quorum and sees the resource stopped; the quorate side runs it.
        let a = view("h1", true, &["h1", "h2"], &["h1"]);
        let b = view("h2", false, &["h2"], &[]);
        let v = verdicts(&[("db1", &a), ("db2", &b)]);
        assert_eq!(
            kinds(&v),
            [
                ("pacemaker_split", None),
                ("pacemaker_no_quorum", Some("db2"))
            ]
        );
    }

    #[test]
    fn failed_actions_once_each_and_members_without_status() {
        let mut a = view("h1", true, &["h1", "h2"], &["h2"]);
        a.failures.push(PacemakerFailure {
            resource: "dummy".into(),
            task: "monitor".into(),
            node: "h2".into(),
            exit_code: 7,
            exit_reason: "not running".into(),
            last_rc_change: Some("2026-12-07 16:48:20Z".into()),
        });
        let b = a.clone();
        let mut c = view("h1", true, &["h1", "h2"], &["h2"]);
        c.connected = false;
        c.error = Some("Not connected (code 102)".into());
        let v = verdicts(&[("db1", &a), ("db2", &b), ("db3", &c)]);
        assert_eq!(
            kinds(&v),
            [
                ("pacemaker_not_connected", Some("db3")),
                ("pacemaker_failed_action", None)
            ]
        );
        assert_eq!(v[1].what, "dummy/monitor/h2");
        assert_eq!(
            v[1].message,
            "monitor of dummy failed on h2 (exit 7: not running) at 2026-12-07 16:48:20Z; \
             crm_resource --cleanup clears it"
        );
        assert_eq!(
            v[0].message,
            "crm_mon on db3 gives no status: Not connected (code 102)"
        );
    }
}
