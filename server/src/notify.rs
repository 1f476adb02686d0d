//! Notifications: a durable outbox in PostgreSQL, delivered by email (SMTP, with lettre), SMS (an
//! HTTP gateway) and webhooks (a JSON POST).
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

use crate::alerts::Condition;
use crate::config::{AlertSettings, EmailReceiver, SmsReceiver, WebhookReceiver};
use crate::state::AppState;

/// Attempts before a notification is given up as `failed`.
const MAX_ATTEMPTS: i32 = 50;

fn wants(severities: &[String], severity: &str) -> bool {
    severities.is_empty() || severities.iter().any(|s| s == severity)
}

/// Stores the notifications of one alert event (`firing`, `repeat`, `resolved`) for every
/// receiver that takes its severity, in the caller's transaction.
pub async fn enqueue(
    tx: &mut Transaction<'_, Postgres>,
    settings: &AlertSettings,
    alert_id: Uuid,
    c: &Condition,
    kind: &str,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
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
    let link = format!(
        "{}/clusters/{}",
        settings.dashboard_url.trim_end_matches('/'),
        c.cluster
    );
    let body = format!(
        "{}\n\nSince: {}\nCluster: {}\nDashboard: {link}\n",
        c.summary,
        at.format("%Y-%m-%d %H:%M:%S UTC"),
        c.cluster
    );
    let severity = c.severity.as_str();
    let mut receivers: Vec<String> = Vec::new();
    receivers.extend(
        settings
            .email
            .iter()
            .filter(|e| wants(&e.severities, severity))
            .map(|e| format!("email:{}", e.name)),
    );
    for s in settings
        .sms
        .iter()
        .filter(|s| wants(&s.severities, severity))
    {
        receivers.extend(s.to.iter().map(|to| format!("sms:{}:{to}", s.name)));
    }
    receivers.extend(
        settings
            .webhook
            .iter()
            .filter(|w| wants(&w.severities, severity))
            .map(|w| format!("webhook:{}", w.name)),
    );
    for receiver in receivers {
        sqlx::query(
            "INSERT INTO notifications (id, alert_id, receiver, kind, subject, body, state) VALUES ($1, $2, $3, $4, $5, $6, 'pending')",
        )
        .bind(Uuid::new_v4())
        .bind(alert_id)
        .bind(&receiver)
        .bind(kind)
        .bind(&subject)
        .bind(&body)
        .execute(&mut **tx)
        .await?;
    }
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

/// Claims and sends the due notifications; returns how many it handled.
async fn deliver_due(state: &AppState, http: &reqwest::Client) -> Result<usize, sqlx::Error> {
    let due = sqlx::query(
        "UPDATE notifications SET next_attempt_at = now() + interval '1 minute', attempts = attempts + 1
          WHERE id IN (SELECT id FROM notifications WHERE state = 'pending' AND next_attempt_at <= now()
                        ORDER BY created_at LIMIT 20 FOR UPDATE SKIP LOCKED)
          RETURNING id, receiver, subject, body, attempts",
    )
    .fetch_all(&state.db)
    .await?;
    for row in &due {
        let id: Uuid = row.try_get("id")?;
        let receiver: String = row.try_get("receiver")?;
        let subject: String = row.try_get("subject")?;
        let body: String = row.try_get("body")?;
        let attempts: i32 = row.try_get("attempts")?;
        let outcome = send(&state.settings.alerts, http, &receiver, &subject, &body).await;
        match outcome {
            Ok(()) => {
                tracing::info!(notification = %id, receiver = %receiver, subject = %subject, "notification sent");
                sqlx::query("UPDATE notifications SET state = 'sent', sent_at = now(), last_error = NULL WHERE id = $1").bind(id).execute(&state.db).await?;
            }
            Err(e) => {
                let give_up = attempts >= MAX_ATTEMPTS;
                let backoff = Duration::from_secs((2u64 << attempts.clamp(0, 16)).min(300));
                tracing::warn!(notification = %id, receiver = %receiver, attempts, error = %e, give_up, "notification not delivered");
                sqlx::query(
                    "UPDATE notifications SET last_error = $2, state = CASE WHEN $3 THEN 'failed' ELSE 'pending' END,
                            next_attempt_at = now() + $4 * interval '1 second' WHERE id = $1",
                )
                .bind(id)
                .bind(&e)
                .bind(give_up)
                .bind(backoff.as_secs() as f64)
                .execute(&state.db)
                .await?;
            }
        }
    }
    Ok(due.len())
}

/// Sends one notification to the receiver named `kind:name[:to]`.
async fn send(
    settings: &AlertSettings,
    http: &reqwest::Client,
    receiver: &str,
    subject: &str,
    body: &str,
) -> Result<(), String> {
    let mut parts = receiver.splitn(3, ':');
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
            send_sms(
                http,
                r,
                to.unwrap_or(""),
                &format!("{subject}: {}", body.lines().next().unwrap_or("")),
            )
            .await
        }
        "webhook" => {
            let r = settings
                .webhook
                .iter()
                .find(|w| w.name == name)
                .ok_or(format!("no webhook receiver {name:?} configured any more"))?;
            send_webhook(http, r, subject, body).await
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
    let mut request = http.request(method, &r.url).body(body);
    if r.json_body {
        request = request.header(reqwest::header::CONTENT_TYPE, "application/json");
    }
    for (k, v) in &r.headers {
        request = request.header(k, v);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("SMS gateway: {e}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("SMS gateway answered {}", response.status()))
    }
}

#[derive(Serialize)]
struct WebhookBody<'a> {
    subject: &'a str,
    text: &'a str,
}

async fn send_webhook(
    http: &reqwest::Client,
    r: &WebhookReceiver,
    subject: &str,
    body: &str,
) -> Result<(), String> {
    let response = http
        .post(&r.url)
        .json(&WebhookBody {
            subject,
            text: body,
        })
        .send()
        .await
        .map_err(|e| format!("webhook: {e}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("webhook answered {}", response.status()))
    }
}

/// A notification as the delivery log shows it.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Notification {
    /// Id.
    pub id: Uuid,
    /// The alert.
    pub alert_id: Uuid,
    /// `email:NAME`, `sms:NAME:NUMBER`, `webhook:NAME`.
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

/// The latest 200 notifications.
pub async fn list(pool: &PgPool) -> Result<Vec<Notification>, sqlx::Error> {
    sqlx::query_as::<_, Notification>(
        "SELECT id, alert_id, receiver, kind, subject, state, attempts, last_error, created_at, sent_at
           FROM notifications ORDER BY created_at DESC LIMIT 200",
    )
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_escaped_for_json_bodies() {
        assert_eq!(json_escape("a \"b\"\nc"), "a \\\"b\\\"\\nc");
        assert!(wants(&[], "critical"));
        assert!(!wants(&["critical".to_string()], "warning"));
    }
}
