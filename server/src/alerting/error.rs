//! Why an alerting request (a silence, an acknowledgement) was refused or failed.

use crate::access::auth::AccessError;

/// Why a silence, a maintenance window or an acknowledgement was refused or failed; nothing was
/// changed.
#[derive(Debug, thiserror::Error)]
pub enum AlertingError {
    /// The request is malformed (HTTP 400): `field` names the culprit.
    #[error("{message}")]
    Invalid {
        /// Stable code (`invalid_body`).
        code: &'static str,
        /// The request field at fault (`ends_at`, `rules`, `comment`).
        field: String,
        /// For people.
        message: String,
    },
    /// The alert or silence is not open / not current, or not in the caller's clusters (HTTP 404).
    #[error("{0} not found")]
    NotFound(String),
    /// The caller may not do this (HTTP 403).
    #[error("{0}")]
    Forbidden(String),
    /// The caller's role is not enough (HTTP 403).
    #[error(transparent)]
    Access(#[from] AccessError),
    /// PostgreSQL failed (HTTP 503 when it is unavailable, else 500).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl AlertingError {
    /// An [`AlertingError::Invalid`] naming `field`.
    pub fn invalid(
        code: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        AlertingError::Invalid {
            code,
            field: field.into(),
            message: message.into(),
        }
    }
}
