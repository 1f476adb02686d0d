//! Why a switchover (or a failover run) was refused or could not be stored.

use crate::refusal::Refusal;

/// Why a switchover request, a failover run or a cancellation was refused or failed. Nothing
/// was changed when it is returned.
#[derive(Debug, thiserror::Error)]
pub enum SwitchoverError {
    /// Refused: a malformed request (400, naming the field), an unknown cluster, node or
    /// switchover (404), or preflight (409, with its code: `switchover_running`,
    /// `target_not_backup`, `cluster_in_maintenance`, …).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// PostgreSQL failed (HTTP 503 when it is unavailable, else 500).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}
