//! The agent's outbox: state-change reports wait here, on disk, until the server accepts them.
//!
//! File format: `spool.jsonl` in the state directory, one JSON [`HeartbeatReport`] per line, oldest
//! first. A push appends and fsyncs; removing the oldest rewrites the file through a temporary
//! file and a rename, so a crash leaves either the old or the new content. Bounded: beyond
//! `capacity` the oldest report is dropped (and counted), because the newest state matters most.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use hapulse_protocol::HeartbeatReport;

/// Reports not yet accepted by the server, mirrored to disk.
pub struct Spool {
    path: PathBuf,
    capacity: usize,
    entries: VecDeque<HeartbeatReport>,
    dropped: u64,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`. Lines that do not parse are logged with their text
    /// and dropped.
    pub fn open(dir: &Path, capacity: usize) -> io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("spool.jsonl");
        let mut entries = VecDeque::new();
        let mut rewrite = false;
        match File::open(&path) {
            Ok(file) => {
                for line in BufReader::new(file).lines() {
                    let line = line?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    match serde_json::from_str::<HeartbeatReport>(&line) {
                        Ok(report) => entries.push_back(report),
                        Err(e) => {
                            tracing::warn!(line = %line, error = %e, "unreadable spool entry dropped");
                            rewrite = true;
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut spool = Spool {
            path,
            capacity,
            entries,
            dropped: 0,
        };
        while spool.entries.len() > capacity {
            spool.entries.pop_front();
            spool.dropped += 1;
            rewrite = true;
        }
        if rewrite {
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
        let mut line = serde_json::to_string(&report).map_err(io::Error::other)?;
        line.push('\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        file.write_all(line.as_bytes())?;
        file.sync_data()?;
        self.entries.push_back(report);
        Ok(())
    }

    /// The oldest report.
    pub fn front(&self) -> Option<&HeartbeatReport> {
        self.entries.front()
    }

    /// Removes the oldest report (after the server accepted it).
    pub fn pop_front(&mut self) -> io::Result<()> {
        if self.entries.pop_front().is_some() {
            self.rewrite()?;
        }
        Ok(())
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

    fn rewrite(&self) -> io::Result<()> {
        let tmp = self.path.with_extension("jsonl.tmp");
        {
            let mut file = File::create(&tmp)?;
            for report in &self.entries {
                let line = serde_json::to_string(report).map_err(io::Error::other)?;
                file.write_all(line.as_bytes())?;
                file.write_all(b"\n")?;
            }
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hapulse_protocol::KeepalivedReport;

    fn report(seq: u64) -> HeartbeatReport {
        HeartbeatReport {
            protocol_version: 1,
            agent_version: "0".into(),
            node_id: "n1".into(),
            cluster: "c".into(),
            boot_id: uuid::Uuid::nil(),
            seq,
            observed_at: chrono::Utc::now(),
            state_change: true,
            heartbeat_interval_ms: 1000,
            hostname: "h".into(),
            uptime_seconds: 1,
            load1: 0.0,
            keepalived: KeepalivedReport {
                running: true,
                instances: vec![],
            },
            spool_depth: 0,
            spool_dropped: 0,
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
        spool.pop_front().unwrap();
        drop(spool);

        // A torn last line (crash mid-append) is dropped, the rest kept in order.
        let path = dir.path().join("spool.jsonl");
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"protocol_version\":1,\"agent").unwrap();
        drop(file);

        let mut spool = Spool::open(dir.path(), 3).unwrap();
        assert_eq!(spool.len(), 2);
        assert_eq!(spool.front().unwrap().seq, 3);
        spool.pop_front().unwrap();
        assert_eq!(spool.front().unwrap().seq, 4);
        spool.pop_front().unwrap();
        assert!(spool.is_empty());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}
