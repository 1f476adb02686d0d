//! The audit page (`/audit`): the latest rows of the append-only audit log, for admins (the
//! authentication middleware keeps everyone else out).

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};

use crate::http::auth::Auth;
use crate::http::error::AppError;
use crate::http::extract::ApiQuery;
use crate::http::ui::page::{render, respond, PageQuery};
use crate::state::AppState;

#[derive(Template)]
#[template(path = "audit_partial.html")]
struct AuditPartial<'a> {
    now: DateTime<Utc>,
    entries: &'a [crate::access::audit::Entry],
}

/// `GET /audit`: the latest 500 audit rows (admins only).
pub async fn page(
    State(state): State<AppState>,
    Auth(me): Auth,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Response, AppError> {
    me.require_unscoped("the audit log")?;
    let entries = crate::access::audit::list(&state.db, 500, None).await?;
    let body = render(&AuditPartial {
        now: Utc::now(),
        entries: &entries,
    })?;
    respond(&me, &q, "Audit log", "none", body)
}
