//! Refusals: a request the server will not carry out, for a reason its caller can act on — a
//! malformed field, a missing object, a state that does not allow it, a missing permission.
//! Every domain's error type carries a [`Refusal`] beside its own failures (a database that
//! cannot be reached, a bug); the HTTP layer turns it into the stable `{code, message, field}`
//! body with the status its [`RefusalKind`] names. Nothing was changed when one is returned.

use std::fmt::Display;

/// What kind of refusal, and so which HTTP status answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The request is malformed (HTTP 400).
    Invalid,
    /// Credentials are missing or wrong (HTTP 401).
    Unauthorized,
    /// The caller may not do this (HTTP 403).
    Forbidden,
    /// What the request names does not exist, or not for this caller (HTTP 404).
    NotFound,
    /// The current state does not allow it (HTTP 409).
    Conflict,
    /// Too many failed attempts from this caller: try later (HTTP 429).
    Throttled,
}

/// A request refused, with a stable machine-readable code and a message safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// Which kind (the HTTP status).
    pub kind: RefusalKind,
    /// Stable code: `invalid_body`, `target_not_backup`, `cluster_in_maintenance`, `not_found`, …
    pub code: &'static str,
    /// For people.
    pub message: String,
    /// The request field at fault (`target_node`, `keepalived.instances[0].vips[1]`), when one
    /// is to blame.
    pub field: Option<String>,
}

impl Refusal {
    /// The request's `field` is not acceptable: `message` says what would be.
    pub fn invalid(
        code: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Refusal {
            kind: RefusalKind::Invalid,
            code,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// The current state does not allow the request; `code` says why.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            kind: RefusalKind::Conflict,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// `what` (`cluster "prod"`, `switchover 7c…`) does not exist: "`what` not found".
    pub fn not_found(what: impl Display) -> Self {
        Refusal {
            kind: RefusalKind::NotFound,
            code: "not_found",
            message: format!("{what} not found"),
            field: None,
        }
    }

    /// The caller may not do this; `message` says what it would need.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Refusal {
            kind: RefusalKind::Forbidden,
            code: "forbidden",
            message: message.into(),
            field: None,
        }
    }

    /// Too many failed attempts recently (code `throttled`).
    pub fn throttled(message: impl Into<String>) -> Self {
        Refusal {
            kind: RefusalKind::Throttled,
            code: "throttled",
            message: message.into(),
            field: None,
        }
    }

    /// Credentials are missing or wrong (which one is not said).
    pub fn unauthorized() -> Self {
        Refusal {
            kind: RefusalKind::Unauthorized,
            code: "unauthorized",
            message: "missing or invalid credentials".into(),
            field: None,
        }
    }
}
