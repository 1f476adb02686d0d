//! The audit log: an append-only row for every mutating action — who, with which role, from
//! where, when, what, on what, why and how it ended. There is no API to change or delete a row,
//! and a trigger refuses `UPDATE` and `DELETE` on the table itself.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::access::auth::Principal;

/// One row to append.
pub struct Audit<'a> {
    /// Who: a user name, `token:NAME`, `system`, or the requester of a switchover that finished.
    pub actor: &'a str,
    /// With which role (`viewer`, `operator`, `admin`), when known.
    pub role: Option<&'a str>,
    /// From which address.
    pub source: Option<&'a str>,
    /// What (`login`, `switchover`, `silence`, `token_create`, …).
    pub action: &'a str,
    /// On what.
    pub target: &'a str,
    /// Why, as given.
    pub reason: Option<&'a str>,
    /// How it ended (`accepted`, `succeeded`, `refused: …`).
    pub outcome: &'a str,
    /// Anything else worth keeping (JSON object).
    pub detail: serde_json::Value,
}

impl<'a> Audit<'a> {
    /// A row for what `who` did.
    pub fn by(who: &'a Principal, action: &'a str, target: &'a str, outcome: &'a str) -> Self {
        Audit {
            actor: &who.name,
            role: Some(who.role.as_str()),
            source: Some(&who.source),
            action,
            target,
            reason: None,
            outcome,
            detail: serde_json::json!({}),
        }
    }

    /// With a reason.
    pub fn reason(mut self, reason: &'a str) -> Self {
        self.reason = Some(reason);
        self
    }

    /// With details.
    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    /// Appends the row (on a pool or inside the caller's transaction).
    pub async fn record<'e, E: sqlx::PgExecutor<'e>>(self, executor: E) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO audit_log (actor, role, source, action, target, reason, outcome, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(self.actor)
            .bind(self.role)
            .bind(self.source)
            .bind(self.action)
            .bind(self.target)
            .bind(self.reason)
            .bind(self.outcome)
            .bind(sqlx::types::Json(self.detail))
            .execute(executor)
            .await?;
        Ok(())
    }
}

/// A stored row.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Entry {
    /// Sequence number.
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub actor: String,
    /// With which role.
    pub role: Option<String>,
    /// From where.
    pub source: Option<String>,
    /// What.
    pub action: String,
    /// On what.
    pub target: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// How it ended.
    pub outcome: String,
    /// More.
    #[schema(value_type = Object)]
    pub detail: sqlx::types::Json<serde_json::Value>,
}

/// The newest `limit` rows, newest first, optionally only before id `before` (paging).
pub async fn list(
    pool: &sqlx::PgPool,
    limit: i64,
    before: Option<i64>,
) -> Result<Vec<Entry>, sqlx::Error> {
    sqlx::query_as::<_, Entry>(
        "SELECT id, at, actor, role, source, action, target, reason, outcome, detail FROM audit_log
          WHERE ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .bind(before)
    .fetch_all(pool)
    .await
}
