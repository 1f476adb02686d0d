//! Silences and maintenance windows: time-bounded mutes of the alerts they match, with author
//! and reason. A maintenance window is a silence of a whole cluster or node, shown on its
//! pages. A planned switchover silences the alerts it will cause, for its own duration only.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::alerting::error::AlertingError;
use crate::alerting::rules::{Condition, RULES};
use crate::refusal::Refusal;

/// A silence as stored and listed.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Silence {
    /// Id.
    pub id: Uuid,
    /// Only alerts of this cluster (any when absent).
    pub cluster: Option<String>,
    /// Only alerts about this node.
    pub node_id: Option<String>,
    /// Only these rules (any when empty).
    pub rules: Vec<String>,
    /// Only this severity.
    pub severity: Option<String>,
    /// A maintenance window (shown as such on the dashboard).
    pub maintenance: bool,
    /// From.
    pub starts_at: DateTime<Utc>,
    /// Until.
    pub ends_at: DateTime<Utc>,
    /// Who.
    pub author: String,
    /// Why.
    pub reason: String,
    /// The switchover that made it, if one did.
    pub switchover_id: Option<Uuid>,
}

impl Silence {
    /// True when it is in force at `now` and matches `c`.
    pub fn matches(&self, c: &Condition, now: DateTime<Utc>) -> bool {
        self.starts_at <= now
            && now < self.ends_at
            && self.cluster.as_ref().is_none_or(|x| *x == c.cluster)
            && self
                .node_id
                .as_ref()
                .is_none_or(|x| c.node_id.as_ref() == Some(x))
            && (self.rules.is_empty() || self.rules.iter().any(|r| r == c.rule))
            && self
                .severity
                .as_ref()
                .is_none_or(|x| x == c.severity.as_str())
    }
}

/// Body of `POST /api/v1/silences`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    /// Cluster matcher.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Node matcher.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Rule matchers.
    #[serde(default)]
    pub rules: Vec<String>,
    /// Severity matcher (`critical`, `warning`, `info`).
    #[serde(default)]
    pub severity: Option<String>,
    /// A maintenance window.
    #[serde(default)]
    pub maintenance: bool,
    /// From (default now).
    #[serde(default)]
    pub starts_at: Option<DateTime<Utc>>,
    /// Until.
    pub ends_at: DateTime<Utc>,
    /// Who: the principal that asks (not part of a request body).
    #[serde(skip_deserializing)]
    pub author: String,
    /// Why.
    pub reason: String,
}

fn text_ok(s: &str, max: usize) -> bool {
    !s.trim().is_empty() && s.len() <= max && !s.chars().any(char::is_control)
}

/// The maintenance windows among `windows` in force at `now` that concern `cluster` and any of
/// `nodes` (its node ids, or one node for a node page): a window for the cluster, for one of those
/// nodes, or for such a node in any cluster.
pub fn maintenance_for<'a>(
    windows: &'a [Silence],
    now: DateTime<Utc>,
    cluster: &str,
    nodes: &[&str],
) -> Vec<&'a Silence> {
    windows
        .iter()
        .filter(|s| s.maintenance && s.starts_at <= now && now < s.ends_at)
        .filter(|s| s.cluster.as_deref().is_none_or(|c| c == cluster))
        .filter(|s| s.node_id.as_deref().is_none_or(|n| nodes.contains(&n)))
        .collect()
}

/// Stores a silence. A silence that would match every alert is refused (400, field
/// `matchers`), as is one that ends before it starts or lasts more than 90 days.
pub async fn create(
    pool: &sqlx::PgPool,
    s: &NewSilence,
    switchover: Option<Uuid>,
) -> Result<Silence, AlertingError> {
    if s.cluster.is_none() && s.node_id.is_none() && s.rules.is_empty() && s.severity.is_none() {
        return Err(AlertingError::from(Refusal::invalid(
            "invalid_body",
            "matchers",
            "a silence must match something: cluster, node_id, rules or severity",
        )));
    }
    if let Some(bad) = s.rules.iter().find(|r| !RULES.contains(&r.as_str())) {
        return Err(AlertingError::from(Refusal::invalid(
            "invalid_body",
            "rules",
            format!("unknown rule {bad:?}; known: {}", RULES.join(", ")),
        )));
    }
    if s.severity
        .as_deref()
        .is_some_and(|v| !["critical", "warning", "info"].contains(&v))
    {
        return Err(AlertingError::from(Refusal::invalid(
            "invalid_body",
            "severity",
            "critical, warning or info",
        )));
    }
    for (field, value) in [("cluster", &s.cluster), ("node_id", &s.node_id)] {
        if value
            .as_deref()
            .is_some_and(|v| !hapulse_protocol::valid_name(v))
        {
            return Err(AlertingError::from(Refusal::invalid(
                "invalid_body",
                field,
                "1-64 characters of A-Z a-z 0-9 . _ -",
            )));
        }
    }
    if !text_ok(&s.author, 200) || !text_ok(&s.reason, 1000) {
        return Err(AlertingError::from(Refusal::invalid(
            "invalid_body",
            "reason",
            "author and reason are required, one line each",
        )));
    }
    let starts = s.starts_at.unwrap_or_else(Utc::now);
    if s.ends_at <= starts || s.ends_at - starts > chrono::Duration::days(90) {
        return Err(AlertingError::from(Refusal::invalid(
            "invalid_body",
            "ends_at",
            "must be after starts_at and within 90 days of it",
        )));
    }
    let id = Uuid::new_v4();
    let silence = sqlx::query_as::<_, Silence>(
        "INSERT INTO silences (id, cluster, node_id, rules, severity, maintenance, starts_at, ends_at, author, reason, switchover_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         RETURNING id, cluster, node_id, rules, severity, maintenance, starts_at, ends_at, author, reason, switchover_id",
    )
    .bind(id)
    .bind(&s.cluster)
    .bind(&s.node_id)
    .bind(&s.rules)
    .bind(&s.severity)
    .bind(s.maintenance)
    .bind(starts)
    .bind(s.ends_at)
    .bind(&s.author)
    .bind(&s.reason)
    .bind(switchover)
    .fetch_one(pool)
    .await?;
    Ok(silence)
}

/// Silences not yet ended (including future ones), soonest end first.
pub async fn current(pool: &sqlx::PgPool) -> Result<Vec<Silence>, sqlx::Error> {
    sqlx::query_as::<_, Silence>(
        "SELECT id, cluster, node_id, rules, severity, maintenance, starts_at, ends_at, author, reason, switchover_id
           FROM silences WHERE ends_at > now() ORDER BY ends_at",
    )
    .fetch_all(pool)
    .await
}

/// Ends a silence now (404 when unknown or already over).
pub async fn expire(pool: &sqlx::PgPool, id: Uuid) -> Result<(), AlertingError> {
    let done = sqlx::query("UPDATE silences SET ends_at = greatest(starts_at + interval '1 microsecond', now()) WHERE id = $1 AND ends_at > now()")
        .bind(id)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(AlertingError::from(Refusal::not_found(format!(
            "current silence {id}"
        ))));
    }
    Ok(())
}
