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
    pub url: ReceiverUrl,
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
    pub url: ReceiverUrl,
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

fn default_pagerduty_url() -> ReceiverUrl {
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

/// A receiver's URL that may carry credentials (`https://user:pw@host/…`, a token in the
/// path's query): used as is to send, shown (`Debug`, serialized configuration) with the user
/// information and the query replaced by `***`.
#[derive(Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(transparent)]
pub struct ReceiverUrl(String);

impl ReceiverUrl {
    /// The URL itself, to send to. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its user information and query hidden.
    pub fn shown(&self) -> String {
        let (before_query, query) = match self.0.split_once('?') {
            Some((b, _)) => (b, "?***"),
            None => (self.0.as_str(), ""),
        };
        let shown = match before_query.split_once("://") {
            Some((scheme, rest)) => {
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                match authority.rsplit_once('@') {
                    Some((_, host)) => format!("{scheme}://***@{host}{path}"),
                    None => before_query.to_string(),
                }
            }
            None => before_query.to_string(),
        };
        format!("{shown}{query}")
    }
}

impl From<&str> for ReceiverUrl {
    fn from(url: &str) -> Self {
        ReceiverUrl(url.to_string())
    }
}

impl From<String> for ReceiverUrl {
    fn from(url: String) -> Self {
        ReceiverUrl(url)
    }
}

impl std::fmt::Debug for ReceiverUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.shown())
    }
}

impl Serialize for ReceiverUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.shown())
    }
}

/// Serializes a map of secrets with its keys and empty values.
pub fn serialize_redacted_map<S: serde::Serializer>(
    value: &BTreeMap<String, SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(value.keys().map(|k| (k, "")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receiver_url_hides_its_credentials_and_query_when_shown() {
        for (url, shown) in [
            ("http://user:pw@am:9093/api", "http://***@am:9093/api"),
            (
                "https://hooks.example/hook?token=abc",
                "https://hooks.example/hook?***",
            ),
            ("https://u@h", "https://***@h"),
            ("http://plain.example:8080/x", "http://plain.example:8080/x"),
        ] {
            let u = ReceiverUrl::from(url);
            assert_eq!(u.shown(), shown);
            assert_eq!(format!("{u:?}"), format!("{shown:?}"));
            assert_eq!(serde_json::to_value(&u).unwrap(), shown);
            assert_eq!(u.expose(), url);
        }
    }
}
