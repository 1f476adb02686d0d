//! Agent enrollment and node credentials.
//!
//! An admin creates a one-time enrollment token for a node id (`POST /api/v1/enrollments` or
//! `hapulse-server enroll NODE`); the agent trades it at `POST /api/agent/v1/enroll` for a node
//! credential, which it keeps on the host (mode 0600) and presents as `Authorization: Bearer`.
//! The credential is bound to its node id: it cannot report for, poll the commands of, or answer
//! for another node. The server keeps SHA-256 hashes only, and the live credentials in memory
//! (one lookup per heartbeat, no database round trip). An admin can revoke a node's credential;
//! enrolling the node again (a new token) replaces it.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::access::auth::{digest, new_secret};
use crate::refusal::Refusal;

/// Why an enrollment, a node's first contact or a revocation was refused or failed; nothing
/// was changed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollmentError {
    /// Refused: a malformed request (400, naming the field: `node_id`, `lifetime`), an
    /// enrollment token that is unknown, used or expired (401; which one is not said), a node
    /// with nothing to revoke (404).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// PostgreSQL failed (HTTP 503 when it is unavailable, else 500).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Anything else (HTTP 500, details only in the log).
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// Longest life of an enrollment token.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// Live node credentials: SHA-256 of the secret → node id.
#[derive(Debug, Default)]
pub struct Credentials {
    by_hash: RwLock<HashMap<Vec<u8>, String>>,
}

impl Credentials {
    /// Loads every credential not revoked.
    pub async fn load(pool: &PgPool) -> Result<Credentials, sqlx::Error> {
        let rows: Vec<(Vec<u8>, String)> = sqlx::query_as(
            "SELECT secret_hash, node_id FROM node_credentials WHERE revoked_at IS NULL",
        )
        .fetch_all(pool)
        .await?;
        Ok(Credentials {
            by_hash: RwLock::new(rows.into_iter().collect()),
        })
    }

    /// The node a presented secret belongs to.
    pub fn node_of(&self, secret: &str) -> Option<String> {
        self.by_hash
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&digest(secret))
            .cloned()
    }

    fn replace(&self, node_id: &str, hash: Option<Vec<u8>>) {
        let mut map = self.by_hash.write().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, n| n != node_id);
        if let Some(hash) = hash {
            map.insert(hash, node_id.to_string());
        }
    }
}

/// A new enrollment token: shown once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NewEnrollment {
    /// The node it enrolls.
    pub node_id: String,
    /// The token (`hpe_…`), for the agent's `enrollment_token`.
    pub token: String,
    /// When it stops working if unused.
    pub expires_at: DateTime<Utc>,
}

/// Creates a one-time enrollment token for `node_id`, valid for `lifetime` (at most
/// [`MAX_TOKEN_LIFETIME`]). 400 for a bad node id or lifetime.
pub async fn create(
    pool: &PgPool,
    node_id: &str,
    lifetime: Duration,
    created_by: &str,
) -> Result<NewEnrollment, EnrollmentError> {
    if !hapulse_protocol::valid_name(node_id) {
        return Err(EnrollmentError::from(Refusal::invalid(
            "invalid_body",
            "node_id",
            "1-64 characters of A-Z a-z 0-9 . _ -",
        )));
    }
    if lifetime.is_zero() || lifetime > MAX_TOKEN_LIFETIME {
        return Err(EnrollmentError::from(Refusal::invalid(
            "invalid_body",
            "expires_in",
            "more than 0 and at most 7 days",
        )));
    }
    let (token, hash) = new_secret("hpe_");
    let expires_at = Utc::now()
        + chrono::Duration::from_std(lifetime).map_err(|e| EnrollmentError::Internal(e.into()))?;
    sqlx::query(
        "INSERT INTO enrollment_tokens (id, token_hash, node_id, created_by, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(Uuid::new_v4())
    .bind(hash)
    .bind(node_id)
    .bind(created_by)
    .bind(expires_at)
    .execute(pool)
    .await?;
    Ok(NewEnrollment {
        node_id: node_id.to_string(),
        token,
        expires_at,
    })
}

/// Trades an enrollment token for a node credential (returned once). 401 when the token is
/// unknown, used, expired or for another node id — which of these is not said.
pub async fn enroll(
    pool: &PgPool,
    credentials: &Credentials,
    node_id: &str,
    token: &str,
) -> Result<String, EnrollmentError> {
    let mut tx = pool.begin().await?;
    let used: Option<String> = sqlx::query_scalar(
        "UPDATE enrollment_tokens SET used_at = now()
          WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() AND node_id = $2
          RETURNING node_id",
    )
    .bind(digest(token))
    .bind(node_id)
    .fetch_optional(&mut *tx)
    .await?;
    if used.is_none() {
        return Err(EnrollmentError::from(Refusal::unauthorized()));
    }
    let (secret, hash) = new_secret("hpn_");
    sqlx::query(
        "INSERT INTO node_credentials (node_id, secret_hash) VALUES ($1, $2)
         ON CONFLICT (node_id) DO UPDATE SET secret_hash = EXCLUDED.secret_hash,
                                            enrolled_at = now(), revoked_at = NULL",
    )
    .bind(node_id)
    .bind(&hash)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    credentials.replace(node_id, Some(hash));
    Ok(secret)
}

/// Revokes a node's credential: its agent is refused (401) from now on. 404 when the node has
/// no live credential.
pub async fn revoke(
    pool: &PgPool,
    credentials: &Credentials,
    node_id: &str,
) -> Result<(), EnrollmentError> {
    let done = sqlx::query(
        "UPDATE node_credentials SET revoked_at = now() WHERE node_id = $1 AND revoked_at IS NULL",
    )
    .bind(node_id)
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(EnrollmentError::from(Refusal::not_found(format!(
            "credential of node {node_id:?}"
        ))));
    }
    credentials.replace(node_id, None);
    Ok(())
}
