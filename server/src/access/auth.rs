//! Who may see and who may act: principals, users with roles, API tokens, and the hashing of
//! their secrets. Sessions are in [`crate::access::sessions`]; the middleware that authenticates
//! every request and enforces the policy is [`crate::http::auth`].
//!
//! Roles, each including the one before: **viewer** (read), **operator** (switchover, cancel,
//! acknowledge, silence), **admin** (users, tokens, enrollment, maintenance windows, the audit
//! log). A user or token may be limited to some clusters.
//!
//! Secrets are stored hashed: passwords with argon2id (PHC strings, the argon2 crate's defaults),
//! session ids and API tokens — 32 random bytes each — with SHA-256 (they are not guessable, so
//! a slow hash buys nothing). A session's cookie is `__Host-hapulse_session` (HttpOnly,
//! SameSite=Strict, Secure) when the server speaks TLS, and `hapulse_session` (HttpOnly,
//! SameSite=Strict) over plain HTTP, where browsers refuse `__Host-` cookies. Every state-changing
//! request made with a session carries its CSRF token: a form field `csrf` for dashboard forms,
//! the `X-CSRF-Token` header for the REST API. Bearer tokens need no CSRF token (a browser never
//! sends them by itself).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::refusal::Refusal;

/// Why an access operation (users, tokens, sessions, a role check) was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// Refused: a field that is not acceptable (400, naming it), an unknown user or token (404),
    /// a principal without the role (403), a name taken (409 `user_exists`). Nothing was changed.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// PostgreSQL failed (HTTP 503 when it is unavailable, else 500).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Anything else (a hashing failure, a task that panicked): HTTP 500, details only in the
    /// log.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// What a principal may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read everything in its clusters.
    Viewer,
    /// Also switch over, cancel, acknowledge and silence.
    Operator,
    /// Also manage users, tokens, enrollment and maintenance windows, and read the audit log.
    Admin,
}

impl Role {
    /// `viewer`, `operator`, `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parses a stored or requested role name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// How a principal proved who it is.
#[derive(Debug, Clone)]
pub enum Via {
    /// A dashboard session.
    Session {
        /// SHA-256 of the session id.
        id_hash: Vec<u8>,
        /// The session's CSRF token.
        csrf: String,
        /// When the password was last given.
        reauth_at: DateTime<Utc>,
    },
    /// An API token.
    Token {
        /// The token's id.
        id: Uuid,
    },
    /// Nobody: anonymous read access (`auth.anonymous_read`).
    Anonymous,
    /// The server itself (recovery after a restart).
    System,
}

/// Who makes a request: a user (by session), an API token (by its name), or nobody.
#[derive(Debug, Clone)]
pub struct Principal {
    /// User name, token name (`token:NAME`), `anonymous` or `system`.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The clusters it may see and act on; `None`: all.
    pub clusters: Option<Vec<String>>,
    /// The client address.
    pub source: String,
    /// How it was authenticated.
    pub via: Via,
}

impl Principal {
    /// The server itself, for actions nobody asked for (recovering a switchover after a restart).
    pub fn system() -> Principal {
        Principal {
            name: "system".into(),
            role: Role::Admin,
            clusters: None,
            source: "server".into(),
            via: Via::System,
        }
    }

    /// May it see and act on `cluster`?
    pub fn may_see(&self, cluster: &str) -> bool {
        self.clusters
            .as_ref()
            .is_none_or(|cs| cs.iter().any(|c| c == cluster))
    }

    /// Does its scope cover a principal limited to `clusters` (None: all)? An unscoped
    /// principal covers every one; a scoped one only principals limited to some of its own
    /// clusters.
    pub fn covers(&self, clusters: &Option<Vec<String>>) -> bool {
        match (&self.clusters, clusters) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(_), Some(theirs)) => !theirs.is_empty() && theirs.iter().all(|c| self.may_see(c)),
        }
    }

    /// 403 unless its scope covers a principal limited to `clusters` (see [`Principal::covers`]):
    /// a scoped admin never creates or manages a principal wider than itself.
    pub fn require_covers(&self, clusters: &Option<Vec<String>>) -> Result<(), Refusal> {
        if self.covers(clusters) {
            Ok(())
        } else {
            Err(Refusal::forbidden(format!(
                "{} is limited to some clusters: it manages only principals limited to some of them",
                self.name
            )))
        }
    }

    /// 403 for a principal limited to some clusters: `what` concerns every cluster.
    pub fn require_unscoped(&self, what: &str) -> Result<(), Refusal> {
        match self.clusters {
            None => Ok(()),
            Some(_) => Err(Refusal::forbidden(format!(
                "{what} concerns every cluster: it needs an admin not limited to some clusters"
            ))),
        }
    }

    /// 403 unless it has at least `role`.
    pub fn require(&self, role: Role) -> Result<(), AccessError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(AccessError::from(Refusal::forbidden(format!(
                "{} has role {}; this needs {}",
                self.name,
                self.role.as_str(),
                role.as_str()
            ))))
        }
    }

    /// The session's CSRF token, for forms; empty for other principals.
    pub fn csrf(&self) -> &str {
        match &self.via {
            Via::Session { csrf, .. } => csrf,
            _ => "",
        }
    }
}

/// 32 random bytes from the OS, base64url without padding (43 characters).
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 of a high-entropy secret (session id, API token, node credential).
pub fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// A fresh secret with `prefix` (`hpt_` for API tokens) and its digest.
pub fn new_secret(prefix: &str) -> (String, Vec<u8>) {
    let secret = format!("{prefix}{}", random_secret());
    let hash = digest(&secret);
    (secret, hash)
}

/// Hashes a password with argon2id and a random salt; the PHC string is what is stored.
pub fn hash_password(password: &str) -> Result<String, AccessError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccessError::Internal(anyhow::anyhow!("argon2: {e}")))
}

/// Does `password` match the stored PHC string? A malformed hash matches nothing.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A PHC string no password matches, verified when the user does not exist so that a wrong
/// name costs the same time as a wrong password.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password(&random_secret()).unwrap_or_default())
}

/// Checks a new user's or token's fields: 400 naming the field.
fn check_name(field: &'static str, name: &str) -> Result<(), AccessError> {
    if hapulse_protocol::valid_name(name) {
        Ok(())
    } else {
        Err(AccessError::from(Refusal::invalid(
            "invalid_body",
            field,
            "1-64 characters of A-Z a-z 0-9 . _ -",
        )))
    }
}

fn check_clusters(clusters: &Option<Vec<String>>) -> Result<(), AccessError> {
    match clusters {
        Some(cs) if cs.is_empty() => Err(AccessError::from(Refusal::invalid(
            "invalid_body",
            "clusters",
            "leave it out for every cluster, or name at least one",
        ))),
        Some(cs) => cs.iter().try_for_each(|c| check_name("clusters", c)),
        None => Ok(()),
    }
}

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// Creates a user. 400 for a bad name, role, cluster list or a password under
/// [`MIN_PASSWORD_CHARS`]; 409 `user_exists`.
pub async fn create_user(
    pool: &PgPool,
    name: &str,
    password: &str,
    role: Role,
    clusters: &Option<Vec<String>>,
) -> Result<(), AccessError> {
    check_name("name", name)?;
    check_clusters(clusters)?;
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AccessError::from(Refusal::invalid(
            "invalid_body",
            "password",
            format!("at least {MIN_PASSWORD_CHARS} characters"),
        )));
    }
    let hash = hash_password(password)?;
    let inserted = sqlx::query(
        "INSERT INTO users (name, password_hash, role, clusters) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(hash)
    .bind(role.as_str())
    .bind(clusters)
    .execute(pool)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(AccessError::from(Refusal::conflict(
            "user_exists",
            format!("a user named {name:?} exists"),
        )));
    }
    Ok(())
}

/// Sets a user's password (argon2id) and ends its sessions. 400 for a short password, 404 for
/// an unknown or disabled user.
pub async fn set_password(pool: &PgPool, name: &str, password: &str) -> Result<(), AccessError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AccessError::from(Refusal::invalid(
            "invalid_body",
            "password",
            format!("at least {MIN_PASSWORD_CHARS} characters"),
        )));
    }
    let hash = hash_password(password)?;
    let mut tx = pool.begin().await?;
    let done =
        sqlx::query("UPDATE users SET password_hash = $2 WHERE name = $1 AND disabled_at IS NULL")
            .bind(name)
            .bind(hash)
            .execute(&mut *tx)
            .await?;
    if done.rows_affected() == 0 {
        return Err(AccessError::from(Refusal::not_found(format!(
            "user {name:?}"
        ))));
    }
    sqlx::query("UPDATE sessions SET ended_at = now() WHERE user_name = $1 AND ended_at IS NULL")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Disables a user and ends its sessions. 404 when there is no such active user.
pub async fn disable_user(pool: &PgPool, name: &str) -> Result<(), AccessError> {
    let mut tx = pool.begin().await?;
    let done =
        sqlx::query("UPDATE users SET disabled_at = now() WHERE name = $1 AND disabled_at IS NULL")
            .bind(name)
            .execute(&mut *tx)
            .await?;
    if done.rows_affected() == 0 {
        return Err(AccessError::from(Refusal::not_found(format!(
            "user {name:?}"
        ))));
    }
    sqlx::query("UPDATE sessions SET ended_at = now() WHERE user_name = $1 AND ended_at IS NULL")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// A user as listed (never the hash).
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct User {
    /// Name.
    pub name: String,
    /// `viewer`, `operator`, `admin`.
    pub role: String,
    /// Clusters it is limited to; null: all.
    pub clusters: Option<Vec<String>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Disabled (sessions ended, no login).
    pub disabled_at: Option<DateTime<Utc>>,
}

/// Every user.
pub async fn list_users(pool: &PgPool) -> Result<Vec<User>, sqlx::Error> {
    sqlx::query_as::<_, User>(
        "SELECT name, role, clusters, created_at, disabled_at FROM users ORDER BY name",
    )
    .fetch_all(pool)
    .await
}

/// An API token as listed (never the secret).
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Token {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// `viewer`, `operator`, `admin`.
    pub role: String,
    /// Clusters it is limited to; null: all.
    pub clusters: Option<Vec<String>>,
    /// Who created it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// Last request made with it (to the minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Creates an API token; returns its id and the secret, which is shown this once.
pub async fn create_token(
    pool: &PgPool,
    name: &str,
    role: Role,
    clusters: &Option<Vec<String>>,
    created_by: &str,
) -> Result<(Uuid, String), AccessError> {
    check_name("name", name)?;
    check_clusters(clusters)?;
    let (secret, hash) = new_secret("hpt_");
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO api_tokens (id, name, token_hash, role, clusters, created_by) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(name)
    .bind(hash)
    .bind(role.as_str())
    .bind(clusters)
    .bind(created_by)
    .execute(pool)
    .await?;
    Ok((id, secret))
}

/// Revokes a token. 404 when there is no such live token.
pub async fn revoke_token(pool: &PgPool, id: Uuid) -> Result<(), AccessError> {
    let done = sqlx::query(
        "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(AccessError::from(Refusal::not_found(format!("token {id}"))));
    }
    Ok(())
}

/// Every API token.
pub async fn list_tokens(pool: &PgPool) -> Result<Vec<Token>, sqlx::Error> {
    sqlx::query_as::<_, Token>(
        "SELECT id, name, role, clusters, created_by, created_at, last_used_at, revoked_at
           FROM api_tokens ORDER BY created_at",
    )
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password(&hash, "correct horse battery"));
        assert!(!verify_password(&hash, "correct horse battery!"));
        assert!(!verify_password("not a hash", "x"));
        assert_ne!(hash, hash_password("correct horse battery").unwrap());
    }
}
