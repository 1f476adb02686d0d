//! The configuration of the HTTP receivers that speak another tool's format: Slack incoming
//! webhooks, PagerDuty's Events API v2 and Alertmanager's API v2 (`[[alerts.slack]]`,
//! `[[alerts.pagerduty]]`, `[[alerts.alertmanager]]`), and the serializers that keep their
//! secrets out of `--print-default-config`.
//!
//! A foundation: it imports nothing of the crate (`config` holds these types; the senders in
//! `alerting::http_receivers` read them).

use std::collections::BTreeMap;
use std::path::PathBuf;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// PagerDuty's Events API v2 endpoint.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// A Slack incoming webhook: `POST {url}` with `{"text", "blocks"}` (one message per cluster and
/// evaluation round).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackReceiver {
    /// Name, for the delivery log (`slack:NAME`).
    pub name: String,
    /// The webhook URL Slack gave (`https://hooks.slack.com/services/T…/B…/…`): its path is
    /// the token, so it is a secret — never logged, shown or printed.
    #[serde(serialize_with = "serialize_redacted")]
    pub url: SecretString,
    /// A minijinja template for the message text (Slack mrkdwn), instead of the built-in
    /// `slack.txt` (or the one in `alerts.template_dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_file: Option<PathBuf>,
    /// Severities sent here (default all).
    #[serde(default)]
    pub severities: Vec<String>,
    /// Clusters sent here (default all).
    #[serde(default)]
    pub clusters: Vec<String>,
}

/// A PagerDuty service's Events API v2 integration: one `trigger` event per firing alert and
/// one `resolve` per resolved one, with the alert's fingerprint as `dedup_key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyReceiver {
    /// Name, for the delivery log (`pagerduty:NAME`).
    pub name: String,
    /// The integration key (32 characters). A secret: never logged, shown or printed.
    #[serde(serialize_with = "serialize_redacted")]
    pub routing_key: SecretString,
    /// The events endpoint (default `https://events.pagerduty.com/v2/enqueue`).
    #[serde(default = "default_pagerduty_url")]
    pub url: String,
    /// A minijinja template for `payload.summary`, instead of the built-in `summary.txt` (or
    /// the one in `alerts.template_dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_file: Option<PathBuf>,
    /// Severities sent here (default all).
    #[serde(default)]
    pub severities: Vec<String>,
    /// Clusters sent here (default all).
    #[serde(default)]
    pub clusters: Vec<String>,
}

/// An Alertmanager that routes everything: `POST {url}/api/v2/alerts` with the alerts as
/// postable alerts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerReceiver {
    /// Name, for the delivery log (`alertmanager:NAME`).
    pub name: String,
    /// Alertmanager's base URL (`http://alertmanager:9093`, or with a path prefix).
    pub url: String,
    /// Extra headers (e.g. `Authorization` for a proxy in front). Values are secrets.
    #[serde(default, serialize_with = "serialize_redacted_map")]
    pub headers: BTreeMap<String, SecretString>,
    /// A minijinja template for the `description` annotation, instead of the built-in
    /// `description.txt` (or the one in `alerts.template_dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_file: Option<PathBuf>,
    /// Severities sent here (default all).
    #[serde(default)]
    pub severities: Vec<String>,
    /// Clusters sent here (default all).
    #[serde(default)]
    pub clusters: Vec<String>,
}

fn default_pagerduty_url() -> String {
    PAGERDUTY_EVENTS_URL.into()
}

/// Serializes a secret as an empty string.
pub fn serialize_redacted<S: serde::Serializer>(_: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("")
}

/// Serializes an optional secret as an empty string (or nothing).
pub fn serialize_redacted_opt<S: serde::Serializer>(
    value: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_str(""),
        None => s.serialize_none(),
    }
}

/// Serializes a map of secrets with its keys and empty values.
pub fn serialize_redacted_map<S: serde::Serializer>(
    value: &BTreeMap<String, SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(value.keys().map(|k| (k, "")))
}
