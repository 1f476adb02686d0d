//! HTTP APIs: the agent API (`/api/agent/v1`) and the REST API (`/api/v1`), with the extractors
//! that enforce their policy (authentication, JSON bodies, query strings).

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::http::error::AppError;
use crate::refusal::{Refusal, RefusalKind};
use crate::state::AppState;

/// Largest JSON body accepted, in bytes (256 KiB: a report with 256 instances fits easily).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// A JSON body, parsed strictly: wrong content type → 415, too large → 413, malformed → 400 with
/// the path of the offending field (`keepalived.instances[0].state`).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, AppError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
            });
        if !is_json {
            return Err(AppError::UnsupportedMediaType);
        }
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|_| AppError::PayloadTooLarge(MAX_BODY_BYTES))?;
        // The common case without the path bookkeeping (it costs on every field); a body that
        // fails is parsed again to name the offending field.
        if let Ok(value) = serde_json::from_slice(&bytes) {
            return Ok(ApiJson(value));
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            AppError::from(Refusal {
                kind: RefusalKind::Invalid,
                code: "invalid_body",
                message: e.inner().to_string(),
                field: (path != ".").then_some(path),
            })
        })?;
        de.end().map_err(|e| {
            AppError::from(Refusal {
                kind: RefusalKind::Invalid,
                code: "invalid_body",
                message: e.to_string(),
                field: None,
            })
        })?;
        Ok(ApiJson(value))
    }
}

/// A query string parsed strictly into `T`; errors are 400 `invalid_query`.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, AppError> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(query)
            .map(ApiQuery)
            .map_err(|e| {
                AppError::from(Refusal {
                    kind: RefusalKind::Invalid,
                    code: "invalid_query",
                    message: e.to_string(),
                    field: None,
                })
            })
    }
}

/// An enrolled agent: the request carries a live node credential (`Authorization: Bearer
/// hpn_…`); holds the node id and cluster the credential is bound to. 401 otherwise.
pub struct AgentAuth(pub crate::agents::enrollment::Binding);

impl AgentAuth {
    /// 403 unless `node_id` is the credential's own node.
    pub fn require_node(&self, node_id: &str) -> Result<(), AppError> {
        if self.0.node_id == node_id {
            Ok(())
        } else {
            Err(AppError::from(Refusal::forbidden(format!(
                "the credential of node {:?} cannot act for node {node_id:?}",
                self.0.node_id
            ))))
        }
    }
}

impl FromRequestParts<AppState> for AgentAuth {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(AppError::from(Refusal::unauthorized()))?;
        let binding = state
            .credentials
            .binding_of(presented)
            .ok_or(AppError::from(Refusal::unauthorized()))?;
        require_client_certificate(
            parts.extensions.get::<crate::tls::PeerCertificate>(),
            state,
            &binding.node_id,
        )?;
        Ok(AgentAuth(binding))
    }
}

/// With `tls.client_ca_file`, an agent must present a client certificate (verified by the TLS
/// handshake) that names `node_id`: 401 without one, 403 for one naming another node.
pub fn require_client_certificate(
    peer: Option<&crate::tls::PeerCertificate>,
    state: &AppState,
    node_id: &str,
) -> Result<(), AppError> {
    if state
        .settings()
        .tls
        .as_ref()
        .is_none_or(|t| t.client_ca_file.is_none())
    {
        return Ok(());
    }
    match peer {
        Some(crate::tls::PeerCertificate(Some(cert))) if crate::tls::names_node(cert, node_id) => {
            Ok(())
        }
        Some(crate::tls::PeerCertificate(Some(_))) => Err(AppError::from(Refusal::forbidden(
            format!("the client certificate does not name node {node_id:?}"),
        ))),
        _ => Err(AppError::from(Refusal::unauthorized())),
    }
}
