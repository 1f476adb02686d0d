//! The bodies the HTTP receivers send, built from the alerts of one message (pure: no I/O).
//!
//! - `hapulse` webhook format: hapulse's own JSON (README, "Alerts"), signed with
//!   HMAC-SHA256 when the receiver has a secret.
//! - Slack incoming webhooks (docs.slack.dev, "Sending messages using incoming webhooks"): a
//!   JSON object with `text` (the notification's fallback) and `blocks` (Block Kit: a `section`
//!   with `mrkdwn` text, at most 3000 characters).
//! - PagerDuty Events API v2 (developer.pagerduty.com, "Send an Alert Event"): a trigger is
//!   `{routing_key, event_action: "trigger", dedup_key, payload: {summary (≤ 1024 characters),
//!   source, severity (critical, error, warning, info), timestamp, component, group, class,
//!   custom_details}, client, client_url, links: [{href, text}]}`; a resolve is only
//!   `{routing_key, event_action: "resolve", dedup_key}`.
//! - Alertmanager API v2 (prometheus.io, "Alerts API"; `postableAlert` in Alertmanager's
//!   `api/v2/openapi.yaml`): an array of `{labels, annotations, startsAt, endsAt,
//!   generatorURL}`; `labels.alertname` is required, labels identify an alert, timestamps are
//!   RFC 3339.

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::alerting::templates::{slack_escape, Templates};

/// Longest `payload.summary` PagerDuty takes, in characters.
const PAGERDUTY_SUMMARY_MAX: usize = 1024;
/// Longest text of a Slack `section` block, in characters.
const SLACK_SECTION_MAX: usize = 3000;

/// One alert of a message, as the receivers' bodies and templates see it.
#[derive(Debug, Clone, Serialize)]
pub struct AlertItem {
    /// `firing` or `resolved`.
    pub status: &'static str,
    /// The notification: `firing`, `repeat` (still firing) or `resolved`.
    pub kind: String,
    /// The rule (`node_down`).
    pub rule: String,
    /// `critical`, `warning` or `info`.
    pub severity: String,
    /// The cluster.
    pub cluster: String,
    /// The node, when the alert is about one.
    pub node: Option<String>,
    /// The VRRP instance, when the alert is about one.
    pub instance: Option<String>,
    /// The replication link, when the alert is about one.
    pub link: Option<String>,
    /// One line: what is wrong.
    pub summary: String,
    /// When the condition was first seen (RFC 3339, UTC).
    #[serde(serialize_with = "rfc3339")]
    pub starts_at: DateTime<Utc>,
    /// When it resolved (RFC 3339, UTC); none while firing.
    #[serde(serialize_with = "rfc3339_opt")]
    pub ends_at: Option<DateTime<Utc>>,
    /// Stable per alert: hex SHA-256 of hapulse's alert key (rule and what it concerns,
    /// `node_down:prod/db1`), the same for every notification of it and every episode.
    pub fingerprint: String,
    /// The alert episode's id (`GET /api/v1/alerts`).
    pub alert_id: Uuid,
    /// The cluster's dashboard page.
    pub dashboard_url: String,
}

fn rfc3339<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn rfc3339_opt<S: serde::Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => rfc3339(at, s),
        None => s.serialize_none(),
    }
}

/// RFC 3339 with milliseconds, UTC (`2026-11-21T03:04:05.000Z`).
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Hex SHA-256 of an alert key (`node_down:prod/db1`).
pub fn fingerprint(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256=` and the hex HMAC-SHA256 of `body` keyed with `secret`: the `X-Hapulse-Signature`
/// header.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

/// What every template sees (`alerting::templates`).
#[derive(Serialize)]
struct Context<'a> {
    alert: &'a AlertItem,
    alerts: &'a [AlertItem],
    cluster: &'a str,
    status: &'a str,
    dashboard_url: &'a str,
}

/// `resolved` when every alert of the message is, else `firing`.
fn status(items: &[AlertItem]) -> &'static str {
    if items.iter().all(|i| i.status == "resolved") {
        "resolved"
    } else {
        "firing"
    }
}

/// Renders `name` for `alert`, one of the message's `items`.
fn render(templates: &Templates, name: &str, alert: &AlertItem, items: &[AlertItem]) -> String {
    let context = Context {
        alert,
        alerts: items,
        cluster: &alert.cluster,
        status: status(items),
        dashboard_url: &alert.dashboard_url,
    };
    templates.render(name, &context, &alert.summary)
}

/// At most `max` characters of `text`.
fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// The `hapulse` webhook format: `{version, status, cluster, subject, sent_at, dashboard_url,
/// alerts: [...]}`, each alert with its fields ([`AlertItem`]) and its `description`.
pub fn hapulse_body(
    items: &[AlertItem],
    subject: &str,
    templates: &Templates,
    sent_at: DateTime<Utc>,
) -> Value {
    let alerts: Vec<Value> = items
        .iter()
        .map(|item| {
            let mut v = serde_json::to_value(item).unwrap_or_else(|_| json!({}));
            v["description"] = render(templates, "description.txt", item, items).into();
            v
        })
        .collect();
    json!({
        "version": "1",
        "status": status(items),
        "cluster": items.first().map_or("", |i| i.cluster.as_str()),
        "subject": subject,
        "sent_at": timestamp(sent_at),
        "dashboard_url": items.first().map_or("", |i| i.dashboard_url.as_str()),
        "alerts": alerts,
    })
}

/// A Slack incoming-webhook message: `text` (the subject, the fallback Slack notifies with) and
/// one `section` block with the rendered `slack.txt`.
pub fn slack_body(items: &[AlertItem], subject: &str, templates: &Templates) -> Value {
    let text = match items.first() {
        Some(first) => render(templates, "slack.txt", first, items),
        None => String::new(),
    };
    json!({
        "text": slack_escape(subject),
        "blocks": [{
            "type": "section",
            "text": {"type": "mrkdwn", "text": truncate(text.trim_end(), SLACK_SECTION_MAX)},
        }],
    })
}

/// One PagerDuty event for `item`: `trigger` while it fires, `resolve` once it has resolved.
pub fn pagerduty_event(item: &AlertItem, routing_key: &str, templates: &Templates) -> Value {
    if item.status == "resolved" {
        return json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": item.fingerprint,
        });
    }
    let summary = render(templates, "summary.txt", item, std::slice::from_ref(item));
    let mut details = Map::new();
    details.insert("cluster".into(), item.cluster.clone().into());
    for (key, value) in [
        ("node", &item.node),
        ("vrrp_instance", &item.instance),
        ("link", &item.link),
    ] {
        if let Some(v) = value {
            details.insert(key.into(), v.clone().into());
        }
    }
    details.insert("alert_id".into(), item.alert_id.to_string().into());
    details.insert(
        "description".into(),
        render(
            templates,
            "description.txt",
            item,
            std::slice::from_ref(item),
        )
        .into(),
    );
    let component = item.instance.as_ref().or(item.link.as_ref());
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": item.fingerprint,
        "payload": {
            "summary": truncate(summary.trim(), PAGERDUTY_SUMMARY_MAX),
            "source": item.node.as_deref().unwrap_or(&item.cluster),
            "severity": item.severity,
            "timestamp": timestamp(item.starts_at),
            "component": component,
            "group": item.cluster,
            "class": item.rule,
            "custom_details": details,
        },
        "client": "hapulse",
        "client_url": item.dashboard_url,
        "links": [{"href": item.dashboard_url, "text": format!("hapulse: cluster {}", item.cluster)}],
    })
}

/// Alertmanager's postable alerts. Labels: `alertname` (the rule), `severity`, `cluster`, and
/// `node`, `vrrp_instance`, `link` when the alert has them; annotations: `summary`,
/// `description`, `dashboard`. A firing alert's `endsAt` is `expires`: Alertmanager resolves an
/// alert that was not sent again within its `resolve_timeout` (5 min by default) unless
/// `endsAt` says otherwise, and hapulse sends a firing alert again only every
/// `repeat_interval`. A resolved alert's `endsAt` is when it resolved.
pub fn alertmanager_alerts(
    items: &[AlertItem],
    templates: &Templates,
    expires: DateTime<Utc>,
) -> Value {
    let alerts: Vec<Value> = items
        .iter()
        .map(|item| {
            let mut labels = Map::new();
            labels.insert("alertname".into(), item.rule.clone().into());
            labels.insert("severity".into(), item.severity.clone().into());
            labels.insert("cluster".into(), item.cluster.clone().into());
            for (key, value) in [
                ("node", &item.node),
                ("vrrp_instance", &item.instance),
                ("link", &item.link),
            ] {
                if let Some(v) = value {
                    labels.insert(key.into(), v.clone().into());
                }
            }
            let description = render(templates, "description.txt", item, items);
            json!({
                "labels": labels,
                "annotations": {
                    "summary": item.summary,
                    "description": description,
                    "dashboard": item.dashboard_url,
                },
                "startsAt": timestamp(item.starts_at),
                "endsAt": timestamp(item.ends_at.unwrap_or(expires)),
                "generatorURL": item.dashboard_url,
            })
        })
        .collect();
    Value::Array(alerts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(status: &'static str) -> AlertItem {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        AlertItem {
            status,
            kind: if status == "resolved" {
                "resolved"
            } else {
                "firing"
            }
            .into(),
            rule: "no_master".into(),
            severity: "critical".into(),
            cluster: "prod".into(),
            node: None,
            instance: Some("VI_1".into()),
            link: None,
            summary: "VI_1 in prod has no MASTER <now>".into(),
            starts_at: at("2026-11-21T03:04:05Z"),
            ends_at: (status == "resolved").then(|| at("2026-11-21T03:05:00Z")),
            fingerprint: fingerprint("no_master:prod/VI_1"),
            alert_id: Uuid::nil(),
            dashboard_url: "https://hapulse.example/clusters/prod".into(),
        }
    }

    #[test]
    fn fingerprints_and_signatures_are_what_others_compute() {
        // sha256("abc") and RFC 4231's test case 2 (key "Jefe").
        assert_eq!(
            fingerprint("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn pagerduty_triggers_with_the_documented_fields_and_resolves_with_three() {
        let t = Templates::load(None, None).unwrap();
        let trigger = pagerduty_event(&item("firing"), "KEY", &t);
        assert_eq!(trigger["event_action"], "trigger");
        assert_eq!(trigger["dedup_key"], item("firing").fingerprint);
        let p = &trigger["payload"];
        assert_eq!(
            (&p["summary"], &p["source"], &p["severity"], &p["timestamp"]),
            (
                &json!("VI_1 in prod has no MASTER <now>"),
                &json!("prod"),
                &json!("critical"),
                &json!("2026-11-21T03:04:05.000Z")
            )
        );
        assert_eq!(
            (&p["component"], &p["group"], &p["class"]),
            (&json!("VI_1"), &json!("prod"), &json!("no_master"))
        );
        assert_eq!(
            trigger["links"][0]["href"],
            "https://hapulse.example/clusters/prod"
        );
        let resolve = pagerduty_event(&item("resolved"), "KEY", &t);
        assert_eq!(
            resolve,
            json!({"routing_key": "KEY", "event_action": "resolve", "dedup_key": item("resolved").fingerprint})
        );
    }

    #[test]
    fn alertmanager_slack_and_hapulse_bodies() {
        let t = Templates::load(None, None).unwrap();
        let expires = "2026-11-21T08:00:00Z".parse().unwrap();
        let am = alertmanager_alerts(&[item("firing"), item("resolved")], &t, expires);
        assert_eq!(
            am[0]["labels"],
            json!({"alertname": "no_master", "severity": "critical", "cluster": "prod", "vrrp_instance": "VI_1"})
        );
        assert_eq!(am[0]["endsAt"], "2026-11-21T08:00:00.000Z");
        assert_eq!(am[1]["endsAt"], "2026-11-21T03:05:00.000Z");
        assert_eq!(
            am[0]["generatorURL"],
            "https://hapulse.example/clusters/prod"
        );
        let description = am[0]["annotations"]["description"].as_str().unwrap();
        assert_eq!(
            description,
            "VI_1 in prod has no MASTER <now>\n\nWhat:      no_master (critical)\nCluster:   prod\nInstance:  VI_1\nSince:     2026-11-21T03:04:05.000Z\nDashboard: https://hapulse.example/clusters/prod"
        );

        let slack = slack_body(
            &[item("firing")],
            "[FIRING critical] no_master prod/VI_1",
            &t,
        );
        assert_eq!(slack["text"], "[FIRING critical] no_master prod/VI_1");
        assert_eq!(
            slack["blocks"][0]["text"]["text"],
            ":red_circle: *FIRING* `critical` *no_master* in *prod* (VI_1): VI_1 in prod has no MASTER &lt;now&gt; <https://hapulse.example/clusters/prod|dashboard>"
        );

        let sent = "2026-11-21T03:05:01Z".parse().unwrap();
        let body = hapulse_body(&[item("resolved")], "subject", &t, sent);
        assert_eq!(
            (&body["status"], &body["cluster"], &body["sent_at"]),
            (
                &json!("resolved"),
                &json!("prod"),
                &json!("2026-11-21T03:05:01.000Z")
            )
        );
        let a = &body["alerts"][0];
        assert_eq!(
            (&a["ends_at"], &a["node"], &a["instance"]),
            (
                &json!("2026-11-21T03:05:00.000Z"),
                &Value::Null,
                &json!("VI_1")
            )
        );
        assert!(a["description"]
            .as_str()
            .unwrap()
            .contains("Ended:     2026-11-21T03:05:00.000Z"));
    }
}
