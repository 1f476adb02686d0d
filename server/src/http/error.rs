//! HTTP errors: every failure becomes a JSON [`ApiError`] body with a stable code. Each domain's
//! error type is mapped here (and only here) to a status: its refusals by their kind, its
//! database failures to 503 (unavailable) or 500. Internal causes are logged, never shown:
//! clients see a safe message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hapulse_protocol::ApiError;

use crate::access::auth::AccessError;
use crate::agents::enrollment::EnrollmentError;
use crate::alerting::error::AlertingError;
use crate::failover::requests::FailoverError;
use crate::fleet::validate::IngestError;
use crate::refusal::{Refusal, RefusalKind};
use crate::switchover::error::SwitchoverError;

/// An error a handler returns.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400, 401, 403, 404 or 409 (by its kind): the request was refused for a reason the
    /// client can act on; the body carries its stable code, message and field.
    #[error(transparent)]
    Refused(#[from] Refusal),
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

impl From<IngestError> for AppError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Refused(r) => AppError::Refused(r),
            IngestError::Unavailable => AppError::DatabaseUnavailable,
        }
    }
}

impl From<AccessError> for AppError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::Refused(r) => AppError::Refused(r),
            AccessError::Database(e) => AppError::from(e),
            AccessError::Internal(e) => AppError::Internal(e),
        }
    }
}

impl From<EnrollmentError> for AppError {
    fn from(e: EnrollmentError) -> Self {
        match e {
            EnrollmentError::Refused(r) => AppError::Refused(r),
            EnrollmentError::Database(e) => AppError::from(e),
            EnrollmentError::Internal(e) => AppError::Internal(e),
        }
    }
}

impl From<SwitchoverError> for AppError {
    fn from(e: SwitchoverError) -> Self {
        match e {
            SwitchoverError::Refused(r) => AppError::Refused(r),
            SwitchoverError::Database(e) => AppError::from(e),
        }
    }
}

impl From<FailoverError> for AppError {
    fn from(e: FailoverError) -> Self {
        match e {
            FailoverError::Refused(r) => AppError::Refused(r),
            FailoverError::Run(e) => AppError::from(e),
            FailoverError::Database(e) => AppError::from(e),
        }
    }
}

impl From<AlertingError> for AppError {
    fn from(e: AlertingError) -> Self {
        match e {
            AlertingError::Refused(r) => AppError::Refused(r),
            AlertingError::Access(e) => AppError::from(e),
            AlertingError::Database(e) => AppError::from(e),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code, field) = match &self {
            AppError::Refused(r) => {
                let status = match r.kind {
                    RefusalKind::Invalid => StatusCode::BAD_REQUEST,
                    RefusalKind::Unauthorized => StatusCode::UNAUTHORIZED,
                    RefusalKind::Forbidden => StatusCode::FORBIDDEN,
                    RefusalKind::NotFound => StatusCode::NOT_FOUND,
                    RefusalKind::Conflict => StatusCode::CONFLICT,
                    RefusalKind::Throttled => StatusCode::TOO_MANY_REQUESTS,
                };
                (status, r.code, r.field.clone())
            }
            AppError::TooManyRequests(_) => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_requests", None)
            }
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
            leader: None,
            code: code.to_string(),
            message: self.to_string(),
            field,
        };
        (status, Json(body)).into_response()
    }
}
