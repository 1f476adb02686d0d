//! What every dashboard page shares. Each page is a partial (`*_partial.html`) wrapped in
//! `base.html`; `?partial=1` returns the partial alone, which `hapulse.js` fetches whenever the
//! server-sent event stream (`/ui/stream`) says the page's cluster changed.

use askama::Template;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use crate::access::auth::Principal;
use crate::http::error::AppError;

/// `?partial=1` asks for the fragment only.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// `1`: the partial alone, without `base.html` around it.
    #[serde(default)]
    pub partial: Option<u8>,
}

#[derive(Template)]
#[template(path = "base.html")]
struct Base<'a> {
    title: &'a str,
    /// Cluster whose changes refresh this page (`*`: any).
    scope: &'a str,
    body: &'a str,
    /// Who is looking (`None` on the login page).
    me: Option<&'a Principal>,
}

/// Renders a template; a failure is an internal error.
pub fn render(t: &impl Template) -> Result<String, AppError> {
    t.render().map_err(|e| AppError::Internal(e.into()))
}

/// The whole page: `body` (a rendered partial) inside `base.html`, titled `title`, refreshed
/// when `scope` changes (a cluster, `*` for any, `none` for never), shown to `me` (`None` on
/// the login page).
pub fn full_page(
    me: Option<&Principal>,
    title: &str,
    scope: &str,
    body: &str,
) -> Result<String, AppError> {
    render(&Base {
        title,
        scope,
        body,
        me,
    })
}

/// A page's answer: the partial alone when `q` asks for it, else the whole page.
pub fn respond(
    me: &Principal,
    q: &PageQuery,
    title: &str,
    scope: &str,
    body: String,
) -> Result<Response, AppError> {
    if q.partial == Some(1) {
        return Ok(Html(body).into_response());
    }
    let full = full_page(Some(me), title, scope, &body)?;
    Ok(Html(full).into_response())
}
