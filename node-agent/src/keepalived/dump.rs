//! keepalived's JSON dump: on the JSON signal (`keepalived --signum=JSON`, 36 on Debian's 2.2.7)
//! the VRRP process writes `/tmp/keepalived.json`, an array with one `{"data": {...},
//! "stats": {...}}` object per VRRP instance. Fields used (keepalived `vrrp_json.c`): `iname`,
//! `vrid`, `ifp_ifname`, `state` (0 INIT, 1 BACKUP, 2 MASTER, 3 FAULT, 98 STOP),
//! `base_priority`, `effective_priority`, `vips` (strings such as
//! `"10.0.0.100/24 dev eth0 scope global set"`), `last_transition` (seconds since the epoch, with
//! a fraction), `adver_int` (seconds as a JSON number: `1` with VRRPv2, a fraction such as
//! `0.25` with VRRPv3 and a centisecond `advert_int` — 2.2.7 dumps both; see
//! `fixtures/*_vrrp3_advert_0_25.json`),
//! `auth_type` (`vrrp.h`: 0 none, 1 PASS, 2 AH; the password itself is dumped as asterisks and
//! not read), `garp_rep` and `garp_delay` (the gratuitous ARP burst on becoming MASTER and the
//! delay of the second: `vrrp_garp_master_repeat`, `vrrp_garp_master_delay`; the `stats` have no
//! gratuitous ARP counter) and the counters in `stats`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use hapulse_protocol::{VrrpCounters, VrrpState};
use serde::Deserialize;

/// One instance as the dump describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpInstance {
    /// Instance name.
    pub name: String,
    /// Virtual router id.
    pub vrid: u8,
    /// Interface name.
    pub interface: String,
    /// VRRP state.
    pub state: VrrpState,
    /// Configured priority.
    pub base_priority: u8,
    /// Priority after tracking.
    pub effective_priority: u8,
    /// VIPs as bare addresses.
    pub vips: Vec<String>,
    /// Last state change.
    pub last_transition: Option<DateTime<Utc>>,
    /// keepalived's counters.
    pub counters: VrrpCounters,
    /// Configured advertisement interval, milliseconds.
    pub advert_interval_ms: Option<u32>,
    /// `none`, `pass` or `ah`.
    pub auth_type: Option<String>,
    /// Gratuitous ARPs per VIP sent at once on becoming MASTER (`garp_rep`).
    pub garp_master_repeat: Option<u32>,
    /// Seconds until the second burst (`garp_delay`).
    pub garp_master_delay_s: Option<u32>,
}

/// A dump that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The dump path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not keepalived's JSON dump format.
    #[error("not a keepalived JSON dump: {0}")]
    Format(String),
    /// keepalived did not rewrite the dump in time after the signal.
    #[error("keepalived did not write {path} within {timeout:?} of the signal")]
    Timeout {
        /// The dump path.
        path: String,
        /// How long the agent waited.
        timeout: Duration,
    },
    /// The signal could not be sent.
    #[error("signalling keepalived pid {pid}: {source}")]
    Signal {
        /// keepalived's pid.
        pid: i32,
        /// The error of kill(2).
        source: std::io::Error,
    },
}

#[derive(Deserialize)]
struct RawEntry {
    data: RawData,
    #[serde(default)]
    stats: RawStats,
}

#[derive(Deserialize)]
struct RawData {
    iname: String,
    vrid: u8,
    #[serde(default)]
    ifp_ifname: String,
    state: i64,
    base_priority: u8,
    effective_priority: u8,
    #[serde(default)]
    vips: Vec<String>,
    #[serde(default)]
    last_transition: Option<f64>,
    // Read leniently: a build that dumps these differently must not cost the whole dump.
    #[serde(default)]
    adver_int: Option<serde_json::Value>,
    #[serde(default)]
    auth_type: Option<serde_json::Value>,
    #[serde(default)]
    garp_rep: Option<serde_json::Value>,
    #[serde(default)]
    garp_delay: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct RawStats {
    #[serde(default)]
    become_master: u64,
    #[serde(default)]
    release_master: u64,
    #[serde(default)]
    advert_rcvd: u64,
    #[serde(default)]
    advert_sent: u64,
    #[serde(default)]
    pri_zero_sent: u64,
    #[serde(default)]
    pri_zero_rcvd: u64,
}

/// keepalived's numeric instance state (`vrrp.h`: `VRRP_STATE_*`).
fn state_from_number(n: i64) -> Option<VrrpState> {
    Some(match n {
        0 => VrrpState::Init,
        1 => VrrpState::Backup,
        2 => VrrpState::Master,
        3 => VrrpState::Fault,
        98 => VrrpState::Stop,
        _ => return None,
    })
}

/// The bare address of a keepalived VIP string (`"10.0.0.100/24 dev eth0 scope global"` →
/// `10.0.0.100`), or `None` when it does not start with an IP address.
pub fn vip_address(vip: &str) -> Option<String> {
    let first = vip.split_whitespace().next()?;
    let addr = first.split('/').next()?;
    addr.parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| ip.to_string())
}

/// Parses a whole dump.
pub fn parse_dump(text: &str) -> Result<Vec<DumpInstance>, DumpError> {
    let entries: Vec<RawEntry> =
        serde_json::from_str(text).map_err(|e| DumpError::Format(e.to_string()))?;
    entries
        .into_iter()
        .map(|RawEntry { data, stats }| {
            let state = state_from_number(data.state).ok_or_else(|| {
                DumpError::Format(format!(
                    "instance {:?} has unknown state {}",
                    data.iname, data.state
                ))
            })?;
            let vips = data
                .vips
                .iter()
                .map(|v| {
                    vip_address(v).ok_or_else(|| {
                        DumpError::Format(format!(
                            "instance {:?} has a VIP that is not an address: {v:?}",
                            data.iname
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let last_transition = data
                .last_transition
                .filter(|t| t.is_finite() && *t > 0.0)
                .and_then(|t| DateTime::from_timestamp_micros((t * 1e6) as i64));
            Ok(DumpInstance {
                name: data.iname,
                vrid: data.vrid,
                interface: data.ifp_ifname,
                state,
                base_priority: data.base_priority,
                effective_priority: data.effective_priority,
                vips,
                last_transition,
                counters: VrrpCounters {
                    become_master: stats.become_master,
                    release_master: stats.release_master,
                    advert_rcvd: stats.advert_rcvd,
                    advert_sent: stats.advert_sent,
                    pri_zero_sent: stats.pri_zero_sent,
                    pri_zero_rcvd: stats.pri_zero_rcvd,
                },
                advert_interval_ms: data
                    .adver_int
                    .as_ref()
                    .and_then(serde_json::Value::as_f64)
                    .filter(|s| s.is_finite() && *s > 0.0 && *s < 256.0)
                    .map(|s| (s * 1000.0).round() as u32),
                auth_type: data.auth_type.as_ref().map(|t| {
                    match t.as_u64() {
                        Some(0) => "none",
                        Some(1) => "pass",
                        Some(2) => "ah",
                        _ => "unknown",
                    }
                    .to_string()
                }),
                garp_master_repeat: small_count(data.garp_rep.as_ref()),
                garp_master_delay_s: small_count(data.garp_delay.as_ref()),
            })
        })
        .collect()
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Signals keepalived (`pid`) with `signal`, waits until it rewrites `path` (at most `timeout`),
/// and parses the new dump. A half-written file is read again until it parses or time runs out.
pub async fn request_dump(
    pid: i32,
    signal: i32,
    path: &Path,
    timeout: Duration,
) -> Result<Vec<DumpInstance>, DumpError> {
    let before = modified(path);
    crate::sys::kill(pid, signal).map_err(|source| DumpError::Signal { pid, source })?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now_modified = modified(path);
        if now_modified.is_some() && now_modified != before {
            match tokio::fs::read_to_string(path).await {
                Ok(text) => match parse_dump(&text) {
                    Ok(instances) => return Ok(instances),
                    Err(e) => last_error = Some(e),
                },
                Err(source) => {
                    last_error = Some(DumpError::Read {
                        path: path.display().to_string(),
                        source,
                    })
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(last_error.unwrap_or(DumpError::Timeout {
                path: path.display().to_string(),
                timeout,
            }));
        }
    }
}

/// A non-negative integer of at most 86400 (a day), read leniently: anything else is None.
fn small_count(value: Option<&serde_json::Value>) -> Option<u32> {
    value
        .and_then(serde_json::Value::as_u64)
        .filter(|n| *n <= 86_400)
        .and_then(|n| u32::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dumps_captured_from_keepalived_2_2_7() {
        let master = parse_dump(include_str!("fixtures/master.json")).unwrap();
        assert_eq!(master.len(), 1);
        let m = &master[0];
        assert_eq!(m.name, "VI_1");
        assert_eq!(m.vrid, 51);
        assert_eq!(
            (m.advert_interval_ms, m.auth_type.as_deref()),
            (Some(1000), Some("none"))
        );
        assert_eq!(m.interface, "eth0");
        // Debian's default burst is 5; the lab sets vrrp_garp_master_delay 1.
        assert_eq!(
            (m.garp_master_repeat, m.garp_master_delay_s),
            (Some(5), Some(1))
        );
        assert_eq!(m.state, VrrpState::Master);
        assert_eq!((m.base_priority, m.effective_priority), (150, 150));
        assert_eq!(m.vips, vec!["10.213.0.100".to_string()]);
        assert_eq!(m.counters.become_master, 1);
        assert!(m.last_transition.unwrap().timestamp() > 1_700_000_000);

        let backup = parse_dump(include_str!("fixtures/backup.json")).unwrap();
        assert_eq!(backup[0].state, VrrpState::Backup);
        assert_eq!(backup[0].base_priority, 140);
        assert!(backup[0].counters.advert_rcvd > 0);
    }

    #[test]
    fn reads_a_sub_second_advert_interval_from_a_vrrp3_dump() {
        // Captured from the lab (`scripts/lab up 2 --advert-int 0.25`: `vrrp_version 3` in
        // global_defs, `advert_int 0.25`): keepalived 2.2.7 dumps `"adver_int":0.25`.
        for (text, state) in [
            (
                include_str!("fixtures/master_vrrp3_advert_0_25.json"),
                VrrpState::Master,
            ),
            (
                include_str!("fixtures/backup_vrrp3_advert_0_25.json"),
                VrrpState::Backup,
            ),
        ] {
            let dump = parse_dump(text).unwrap();
            assert_eq!(dump.len(), 1);
            assert_eq!(dump[0].state, state);
            assert_eq!(dump[0].advert_interval_ms, Some(250));
        }
        // Other centisecond values VRRPv3 allows, and what is no advert interval.
        for (adver_int, ms) in [
            ("0.01", Some(10)),
            ("0.1", Some(100)),
            ("0.35", Some(350)),
            ("1.5", Some(1500)),
            ("40.95", Some(40950)),
            ("3", Some(3000)),
            ("0", None),
            ("-1", None),
            ("\"1\"", None),
        ] {
            let text = format!(
                r#"[{{"data":{{"iname":"VI_1","vrid":51,"state":1,"base_priority":1,"effective_priority":1,"adver_int":{adver_int}}}}}]"#
            );
            assert_eq!(
                parse_dump(&text).unwrap()[0].advert_interval_ms,
                ms,
                "adver_int {adver_int}"
            );
        }
    }

    #[test]
    fn vip_strings() {
        assert_eq!(
            vip_address("10.0.0.1/24 dev eth0 scope global set").as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(
            vip_address("fd00::10/64 dev eth0").as_deref(),
            Some("fd00::10")
        );
        assert_eq!(vip_address("10.0.0.1").as_deref(), Some("10.0.0.1"));
        assert_eq!(vip_address("dev eth0"), None);
        assert_eq!(vip_address(""), None);
    }

    #[test]
    fn refuses_malformed_dumps() {
        for bad in [
            "",
            "{",
            "{}",
            r#"[{"stats":{}}]"#,
            r#"[{"data":{"iname":"VI_1","vrid":51,"state":7,"base_priority":1,"effective_priority":1}}]"#,
            r#"[{"data":{"iname":"VI_1","vrid":300,"state":1,"base_priority":1,"effective_priority":1}}]"#,
            r#"[{"data":{"iname":"VI_1","vrid":5,"state":1,"base_priority":1,"effective_priority":1,"vips":["bogus"]}}]"#,
        ] {
            assert!(parse_dump(bad).is_err(), "accepted {bad:?}");
        }
        // A truncated real dump, as a reader racing keepalived's write could see it.
        let full = include_str!("fixtures/master.json");
        assert!(parse_dump(&full[..full.len() / 2]).is_err());
    }

    #[tokio::test]
    async fn a_dump_request_to_a_dead_pid_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let err = request_dump(
            i32::MAX - 1,
            0,
            &dir.path().join("k.json"),
            Duration::from_millis(50),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, DumpError::Signal { .. }), "{err}");
    }
}
