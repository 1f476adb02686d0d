//! Why a switchover (or a failover run) was refused or could not be stored.

/// Why a switchover request, a failover run or a cancellation was refused or failed. Nothing
/// was changed when it is returned.
#[derive(Debug, thiserror::Error)]
pub enum SwitchoverError {
    /// The request is malformed (HTTP 400): `field` names the culprit.
    #[error("{message}")]
    Invalid {
        /// Stable code (`invalid_body`).
        code: &'static str,
        /// The request field at fault (`target_node`).
        field: String,
        /// For people.
        message: String,
    },
    /// Preflight refused it (HTTP 409): `code` says why (`switchover_running`,
    /// `target_not_backup`, `cluster_in_maintenance`, …).
    #[error("{message}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// For people.
        message: String,
    },
    /// The cluster, node or switchover does not exist (HTTP 404).
    #[error("{0} not found")]
    NotFound(String),
    /// PostgreSQL failed (HTTP 503 when it is unavailable, else 500).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl SwitchoverError {
    /// A [`SwitchoverError::Invalid`] naming `field`.
    pub fn invalid(
        code: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        SwitchoverError::Invalid {
            code,
            field: field.into(),
            message: message.into(),
        }
    }

    /// A [`SwitchoverError::Conflict`] with its stable `code`.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        SwitchoverError::Conflict {
            code,
            message: message.into(),
        }
    }
}
