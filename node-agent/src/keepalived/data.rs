//! keepalived's data dump: on the DATA signal (`keepalived --signum=DATA`, SIGUSR1 = 10 on
//! Debian's 2.2.7) the VRRP process writes `/tmp/keepalived.data`, a text description of its
//! running state. The JSON dump has no sync groups and names tracked scripts by command and
//! tracked interfaces without their state, so hapulse reads these from the data dump.
//!
//! Format (keepalived 2.2.7 `vrrp/vrrp_data.c`, `vrrp/vrrp_track.c`, `vrrp/vrrp_if.c`; a real
//! dump is in `fixtures/sync_group.data`): sections open with `------< TITLE >------`; inside, a
//! block opens with one space of indent, its properties have three, list items five:
//!
//! ```text
//! ------< VRRP Topology >------
//!  VRRP Instance = VI_C
//!    Sync group = G1                (only for a member of a sync group)
//!    Tracked interfaces :
//!      kx1 weight -20               (dump_track_if: NAME weight W [reverse])
//!    Tracked scripts :
//!      chk_bad weight -10           (dump_track_script: NAME weight W [reverse])
//! ------< VRRP Sync groups >------
//!  VRRP Sync Group = G1, MASTER     (get_state_str: INIT BACKUP MASTER FAULT, else "unknown")
//!    VRRP member instances :
//!      VI_A
//!    sync group tracking weight set (only with sync_group_tracking_weight)
//! ------< VRRP Scripts >------
//!  VRRP Script = chk_bad
//!    Status = BAD                   (result >= rise ? GOOD : BAD)
//! ------< Interfaces >------
//!  Name = kx1
//!    State = UP, not RUNNING        ([not ]UP, [not ]RUNNING[, …])
//! ```
//!
//! Everything else (including the VRRP password, which this dump prints in clear) is skipped
//! unread. Lists are cut at [`MAX_KEEPALIVED_ITEMS`] so a report stays within what the server
//! accepts.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use hapulse_protocol::{
    SyncGroupReport, TrackStatus, TrackedItem, VrrpState, MAX_KEEPALIVED_ITEMS,
    MAX_KEEPALIVED_NAME_BYTES,
};

/// What the data dump says about one VRRP instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceTracking {
    /// Its sync group.
    pub sync_group: Option<String>,
    /// `track_script` entries, with the script's status.
    pub tracked_scripts: Vec<TrackedItem>,
    /// `track_interface` entries, with the interface's status.
    pub tracked_interfaces: Vec<TrackedItem>,
}

/// A parsed data dump: per-instance tracking and the sync groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataDump {
    /// By instance name.
    pub instances: BTreeMap<String, InstanceTracking>,
    /// The sync groups, in dump order.
    pub sync_groups: Vec<SyncGroupReport>,
}

/// A text that is not keepalived's data dump; carries the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("keepalived data dump: {0}")]
pub struct DataDumpError(pub String);

/// Which list a five-space item belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum List {
    TrackedInterfaces,
    TrackedScripts,
    Members,
}

/// Parser state: the section and block being read.
#[derive(Default)]
struct Reader {
    section: String,
    instance: Option<String>,
    group: Option<usize>,
    script: Option<String>,
    interface: Option<String>,
    list: Option<List>,
    dump: DataDump,
    script_status: BTreeMap<String, TrackStatus>,
    interface_status: BTreeMap<String, TrackStatus>,
}

/// A name as keepalived prints it: non-empty, printable, bounded.
fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_KEEPALIVED_NAME_BYTES
        && !name.chars().any(char::is_control)
}

/// `NAME weight W [reverse]`: the name and the weight (negated for `reverse`, as keepalived
/// applies it).
fn parse_tracked(item: &str) -> Result<(String, i32), DataDumpError> {
    let mut words = item.split_whitespace();
    let (Some(name), Some("weight"), Some(w)) = (words.next(), words.next(), words.next()) else {
        return Err(DataDumpError(format!(
            "tracked item {item:?} is not NAME weight W"
        )));
    };
    let weight: i32 = w
        .parse()
        .map_err(|_| DataDumpError(format!("weight {w:?} is not an integer")))?;
    let weight = match words.next() {
        None => weight,
        Some("reverse") => -weight,
        Some(other) => return Err(DataDumpError(format!("unexpected {other:?} after weight"))),
    };
    if !name_ok(name) {
        return Err(DataDumpError(format!("bad tracked name {name:?}")));
    }
    Ok((name.to_string(), weight))
}

impl Reader {
    fn block(&mut self, line: &str) -> Result<(), DataDumpError> {
        self.instance = None;
        self.group = None;
        self.script = None;
        self.interface = None;
        self.list = None;
        match self.section.as_str() {
            "VRRP Topology" => {
                if let Some(name) = line.strip_prefix("VRRP Instance = ") {
                    if !name_ok(name) {
                        return Err(DataDumpError(format!("bad instance name {name:?}")));
                    }
                    if self.dump.instances.len() < MAX_KEEPALIVED_ITEMS {
                        self.dump.instances.entry(name.to_string()).or_default();
                        self.instance = Some(name.to_string());
                    }
                }
            }
            "VRRP Sync groups" => {
                if let Some(rest) = line.strip_prefix("VRRP Sync Group = ") {
                    let (name, state) = rest.rsplit_once(", ").ok_or_else(|| {
                        DataDumpError(format!("sync group line {line:?} has no state"))
                    })?;
                    if !name_ok(name) {
                        return Err(DataDumpError(format!("bad sync group name {name:?}")));
                    }
                    // keepalived prints "unknown" for states other than the four it names
                    // (a stopping group): reported as STOP.
                    let state = VrrpState::parse(state).unwrap_or(VrrpState::Stop);
                    if self.dump.sync_groups.len() < MAX_KEEPALIVED_ITEMS {
                        self.dump.sync_groups.push(SyncGroupReport {
                            name: name.to_string(),
                            state,
                            members: Vec::new(),
                            tracking_weight: Some(false),
                        });
                        self.group = Some(self.dump.sync_groups.len() - 1);
                    }
                }
            }
            "VRRP Scripts" => {
                self.script = line.strip_prefix("VRRP Script = ").map(str::to_string);
            }
            "Interfaces" => {
                self.interface = line.strip_prefix("Name = ").map(str::to_string);
            }
            _ => {}
        }
        Ok(())
    }

    fn property(&mut self, line: &str) -> Result<(), DataDumpError> {
        self.list = None;
        if let Some(name) = &self.instance {
            let entry = self.dump.instances.entry(name.clone()).or_default();
            if let Some(group) = line.strip_prefix("Sync group = ") {
                if !name_ok(group) {
                    return Err(DataDumpError(format!("bad sync group name {group:?}")));
                }
                entry.sync_group = Some(group.to_string());
            } else if line == "Tracked interfaces :" {
                self.list = Some(List::TrackedInterfaces);
            } else if line == "Tracked scripts :" {
                self.list = Some(List::TrackedScripts);
            }
        } else if let Some(g) = self.group {
            if line == "VRRP member instances :" {
                self.list = Some(List::Members);
            } else if line == "sync group tracking weight set" {
                if let Some(group) = self.dump.sync_groups.get_mut(g) {
                    group.tracking_weight = Some(true);
                }
            }
        } else if let Some(script) = &self.script {
            if let Some(status) = line.strip_prefix("Status = ") {
                let status = match status {
                    "GOOD" => TrackStatus::Good,
                    "BAD" => TrackStatus::Bad,
                    other => {
                        return Err(DataDumpError(format!(
                            "script {script:?} has status {other:?}"
                        )))
                    }
                };
                self.script_status.insert(script.clone(), status);
            }
        } else if let Some(interface) = &self.interface {
            if let Some(state) = line.strip_prefix("State = ") {
                let good = state.starts_with("UP, RUNNING");
                self.interface_status.insert(
                    interface.clone(),
                    if good {
                        TrackStatus::Good
                    } else {
                        TrackStatus::Bad
                    },
                );
            }
        }
        Ok(())
    }

    fn item(&mut self, item: &str) -> Result<(), DataDumpError> {
        let Some(list) = self.list else {
            return Ok(());
        };
        match list {
            List::TrackedInterfaces | List::TrackedScripts => {
                let Some(name) = &self.instance else {
                    return Ok(());
                };
                let (tracked, weight) = parse_tracked(item)?;
                let entry = self.dump.instances.entry(name.clone()).or_default();
                let target = if list == List::TrackedScripts {
                    &mut entry.tracked_scripts
                } else {
                    &mut entry.tracked_interfaces
                };
                if target.len() < MAX_KEEPALIVED_ITEMS {
                    target.push(TrackedItem {
                        name: tracked,
                        weight,
                        status: None,
                    });
                }
            }
            List::Members => {
                if !name_ok(item) {
                    return Err(DataDumpError(format!("bad member name {item:?}")));
                }
                if let Some(group) = self.group.and_then(|g| self.dump.sync_groups.get_mut(g)) {
                    if group.members.len() < MAX_KEEPALIVED_ITEMS {
                        group.members.push(item.to_string());
                    }
                }
            }
        }
        Ok(())
    }

    /// Fills in each tracked item's status from the `VRRP Scripts` and `Interfaces` sections.
    fn finish(mut self) -> DataDump {
        for tracking in self.dump.instances.values_mut() {
            for s in &mut tracking.tracked_scripts {
                s.status = self.script_status.get(&s.name).copied();
            }
            for i in &mut tracking.tracked_interfaces {
                i.status = self.interface_status.get(&i.name).copied();
            }
        }
        self.dump
    }
}

/// Parses a whole data dump. A text without keepalived's `VRRP Topology` section, or with a
/// malformed line in a part hapulse reads, is refused.
pub fn parse_data_dump(text: &str) -> Result<DataDump, DataDumpError> {
    let mut reader = Reader::default();
    let mut topology = false;
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(title) = line
            .strip_prefix("------< ")
            .and_then(|l| l.strip_suffix(" >------"))
        {
            topology |= title == "VRRP Topology";
            reader.section = title.to_string();
            reader.block("")?;
        } else if let Some(item) = line.strip_prefix("     ") {
            reader.item(item.trim_start())?;
        } else if let Some(property) = line.strip_prefix("   ") {
            reader.property(property.trim_start())?;
        } else if let Some(block) = line.strip_prefix(' ') {
            reader.block(block)?;
        }
    }
    if !topology {
        return Err(DataDumpError("no VRRP Topology section".into()));
    }
    Ok(reader.finish())
}

/// Signals keepalived (`pid`) with `signal`, waits until it has rewritten `path` (its size
/// unchanged over two reads 20 ms apart: keepalived writes this file in place, not by rename) for
/// at most `timeout`, and parses it.
pub async fn request_data_dump(
    pid: i32,
    signal: i32,
    path: &Path,
    timeout: Duration,
) -> Result<DataDump, DataDumpError> {
    let stat = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    let before = stat(path);
    crate::sys::kill(pid, signal)
        .map_err(|e| DataDumpError(format!("signalling keepalived pid {pid}: {e}")))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = stat(path);
        if now.is_some() && now != before && now == last {
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| DataDumpError(format!("reading {}: {e}", path.display())))?;
            return parse_data_dump(&text);
        }
        last = now;
        if tokio::time::Instant::now() >= deadline {
            return Err(DataDumpError(format!(
                "keepalived did not write {} within {timeout:?} of the signal",
                path.display()
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_dump_captured_from_keepalived_2_2_7() {
        // The lab: sync group G1 = VI_A + VI_B, both tracking chk_ok (/bin/true, weight 0);
        // VI_C outside the group tracking chk_bad (/bin/false, weight -10) and interface kx1
        // (up, no carrier, weight -20): its priority 120 dropped to 90.
        let dump = parse_data_dump(include_str!("fixtures/sync_group.data")).unwrap();
        assert_eq!(
            dump.sync_groups,
            vec![SyncGroupReport {
                name: "G1".into(),
                state: VrrpState::Master,
                members: vec!["VI_A".into(), "VI_B".into()],
                tracking_weight: Some(false),
            }]
        );
        let a = &dump.instances["VI_A"];
        assert_eq!(a.sync_group.as_deref(), Some("G1"));
        assert_eq!(
            a.tracked_scripts,
            vec![TrackedItem {
                name: "chk_ok".into(),
                weight: 0,
                status: Some(TrackStatus::Good)
            }]
        );
        assert!(a.tracked_interfaces.is_empty());
        let c = &dump.instances["VI_C"];
        assert_eq!(c.sync_group, None);
        assert_eq!(
            c.tracked_scripts,
            vec![TrackedItem {
                name: "chk_bad".into(),
                weight: -10,
                status: Some(TrackStatus::Bad)
            }]
        );
        assert_eq!(
            c.tracked_interfaces,
            vec![TrackedItem {
                name: "kx1".into(),
                weight: -20,
                status: Some(TrackStatus::Bad)
            }]
        );
        assert_eq!(dump.instances.len(), 3);
    }

    #[test]
    fn reverse_weights_and_unknown_statuses() {
        let text = "------< VRRP Topology >------\n VRRP Instance = VI_1\n   Tracked scripts :\n     chk weight 5 reverse\n   Tracked interfaces :\n     eth9 weight 0\n";
        let dump = parse_data_dump(text).unwrap();
        let i = &dump.instances["VI_1"];
        assert_eq!(i.tracked_scripts[0].weight, -5);
        assert_eq!(i.tracked_scripts[0].status, None);
        assert_eq!(i.tracked_interfaces[0].status, None);
    }

    #[test]
    fn reads_sync_group_tracking_weight_from_a_lab_dump() {
        // `scripts/lab up 2 --sync-group`, h1: G1 = VI_1 + VI_2 with sync_group_tracking_weight,
        // VI_2 tracking chk_lab (weight 0) and both hapulse's track files.
        let dump = parse_data_dump(include_str!("fixtures/lab_sync_group.data")).unwrap();
        assert_eq!(
            dump.sync_groups,
            vec![SyncGroupReport {
                name: "G1".into(),
                state: VrrpState::Master,
                members: vec!["VI_1".into(), "VI_2".into()],
                tracking_weight: Some(true),
            }]
        );
        let vi2 = &dump.instances["VI_2"];
        assert_eq!(vi2.sync_group.as_deref(), Some("G1"));
        assert_eq!(
            vi2.tracked_scripts,
            vec![TrackedItem {
                name: "chk_lab".into(),
                weight: 0,
                status: Some(TrackStatus::Good),
            }]
        );
    }

    #[test]
    fn refuses_what_is_not_a_data_dump() {
        for bad in [
            "",
            "garbage",
            "[{\"data\":{}}]",
            "------< VRRP Topology >------\n VRRP Instance = VI_1\n   Tracked scripts :\n     chk weight x\n",
            "------< VRRP Topology >------\n VRRP Instance = VI_1\n   Tracked scripts :\n     chk\n",
            "------< VRRP Topology >------\n------< VRRP Sync groups >------\n VRRP Sync Group = G1\n",
            "------< VRRP Topology >------\n------< VRRP Scripts >------\n VRRP Script = s\n   Status = MAYBE\n",
        ] {
            assert!(parse_data_dump(bad).is_err(), "accepted {bad:?}");
        }
        // A dump cut short while keepalived writes it still parses what it holds.
        let full = include_str!("fixtures/sync_group.data");
        let cut = &full[..full.find("------< VRRP Sync groups").unwrap()];
        assert!(parse_data_dump(cut).unwrap().sync_groups.is_empty());
    }
}
