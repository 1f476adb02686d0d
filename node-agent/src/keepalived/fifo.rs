//! keepalived's `notify_fifo`: one line per state change. keepalived also writes the state of
//! every instance and group when it starts. Source: keepalived.conf(5), `notify_fifo`, and the
//! writers in keepalived 2.2.7: `vrrp/vrrp_notify.c` (`notify_fifo`: `TYPE "NAME" STATE PRIO`)
//! and `check/ipwrapper.c` (`notify_fifo_vs`, `notify_fifo_rs`). The lines hapulse reads:
//!
//! - `INSTANCE "VI_1" MASTER 120`: a VRRP instance's state and effective priority;
//! - `GROUP "G1" MASTER 0`: a `vrrp_sync_group`'s state (the priority is always 0);
//! - `VS [10.0.0.1]:tcp:80 UP`: an LVS virtual server's quorum went up or down; the name is
//!   keepalived's `format_vs` (`[ADDR]:PROTO:PORT`, `FWM MARK`, or `[GROUP]:PORT`);
//! - `RS [192.168.1.10]:tcp:80 [10.0.0.1]:tcp:80 DOWN`: a real server of that virtual server
//!   went up or down (`format_rs`, then `format_vs`).

use std::path::Path;

use hapulse_protocol::VrrpState;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A state change of one VRRP instance, read from the FIFO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceTransition {
    /// Instance name (`VI_1`).
    pub name: String,
    /// New state.
    pub state: VrrpState,
    /// Effective priority at the change.
    pub priority: Option<u8>,
}

/// A state change of one `vrrp_sync_group` (`GROUP "G1" MASTER 0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupTransition {
    /// Group name.
    pub name: String,
    /// New state of the whole group on this host.
    pub state: VrrpState,
}

/// An LVS virtual server's quorum change (`VS NAME UP|DOWN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualServerChange {
    /// The virtual server as keepalived formats it (`[10.0.0.1]:tcp:80`, `FWM 5`).
    pub name: String,
    /// Quorum up.
    pub up: bool,
}

/// An LVS real server's health change (`RS RS_NAME VS_NAME UP|DOWN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealServerChange {
    /// The real server (`[192.168.1.10]:tcp:80`).
    pub address: String,
    /// The virtual server it belongs to, as in [`VirtualServerChange::name`].
    pub virtual_server: String,
    /// Its checks pass.
    pub up: bool,
}

/// What one FIFO line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FifoLine {
    /// `INSTANCE "name" STATE PRIORITY`.
    Instance(InstanceTransition),
    /// `GROUP "name" STATE 0`.
    Group(GroupTransition),
    /// `VS name UP|DOWN`.
    VirtualServer(VirtualServerChange),
    /// `RS name vs-name UP|DOWN`.
    RealServer(RealServerChange),
    /// A line of another type (`MASTER_RX_LOWER_PRI`, …) that hapulse does not use; carries the
    /// type word.
    Other(String),
}

/// A line that is not in keepalived's notify format; carries the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FifoParseError(pub String);

/// Parses one FIFO line (without its newline).
pub fn parse_line(line: &str) -> Result<FifoLine, FifoParseError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line
        .split_once(' ')
        .ok_or_else(|| FifoParseError("expected TYPE \"NAME\" STATE [PRIORITY]".into()))?;
    if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
        return Err(FifoParseError(format!("bad type word {kind:?}")));
    }
    match kind {
        "INSTANCE" => {
            let (name, state, priority) = parse_vrrp_line(rest)?;
            Ok(FifoLine::Instance(InstanceTransition {
                name,
                state,
                priority,
            }))
        }
        "GROUP" => {
            let (name, state, _) = parse_vrrp_line(rest)?;
            Ok(FifoLine::Group(GroupTransition { name, state }))
        }
        "VS" => {
            let (name, up) = split_up_down(rest)?;
            check_lvs_name(name, "virtual server")?;
            Ok(FifoLine::VirtualServer(VirtualServerChange {
                name: name.to_string(),
                up,
            }))
        }
        "RS" => {
            let (names, up) = split_up_down(rest)?;
            let (address, virtual_server) = names
                .split_once(' ')
                .ok_or_else(|| FifoParseError("expected RS REAL VIRTUAL UP|DOWN".into()))?;
            check_lvs_name(address, "real server")?;
            check_lvs_name(virtual_server, "virtual server")?;
            Ok(FifoLine::RealServer(RealServerChange {
                address: address.to_string(),
                virtual_server: virtual_server.to_string(),
                up,
            }))
        }
        _ => Ok(FifoLine::Other(kind.to_string())),
    }
}

/// `"NAME" STATE [PRIORITY]`, the rest of an `INSTANCE` or `GROUP` line.
fn parse_vrrp_line(rest: &str) -> Result<(String, VrrpState, Option<u8>), FifoParseError> {
    let rest = rest
        .strip_prefix('"')
        .ok_or_else(|| FifoParseError("name is not quoted".into()))?;
    let (name, rest) = rest
        .split_once('"')
        .ok_or_else(|| FifoParseError("name has no closing quote".into()))?;
    if name.is_empty() {
        return Err(FifoParseError("empty name".into()));
    }
    let mut words = rest.split_whitespace();
    let state_word = words
        .next()
        .ok_or_else(|| FifoParseError("missing state".into()))?;
    let state = VrrpState::parse(state_word)
        .ok_or_else(|| FifoParseError(format!("unknown state {state_word:?}")))?;
    let priority = match words.next() {
        None => None,
        Some(p) => Some(
            p.parse::<u8>()
                .map_err(|_| FifoParseError(format!("priority {p:?} is not 0..=255")))?,
        ),
    };
    if let Some(extra) = words.next() {
        return Err(FifoParseError(format!("unexpected trailing {extra:?}")));
    }
    Ok((name.to_string(), state, priority))
}

/// `… UP` or `… DOWN`: the text before the last word, and whether it is `UP`.
fn split_up_down(rest: &str) -> Result<(&str, bool), FifoParseError> {
    let (names, state) = rest
        .rsplit_once(' ')
        .ok_or_else(|| FifoParseError("missing UP or DOWN".into()))?;
    match state {
        "UP" => Ok((names, true)),
        "DOWN" => Ok((names, false)),
        other => Err(FifoParseError(format!(
            "expected UP or DOWN, not {other:?}"
        ))),
    }
}

/// A virtual or real server name as keepalived formats it: `[ADDR]:PROTO:PORT`,
/// `[GROUP]:PORT` or `FWM MARK`, printable, at most
/// [`hapulse_protocol::MAX_KEEPALIVED_NAME_BYTES`].
fn check_lvs_name(name: &str, what: &str) -> Result<(), FifoParseError> {
    let shaped = match name.strip_prefix("FWM ") {
        Some(mark) => mark.parse::<u32>().is_ok(),
        None => name.starts_with('[') && name.contains("]:"),
    };
    if !shaped
        || name.len() > hapulse_protocol::MAX_KEEPALIVED_NAME_BYTES
        || name.chars().any(char::is_control)
    {
        return Err(FifoParseError(format!(
            "{what} {name:?} is not [ADDRESS]:PROTO:PORT, [GROUP]:PORT or FWM MARK"
        )));
    }
    Ok(())
}

/// Creates the FIFO at `path` when nothing is there (mode 0600), so the agent can start before
/// keepalived. A regular file at that path is an error: keepalived would write into it unread.
pub fn ensure_fifo(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(meta) if meta.file_type().is_fifo() => Ok(()),
        Ok(_) => Err(std::io::Error::other(format!(
            "{} exists and is not a FIFO",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            crate::sys::mkfifo(path, 0o600)
        }
        Err(e) => Err(e),
    }
}

/// Reads the FIFO until `shutdown`, sending each line hapulse uses (instance, group, virtual and
/// real server changes) to `out`. The FIFO is opened
/// read-write so it never reports end-of-file when keepalived restarts and reopens it. Malformed
/// lines are logged with their text and skipped.
pub async fn read_fifo(
    path: &Path,
    out: mpsc::Sender<FifoLine>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    ensure_fifo(path)?;
    let receiver = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(path)?;
    let mut reader = BufReader::new(receiver);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        let read = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            read = reader.read_until(b'\n', &mut raw) => read?,
        };
        if read == 0 {
            return Ok(());
        }
        // Bytes that are not UTF-8 cannot stop the reader: they make the line malformed.
        let line = String::from_utf8_lossy(&raw);
        match parse_line(&line) {
            Ok(FifoLine::Other(kind)) => {
                tracing::debug!(kind = %kind, line = %line, "keepalived notify line ignored");
            }
            Ok(parsed) => {
                tracing::info!(line = %line.trim_end(), "keepalived notify");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    sent = out.send(parsed) => if sent.is_err() { return Ok(()) },
                }
            }
            Err(e) => {
                tracing::warn!(line = %line, error = %e, "malformed keepalived notify line skipped")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_instance_lines_as_keepalived_writes_them() {
        // Captured from keepalived 2.2.7 in the lab.
        assert_eq!(
            parse_line("INSTANCE \"VI_1\" MASTER 140\n").unwrap(),
            FifoLine::Instance(InstanceTransition {
                name: "VI_1".into(),
                state: VrrpState::Master,
                priority: Some(140)
            })
        );
        assert_eq!(
            parse_line("INSTANCE \"web vip\" FAULT 0").unwrap(),
            FifoLine::Instance(InstanceTransition {
                name: "web vip".into(),
                state: VrrpState::Fault,
                priority: Some(0)
            })
        );
        assert_eq!(
            parse_line("INSTANCE \"VI_1\" STOP").unwrap(),
            FifoLine::Instance(InstanceTransition {
                name: "VI_1".into(),
                state: VrrpState::Stop,
                priority: None
            })
        );
        assert_eq!(
            parse_line("MASTER_RX_LOWER_PRI \"VI_1\" 100").unwrap(),
            FifoLine::Other("MASTER_RX_LOWER_PRI".into())
        );
    }

    #[test]
    fn parses_group_lines_captured_from_keepalived_2_2_7() {
        // fixtures/sync_group.fifo: keepalived 2.2.7 in the lab with sync group G1 (VI_A, VI_B)
        // and VI_C outside it, from start to SIGTERM.
        let lines: Vec<FifoLine> = include_str!("fixtures/sync_group.fifo")
            .lines()
            .map(|l| parse_line(l).unwrap())
            .collect();
        let groups: Vec<_> = lines
            .iter()
            .filter_map(|l| match l {
                FifoLine::Group(g) => Some((g.name.as_str(), g.state)),
                _ => None,
            })
            .collect();
        assert_eq!(
            groups,
            [
                ("G1", VrrpState::Backup),
                ("G1", VrrpState::Master),
                ("G1", VrrpState::Stop)
            ]
        );
        assert!(lines.contains(&FifoLine::Instance(InstanceTransition {
            name: "VI_C".into(),
            state: VrrpState::Master,
            priority: Some(90)
        })));
    }

    #[test]
    fn parses_lvs_lines_in_keepalived_format() {
        // No IPVS in this kernel: these follow keepalived's writers (check/ipwrapper.c
        // `notify_fifo_vs`/`notify_fifo_rs`, names from check_data.c `format_vs`/`format_rs`).
        assert_eq!(
            parse_line("VS [10.213.40.100]:tcp:80 UP\n").unwrap(),
            FifoLine::VirtualServer(VirtualServerChange {
                name: "[10.213.40.100]:tcp:80".into(),
                up: true
            })
        );
        assert_eq!(
            parse_line("VS FWM 5 DOWN").unwrap(),
            FifoLine::VirtualServer(VirtualServerChange {
                name: "FWM 5".into(),
                up: false
            })
        );
        assert_eq!(
            parse_line("RS [192.168.1.10]:tcp:80 [10.213.40.100]:tcp:80 DOWN").unwrap(),
            FifoLine::RealServer(RealServerChange {
                address: "[192.168.1.10]:tcp:80".into(),
                virtual_server: "[10.213.40.100]:tcp:80".into(),
                up: false
            })
        );
        assert_eq!(
            parse_line("RS [fd00::10]:udp:53 FWM 7 UP").unwrap(),
            FifoLine::RealServer(RealServerChange {
                address: "[fd00::10]:udp:53".into(),
                virtual_server: "FWM 7".into(),
                up: true
            })
        );
        assert_eq!(
            parse_line("VS [web]:443 UP").unwrap(),
            FifoLine::VirtualServer(VirtualServerChange {
                name: "[web]:443".into(),
                up: true
            })
        );
    }

    #[test]
    fn refuses_malformed_lines() {
        for bad in [
            "",
            "garbage",
            "INSTANCE VI_1 MASTER 100",
            "INSTANCE \"VI_1 MASTER 100",
            "INSTANCE \"\" MASTER 100",
            "INSTANCE \"VI_1\"",
            "INSTANCE \"VI_1\" LEADER 100",
            "INSTANCE \"VI_1\" MASTER 300",
            "INSTANCE \"VI_1\" MASTER -1",
            "INSTANCE \"VI_1\" MASTER 100 extra",
            "instance \"VI_1\" MASTER 100",
            "GROUP G1 MASTER 0",
            "GROUP \"G1\" LEADER 0",
            "VS [10.0.0.1]:tcp:80",
            "VS [10.0.0.1]:tcp:80 SIDEWAYS",
            "VS 10.0.0.1:80 UP",
            "VS FWM x UP",
            "VS  UP",
            "RS [192.168.1.10]:tcp:80 UP",
            "RS 192.168.1.10 [10.0.0.1]:tcp:80 UP",
            "RS [192.168.1.10]:tcp:80 garbage UP",
        ] {
            assert!(parse_line(bad).is_err(), "accepted {bad:?}");
        }
    }

    fn state(line: Option<FifoLine>) -> VrrpState {
        match line {
            Some(FifoLine::Instance(t)) => t.state,
            other => panic!("expected an instance line, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn reads_lines_from_a_real_fifo_and_skips_bad_ones() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.fifo");
        let (tx, mut rx) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let reader = tokio::spawn({
            let path = path.clone();
            let shutdown = shutdown.clone();
            async move { read_fifo(&path, tx, shutdown).await }
        });
        while !path.exists() {
            tokio::task::yield_now().await;
        }
        let mut writer = tokio::net::unix::pipe::OpenOptions::new()
            .open_sender(&path)
            .unwrap();
        writer
            .write_all(b"INSTANCE \"VI_1\" BACKUP 100\nnot a line \xff\xfe\nINSTANCE \"VI_1\" MASTER 100\n")
            .await
            .unwrap();
        assert_eq!(state(rx.recv().await), VrrpState::Backup);
        assert_eq!(state(rx.recv().await), VrrpState::Master);
        drop(writer);
        // The writer going away (keepalived restarting) is not the end of the stream.
        let mut writer = tokio::net::unix::pipe::OpenOptions::new()
            .open_sender(&path)
            .unwrap();
        writer
            .write_all(b"INSTANCE \"VI_1\" FAULT 0\n")
            .await
            .unwrap();
        assert_eq!(state(rx.recv().await), VrrpState::Fault);
        shutdown.cancel();
        reader.await.unwrap().unwrap();
    }
}
