//! Admin endpoints: users, API tokens and the audit log (`/api/v1/users`, `/api/v1/tokens`,
//! `/api/v1/audit`). The middleware lets only admins in; every change is audited.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::audit::Audit;
use crate::access::auth::{self, Role};
use crate::http::auth::Auth;
use crate::http::error::AppError;
use crate::http::extract::{ApiJson, ApiQuery};
use crate::refusal::Refusal;
use crate::state::AppState;

fn role(field_value: &str) -> Result<Role, AppError> {
    Role::parse(field_value).ok_or_else(|| {
        AppError::from(Refusal::invalid(
            "invalid_body",
            "role",
            "viewer, operator or admin",
        ))
    })
}

/// Body of `POST /api/v1/users`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Login name.
    pub name: String,
    /// Password (at least [`auth::MIN_PASSWORD_CHARS`] characters); stored as an argon2id hash.
    pub password: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// Clusters the user is limited to; left out: all.
    #[serde(default)]
    pub clusters: Option<Vec<String>>,
}

/// Body of `GET /api/v1/users`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct UserList {
    /// Every user, by name.
    pub users: Vec<auth::User>,
}

/// `GET /api/v1/users`: the users the caller's scope covers (an admin limited to some clusters
/// sees the users limited to some of them).
pub async fn users(
    State(state): State<AppState>,
    Auth(me): Auth,
) -> Result<Json<UserList>, AppError> {
    let mut users = auth::list_users(&state.db).await?;
    users.retain(|u| me.covers(&u.clusters));
    Ok(Json(UserList { users }))
}

/// `POST /api/v1/users`: 201; 400 naming the field, 409 `user_exists`, 403 for a user wider
/// than a scoped admin.
pub async fn create_user(
    State(state): State<AppState>,
    Auth(me): Auth,
    ApiJson(new): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<serde_json::Value>), AppError> {
    let r = role(&new.role)?;
    me.require_covers(&new.clusters)?;
    auth::create_user(&state.db, &new.name, &new.password, r, &new.clusters).await?;
    Audit::by(&me, "user_create", &new.name, "created")
        .detail(serde_json::json!({ "role": r.as_str(), "clusters": new.clusters }))
        .record(&state.db)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "name": new.name, "role": r.as_str(), "clusters": new.clusters })),
    ))
}

/// `DELETE /api/v1/users/{name}`: disables the user and ends its sessions (403 for a user
/// beyond a scoped admin's clusters).
pub async fn disable_user(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, AppError> {
    let scope: Option<Option<Vec<String>>> =
        sqlx::query_scalar("SELECT clusters FROM users WHERE name = $1")
            .bind(&name)
            .fetch_optional(&state.db)
            .await?;
    if let Some(clusters) = scope {
        me.require_covers(&clusters)?;
    }
    auth::disable_user(&state.db, &name).await?;
    Audit::by(&me, "user_disable", &name, "disabled")
        .record(&state.db)
        .await?;
    Ok(Json(serde_json::json!({ "name": name, "disabled": true })))
}

/// Body of `POST /api/v1/tokens`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// What it is for (`prometheus`, `runbook-bot`).
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// Clusters it is limited to; left out: all.
    #[serde(default)]
    pub clusters: Option<Vec<String>>,
}

/// Answer of `POST /api/v1/tokens`: the secret, shown this once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedToken {
    /// Id (to revoke it).
    pub id: Uuid,
    /// The bearer token (`hpt_…`). Only its SHA-256 is stored.
    pub token: String,
}

/// Body of `GET /api/v1/tokens`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenList {
    /// Every token, oldest first.
    pub tokens: Vec<auth::Token>,
}

/// `GET /api/v1/tokens`: the tokens the caller's scope covers, never the secrets.
pub async fn tokens(
    State(state): State<AppState>,
    Auth(me): Auth,
) -> Result<Json<TokenList>, AppError> {
    let mut tokens = auth::list_tokens(&state.db).await?;
    tokens.retain(|t| me.covers(&t.clusters));
    Ok(Json(TokenList { tokens }))
}

/// `POST /api/v1/tokens`: 201 with the secret; 403 for a token wider than a scoped admin.
pub async fn create_token(
    State(state): State<AppState>,
    Auth(me): Auth,
    ApiJson(new): ApiJson<NewToken>,
) -> Result<(StatusCode, Json<CreatedToken>), AppError> {
    let r = role(&new.role)?;
    me.require_covers(&new.clusters)?;
    let (id, token) = auth::create_token(&state.db, &new.name, r, &new.clusters, &me.name).await?;
    Audit::by(&me, "token_create", &id.to_string(), "created")
        .detail(
            serde_json::json!({ "name": new.name, "role": r.as_str(), "clusters": new.clusters }),
        )
        .record(&state.db)
        .await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { id, token })))
}

/// `DELETE /api/v1/tokens/{id}`: revokes a token at once (403 for a token beyond a scoped
/// admin's clusters).
pub async fn revoke_token(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<serde_json::Value>, AppError> {
    let scope: Option<Option<Vec<String>>> =
        sqlx::query_scalar("SELECT clusters FROM api_tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(&state.db)
            .await?;
    if let Some(clusters) = scope {
        me.require_covers(&clusters)?;
    }
    auth::revoke_token(&state.db, id).await?;
    Audit::by(&me, "token_revoke", &id.to_string(), "revoked")
        .record(&state.db)
        .await?;
    Ok(Json(serde_json::json!({ "id": id, "revoked": true })))
}

/// Query of `GET /api/v1/audit`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Most rows, 1..=1000 (default 100).
    #[serde(default)]
    pub limit: Option<i64>,
    /// Only rows older than this id (the next page).
    #[serde(default)]
    pub before: Option<i64>,
}

/// Body of `GET /api/v1/audit`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditList {
    /// Rows, newest first.
    pub audit: Vec<crate::access::audit::Entry>,
}

/// `GET /api/v1/audit?limit=&before=`: the audit log, newest first. Its rows concern every
/// cluster (and strangers' failed logins): an admin limited to some clusters is refused (403).
pub async fn audit(
    State(state): State<AppState>,
    Auth(me): Auth,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditList>, AppError> {
    me.require_unscoped("the audit log")?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(AppError::from(Refusal::invalid(
            "invalid_query",
            "limit",
            "limit must be 1..=1000",
        )));
    }
    Ok(Json(AuditList {
        audit: crate::access::audit::list(&state.db, limit, q.before).await?,
    }))
}

/// Body of `POST /api/v1/enrollments`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentRequest {
    /// The node to enroll.
    pub node_id: String,
    /// The cluster it belongs to: its credential reports into this cluster only.
    pub cluster: String,
    /// How long the token works unused, like `1h` (default 24 h, at most 7 days).
    #[serde(default, with = "humantime_serde")]
    pub expires_in: Option<std::time::Duration>,
}

/// `POST /api/v1/enrollments`: a one-time enrollment token for a node in a cluster (201, shown
/// once); 403 for a cluster outside an admin's scope.
pub async fn create_enrollment(
    State(state): State<AppState>,
    Auth(me): Auth,
    ApiJson(new): ApiJson<EnrollmentRequest>,
) -> Result<(StatusCode, Json<crate::agents::enrollment::NewEnrollment>), AppError> {
    require_scope(&me, &new.cluster)?;
    if let Some(bound) = node_cluster(&state, &new.node_id).await? {
        require_scope(&me, &bound)?;
    }
    let lifetime = new
        .expires_in
        .unwrap_or(std::time::Duration::from_secs(24 * 3600));
    let created = crate::agents::enrollment::create(
        &state.db,
        &new.node_id,
        &new.cluster,
        lifetime,
        &me.name,
    )
    .await?;
    Audit::by(&me, "enrollment_create", &new.node_id, "created")
        .detail(serde_json::json!({ "cluster": created.cluster, "expires_at": created.expires_at }))
        .record(&state.db)
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// 403 unless `me` may act on `cluster`.
fn require_scope(me: &crate::access::auth::Principal, cluster: &str) -> Result<(), AppError> {
    if me.may_see(cluster) {
        Ok(())
    } else {
        Err(AppError::from(crate::refusal::Refusal::forbidden(format!(
            "cluster {cluster:?} is outside your scope"
        ))))
    }
}

/// The cluster a node's credential is bound to, else the one it last reported in; None for a
/// node hapulse does not know.
async fn node_cluster(state: &AppState, node_id: &str) -> Result<Option<String>, AppError> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(
            (SELECT cluster FROM node_credentials WHERE node_id = $1),
            (SELECT cluster FROM nodes WHERE node_id = $1))",
    )
    .bind(node_id)
    .fetch_one(&state.db)
    .await?)
}

/// Body of `POST /api/v1/nodes/{node_id}/move`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// The cluster the node belongs to from now on.
    pub cluster: String,
    /// Why (audited).
    pub reason: String,
}

/// `POST /api/v1/nodes/{node_id}/move`: the node's credential reports into `cluster` from now
/// on; its kept fences are forgotten and it leaves its old cluster's live state (its votes and
/// candidacy) until it reports into the new one. Audited. 404 without a live credential, 403
/// when either cluster is outside an admin's scope.
pub async fn move_node(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(node_id): Path<String>,
    ApiJson(req): ApiJson<MoveRequest>,
) -> Result<Json<serde_json::Value>, AppError> {
    require_scope(&me, &req.cluster)?;
    if let Some(bound) = node_cluster(&state, &node_id).await? {
        require_scope(&me, &bound)?;
    }
    let old =
        crate::agents::enrollment::move_node(&state.db, &state.credentials, &node_id, &req.cluster)
            .await?;
    state.live_mut().nodes.remove(&node_id);
    Audit::by(&me, "node_move", &node_id, "moved")
        .reason(&req.reason)
        .detail(serde_json::json!({ "from": old, "to": req.cluster }))
        .record(&state.db)
        .await?;
    state.changes.send(req.cluster.clone()).ok();
    Ok(Json(
        serde_json::json!({ "node_id": node_id, "from": old, "cluster": req.cluster }),
    ))
}

/// `POST /api/v1/nodes/{node_id}/revoke`: the node's agent is refused from now on (404 without
/// a live credential; 403 for a node of a cluster outside an admin's scope).
pub async fn revoke_node(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(node_id): Path<String>,
) -> Result<Json<serde_json::Value>, AppError> {
    if let Some(bound) = node_cluster(&state, &node_id).await? {
        require_scope(&me, &bound)?;
    }
    crate::agents::enrollment::revoke(&state.db, &state.credentials, &node_id).await?;
    Audit::by(&me, "node_revoke", &node_id, "revoked")
        .record(&state.db)
        .await?;
    Ok(Json(
        serde_json::json!({ "node_id": node_id, "revoked": true }),
    ))
}
