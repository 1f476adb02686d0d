//! keepalived's `notify_fifo`: one line per state change, e.g. `INSTANCE "VI_1" MASTER 120`
//! (type, quoted name, state, effective priority). keepalived also writes the state of every
//! instance when it starts. Source: keepalived.conf(5), `notify_fifo`.

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

/// What one FIFO line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FifoLine {
    /// `INSTANCE "name" STATE PRIORITY`.
    Instance(InstanceTransition),
    /// A line of another type (`GROUP`, `VS`, `RS`, `MASTER_RX_LOWER_PRI`, …) that hapulse does
    /// not use; carries the type word.
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
    if kind != "INSTANCE" {
        return Ok(FifoLine::Other(kind.to_string()));
    }
    let rest = rest
        .strip_prefix('"')
        .ok_or_else(|| FifoParseError("instance name is not quoted".into()))?;
    let (name, rest) = rest
        .split_once('"')
        .ok_or_else(|| FifoParseError("instance name has no closing quote".into()))?;
    if name.is_empty() {
        return Err(FifoParseError("empty instance name".into()));
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
    Ok(FifoLine::Instance(InstanceTransition {
        name: name.to_string(),
        state,
        priority,
    }))
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

/// Reads the FIFO until `shutdown`, sending each instance transition to `out`. The FIFO is opened
/// read-write so it never reports end-of-file when keepalived restarts and reopens it. Malformed
/// lines are logged with their text and skipped.
pub async fn read_fifo(
    path: &Path,
    out: mpsc::Sender<InstanceTransition>,
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
            Ok(FifoLine::Instance(t)) => {
                tracing::info!(instance = %t.name, state = %t.state, priority = ?t.priority, "keepalived notify");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    sent = out.send(t) => if sent.is_err() { return Ok(()) },
                }
            }
            Ok(FifoLine::Other(kind)) => {
                tracing::debug!(kind = %kind, line = %line, "keepalived notify line ignored");
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
            parse_line("GROUP \"G1\" MASTER").unwrap(),
            FifoLine::Other("GROUP".into())
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
        ] {
            assert!(parse_line(bad).is_err(), "accepted {bad:?}");
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
        assert_eq!(rx.recv().await.unwrap().state, VrrpState::Backup);
        assert_eq!(rx.recv().await.unwrap().state, VrrpState::Master);
        drop(writer);
        // The writer going away (keepalived restarting) is not the end of the stream.
        let mut writer = tokio::net::unix::pipe::OpenOptions::new()
            .open_sender(&path)
            .unwrap();
        writer
            .write_all(b"INSTANCE \"VI_1\" FAULT 0\n")
            .await
            .unwrap();
        assert_eq!(rx.recv().await.unwrap().state, VrrpState::Fault);
        shutdown.cancel();
        reader.await.unwrap().unwrap();
    }
}
