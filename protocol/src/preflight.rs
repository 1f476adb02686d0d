//! What both daemons share for their pre-start checks (`hapulse-agent check`,
//! `hapulse-server check-config`): one line per check, and which configuration file they read.

use std::fmt;
use std::path::{Path, PathBuf};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// As it should be.
    Ok,
    /// Works, but worth a look (the daemon starts anyway).
    Warn,
    /// The daemon would not work as configured: the check command exits non-zero.
    Fail,
}

/// One line of a check command: what was checked, how it came out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// What was checked, e.g. `keepalived.pid_file`, `server https://hapulse.example.net`.
    pub name: String,
    /// How it came out.
    pub outcome: Outcome,
    /// What was found, or why it failed; never a secret.
    pub detail: String,
}

impl CheckResult {
    fn new(name: impl Into<String>, outcome: Outcome, detail: impl Into<String>) -> Self {
        CheckResult {
            name: name.into(),
            outcome,
            detail: detail.into(),
        }
    }

    /// A passed check.
    pub fn ok(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(name, Outcome::Ok, detail)
    }

    /// A check that passed with a caveat.
    pub fn warn(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(name, Outcome::Warn, detail)
    }

    /// A failed check.
    pub fn fail(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(name, Outcome::Fail, detail)
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = match self.outcome {
            Outcome::Ok => "ok  ",
            Outcome::Warn => "warn",
            Outcome::Fail => "FAIL",
        };
        write!(f, "{word} {}: {}", self.name, self.detail)
    }
}

/// True when any check failed.
pub fn any_failed(results: &[CheckResult]) -> bool {
    results.iter().any(|r| r.outcome == Outcome::Fail)
}

/// The configuration file a daemon reads: the one named (`--config` or its environment
/// variable), else `default` (`/etc/hapulse/….toml`, what the Debian package installs) when it
/// is a file, else none (defaults and the environment alone).
pub fn config_file(named: Option<PathBuf>, default: &Path) -> Option<PathBuf> {
    named.or_else(|| default.is_file().then(|| default.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_file_is_read_only_when_no_file_is_named_and_it_exists() {
        let dir = std::env::temp_dir().join(format!("hapulse-preflight-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let default = dir.join("agent.toml");
        let _ = std::fs::remove_file(&default);
        let named = PathBuf::from("/elsewhere/agent.toml");
        assert_eq!(config_file(None, &default), None, "absent: defaults alone");
        std::fs::write(&default, "").unwrap();
        assert_eq!(config_file(None, &default), Some(default.clone()));
        assert_eq!(config_file(Some(named.clone()), &default), Some(named));
        // A directory by that name is not a configuration file.
        let not_a_file = dir.join("dir.toml");
        std::fs::create_dir_all(&not_a_file).unwrap();
        assert_eq!(config_file(None, &not_a_file), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_line_says_the_outcome_first() {
        assert_eq!(CheckResult::ok("a", "b").to_string(), "ok   a: b");
        assert_eq!(CheckResult::fail("a", "b").to_string(), "FAIL a: b");
        assert!(any_failed(&[
            CheckResult::warn("a", "b"),
            CheckResult::fail("c", "d")
        ]));
        assert!(!any_failed(&[CheckResult::warn("a", "b")]));
    }
}
