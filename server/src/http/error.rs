//! HTTP errors: every failure becomes a JSON [`ApiError`] body with a stable code. Internal
//! causes are logged, never shown: clients see a safe message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hapulse_protocol::ApiError;

/// An error a handler returns.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: the request is malformed; `field` names the culprit when one is.
    #[error("{message}")]
    BadRequest {
        /// Stable code (`invalid_body`, `invalid_query`, `protocol_version`, …).
        code: &'static str,
        /// For people.
        message: String,
        /// The field at fault.
        field: Option<String>,
    },
    /// 401: missing or wrong credentials.
    #[error("missing or invalid credentials")]
    Unauthorized,
    /// 403: authenticated, but not allowed to do this.
    #[error("{0}")]
    Forbidden(String),
    /// 409: the request conflicts with the current state; `code` says how.
    #[error("{message}")]
    Conflict {
        /// Stable code (`switchover_running`, `target_not_backup`, …).
        code: &'static str,
        /// For people.
        message: String,
    },
    /// 404: the named thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// 429: too many attempts; retry later.
    #[error("{0}")]
    TooManyRequests(String),
    /// 413: the body is larger than allowed.
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 415: the body is not JSON.
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// 503: PostgreSQL cannot be reached or the write path is overloaded; retry later. The
    /// cause was logged where it happened.
    #[error("database unavailable, retry later")]
    DatabaseUnavailable,
    /// 500: a bug or an unexpected failure; details only in the log.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl AppError {
    /// A 400 with a field.
    pub fn invalid(
        code: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        AppError::BadRequest {
            code,
            message: message.into(),
            field: Some(field.into()),
        }
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_) => {
                tracing::warn!(error = %e, "database unavailable");
                AppError::DatabaseUnavailable
            }
            sqlx::Error::Database(ref db)
                if db.code().is_some_and(|c| {
                    c.starts_with("08") || c == "57P01" || c == "57P03" || c == "25006"
                }) =>
            {
                // Connection exceptions, shutdown in progress, read-only transaction.
                tracing::warn!(error = %e, "database unavailable");
                AppError::DatabaseUnavailable
            }
            other => AppError::Internal(other.into()),
        }
    }
}

impl From<crate::fleet::validate::IngestError> for AppError {
    fn from(e: crate::fleet::validate::IngestError) -> Self {
        use crate::fleet::validate::IngestError;
        match e {
            IngestError::Invalid {
                code,
                message,
                field,
            } => AppError::BadRequest {
                code,
                message,
                field,
            },
            IngestError::Unavailable => AppError::DatabaseUnavailable,
        }
    }
}

impl From<crate::access::auth::AccessError> for AppError {
    fn from(e: crate::access::auth::AccessError) -> Self {
        use crate::access::auth::AccessError;
        match e {
            AccessError::Invalid {
                code,
                field,
                message,
            } => AppError::invalid(code, field, message),
            AccessError::Conflict { code, message } => AppError::Conflict { code, message },
            AccessError::NotFound(what) => AppError::NotFound(what),
            AccessError::Forbidden(why) => AppError::Forbidden(why),
            AccessError::Database(e) => AppError::from(e),
            AccessError::Internal(e) => AppError::Internal(e),
        }
    }
}

impl From<crate::switchover::error::SwitchoverError> for AppError {
    fn from(e: crate::switchover::error::SwitchoverError) -> Self {
        use crate::switchover::error::SwitchoverError;
        match e {
            SwitchoverError::Invalid {
                code,
                field,
                message,
            } => AppError::invalid(code, field, message),
            SwitchoverError::Conflict { code, message } => AppError::Conflict { code, message },
            SwitchoverError::NotFound(what) => AppError::NotFound(what),
            SwitchoverError::Database(e) => AppError::from(e),
        }
    }
}

impl From<crate::failover::requests::FailoverError> for AppError {
    fn from(e: crate::failover::requests::FailoverError) -> Self {
        use crate::failover::requests::FailoverError;
        match e {
            FailoverError::Invalid {
                code,
                field,
                message,
            } => AppError::invalid(code, field, message),
            FailoverError::Conflict { code, message } => AppError::Conflict { code, message },
            FailoverError::NotFound(what) => AppError::NotFound(what),
            FailoverError::Run(e) => AppError::from(e),
            FailoverError::Database(e) => AppError::from(e),
        }
    }
}

impl From<crate::agents::enrollment::EnrollmentError> for AppError {
    fn from(e: crate::agents::enrollment::EnrollmentError) -> Self {
        use crate::agents::enrollment::EnrollmentError;
        match e {
            EnrollmentError::Invalid {
                code,
                field,
                message,
            } => AppError::invalid(code, field, message),
            EnrollmentError::Unauthorized => AppError::Unauthorized,
            EnrollmentError::NotFound(what) => AppError::NotFound(what),
            EnrollmentError::Database(e) => AppError::from(e),
            EnrollmentError::Internal(e) => AppError::Internal(e),
        }
    }
}

impl From<crate::alerting::error::AlertingError> for AppError {
    fn from(e: crate::alerting::error::AlertingError) -> Self {
        use crate::alerting::error::AlertingError;
        match e {
            AlertingError::Invalid {
                code,
                field,
                message,
            } => AppError::invalid(code, field, message),
            AlertingError::NotFound(what) => AppError::NotFound(what),
            AlertingError::Forbidden(why) => AppError::Forbidden(why),
            AlertingError::Access(e) => AppError::from(e),
            AlertingError::Database(e) => AppError::from(e),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code, field) = match &self {
            AppError::BadRequest { code, field, .. } => {
                (StatusCode::BAD_REQUEST, *code, field.clone())
            }
            AppError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            AppError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", None),
            AppError::TooManyRequests(_) => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_requests", None)
            }
            AppError::Conflict { code, .. } => (StatusCode::CONFLICT, *code, None),
            AppError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", None),
            AppError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                None,
            ),
            AppError::DatabaseUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                None,
            ),
            AppError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", None)
            }
        };
        let body = ApiError {
            code: code.to_string(),
            message: self.to_string(),
            field,
        };
        (status, Json(body)).into_response()
    }
}
