//! Who may see and who may act: users with roles, sessions, API tokens, and the middleware that
//! authenticates every request and enforces the policy.
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

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::http::error::AppError;
use crate::state::AppState;

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

    /// 403 unless it has at least `role`.
    pub fn require(&self, role: Role) -> Result<(), AppError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(AppError::Forbidden(format!(
                "{} has role {}; this needs {}",
                self.name,
                self.role.as_str(),
                role.as_str()
            )))
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
fn random_secret() -> String {
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
pub fn hash_password(password: &str) -> Result<String, AppError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AppError::Internal(anyhow::anyhow!("argon2: {e}")))
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
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password(&random_secret()).unwrap_or_default())
}

/// Checks a new user's or token's fields: 400 naming the field.
fn check_name(field: &'static str, name: &str) -> Result<(), AppError> {
    if hapulse_protocol::valid_name(name) {
        Ok(())
    } else {
        Err(AppError::invalid(
            "invalid_body",
            field,
            "1-64 characters of A-Z a-z 0-9 . _ -",
        ))
    }
}

fn check_clusters(clusters: &Option<Vec<String>>) -> Result<(), AppError> {
    match clusters {
        Some(cs) if cs.is_empty() => Err(AppError::invalid(
            "invalid_body",
            "clusters",
            "leave it out for every cluster, or name at least one",
        )),
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
) -> Result<(), AppError> {
    check_name("name", name)?;
    check_clusters(clusters)?;
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AppError::invalid(
            "invalid_body",
            "password",
            format!("at least {MIN_PASSWORD_CHARS} characters"),
        ));
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
        return Err(AppError::Conflict {
            code: "user_exists",
            message: format!("a user named {name:?} exists"),
        });
    }
    Ok(())
}

/// Sets a user's password (argon2id) and ends its sessions. 400 for a short password, 404 for
/// an unknown or disabled user.
pub async fn set_password(pool: &PgPool, name: &str, password: &str) -> Result<(), AppError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AppError::invalid(
            "invalid_body",
            "password",
            format!("at least {MIN_PASSWORD_CHARS} characters"),
        ));
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
        return Err(AppError::NotFound(format!("user {name:?}")));
    }
    sqlx::query("UPDATE sessions SET ended_at = now() WHERE user_name = $1 AND ended_at IS NULL")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Disables a user and ends its sessions. 404 when there is no such active user.
pub async fn disable_user(pool: &PgPool, name: &str) -> Result<(), AppError> {
    let mut tx = pool.begin().await?;
    let done =
        sqlx::query("UPDATE users SET disabled_at = now() WHERE name = $1 AND disabled_at IS NULL")
            .bind(name)
            .execute(&mut *tx)
            .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::NotFound(format!("user {name:?}")));
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
) -> Result<(Uuid, String), AppError> {
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
pub async fn revoke_token(pool: &PgPool, id: Uuid) -> Result<(), AppError> {
    let done = sqlx::query(
        "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::NotFound(format!("token {id}")));
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

/// Failed logins per account and per source address within a sliding window; in memory (one
/// server replica), so a restart forgets them.
#[derive(Debug, Default)]
pub struct Throttle {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Throttle {
    fn recent(&self, key: &str, window: Duration) -> usize {
        let mut map = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(q) = map.get_mut(key) else { return 0 };
        while q.front().is_some_and(|t| t.elapsed() > window) {
            q.pop_front();
        }
        q.len()
    }

    fn record(&self, key: &str) {
        let mut map = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Bounded: a flood of made-up names cannot grow the map without limit.
        if map.len() > 100_000 {
            map.clear();
        }
        map.entry(key.to_string())
            .or_default()
            .push_back(Instant::now());
    }
}

/// Why a login failed.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginError {
    /// Too many recent failures for this account or address: try later.
    Throttled,
    /// Wrong name or password (which one is not said).
    Wrong,
}

/// A new session.
pub struct NewSession {
    /// The session id (the cookie's value).
    pub id: String,
}

/// Checks a name and password (throttled per account and per source) and opens a session.
pub async fn login(
    state: &AppState,
    name: &str,
    password: &str,
    source: &str,
) -> Result<Result<NewSession, LoginError>, AppError> {
    let a = &state.settings.auth;
    let (account, address) = (format!("user:{name}"), format!("addr:{source}"));
    if state.login_throttle.recent(&account, a.login_window) >= a.login_max_failures_per_account
        || state.login_throttle.recent(&address, a.login_window) >= a.login_max_failures_per_source
    {
        return Ok(Err(LoginError::Throttled));
    }
    let row =
        sqlx::query("SELECT password_hash FROM users WHERE name = $1 AND disabled_at IS NULL")
            .bind(name)
            .fetch_optional(&state.db)
            .await?;
    let hash: Option<String> = row.map(|r| r.try_get("password_hash")).transpose()?;
    let password = password.to_string();
    let ok = tokio::task::spawn_blocking(move || {
        let matches = verify_password(hash.as_deref().unwrap_or(decoy_hash()), &password);
        matches && hash.is_some()
    })
    .await
    .map_err(|e| AppError::Internal(e.into()))?;
    if !ok {
        state.login_throttle.record(&account);
        state.login_throttle.record(&address);
        return Ok(Err(LoginError::Wrong));
    }
    let id = random_secret();
    sqlx::query(
        "INSERT INTO sessions (id_hash, user_name, csrf_token, source) VALUES ($1, $2, $3, $4)",
    )
    .bind(digest(&id))
    .bind(name)
    .bind(random_secret())
    .bind(source)
    .execute(&state.db)
    .await?;
    Ok(Ok(NewSession { id }))
}

/// Checks the password of the session's user again (before a switchover confirmed on the
/// dashboard) and records when; throttled like a login.
pub async fn reauthenticate(
    state: &AppState,
    principal: &Principal,
    password: &str,
) -> Result<bool, AppError> {
    let Via::Session { id_hash, .. } = &principal.via else {
        return Ok(false);
    };
    let outcome = login(state, &principal.name, password, &principal.source).await?;
    let Ok(fresh) = outcome else { return Ok(false) };
    // `login` opened a second session: end it at once; the caller's session is re-authenticated.
    sqlx::query("UPDATE sessions SET ended_at = now() WHERE id_hash = $1")
        .bind(digest(&fresh.id))
        .execute(&state.db)
        .await?;
    sqlx::query("UPDATE sessions SET reauth_at = now() WHERE id_hash = $1")
        .bind(id_hash)
        .execute(&state.db)
        .await?;
    Ok(true)
}

/// Ends the principal's session (logout). Other principals have nothing to end.
pub async fn logout(state: &AppState, principal: &Principal) -> Result<(), AppError> {
    if let Via::Session { id_hash, .. } = &principal.via {
        sqlx::query("UPDATE sessions SET ended_at = now() WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&state.db)
            .await?;
    }
    Ok(())
}

/// The session cookie's name for this server (see the module docs).
pub fn cookie_name(state: &AppState) -> &'static str {
    if state.settings.tls.is_some() {
        "__Host-hapulse_session"
    } else {
        "hapulse_session"
    }
}

/// The `Set-Cookie` value for a new session, or (with `None`) one that removes it.
pub fn session_cookie(state: &AppState, id: Option<&str>) -> String {
    let secure = if state.settings.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    match id {
        Some(id) => format!(
            "{}={id}; Path=/; HttpOnly; SameSite=Strict{secure}",
            cookie_name(state)
        ),
        None => format!(
            "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}",
            cookie_name(state)
        ),
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn parse_clusters(row: &sqlx::postgres::PgRow) -> Result<Option<Vec<String>>, sqlx::Error> {
    row.try_get("clusters")
}

/// Who the request comes from: `Ok(None)` without credentials, 401 for wrong ones.
async fn identify(
    state: &AppState,
    headers: &HeaderMap,
    source: &str,
) -> Result<Option<Principal>, AppError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(AppError::Unauthorized)?;
        let row = sqlx::query(
            "SELECT id, name, role, clusters,
                    last_used_at IS NULL OR last_used_at < now() - interval '1 minute' AS stale
               FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
        )
        .bind(digest(token))
        .fetch_optional(&state.db)
        .await?
        .ok_or(AppError::Unauthorized)?;
        // Last use to the minute: a write per minute per token, not per request.
        if row.try_get::<bool, _>("stale")? {
            sqlx::query("UPDATE api_tokens SET last_used_at = now() WHERE id = $1")
                .bind(row.try_get::<uuid::Uuid, _>("id")?)
                .execute(&state.db)
                .await?;
        }
        let role: String = row.try_get("role")?;
        let name: String = row.try_get("name")?;
        return Ok(Some(Principal {
            name: format!("token:{name}"),
            role: Role::parse(&role).unwrap_or(Role::Viewer),
            clusters: parse_clusters(&row)?,
            source: source.to_string(),
            via: Via::Token {
                id: row.try_get("id")?,
            },
        }));
    }
    let Some(id) = cookie(headers, cookie_name(state)) else {
        return Ok(None);
    };
    let a = &state.settings.auth;
    let id_hash = digest(id);
    let row = sqlx::query(
        "SELECT u.name, u.role, u.clusters, s.csrf_token, s.reauth_at,
                s.last_seen_at < now() - $2 * interval '0.1 second' AS stale
           FROM sessions s JOIN users u ON u.name = s.user_name
          WHERE s.id_hash = $1 AND s.ended_at IS NULL AND u.disabled_at IS NULL
            AND s.last_seen_at > now() - $2 * interval '1 second'
            AND s.created_at > now() - $3 * interval '1 second'",
    )
    .bind(&id_hash)
    .bind(a.session_idle.as_secs_f64())
    .bind(a.session_absolute.as_secs_f64())
    .fetch_optional(&state.db)
    .await?;
    let Some(row) = row else {
        // Unknown, ended, expired (idle or absolute) or its user disabled: end it for good.
        sqlx::query("UPDATE sessions SET ended_at = now() WHERE id_hash = $1 AND ended_at IS NULL")
            .bind(&id_hash)
            .execute(&state.db)
            .await?;
        return Ok(None);
    };
    // Touched when a tenth of the idle time has passed: far fewer writes than requests, and
    // idle expiry stays within 10 % of its setting.
    if row.try_get::<bool, _>("stale")? {
        sqlx::query("UPDATE sessions SET last_seen_at = now() WHERE id_hash = $1")
            .bind(&id_hash)
            .execute(&state.db)
            .await?;
    }
    let role: String = row.try_get("role")?;
    Ok(Some(Principal {
        name: row.try_get("name")?,
        role: Role::parse(&role).unwrap_or(Role::Viewer),
        clusters: parse_clusters(&row)?,
        source: source.to_string(),
        via: Via::Session {
            id_hash,
            csrf: row.try_get("csrf_token")?,
            reauth_at: row.try_get("reauth_at")?,
        },
    }))
}

/// Paths anyone may reach: the login form, static assets, health checks, and the agent API
/// (which authenticates agents itself).
fn public(path: &str) -> bool {
    path == "/login"
        || path.starts_with("/static/")
        || path == "/healthz"
        || path == "/readyz"
        || path.starts_with("/api/agent/")
}

/// The role a request needs: admin for users, tokens, enrollment and the audit log; viewer to
/// read anything else; operator to change anything else. (Maintenance windows need admin too:
/// the silence handlers check that, since it is in the body.)
pub fn required_role(method: &Method, path: &str) -> Role {
    let admin_only = [
        "/api/v1/users",
        "/api/v1/tokens",
        "/api/v1/enrollments",
        "/api/v1/audit",
        "/api/v1/failover",
        "/audit",
    ];
    if admin_only
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")))
        || (path.starts_with("/api/v1/nodes/") && path.ends_with("/revoke"))
    {
        return Role::Admin;
    }
    if matches!(*method, Method::GET | Method::HEAD) || path == "/logout" {
        Role::Viewer
    } else {
        Role::Operator
    }
}

/// The cluster a path concerns (`/clusters/{c}…`, `/api/v1/clusters/{c}…`), if any.
fn cluster_of(path: &str) -> Option<&str> {
    let rest = path
        .strip_prefix("/api/v1/clusters/")
        .or_else(|| path.strip_prefix("/clusters/"))?;
    rest.split('/').next().filter(|c| !c.is_empty())
}

/// Largest dashboard form accepted, in bytes.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// Authenticates every request that is not [`public`], enforces [`required_role`], the cluster
/// scope and the CSRF token, and hands the [`Principal`] to the handler as an extension.
/// Without credentials: 401 for the API and `/metrics`, a redirect to `/login` for pages.
pub async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match authorize(&state, req).await {
        Ok(req) => next.run(req).await,
        Err(response) => response,
    }
}

async fn authorize(state: &AppState, mut req: Request) -> Result<Request, Response> {
    let path = req.uri().path().to_string();
    if public(&path) {
        return Ok(req);
    }
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_string(), |c| c.0.ip().to_string());
    let api = path.starts_with("/api/") || path == "/metrics";
    let safe = matches!(*req.method(), Method::GET | Method::HEAD);
    let principal = identify(state, req.headers(), &source)
        .await
        .map_err(IntoResponse::into_response)?;
    let principal = match principal {
        Some(p) => p,
        None if state.settings.auth.anonymous_read && safe => Principal {
            name: "anonymous".into(),
            role: Role::Viewer,
            clusters: None,
            source,
            via: Via::Anonymous,
        },
        None if api || !safe => return Err(AppError::Unauthorized.into_response()),
        None => {
            let next = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            let query = serde_urlencoded::to_string([("next", next)]).unwrap_or_default();
            return Err(Redirect::to(&format!("/login?{query}")).into_response());
        }
    };
    let need = required_role(req.method(), &path);
    principal
        .require(need)
        .map_err(IntoResponse::into_response)?;
    if let Some(cluster) = cluster_of(&path) {
        if !principal.may_see(cluster) {
            return Err(AppError::Forbidden(format!(
                "{} may not see cluster {cluster:?}",
                principal.name
            ))
            .into_response());
        }
    }
    if let (false, Via::Session { csrf, .. }) = (safe, &principal.via) {
        if api {
            let presented = req
                .headers()
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok());
            if presented != Some(csrf.as_str()) {
                return Err(
                    AppError::Forbidden("missing or wrong X-CSRF-Token header".into())
                        .into_response(),
                );
            }
        } else {
            req = check_form_csrf(req, csrf).await?;
        }
    }
    req.extensions_mut().insert(principal);
    Ok(req)
}

/// Reads a dashboard form, checks its `csrf` field and hands the handler the form without it.
async fn check_form_csrf(req: Request, csrf: &str) -> Result<Request, Response> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| AppError::PayloadTooLarge(MAX_FORM_BYTES).into_response())?;
    let mut fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes)
        .map_err(|e| AppError::invalid("invalid_body", "form", e.to_string()).into_response())?;
    let presented: Vec<String> = fields
        .iter()
        .filter(|(k, _)| k == "csrf")
        .map(|(_, v)| v.clone())
        .collect();
    if presented.len() != 1 || presented[0] != csrf {
        return Err((
            StatusCode::FORBIDDEN,
            "This form is stale or did not come from this dashboard (CSRF token missing or wrong). Reload the page and try again.",
        )
            .into_response());
    }
    fields.retain(|(k, _)| k != "csrf");
    let body = serde_urlencoded::to_string(&fields).unwrap_or_default();
    Ok(Request::from_parts(parts, axum::body::Body::from(body)))
}

/// The principal the middleware authenticated.
pub struct Auth(pub Principal);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Auth {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, AppError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Auth)
            .ok_or(AppError::Unauthorized)
    }
}

/// Is the session's last password entry recent enough for a switchover (`auth.reauth_window`)?
pub fn recently_authenticated(state: &AppState, principal: &Principal) -> bool {
    match &principal.via {
        Via::Session { reauth_at, .. } => {
            Utc::now() - *reauth_at
                <= chrono::Duration::from_std(state.settings.auth.reauth_window).unwrap_or_default()
        }
        _ => false,
    }
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

    #[test]
    fn roles_order_and_the_policy() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(required_role(&get, "/api/v1/clusters"), Role::Viewer);
        assert_eq!(
            required_role(&post, "/api/v1/clusters/c/switchover"),
            Role::Operator
        );
        assert_eq!(required_role(&get, "/api/v1/users"), Role::Admin);
        assert_eq!(
            required_role(&Method::DELETE, "/api/v1/tokens/x"),
            Role::Admin
        );
        assert_eq!(required_role(&post, "/api/v1/nodes/a/revoke"), Role::Admin);
        assert_eq!(required_role(&post, "/logout"), Role::Viewer);
        assert_eq!(cluster_of("/api/v1/clusters/prod/switchover"), Some("prod"));
        assert_eq!(cluster_of("/clusters/prod"), Some("prod"));
        assert_eq!(cluster_of("/api/v1/clusters"), None);
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; hapulse_session=xyz; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, "hapulse_session"), Some("xyz"));
        assert_eq!(cookie(&h, "missing"), None);
    }
}
