//! Clusters paused by hand, as operators know it from Patroni: open-ended, until resumed. A
//! paused cluster is judged and its verdicts recorded, but nothing is done automatically (the
//! arbiter treats it as it treats a maintenance window over the cluster). Stored in
//! `cluster_pauses`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, Row, Transaction};

/// A pause.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Pause {
    /// Who paused the cluster.
    pub paused_by: String,
    /// Why, in their words.
    pub reason: String,
    /// Since when.
    pub paused_at: DateTime<Utc>,
}

impl Pause {
    /// One line for verdicts: "paused by ops at 2026-12-06 21:00 UTC: storage firmware".
    pub fn describe(&self) -> String {
        format!(
            "paused by {} at {}: {}",
            self.paused_by,
            self.paused_at.format("%Y-%m-%d %H:%M UTC"),
            self.reason
        )
    }
}

fn pause_of(row: &sqlx::postgres::PgRow) -> Result<Pause, sqlx::Error> {
    Ok(Pause {
        paused_by: row.try_get("paused_by")?,
        reason: row.try_get("reason")?,
        paused_at: row.try_get("paused_at")?,
    })
}

/// Every paused cluster's pause, by cluster.
pub async fn all(pool: &PgPool) -> Result<BTreeMap<String, Pause>, sqlx::Error> {
    sqlx::query("SELECT cluster, paused_by, reason, paused_at FROM cluster_pauses")
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("cluster")?, pause_of(r)?)))
        .collect()
}

/// `cluster`'s pause, if it is paused.
pub async fn of(pool: &PgPool, cluster: &str) -> Result<Option<Pause>, sqlx::Error> {
    sqlx::query("SELECT paused_by, reason, paused_at FROM cluster_pauses WHERE cluster = $1")
        .bind(cluster)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(pause_of)
        .transpose()
}

/// Pauses `cluster` (a pause already there is replaced: who and why are the latest).
pub async fn set(
    tx: &mut Transaction<'_, Postgres>,
    cluster: &str,
    by: &str,
    reason: &str,
) -> Result<Pause, sqlx::Error> {
    let row = sqlx::query(
        "INSERT INTO cluster_pauses (cluster, paused_by, reason) VALUES ($1, $2, $3)
         ON CONFLICT (cluster) DO UPDATE
            SET paused_by = EXCLUDED.paused_by, reason = EXCLUDED.reason, paused_at = now()
         RETURNING paused_by, reason, paused_at",
    )
    .bind(cluster)
    .bind(by)
    .bind(reason)
    .fetch_one(&mut **tx)
    .await?;
    pause_of(&row)
}

/// Lifts `cluster`'s pause; false when it was not paused.
pub async fn clear(tx: &mut Transaction<'_, Postgres>, cluster: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM cluster_pauses WHERE cluster = $1")
        .bind(cluster)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() > 0)
}
