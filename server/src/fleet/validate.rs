//! What a heartbeat report must satisfy beyond its JSON shape (limits, names, consistency), and
//! why the fleet refuses or cannot take one ([`IngestError`]).

use hapulse_protocol::{
    valid_name, HeartbeatReport, ReplicationLinkReport, ServiceCheckReport, VrrpInstanceReport,
    MAX_KEEPALIVED_ITEMS, MAX_KEEPALIVED_NAME_BYTES, MAX_REAL_SERVERS, OLDEST_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
};

use crate::refusal::Refusal;

/// Why a heartbeat report was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The report is malformed (HTTP 400, naming the field:
    /// `keepalived.instances[0].vips[1]`): nothing of it was applied.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// PostgreSQL could not store the report (HTTP 503): nothing was applied, and the agent
    /// keeps it and retries. The cause was logged where it happened.
    #[error("database unavailable, retry later")]
    Unavailable,
}

/// Refuses a report declaring a heartbeat interval longer than `max` (the server's
/// `detector.max_heartbeat_interval`): the failure detector counts silence in that interval.
pub fn check_interval(
    report: &HeartbeatReport,
    max: std::time::Duration,
) -> Result<(), IngestError> {
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    if report.heartbeat_interval_ms > max_ms {
        return Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            "heartbeat_interval_ms",
            format!(
                "a heartbeat interval of {} ms is longer than this server accepts ({max_ms} ms, \
                 detector.max_heartbeat_interval): a node's death would be noticed only after \
                 several of them; lower the agent's heartbeat_interval",
                report.heartbeat_interval_ms
            ),
        )));
    }
    Ok(())
}

/// Most VRRP instances one report may carry.
pub const MAX_INSTANCES: usize = 256;
/// Most VIPs one instance may carry.
pub const MAX_VIPS: usize = 64;
/// Most replication links one report may carry.
pub const MAX_LINKS: usize = 64;
/// Most service checks one report may carry.
pub const MAX_CHECKS: usize = hapulse_protocol::MAX_SERVICE_CHECKS;

/// Checks what deserialisation cannot; the error names the field.
pub fn validate(report: &HeartbeatReport) -> Result<(), IngestError> {
    check_header(report)?;
    check_host(report)?;
    check_counts(report)?;
    for (n, l) in report.replication.iter().enumerate() {
        check_link(n, l, &report.replication[..n])?;
    }
    let instances = &report.keepalived.instances;
    for (n, i) in instances.iter().enumerate() {
        check_instance(n, i, &instances[..n])?;
    }
    for (n, c) in report.checks.iter().enumerate() {
        check_service_check(n, c, &report.checks[..n])?;
    }
    if let Some(arp) = &report.arp {
        check_arp(arp)?;
    }
    if let Some(p) = &report.pacemaker {
        check_pacemaker(p)?;
    }
    check_keepalived_extras(report)
}

/// A refusal of `field` in the keepalived part of a report.
fn refuse(field: String, reason: String) -> IngestError {
    IngestError::from(Refusal::invalid("invalid_body", field, reason))
}

/// A name of a sync group, tracked item, virtual or real server: 1 to
/// [`MAX_KEEPALIVED_NAME_BYTES`] bytes, no control characters.
fn keepalived_name(field: String, name: &str) -> Result<(), IngestError> {
    if name.is_empty() || !text_ok(name, MAX_KEEPALIVED_NAME_BYTES) {
        return Err(refuse(
            field,
            format!("1-{MAX_KEEPALIVED_NAME_BYTES} bytes, no control characters"),
        ));
    }
    Ok(())
}

/// Sync groups, tracked scripts and interfaces, virtual and real servers: at most
/// [`MAX_KEEPALIVED_ITEMS`] of each (and [`MAX_REAL_SERVERS`] real servers per virtual server),
/// each name bounded.
fn check_keepalived_extras(report: &HeartbeatReport) -> Result<(), IngestError> {
    let k = &report.keepalived;
    let many = |field: &str, len: usize, max: usize| {
        (len > max).then(|| refuse(field.to_string(), format!("at most {max}")))
    };
    if let Some(e) = many(
        "keepalived.sync_groups",
        k.sync_groups.len(),
        MAX_KEEPALIVED_ITEMS,
    )
    .or_else(|| {
        many(
            "keepalived.virtual_servers",
            k.virtual_servers.len(),
            MAX_KEEPALIVED_ITEMS,
        )
    }) {
        return Err(e);
    }
    for (n, g) in k.sync_groups.iter().enumerate() {
        keepalived_name(format!("keepalived.sync_groups[{n}].name"), &g.name)?;
        if let Some(e) = many(
            &format!("keepalived.sync_groups[{n}].members"),
            g.members.len(),
            MAX_KEEPALIVED_ITEMS,
        ) {
            return Err(e);
        }
        for (m, member) in g.members.iter().enumerate() {
            keepalived_name(format!("keepalived.sync_groups[{n}].members[{m}]"), member)?;
        }
    }
    for (n, i) in k.instances.iter().enumerate() {
        if let Some(g) = &i.sync_group {
            keepalived_name(format!("keepalived.instances[{n}].sync_group"), g)?;
        }
        for (what, items) in [
            ("tracked_scripts", &i.tracked_scripts),
            ("tracked_interfaces", &i.tracked_interfaces),
        ] {
            let field = format!("keepalived.instances[{n}].{what}");
            if let Some(e) = many(&field, items.len(), MAX_KEEPALIVED_ITEMS) {
                return Err(e);
            }
            for (t, item) in items.iter().enumerate() {
                keepalived_name(format!("{field}[{t}].name"), &item.name)?;
            }
        }
    }
    for (n, v) in k.virtual_servers.iter().enumerate() {
        keepalived_name(format!("keepalived.virtual_servers[{n}].name"), &v.name)?;
        let field = format!("keepalived.virtual_servers[{n}].real_servers");
        if let Some(e) = many(&field, v.real_servers.len(), MAX_REAL_SERVERS) {
            return Err(e);
        }
        for (r, rs) in v.real_servers.iter().enumerate() {
            keepalived_name(format!("{field}[{r}].address"), &rs.address)?;
        }
    }
    Ok(())
}

/// The ARP report: at most [`hapulse_protocol::MAX_ARP_INTERFACES`] interfaces (names as the
/// kernel allows, MACs as [`hapulse_protocol::valid_mac`]),
/// [`hapulse_protocol::MAX_ARP_PROBES`] probes of
/// [`hapulse_protocol::MAX_ARP_ANSWERS`] MACs each, VIPs that are IP addresses, bounded texts.
fn check_arp(arp: &hapulse_protocol::ArpReport) -> Result<(), IngestError> {
    let refuse = |field: String, why: String| {
        Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            field,
            why,
        )))
    };
    // The agent's own range (`arp_check_interval`): a probe's freshness is judged against it.
    if !(2_000..=3_600_000).contains(&arp.interval_ms) {
        return refuse(
            "arp.interval_ms".into(),
            "between 2000 and 3600000 (2 s to 1 h)".into(),
        );
    }
    if arp.interfaces.len() > hapulse_protocol::MAX_ARP_INTERFACES {
        let max = hapulse_protocol::MAX_ARP_INTERFACES;
        return refuse("arp.interfaces".into(), format!("at most {max} interfaces"));
    }
    if arp.probes.len() > hapulse_protocol::MAX_ARP_PROBES {
        let max = hapulse_protocol::MAX_ARP_PROBES;
        return refuse("arp.probes".into(), format!("at most {max} probes"));
    }
    for (n, i) in arp.interfaces.iter().enumerate() {
        if i.name.is_empty() || !text_ok(&i.name, 15) || i.name.contains(['/', ' ']) {
            return refuse(
                format!("arp.interfaces[{n}].name"),
                "1-15 bytes, no spaces, slashes or control characters".into(),
            );
        }
        if !hapulse_protocol::valid_mac(&i.mac) {
            return refuse(
                format!("arp.interfaces[{n}].mac"),
                "six lower-case hex pairs separated by colons".into(),
            );
        }
    }
    for (n, p) in arp.probes.iter().enumerate() {
        let field = |name: &str| format!("arp.probes[{n}].{name}");
        // The rule of instance names themselves (keepalived allows `VI:1`, `web+db`): a
        // stricter one here refused every heartbeat of such a node, which then looked down.
        if p.instance.is_empty()
            || p.instance.len() > 64
            || p.instance.chars().any(char::is_control)
        {
            return refuse(field("instance"), "1-64 printable characters".into());
        }
        if p.vip.parse::<std::net::IpAddr>().is_err() {
            return refuse(field("vip"), "an IP address".into());
        }
        if p.interface.is_empty() || !text_ok(&p.interface, 15) {
            return refuse(
                field("interface"),
                "1-15 bytes, no control characters".into(),
            );
        }
        if p.answered_by.len() > hapulse_protocol::MAX_ARP_ANSWERS {
            let max = hapulse_protocol::MAX_ARP_ANSWERS;
            return refuse(field("answered_by"), format!("at most {max} addresses"));
        }
        if let Some(m) = p
            .answered_by
            .iter()
            .position(|m| !hapulse_protocol::valid_mac(m))
        {
            return refuse(
                format!("arp.probes[{n}].answered_by[{m}]"),
                "six lower-case hex pairs separated by colons".into(),
            );
        }
        let max = hapulse_protocol::MAX_ARP_ERROR_BYTES;
        if p.error.as_ref().is_some_and(|e| !text_ok(e, max)) {
            return refuse(
                field("error"),
                format!("at most {max} bytes, no control characters"),
            );
        }
    }
    Ok(())
}

/// A Pacemaker view: lists within the protocol's bounds, names and texts within
/// [`hapulse_protocol::MAX_PACEMAKER_TEXT_BYTES`] without control characters (the error within
/// [`hapulse_protocol::MAX_CHECK_TEXT_BYTES`]).
fn check_pacemaker(p: &hapulse_protocol::PacemakerReport) -> Result<(), IngestError> {
    use hapulse_protocol::{
        MAX_PACEMAKER_FAILURES as FAILURES, MAX_PACEMAKER_NODES as NODES,
        MAX_PACEMAKER_RESOURCES as RESOURCES, MAX_PACEMAKER_TEXT_BYTES as TEXT,
    };
    let refuse = |field: String, why: String| {
        Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            field,
            why,
        )))
    };
    for (field, len, max) in [
        ("pacemaker.nodes", p.nodes.len(), NODES),
        ("pacemaker.resources", p.resources.len(), RESOURCES),
        ("pacemaker.failures", p.failures.len(), FAILURES),
    ] {
        if len > max {
            return refuse(field.into(), format!("at most {max} entries"));
        }
    }
    let mut texts: Vec<(String, &str, usize)> = Vec::new();
    if let Some(e) = &p.error {
        texts.push((
            "pacemaker.error".into(),
            e,
            hapulse_protocol::MAX_CHECK_TEXT_BYTES,
        ));
    }
    for (name, v) in [("local_node", &p.local_node), ("dc", &p.dc)] {
        if let Some(v) = v {
            texts.push((format!("pacemaker.{name}"), v, TEXT));
        }
    }
    for (n, x) in p.nodes.iter().enumerate() {
        texts.push((format!("pacemaker.nodes[{n}].name"), &x.name, TEXT));
    }
    for (n, x) in p.resources.iter().enumerate() {
        if x.nodes.len() > NODES {
            return refuse(
                format!("pacemaker.resources[{n}].nodes"),
                format!("at most {NODES}"),
            );
        }
        let field = |f: &str| format!("pacemaker.resources[{n}].{f}");
        texts.extend([
            (field("id"), x.id.as_str(), TEXT),
            (field("agent"), &x.agent, TEXT),
            (field("role"), &x.role, TEXT),
        ]);
        texts.extend(x.parent.as_deref().map(|v| (field("parent"), v, TEXT)));
        texts.extend(
            x.target_role
                .as_deref()
                .map(|v| (field("target_role"), v, TEXT)),
        );
        texts.extend(
            x.nodes
                .iter()
                .enumerate()
                .map(|(i, v)| (field(&format!("nodes[{i}]")), v.as_str(), TEXT)),
        );
    }
    for (n, f) in p.failures.iter().enumerate() {
        let field = |x: &str| format!("pacemaker.failures[{n}].{x}");
        texts.extend([
            (field("resource"), f.resource.as_str(), TEXT),
            (field("task"), &f.task, TEXT),
            (field("node"), &f.node, TEXT),
            (field("exit_reason"), &f.exit_reason, TEXT),
        ]);
        texts.extend(
            f.last_rc_change
                .as_deref()
                .map(|v| (field("last_rc_change"), v, TEXT)),
        );
    }
    match texts.into_iter().find(|(_, v, max)| !text_ok(v, *max)) {
        Some((field, _, max)) => {
            refuse(field, format!("at most {max} bytes, no control characters"))
        }
        None => Ok(()),
    }
}

/// Service check `c`, number `n`: its name (unique among the checks `before` it), texts and
/// duration.
fn check_service_check(
    n: usize,
    c: &ServiceCheckReport,
    before: &[ServiceCheckReport],
) -> Result<(), IngestError> {
    let field = |name: &str| format!("checks[{n}].{name}");
    if !valid_name(&c.name) {
        return Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            field("name"),
            "1-64 characters of A-Z a-z 0-9 . _ -",
        )));
    }
    if before.iter().any(|o| o.name == c.name) {
        return Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            field("name"),
            format!("check {} appears twice", c.name),
        )));
    }
    for (name, value, max) in [
        (
            "target",
            Some(&c.target),
            hapulse_protocol::MAX_CHECK_TEXT_BYTES,
        ),
        (
            "detail",
            Some(&c.detail),
            hapulse_protocol::MAX_CHECK_TEXT_BYTES,
        ),
        ("vrrp_instance", c.vrrp_instance.as_ref(), 64),
        ("link", c.link.as_ref(), 130),
    ] {
        if value.is_some_and(|v| !text_ok(v, max)) {
            return Err(IngestError::from(Refusal::invalid(
                "invalid_body",
                field(name),
                format!("at most {max} bytes, no control characters"),
            )));
        }
    }
    if c.duration_ms.is_some_and(|d| !d.is_finite() || d < 0.0) {
        return Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            field("duration_ms"),
            "must be a finite number ≥ 0",
        )));
    }
    Ok(())
}

/// Text PostgreSQL stores as given: at most `max` bytes, no control characters (NUL above all
/// would make PostgreSQL refuse the row with a 500 the agent retries forever).
fn text_ok(s: &str, max: usize) -> bool {
    s.len() <= max && !s.chars().any(char::is_control)
}

/// The report's header: protocol version, node and cluster names, sequence number, interval.
fn check_header(report: &HeartbeatReport) -> Result<(), IngestError> {
    if !(OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&report.protocol_version) {
        return Err(IngestError::from(Refusal::invalid(
            "protocol_version",
            "protocol_version",
            format!(
                "protocol version {} is not supported; this server speaks \
                 {OLDEST_PROTOCOL_VERSION} to {PROTOCOL_VERSION} (upgrade servers first, then agents)",
                report.protocol_version
            ),
        )));
    }
    if !valid_name(&report.node_id) {
        return Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            "node_id",
            "1-64 characters of A-Z a-z 0-9 . _ -",
        )));
    }
    if !valid_name(&report.cluster) {
        return Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            "cluster",
            "1-64 characters of A-Z a-z 0-9 . _ -",
        )));
    }
    if report.seq == 0 || report.seq > i64::MAX as u64 {
        return Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            "seq",
            "must be between 1 and 2^63-1",
        )));
    }
    if !(100..=3_600_000).contains(&report.heartbeat_interval_ms) {
        return Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            "heartbeat_interval_ms",
            "must be 100..=3600000",
        )));
    }
    Ok(())
}

/// What the report says of its host and agent: hostname, agent version, load.
fn check_host(report: &HeartbeatReport) -> Result<(), IngestError> {
    if !text_ok(&report.hostname, 255) {
        return Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            "hostname",
            "at most 255 bytes, no control characters",
        )));
    }
    if !text_ok(&report.agent_version, 64) {
        return Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            "agent_version",
            "at most 64 bytes, no control characters",
        )));
    }
    if !report.load1.is_finite() || report.load1 < 0.0 {
        return Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            "load1",
            "must be a finite number ≥ 0",
        )));
    }
    Ok(())
}

/// At most [`MAX_INSTANCES`] VRRP instances, [`MAX_LINKS`] replication links and
/// [`MAX_CHECKS`] service checks.
fn check_counts(report: &HeartbeatReport) -> Result<(), IngestError> {
    if report.keepalived.instances.len() > MAX_INSTANCES {
        return Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            "keepalived.instances",
            format!("at most {MAX_INSTANCES} instances"),
        )));
    }
    if report.replication.len() > MAX_LINKS {
        return Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            "replication",
            format!("at most {MAX_LINKS} links"),
        )));
    }
    if report.checks.len() > MAX_CHECKS {
        return Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            "checks",
            format!("at most {MAX_CHECKS} checks"),
        )));
    }
    Ok(())
}

/// Replication link `l`, number `n`: its name (unique among the links `before` it), texts, lag
/// and raw fields.
fn check_link(
    n: usize,
    l: &ReplicationLinkReport,
    before: &[ReplicationLinkReport],
) -> Result<(), IngestError> {
    let field = |name: &str| format!("replication[{n}].{name}");
    if !valid_name(&l.name) {
        return Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            field("name"),
            "1-64 characters of A-Z a-z 0-9 . _ -",
        )));
    }
    if before.iter().any(|o| o.key() == l.key()) {
        return Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            field("name"),
            format!("link {} appears twice", l.key()),
        )));
    }
    for (name, value, max) in [
        ("peer", &l.peer, 1024),
        ("vrrp_instance", &l.vrrp_instance, 64),
        ("error", &l.error, 4096),
    ] {
        if value.as_deref().is_some_and(|v| !text_ok(v, max)) {
            return Err(IngestError::from(Refusal::invalid(
                "invalid_body",
                field(name),
                format!("at most {max} bytes, no control characters"),
            )));
        }
    }
    if l.lag_seconds.is_some_and(|s| !s.is_finite() || s < 0.0) {
        return Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            field("lag_seconds"),
            "must be a finite number ≥ 0",
        )));
    }
    if l.raw.len() > 256
        || l.raw
            .iter()
            .any(|(k, v)| k.len() > 128 || v.len() > 4096 || k.contains('\0') || v.contains('\0'))
    {
        return Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            field("raw"),
            "at most 256 fields, names ≤ 128 and values ≤ 4096 bytes, no NUL",
        )));
    }
    Ok(())
}

/// VRRP instance `i`, number `n`: its name (unique among the instances `before` it),
/// interface, and VIPs.
fn check_instance(
    n: usize,
    i: &VrrpInstanceReport,
    before: &[VrrpInstanceReport],
) -> Result<(), IngestError> {
    let field = |name: &str| format!("keepalived.instances[{n}].{name}");
    if i.name.is_empty() || i.name.len() > 64 || i.name.chars().any(char::is_control) {
        return Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            field("name"),
            "1-64 printable characters",
        )));
    }
    if before.iter().any(|o| o.name == i.name) {
        return Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            field("name"),
            format!("instance {:?} appears twice", i.name),
        )));
    }
    if i.interface.as_ref().is_some_and(|s| !text_ok(s, 64)) {
        return Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            field("interface"),
            "at most 64 bytes, no control characters",
        )));
    }
    if i.auth_type
        .as_deref()
        .is_some_and(|t| !["none", "pass", "ah", "unknown"].contains(&t))
    {
        return Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            field("auth_type"),
            "none, pass, ah or unknown",
        )));
    }
    check_vips(n, i)
}

/// The VIPs of instance `i`, number `n`: at most [`MAX_VIPS`], IP addresses, and the held ones
/// among them.
fn check_vips(n: usize, i: &VrrpInstanceReport) -> Result<(), IngestError> {
    if i.vips.len() > MAX_VIPS {
        return Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            format!("keepalived.instances[{n}].vips"),
            format!("at most {MAX_VIPS} VIPs"),
        )));
    }
    for (v, vip) in i.vips.iter().enumerate() {
        if vip.parse::<std::net::IpAddr>().is_err() {
            return Err(IngestError::from(Refusal::invalid(
                "invalid_body",
                format!("keepalived.instances[{n}].vips[{v}]"),
                format!("{vip:?} is not an IP address"),
            )));
        }
    }
    if let Some(v) = i.held_vips.iter().position(|h| !i.vips.contains(h)) {
        return Err(IngestError::from(Refusal::invalid(
            "invalid_body",
            format!("keepalived.instances[{n}].held_vips[{v}]"),
            "a held VIP must be one of the instance's vips",
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hapulse_protocol::testing::{arp_probe, report};
    use hapulse_protocol::{RealServerReport, SyncGroupReport, VirtualServerReport, VrrpState};

    type Change = dyn Fn(&mut hapulse_protocol::ArpReport);

    fn refused_field(r: &HeartbeatReport) -> String {
        match validate(r) {
            Err(IngestError::Refused(refusal)) => refusal.field.unwrap_or_default(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn refusal_text(r: &HeartbeatReport) -> String {
        match validate(r) {
            Err(IngestError::Refused(refusal)) => format!("{refusal:?}"),
            other => panic!("accepted: {other:?}"),
        }
    }

    #[test]
    fn arp_reports_are_bounded_and_well_formed() {
        let good = report("a", "c")
            .arp(
                &[("eth0", "52:54:00:00:00:0a")],
                vec![arp_probe(
                    "VI_1",
                    "10.0.0.100",
                    true,
                    &["52:54:00:00:00:0b"],
                )],
            )
            .build();
        validate(&good).unwrap();
        let with = |change: &Change| {
            let mut r = good.clone();
            if let Some(arp) = r.arp.as_mut() {
                change(arp);
            }
            refused_field(&r)
        };
        let cases: [(&Change, &str); 7] = [
            (
                &|a| a.interfaces[0].mac = "52:54:00:00:00:0A".into(),
                "arp.interfaces[0].mac",
            ),
            (
                &|a| a.interfaces[0].name = "x".repeat(16),
                "arp.interfaces[0].name",
            ),
            (
                &|a| a.interfaces = vec![a.interfaces[0].clone(); 65],
                "arp.interfaces",
            ),
            (
                &|a| a.probes[0].vip = "not-an-ip".into(),
                "arp.probes[0].vip",
            ),
            (
                &|a| a.probes[0].answered_by = vec!["52:54:00:00:00:0b".into(); 17],
                "arp.probes[0].answered_by",
            ),
            (
                &|a| a.probes[0].answered_by.push("zz".into()),
                "arp.probes[0].answered_by[1]",
            ),
            (
                &|a| a.probes[0].error = Some("a\nb".into()),
                "arp.probes[0].error",
            ),
        ];
        for (change, field) in cases {
            let got = with(change);
            assert_eq!(got, field);
        }
        let too_many = with(&|a| a.probes = vec![a.probes[0].clone(); 257]);
        assert_eq!(too_many, "arp.probes");
        assert_eq!(with(&|a| a.interval_ms = 0), "arp.interval_ms");
        // Any name keepalived takes for an instance is a probe's instance too.
        let mut colon = good.clone();
        if let Some(arp) = colon.arp.as_mut() {
            arp.probes[0].instance = "VI:1 web+db".into();
        }
        validate(&colon).unwrap();
    }

    #[test]
    fn keepalived_groups_and_virtual_servers_are_bounded() {
        let mut r = report("a", "c").build();
        r.keepalived.sync_groups = vec![SyncGroupReport {
            name: "G1".into(),
            state: VrrpState::Master,
            members: vec!["VI_1".into()],
            tracking_weight: Some(true),
        }];
        let vs = VirtualServerReport {
            name: "[10.0.0.1]:tcp:80".into(),
            up: true,
            real_servers: vec![RealServerReport {
                address: "[10.0.0.11]:tcp:80".into(),
                up: true,
                weight: Some(1),
            }],
            omitted_up: 0,
            omitted_down: 0,
        };
        r.keepalived.virtual_servers = vec![vs.clone()];
        validate(&r).unwrap();

        let mut long = r.clone();
        long.keepalived.sync_groups[0].name = "g".repeat(MAX_KEEPALIVED_NAME_BYTES + 1);
        assert!(refusal_text(&long).contains("keepalived.sync_groups[0].name"));

        let mut many = r.clone();
        many.keepalived.virtual_servers[0].real_servers =
            vec![vs.real_servers[0].clone(); MAX_REAL_SERVERS + 1];
        assert!(refusal_text(&many).contains("keepalived.virtual_servers[0].real_servers"));

        let mut control = r;
        control.keepalived.virtual_servers[0].real_servers[0].address = "[x]\n".into();
        assert!(refusal_text(&control).contains("real_servers[0].address"));
    }
}
