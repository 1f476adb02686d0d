//! Logging in and out: the login form (`/login`), the login itself (throttled, audited, a new
//! session and its cookie), and the logout (`/logout`) that ends the session.
//!
//! The login form carries a CSRF token before any session exists (a cookie and the same value in
//! a hidden field): another site's form cannot log a victim into the attacker's account, since
//! it can neither read the token nor send the cookie (`SameSite=Strict`).

use askama::Template;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use crate::access::sessions;
use crate::http::auth::{self, Auth};
use crate::http::client::ClientOrigin;
use crate::http::error::AppError;
use crate::http::extract::ApiQuery;
use crate::http::ui::page::{full_page, render};
use crate::state::AppState;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    next: &'a str,
    error: Option<&'a str>,
    csrf: &'a str,
}

/// Query of the login page: where to go after.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LoginQuery {
    #[serde(default)]
    next: Option<String>,
}

/// Only a path on this server: `/…`, never `//host` or a URL.
/// `next` when it is a path on this server, else `/`. A browser drops tabs and newlines from a
/// URL and reads a backslash as a slash, so `/\t/evil` would become `//evil`, another site:
/// only a path that still names this server once parsed the way a browser parses it (WHATWG,
/// through reqwest's `Url`) and holds no whitespace, control character or backslash is kept.
fn local_path(next: Option<&str>) -> &str {
    let Some(n) = next else { return "/" };
    let plain = n.starts_with('/')
        && !n
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\\');
    let base = "http://hapulse.invalid/";
    let same_origin = reqwest::Url::parse(base)
        .and_then(|b| b.join(n))
        .is_ok_and(|u| u.host_str() == Some("hapulse.invalid") && u.scheme() == "http");
    if plain && same_origin && !n.starts_with("//") {
        n
    } else {
        "/"
    }
}

/// The login page with `status`: nobody is looking yet, and it is never live. Carries the
/// browser's login CSRF token `csrf` (in the form and, again, in its cookie).
fn login_page(
    state: &AppState,
    origin: ClientOrigin,
    status: StatusCode,
    next: &str,
    error: Option<&str>,
    csrf: &str,
) -> Result<Response, AppError> {
    let body = render(&LoginPage { next, error, csrf })?;
    let full = full_page(None, "Log in", "none", &body)?;
    Ok((
        status,
        [(
            header::SET_COOKIE,
            auth::login_cookie_header(state, origin, csrf),
        )],
        Html(full),
    )
        .into_response())
}

/// The browser's login CSRF token, or a new one.
fn login_token(state: &AppState, headers: &HeaderMap) -> String {
    auth::login_cookie(state, headers)
        .map(str::to_string)
        .unwrap_or_else(crate::access::auth::random_secret)
}

/// `GET /login`: the login form.
pub async fn form(
    State(state): State<AppState>,
    origin: ClientOrigin,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<LoginQuery>,
) -> Result<Response, AppError> {
    let token = login_token(&state, &headers);
    login_page(
        &state,
        origin,
        StatusCode::OK,
        local_path(q.next.as_deref()),
        None,
        &token,
    )
}

/// The login form's fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginForm {
    name: String,
    password: String,
    #[serde(default)]
    next: Option<String>,
    /// The login CSRF token from the form; it must equal the browser's login cookie.
    #[serde(default)]
    csrf: String,
}

/// `POST /login`: checks the name and password (throttled per account and per address), opens a
/// session with a new id and sets its cookie; every attempt is audited.
pub async fn login(
    State(state): State<AppState>,
    origin: ClientOrigin,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, AppError> {
    let source = origin.source();
    let next = local_path(form.next.as_deref()).to_string();
    // Before anything is checked or counted: a form that did not come from this server's login
    // page (another site's, or a stale one) logs nobody in.
    let token = login_token(&state, &headers);
    let genuine = auth::login_cookie(&state, &headers)
        .is_some_and(|cookie| auth::same_secret(&form.csrf, cookie));
    if !genuine {
        return login_page(
            &state,
            origin,
            StatusCode::FORBIDDEN,
            &next,
            Some("This login form is stale or did not come from this server; try again."),
            &token,
        );
    }
    let outcome = sessions::login(&state, &form.name, &form.password, &source).await?;
    let audit = |outcome: &'static str| crate::access::audit::Audit {
        actor: "",
        role: None,
        source: Some(&source),
        action: "login",
        target: "",
        reason: None,
        outcome,
        detail: serde_json::json!({}),
    };
    // The name is recorded as given, cut short: it may be anything.
    let name: String = form.name.chars().take(64).collect();
    match outcome {
        Ok(session) => {
            crate::access::audit::Audit {
                actor: &name,
                target: &name,
                ..audit("succeeded")
            }
            .record(&state.db)
            .await?;
            tracing::info!(user = %name, source = %source, "login");
            Ok((
                [(
                    header::SET_COOKIE,
                    auth::session_cookie(&state, origin, Some(&session.id)),
                )],
                Redirect::to(&next),
            )
                .into_response())
        }
        Err(e) => {
            // Throttled and busy refusals are not one row each (strangers could grow the audit
            // log without end): the first refusal of a lockout is recorded, the rest counted
            // in the metrics and the log.
            let (status, message, outcome, recorded) = match e {
                sessions::LoginError::Throttled { first } => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many failed logins for this account or from this address; wait a few minutes.",
                    "refused: throttled",
                    first,
                ),
                sessions::LoginError::Busy => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Too many logins at once; try again in a moment.",
                    "refused: busy",
                    false,
                ),
                sessions::LoginError::Wrong => (
                    StatusCode::UNAUTHORIZED,
                    "Wrong name or password.",
                    "failed",
                    true,
                ),
            };
            if recorded {
                crate::access::audit::Audit {
                    actor: &name,
                    target: &name,
                    ..audit(outcome)
                }
                .record(&state.db)
                .await?;
            }
            tracing::warn!(user = %name, source = %source, outcome, "login refused");
            login_page(&state, origin, status, &next, Some(message), &token)
        }
    }
}

/// `POST /logout`: ends the session on the server and clears the cookie.
pub async fn logout(
    State(state): State<AppState>,
    origin: ClientOrigin,
    Auth(me): Auth,
) -> Result<Response, AppError> {
    if matches!(me.via, crate::access::auth::Via::Session { .. }) {
        sessions::logout(&state, &me).await?;
        crate::access::audit::Audit::by(&me, "logout", &me.name, "succeeded")
            .record(&state.db)
            .await?;
    }
    Ok((
        [(
            header::SET_COOKIE,
            auth::session_cookie(&state, origin, None),
        )],
        Redirect::to("/login"),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::local_path;

    #[test]
    fn only_a_path_of_this_server_is_a_place_to_go_after_login() {
        for ok in ["/", "/clusters/prod", "/alerts?x=1#y", "/nodes/a%2Fb"] {
            assert_eq!(local_path(Some(ok)), ok);
        }
        for bad in [
            "//evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "https://evil.example/",
            "evil.example",
            "/ /evil.example",
            "/\u{0}x",
            "",
        ] {
            assert_eq!(local_path(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(local_path(None), "/");
    }
}
