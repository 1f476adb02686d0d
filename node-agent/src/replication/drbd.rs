//! DRBD 9 resources, from `drbdsetup status --json` (documented in drbdsetup(8); the shape is
//! an array of resources with `name`, `role`, `devices[]` (`disk-state`) and `connections[]`
//! (`name`, `connection-state`, `peer-role`, `peer_devices[]` with `replication-state`,
//! `peer-disk-state`, `out-of-sync` in KiB, `percent-in-sync` during a resync)). There is no
//! DRBD kernel module on the build machine: the parser is tested on fixtures in that format.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use hapulse_protocol::{LinkState, ReplicationKind, ReplicationLinkReport, ReplicationRole};
use serde::Deserialize;

#[derive(Deserialize)]
struct Resource {
    name: String,
    role: String,
    #[serde(default)]
    devices: Vec<Device>,
    #[serde(default)]
    connections: Vec<Connection>,
}

#[derive(Deserialize)]
struct Device {
    #[serde(rename = "disk-state")]
    disk_state: String,
}

#[derive(Deserialize)]
struct Connection {
    name: String,
    #[serde(rename = "connection-state")]
    connection_state: String,
    #[serde(rename = "peer-role", default)]
    peer_role: Option<String>,
    #[serde(default)]
    peer_devices: Vec<PeerDevice>,
}

#[derive(Deserialize)]
struct PeerDevice {
    #[serde(rename = "replication-state")]
    replication_state: String,
    #[serde(rename = "peer-disk-state")]
    peer_disk_state: String,
    #[serde(rename = "out-of-sync", default)]
    out_of_sync_kib: u64,
    #[serde(rename = "percent-in-sync", default)]
    percent_in_sync: Option<f64>,
}

/// One link per resource (restricted to `only` when it is not empty).
pub fn parse_status(text: &str, only: &[String]) -> Result<Vec<ReplicationLinkReport>, String> {
    let resources: Vec<Resource> = serde_json::from_str(text)
        .map_err(|e| format!("not drbdsetup status --json output: {e}"))?;
    resources
        .into_iter()
        .filter(|r| only.is_empty() || only.contains(&r.name))
        .map(link)
        .collect()
}

fn link(r: Resource) -> Result<ReplicationLinkReport, String> {
    let role = match r.role.as_str() {
        "Primary" => ReplicationRole::Primary,
        "Secondary" => ReplicationRole::Secondary,
        "Unknown" => ReplicationRole::Unknown,
        other => return Err(format!("resource {}: unknown role {other:?}", r.name)),
    };
    let mut raw = BTreeMap::from([("role".to_string(), r.role.clone())]);
    for (i, d) in r.devices.iter().enumerate() {
        raw.insert(format!("devices[{i}].disk-state"), d.disk_state.clone());
    }
    let mut state = if r.connections.is_empty() {
        LinkState::Disconnected
    } else {
        LinkState::Streaming
    };
    let mut out_of_sync = 0u64;
    for c in &r.connections {
        raw.insert(
            format!("{}.connection-state", c.name),
            c.connection_state.clone(),
        );
        if let Some(peer_role) = &c.peer_role {
            raw.insert(format!("{}.peer-role", c.name), peer_role.clone());
        }
        if c.connection_state != "Connected" {
            state = LinkState::Disconnected;
        }
        for (i, p) in c.peer_devices.iter().enumerate() {
            raw.insert(
                format!("{}.peer_devices[{i}].replication-state", c.name),
                p.replication_state.clone(),
            );
            raw.insert(
                format!("{}.peer_devices[{i}].peer-disk-state", c.name),
                p.peer_disk_state.clone(),
            );
            raw.insert(
                format!("{}.peer_devices[{i}].out-of-sync", c.name),
                p.out_of_sync_kib.to_string(),
            );
            if let Some(pct) = p.percent_in_sync {
                raw.insert(
                    format!("{}.peer_devices[{i}].percent-in-sync", c.name),
                    pct.to_string(),
                );
            }
            // Each peer has its own count of what it lacks: the worst one is the lag.
            out_of_sync = out_of_sync.max(p.out_of_sync_kib);
            let device_state = peer_device_state(&p.replication_state, &p.peer_disk_state);
            if state == LinkState::Streaming {
                state = device_state;
            }
        }
    }
    // This host's own disk: not UpToDate means it cannot serve as it claims.
    for d in &r.devices {
        state = match (d.disk_state.as_str(), state) {
            ("UpToDate", s) => s,
            ("Inconsistent", LinkState::Streaming) => LinkState::CatchingUp,
            ("Inconsistent", s) => s,
            _ => LinkState::Disconnected,
        };
    }
    let peer = (!r.connections.is_empty()).then(|| {
        r.connections
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    });
    Ok(ReplicationLinkReport {
        kind: ReplicationKind::Drbd,
        name: r.name,
        role,
        peer,
        state,
        lag_bytes: Some(out_of_sync.saturating_mul(1024)),
        lag_seconds: None,
        vrrp_instance: None,
        error: None,
        raw,
    })
}

/// The link state one peer device shows, from its `replication-state` and `peer-disk-state`.
fn peer_device_state(replication_state: &str, peer_disk_state: &str) -> LinkState {
    match (replication_state, peer_disk_state) {
        ("Established", "UpToDate") => LinkState::Streaming,
        ("Established", "Inconsistent") => LinkState::CatchingUp,
        // Connected, but the peer's disk cannot take over (Diskless, Outdated, …).
        ("Established", _) => LinkState::Disconnected,
        (s, _)
            if s.starts_with("Sync")
                || s.starts_with("PausedSync")
                || s.starts_with("WFBitMap")
                || s.starts_with("Verify") =>
        {
            LinkState::CatchingUp
        }
        ("Off", _) => LinkState::Disconnected,
        _ => LinkState::CatchingUp,
    }
}

/// Runs `drbdsetup status --json` (no shell, cleared environment, killed on timeout).
pub struct DrbdProbe {
    command: PathBuf,
    resources: Vec<String>,
    timeout: Duration,
}

impl DrbdProbe {
    /// A probe of `resources` (all when empty) through the `drbdsetup` at `command`.
    pub fn new(command: PathBuf, resources: Vec<String>, timeout: Duration) -> Self {
        DrbdProbe {
            command,
            resources,
            timeout,
        }
    }

    /// One link per resource.
    pub async fn probe(&mut self) -> Result<Vec<ReplicationLinkReport>, String> {
        let output = tokio::time::timeout(
            self.timeout,
            tokio::process::Command::new(&self.command)
                .args(["status", "--json"])
                .env_clear()
                .env("PATH", "/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| format!("drbdsetup: no answer within {:?}", self.timeout))?
        .map_err(|e| format!("cannot run {}: {e}", self.command.display()))?;
        if !output.status.success() {
            return Err(format!(
                "drbdsetup status: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        parse_status(&String::from_utf8_lossy(&output.stdout), &self.resources)
    }
}

/// `drbdadm primary|secondary RESOURCE` ([`hapulse_protocol::Action::DrbdRole`]). Before
/// `primary`, every local disk of the resource must be `UpToDate` by `drbdsetup status --json
/// RESOURCE` (the `[[drbd]]` section's `drbdsetup`): an `Inconsistent`, `Outdated` or missing
/// disk is never promoted.
pub async fn set_role(
    settings: &crate::config::Settings,
    resource: &str,
    role: ReplicationRole,
) -> Result<String, String> {
    let timeout = settings.actions.timeout;
    let verb = match role {
        ReplicationRole::Primary => "primary",
        ReplicationRole::Secondary => "secondary",
        ReplicationRole::Unknown => return Err("role must be primary or secondary".into()),
    };
    if role == ReplicationRole::Primary {
        let drbdsetup = settings
            .drbd
            .iter()
            .find(|d| d.resources.is_empty() || d.resources.iter().any(|r| r == resource))
            .map_or_else(|| PathBuf::from("drbdsetup"), |d| d.drbdsetup.clone());
        let links = DrbdProbe::new(drbdsetup, vec![resource.to_string()], timeout)
            .probe()
            .await?;
        check_promotable(&links, resource)?;
    }
    let drbdadm = settings.actions.drbdadm.to_string_lossy().into_owned();
    crate::child::run(
        &drbdadm,
        &[verb.to_string(), resource.to_string()],
        &BTreeMap::new(),
        timeout,
    )
    .await
}

/// Every local disk of `resource` in `links` is `UpToDate`; Err names the first that is not.
fn check_promotable(links: &[ReplicationLinkReport], resource: &str) -> Result<(), String> {
    let link = links
        .iter()
        .find(|l| l.name == resource)
        .ok_or_else(|| format!("{resource} is not in drbdsetup status: not promoted"))?;
    let disks: Vec<(&String, &String)> = link
        .raw
        .iter()
        .filter(|(k, _)| k.starts_with("devices[") && k.ends_with("].disk-state"))
        .collect();
    if disks.is_empty() {
        return Err(format!("{resource} has no local disk: not promoted"));
    }
    match disks
        .into_iter()
        .find(|(_, state)| state.as_str() != "UpToDate")
    {
        Some((key, state)) => Err(format!(
            "{resource}'s {key} is {state}, not UpToDate: never promoted"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_up_to_date_disk_is_promoted() {
        let links = parse_status(include_str!("fixtures/drbd_connected.json"), &[]).unwrap();
        assert!(check_promotable(&links, "r1").is_ok());
        assert!(check_promotable(&links, "r9")
            .unwrap_err()
            .contains("not in drbdsetup status"));
        for state in ["Outdated", "Inconsistent", "Diskless"] {
            let text = include_str!("fixtures/drbd_connected.json").replacen(
                "\"disk-state\": \"UpToDate\"",
                &format!("\"disk-state\": \"{state}\""),
                1,
            );
            let links = parse_status(&text, &[]).unwrap();
            let why = check_promotable(&links, "r0").unwrap_err();
            assert!(
                why.contains(state) && why.contains("never promoted"),
                "{why}"
            );
        }
    }

    #[test]
    fn connected_and_in_sync() {
        let links = parse_status(include_str!("fixtures/drbd_connected.json"), &[]).unwrap();
        assert_eq!(links.len(), 2);
        let r0 = &links[0];
        assert_eq!(
            (r0.name.as_str(), r0.role, r0.state),
            ("r0", ReplicationRole::Primary, LinkState::Streaming)
        );
        assert_eq!(r0.lag_bytes, Some(0));
        assert_eq!(r0.peer.as_deref(), Some("node2"));
        assert_eq!(
            r0.raw
                .get("node2.peer_devices[0].peer-disk-state")
                .map(String::as_str),
            Some("UpToDate")
        );
        let only = parse_status(
            include_str!("fixtures/drbd_connected.json"),
            &["r1".to_string()],
        )
        .unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].role, ReplicationRole::Secondary);
    }

    #[test]
    fn resyncing_and_disconnected() {
        let links = parse_status(include_str!("fixtures/drbd_resync.json"), &[]).unwrap();
        assert_eq!(links[0].state, LinkState::CatchingUp);
        assert_eq!(links[0].lag_bytes, Some(524_288 * 1024));
        assert_eq!(
            links[0]
                .raw
                .get("node2.peer_devices[0].percent-in-sync")
                .map(String::as_str),
            Some("50.2")
        );
        assert_eq!(links[1].state, LinkState::Disconnected);
        assert_eq!(
            links[1]
                .raw
                .get("node2.connection-state")
                .map(String::as_str),
            Some("Connecting")
        );
    }

    #[test]
    fn disk_states_count() {
        let json = r#"[{"name":"r0","role":"Primary","devices":[{"disk-state":"Diskless"}],
            "connections":[{"name":"a","connection-state":"Connected","peer_devices":[{"replication-state":"Established","peer-disk-state":"UpToDate","out-of-sync":5}]},
                           {"name":"b","connection-state":"Connected","peer_devices":[{"replication-state":"Established","peer-disk-state":"UpToDate","out-of-sync":7}]}]}]"#;
        let link = &parse_status(json, &[]).unwrap()[0];
        assert_eq!(link.state, LinkState::Disconnected, "a diskless primary");
        assert_eq!(
            link.lag_bytes,
            Some(7 * 1024),
            "the worst peer, not the sum"
        );
        let outdated_peer = json.replace("Diskless", "UpToDate").replacen(
            "\"peer-disk-state\":\"UpToDate\"",
            "\"peer-disk-state\":\"Outdated\"",
            1,
        );
        assert_eq!(
            parse_status(&outdated_peer, &[]).unwrap()[0].state,
            LinkState::Disconnected
        );
    }

    #[test]
    fn malformed_output_is_an_error() {
        for bad in [
            "",
            "{}",
            "[{\"name\":\"r0\"}]",
            "[{\"name\":\"r0\",\"role\":\"Boss\"}]",
            "[{\"name\":\"r0\",\"role\":\"Primary\",\"connections\":[{\"name\":\"n\"}]}]",
        ] {
            assert!(parse_status(bad, &[]).is_err(), "accepted {bad:?}");
        }
    }
}
