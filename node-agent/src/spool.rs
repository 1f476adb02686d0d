//! The agent's outbox: state-change reports wait here, on disk, until the server accepts them.
//!
//! Files in the state directory:
//! - `spool.jsonl`: one JSON [`HeartbeatReport`] per line, oldest first. A push appends and
//!   fsyncs before returning.
//! - `spool.acked`: `{"boot_id": …, "seq": …}` of the newest report the server accepted. Removing
//!   a report only rewrites this small file, so replaying a long spool costs one small write per
//!   report, not a rewrite of the whole spool. On open, every line up to the acknowledged one is
//!   skipped. The spool file is compacted (rewritten through a temporary file and a rename) once
//!   most of it is acknowledged, and truncated when all of it is.
//!
//! A crash can at worst make the agent send an accepted report again; the server ignores
//! repeats (it de-duplicates on node, boot id and sequence number). Bounded: beyond `capacity`
//! the oldest report is dropped (and counted), because the newest state matters most.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use hapulse_protocol::HeartbeatReport;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Identity of a report: what the server de-duplicates on (with the node id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportKey {
    /// Agent run.
    pub boot_id: Uuid,
    /// Sequence number within the run.
    pub seq: u64,
}

impl ReportKey {
    /// The key of `report`.
    pub fn of(report: &HeartbeatReport) -> Self {
        ReportKey {
            boot_id: report.boot_id,
            seq: report.seq,
        }
    }
}

/// Reports not yet accepted by the server, mirrored to disk.
pub struct Spool {
    path: PathBuf,
    acked_path: PathBuf,
    capacity: usize,
    entries: VecDeque<HeartbeatReport>,
    /// Lines at the head of `spool.jsonl` that are acknowledged but not yet compacted away.
    stale_lines: usize,
    dropped: u64,
}

/// Compact when at least this many acknowledged lines lead the file and they are the majority.
const COMPACT_AFTER: usize = 256;

impl Spool {
    /// Opens (or creates) the spool in `dir`. Lines that do not parse (a torn last line after a
    /// crash, say) are logged with their text and dropped.
    pub fn open(dir: &Path, capacity: usize) -> io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("spool.jsonl");
        let acked_path = dir.join("spool.acked");
        let mut entries = VecDeque::new();
        let mut unreadable = false;
        match File::open(&path) {
            Ok(file) => {
                let mut reader = BufReader::new(file);
                let mut raw = Vec::new();
                while reader.read_until(b'\n', &mut raw)? > 0 {
                    let line = String::from_utf8_lossy(&raw);
                    let line = line.trim();
                    if !line.is_empty() {
                        match serde_json::from_str::<HeartbeatReport>(line) {
                            Ok(report) => entries.push_back(report),
                            Err(e) => {
                                tracing::warn!(line = %line, error = %e, "unreadable spool entry dropped");
                                unreadable = true;
                            }
                        }
                    }
                    raw.clear();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let acked: Option<ReportKey> = std::fs::read(&acked_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let mut stale = 0;
        if let Some(acked) = acked {
            if let Some(at) = entries.iter().position(|r| ReportKey::of(r) == acked) {
                entries.drain(..=at);
                stale = at + 1;
            }
        }
        let mut spool = Spool {
            path,
            acked_path,
            capacity,
            entries,
            stale_lines: stale,
            dropped: 0,
        };
        while spool.entries.len() > capacity {
            spool.entries.pop_front();
            spool.dropped += 1;
        }
        if unreadable || stale > 0 || spool.dropped > 0 {
            spool.rewrite()?;
        }
        if !spool.entries.is_empty() {
            tracing::info!(reports = spool.entries.len(), path = %spool.path.display(), "spool holds reports from an earlier run; replaying");
        }
        Ok(spool)
    }

    /// Appends a report durably (fsync) before returning.
    pub fn push(&mut self, report: HeartbeatReport) -> io::Result<()> {
        if self.entries.len() >= self.capacity {
            self.entries.pop_front();
            self.dropped += 1;
            tracing::warn!(
                capacity = self.capacity,
                dropped_total = self.dropped,
                "spool full: oldest state change dropped"
            );
            self.entries.push_back(report);
            return self.rewrite();
        }
        let mut line = serde_json::to_vec(&report).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        file.write_all(&line)?;
        file.sync_data()?;
        self.entries.push_back(report);
        Ok(())
    }

    /// The oldest report.
    pub fn front(&self) -> Option<&HeartbeatReport> {
        self.entries.front()
    }

    /// Removes the oldest report if it is `key` (the server accepted it). Returns false when the
    /// oldest is another report: the spool was full and dropped `key` meanwhile.
    pub fn acknowledge(&mut self, key: ReportKey) -> io::Result<bool> {
        if self.entries.front().map(ReportKey::of) != Some(key) {
            return Ok(false);
        }
        self.entries.pop_front();
        self.stale_lines += 1;
        if self.entries.is_empty() {
            File::create(&self.path)?.sync_all()?;
            self.stale_lines = 0;
            remove_if_present(&self.acked_path)?;
        } else if self.stale_lines >= COMPACT_AFTER && self.stale_lines > self.entries.len() {
            self.rewrite()?;
        } else {
            let mut file = File::create(&self.acked_path)?;
            file.write_all(&serde_json::to_vec(&key).map_err(io::Error::other)?)?;
            file.sync_data()?;
        }
        Ok(true)
    }

    /// Reports waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Reports dropped because the spool was full, since this process opened it.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Writes exactly the waiting reports to a new file and renames it over the spool; the
    /// acknowledgement marker is removed after (it would match nothing left).
    fn rewrite(&mut self) -> io::Result<()> {
        let tmp = self.path.with_extension("jsonl.tmp");
        {
            let mut file = File::create(&tmp)?;
            for report in &self.entries {
                let mut line = serde_json::to_vec(report).map_err(io::Error::other)?;
                line.push(b'\n');
                file.write_all(&line)?;
            }
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        self.stale_lines = 0;
        remove_if_present(&self.acked_path)
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(seq: u64) -> HeartbeatReport {
        hapulse_protocol::testing::report("n1", "c")
            .seq(seq)
            .build()
    }

    fn key(seq: u64) -> ReportKey {
        ReportKey {
            boot_id: uuid::Uuid::nil(),
            seq,
        }
    }

    #[test]
    fn survives_a_restart_in_order_and_bounds_itself() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 3).unwrap();
        for seq in 1..=4 {
            spool.push(report(seq)).unwrap();
        }
        assert_eq!(spool.len(), 3);
        assert_eq!(spool.dropped(), 1);
        // Report 1 was dropped while "in flight": acknowledging it must not remove report 2.
        assert!(!spool.acknowledge(key(1)).unwrap());
        assert!(spool.acknowledge(key(2)).unwrap());
        drop(spool);

        // A torn last line (crash mid-append, cut inside a multi-byte character) is dropped,
        // the rest kept in order, the acknowledged report not replayed.
        let path = dir.path().join("spool.jsonl");
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"protocol_version\":1,\"agent\xe2\x82")
            .unwrap();
        drop(file);

        let mut spool = Spool::open(dir.path(), 3).unwrap();
        assert_eq!(spool.len(), 2);
        assert_eq!(spool.front().unwrap().seq, 3);
        assert!(spool.acknowledge(key(3)).unwrap());
        assert_eq!(spool.front().unwrap().seq, 4);
        assert!(spool.acknowledge(key(4)).unwrap());
        assert!(spool.is_empty());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        assert!(!dir.path().join("spool.acked").exists());
    }

    #[test]
    fn acknowledging_a_long_spool_compacts_it_and_skips_acked_lines_on_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 10_000).unwrap();
        for seq in 1..=1000 {
            spool.push(report(seq)).unwrap();
        }
        for seq in 1..=700 {
            assert!(spool.acknowledge(key(seq)).unwrap());
        }
        drop(spool);
        let lines = std::fs::read_to_string(dir.path().join("spool.jsonl"))
            .unwrap()
            .lines()
            .count();
        assert!(lines < 1000, "compacted: {lines} lines left on disk");
        let spool = Spool::open(dir.path(), 10_000).unwrap();
        assert_eq!(spool.len(), 300);
        assert_eq!(spool.front().unwrap().seq, 701);
    }
}
