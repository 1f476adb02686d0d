//! Switchover pages: the preview of a planned switchover with its confirmation form
//! (`/clusters/{cluster}/switchover`), the confirmed form that starts the run, and a run's
//! progress (`/switchovers/{id}`), live while it runs.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use crate::access::auth::Principal;
use crate::access::sessions;
use crate::http::auth::Auth;
use crate::http::error::AppError;
use crate::http::extract::ApiQuery;
use crate::http::ui::filters;
use crate::http::ui::page::{full_page, render, respond, PageQuery};
use crate::refusal::{Refusal, RefusalKind};
use crate::state::AppState;
use crate::switchover::error::SwitchoverError;
use crate::switchover::plan::{cluster_view, plan as plan_switchover, Plan, SwitchoverRequest};
use crate::switchover::store::{self as switchovers, Switchover};

#[derive(Template)]
#[template(path = "switchover_preview_partial.html")]
struct SwitchoverPreviewPartial<'a> {
    now: DateTime<Utc>,
    cluster: &'a str,
    plan: Option<Plan>,
    error: Option<String>,
    reason: &'a str,
    csrf: &'a str,
    /// The password must be given again (`auth.reauth_window` has passed).
    needs_password: bool,
}

#[derive(Template)]
#[template(path = "switchover_partial.html")]
struct SwitchoverPartial<'a> {
    now: DateTime<Utc>,
    sw: &'a Switchover,
}

/// Query of the switchover preview.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewQuery {
    instance: Option<String>,
    target: String,
}

/// The confirmation form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmForm {
    instance: String,
    target: String,
    reason: String,
    confirm: String,
    /// The user's password, unless given within `auth.reauth_window`.
    #[serde(default)]
    password: String,
}

/// The preview page and its status: 200, 400 when `error` says what the confirmation lacked,
/// 409 when preflight refuses.
async fn preview_page(
    state: &AppState,
    me: &Principal,
    cluster: &str,
    instance: Option<String>,
    target: String,
    reason: &str,
    error: Option<String>,
) -> Result<(StatusCode, Response), AppError> {
    let req = SwitchoverRequest {
        target_node: target,
        instance,
        reason: "preview".into(),
        dry_run: true,
        max_lag_bytes: None,
        scheduled_at: None,
    };
    let view = cluster_view(state, cluster).await?;
    let (plan, status, error) = match plan_switchover(&view, &req) {
        Ok(plan) => (
            Some(plan),
            if error.is_some() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            },
            error,
        ),
        Err(e) => (
            None,
            StatusCode::CONFLICT,
            Some(format!("Preflight refuses: {e}")),
        ),
    };
    let body = render(&SwitchoverPreviewPartial {
        now: Utc::now(),
        cluster,
        plan,
        error,
        reason,
        csrf: me.csrf(),
        needs_password: !sessions::recently_authenticated(state, me),
    })?;
    // Not live (scope `none`): the page holds a form to fill in.
    let full = full_page(Some(me), &format!("Switchover in {cluster}"), "none", &body)?;
    Ok((status, Html(full).into_response()))
}

/// `GET /clusters/{cluster}/switchover?instance=&target=`: the preview (plan, lag, data at
/// risk, expected time) and the confirmation form, or why preflight refuses.
pub async fn preview(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(cluster): Path<String>,
    ApiQuery(q): ApiQuery<PreviewQuery>,
) -> Result<Response, AppError> {
    let (status, page) =
        preview_page(&state, &me, &cluster, q.instance, q.target, "", None).await?;
    Ok((status, page).into_response())
}

/// `POST /clusters/{cluster}/switchover`: the confirmed form; the target's name must be typed
/// again. Redirects to the progress page.
pub async fn confirm(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(cluster): Path<String>,
    Form(form): Form<ConfirmForm>,
) -> Result<Response, AppError> {
    let confirmed = form.confirm.trim() == form.target;
    let authenticated = sessions::recently_authenticated(&state, &me)
        || (confirmed && sessions::reauthenticate(&state, &me, &form.password).await?);
    if !confirmed || !authenticated {
        let message = if confirmed {
            "Your password, again: a switchover needs it.".to_string()
        } else {
            format!("Type {} exactly to confirm.", form.target)
        };
        let (status, page) = preview_page(
            &state,
            &me,
            &cluster,
            Some(form.instance),
            form.target,
            &form.reason,
            Some(message),
        )
        .await?;
        return Ok((status, page).into_response());
    }
    let req = SwitchoverRequest {
        target_node: form.target.clone(),
        instance: Some(form.instance.clone()),
        reason: form.reason.clone(),
        dry_run: false,
        max_lag_bytes: None,
        scheduled_at: None,
    };
    match crate::switchover::request::request_switchover(&state, &cluster, req, &me).await {
        Ok(accepted) => match accepted.id {
            Some(id) => Ok(Redirect::to(&format!("/switchovers/{id}")).into_response()),
            None => Err(AppError::Internal(anyhow::anyhow!(
                "accepted switchover without id"
            ))),
        },
        Err(SwitchoverError::Refused(e))
            if matches!(
                e.kind,
                RefusalKind::Conflict | RefusalKind::Invalid | RefusalKind::NotFound
            ) =>
        {
            let (status, page) = preview_page(
                &state,
                &me,
                &cluster,
                Some(form.instance),
                form.target,
                &form.reason,
                Some(e.to_string()),
            )
            .await?;
            Ok((status, page).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

/// `GET /switchovers/{id}`: steps and their states, live while it runs.
pub async fn progress(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<Uuid>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Response, AppError> {
    let sw = switchovers::get(&state.db, id)
        .await?
        .filter(|s| me.may_see(&s.cluster))
        .ok_or_else(|| AppError::from(Refusal::not_found(format!("switchover {id}"))))?;
    let body = render(&SwitchoverPartial {
        now: Utc::now(),
        sw: &sw,
    })?;
    respond(&me, &q, &format!("Switchover {id}"), &sw.cluster, body)
}
