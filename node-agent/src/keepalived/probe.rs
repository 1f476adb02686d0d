//! The probe itself: the instance table built from FIFO lines and JSON dumps, with the VIPs the
//! kernel holds filled in at snapshot time.

use std::collections::BTreeMap;
use std::time::Duration;

use hapulse_protocol::{
    KeepalivedReport, RealServerReport, SyncGroupReport, VirtualServerReport, VrrpCounters,
    VrrpInstanceReport, VrrpState, MAX_KEEPALIVED_ITEMS, MAX_REAL_SERVERS,
};

use super::data::{self, InstanceTracking};
use super::dump;
use super::fifo::{FifoLine, InstanceTransition};
use super::vips;
use crate::config::KeepalivedSettings;

/// Live view of keepalived on this host. Not shared: the agent's main loop owns it.
pub struct KeepalivedProbe {
    settings: KeepalivedSettings,
    /// Signal number of keepalived's JSON dump, asked from the binary; `None` until known.
    json_signal: Option<i32>,
    /// The failure to learn `json_signal` was already logged at warning level.
    json_signal_warned: bool,
    /// Signal number of keepalived's data dump (`--signum=DATA`); `None` until known.
    data_signal: Option<i32>,
    /// Last known instances by name; `held_vips` is filled in at snapshot time.
    instances: BTreeMap<String, VrrpInstanceReport>,
    /// Sync groups, tracked scripts and interfaces from the last data dump (and `GROUP` lines).
    tracking: BTreeMap<String, InstanceTracking>,
    /// Sync groups by name: members from the data dump, state from it or a later `GROUP` line.
    sync_groups: BTreeMap<String, SyncGroupReport>,
    /// LVS virtual servers by name, from the FIFO's `VS` and `RS` lines.
    virtual_servers: BTreeMap<String, VirtualServerReport>,
    addresses: vips::AddressTable,
}

/// The pid in the pid file `path`, when that process is alive: it exists and is not a zombie (a
/// killed keepalived whose parent has not reaped it yet still answers kill(pid, 0)).
pub fn live_pid(path: &std::path::Path) -> Option<i32> {
    let text = std::fs::read_to_string(path).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    crate::sys::kill(pid, 0).ok()?;
    // /proc/PID/stat: "pid (comm) state …"; comm may hold spaces and parentheses.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    (!matches!(state, "Z" | "X")).then_some(pid)
}

impl KeepalivedProbe {
    /// Opens the netlink socket and asks keepalived for its JSON signal number.
    pub async fn new(settings: KeepalivedSettings) -> std::io::Result<Self> {
        let addresses = vips::AddressTable::open()?;
        let mut probe = KeepalivedProbe {
            settings,
            json_signal: None,
            json_signal_warned: false,
            data_signal: None,
            instances: BTreeMap::new(),
            tracking: BTreeMap::new(),
            sync_groups: BTreeMap::new(),
            virtual_servers: BTreeMap::new(),
            addresses,
        };
        probe.resolve_json_signal().await;
        Ok(probe)
    }

    async fn resolve_json_signal(&mut self) {
        if self.json_signal.is_some() {
            return;
        }
        if self.data_signal.is_none() {
            match signal_number(&self.settings.binary, "DATA").await {
                Ok(n) => self.data_signal = Some(n),
                Err(e) => tracing::debug!(error = %e, "keepalived DATA signal unknown"),
            }
        }
        match json_signal_number(&self.settings.binary).await {
            Ok(n) => {
                tracing::info!(signal = n, "keepalived JSON dump signal");
                self.json_signal = Some(n);
            }
            Err(e) if !self.json_signal_warned => {
                self.json_signal_warned = true;
                tracing::warn!(
                    binary = %self.settings.binary.display(),
                    error = %e,
                    "cannot learn keepalived's JSON signal; reporting from the notify FIFO only until it can"
                );
            }
            Err(e) => tracing::debug!(error = %e, "keepalived JSON signal still unknown"),
        }
    }

    /// The pid in keepalived's pid file, when that process is alive ([`live_pid`]).
    pub fn keepalived_pid(&self) -> Option<i32> {
        live_pid(&self.settings.pid_file)
    }

    /// Applies one FIFO line. Returns true when it changed what the probe knows.
    pub fn apply_line(&mut self, line: &FifoLine) -> bool {
        match line {
            FifoLine::Instance(t) => self.apply_transition(t),
            FifoLine::Group(g) => {
                if !self.sync_groups.contains_key(&g.name)
                    && self.sync_groups.len() >= MAX_KEEPALIVED_ITEMS
                {
                    return false;
                }
                let Some(group) = self.sync_groups.get_mut(&g.name) else {
                    let group = SyncGroupReport {
                        name: g.name.clone(),
                        state: g.state,
                        members: Vec::new(),
                        tracking_weight: None,
                    };
                    self.sync_groups.insert(g.name.clone(), group);
                    return true;
                };
                std::mem::replace(&mut group.state, g.state) != g.state
            }
            FifoLine::VirtualServer(v) => {
                let new = !self.virtual_servers.contains_key(&v.name);
                let Some(vs) = self.virtual_server(&v.name) else {
                    return false;
                };
                std::mem::replace(&mut vs.up, v.up) != v.up || new
            }
            FifoLine::RealServer(r) => {
                let new = !self.virtual_servers.contains_key(&r.virtual_server);
                let Some(vs) = self.virtual_server(&r.virtual_server) else {
                    return false;
                };
                if new {
                    // An RS line before its VS line: the quorum is unknown, taken as up while
                    // this real server is.
                    vs.up = r.up;
                }
                if let Some(rs) = vs.real_servers.iter_mut().find(|s| s.address == r.address) {
                    return std::mem::replace(&mut rs.up, r.up) != r.up;
                }
                if vs.real_servers.len() >= MAX_REAL_SERVERS {
                    return false;
                }
                vs.real_servers.push(RealServerReport {
                    address: r.address.clone(),
                    up: r.up,
                    weight: None,
                });
                true
            }
            FifoLine::Other(_) => false,
        }
    }

    /// The virtual server `name`, created (quorum down, no real servers) when new; `None` once
    /// [`MAX_KEEPALIVED_ITEMS`] are known.
    fn virtual_server(&mut self, name: &str) -> Option<&mut VirtualServerReport> {
        if !self.virtual_servers.contains_key(name)
            && self.virtual_servers.len() >= MAX_KEEPALIVED_ITEMS
        {
            return None;
        }
        Some(
            self.virtual_servers
                .entry(name.to_string())
                .or_insert_with(|| VirtualServerReport {
                    name: name.to_string(),
                    up: false,
                    real_servers: Vec::new(),
                    omitted_up: 0,
                    omitted_down: 0,
                }),
        )
    }

    /// Applies one instance transition. Returns true when it changed what the probe knows.
    pub fn apply_transition(&mut self, t: &InstanceTransition) -> bool {
        let entry = self
            .instances
            .entry(t.name.clone())
            .or_insert_with(|| VrrpInstanceReport {
                name: t.name.clone(),
                vrid: None,
                interface: None,
                state: t.state,
                base_priority: None,
                effective_priority: None,
                vips: Vec::new(),
                held_vips: Vec::new(),
                last_transition: None,
                counters: VrrpCounters::default(),
                advert_interval_ms: None,
                auth_type: None,
                garp_master_repeat: None,
                garp_master_delay_s: None,
                sync_group: None,
                tracked_scripts: Vec::new(),
                tracked_interfaces: Vec::new(),
            });
        let before = (entry.state, entry.effective_priority);
        entry.state = t.state;
        if t.priority.is_some() {
            entry.effective_priority = t.priority;
        }
        entry.last_transition = Some(chrono::Utc::now());
        before != (entry.state, entry.effective_priority)
    }

    /// Asks keepalived for a JSON dump and replaces the instance table with it. Failures are
    /// logged (with the offending text for a malformed dump) and leave the table as it was.
    pub async fn reconcile(&mut self) {
        let Some(pid) = self.keepalived_pid() else {
            return;
        };
        self.resolve_json_signal().await;
        let Some(signal) = self.json_signal else {
            return;
        };
        match dump::request_dump(
            pid,
            signal,
            &self.settings.json_dump,
            self.settings.dump_timeout,
        )
        .await
        {
            Ok(instances) => {
                self.instances = instances
                    .into_iter()
                    .map(|d| {
                        let report = VrrpInstanceReport {
                            name: d.name.clone(),
                            vrid: Some(d.vrid),
                            interface: Some(d.interface),
                            state: d.state,
                            base_priority: Some(d.base_priority),
                            effective_priority: Some(d.effective_priority),
                            vips: d.vips,
                            held_vips: Vec::new(),
                            last_transition: d.last_transition,
                            counters: d.counters,
                            advert_interval_ms: d.advert_interval_ms,
                            auth_type: d.auth_type,
                            garp_master_repeat: d.garp_master_repeat,
                            garp_master_delay_s: d.garp_master_delay_s,
                            // Filled in from the data dump at snapshot time.
                            sync_group: None,
                            tracked_scripts: Vec::new(),
                            tracked_interfaces: Vec::new(),
                        };
                        (d.name, report)
                    })
                    .collect();
            }
            Err(dump::DumpError::Format(reason)) => {
                let text = std::fs::read_to_string(&self.settings.json_dump).unwrap_or_default();
                tracing::warn!(error = %reason, dump = %text, "malformed keepalived JSON dump skipped");
            }
            Err(e) => tracing::warn!(error = %e, "keepalived JSON dump failed"),
        }
        self.reconcile_data(pid).await;
    }

    /// Asks keepalived for its data dump and replaces sync groups and tracking with it. A
    /// failure is logged (never the dump's text: it holds the VRRP password in clear) and leaves
    /// them as they were.
    async fn reconcile_data(&mut self, pid: i32) {
        let Some(signal) = self.data_signal else {
            return;
        };
        match data::request_data_dump(
            pid,
            signal,
            &self.settings.data_dump_path(),
            self.settings.dump_timeout,
        )
        .await
        {
            Ok(dump) => {
                self.tracking = dump.instances;
                self.sync_groups = dump
                    .sync_groups
                    .into_iter()
                    .map(|g| (g.name.clone(), g))
                    .collect();
            }
            Err(e) => tracing::warn!(error = %e, "keepalived data dump failed"),
        }
    }

    /// The current report: keepalived up or down, each instance with the VIPs the kernel has.
    pub async fn snapshot(&mut self) -> KeepalivedReport {
        let running = self.keepalived_pid().is_some();
        // On a netlink failure the VIPs keep the holders last seen: an empty answer would look
        // like every VIP leaving this host.
        let addresses = match self.addresses.addresses().await {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!(error = %e, "reading interface addresses over netlink failed; keeping the last known VIP holders");
                None
            }
        };
        let instances = self
            .instances
            .values_mut()
            .map(|instance| {
                if !running && instance.state != VrrpState::Stop {
                    instance.state = VrrpState::Stop;
                    instance.last_transition = Some(chrono::Utc::now());
                }
                if let Some(addresses) = &addresses {
                    instance.held_vips = instance
                        .vips
                        .iter()
                        .filter(|vip| {
                            vip.parse::<std::net::IpAddr>()
                                .is_ok_and(|ip| addresses.contains(&ip))
                        })
                        .cloned()
                        .collect();
                }
                if let Some(t) = self.tracking.get(&instance.name) {
                    instance.sync_group.clone_from(&t.sync_group);
                    instance.tracked_scripts.clone_from(&t.tracked_scripts);
                    instance
                        .tracked_interfaces
                        .clone_from(&t.tracked_interfaces);
                }
                instance.clone()
            })
            .collect();
        let sync_groups = self
            .sync_groups
            .values_mut()
            .map(|g| {
                if !running {
                    g.state = VrrpState::Stop;
                }
                g.clone()
            })
            .collect();
        KeepalivedReport {
            running,
            instances,
            sync_groups,
            virtual_servers: hapulse_protocol::bound_real_servers(
                self.virtual_servers.values().cloned().collect(),
            ),
        }
    }
}

/// Asks `keepalived --signum=JSON` for the JSON dump signal number (36 on Debian's 2.2.7).
pub async fn json_signal_number(binary: &std::path::Path) -> std::io::Result<i32> {
    signal_number(binary, "JSON").await
}

/// Asks `keepalived --signum=NAME` for a signal number (`JSON` 36, `DATA` 10 on Debian's
/// 2.2.7).
pub async fn signal_number(binary: &std::path::Path, name: &str) -> std::io::Result<i32> {
    let output = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new(binary)
            .arg(format!("--signum={name}"))
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| std::io::Error::other("timed out"))??;
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|n| output.status.success() && *n > 0)
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "unexpected answer {:?} (exit {})",
                text.trim(),
                output.status
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keepalived::fifo::parse_line;

    #[tokio::test]
    async fn group_vs_and_rs_lines_build_the_report() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = crate::config::Settings::default().keepalived;
        // No keepalived behind this pid file: the report says keepalived is not running.
        settings.pid_file = dir.path().join("none.pid");
        let mut probe = KeepalivedProbe::new(settings).await.unwrap();
        for line in [
            "GROUP \"G1\" MASTER 0",
            "VS [10.213.40.100]:tcp:80 UP",
            "RS [10.213.40.11]:tcp:80 [10.213.40.100]:tcp:80 UP",
            "RS [10.213.40.12]:tcp:80 [10.213.40.100]:tcp:80 UP",
            "RS [10.213.40.12]:tcp:80 [10.213.40.100]:tcp:80 DOWN",
        ] {
            assert!(probe.apply_line(&parse_line(line).unwrap()), "{line}");
        }
        // The same state again changes nothing.
        assert!(!probe.apply_line(&parse_line("VS [10.213.40.100]:tcp:80 UP").unwrap()));
        let report = probe.snapshot().await;
        assert_eq!(report.sync_groups[0].name, "G1");
        // keepalived is not running: its group is reported stopped, as its instances would be.
        assert_eq!(report.sync_groups[0].state, VrrpState::Stop);
        let vs = &report.virtual_servers[0];
        assert_eq!((vs.name.as_str(), vs.up), ("[10.213.40.100]:tcp:80", true));
        let rs: Vec<(&str, bool)> = vs
            .real_servers
            .iter()
            .map(|r| (r.address.as_str(), r.up))
            .collect();
        assert_eq!(
            rs,
            [
                ("[10.213.40.11]:tcp:80", true),
                ("[10.213.40.12]:tcp:80", false)
            ]
        );
        assert_eq!(vs.live_real_servers(), 1);
    }

    #[tokio::test]
    async fn a_large_lvs_director_lists_what_fits_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = crate::config::Settings::default().keepalived;
        settings.pid_file = dir.path().join("none.pid");
        let mut probe = KeepalivedProbe::new(settings).await.unwrap();
        // 200 virtual servers of 20 real servers (every third down): 4,000 in all.
        for v in 0..200 {
            let vs = format!("[10.213.{}.{}]:tcp:80", 100 + v / 200, v % 200);
            for r in 0..20 {
                let state = if r % 3 == 0 { "DOWN" } else { "UP" };
                let line = format!("RS [10.214.{v}.{r}]:tcp:80 {vs} {state}");
                probe.apply_line(&parse_line(&line).unwrap());
            }
        }
        let report = probe.snapshot().await;
        let vs = &report.virtual_servers;
        assert_eq!(vs.len(), 200);
        let listed: usize = vs.iter().map(|v| v.real_servers.len()).sum();
        assert_eq!(listed, hapulse_protocol::MAX_REAL_SERVERS_PER_REPORT);
        let total: usize = vs
            .iter()
            .map(|v| v.real_servers.len() + (v.omitted_up + v.omitted_down) as usize)
            .sum();
        assert_eq!(total, 4_000, "every real server listed or counted");
        let live: usize = vs.iter().map(|v| v.live_real_servers()).sum();
        assert_eq!(live, 200 * 13, "the live counts stay right");
        let body = serde_json::to_vec(&report).unwrap();
        assert!(body.len() < 256 * 1024, "{} bytes", body.len());
    }
}
