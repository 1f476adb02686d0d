//! Files through which the agent acts on keepalived, and the record of a self-fence.
//!
//! keepalived reads one integer from each track file of an instance (`vrrp_track_file`): the
//! priority file (`weight 1`) is added to the instance's priority, a non-zero fence file
//! (`weight 0`) puts the instance in FAULT. The executor writes both on the server's commands;
//! arbitration writes the fence files when this host is isolated, and records that it did in
//! the marker file, which only a `fence` command lifting the fence removes.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

/// Writes an integer to a keepalived track file: a temporary file renamed over it, so keepalived
/// (which watches the directory with inotify) never reads a half-written number.
pub fn write_track_file(path: &Path, value: i32) -> Result<(), String> {
    let tmp = path.with_extension("hapulse-tmp");
    std::fs::write(&tmp, format!("{value}\n"))
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The file that records a self-fence: `state_dir/self-fenced`, holding its RFC 3339 time.
pub fn marker_path(state_dir: &Path) -> PathBuf {
    state_dir.join("self-fenced")
}

/// When this host fenced itself, from the marker file (None: it did not, or the server lifted
/// the fence since).
pub fn self_fenced_at(state_dir: &Path) -> Option<DateTime<Utc>> {
    let text = std::fs::read_to_string(marker_path(state_dir)).ok()?;
    DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(self_fenced_at(dir.path()), None);
        let at = Utc::now();
        std::fs::write(marker_path(dir.path()), at.to_rfc3339()).unwrap();
        assert_eq!(self_fenced_at(dir.path()), Some(at));
    }

    #[test]
    fn a_track_file_holds_one_integer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prio");
        write_track_file(&path, -20).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "-20\n");
        assert!(!path.with_extension("hapulse-tmp").exists());
    }
}
