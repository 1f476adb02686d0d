//! The alerts page (`/alerts`): open alerts and recent history, silences and maintenance
//! windows, the delivery log; and its forms: acknowledge an alert, open a silence or a
//! maintenance window, end one. A form answers with a redirect back to the page, or with the
//! page again saying what was wrong.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use crate::access::auth::{Principal, Role};
use crate::http::auth::Auth;
use crate::http::error::AppError;
use crate::http::extract::ApiQuery;
use crate::http::ui::page::{render, respond, PageQuery};
use crate::refusal::{Refusal, RefusalKind};
use crate::state::AppState;

#[derive(Template)]
#[template(path = "alerts_partial.html")]
struct AlertsPartial<'a> {
    now: DateTime<Utc>,
    alerts: &'a [crate::alerting::engine::Alert],
    silences: &'a [crate::alerting::silences::Silence],
    notifications: &'a [crate::alerting::notify::Notification],
    rules: &'a [&'static str],
    error: Option<String>,
    csrf: &'a str,
    /// May acknowledge and silence.
    operator: bool,
    /// May open and end maintenance windows.
    admin: bool,
}

/// `GET /alerts`: open alerts and recent history, silences and maintenance windows, and the
/// delivery log.
pub async fn page(
    State(state): State<AppState>,
    Auth(me): Auth,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Response, AppError> {
    alerts_page(&state, &me, &q, None).await
}

async fn alerts_page(
    state: &AppState,
    me: &Principal,
    q: &PageQuery,
    error: Option<String>,
) -> Result<Response, AppError> {
    let mut alerts = crate::alerting::engine::list(&state.db).await?;
    alerts.retain(|a| me.may_see(&a.cluster));
    let mut silences = crate::alerting::silences::current(&state.db).await?;
    silences.retain(|s| s.cluster.as_deref().is_none_or(|c| me.may_see(c)));
    let notifications =
        crate::alerting::notify::list(&state.db, &state.settings().alerts, me.clusters.as_deref())
            .await?;
    let body = render(&AlertsPartial {
        now: Utc::now(),
        alerts: &alerts,
        silences: &silences,
        notifications: &notifications,
        rules: &crate::alerting::rules::RULES,
        error,
        csrf: me.csrf(),
        operator: me.role >= Role::Operator,
        admin: me.role >= Role::Admin,
    })?;
    respond(me, q, "Alerts", "*", body)
}

/// A form's answer: back to the alerts page, or the page again with what was wrong (400).
async fn after_form(
    state: &AppState,
    me: &Principal,
    outcome: Result<(), AppError>,
) -> Result<Response, AppError> {
    match outcome {
        Ok(()) => Ok(Redirect::to("/alerts").into_response()),
        Err(AppError::Refused(r))
            if matches!(
                r.kind,
                RefusalKind::Invalid | RefusalKind::NotFound | RefusalKind::Forbidden
            ) =>
        {
            let status = if r.kind == RefusalKind::Forbidden {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::BAD_REQUEST
            };
            let page = alerts_page(state, me, &PageQuery::default(), Some(r.to_string())).await?;
            Ok((status, page).into_response())
        }
        Err(e) => Err(e),
    }
}

/// The acknowledgement form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckForm {
    comment: String,
}

/// `POST /alerts/{id}/ack`: acknowledges an open alert (no more repeats until it resolves).
pub async fn ack(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<Uuid>,
    Form(form): Form<AckForm>,
) -> Result<Response, AppError> {
    let outcome = crate::alerting::requests::acknowledge(&state, id, &form.comment, &me)
        .await
        .map_err(AppError::from);
    after_form(&state, &me, outcome).await
}

/// The silence form: empty matchers are left out; `hours` from now.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceForm {
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    node_id: String,
    #[serde(default)]
    rule: String,
    #[serde(default)]
    severity: String,
    #[serde(default)]
    maintenance: Option<String>,
    hours: f64,
    reason: String,
}

/// `POST /alerts/silences`: a silence or maintenance window from the alerts page.
pub async fn create_silence(
    State(state): State<AppState>,
    Auth(me): Auth,
    Form(form): Form<SilenceForm>,
) -> Result<Response, AppError> {
    let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
    let outcome = if !(form.hours > 0.0 && form.hours <= 24.0 * 90.0) {
        Err(AppError::from(Refusal::invalid(
            "invalid_body",
            "hours",
            "a duration from 0 to 2160 hours (90 days)",
        )))
    } else {
        let silence = crate::alerting::silences::NewSilence {
            cluster: some(&form.cluster),
            node_id: some(&form.node_id),
            rules: some(&form.rule).into_iter().collect(),
            severity: some(&form.severity),
            maintenance: form.maintenance.is_some(),
            starts_at: None,
            ends_at: Utc::now() + chrono::Duration::seconds((form.hours * 3600.0) as i64),
            author: String::new(),
            reason: form.reason,
        };
        crate::alerting::requests::silence(&state, silence, &me)
            .await
            .map(|_| ())
            .map_err(AppError::from)
    };
    after_form(&state, &me, outcome).await
}

/// `POST /alerts/silences/{id}/end`: ends a silence now.
pub async fn end_silence(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<Uuid>,
) -> Result<Response, AppError> {
    let outcome = crate::alerting::requests::end_silence(&state, id, &me)
        .await
        .map_err(AppError::from);
    after_form(&state, &me, outcome).await
}
