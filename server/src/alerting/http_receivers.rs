//! Senders of the HTTP receivers with structured bodies: the webhook (its `plain` and `hapulse`
//! formats, custom headers and HMAC signature), Slack, PagerDuty and Alertmanager. Each returns
//! an error naming the receiver and what failed, never a URL, header value or key (the caller
//! also blanks every configured secret, `notify::redact`).

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::alerting::payloads::{self, AlertItem};
use crate::alerting::receivers::{AlertmanagerReceiver, PagerDutyReceiver, SlackReceiver};
use crate::alerting::templates::Templates;
use crate::config::{AlertSettings, WebhookReceiver};

/// The signature header of a webhook with `hmac_secret`: `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Hapulse-Signature";

/// The alerts of notifications `ids`, in the order they were stored, as bodies and templates
/// see them.
pub async fn alert_items(
    db: &PgPool,
    settings: &AlertSettings,
    ids: &[Uuid],
) -> Result<Vec<AlertItem>, String> {
    let rows = sqlx::query(
        "SELECT n.kind, a.id, a.fingerprint, a.rule, a.severity, a.cluster, a.node_id, a.instance,
                a.link, a.summary, a.active_since, a.resolved_at
           FROM notifications n JOIN alerts a ON a.id = n.alert_id
          WHERE n.id = ANY($1) ORDER BY n.created_at, n.id",
    )
    .bind(ids)
    .fetch_all(db)
    .await
    .map_err(|e| format!("reading the alerts: {e}"))?;
    let base = settings.dashboard_url.trim_end_matches('/');
    rows.iter()
        .map(|row| -> Result<AlertItem, sqlx::Error> {
            let kind: String = row.try_get("kind")?;
            let cluster: String = row.try_get("cluster")?;
            let resolved = kind == "resolved";
            let resolved_at: Option<DateTime<Utc>> = row.try_get("resolved_at")?;
            let key: String = row.try_get("fingerprint")?;
            Ok(AlertItem {
                status: if resolved { "resolved" } else { "firing" },
                kind,
                rule: row.try_get("rule")?,
                severity: row.try_get("severity")?,
                node: row.try_get("node_id")?,
                instance: row.try_get("instance")?,
                link: row.try_get("link")?,
                summary: row.try_get("summary")?,
                starts_at: row.try_get("active_since")?,
                ends_at: resolved.then(|| resolved_at.unwrap_or_else(Utc::now)),
                fingerprint: payloads::fingerprint(&key),
                alert_id: row.try_get("id")?,
                dashboard_url: format!("{base}/clusters/{cluster}"),
                cluster,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("reading the alerts: {e}"))
}

/// The templates of a receiver whose own file replaces `name`: should a file no longer parse
/// (changed since the start, where it was checked), the built-in ones, and the reason logged.
pub fn templates(
    settings: &AlertSettings,
    name: &str,
    own: Option<&Path>,
) -> Result<Templates, String> {
    Templates::load(settings.template_dir.as_deref(), own.map(|p| (name, p))).or_else(|e| {
        tracing::warn!(error = %e, "message template unusable; the built-in ones are used");
        Templates::load(None, None).map_err(|e| e.to_string())
    })
}

/// POSTs `body` (JSON) with `headers`; `what` names the receiver in errors.
async fn post_json(
    http: &reqwest::Client,
    url: &str,
    headers: &BTreeMap<String, SecretString>,
    extra: &[(&str, String)],
    body: Vec<u8>,
    what: &str,
) -> Result<reqwest::Response, String> {
    let mut request = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        request = request.header(k.as_str(), v.expose_secret());
    }
    for (k, v) in extra {
        request = request.header(*k, v.as_str());
    }
    let response = request
        .body(body)
        .send()
        .await
        .map_err(|e| format!("{what}: {}", transport_error(e)))?;
    if response.status().is_success() {
        Ok(response)
    } else {
        let status = response.status();
        // Slack and PagerDuty answer a short reason (`invalid_payload`, `Event object is
        // invalid`); kept only when it is one short line of plain words.
        let text = response.text().await.unwrap_or_default();
        let reason = text.trim();
        let plain = reason.len() <= 60
            && reason
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " _-.".contains(c));
        Err(if plain && !reason.is_empty() {
            format!("{what} answered {status} ({reason})")
        } else {
            format!("{what} answered {status}")
        })
    }
}

/// A webhook: `{subject, text}` (format `plain`) or the `hapulse` format, with the receiver's
/// headers and, with `hmac_secret`, the `X-Hapulse-Signature` of the exact body.
pub async fn send_webhook(
    db: &PgPool,
    http: &reqwest::Client,
    settings: &AlertSettings,
    r: &WebhookReceiver,
    ids: &[Uuid],
    (subject, text): (&str, &str),
) -> Result<(), String> {
    let what = format!("webhook {}", r.name);
    let body = if r.format == "hapulse" {
        let items = alert_items(db, settings, ids).await?;
        let t = templates(settings, "description.txt", r.template_file.as_deref())?;
        payloads::hapulse_body(&items, subject, &t, Utc::now())
    } else {
        serde_json::json!({"subject": subject, "text": text})
    };
    let body = serde_json::to_vec(&body).map_err(|e| format!("{what}: {e}"))?;
    let mut extra = Vec::new();
    if let Some(secret) = &r.hmac_secret {
        extra.push((
            SIGNATURE_HEADER,
            payloads::signature(secret.expose_secret().as_bytes(), &body),
        ));
    }
    post_json(http, r.url.expose(), &r.headers, &extra, body, &what)
        .await
        .map(|_| ())
}

/// A Slack incoming webhook; Slack answers `200 ok`.
pub async fn send_slack(
    db: &PgPool,
    http: &reqwest::Client,
    settings: &AlertSettings,
    r: &SlackReceiver,
    ids: &[Uuid],
    subject: &str,
) -> Result<(), String> {
    let what = format!("slack {}", r.name);
    let items = alert_items(db, settings, ids).await?;
    let t = templates(settings, "slack.txt", r.template_file.as_deref())?;
    let body = serde_json::to_vec(&payloads::slack_body(&items, subject, &t))
        .map_err(|e| format!("{what}: {e}"))?;
    let url = r.url.expose_secret();
    post_json(http, url, &BTreeMap::new(), &[], body, &what)
        .await
        .map(|_| ())
}

/// PagerDuty: one event per alert of the message (the API takes one at a time); all must be
/// accepted (`202`), and a retry sends them all again — the `dedup_key` makes that harmless.
pub async fn send_pagerduty(
    db: &PgPool,
    http: &reqwest::Client,
    settings: &AlertSettings,
    r: &PagerDutyReceiver,
    ids: &[Uuid],
) -> Result<(), String> {
    let what = format!("pagerduty {}", r.name);
    let items = alert_items(db, settings, ids).await?;
    let t = templates(settings, "summary.txt", r.template_file.as_deref())?;
    for item in &items {
        let event = payloads::pagerduty_event(item, r.routing_key.expose_secret(), &t);
        let body = serde_json::to_vec(&event).map_err(|e| format!("{what}: {e}"))?;
        post_json(http, r.url.expose(), &BTreeMap::new(), &[], body, &what).await?;
    }
    Ok(())
}

/// Alertmanager: every alert of the message in one `POST {url}/api/v2/alerts`.
pub async fn send_alertmanager(
    db: &PgPool,
    http: &reqwest::Client,
    settings: &AlertSettings,
    r: &AlertmanagerReceiver,
    ids: &[Uuid],
) -> Result<(), String> {
    let what = format!("alertmanager {}", r.name);
    let items = alert_items(db, settings, ids).await?;
    let t = templates(settings, "description.txt", r.template_file.as_deref())?;
    // Sent again only every repeat_interval: the alert must outlive that (ten minutes more).
    let expires = Utc::now()
        + chrono::Duration::from_std(settings.repeat_interval)
            .unwrap_or(chrono::Duration::hours(4))
        + chrono::Duration::minutes(10);
    let body = serde_json::to_vec(&payloads::alertmanager_alerts(&items, &t, expires))
        .map_err(|e| format!("{what}: {e}"))?;
    let url = format!("{}/api/v2/alerts", r.url.expose().trim_end_matches('/'));
    post_json(http, &url, &r.headers, &[], body, &what)
        .await
        .map(|_| ())
}

/// What went wrong with an HTTP request, without its URL (a webhook's or gateway's URL often
/// carries its secret): the error and its causes.
pub fn transport_error(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
