//! The failover forms on the cluster and progress pages: a person confirms the failover the
//! arbiter proposes (`/clusters/{cluster}/failover`), or acknowledges an automatic one
//! (`/switchovers/{id}/acknowledge`); both answer with the run's progress page.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use uuid::Uuid;

use crate::access::sessions;
use crate::http::auth::Auth;
use crate::http::error::AppError;
use crate::refusal::Refusal;
use crate::state::AppState;

/// The failover confirmation form on the cluster page.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverForm {
    target: String,
    reason: String,
    /// A checkbox: present when ticked.
    #[serde(default)]
    accept_data_loss: Option<String>,
    /// The VRRP instance the proposal is about (several per cluster: one form each).
    #[serde(default)]
    instance: Option<String>,
    /// The user's password, unless given within `auth.reauth_window`.
    #[serde(default)]
    password: String,
}

/// `POST /clusters/{cluster}/failover`: a person confirms the proposed failover (password
/// again unless given recently). Redirects to its progress page; a refusal says why.
pub async fn confirm(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(cluster): Path<String>,
    Form(form): Form<FailoverForm>,
) -> Result<Response, AppError> {
    let authenticated = sessions::recently_authenticated(&state, &me)
        || sessions::reauthenticate(&state, &me, &form.password).await?;
    if !authenticated {
        return Err(AppError::from(Refusal::forbidden(
            "your password, again: a failover needs it",
        )));
    }
    let req = crate::failover::requests::FailoverRequest {
        target_node: form.target,
        reason: form.reason,
        accept_data_loss: form.accept_data_loss.is_some(),
        instance: form.instance,
    };
    let id = crate::failover::requests::request_failover(&state, &cluster, &req, &me).await?;
    Ok(Redirect::to(&format!("/switchovers/{id}")).into_response())
}

/// The acknowledgement form of an automatic failover.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverAckForm {
    reason: String,
}

/// `POST /switchovers/{id}/acknowledge`: acknowledges an automatic failover (lifts its
/// anti-flapping hold) and returns to its progress page.
pub async fn acknowledge(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<Uuid>,
    Form(form): Form<FailoverAckForm>,
) -> Result<Response, AppError> {
    crate::failover::requests::acknowledge_failover(&state, id, &form.reason, &me).await?;
    Ok(Redirect::to(&format!("/switchovers/{id}")).into_response())
}
