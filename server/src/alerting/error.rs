//! Why an alerting request (a silence, an acknowledgement) was refused or failed.

use crate::access::auth::AccessError;
use crate::refusal::Refusal;

/// Why a silence, a maintenance window or an acknowledgement was refused or failed; nothing was
/// changed.
#[derive(Debug, thiserror::Error)]
pub enum AlertingError {
    /// Refused: a malformed request (400, naming the field: `ends_at`, `rules`, `comment`), an
    /// alert or silence that is not open or not in the caller's clusters (404), a silence beyond
    /// the caller's clusters (403).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The caller's role is not enough (HTTP 403).
    #[error(transparent)]
    Access(#[from] AccessError),
    /// PostgreSQL failed (HTTP 503 when it is unavailable, else 500).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}
