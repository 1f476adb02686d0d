//! Agent enrollment and node credentials.
//!
//! An admin creates a one-time enrollment token for a node id in a cluster (`POST
//! /api/v1/enrollments` or `hapulse-server enroll NODE --cluster CLUSTER`); the agent trades it at
//! `POST /api/agent/v1/enroll` for a node credential, which it keeps on the host (mode 0600) and
//! presents as `Authorization: Bearer`. The credential is bound to its node id and its cluster:
//! it cannot report for, poll the commands of, or answer for another node, and a report into
//! another cluster is refused (403, audited, alert `agent_cluster_mismatch`) — an enrolled agent
//! cannot make itself a candidate, a vote or a second master of a cluster it does not belong to.
//! Moving a node to another cluster is an admin's act ([`move_node`]). A credential from a token
//! made before tokens named a cluster is bound by its first report. The server keeps SHA-256
//! hashes only, and the live credentials in memory (one lookup per heartbeat, no database round
//! trip). An admin can revoke a node's credential; enrolling the node again (a new token)
//! replaces it.

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

/// What a live credential is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Its node.
    pub node_id: String,
    /// Its cluster; None for a credential from an old token until its first report binds it.
    pub cluster: Option<String>,
}

/// A node that reported itself into a cluster other than its credential's.
#[derive(Debug, Clone)]
pub struct Mismatch {
    /// The node.
    pub node_id: String,
    /// The cluster its credential is bound to.
    pub bound: String,
    /// The cluster it claimed.
    pub claimed: String,
    /// Its latest such report.
    pub last_at: DateTime<Utc>,
    /// When the refusal was last written to the audit log (once an hour per node and claimed
    /// cluster, so a misconfigured agent's heartbeats do not flood it).
    audited_at: Option<DateTime<Utc>>,
}

/// How long a refused report keeps `agent_cluster_mismatch` firing.
pub const MISMATCH_ALERT_FOR: Duration = Duration::from_secs(60);

/// Live node credentials: SHA-256 of the secret → what it is bound to; and the nodes that
/// recently reported into a cluster not theirs.
#[derive(Debug, Default)]
pub struct Credentials {
    by_hash: RwLock<HashMap<Vec<u8>, Binding>>,
    mismatches: std::sync::Mutex<HashMap<String, Mismatch>>,
}

impl Credentials {
    /// Loads every credential not revoked.
    pub async fn load(pool: &PgPool) -> Result<Credentials, sqlx::Error> {
        let rows: Vec<(Vec<u8>, String, Option<String>)> = sqlx::query_as(
            "SELECT secret_hash, node_id, cluster FROM node_credentials WHERE revoked_at IS NULL",
        )
        .fetch_all(pool)
        .await?;
        Ok(Credentials {
            by_hash: RwLock::new(
                rows.into_iter()
                    .map(|(hash, node_id, cluster)| (hash, Binding { node_id, cluster }))
                    .collect(),
            ),
            mismatches: Default::default(),
        })
    }

    /// Replaces every credential with those stored now (a replica taking the lead: another
    /// replica may have enrolled or revoked nodes meanwhile).
    pub async fn reload(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let fresh = Credentials::load(pool).await?;
        let by_hash = fresh
            .by_hash
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        *self.by_hash.write().unwrap_or_else(PoisonError::into_inner) = by_hash;
        Ok(())
    }

    /// What a presented secret is bound to.
    pub fn binding_of(&self, secret: &str) -> Option<Binding> {
        self.by_hash
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&digest(secret))
            .cloned()
    }

    fn replace(&self, node_id: &str, entry: Option<(Vec<u8>, Option<String>)>) {
        let mut map = self.by_hash.write().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, b| b.node_id != node_id);
        if let Some((hash, cluster)) = entry {
            map.insert(
                hash,
                Binding {
                    node_id: node_id.to_string(),
                    cluster,
                },
            );
        }
    }

    fn rebind(&self, node_id: &str, cluster: &str) {
        let mut map = self.by_hash.write().unwrap_or_else(PoisonError::into_inner);
        for b in map.values_mut().filter(|b| b.node_id == node_id) {
            b.cluster = Some(cluster.to_string());
        }
        drop(map);
        self.mismatches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(node_id);
    }

    /// Notes a report of `node_id` into `claimed` while bound to `bound`, at `now`; true when
    /// it should be written to the audit log (the first in an hour for that claimed cluster).
    fn note_mismatch(&self, node_id: &str, bound: &str, claimed: &str, now: DateTime<Utc>) -> bool {
        let mut map = self
            .mismatches
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let m = map.entry(node_id.to_string()).or_insert_with(|| Mismatch {
            node_id: node_id.to_string(),
            bound: bound.to_string(),
            claimed: claimed.to_string(),
            last_at: now,
            audited_at: None,
        });
        let same_claim = m.claimed == claimed;
        m.bound = bound.to_string();
        m.claimed = claimed.to_string();
        m.last_at = now;
        let audit = !same_claim
            || m.audited_at
                .is_none_or(|at| now - at >= chrono::Duration::hours(1));
        if audit {
            m.audited_at = Some(now);
        }
        audit
    }

    /// The nodes that reported into a cluster not theirs within [`MISMATCH_ALERT_FOR`] of
    /// `now`.
    pub fn recent_mismatches(&self, now: DateTime<Utc>) -> Vec<Mismatch> {
        let window = chrono::Duration::from_std(MISMATCH_ALERT_FOR).unwrap_or_default();
        let mut map = self
            .mismatches
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, m| now - m.last_at < chrono::Duration::hours(2));
        map.values()
            .filter(|m| now - m.last_at < window)
            .cloned()
            .collect()
    }
}

/// Whether the credential `binding` may report into `claimed`: Ok when it is bound to it, or
/// bound to no cluster yet (then bound now, audited); 403 (audited once an hour, and kept for
/// the alert `agent_cluster_mismatch`) when it is bound to another.
pub async fn check_cluster(
    pool: &PgPool,
    credentials: &Credentials,
    binding: &Binding,
    claimed: &str,
) -> Result<(), EnrollmentError> {
    let node = &binding.node_id;
    match &binding.cluster {
        Some(bound) if bound == claimed => Ok(()),
        Some(bound) => {
            tracing::warn!(node_id = %node, bound = %bound, claimed = %claimed, "report refused: the node's credential is bound to another cluster");
            if credentials.note_mismatch(node, bound, claimed, Utc::now()) {
                audit(
                    pool,
                    node,
                    "agent_cluster_mismatch",
                    "refused",
                    bound,
                    claimed,
                )
                .await?;
            }
            Err(EnrollmentError::from(Refusal::forbidden(format!(
                "node {node:?} is enrolled in cluster {bound:?}, not {claimed:?}: an admin moves a node to another cluster (POST /api/v1/nodes/{node}/move)"
            ))))
        }
        None => {
            // Two first reports at once bind the credential once: whichever the database took.
            let bound: Option<String> = sqlx::query_scalar(
                "UPDATE node_credentials SET cluster = coalesce(cluster, $2)
                  WHERE node_id = $1 AND revoked_at IS NULL
                  RETURNING cluster",
            )
            .bind(node)
            .bind(claimed)
            .fetch_optional(pool)
            .await?
            .flatten();
            let Some(bound) = bound else {
                return Err(EnrollmentError::from(Refusal::unauthorized()));
            };
            credentials.rebind(node, &bound);
            if bound != claimed {
                let binding = Binding {
                    node_id: node.clone(),
                    cluster: Some(bound),
                };
                return Box::pin(check_cluster(pool, credentials, &binding, claimed)).await;
            }
            audit(pool, node, "node_cluster_bound", "bound", claimed, claimed).await?;
            tracing::info!(node_id = %node, cluster = %claimed, "node credential bound to the cluster of its first report");
            Ok(())
        }
    }
}

async fn audit(
    pool: &PgPool,
    node: &str,
    action: &str,
    outcome: &str,
    bound: &str,
    claimed: &str,
) -> Result<(), sqlx::Error> {
    crate::access::audit::Audit {
        actor: &format!("agent:{node}"),
        role: None,
        source: None,
        action,
        target: node,
        reason: None,
        outcome,
        detail: serde_json::json!({ "bound_cluster": bound, "claimed_cluster": claimed }),
    }
    .record(pool)
    .await
}

/// A new enrollment token: shown once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NewEnrollment {
    /// The node it enrolls.
    pub node_id: String,
    /// The cluster the node's credential is bound to.
    pub cluster: String,
    /// The token (`hpe_…`), for the agent's `enrollment_token`.
    pub token: String,
    /// When it stops working if unused.
    pub expires_at: DateTime<Utc>,
}

/// Creates a one-time enrollment token for `node_id` in `cluster`, valid for `lifetime` (at
/// most [`MAX_TOKEN_LIFETIME`]). 400 for a bad node id, cluster or lifetime.
pub async fn create(
    pool: &PgPool,
    node_id: &str,
    cluster: &str,
    lifetime: Duration,
    created_by: &str,
) -> Result<NewEnrollment, EnrollmentError> {
    for (field, value) in [("node_id", node_id), ("cluster", cluster)] {
        if !hapulse_protocol::valid_name(value) {
            return Err(EnrollmentError::from(Refusal::invalid(
                "invalid_body",
                field,
                "1-64 characters of A-Z a-z 0-9 . _ -",
            )));
        }
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
        "INSERT INTO enrollment_tokens (id, token_hash, node_id, cluster, created_by, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(Uuid::new_v4())
    .bind(hash)
    .bind(node_id)
    .bind(cluster)
    .bind(created_by)
    .bind(expires_at)
    .execute(pool)
    .await?;
    Ok(NewEnrollment {
        node_id: node_id.to_string(),
        cluster: cluster.to_string(),
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
    let used: Option<(String, Option<String>)> = sqlx::query_as(
        "UPDATE enrollment_tokens SET used_at = now()
          WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() AND node_id = $2
          RETURNING node_id, cluster",
    )
    .bind(digest(token))
    .bind(node_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((_, cluster)) = used else {
        return Err(EnrollmentError::from(Refusal::unauthorized()));
    };
    let (secret, hash) = new_secret("hpn_");
    sqlx::query(
        "INSERT INTO node_credentials (node_id, secret_hash, cluster) VALUES ($1, $2, $3)
         ON CONFLICT (node_id) DO UPDATE SET secret_hash = EXCLUDED.secret_hash,
                                            cluster = EXCLUDED.cluster,
                                            enrolled_at = now(), revoked_at = NULL",
    )
    .bind(node_id)
    .bind(&hash)
    .bind(&cluster)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    credentials.replace(node_id, Some((hash, cluster)));
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

/// Moves `node_id` to `cluster` (an admin's act): its credential is bound to the new cluster
/// and the server forgets its kept fences (the caller drops its live state, so it is nobody's
/// vote, candidate or master until it reports into the new cluster). 404 when the node has no
/// live credential, 400 for a bad cluster name. The old cluster.
pub async fn move_node(
    pool: &PgPool,
    credentials: &Credentials,
    node_id: &str,
    cluster: &str,
) -> Result<Option<String>, EnrollmentError> {
    if !hapulse_protocol::valid_name(cluster) {
        return Err(EnrollmentError::from(Refusal::invalid(
            "invalid_body",
            "cluster",
            "1-64 characters of A-Z a-z 0-9 . _ -",
        )));
    }
    let mut tx = pool.begin().await?;
    let old: Option<Option<String>> = sqlx::query_scalar(
        "UPDATE node_credentials n SET cluster = $2
           FROM (SELECT node_id, cluster FROM node_credentials WHERE node_id = $1 FOR UPDATE) o
          WHERE n.node_id = o.node_id AND n.revoked_at IS NULL
          RETURNING o.cluster",
    )
    .bind(node_id)
    .bind(cluster)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(old) = old else {
        return Err(EnrollmentError::from(Refusal::not_found(format!(
            "credential of node {node_id:?}"
        ))));
    };
    crate::failover::fences::forget(&mut tx, None, node_id).await?;
    tx.commit().await?;
    credentials.rebind(node_id, cluster);
    Ok(old)
}
