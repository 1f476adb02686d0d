//! Notifications: a durable outbox in PostgreSQL, delivered by email (SMTP, with lettre), SMS (an
//! HTTP gateway), webhooks (a JSON POST), Slack, PagerDuty and Alertmanager (the last three and
//! the webhook's `hapulse` format in `alerting::http_receivers`).
//!
//! A notification is a row before anything is sent. The sender claims due rows (moving their
//! next attempt a minute ahead, so a crash mid-send retries rather than loses them), sends, and
//! records `sent`, or the error and the next attempt, backing off from 2 s to 5 min; after 50
//! attempts it is `failed`. Delivery is at least once: a crash between sending and recording
//! sends that one notification again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;
use serde::Serialize;
use sqlx::{PgPool, Postgres, Row, Transaction};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::alerting::http_receivers::{self, transport_error};
use crate::alerting::rules::Condition;
use crate::config::{AlertSettings, EmailReceiver, SmsReceiver};
use crate::state::AppState;

/// Attempts before a notification is given up as `failed`.
const MAX_ATTEMPTS: i32 = 50;

/// An empty list takes everything.
fn wants(list: &[String], value: &str) -> bool {
    list.is_empty() || list.iter().any(|s| s == value)
}

/// The receivers (`email:NAME`, `sms:NAME:NUMBER`, `webhook:NAME`, `slack:NAME`,
/// `pagerduty:NAME`, `alertmanager:NAME`) routed an alert of `severity` in `cluster`.
fn receivers(settings: &AlertSettings, severity: &str, cluster: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    out.extend(
        settings
            .email
            .iter()
            .filter(|e| wants(&e.severities, severity) && wants(&e.clusters, cluster))
            .map(|e| format!("email:{}", e.name)),
    );
    for s in settings
        .sms
        .iter()
        .filter(|s| wants(&s.severities, severity) && wants(&s.clusters, cluster))
    {
        out.extend(s.to.iter().map(|to| format!("sms:{}:{to}", s.name)));
    }
    out.extend(
        settings
            .webhook
            .iter()
            .filter(|w| wants(&w.severities, severity) && wants(&w.clusters, cluster))
            .map(|w| format!("webhook:{}", w.name)),
    );
    out.extend(
        http_routes(settings)
            .filter(|(_, _, severities, clusters)| {
                wants(severities, severity) && wants(clusters, cluster)
            })
            .map(|(kind, name, _, _)| format!("{kind}:{name}")),
    );
    out
}

/// The Slack, PagerDuty and Alertmanager receivers: kind, name, severities, clusters.
fn http_routes(
    settings: &AlertSettings,
) -> impl Iterator<Item = (&'static str, &str, &[String], &[String])> {
    let slack = settings.slack.iter().map(|r| {
        let (name, s, c) = (r.name.as_str(), &r.severities[..], &r.clusters[..]);
        ("slack", name, s, c)
    });
    let pagerduty = settings.pagerduty.iter().map(|r| {
        let (name, s, c) = (r.name.as_str(), &r.severities[..], &r.clusters[..]);
        ("pagerduty", name, s, c)
    });
    let alertmanager = settings.alertmanager.iter().map(|r| {
        let (name, s, c) = (r.name.as_str(), &r.severities[..], &r.clusters[..]);
        ("alertmanager", name, s, c)
    });
    slack.chain(pagerduty).chain(alertmanager)
}

/// Every configured receiver as the `receiver` label of `hapulse_notifications_total` names it
/// (`email:NAME`, `sms:NAME`, `webhook:NAME`, `slack:NAME`, …: [`crate::metrics::receiver_label`]).
pub fn receiver_labels(settings: &AlertSettings) -> Vec<String> {
    let email = settings.email.iter().map(|e| format!("email:{}", e.name));
    let sms = settings.sms.iter().map(|s| format!("sms:{}", s.name));
    let webhook = settings
        .webhook
        .iter()
        .map(|w| format!("webhook:{}", w.name));
    let http = http_routes(settings).map(|(kind, name, _, _)| format!("{kind}:{name}"));
    email.chain(sms).chain(webhook).chain(http).collect()
}

/// The message body (`web/templates/notification.txt`): what, where, since when, and the link
/// to the cluster's dashboard page.
#[derive(askama::Template)]
#[template(path = "notification.txt")]
struct Body<'a> {
    summary: &'a str,
    rule: &'a str,
    severity: &'a str,
    kind: &'a str,
    cluster: &'a str,
    node_id: Option<&'a str>,
    instance: Option<&'a str>,
    link: Option<&'a str>,
    since: String,
    dashboard: String,
}

fn body(settings: &AlertSettings, c: &Condition, kind: &str, at: DateTime<Utc>) -> String {
    let dashboard = format!(
        "{}/clusters/{}",
        settings.dashboard_url.trim_end_matches('/'),
        c.cluster
    );
    let body = Body {
        summary: &c.summary,
        rule: c.rule,
        severity: c.severity.as_str(),
        kind,
        cluster: &c.cluster,
        node_id: c.node_id.as_deref(),
        instance: c.instance.as_deref(),
        link: c.link.as_deref(),
        since: at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        dashboard: dashboard.clone(),
    };
    askama::Template::render(&body).unwrap_or_else(|e| {
        // The template is compiled in; rendering plain strings cannot fail, but a message
        // without its details is better than none.
        tracing::warn!(error = %e, "notification template failed");
        format!("{}\n\nDashboard: {dashboard}\n", c.summary)
    })
}

/// Stores the notifications of one alert event (`firing`, `repeat`, `resolved`) for every
/// receiver routed it, in the caller's transaction, and returns their ids. They are held for
/// [`ROUND_HOLD`] so that the sender sees a whole evaluation round at once (to group it); the
/// round ends with [`release`]. Should the server stop in between, the hold simply runs out.
pub async fn enqueue(
    tx: &mut Transaction<'_, Postgres>,
    settings: &AlertSettings,
    alert_id: Uuid,
    c: &Condition,
    kind: &str,
    at: DateTime<Utc>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let state = match kind {
        "resolved" => "RESOLVED",
        "repeat" => "STILL FIRING",
        _ => "FIRING",
    };
    let subject = format!(
        "[{state} {}] {} {}",
        c.severity.as_str(),
        c.rule,
        c.fingerprint.split_once(':').map_or("", |(_, w)| w)
    );
    let body = body(settings, c, kind, at);
    let mut ids = Vec::new();
    for receiver in receivers(settings, c.severity.as_str(), &c.cluster) {
        let id = Uuid::new_v4();
        ids.push(id);
        sqlx::query(
            "INSERT INTO notifications (id, alert_id, receiver, kind, subject, body, state, cluster, next_attempt_at)
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, now() + $8 * interval '1 second')",
        )
        .bind(id)
        .bind(alert_id)
        .bind(&receiver)
        .bind(kind)
        .bind(&subject)
        .bind(&body)
        .bind(&c.cluster)
        .bind(ROUND_HOLD.as_secs_f64())
        .execute(&mut **tx)
        .await?;
    }
    Ok(ids)
}

/// How long notifications wait for the end of the evaluation round that stored them.
pub const ROUND_HOLD: Duration = Duration::from_secs(5);

/// Ends an evaluation round: its notifications become due together, in one statement.
pub async fn release(pool: &PgPool, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notifications SET next_attempt_at = now() WHERE id = ANY($1) AND attempts = 0",
    )
    .bind(ids)
    .execute(pool)
    .await?;
    Ok(())
}

/// Delivers due notifications until `shutdown`; woken at once when new ones are stored.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client; notifications are off");
            return;
        }
    };
    loop {
        match deliver_due(&state, &http).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(notifications = n, "notifications handled"),
            Err(e) => tracing::warn!(error = %e, "notification outbox unavailable; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = state.notifier.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// One message for a receiver: one notification, or several for the same cluster.
#[derive(Debug, Default)]
struct Outgoing {
    ids: Vec<Uuid>,
    receiver: String,
    cluster: String,
    subjects: Vec<String>,
    bodies: Vec<String>,
    attempts: i32,
}

impl Outgoing {
    /// Subject and body: the notification's own, or a summary line and every part.
    fn text(&self) -> (String, String) {
        if let ([subject], [body]) = (self.subjects.as_slice(), self.bodies.as_slice()) {
            return (subject.clone(), body.clone());
        }
        let subject = format!(
            "[hapulse {}] {} alerts: {}",
            self.cluster,
            self.subjects.len(),
            self.subjects.join("; ")
        );
        let body = self
            .subjects
            .iter()
            .zip(&self.bodies)
            .map(|(s, b)| format!("{s}\n{b}"))
            .collect::<Vec<_>>()
            .join("\n");
        (subject, body)
    }

    /// The SMS text: each notification's subject and summary, one per line.
    fn sms_text(&self) -> String {
        self.subjects
            .iter()
            .zip(&self.bodies)
            .map(|(s, b)| format!("{s}: {}", b.lines().next().unwrap_or("")))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Groups claimed notifications per receiver and cluster, in the order they were stored.
fn group(rows: Vec<(Uuid, String, String, String, String, i32)>) -> Vec<Outgoing> {
    let mut messages: Vec<Outgoing> = Vec::new();
    for (id, receiver, cluster, subject, body, attempts) in rows {
        let at = messages
            .iter()
            .position(|m| m.receiver == receiver && m.cluster == cluster);
        let m = match at {
            Some(i) => &mut messages[i],
            None => {
                messages.push(Outgoing {
                    receiver,
                    cluster,
                    ..Default::default()
                });
                let last = messages.len() - 1;
                &mut messages[last]
            }
        };
        m.ids.push(id);
        m.subjects.push(subject);
        m.bodies.push(body);
        m.attempts = m.attempts.max(attempts);
    }
    messages
}

/// Claims and sends the due notifications, one message per receiver and cluster; returns how
/// many notifications it handled.
async fn deliver_due(state: &AppState, http: &reqwest::Client) -> Result<usize, sqlx::Error> {
    let due = sqlx::query(
        "UPDATE notifications SET next_attempt_at = now() + interval '1 minute', attempts = attempts + 1
          WHERE id IN (SELECT id FROM notifications WHERE state = 'pending' AND next_attempt_at <= now()
                        ORDER BY created_at LIMIT 100 FOR UPDATE SKIP LOCKED)
          RETURNING id, receiver, cluster, subject, body, attempts, created_at",
    )
    .fetch_all(&state.db)
    .await?;
    let handled = due.len();
    let mut rows = Vec::with_capacity(due.len());
    for row in &due {
        let created: DateTime<Utc> = row.try_get("created_at")?;
        rows.push((
            created,
            (
                row.try_get("id")?,
                row.try_get("receiver")?,
                row.try_get("cluster")?,
                row.try_get("subject")?,
                row.try_get("body")?,
                row.try_get("attempts")?,
            ),
        ));
    }
    rows.sort_by_key(|(created, _)| *created);
    for m in group(rows.into_iter().map(|(_, r)| r).collect()) {
        let subject = m.text().0;
        let receiver = shown_receiver(&m.receiver);
        // One snapshot for the send and the redaction of its error: a reload in between must
        // not hide the new secrets while showing the ones that were sent.
        let settings = state.settings();
        match send(&state.db, &settings.alerts, http, &m)
            .await
            .map_err(|e| redact(&settings.alerts, &e))
        {
            Ok(()) => {
                tracing::info!(notifications = m.ids.len(), receiver = %receiver, subject = %subject, "notification sent");
                state
                    .metrics
                    .notifications(&m.receiver, "sent", m.ids.len());
                sqlx::query("UPDATE notifications SET state = 'sent', sent_at = now(), last_error = NULL WHERE id = ANY($1)")
                    .bind(&m.ids)
                    .execute(&state.db)
                    .await?;
            }
            Err(e) => {
                let give_up = m.attempts >= MAX_ATTEMPTS;
                let backoff = Duration::from_secs((2u64 << m.attempts.clamp(0, 16)).min(300));
                tracing::warn!(notifications = m.ids.len(), receiver = %receiver, attempts = m.attempts, error = %e, give_up, "notification not delivered");
                let result = if give_up { "failed" } else { "retried" };
                state
                    .metrics
                    .notifications(&m.receiver, result, m.ids.len());
                sqlx::query(
                    "UPDATE notifications SET last_error = $2, state = CASE WHEN $3 THEN 'failed' ELSE 'pending' END,
                            next_attempt_at = now() + $4 * interval '1 second' WHERE id = ANY($1)",
                )
                .bind(&m.ids)
                .bind(&e)
                .bind(give_up)
                .bind(backoff.as_secs() as f64)
                .execute(&state.db)
                .await?;
            }
        }
    }
    Ok(handled)
}

/// Sends one message to the receiver named `kind:name[:to]`.
async fn send(
    db: &PgPool,
    settings: &AlertSettings,
    http: &reqwest::Client,
    m: &Outgoing,
) -> Result<(), String> {
    let (subject, body) = m.text();
    let (subject, body) = (subject.as_str(), body.as_str());
    let mut parts = m.receiver.splitn(3, ':');
    let (kind, name, to) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next(),
    );
    match kind {
        "email" => {
            let r = settings
                .email
                .iter()
                .find(|e| e.name == name)
                .ok_or(format!("no email receiver {name:?} configured any more"))?;
            send_email(r, subject, body).await
        }
        "sms" => {
            let r = settings
                .sms
                .iter()
                .find(|s| s.name == name)
                .ok_or(format!("no sms receiver {name:?} configured any more"))?;
            send_sms(http, r, to.unwrap_or(""), &m.sms_text()).await
        }
        "webhook" => {
            let r = settings
                .webhook
                .iter()
                .find(|w| w.name == name)
                .ok_or(format!("no webhook receiver {name:?} configured any more"))?;
            http_receivers::send_webhook(db, http, settings, r, &m.ids, (subject, body)).await
        }
        _ => send_http(db, settings, http, m, (kind, name), subject).await,
    }
}

/// Sends one message to a Slack, PagerDuty or Alertmanager receiver.
async fn send_http(
    db: &PgPool,
    settings: &AlertSettings,
    http: &reqwest::Client,
    m: &Outgoing,
    (kind, name): (&str, &str),
    subject: &str,
) -> Result<(), String> {
    let gone = || format!("no {kind} receiver {name:?} configured any more");
    match kind {
        "slack" => {
            let r = settings
                .slack
                .iter()
                .find(|r| r.name == name)
                .ok_or_else(gone)?;
            http_receivers::send_slack(db, http, settings, r, &m.ids, subject).await
        }
        "pagerduty" => {
            let r = settings
                .pagerduty
                .iter()
                .find(|r| r.name == name)
                .ok_or_else(gone)?;
            http_receivers::send_pagerduty(db, http, settings, r, &m.ids).await
        }
        "alertmanager" => {
            let r = settings
                .alertmanager
                .iter()
                .find(|r| r.name == name)
                .ok_or_else(gone)?;
            http_receivers::send_alertmanager(db, http, settings, r, &m.ids).await
        }
        other => Err(format!("unknown receiver kind {other:?}")),
    }
}

async fn send_email(r: &EmailReceiver, subject: &str, body: &str) -> Result<(), String> {
    let from: Mailbox = r
        .from
        .parse()
        .map_err(|e| format!("from {:?}: {e}", r.from))?;
    let mut message = Message::builder().from(from).subject(subject);
    for to in &r.to {
        message = message.to(to.parse().map_err(|e| format!("to {to:?}: {e}"))?);
    }
    let message = message.body(body.to_string()).map_err(|e| e.to_string())?;
    let builder = match r.security.as_str() {
        "tls" => {
            AsyncSmtpTransport::<Tokio1Executor>::relay(&r.smtp_host).map_err(|e| e.to_string())?
        }
        "starttls" => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&r.smtp_host)
            .map_err(|e| e.to_string())?,
        _ => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&r.smtp_host),
    };
    let mut builder = builder
        .port(r.smtp_port)
        .timeout(Some(Duration::from_secs(10)));
    if let (Some(user), Some(password)) = (&r.username, &r.password) {
        builder = builder.credentials(Credentials::new(
            user.clone(),
            password.expose_secret().to_string(),
        ));
    }
    builder
        .build()
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| format!("SMTP {}:{}: {e}", r.smtp_host, r.smtp_port))
}

/// The message as a JSON string's contents (quotes, backslashes and control characters escaped).
fn json_escape(text: &str) -> String {
    let quoted = serde_json::to_string(text).unwrap_or_default();
    quoted.trim_matches('"').to_string()
}

async fn send_sms(
    http: &reqwest::Client,
    r: &SmsReceiver,
    to: &str,
    message: &str,
) -> Result<(), String> {
    if r.kind == "twilio" {
        return send_twilio(http, r, to, message).await;
    }
    let message = if r.json_body {
        json_escape(message)
    } else {
        message.to_string()
    };
    let body = r
        .body_template
        .replace("{to}", to)
        .replace("{message}", &message);
    let method = reqwest::Method::from_bytes(r.method.as_bytes())
        .map_err(|e| format!("method {:?}: {e}", r.method))?;
    let mut request = http.request(method, r.url.expose()).body(body);
    if r.json_body {
        request = request.header(reqwest::header::CONTENT_TYPE, "application/json");
    }
    for (k, v) in &r.headers {
        request = request.header(k, v);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("SMS gateway {}: {}", r.name, transport_error(e)))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!(
            "SMS gateway {} answered {}",
            r.name,
            response.status()
        ))
    }
}

/// Twilio's Messages API: `POST {base}/2010-04-01/Accounts/{sid}/Messages.json`, form fields
/// `To`, `From`, `Body`, basic authentication with the account SID and auth token; it answers
/// 201 Created.
async fn send_twilio(
    http: &reqwest::Client,
    r: &SmsReceiver,
    to: &str,
    message: &str,
) -> Result<(), String> {
    // `validate` makes sure a twilio receiver has all three.
    let (Some(sid), Some(token), Some(from)) = (&r.account_sid, &r.auth_token, &r.from) else {
        return Err("twilio receiver without account_sid, auth_token or from".into());
    };
    let url = format!(
        "{}/2010-04-01/Accounts/{sid}/Messages.json",
        r.url.expose().trim_end_matches('/')
    );
    let response = http
        .post(&url)
        .basic_auth(sid, Some(token.expose_secret()))
        .form(&[("To", to), ("From", from.as_str()), ("Body", message)])
        .send()
        .await
        .map_err(|e| format!("Twilio API ({}): {}", r.name, transport_error(e)))?;
    if response.status().is_success() {
        Ok(())
    } else {
        // Twilio's message may quote the numbers: only its error code is kept.
        let status = response.status();
        let code = response
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v["code"].as_u64());
        Err(match code {
            Some(code) => format!("Twilio API ({}) answered {status}, error {code}", r.name),
            None => format!("Twilio API ({}) answered {status}", r.name),
        })
    }
}

/// Every secret the receivers' configuration holds: URLs (with their paths and queries), header
/// values, tokens, passwords, and the phone numbers and addresses messages go to.
fn secrets(settings: &AlertSettings) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let values = |h: &std::collections::BTreeMap<String, secrecy::SecretString>| {
        h.values()
            .map(|v| v.expose_secret().to_string())
            .collect::<Vec<_>>()
    };
    for r in &settings.webhook {
        out.push(r.url.expose().to_string());
        out.extend(values(&r.headers));
        out.extend(r.hmac_secret.iter().map(|t| t.expose_secret().to_string()));
    }
    for r in &settings.slack {
        out.push(r.url.expose_secret().to_string());
    }
    for r in &settings.pagerduty {
        out.push(r.routing_key.expose_secret().to_string());
        if r.url.expose() != crate::alerting::receivers::PAGERDUTY_EVENTS_URL {
            out.push(r.url.expose().to_string());
        }
    }
    for r in &settings.alertmanager {
        out.push(r.url.expose().to_string());
        out.extend(values(&r.headers));
    }
    for r in &settings.sms {
        out.push(r.url.expose().to_string());
        out.extend(r.headers.values().cloned());
        out.extend(r.auth_token.iter().map(|t| t.expose_secret().to_string()));
        out.extend(r.to.iter().cloned());
        out.extend(r.from.iter().cloned());
    }
    for r in &settings.email {
        out.extend(r.password.iter().map(|p| p.expose_secret().to_string()));
    }
    // Longest first, so a URL is replaced whole before any part of it; very short values
    // (a one-character header) would blank out ordinary words.
    out.retain(|s| s.len() >= 4);
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

/// `text` with every configured secret replaced by `***`: what is stored as `last_error` and
/// logged.
pub fn redact(settings: &AlertSettings, text: &str) -> String {
    secrets(settings)
        .iter()
        .fold(text.to_string(), |t, secret| {
            t.replace(secret.as_str(), "***")
        })
}

/// A receiver as answers and logs show it: `sms:NAME:NUMBER` with the number hidden but its
/// last two digits (`sms:pager:…42`); other receivers as they are.
pub fn shown_receiver(receiver: &str) -> String {
    match receiver.splitn(3, ':').collect::<Vec<_>>()[..] {
        ["sms", name, number] => {
            let tail: String = number
                .chars()
                .rev()
                .take(2)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            format!("sms:{name}:…{tail}")
        }
        _ => receiver.to_string(),
    }
}

/// A notification as the delivery log shows it.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Notification {
    /// Id.
    pub id: Uuid,
    /// The alert.
    pub alert_id: Uuid,
    /// `email:NAME`, `sms:NAME:…NN` (the number's last two digits only), `webhook:NAME`.
    pub receiver: String,
    /// `firing`, `repeat`, `resolved`.
    pub kind: String,
    /// Subject line.
    pub subject: String,
    /// `pending`, `sent`, `failed`.
    pub state: String,
    /// Attempts so far.
    pub attempts: i32,
    /// The last error.
    pub last_error: Option<String>,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// When it was delivered.
    pub sent_at: Option<DateTime<Utc>>,
}

/// The latest 200 notifications of `clusters` (None: every cluster), phone numbers hidden and
/// errors redacted (rows stored before errors were redacted included).
pub async fn list(
    pool: &PgPool,
    settings: &AlertSettings,
    clusters: Option<&[String]>,
) -> Result<Vec<Notification>, sqlx::Error> {
    let mut rows = sqlx::query_as::<_, Notification>(
        "SELECT id, alert_id, receiver, kind, subject, state, attempts, last_error, created_at, sent_at
           FROM notifications WHERE $1::text[] IS NULL OR cluster = ANY($1)
          ORDER BY created_at DESC LIMIT 200",
    )
    .bind(clusters)
    .fetch_all(pool)
    .await?;
    for n in &mut rows {
        n.receiver = shown_receiver(&n.receiver);
        n.last_error = n.last_error.as_deref().map(|e| redact(settings, e));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receivers_are_routed_by_severity_and_cluster_and_bodies_say_what_where_when() {
        let mut settings = AlertSettings::default();
        let receiver =
            |name: &str, severities: &[&str], clusters: &[&str]| crate::config::WebhookReceiver {
                name: name.into(),
                url: "http://127.0.0.1:9/".into(),
                severities: severities.iter().map(|s| s.to_string()).collect(),
                clusters: clusters.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            };
        settings.webhook = vec![
            receiver("all", &[], &[]),
            receiver("prod-critical", &["critical"], &["prod"]),
            receiver("test", &[], &["test"]),
        ];
        assert_eq!(
            receivers(&settings, "critical", "prod"),
            ["webhook:all", "webhook:prod-critical"]
        );
        assert_eq!(receivers(&settings, "warning", "prod"), ["webhook:all"]);
        assert_eq!(
            receivers(&settings, "info", "test"),
            ["webhook:all", "webhook:test"]
        );

        let c = Condition {
            fingerprint: "node_down:prod/db1".into(),
            rule: "node_down",
            severity: crate::alerting::rules::Severity::Critical,
            cluster: "prod".into(),
            node_id: Some("db1".into()),
            instance: None,
            link: None,
            summary: "node db1 in prod sends no heartbeats <b>".into(),
            hold: Duration::ZERO,
        };
        let at = "2026-11-21T03:04:05Z".parse().unwrap();
        let text = body(&settings, &c, "firing", at);
        assert_eq!(
            text,
            "node db1 in prod sends no heartbeats <b>\n\nWhat:      node_down (critical)\nCluster:   prod\nNode:      db1\nSince:     2026-11-21 03:04:05 UTC\nDashboard: http://127.0.0.1:8080/clusters/prod"
        );
    }

    #[test]
    fn notifications_are_grouped_per_receiver_and_cluster() {
        let row = |receiver: &str, cluster: &str, subject: &str, attempts| {
            (
                Uuid::new_v4(),
                receiver.to_string(),
                cluster.to_string(),
                subject.to_string(),
                format!("{subject} summary\n\nSince: now"),
                attempts,
            )
        };
        let messages = group(vec![
            row(
                "email:oncall",
                "prod",
                "[FIRING critical] node_down prod/a",
                1,
            ),
            row(
                "sms:pager:+1",
                "prod",
                "[FIRING critical] node_down prod/a",
                1,
            ),
            row(
                "email:oncall",
                "prod",
                "[FIRING critical] no_master prod/VI_1",
                3,
            ),
            row(
                "email:oncall",
                "test",
                "[FIRING critical] node_down test/x",
                1,
            ),
        ]);
        assert_eq!(messages.len(), 3);
        let prod = &messages[0];
        assert_eq!((prod.ids.len(), prod.attempts), (2, 3));
        let (subject, body) = prod.text();
        assert_eq!(
            subject,
            "[hapulse prod] 2 alerts: [FIRING critical] node_down prod/a; [FIRING critical] no_master prod/VI_1"
        );
        assert!(
            body.contains("node_down prod/a summary")
                && body.contains("no_master prod/VI_1 summary")
        );
        assert_eq!(prod.sms_text().lines().count(), 2, "{}", prod.sms_text());
        // One notification goes out as it is.
        let (subject, body) = messages[2].text();
        assert_eq!(subject, "[FIRING critical] node_down test/x");
        assert!(body.starts_with("[FIRING critical] node_down test/x summary"));
    }

    #[test]
    fn messages_are_escaped_for_json_bodies() {
        assert_eq!(json_escape("a \"b\"\nc"), "a \\\"b\\\"\\nc");
        assert!(wants(&[], "critical"));
        assert!(!wants(&["critical".to_string()], "warning"));
    }
}
