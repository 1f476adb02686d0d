//! The authentication middleware and extractor: who a request comes from (session cookie or
//! bearer token), the role each route needs, the cluster scope, and the CSRF token of every
//! state-changing request made with a session. The policy itself is described in
//! [`crate::access::auth`].

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use sqlx::Row;

use crate::access::auth::{digest, Principal, Role, Via};
use crate::http::client::ClientOrigin;
use crate::http::error::AppError;
use crate::refusal::Refusal;
use crate::state::AppState;

/// The session cookie's name for this server (see the module docs).
pub fn cookie_name(state: &AppState) -> &'static str {
    if state.settings().tls.is_some() {
        "__Host-hapulse_session"
    } else {
        "hapulse_session"
    }
}

/// The name of the login form's CSRF cookie (`__Host-` under TLS).
pub fn login_cookie_name(state: &AppState) -> &'static str {
    if state.settings().tls.is_some() {
        "__Host-hapulse_login"
    } else {
        "hapulse_login"
    }
}

/// The login form's CSRF token this browser holds (its login cookie), if any.
pub fn login_cookie<'a>(state: &AppState, headers: &'a HeaderMap) -> Option<&'a str> {
    cookie(headers, login_cookie_name(state)).filter(|v| !v.is_empty() && v.len() <= 128)
}

/// The `Set-Cookie` value that gives a browser the login form's CSRF token `token` (an hour);
/// Secure when the browser speaks HTTPS (to this server or to a trusted proxy).
pub fn login_cookie_header(state: &AppState, origin: ClientOrigin, token: &str) -> String {
    let secure = if origin.https { "; Secure" } else { "" };
    format!(
        "{}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=3600{secure}",
        login_cookie_name(state)
    )
}

/// The `Set-Cookie` value for a new session, or (with `None`) one that removes it; Secure when
/// the browser speaks HTTPS (to this server or to a trusted proxy).
pub fn session_cookie(state: &AppState, origin: ClientOrigin, id: Option<&str>) -> String {
    let secure = if origin.https { "; Secure" } else { "" };
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
            .ok_or(AppError::from(Refusal::unauthorized()))?;
        // A token stops with the user who made it: disabling someone ends all they can do.
        let row = sqlx::query(
            "SELECT id, name, role, clusters,
                    last_used_at IS NULL OR last_used_at < now() - interval '1 minute' AS stale
               FROM api_tokens t
              WHERE token_hash = $1 AND revoked_at IS NULL
                AND NOT EXISTS (SELECT 1 FROM users u
                                 WHERE u.name = t.created_by AND u.disabled_at IS NOT NULL)",
        )
        .bind(digest(token))
        .fetch_optional(&state.db)
        .await?
        .ok_or(AppError::from(Refusal::unauthorized()))?;
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
    let a = &state.settings().auth;
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
        || (path.starts_with("/api/v1/nodes/")
            && (path.ends_with("/revoke") || path.ends_with("/move")))
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
    let source = crate::http::client::client_origin(
        req.extensions(),
        req.headers(),
        &state.settings().trusted_proxies,
        state.settings().tls.is_some(),
    )
    .source();
    let api = path.starts_with("/api/") || path == "/metrics";
    let safe = matches!(*req.method(), Method::GET | Method::HEAD);
    let principal = identify(state, req.headers(), &source)
        .await
        .map_err(IntoResponse::into_response)?;
    let principal = match principal {
        Some(p) => p,
        None if state.settings().auth.anonymous_read && safe => Principal {
            name: "anonymous".into(),
            role: Role::Viewer,
            clusters: None,
            source,
            via: Via::Anonymous,
        },
        None if api || !safe => return Err(AppError::from(Refusal::unauthorized()).into_response()),
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
        .map_err(|e| AppError::from(e).into_response())?;
    if let Some(cluster) = cluster_of(&path) {
        if !principal.may_see(cluster) {
            return Err(AppError::from(Refusal::forbidden(format!(
                "{} may not see cluster {cluster:?}",
                principal.name
            )))
            .into_response());
        }
    }
    if let (false, Via::Session { csrf, .. }) = (safe, &principal.via) {
        if api {
            let presented = req
                .headers()
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok());
            if !presented.is_some_and(|p| same_secret(p, csrf)) {
                return Err(AppError::from(Refusal::forbidden(
                    "missing or wrong X-CSRF-Token header",
                ))
                .into_response());
            }
        } else {
            req = check_form_csrf(req, csrf).await?;
        }
    }
    req.extensions_mut().insert(principal);
    Ok(req)
}

/// Whether a presented secret equals the expected one, in time that does not depend on where
/// they differ (`subtle`).
pub(crate) fn same_secret(presented: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    presented.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// Reads a dashboard form, checks its `csrf` field and hands the handler the form without it.
async fn check_form_csrf(req: Request, csrf: &str) -> Result<Request, Response> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| AppError::PayloadTooLarge(MAX_FORM_BYTES).into_response())?;
    let mut fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).map_err(|e| {
        AppError::from(Refusal::invalid("invalid_body", "form", e.to_string())).into_response()
    })?;
    let presented: Vec<String> = fields
        .iter()
        .filter(|(k, _)| k == "csrf")
        .map(|(_, v)| v.clone())
        .collect();
    if presented.len() != 1 || !same_secret(&presented[0], csrf) {
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
            .ok_or(AppError::from(Refusal::unauthorized()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(required_role(&post, "/api/v1/nodes/a/move"), Role::Admin);
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
