//! Server configuration: defaults, then a TOML file (`--config PATH`), then `HAPULSE_*`
//! environment variables (nested keys with a double underscore: `HAPULSE_DETECTOR__DOWN_AFTER_MISSED`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::alerting::receivers::{serialize_redacted, serialize_redacted_opt};

/// Everything the server needs. `Debug` never shows secrets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Log lines on standard error: `text` (default) or `json`, one object per line, for a log
    /// shipper. `RUST_LOG` sets the levels.
    #[serde(default)]
    pub log_format: hapulse_protocol::logging::LogFormat,
    /// Where these settings were read from, so SIGHUP can read them again (not a key).
    #[serde(skip)]
    pub source: Source,
    /// Address of the HTTP listener (UI, REST API, agent API, /metrics). Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// PostgreSQL URL, e.g. `postgres://hapulse:secret@127.0.0.1:5432/hapulse`. Required.
    #[serde(serialize_with = "serialize_redacted")]
    pub database_url: SecretString,
    /// Most connections in the PostgreSQL pool (default 10).
    pub database_max_connections: u32,
    /// Longest time a request may take before the server answers 408 (default 30 s).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A connection that has not sent a whole request head within this time — idle since its
    /// last request, or sending its headers slowly — is closed (default 30 s, above the longest
    /// heartbeat interval so that agents' idle keep-alive connections survive).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Most connections open at once; beyond, new ones are closed at once (default 32768: at
    /// least two per agent, the heartbeat's and the command long poll's).
    pub max_connections: usize,
    /// Most dashboard event streams (`/ui/stream`) one principal holds open (default 10);
    /// beyond, 429.
    pub max_event_streams_per_principal: usize,
    /// Where agents and browsers reach this replica (`https://hapulse-1.example:8080`): what a
    /// follower tells agents and redirects writes to when this replica leads. Default:
    /// `http://` (or `https://` with `tls`) and the `listen` address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_url: Option<String>,
    /// How long a leader's lease lasts without renewal (default 3 s; renewed every sixth of
    /// it): the longest a dead leader's work waits for another replica, and the least time a
    /// replica cut off from PostgreSQL keeps leading (it stops a sixth before the end).
    #[serde(with = "humantime_serde")]
    pub leader_lease: Duration,
    /// Reverse proxies (CIDRs, e.g. `["10.0.0.5/32"]`) whose `Forwarded` / `X-Forwarded-For`
    /// names the client and whose `proto=https` / `X-Forwarded-Proto: https` makes cookies
    /// Secure. From any other peer those headers are ignored. Default: none.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Failure detector.
    pub detector: DetectorSettings,
    /// Heartbeat history.
    pub history: HistorySettings,
    /// Alert rules and where notifications go.
    #[serde(default)]
    pub alerts: AlertSettings,
    /// Sessions, logins and anonymous access.
    #[serde(default)]
    pub auth: AuthSettings,
    /// HTTPS: when set, the server speaks TLS only (rustls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,
    /// Automatic failover: policy per cluster, the arbiter's pace.
    #[serde(default)]
    pub failover: FailoverSettings,
    /// Prometheus metrics (`/metrics`): which series are exported.
    #[serde(default)]
    pub metrics: MetricsSettings,
}

/// `[metrics]`: which series `/metrics` exports. The per-cluster series are always there; the
/// per-node ones (about 22 series per node with one VRRP instance and one replication link: 5
/// per instance for its state, 1 for its priority, 6 + 3 + 2 per link for its state, role and
/// lag, 5 for the node's heartbeat age, detector status and keepalived) only up to a fleet size.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Export per-node series whatever the fleet's size (default false).
    pub per_node_series: bool,
    /// Per-node series are exported while the fleet has at most this many nodes (default 500:
    /// about 11,000 series); beyond, only with `per_node_series = true`.
    pub per_node_series_limit: usize,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            per_node_series: false,
            per_node_series_limit: 500,
        }
    }
}

/// `[failover]`: when and how the server fails a cluster over by itself. Every cluster is `off`
/// (alerts only) unless `[failover.clusters.NAME]` says otherwise.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverSettings {
    /// The global switch at first start (default true). Afterwards it lives in the database and
    /// is turned with `PUT /api/v1/failover` (admin): false stops every automatic action at once.
    pub automatic_enabled: bool,
    /// How often the arbiter weighs the evidence of every cluster (default 250 ms).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// After the server starts, every node gets this long before it is judged (default 30 s), so
    /// a server restart never looks like a mass failure.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// How long keepalived may keep a VIP on another node than the database primary the server
    /// hears before the database follows it (default 10 s): long enough for a keepalived restart
    /// with preemption to take the VIP back by itself.
    #[serde(with = "humantime_serde")]
    pub vip_follow_grace: Duration,
    /// Before a failover picks its candidate, how long the arbiter waits for the candidates to
    /// answer with their replication positions (default 1 s; 0 ranks them on their last reports).
    #[serde(with = "humantime_serde")]
    pub position_wait: Duration,
    /// Policy per cluster.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub clusters: std::collections::BTreeMap<String, ClusterFailover>,
}

impl Default for FailoverSettings {
    fn default() -> Self {
        FailoverSettings {
            automatic_enabled: true,
            interval: Duration::from_millis(250),
            grace: Duration::from_secs(30),
            vip_follow_grace: Duration::from_secs(10),
            position_wait: Duration::from_secs(1),
            clusters: Default::default(),
        }
    }
}

/// `[failover.clusters.NAME]`: one cluster's failover policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFailover {
    /// `off` (alerts only), `notify` (propose; a person confirms) or `auto`.
    pub mode: crate::failover::decision::Mode,
    /// Candidate priority per node id; 0 = never promote. Nodes left out have
    /// `default_candidate_priority`.
    #[serde(default)]
    pub candidates: std::collections::BTreeMap<String, u32>,
    /// Priority of nodes not in `candidates` (default 1).
    #[serde(default = "default_candidate_priority")]
    pub default_candidate_priority: u32,
    /// No automatic promotion of a standby further behind than this many bytes (default 16 MiB).
    #[serde(default = "default_failover_lag_bytes")]
    pub max_lag_bytes: u64,
    /// …or this many seconds (default 10 s).
    #[serde(default = "default_failover_lag_seconds")]
    pub max_lag_seconds: f64,
    /// After an automatic move (failover, step-down, VIP follow), no other automatic one for this
    /// long (default 1 h) unless a person acknowledged the previous one.
    #[serde(default = "default_anti_flap", with = "humantime_serde")]
    pub anti_flap: Duration,
    /// STONITH: the operator's program and arguments, run on the server (no shell) with
    /// `HAPULSE_CLUSTER`, `HAPULSE_NODE_ID` (the node to power off), `HAPULSE_TARGET`,
    /// `HAPULSE_EPOCH` in its environment. Exit 0 means the old master is off; anything else
    /// stops the failover before the promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing_hook: Option<Vec<String>>,
    /// Longest the fencing hook may run (default 30 s).
    #[serde(default = "default_fencing_timeout", with = "humantime_serde")]
    pub fencing_timeout: Duration,
    /// Promote without fencing an unreachable old master (default false): the operator accepts
    /// the risk of two primaries (the agents' self-fencing is then the only fence).
    #[serde(default)]
    pub accept_unfenced: bool,
    /// After a move, make every standby follow the new primary and rejoin the old primary as
    /// one of them (default true): full redundancy without a person. False for operators who
    /// rebuild standbys by hand; the steps then say they were skipped, and `redundancy_lost`
    /// alerts until the standbys stream again.
    #[serde(default = "default_true")]
    pub auto_rejoin: bool,
}

fn default_candidate_priority() -> u32 {
    1
}
fn default_failover_lag_bytes() -> u64 {
    16 << 20
}
fn default_failover_lag_seconds() -> f64 {
    10.0
}
fn default_anti_flap() -> Duration {
    Duration::from_secs(3600)
}
fn default_fencing_timeout() -> Duration {
    Duration::from_secs(30)
}

impl FailoverSettings {
    /// The policy of `cluster`, with the global switch as it is now.
    pub fn policy(
        &self,
        cluster: &str,
        automatic_enabled: bool,
    ) -> crate::failover::decision::Policy {
        let mut p = crate::failover::decision::Policy {
            automatic_enabled,
            grace: self.grace,
            vip_follow_grace: self.vip_follow_grace,
            ..Default::default()
        };
        if let Some(c) = self.clusters.get(cluster) {
            p.mode = c.mode;
            p.max_lag_bytes = c.max_lag_bytes;
            p.max_lag_seconds = c.max_lag_seconds;
            p.anti_flap = c.anti_flap;
            p.fencing_hook = c.fencing_hook.is_some();
            p.accept_unfenced = c.accept_unfenced;
        }
        p
    }

    /// Candidate priority of `node` in `cluster` (1 when the cluster has no policy).
    pub fn candidate_priority(&self, cluster: &str, node: &str) -> u32 {
        self.clusters.get(cluster).map_or(1, |c| {
            c.candidates
                .get(node)
                .copied()
                .unwrap_or(c.default_candidate_priority)
        })
    }
}

/// Sessions and logins.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// A session unused this long ends (default 30 min).
    #[serde(with = "humantime_serde")]
    pub session_idle: Duration,
    /// A session ends this long after login, used or not (default 12 h).
    #[serde(with = "humantime_serde")]
    pub session_absolute: Duration,
    /// A switchover confirmed on the dashboard needs the password given within this long
    /// (default 5 min); the confirmation form asks for it.
    #[serde(with = "humantime_serde")]
    pub reauth_window: Duration,
    /// Let anyone read the dashboard and the REST API without logging in (default false).
    pub anonymous_read: bool,
    /// Failed logins for one account from one address (IPv6: one /64) within `login_window`
    /// before that address is refused for that account (default 5).
    pub login_max_failures_per_account: usize,
    /// Failed logins for one account from all addresses within `login_window` before the
    /// account is refused everywhere (default 100: far above one address's limit, so that a
    /// stranger cannot lock an admin out with a few wrong passwords).
    pub login_max_failures_per_account_total: usize,
    /// Failed logins from one address within `login_window` before it is refused (default 20).
    pub login_max_failures_per_source: usize,
    /// See the two above (default 15 min).
    #[serde(with = "humantime_serde")]
    pub login_window: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            session_idle: Duration::from_secs(30 * 60),
            session_absolute: Duration::from_secs(12 * 3600),
            reauth_window: Duration::from_secs(5 * 60),
            anonymous_read: false,
            login_max_failures_per_account: 5,
            login_max_failures_per_account_total: 100,
            login_max_failures_per_source: 20,
            login_window: Duration::from_secs(15 * 60),
        }
    }
}

/// Certificate and key for HTTPS (rustls, TLS 1.2 and 1.3).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert_file: std::path::PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: std::path::PathBuf,
    /// PEM CA certificates. When set, agents must present a client certificate signed by one of
    /// them that names their node id (a DNS subject alternative name) — mTLS on the agent API;
    /// browsers and API clients need none.
    #[serde(default)]
    pub client_ca_file: Option<std::path::PathBuf>,
}

/// Alert rules' thresholds and the receivers of notifications.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    /// How often the rules are evaluated (default 1 s).
    #[serde(with = "humantime_serde")]
    pub evaluate_interval: Duration,
    /// A firing alert is notified again after this long (default 4 h).
    #[serde(with = "humantime_serde")]
    pub repeat_interval: Duration,
    /// Replication lag above this many bytes is `replication_lag` (default 64 MiB).
    pub lag_bytes_threshold: u64,
    /// Replication lag above this many seconds is `replication_lag` (default 60 s).
    pub lag_seconds_threshold: f64,
    /// How long the lag must stay above a threshold before the alert fires (default 60 s).
    /// Other rules fire at once: their inputs are already debounced (the failure detector,
    /// keepalived's own timers).
    #[serde(with = "humantime_serde")]
    pub lag_for: Duration,
    /// More VRRP role changes than this in one instance within `flap_window` is `flapping`
    /// (default 4).
    pub flap_max_changes: u32,
    /// See `flap_max_changes` (default 10 min).
    #[serde(with = "humantime_serde")]
    pub flap_window: Duration,
    /// An unplanned change of an instance's MASTER is a `failover` alert for this long, then it
    /// ends without a resolved message (default 5 min).
    #[serde(with = "humantime_serde")]
    pub failover_notice_for: Duration,
    /// An agent clock further than this from the server's is `clock_skew` (default 5 s).
    #[serde(with = "humantime_serde")]
    pub clock_skew_max: Duration,
    /// More unsent reports than this in an agent's spool is `agent_spool` (default 300, five
    /// minutes at 1 Hz); any dropped report is too.
    pub spool_depth_max: u64,
    /// Per-cluster overrides of the thresholds above: `[alerts.clusters.prod] lag_bytes_threshold = …`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub clusters: std::collections::BTreeMap<String, ClusterThresholds>,
    /// Base URL of the dashboard, for links in messages.
    pub dashboard_url: String,
    /// Email receivers (SMTP).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub email: Vec<EmailReceiver>,
    /// SMS receivers (an HTTP SMS gateway).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sms: Vec<SmsReceiver>,
    /// Webhook receivers (a JSON POST).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhook: Vec<WebhookReceiver>,
    /// Slack incoming webhooks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slack: Vec<crate::alerting::receivers::SlackReceiver>,
    /// PagerDuty Events API v2 integrations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pagerduty: Vec<crate::alerting::receivers::PagerDutyReceiver>,
    /// Alertmanagers alerts are forwarded to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alertmanager: Vec<crate::alerting::receivers::AlertmanagerReceiver>,
    /// A directory whose `summary.txt`, `description.txt`, `slack.txt` replace the built-in
    /// message templates of the HTTP receivers (minijinja; `alerting::templates`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_dir: Option<std::path::PathBuf>,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            evaluate_interval: Duration::from_secs(1),
            repeat_interval: Duration::from_secs(4 * 3600),
            lag_bytes_threshold: 64 << 20,
            lag_seconds_threshold: 60.0,
            lag_for: Duration::from_secs(60),
            flap_max_changes: 4,
            flap_window: Duration::from_secs(600),
            failover_notice_for: Duration::from_secs(300),
            clock_skew_max: Duration::from_secs(5),
            spool_depth_max: 300,
            clusters: Default::default(),
            dashboard_url: "http://127.0.0.1:8080".into(),
            email: Vec::new(),
            sms: Vec::new(),
            webhook: Vec::new(),
            slack: Vec::new(),
            pagerduty: Vec::new(),
            alertmanager: Vec::new(),
            template_dir: None,
        }
    }
}

/// Thresholds for one cluster; any left out are the global ones in [`AlertSettings`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterThresholds {
    /// See [`AlertSettings::lag_bytes_threshold`].
    pub lag_bytes_threshold: Option<u64>,
    /// See [`AlertSettings::lag_seconds_threshold`].
    pub lag_seconds_threshold: Option<f64>,
    /// See [`AlertSettings::lag_for`].
    #[serde(default, with = "humantime_serde")]
    pub lag_for: Option<Duration>,
    /// See [`AlertSettings::flap_max_changes`].
    pub flap_max_changes: Option<u32>,
    /// See [`AlertSettings::flap_window`].
    #[serde(default, with = "humantime_serde")]
    pub flap_window: Option<Duration>,
    /// See [`AlertSettings::failover_notice_for`].
    #[serde(default, with = "humantime_serde")]
    pub failover_notice_for: Option<Duration>,
    /// See [`AlertSettings::clock_skew_max`].
    #[serde(default, with = "humantime_serde")]
    pub clock_skew_max: Option<Duration>,
    /// See [`AlertSettings::spool_depth_max`].
    pub spool_depth_max: Option<u64>,
}

/// The thresholds in force for one cluster: the global ones with its overrides applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// Replication lag bytes.
    pub lag_bytes: u64,
    /// Replication lag seconds.
    pub lag_seconds: f64,
    /// How long lag must stay high.
    pub lag_for: Duration,
    /// Role changes allowed within `flap_window`.
    pub flap_max_changes: u32,
    /// The flapping window.
    pub flap_window: Duration,
    /// How long a failover alert lasts.
    pub failover_notice_for: Duration,
    /// Largest tolerated agent clock offset.
    pub clock_skew_max: Duration,
    /// Largest tolerated spool depth (reports).
    pub spool_depth_max: u64,
}

impl AlertSettings {
    /// The HTTP receivers' URLs and formats, and every message template (parsed now, so that a
    /// broken one stops the start rather than a message).
    fn validate_receivers(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason| Err(ConfigError::Invalid { key, reason });
        let http = |url: &str| url.starts_with("http://") || url.starts_with("https://");
        if self.webhook.iter().any(|w| !http(w.url.expose())) {
            return invalid("alerts.webhook", "url must be http(s)");
        }
        if self
            .webhook
            .iter()
            .any(|w| !["", "plain", "hapulse"].contains(&w.format.as_str()))
        {
            return invalid("alerts.webhook", "format must be plain or hapulse");
        }
        if self.slack.iter().any(|r| !http(r.url.expose_secret()))
            || self.pagerduty.iter().any(|r| !http(r.url.expose()))
            || self.alertmanager.iter().any(|r| !http(r.url.expose()))
        {
            return invalid(
                "alerts.slack, alerts.pagerduty, alerts.alertmanager",
                "url must be http(s)",
            );
        }
        use crate::alerting::templates::Templates;
        let dir = self.template_dir.as_deref();
        Templates::load(dir, None)?;
        let own = self
            .webhook
            .iter()
            .map(|r| ("description.txt", &r.template_file))
            .chain(
                self.alertmanager
                    .iter()
                    .map(|r| ("description.txt", &r.template_file)),
            )
            .chain(self.slack.iter().map(|r| ("slack.txt", &r.template_file)))
            .chain(
                self.pagerduty
                    .iter()
                    .map(|r| ("summary.txt", &r.template_file)),
            );
        for (name, file) in own {
            if let Some(file) = file {
                Templates::load(dir, Some((name, file)))?;
            }
        }
        Ok(())
    }

    /// The thresholds for `cluster`.
    pub fn thresholds(&self, cluster: &str) -> Thresholds {
        let o = self.clusters.get(cluster).cloned().unwrap_or_default();
        Thresholds {
            lag_bytes: o.lag_bytes_threshold.unwrap_or(self.lag_bytes_threshold),
            lag_seconds: o
                .lag_seconds_threshold
                .unwrap_or(self.lag_seconds_threshold),
            lag_for: o.lag_for.unwrap_or(self.lag_for),
            flap_max_changes: o.flap_max_changes.unwrap_or(self.flap_max_changes),
            flap_window: o.flap_window.unwrap_or(self.flap_window),
            failover_notice_for: o.failover_notice_for.unwrap_or(self.failover_notice_for),
            clock_skew_max: o.clock_skew_max.unwrap_or(self.clock_skew_max),
            spool_depth_max: o.spool_depth_max.unwrap_or(self.spool_depth_max),
        }
    }
}

/// An SMTP server and who gets the mail.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailReceiver {
    /// Name, for the delivery log (`oncall`).
    pub name: String,
    /// SMTP server host.
    pub smtp_host: String,
    /// SMTP port (default 25; 587 for STARTTLS, 465 for TLS).
    #[serde(default = "default_smtp_port")]
    pub smtp_port: u16,
    /// `none`, `starttls` or `tls`.
    #[serde(default = "default_security")]
    pub security: String,
    /// SMTP user, when the server wants one.
    #[serde(default)]
    pub username: Option<String>,
    /// SMTP password. Never logged.
    #[serde(default, serialize_with = "serialize_redacted_opt")]
    pub password: Option<SecretString>,
    /// Sender address.
    pub from: String,
    /// Recipient addresses.
    pub to: Vec<String>,
    /// Severities sent here (default all: `critical`, `warning`, `info`).
    #[serde(default)]
    pub severities: Vec<String>,
    /// Clusters sent here (default all).
    #[serde(default)]
    pub clusters: Vec<String>,
}

/// An HTTP SMS gateway: one request per recipient and message.
///
/// `kind = "generic"` sends `body_template` to `url` with `method` and `headers`.
/// `kind = "twilio"` speaks Twilio's Messages API (and gateways compatible with it): a form POST
/// of `To`, `From`, `Body` to `{url}/2010-04-01/Accounts/{account_sid}/Messages.json` with HTTP
/// basic authentication `account_sid:auth_token`; `url` is the API's base URL.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsReceiver {
    /// Name, for the delivery log (`pager`).
    pub name: String,
    /// `generic` (default) or `twilio`.
    #[serde(default = "default_sms_kind")]
    pub kind: String,
    /// Gateway URL (for `twilio`, the API base URL).
    pub url: crate::alerting::receivers::ReceiverUrl,
    /// Twilio account SID.
    #[serde(default)]
    pub account_sid: Option<String>,
    /// Twilio auth token. Never logged.
    #[serde(default, serialize_with = "serialize_redacted_opt")]
    pub auth_token: Option<SecretString>,
    /// Twilio sender number.
    #[serde(default)]
    pub from: Option<String>,
    /// HTTP method (default POST).
    #[serde(default = "default_method")]
    pub method: String,
    /// Extra headers (e.g. `Authorization`). Values are never logged.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Request body; `{to}` and `{message}` are replaced (the message is JSON-escaped when
    /// `json_body` is true). Default: a JSON object `{"to": …, "text": …}`.
    #[serde(default = "default_sms_body")]
    pub body_template: String,
    /// Escape the message for a JSON body (default true).
    #[serde(default = "default_true")]
    pub json_body: bool,
    /// Phone numbers.
    pub to: Vec<String>,
    /// Severities sent here (default `critical`).
    #[serde(default = "default_sms_severities")]
    pub severities: Vec<String>,
    /// Clusters sent here (default all).
    #[serde(default)]
    pub clusters: Vec<String>,
}

/// A JSON POST per message.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookReceiver {
    /// Name, for the delivery log.
    pub name: String,
    /// URL.
    pub url: crate::alerting::receivers::ReceiverUrl,
    /// `plain` (default: `{subject, text}`) or `hapulse` (structured: README, "Alerts").
    #[serde(default)]
    pub format: String,
    /// Extra headers (e.g. `Authorization`). Values are secrets: never logged or printed.
    #[serde(
        default,
        serialize_with = "crate::alerting::receivers::serialize_redacted_map"
    )]
    pub headers: std::collections::BTreeMap<String, SecretString>,
    /// Signs each body: `X-Hapulse-Signature: sha256=<hex HMAC-SHA256 of the body>`. A secret.
    #[serde(
        default,
        serialize_with = "crate::alerting::receivers::serialize_redacted_opt"
    )]
    pub hmac_secret: Option<SecretString>,
    /// A minijinja template for each alert's `description` (format `hapulse`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_file: Option<std::path::PathBuf>,
    /// Severities sent here (default all).
    #[serde(default)]
    pub severities: Vec<String>,
    /// Clusters sent here (default all).
    #[serde(default)]
    pub clusters: Vec<String>,
}

fn default_smtp_port() -> u16 {
    25
}
fn default_security() -> String {
    "starttls".into()
}
fn default_sms_kind() -> String {
    "generic".into()
}
fn default_method() -> String {
    "POST".into()
}
fn default_sms_body() -> String {
    "{\"to\": \"{to}\", \"text\": \"{message}\"}".into()
}
fn default_true() -> bool {
    true
}
fn default_sms_severities() -> Vec<String> {
    vec!["critical".into()]
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
    /// How often the detector looks (default 50 ms): the worst-case extra delay of a verdict. A
    /// look is one pass over the nodes in memory (10,000 nodes: tens of microseconds).
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// Longest heartbeat interval an agent may declare (default 10 s). Silence is counted in the
    /// node's own interval, so without a bound one misconfigured agent (an hour) would make the
    /// detection of its death take hours: a report declaring a longer one is refused (400, field
    /// `heartbeat_interval_ms`).
    #[serde(with = "humantime_serde")]
    pub max_heartbeat_interval: Duration,
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
    /// Events (transitions, switchovers) are kept this long, in daily partitions by recording
    /// day (default 90 days).
    #[serde(with = "humantime_serde")]
    pub event_retention: Duration,
}

/// Where [`Settings`] came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Source {
    /// Built in code (tests, tools): nothing to read again.
    #[default]
    Code,
    /// [`Settings::load`]ed from `file` (None: defaults and the environment only).
    Loaded {
        /// The `--config` file, if any.
        file: Option<PathBuf>,
    },
}

/// What a reload changed ([`Settings::reloaded`]).
#[derive(Debug, Default, PartialEq)]
pub struct Reload {
    /// Keys now running with their new values, e.g. `failover.clusters.db.mode`.
    pub applied: Vec<String>,
    /// Keys that changed in the file but keep their running values until a restart.
    pub needs_restart: Vec<String>,
}

/// The settings as JSON, secrets redacted (for [`changed_keys`]).
fn json(s: &Settings) -> serde_json::Value {
    serde_json::to_value(s).unwrap_or_default()
}

/// Appends to `out` the dotted paths (under `prefix`) where `a` and `b` differ: objects are
/// compared key by key, anything else as a whole.
fn changed_keys(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for key in keys {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                let none = Value::Null;
                changed_keys(
                    &path,
                    x.get(key).unwrap_or(&none),
                    y.get(key).unwrap_or(&none),
                    out,
                );
            }
        }
        _ if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

/// Environment keys (after `HAPULSE_`, lower case) that belong to the server; `__` ends a section.
const SERVER_ENV_KEYS: [&str; 18] = [
    "log_format",
    "metrics__",
    "auth__",
    "tls__",
    "listen",
    "database_url",
    "database_max_connections",
    "request_timeout",
    "header_read_timeout",
    "max_connections",
    "max_event_streams_per_principal",
    "trusted_proxies",
    "advertise_url",
    "leader_lease",
    "detector__",
    "history__",
    "alerts__",
    "failover__",
];

impl Settings {
    /// Where agents and browsers reach this replica: `advertise_url`, or the `listen` address
    /// (`local`: the address actually bound, when `listen` asked for port 0).
    pub fn advertised(&self, local: SocketAddr) -> String {
        match &self.advertise_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{local}")
            }
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            log_format: Default::default(),
            source: Source::Code,
            database_url: SecretString::from(""),
            database_max_connections: 10,
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            max_connections: 32_768,
            max_event_streams_per_principal: 10,
            trusted_proxies: Vec::new(),
            advertise_url: None,
            leader_lease: Duration::from_secs(3),
            detector: DetectorSettings {
                suspect_after_missed: 2,
                down_after_missed: 3,
                check_interval: Duration::from_millis(50),
                max_heartbeat_interval: Duration::from_secs(10),
            },
            alerts: AlertSettings::default(),
            auth: AuthSettings::default(),
            tls: None,
            failover: FailoverSettings::default(),
            metrics: MetricsSettings::default(),
            history: HistorySettings {
                retention: Duration::from_secs(7 * 24 * 3600),
                batch_max_rows: 1000,
                rollup_retention: Duration::from_secs(90 * 24 * 3600),
                event_retention: Duration::from_secs(90 * 24 * 3600),
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
    /// A message template does not parse (`alerts.template_dir`, a receiver's `template_file`).
    #[error("configuration: {0}")]
    Template(#[from] crate::alerting::templates::TemplateError),
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
        let mut settings: Settings = figment.merge(env).extract().map_err(Box::new)?;
        settings.validate()?;
        settings.source = Source::Loaded {
            file: file.map(Path::to_path_buf),
        };
        Ok(settings)
    }

    /// Reads the configuration again from where it was loaded (SIGHUP) and returns what to run
    /// with ([`Settings::reloaded`]); `None` for settings built in code. Errors: the new
    /// configuration does not load or validate (the running one stays as it is).
    pub fn reload(&self) -> Result<Option<(Settings, Reload)>, ConfigError> {
        match &self.source {
            Source::Code => Ok(None),
            Source::Loaded { file } => {
                let new = Settings::load(file.as_deref())?;
                Ok(Some(self.reloaded(&new)))
            }
        }
    }

    /// The settings to run with after reading `new`: the sections that can change while the
    /// server runs — alert rules, thresholds and receivers (`[alerts]`), failover policies
    /// (`[failover]`) and the failure detector's thresholds (`[detector]`) — from `new`;
    /// everything else, and the period of those sections' own loops (`alerts.evaluate_interval`,
    /// `failover.interval`, `detector.check_interval`), as they run now. The report names the
    /// changed keys (dotted, never a value: some are secrets; a changed receiver secret alone
    /// is applied without being named, a changed `database_url` is named as needing a restart).
    pub fn reloaded(&self, new: &Settings) -> (Settings, Reload) {
        let mut next = self.clone();
        next.alerts = AlertSettings {
            evaluate_interval: self.alerts.evaluate_interval,
            ..new.alerts.clone()
        };
        next.failover = FailoverSettings {
            interval: self.failover.interval,
            ..new.failover.clone()
        };
        next.detector = DetectorSettings {
            check_interval: self.detector.check_interval,
            ..new.detector
        };
        let mut report = Reload::default();
        changed_keys("", &json(self), &json(&next), &mut report.applied);
        changed_keys("", &json(&next), &json(new), &mut report.needs_restart);
        // The JSON hides secrets; the one secret outside the reloadable sections is compared
        // itself (its value is never shown).
        if self.database_url.expose_secret() != new.database_url.expose_secret() {
            report.needs_restart.push("database_url".into());
        }
        (next, report)
    }

    /// The defaults as TOML (`--print-default-config`).
    pub fn default_toml() -> String {
        let body = toml::to_string(&Settings::default())
            .unwrap_or_else(|e| format!("# cannot render defaults: {e}\n"));
        format!(
            "# hapulse-server configuration; every key can be overridden by HAPULSE_<KEY>\n\
             # (nested keys: HAPULSE_DETECTOR__DOWN_AFTER_MISSED). database_url is required.\n{body}"
        )
    }

    /// The bounds on connections and event streams.
    fn validate_connections(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason| Err(ConfigError::Invalid { key, reason });
        if self.header_read_timeout < Duration::from_secs(1) {
            return invalid("header_read_timeout", "must be at least 1s");
        }
        if self.max_connections == 0 {
            return invalid("max_connections", "must be at least 1");
        }
        if self.leader_lease < Duration::from_secs(1) || self.leader_lease > Duration::from_secs(60)
        {
            return invalid("leader_lease", "must be between 1s and 60s");
        }
        if let Some(url) = &self.advertise_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return invalid("advertise_url", "must start with http:// or https://");
            }
        }
        if self.max_event_streams_per_principal == 0 {
            return invalid("max_event_streams_per_principal", "must be at least 1");
        }
        Ok(())
    }

    /// The failover policies' bounds.
    fn validate_failover(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason| Err(ConfigError::Invalid { key, reason });
        let f = &self.failover;
        if f.interval < Duration::from_millis(50) || f.interval > Duration::from_secs(10) {
            return invalid("failover.interval", "must be between 50ms and 10s");
        }
        for c in f.clusters.values() {
            if c.fencing_hook.as_ref().is_some_and(|h| h.is_empty()) {
                return invalid(
                    "failover.clusters.*.fencing_hook",
                    "must name a program (and its arguments)",
                );
            }
            if c.max_lag_seconds.is_nan() || c.max_lag_seconds < 0.0 {
                return invalid("failover.clusters.*.max_lag_seconds", "must be 0 or more");
            }
            if c.fencing_timeout < Duration::from_secs(1) {
                return invalid("failover.clusters.*.fencing_timeout", "must be at least 1s");
            }
        }
        Ok(())
    }

    /// The alert rules' period and the receivers.
    fn validate_alerts(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason| Err(ConfigError::Invalid { key, reason });
        let a = &self.alerts;
        if a.evaluate_interval < Duration::from_millis(100) {
            return invalid("alerts.evaluate_interval", "must be at least 100ms");
        }
        if a.email
            .iter()
            .any(|e| !["none", "starttls", "tls"].contains(&e.security.as_str()) || e.to.is_empty())
        {
            return invalid(
                "alerts.email",
                "security must be none, starttls or tls, and `to` must name someone",
            );
        }
        a.validate_receivers()?;
        if a.sms.iter().any(|s| {
            s.to.is_empty()
                || !(s.url.expose().starts_with("http://")
                    || s.url.expose().starts_with("https://"))
        }) {
            return invalid(
                "alerts.sms",
                "url must be http(s) and `to` must name someone",
            );
        }
        for s in &a.sms {
            match s.kind.as_str() {
                "generic" => {}
                "twilio"
                    if s.account_sid.is_some() && s.auth_token.is_some() && s.from.is_some() => {}
                "twilio" => {
                    return invalid(
                        "alerts.sms",
                        "kind = \"twilio\" needs account_sid, auth_token and from",
                    )
                }
                _ => return invalid("alerts.sms", "kind must be generic or twilio"),
            }
        }
        Ok(())
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason| Err(ConfigError::Invalid { key, reason });
        if self.database_url.expose_secret().is_empty() {
            return invalid("database_url", "required (HAPULSE_DATABASE_URL)");
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
        if d.max_heartbeat_interval < Duration::from_millis(100)
            || d.max_heartbeat_interval > Duration::from_secs(3600)
        {
            return invalid(
                "detector.max_heartbeat_interval",
                "must be between 100ms and 1h",
            );
        }
        self.validate_connections()?;
        if self.history.retention < Duration::from_secs(24 * 3600) {
            return invalid("history.retention", "must be at least 1 day");
        }
        if self.history.rollup_retention < self.history.retention {
            return invalid(
                "history.rollup_retention",
                "must be at least history.retention",
            );
        }
        if self.history.event_retention < Duration::from_secs(24 * 3600) {
            return invalid("history.event_retention", "must be at least 1 day");
        }
        self.validate_failover()?;
        self.validate_alerts()?;
        let a = &self.alerts;
        let all = std::iter::once(a.flap_max_changes)
            .chain(a.clusters.values().filter_map(|c| c.flap_max_changes));
        if all.into_iter().any(|n| n == 0) {
            return invalid("alerts.flap_max_changes", "must be at least 1");
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
    fn every_key_can_be_set_from_the_environment() {
        let value = json(&Settings::default());
        for (key, v) in value.as_object().unwrap() {
            let name = if v.is_object() {
                format!("{key}__")
            } else {
                key.clone()
            };
            assert!(
                SERVER_ENV_KEYS.contains(&name.as_str()),
                "HAPULSE_{} is ignored",
                name.to_uppercase()
            );
        }
    }

    #[test]
    fn a_reload_takes_policies_thresholds_and_receivers_and_names_what_needs_a_restart() {
        let running = Settings {
            database_url: SecretString::from("postgres://u:old-secret@h/db"),
            ..Settings::default()
        };
        let mut file = running.clone();
        file.detector.down_after_missed = 5;
        file.detector.check_interval = running.detector.check_interval * 3;
        file.alerts.lag_bytes_threshold = 1 << 20;
        file.failover.automatic_enabled = !running.failover.automatic_enabled;
        file.listen = "127.0.0.1:9999".parse().unwrap();
        file.database_url = SecretString::from("postgres://u:new-secret@h/db");
        let (next, report) = running.reloaded(&file);
        assert_eq!(next.detector.down_after_missed, 5);
        assert_eq!(next.alerts.lag_bytes_threshold, 1 << 20);
        assert_eq!(
            next.failover.automatic_enabled,
            file.failover.automatic_enabled
        );
        assert_eq!(next.listen, running.listen, "the listener needs a restart");
        assert_eq!(
            next.detector.check_interval,
            running.detector.check_interval
        );
        assert_eq!(
            next.database_url.expose_secret(),
            "postgres://u:old-secret@h/db"
        );
        assert_eq!(
            report.applied,
            [
                "alerts.lag_bytes_threshold",
                "detector.down_after_missed",
                "failover.automatic_enabled"
            ]
        );
        assert_eq!(
            report.needs_restart,
            ["detector.check_interval", "listen", "database_url"]
        );
        let shown = format!("{report:?}");
        assert!(!shown.contains("secret"), "{shown}");
        // Nothing changed: nothing to say.
        assert_eq!(running.reloaded(&running).1, Reload::default());
    }

    #[test]
    fn defaults_render_and_secrets_never_print() {
        let text = Settings::default_toml();
        assert!(text.contains("listen = \"127.0.0.1:8080\""), "{text}");
        assert!(text.contains("[detector]"), "{text}");
        let s = Settings {
            database_url: SecretString::from("postgres://u:pw-secret@h/db"),
            ..Settings::default()
        };
        let debug = format!("{s:?}");
        assert!(!debug.contains("pw-secret"), "{debug}");
        assert!(!toml::to_string(&s).unwrap().contains("secret"));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API
    fn environment_overrides_and_validation() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HAPULSE_DATABASE_URL", "postgres://x@y/z");
            jail.set_env("HAPULSE_AGENT_NODE_ID", "belongs-to-the-agent");
            jail.set_env("HAPULSE_LAB_NAME", "belongs-to-the-lab");
            jail.set_env("HAPULSE_LISTEN", "0.0.0.0:9000");
            jail.set_env("HAPULSE_DETECTOR__DOWN_AFTER_MISSED", "5");
            jail.set_env("HAPULSE_TRUSTED_PROXIES", r#"["10.0.0.5/32", "fd00::/8"]"#);
            let s = Settings::load(None).unwrap();
            assert_eq!(s.listen.port(), 9000);
            assert_eq!(s.trusted_proxies.len(), 2);
            assert_eq!(s.detector.down_after_missed, 5);
            jail.set_env("HAPULSE_DETECTOR__DOWN_AFTER_MISSED", "1");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("detector"), "{err}");
            jail.set_env("HAPULSE_DETECTOR__DOWN_AFTER_MISSED", "5");
            jail.set_env("HAPULSE_TRUSTED_PROXIES", r#"["10.0.0.300/8"]"#);
            assert!(Settings::load(None).is_err(), "not a CIDR");
            Ok(())
        });
    }
}
