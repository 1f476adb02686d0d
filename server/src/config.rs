//! Server configuration: defaults, then a TOML file (`--config PATH`), then `HAPULSE_*`
//! environment variables (nested keys with a double underscore: `HAPULSE_DETECTOR__DOWN_AFTER_MISSED`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Everything the server needs. `Debug` never shows secrets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address of the HTTP listener (UI, REST API, agent API, /metrics). Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// PostgreSQL URL, e.g. `postgres://hapulse:secret@127.0.0.1:5432/hapulse`. Required.
    #[serde(serialize_with = "serialize_redacted")]
    pub database_url: SecretString,
    /// Most connections in the PostgreSQL pool (default 10).
    pub database_max_connections: u32,
    /// Token every agent presents as `Authorization: Bearer …`. Required: there are no anonymous
    /// writes.
    #[serde(serialize_with = "serialize_redacted")]
    pub agent_token: SecretString,
    /// Longest time a request may take before the server answers 408 (default 30 s).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Failure detector.
    pub detector: DetectorSettings,
    /// Heartbeat history.
    pub history: HistorySettings,
}

/// When a silent node becomes suspect, then down. Counted in the node's own heartbeat intervals,
/// which each report carries.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorSettings {
    /// Missed heartbeats before a node is suspect (default 2).
    pub suspect_after_missed: u32,
    /// Missed heartbeats before a node is down (default 3).
    pub down_after_missed: u32,
    /// How often the detector looks (default 100 ms): the worst-case extra delay of a verdict.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
}

/// Heartbeat samples.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistorySettings {
    /// Raw samples are kept this long, in daily partitions (default 7 days).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Most samples written in one batch (default 1000).
    pub batch_max_rows: usize,
    /// Per-minute rollups (min/max/avg) are kept this long (default 90 days).
    #[serde(with = "humantime_serde")]
    pub rollup_retention: Duration,
}

/// Environment keys (after `HAPULSE_`, lower case) that belong to the server; `__` ends a section.
const SERVER_ENV_KEYS: [&str; 7] = [
    "listen",
    "database_url",
    "database_max_connections",
    "agent_token",
    "request_timeout",
    "detector__",
    "history__",
];

fn serialize_redacted<S: serde::Serializer>(_: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("")
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: SecretString::from(""),
            database_max_connections: 10,
            agent_token: SecretString::from(""),
            request_timeout: Duration::from_secs(30),
            detector: DetectorSettings {
                suspect_after_missed: 2,
                down_after_missed: 3,
                check_interval: Duration::from_millis(100),
            },
            history: HistorySettings {
                retention: Duration::from_secs(7 * 24 * 3600),
                batch_max_rows: 1000,
                rollup_retention: Duration::from_secs(90 * 24 * 3600),
            },
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment variable did not parse or has a wrong type.
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value parsed but is not acceptable.
    #[error("configuration key `{key}`: {reason}")]
    Invalid {
        /// The key at fault.
        key: &'static str,
        /// Why.
        reason: &'static str,
    },
}

impl Settings {
    /// Loads defaults, then `file` (when given), then `HAPULSE_*` variables, and validates.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid {
                    key: "--config",
                    reason: "file does not exist",
                });
            }
            figment = figment.merge(Toml::file(path));
        }
        // Only this server's keys: other tools share the HAPULSE_ prefix (HAPULSE_AGENT_* is the
        // agent's, HAPULSE_LAB_* the lab's, HAPULSE_CONFIG is --config).
        let env = Env::prefixed("HAPULSE_")
            .filter(|key| {
                let key = key.as_str().to_ascii_lowercase();
                SERVER_ENV_KEYS
                    .iter()
                    .any(|k| key == *k || (k.ends_with("__") && key.starts_with(k)))
            })
            .split("__");
        let settings: Settings = figment.merge(env).extract().map_err(Box::new)?;
        settings.validate()?;
        Ok(settings)
    }

    /// The defaults as TOML (`--print-default-config`).
    pub fn default_toml() -> String {
        let body = toml::to_string(&Settings::default())
            .unwrap_or_else(|e| format!("# cannot render defaults: {e}\n"));
        format!(
            "# hapulse-server configuration; every key can be overridden by HAPULSE_<KEY>\n\
             # (nested keys: HAPULSE_DETECTOR__DOWN_AFTER_MISSED). database_url and agent_token are required.\n{body}"
        )
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason| Err(ConfigError::Invalid { key, reason });
        if self.database_url.expose_secret().is_empty() {
            return invalid("database_url", "required (HAPULSE_DATABASE_URL)");
        }
        if self.agent_token.expose_secret().len() < 16 {
            return invalid(
                "agent_token",
                "required, at least 16 characters (HAPULSE_AGENT_TOKEN)",
            );
        }
        let d = &self.detector;
        if d.suspect_after_missed == 0 || d.down_after_missed <= d.suspect_after_missed {
            return invalid(
                "detector",
                "need 0 < suspect_after_missed < down_after_missed",
            );
        }
        if d.check_interval < Duration::from_millis(10) {
            return invalid("detector.check_interval", "must be at least 10ms");
        }
        if self.history.retention < Duration::from_secs(24 * 3600) {
            return invalid("history.retention", "must be at least 1 day");
        }
        if self.history.rollup_retention < self.history.retention {
            return invalid(
                "history.rollup_retention",
                "must be at least history.retention",
            );
        }
        if self.history.batch_max_rows == 0 {
            return invalid("history.batch_max_rows", "must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_render_and_secrets_never_print() {
        let text = Settings::default_toml();
        assert!(text.contains("listen = \"127.0.0.1:8080\""), "{text}");
        assert!(text.contains("[detector]"), "{text}");
        let s = Settings {
            database_url: SecretString::from("postgres://u:pw-secret@h/db"),
            agent_token: SecretString::from("token-secret-token-secret"),
            ..Settings::default()
        };
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("pw-secret") && !debug.contains("token-secret"),
            "{debug}"
        );
        assert!(!toml::to_string(&s).unwrap().contains("secret"));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API
    fn environment_overrides_and_validation() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HAPULSE_DATABASE_URL", "postgres://x@y/z");
            jail.set_env("HAPULSE_AGENT_TOKEN", "0123456789abcdef");
            jail.set_env("HAPULSE_AGENT_NODE_ID", "belongs-to-the-agent");
            jail.set_env("HAPULSE_LAB_NAME", "belongs-to-the-lab");
            jail.set_env("HAPULSE_LISTEN", "0.0.0.0:9000");
            jail.set_env("HAPULSE_DETECTOR__DOWN_AFTER_MISSED", "5");
            let s = Settings::load(None).unwrap();
            assert_eq!(s.listen.port(), 9000);
            assert_eq!(s.detector.down_after_missed, 5);
            jail.set_env("HAPULSE_AGENT_TOKEN", "short");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("agent_token"), "{err}");
            Ok(())
        });
    }
}
