//! ARP truth: who on the LAN answers for the cluster's VIPs, whatever keepalived believes.
//!
//! Every `arp_check_interval` the agent asks "who has VIP?" on each VRRP instance's interface,
//! as `arping` does (one broadcast ARP request per IPv4 VIP, RFC 826), and lists the sender MAC
//! addresses of the replies heard within [`ARP_WAIT`]. A stale ARP cache on the gateway, a VIP
//! left on a host after a crash, or two hosts answering for one address show up there even
//! when VRRP looks fine. The server maps the MAC addresses to nodes with the interfaces every
//! agent reports ([`hapulse_protocol::ArpReport::interfaces`]).
//!
//! A host does not hear its own kernel's answer (a request it sends is not answered back to
//! it), so a probe says whether this host held the VIP itself
//! ([`hapulse_protocol::VipArpProbe::held_here`]) and the server counts the host as answering
//! then. Frames sent from one of this host's own MAC addresses (keepalived's gratuitous ARPs,
//! our own requests, seen again on the packet socket) are ignored for the same reason.
//!
//! Why a packet socket: ARP is below IP, so no UDP or ICMP socket can send it. The agent opens
//! an `AF_PACKET` socket through pnet's `datalink` (a well-kept crate, no `unsafe` here), which
//! needs `CAP_NET_RAW` (the systemd unit grants it; without it each probe reports the error).
//! Frames are built and read with `pnet_packet`. IPv6 VIPs are skipped: their neighbours are
//! found with NDP, not ARP.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hapulse_protocol::{
    ArpReport, InterfaceMac, KeepalivedReport, VipArpProbe, MAX_ARP_ANSWERS, MAX_ARP_ERROR_BYTES,
    MAX_ARP_INTERFACES, MAX_ARP_PROBES,
};
use pnet_packet::arp::{ArpHardwareTypes, ArpOperations, ArpPacket, MutableArpPacket};
use pnet_packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet_packet::Packet;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::health::Observation;

/// How long a probe listens for replies after its requests, as `arping`'s default of one
/// second per request: a host on the same LAN answers within milliseconds.
pub const ARP_WAIT: Duration = Duration::from_secs(1);

/// Length of an ARP request in an Ethernet frame: 14 bytes of Ethernet header, 28 of ARP.
pub const ARP_FRAME_LEN: usize = 42;

/// A MAC address as six bytes.
pub type Mac = [u8; 6];

/// The Ethernet broadcast address.
const BROADCAST: Mac = [0xff; 6];

/// An Ethernet frame carrying an ARP request "who has `target`? tell `sender_ip`" from
/// `sender_mac`, broadcast (the frame `arping` sends; `sender_ip` 0.0.0.0 is an ARP probe,
/// RFC 5227, which Linux answers too).
pub fn request_frame(
    sender_mac: Mac,
    sender_ip: Ipv4Addr,
    target: Ipv4Addr,
) -> [u8; ARP_FRAME_LEN] {
    let mut frame = [0u8; ARP_FRAME_LEN];
    let mut arp = [0u8; 28];
    if let Some(mut p) = MutableArpPacket::new(&mut arp) {
        p.set_hardware_type(ArpHardwareTypes::Ethernet);
        p.set_protocol_type(EtherTypes::Ipv4);
        p.set_hw_addr_len(6);
        p.set_proto_addr_len(4);
        p.set_operation(ArpOperations::Request);
        p.set_sender_hw_addr(sender_mac.into());
        p.set_sender_proto_addr(sender_ip);
        p.set_target_hw_addr([0u8; 6].into());
        p.set_target_proto_addr(target);
    }
    if let Some(mut e) = MutableEthernetPacket::new(&mut frame) {
        e.set_destination(BROADCAST.into());
        e.set_source(sender_mac.into());
        e.set_ethertype(EtherTypes::Arp);
        e.set_payload(&arp);
    }
    frame
}

/// The sender of `frame` when it says "`ip` is at MAC": an ARP reply whose sender protocol
/// address is `ip`, or a gratuitous ARP announcing `ip` (a request or reply whose sender and
/// target addresses are both `ip`). The MAC is the ARP sender hardware address, which is what
/// a neighbour caches (not the Ethernet source). None for anything else: other frames, other
/// addresses, requests asking for `ip`, truncated or non-Ethernet/IPv4 ARP.
pub fn answer_for(frame: &[u8], ip: Ipv4Addr) -> Option<Mac> {
    let ethernet = EthernetPacket::new(frame)?;
    if ethernet.get_ethertype() != EtherTypes::Arp {
        return None;
    }
    let arp = ArpPacket::new(ethernet.payload())?;
    if arp.get_hardware_type() != ArpHardwareTypes::Ethernet
        || arp.get_protocol_type() != EtherTypes::Ipv4
        || arp.get_hw_addr_len() != 6
        || arp.get_proto_addr_len() != 4
        || arp.get_sender_proto_addr() != ip
    {
        return None;
    }
    let operation = arp.get_operation();
    let reply = operation == ArpOperations::Reply;
    let gratuitous =
        (reply || operation == ArpOperations::Request) && arp.get_target_proto_addr() == ip;
    (reply || gratuitous).then(|| arp.get_sender_hw_addr().octets())
}

/// `mac` as reports write it: lower-case, colon-separated.
pub fn mac_text(mac: Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The distinct MAC addresses heard for one VIP, in the order heard, at most
/// [`MAX_ARP_ANSWERS`]; further ones are counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answers {
    /// Distinct MACs, in the order heard.
    pub macs: Vec<Mac>,
    /// Distinct MACs beyond [`MAX_ARP_ANSWERS`].
    pub dropped: u32,
}

impl Answers {
    /// Counts `mac` once.
    pub fn add(&mut self, mac: Mac) {
        if self.macs.contains(&mac) {
            return;
        }
        if self.macs.len() < MAX_ARP_ANSWERS {
            self.macs.push(mac);
        } else {
            self.dropped = self.dropped.saturating_add(1);
        }
    }
}

/// One VIP to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    instance: String,
    vip: String,
    ip: Ipv4Addr,
    interface: String,
    held_here: bool,
}

/// The IPv4 VIPs of every instance that names its interface, at most [`MAX_ARP_PROBES`], with
/// whether this host holds each.
fn targets(keepalived: &KeepalivedReport) -> Vec<Target> {
    let mut out = Vec::new();
    for i in &keepalived.instances {
        let Some(interface) = &i.interface else {
            continue;
        };
        for vip in &i.vips {
            let Ok(ip) = vip.parse::<Ipv4Addr>() else {
                continue;
            };
            if out.len() < MAX_ARP_PROBES {
                out.push(Target {
                    instance: i.name.clone(),
                    vip: vip.clone(),
                    ip,
                    interface: interface.clone(),
                    held_here: i.held_vips.contains(vip),
                });
            }
        }
    }
    out
}

/// This host's interfaces that have a non-zero MAC address, at most [`MAX_ARP_INTERFACES`]
/// (names longer than the kernel allows are skipped).
fn host_interfaces(all: &[pnet_datalink::NetworkInterface]) -> Vec<InterfaceMac> {
    all.iter()
        .filter_map(|i| {
            let mac = i.mac?.octets();
            (mac != [0; 6] && !i.name.is_empty() && i.name.len() <= 15).then(|| InterfaceMac {
                name: i.name.clone(),
                mac: mac_text(mac),
            })
        })
        .take(MAX_ARP_INTERFACES)
        .collect()
}

/// Sends one request per target on interface `name`, then reads replies for [`ARP_WAIT`].
/// Replies from `own` MACs (this host) are ignored. Blocking: run it off the runtime. Errors:
/// no such interface, no hardware address, the packet socket refused (no `CAP_NET_RAW`).
fn probe_interface(
    all: &[pnet_datalink::NetworkInterface],
    name: &str,
    targets: &[Ipv4Addr],
    own: &[Mac],
) -> Result<BTreeMap<Ipv4Addr, Answers>, String> {
    let interface = all
        .iter()
        .find(|i| i.name == name)
        .ok_or_else(|| format!("no interface {name}"))?;
    let mac = interface
        .mac
        .map(|m| m.octets())
        .filter(|m| *m != [0; 6])
        .ok_or_else(|| format!("{name} has no hardware address"))?;
    // The interface's own address, not a VIP: a host holding a VIP must not claim it as sender
    // (Linux would then also update its neighbours' caches to this host).
    let sender_ip = interface
        .ips
        .iter()
        .filter_map(|n| match n.ip() {
            std::net::IpAddr::V4(ip) if !targets.contains(&ip) => Some(ip),
            _ => None,
        })
        .next()
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    let config = pnet_datalink::Config {
        read_timeout: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    let (mut tx, mut rx) = match pnet_datalink::channel(interface, config) {
        Ok(pnet_datalink::Channel::Ethernet(tx, rx)) => (tx, rx),
        Ok(_) => return Err(format!("{name}: not an Ethernet channel")),
        Err(e) => {
            return Err(format!(
                "packet socket on {name}: {e} (the agent needs CAP_NET_RAW)"
            ))
        }
    };
    for target in targets {
        let frame = request_frame(mac, sender_ip, *target);
        match tx.send_to(&frame, None) {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(format!("sending on {name}: {e}")),
            None => return Err(format!("sending on {name}: no room in the buffer")),
        }
    }
    let mut heard: BTreeMap<Ipv4Addr, Answers> =
        targets.iter().map(|t| (*t, Answers::default())).collect();
    let deadline = Instant::now() + ARP_WAIT;
    while Instant::now() < deadline {
        match rx.next() {
            Ok(frame) => {
                for (ip, answers) in heard.iter_mut() {
                    if let Some(sender) = answer_for(frame, *ip).filter(|m| !own.contains(m)) {
                        answers.add(sender);
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(format!("reading on {name}: {e}")),
        }
    }
    Ok(heard)
}

/// `text` cut to at most [`MAX_ARP_ERROR_BYTES`] bytes on a character boundary, without
/// control characters.
fn bounded_error(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().map(|c| if c.is_control() { ' ' } else { c }) {
        if out.len() + c.len_utf8() > MAX_ARP_ERROR_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

/// One round: every VIP of `keepalived`'s instances asked on its interface (one interface after
/// the other, each within [`ARP_WAIT`]). Blocking.
pub fn probe_all(keepalived: &KeepalivedReport, interval: Duration) -> ArpReport {
    let all = pnet_datalink::interfaces();
    let own: Vec<Mac> = all
        .iter()
        .filter_map(|i| i.mac.map(|m| m.octets()))
        .collect();
    let targets = targets(keepalived);
    let mut by_interface: BTreeMap<&str, Vec<Ipv4Addr>> = BTreeMap::new();
    for t in &targets {
        let ips = by_interface.entry(t.interface.as_str()).or_default();
        if !ips.contains(&t.ip) {
            ips.push(t.ip);
        }
    }
    let results: BTreeMap<&str, Result<BTreeMap<Ipv4Addr, Answers>, String>> = by_interface
        .iter()
        .map(|(name, ips)| (*name, probe_interface(&all, name, ips, &own)))
        .collect();
    let probed_at = chrono::Utc::now();
    let probes = targets
        .iter()
        .map(|t| {
            let (answers, error) = match results.get(t.interface.as_str()) {
                Some(Ok(heard)) => (heard.get(&t.ip).cloned().unwrap_or_default(), None),
                Some(Err(e)) => (Answers::default(), Some(bounded_error(e))),
                None => (Answers::default(), Some("not probed".to_string())),
            };
            VipArpProbe {
                instance: t.instance.clone(),
                vip: t.vip.clone(),
                interface: t.interface.clone(),
                probed_at,
                held_here: t.held_here,
                answered_by: answers.macs.into_iter().map(mac_text).collect(),
                answers_dropped: answers.dropped,
                error,
            }
        })
        .collect();
    ArpReport {
        interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        interfaces: host_interfaces(&all),
        probes,
    }
}

/// A packet socket opens on the first interface with a hardware address (what each ARP round
/// needs: root or `CAP_NET_RAW`, and `AF_PACKET` allowed): that interface's name, or why not.
/// Blocking, briefly.
pub fn packet_socket_opens() -> Result<String, String> {
    let all = pnet_datalink::interfaces();
    let interface = all
        .iter()
        .find(|i| i.mac.is_some_and(|m| m.octets() != [0; 6]))
        .ok_or("no interface with a hardware address")?;
    let config = pnet_datalink::Config {
        read_timeout: Some(Duration::from_millis(10)),
        ..Default::default()
    };
    match pnet_datalink::channel(interface, config) {
        Ok(pnet_datalink::Channel::Ethernet(_, _)) => Ok(interface.name.clone()),
        Ok(_) => Err(format!("{}: not an Ethernet channel", interface.name)),
        Err(e) => Err(format!(
            "packet socket on {}: {e} (the agent needs CAP_NET_RAW)",
            interface.name
        )),
    }
}

/// What a probe round found, for deciding whether a report is a state change: per VIP, whether
/// this host held it, the answering MACs (sorted) and whether the probe failed. Times are left
/// out.
pub fn state_key(report: Option<&ArpReport>) -> Vec<(String, String, bool, Vec<String>, bool)> {
    report
        .map(|r| {
            r.probes
                .iter()
                .map(|p| {
                    let mut macs = p.answered_by.clone();
                    macs.sort();
                    (
                        p.instance.clone(),
                        p.vip.clone(),
                        p.held_here,
                        macs,
                        p.error.is_some(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Until `shutdown`: a probe round every `interval` (the first at once, once the main loop has
/// published an observation), and one whenever `now` is notified (the executor's
/// `arp_check`), on the VIPs of the latest observation, published on `out`.
pub async fn run(
    interval: Duration,
    mut observations: watch::Receiver<Option<Arc<Observation>>>,
    out: watch::Sender<Option<ArpReport>>,
    now: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
            _ = now.notified() => ticks.reset(),
        }
        let keepalived = match observations.borrow_and_update().as_ref() {
            Some(o) => o.keepalived.clone(),
            None => continue,
        };
        let report =
            match tokio::task::spawn_blocking(move || probe_all(&keepalived, interval)).await {
                Ok(report) => report,
                Err(e) => {
                    tracing::error!(error = %e, "ARP probe task failed");
                    continue;
                }
            };
        let first_error = report.probes.iter().find_map(|p| p.error.clone());
        match (&first_error, failing) {
            (Some(e), false) => tracing::warn!(error = %e, "ARP probe failed"),
            (None, true) => tracing::info!("ARP probes work again"),
            _ => {}
        }
        failing = first_error.is_some();
        out.send_replace(Some(report));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hapulse_protocol::testing::vrrp_instance;
    use hapulse_protocol::VrrpState;

    const A: Mac = [0x52, 0x54, 0x00, 0, 0, 0x0a];
    const B: Mac = [0x52, 0x54, 0x00, 0, 0, 0x0b];
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

    /// A reply "`ip` is at `sha`" sent to A.
    fn reply(sha: Mac, ip: Ipv4Addr) -> Vec<u8> {
        let mut frame = request_frame(sha, ip, Ipv4Addr::new(10, 0, 0, 11)).to_vec();
        frame[0..6].copy_from_slice(&A);
        frame[21] = 2; // operation: reply
        frame[32..38].copy_from_slice(&A); // target hardware address
        frame
    }

    #[test]
    fn a_request_is_the_frame_arping_sends() {
        let frame = request_frame(A, Ipv4Addr::new(10, 0, 0, 11), VIP);
        let expected: Vec<u8> = [
            &[0xff; 6][..],         // broadcast
            &A,                     // source
            &[0x08, 0x06],          // ARP
            &[0, 1, 0x08, 0, 6, 4], // Ethernet, IPv4, lengths
            &[0, 1],                // request
            &A,                     // sender MAC
            &[10, 0, 0, 11],        // sender IP
            &[0; 6],                // target MAC unknown
            &[10, 0, 0, 100],       // target IP
        ]
        .concat();
        assert_eq!(frame.to_vec(), expected);
        // Our own request is not an answer for the VIP.
        assert_eq!(answer_for(&frame, VIP), None);
    }

    #[test]
    fn a_reply_names_its_sender_hardware_address() {
        assert_eq!(answer_for(&reply(B, VIP), VIP), Some(B));
        // For another address: not an answer for this VIP.
        assert_eq!(
            answer_for(&reply(B, Ipv4Addr::new(10, 0, 0, 101)), VIP),
            None
        );
        // The ARP sender address counts, not the Ethernet source (a proxy may relay it).
        let mut relayed = reply(B, VIP);
        relayed[6..12].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 0x99]);
        assert_eq!(answer_for(&relayed, VIP), Some(B));
    }

    #[test]
    fn a_gratuitous_arp_for_the_vip_counts_as_an_answer() {
        // keepalived's announcement at takeover: a request with sender = target = VIP.
        let garp = request_frame(B, VIP, VIP);
        assert_eq!(answer_for(&garp, VIP), Some(B));
    }

    #[test]
    fn other_frames_are_not_answers() {
        assert_eq!(answer_for(&[], VIP), None);
        let whole = reply(B, VIP);
        assert_eq!(answer_for(&whole[..30], VIP), None, "truncated");
        let mut ipv4 = whole.clone();
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(answer_for(&ipv4, VIP), None, "an IPv4 frame");
        let mut token_ring = whole.clone();
        token_ring[15] = 6;
        assert_eq!(answer_for(&token_ring, VIP), None, "another hardware type");
        let mut rarp = whole;
        rarp[21] = 3;
        assert_eq!(answer_for(&rarp, VIP), None, "a RARP request");
    }

    #[test]
    fn answers_are_distinct_and_bounded() {
        let mut answers = Answers::default();
        answers.add(A);
        answers.add(B);
        answers.add(A);
        assert_eq!(answers.macs, vec![A, B]);
        for n in 0..40u8 {
            answers.add([2, 0, 0, 0, 1, n]);
        }
        assert_eq!(answers.macs.len(), MAX_ARP_ANSWERS);
        assert_eq!(answers.dropped, 40 + 2 - MAX_ARP_ANSWERS as u32);
    }

    #[test]
    fn macs_are_written_as_reports_want_them() {
        let text = mac_text([0x52, 0x54, 0x00, 0xab, 0x0c, 0xff]);
        assert_eq!(text, "52:54:00:ab:0c:ff");
        assert!(hapulse_protocol::valid_mac(&text));
    }

    #[test]
    fn targets_are_the_ipv4_vips_of_instances_with_an_interface() {
        let mut held = vrrp_instance("VI_1", VrrpState::Master, "10.0.0.100", true);
        held.vips.push("2001:db8::100".into());
        let mut other = vrrp_instance("VI_2", VrrpState::Backup, "10.0.0.200", false);
        other.interface = Some("eth1".into());
        let mut no_interface = vrrp_instance("VI_3", VrrpState::Backup, "10.0.0.250", false);
        no_interface.interface = None;
        let keepalived = KeepalivedReport {
            running: true,
            instances: vec![held, other, no_interface],
            sync_groups: Vec::new(),
            virtual_servers: Vec::new(),
        };
        let t = targets(&keepalived);
        let seen: Vec<_> = t
            .iter()
            .map(|t| {
                (
                    t.instance.as_str(),
                    t.vip.as_str(),
                    t.interface.as_str(),
                    t.held_here,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("VI_1", "10.0.0.100", "eth0", true),
                ("VI_2", "10.0.0.200", "eth1", false)
            ]
        );
    }

    #[test]
    fn a_probe_on_a_missing_interface_reports_why() {
        let instance = vrrp_instance("VI_1", VrrpState::Backup, "10.0.0.100", false);
        let mut instance = instance;
        instance.interface = Some("hpnosuch0".into());
        let report = probe_all(
            &KeepalivedReport {
                running: true,
                instances: vec![instance],
                sync_groups: Vec::new(),
                virtual_servers: Vec::new(),
            },
            Duration::from_secs(2),
        );
        assert_eq!(report.interval_ms, 2000);
        assert_eq!(report.probes.len(), 1);
        assert_eq!(
            report.probes[0].error.as_deref(),
            Some("no interface hpnosuch0")
        );
        assert!(report.probes[0].answered_by.is_empty());
    }

    #[test]
    fn errors_are_bounded_and_on_one_line() {
        let long = "é\n".repeat(400);
        let e = bounded_error(&long);
        assert!(e.len() <= MAX_ARP_ERROR_BYTES);
        assert!(!e.contains('\n'));
    }
}
