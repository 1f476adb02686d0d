//! ARP truth: who the LAN says has each VIP, against who keepalived says should.
//!
//! Each agent asks "who has VIP?" every `arp_check_interval` and reports the MAC addresses that
//! answered ([`hapulse_protocol::ArpReport`]) and its own interfaces' MAC addresses. Here those
//! MACs are mapped to the cluster's nodes and two verdicts are drawn per VIP:
//! - **answered by several**: more than one host answers (an IP-level split brain even when
//!   VRRP looks fine: a VIP left on a host after a crash, two hosts configured with it);
//! - **answered by a non-holder**: a host other than the instance's MASTER answers (or anyone
//!   does while no single node is MASTER).
//!
//! A host never hears its own kernel's answer, so a node that held the VIP when it probed
//! ([`hapulse_protocol::VipArpProbe::held_here`]) counts as answering, with the MAC of the
//! interface it probed on. A node answering from several MAC addresses (ARP flux: Linux answers
//! on every interface by default) is one host; each MAC no node reports is a host of its own
//! (a router, a host without an agent). A MAC several nodes report (keepalived's VRRP virtual
//! MAC `00:00:5e:00:01:VRID` with `use_vmac`) is taken for the MASTER when it is one of them.
//!
//! Only probes of nodes not down, that did not fail, and that are recent (within three of the
//! node's intervals plus 2 s of its latest report) count: a stale probe says nothing of now.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use hapulse_protocol::{VipArpProbe, VrrpState};
use serde::Serialize;

use crate::fleet::live::{EventKind, NewEvent, NodeLive, NodeStatus};

/// One host that answered ARP for a VIP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ArpAnswerer {
    /// The node it is, when a node of the cluster reports the MAC address (or it is the prober
    /// itself, holding the VIP); None for a host no agent reports.
    pub node_id: Option<String>,
    /// The MAC addresses it answered from (ARP sender hardware addresses), sorted; empty for a
    /// node counted as answering for itself whose interface reported no MAC address.
    pub macs: Vec<String>,
    /// The nodes whose probes heard it, sorted (a node holding the VIP names itself).
    pub heard_by: Vec<String>,
}

impl ArpAnswerer {
    /// The node id, else the first MAC address: how people name it.
    pub fn label(&self) -> String {
        match (&self.node_id, self.macs.first()) {
            (Some(n), _) => n.clone(),
            (None, Some(mac)) => format!("unknown host {mac}"),
            (None, None) => "unknown host".into(),
        }
    }
}

/// What the LAN answers for one VIP of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct VipArp {
    /// Each host that answered: nodes first (by id), then unknown MACs.
    pub answered_by: Vec<ArpAnswerer>,
    /// Nodes whose probe of this VIP counts, sorted.
    pub probed_by: Vec<String>,
    /// When the latest of those probes was made (agent clock).
    pub probed_at: Option<DateTime<Utc>>,
    /// More than one host answers: an IP-level split brain.
    pub answered_by_several: bool,
    /// Answering hosts that are not the instance's MASTER ([`ArpAnswerer::label`]); every
    /// answering host while no single node is MASTER.
    pub non_holders: Vec<String>,
}

impl VipArp {
    /// True when something is wrong: several hosts answer, or a non-holder does.
    pub fn flagged(&self) -> bool {
        self.answered_by_several || !self.non_holders.is_empty()
    }

    /// The answering hosts for people: `h1 (52:54:00:00:00:0a), unknown host 52:54:…`.
    pub fn answered_text(&self) -> String {
        if self.answered_by.is_empty() {
            return "nobody".into();
        }
        self.answered_by
            .iter()
            .map(|a| match (&a.node_id, a.macs.is_empty()) {
                (Some(n), false) => format!("{n} ({})", a.macs.join(", ")),
                _ => a.label(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The node that is MASTER of `instance`, when exactly one node not down is.
pub fn single_master<'a>(instance: &str, nodes: &[&'a NodeLive]) -> Option<&'a str> {
    let mut masters = nodes.iter().filter(|n| {
        n.status != NodeStatus::Down
            && n.instance(instance)
                .is_some_and(|i| i.state == VrrpState::Master)
    });
    let first = masters.next()?;
    masters.next().is_none().then_some(first.node_id.as_str())
}

/// A probe of `node` that counts: the node is not down, the probe did not fail, and it is at
/// most three intervals plus 2 s older than the node's latest report.
fn counts(node: &NodeLive, probe: &VipArpProbe, interval_ms: u64) -> bool {
    let window = chrono::Duration::milliseconds(
        i64::try_from(interval_ms.saturating_mul(3).saturating_add(2000)).unwrap_or(i64::MAX),
    );
    node.status != NodeStatus::Down
        && probe.error.is_none()
        && node.last_observed_at - probe.probed_at <= window
}

/// Who owns each MAC address the nodes report: (node id, interface), sorted.
type Owners<'a> = BTreeMap<&'a str, Vec<&'a str>>;

fn owners<'a>(nodes: &[&'a NodeLive]) -> Owners<'a> {
    let mut out: Owners<'a> = BTreeMap::new();
    for n in nodes {
        for i in n.arp.iter().flat_map(|a| &a.interfaces) {
            let owners = out.entry(i.mac.as_str()).or_default();
            if !owners.contains(&n.node_id.as_str()) {
                owners.push(n.node_id.as_str());
            }
        }
    }
    for owners in out.values_mut() {
        owners.sort_unstable();
    }
    out
}

/// The node owning `mac`: the only one reporting it, else the MASTER among several, else the
/// first by id; None when no node reports it.
fn owner<'a>(owners: &Owners<'a>, mac: &str, master: Option<&str>) -> Option<&'a str> {
    let candidates = owners.get(mac)?;
    candidates
        .iter()
        .find(|n| Some(**n) == master)
        .or(candidates.first())
        .copied()
}

/// What the LAN answers for `vip` of `instance` whose MASTER is `master`, from the probes of
/// `nodes` (the cluster's nodes); None when no node's probe of it counts.
pub fn vip_arp(
    instance: &str,
    vip: &str,
    master: Option<&str>,
    nodes: &[&NodeLive],
) -> Option<VipArp> {
    let owners = owners(nodes);
    // Hosts by key: a node id, or `mac:` and the MAC of an unknown host.
    let mut hosts: BTreeMap<String, ArpAnswerer> = BTreeMap::new();
    let mut probed_by = Vec::new();
    let mut probed_at: Option<DateTime<Utc>> = None;
    for node in nodes {
        let Some(arp) = &node.arp else { continue };
        for probe in arp
            .probes
            .iter()
            .filter(|p| p.instance == instance && p.vip == vip)
        {
            if !counts(node, probe, arp.interval_ms) {
                continue;
            }
            probed_by.push(node.node_id.clone());
            probed_at = probed_at.max(Some(probe.probed_at));
            let mut heard = |key: String, node_id: Option<&str>, mac: Option<&str>| {
                let host = hosts.entry(key).or_insert_with(|| ArpAnswerer {
                    node_id: node_id.map(str::to_string),
                    macs: Vec::new(),
                    heard_by: Vec::new(),
                });
                if let Some(mac) = mac.filter(|m| !host.macs.iter().any(|h| h == m)) {
                    host.macs.push(mac.to_string());
                }
                if !host.heard_by.contains(&node.node_id) {
                    host.heard_by.push(node.node_id.clone());
                }
            };
            if probe.held_here {
                let own_mac = arp
                    .interfaces
                    .iter()
                    .find(|i| i.name == probe.interface)
                    .map(|i| i.mac.as_str());
                heard(
                    format!("node:{}", node.node_id),
                    Some(&node.node_id),
                    own_mac,
                );
            }
            for mac in &probe.answered_by {
                match owner(&owners, mac, master) {
                    Some(n) => heard(format!("node:{n}"), Some(n), Some(mac)),
                    None => heard(format!("mac:{mac}"), None, Some(mac)),
                }
            }
        }
    }
    if probed_by.is_empty() {
        return None;
    }
    probed_by.sort();
    probed_by.dedup();
    // Keys sort nodes (`node:`) before unknown MACs (`mac:`)... by the letter: put nodes first.
    let (mut answered_by, unknown): (Vec<_>, Vec<_>) =
        hosts.into_values().partition(|h| h.node_id.is_some());
    answered_by.extend(unknown);
    for a in &mut answered_by {
        a.macs.sort();
        a.heard_by.sort();
    }
    let non_holders = answered_by
        .iter()
        .filter(|a| master.is_none() || a.node_id.as_deref() != master)
        .map(ArpAnswerer::label)
        .collect();
    Some(VipArp {
        answered_by_several: answered_by.len() > 1,
        answered_by,
        probed_by,
        probed_at,
        non_holders,
    })
}

/// Every VIP of the cluster that some node probed: (instance, VIP) → what the LAN answers.
pub fn cluster_arp(nodes: &[&NodeLive]) -> BTreeMap<(String, String), VipArp> {
    let keys: BTreeSet<(&str, &str)> = nodes
        .iter()
        .filter_map(|n| n.arp.as_ref())
        .flat_map(|a| &a.probes)
        .map(|p| (p.instance.as_str(), p.vip.as_str()))
        .collect();
    keys.into_iter()
        .filter_map(|(instance, vip)| {
            let master = single_master(instance, nodes);
            let found = vip_arp(instance, vip, master, nodes)?;
            Some(((instance.to_string(), vip.to_string()), found))
        })
        .collect()
}

/// Most ARP events one report records (a report may carry 256 probes); the rest are logged.
pub const MAX_ARP_EVENTS: usize = 32;

/// The ARP verdicts that change when node `after` (the node as its report leaves it; `before`
/// as it was, None for a new node) joins `others` (the rest of its cluster): an event per VIP
/// that becomes answered by several hosts, or by a non-holder (or by another set of
/// non-holders), and one per VIP flagged before that is no longer. Times are `at`.
pub fn events<'a>(
    others: &[&'a NodeLive],
    before: Option<&'a NodeLive>,
    after: &'a NodeLive,
    at: DateTime<Utc>,
) -> Vec<NewEvent> {
    let with = |node: Option<&'a NodeLive>| {
        let mut nodes: Vec<&'a NodeLive> = others.to_vec();
        nodes.extend(node);
        nodes
    };
    let (old_nodes, new_nodes) = (with(before), with(Some(after)));
    if !new_nodes.iter().chain(&old_nodes).any(|n| n.arp.is_some()) {
        return Vec::new();
    }
    let old = cluster_arp(&old_nodes);
    let new = cluster_arp(&new_nodes);
    let event =
        |kind: EventKind, (instance, vip): &(String, String), v: &VipArp, message: String| {
            NewEvent {
                at,
                cluster: after.cluster.clone(),
                node_id: None,
                instance: Some(instance.clone()),
                link: None,
                kind,
                from_state: None,
                to_state: None,
                message,
                detail: serde_json::json!({
                    "vip": vip,
                    "answered_by": v.answered_by,
                    "non_holders": v.non_holders,
                    "probed_by": v.probed_by,
                }),
            }
        };
    let mut out = Vec::new();
    for (key, v) in &new {
        let was = old.get(key);
        let (instance, vip) = key;
        if v.answered_by_several && !was.is_some_and(|w| w.answered_by_several) {
            out.push(event(
                EventKind::VipAnsweredBySeveral,
                key,
                v,
                format!(
                    "{vip} of {instance} is answered by several hosts on the LAN: {}",
                    v.answered_text()
                ),
            ));
        }
        if !v.non_holders.is_empty() && was.is_none_or(|w| w.non_holders != v.non_holders) {
            out.push(event(
                EventKind::VipAnsweredByNonHolder,
                key,
                v,
                format!(
                    "{vip} of {instance} is answered by {} which {} not its MASTER ({})",
                    v.non_holders.join(", "),
                    if v.non_holders.len() > 1 { "are" } else { "is" },
                    v.answered_text()
                ),
            ));
        }
        if !v.flagged() && was.is_some_and(VipArp::flagged) {
            out.push(event(
                EventKind::VipArpConsistent,
                key,
                v,
                format!(
                    "{vip} of {instance} is answered by {} alone again",
                    v.answered_text()
                ),
            ));
        }
    }
    if out.len() > MAX_ARP_EVENTS {
        tracing::warn!(
            cluster = %after.cluster,
            node_id = %after.node_id,
            events = out.len(),
            kept = MAX_ARP_EVENTS,
            "more ARP verdicts changed in one report than are recorded; the cluster page shows them all"
        );
        out.truncate(MAX_ARP_EVENTS);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hapulse_protocol::testing::{arp_probe, report, vrrp_instance};

    const VIP: &str = "10.0.0.100";
    const MAC_A: &str = "52:54:00:00:00:0a";
    const MAC_A2: &str = "52:54:00:00:01:0a";
    const MAC_B: &str = "52:54:00:00:00:0b";
    const STRANGER: &str = "52:54:00:00:00:99";

    /// Node `id` in `state`, holding the VIP when `held`, with interfaces `interfaces` and one
    /// probe of the VIP that heard `heard`.
    fn node(
        id: &str,
        state: VrrpState,
        held: bool,
        interfaces: &[(&str, &str)],
        heard: &[&str],
    ) -> NodeLive {
        let r = report(id, "c")
            .instance(vrrp_instance("VI_1", state, VIP, held))
            .arp(interfaces, vec![arp_probe("VI_1", VIP, held, heard)])
            .build();
        NodeLive::from_report(&r, Utc::now(), tokio::time::Instant::now())
    }

    fn verdict(nodes: &[NodeLive]) -> Option<VipArp> {
        let refs: Vec<&NodeLive> = nodes.iter().collect();
        cluster_arp(&refs).remove(&("VI_1".to_string(), VIP.to_string()))
    }

    fn labels(v: &VipArp) -> Vec<String> {
        v.answered_by.iter().map(ArpAnswerer::label).collect()
    }

    #[test]
    fn the_master_alone_answering_is_fine() {
        // a holds the VIP (it cannot hear itself), b hears a.
        let a = node("a", VrrpState::Master, true, &[("eth0", MAC_A)], &[]);
        let b = node("b", VrrpState::Backup, false, &[("eth0", MAC_B)], &[MAC_A]);
        let v = verdict(&[a, b]).unwrap();
        assert_eq!(labels(&v), ["a"]);
        assert_eq!(v.answered_by[0].macs, [MAC_A]);
        assert_eq!(v.answered_by[0].heard_by, ["a", "b"]);
        assert_eq!(v.probed_by, ["a", "b"]);
        assert!(!v.flagged(), "{v:?}");
    }

    #[test]
    fn one_answer_from_the_holder_heard_by_a_peer_is_fine() {
        // Only the backup probes: it hears the master.
        let mut a = node("a", VrrpState::Master, true, &[("eth0", MAC_A)], &[]);
        a.arp.as_mut().unwrap().probes.clear();
        let b = node("b", VrrpState::Backup, false, &[("eth0", MAC_B)], &[MAC_A]);
        let v = verdict(&[a, b]).unwrap();
        assert_eq!(labels(&v), ["a"]);
        assert_eq!(v.probed_by, ["b"]);
        assert!(!v.flagged());
    }

    #[test]
    fn no_answer_at_all_is_no_host_and_not_flagged() {
        let a = node("a", VrrpState::Master, false, &[("eth0", MAC_A)], &[]);
        let b = node("b", VrrpState::Backup, false, &[("eth0", MAC_B)], &[]);
        let v = verdict(&[a, b]).unwrap();
        assert!(v.answered_by.is_empty());
        assert!(!v.flagged());
        assert_eq!(v.answered_text(), "nobody");
    }

    #[test]
    fn a_stale_vip_on_the_backup_is_answered_by_several_and_by_a_non_holder() {
        // b kept the VIP: each hears the other, and each holds it.
        let a = node("a", VrrpState::Master, true, &[("eth0", MAC_A)], &[MAC_B]);
        let b = node("b", VrrpState::Backup, true, &[("eth0", MAC_B)], &[MAC_A]);
        let v = verdict(&[a, b]).unwrap();
        assert_eq!(labels(&v), ["a", "b"]);
        assert!(v.answered_by_several);
        assert_eq!(v.non_holders, ["b"]);
        assert_eq!(v.answered_text(), format!("a ({MAC_A}), b ({MAC_B})"));
    }

    #[test]
    fn an_unknown_mac_is_a_host_of_its_own() {
        let a = node(
            "a",
            VrrpState::Master,
            true,
            &[("eth0", MAC_A)],
            &[STRANGER],
        );
        let b = node(
            "b",
            VrrpState::Backup,
            false,
            &[("eth0", MAC_B)],
            &[MAC_A, STRANGER],
        );
        let v = verdict(&[a, b]).unwrap();
        assert_eq!(
            labels(&v),
            ["a".to_string(), format!("unknown host {STRANGER}")]
        );
        assert_eq!(v.answered_by[1].node_id, None);
        assert_eq!(v.answered_by[1].heard_by, ["a", "b"]);
        assert!(v.answered_by_several);
        assert_eq!(v.non_holders, [format!("unknown host {STRANGER}")]);
    }

    #[test]
    fn a_node_answering_from_several_interfaces_is_one_host() {
        // ARP flux: a answers on both its interfaces.
        let a = node(
            "a",
            VrrpState::Master,
            true,
            &[("eth0", MAC_A), ("eth1", MAC_A2)],
            &[],
        );
        let b = node(
            "b",
            VrrpState::Backup,
            false,
            &[("eth0", MAC_B)],
            &[MAC_A2, MAC_A],
        );
        let v = verdict(&[a, b]).unwrap();
        assert_eq!(labels(&v), ["a"]);
        assert_eq!(v.answered_by[0].macs, [MAC_A, MAC_A2]);
        assert!(!v.flagged(), "{v:?}");
    }

    #[test]
    fn only_the_backup_answering_is_a_non_holder_alone() {
        // The master lost the address; the backup has it (keepalived's belief is wrong).
        let a = node("a", VrrpState::Master, false, &[("eth0", MAC_A)], &[MAC_B]);
        let b = node("b", VrrpState::Backup, true, &[("eth0", MAC_B)], &[]);
        let v = verdict(&[a, b]).unwrap();
        assert!(!v.answered_by_several);
        assert_eq!(v.non_holders, ["b"]);
    }

    #[test]
    fn without_a_single_master_every_answer_is_a_non_holder() {
        let a = node("a", VrrpState::Backup, false, &[("eth0", MAC_A)], &[MAC_B]);
        let b = node("b", VrrpState::Backup, true, &[("eth0", MAC_B)], &[]);
        let v = verdict(&[a, b]).unwrap();
        assert_eq!(v.non_holders, ["b"]);
    }

    #[test]
    fn a_shared_virtual_mac_is_the_masters() {
        let vmac = "00:00:5e:00:01:33";
        let a = node(
            "a",
            VrrpState::Backup,
            false,
            &[("eth0", MAC_A), ("vrrp.51", vmac)],
            &[vmac],
        );
        let b = node(
            "b",
            VrrpState::Master,
            true,
            &[("eth0", MAC_B), ("vrrp.51", vmac)],
            &[],
        );
        let v = verdict(&[a, b]).unwrap();
        assert_eq!(labels(&v), ["b"]);
        assert!(!v.flagged(), "{v:?}");
    }

    #[test]
    fn failed_stale_and_down_probes_do_not_count() {
        let mut failed = node("a", VrrpState::Master, true, &[("eth0", MAC_A)], &[]);
        failed.arp.as_mut().unwrap().probes[0].error = Some("no interface eth0".into());
        let mut stale = node("b", VrrpState::Backup, true, &[("eth0", MAC_B)], &[MAC_A]);
        stale.arp.as_mut().unwrap().probes[0].probed_at -= chrono::Duration::seconds(60);
        assert_eq!(verdict(&[failed.clone(), stale]), None);
        let mut down = node("b", VrrpState::Backup, true, &[("eth0", MAC_B)], &[MAC_A]);
        down.status = NodeStatus::Down;
        assert_eq!(verdict(&[failed, down]), None);
    }

    #[test]
    fn a_stale_vip_appearing_and_going_makes_events() {
        let a = node("a", VrrpState::Master, true, &[("eth0", MAC_A)], &[]);
        let b = node("b", VrrpState::Backup, false, &[("eth0", MAC_B)], &[MAC_A]);
        let stale_b = node("b", VrrpState::Backup, true, &[("eth0", MAC_B)], &[MAC_A]);
        let kinds = |events: Vec<NewEvent>| events.iter().map(|e| e.kind).collect::<Vec<_>>();
        let appeared = events(&[&a], Some(&b), &stale_b, Utc::now());
        assert_eq!(
            kinds(appeared.clone()),
            [
                EventKind::VipAnsweredBySeveral,
                EventKind::VipAnsweredByNonHolder
            ]
        );
        assert_eq!(appeared[0].instance.as_deref(), Some("VI_1"));
        assert_eq!(appeared[0].detail["vip"], VIP);
        assert!(
            appeared[1]
                .message
                .contains("answered by b which is not its MASTER"),
            "{}",
            appeared[1].message
        );
        // The same again: nothing new.
        assert!(events(&[&a], Some(&stale_b), &stale_b, Utc::now()).is_empty());
        let gone = events(&[&a], Some(&stale_b), &b, Utc::now());
        assert_eq!(kinds(gone), [EventKind::VipArpConsistent]);
        // A node first seen with nothing wrong: no event.
        assert!(events(&[&a], None, &b, Utc::now()).is_empty());
    }

    #[test]
    fn nodes_without_arp_reports_give_no_verdict() {
        let r = report("a", "c")
            .instance(vrrp_instance("VI_1", VrrpState::Master, VIP, true))
            .build();
        let a = NodeLive::from_report(&r, Utc::now(), tokio::time::Instant::now());
        assert!(cluster_arp(&[&a]).is_empty());
    }
}
