//! The probe itself: the instance table built from FIFO lines and JSON dumps, with the VIPs the
//! kernel holds filled in at snapshot time.

use std::collections::BTreeMap;
use std::time::Duration;

use hapulse_protocol::{KeepalivedReport, VrrpCounters, VrrpInstanceReport, VrrpState};

use super::dump;
use super::fifo::InstanceTransition;
use super::vips;
use crate::config::KeepalivedSettings;

/// Live view of keepalived on this host. Not shared: the agent's main loop owns it.
pub struct KeepalivedProbe {
    settings: KeepalivedSettings,
    /// Signal number of keepalived's JSON dump, asked from the binary; `None` until known.
    json_signal: Option<i32>,
    /// The failure to learn `json_signal` was already logged at warning level.
    json_signal_warned: bool,
    /// Last known instances by name; `held_vips` is filled in at snapshot time.
    instances: BTreeMap<String, VrrpInstanceReport>,
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
            instances: BTreeMap::new(),
            addresses,
        };
        probe.resolve_json_signal().await;
        Ok(probe)
    }

    async fn resolve_json_signal(&mut self) {
        if self.json_signal.is_some() {
            return;
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
                instance.clone()
            })
            .collect();
        KeepalivedReport { running, instances }
    }
}

/// Asks `keepalived --signum=JSON` for the JSON dump signal number (36 on Debian's 2.2.7).
pub async fn json_signal_number(binary: &std::path::Path) -> std::io::Result<i32> {
    let output = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new(binary)
            .arg("--signum=JSON")
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
