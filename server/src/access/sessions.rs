//! Sessions: login (throttled per account and per source), re-authentication before a
//! dashboard switchover, logout.

use chrono::Utc;
use sqlx::Row;

use crate::access::auth::{
    decoy_hash, digest, random_secret, verify_password, AccessError, Principal, Via,
};
use crate::state::AppState;

/// Why a login failed.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginError {
    /// Too many recent failures for this account from this address, for this account from
    /// anywhere, or from this address: try later. `first`: the first refusal of its lockout
    /// (audited; later ones only counted).
    Throttled {
        /// The first refusal since the limit was reached.
        first: bool,
    },
    /// Too many password checks run at once: try again in a moment.
    Busy,
    /// Wrong name or password (which one is not said).
    Wrong,
}

/// Longest wait for a free password check before a login is refused as busy.
const CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// A new session.
pub struct NewSession {
    /// The session id (the cookie's value).
    pub id: String,
}

/// Checks a name and password (throttled per account and address, per account, per address;
/// the attempt reserved before the check, at most a few checks at once) and opens a session.
pub async fn login(
    state: &AppState,
    name: &str,
    password: &str,
    source: &str,
) -> Result<Result<NewSession, LoginError>, AccessError> {
    use crate::access::throttle::{source_key, Refused};
    let a = &state.settings().auth;
    let source = source_key(source);
    let limits = [
        (
            format!("pair:{name}|{source}"),
            a.login_max_failures_per_account,
        ),
        (
            format!("user:{name}"),
            a.login_max_failures_per_account_total,
        ),
        (format!("addr:{source}"), a.login_max_failures_per_source),
    ];
    let throttle = &state.login_throttle;
    let reservation = match throttle.reserve(&limits, a.login_window) {
        Ok(r) => r,
        Err(Refused::Throttled { first }) => return Ok(Err(LoginError::Throttled { first })),
        Err(Refused::Busy) => return Ok(Err(LoginError::Busy)),
    };
    let Ok(_permit) = throttle.check_permit(CHECK_WAIT).await else {
        throttle.succeeded(reservation);
        return Ok(Err(LoginError::Busy));
    };
    let row =
        sqlx::query("SELECT password_hash FROM users WHERE name = $1 AND disabled_at IS NULL")
            .bind(name)
            .fetch_optional(&state.db)
            .await?;
    let hash: Option<String> = row.map(|r| r.try_get("password_hash")).transpose()?;
    let password = password.to_string();
    let ok = tokio::task::spawn_blocking(move || {
        let matches = verify_password(hash.as_deref().unwrap_or(decoy_hash()), &password);
        matches && hash.is_some()
    })
    .await
    .map_err(|e| AccessError::Internal(e.into()))?;
    if !ok {
        // The reservation stays: a failure of each key.
        return Ok(Err(LoginError::Wrong));
    }
    throttle.succeeded(reservation);
    let id = random_secret();
    sqlx::query(
        "INSERT INTO sessions (id_hash, user_name, csrf_token, source) VALUES ($1, $2, $3, $4)",
    )
    .bind(digest(&id))
    .bind(name)
    .bind(random_secret())
    .bind(source)
    .execute(&state.db)
    .await?;
    Ok(Ok(NewSession { id }))
}

/// Checks the password of the session's user again (before a switchover confirmed on the
/// dashboard) and records when; throttled like a login.
pub async fn reauthenticate(
    state: &AppState,
    principal: &Principal,
    password: &str,
) -> Result<bool, AccessError> {
    let Via::Session { id_hash, .. } = &principal.via else {
        return Ok(false);
    };
    let outcome = login(state, &principal.name, password, &principal.source).await?;
    let Ok(fresh) = outcome else { return Ok(false) };
    // `login` opened a second session: end it at once; the caller's session is re-authenticated.
    sqlx::query("UPDATE sessions SET ended_at = now() WHERE id_hash = $1")
        .bind(digest(&fresh.id))
        .execute(&state.db)
        .await?;
    sqlx::query("UPDATE sessions SET reauth_at = now() WHERE id_hash = $1")
        .bind(id_hash)
        .execute(&state.db)
        .await?;
    Ok(true)
}

/// Ends the principal's session (logout). Other principals have nothing to end.
pub async fn logout(state: &AppState, principal: &Principal) -> Result<(), AccessError> {
    if let Via::Session { id_hash, .. } = &principal.via {
        sqlx::query("UPDATE sessions SET ended_at = now() WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&state.db)
            .await?;
    }
    Ok(())
}

/// 403 `password_needed` when a session (not an API token) whose password was not given within
/// `auth.reauth_window` asks for a write that moves a master through the REST API: the same
/// re-check the dashboard makes, so a stolen cookie and CSRF token cannot skip it.
pub fn require_recent_password(
    state: &AppState,
    principal: &Principal,
) -> Result<(), crate::refusal::Refusal> {
    match principal.via {
        Via::Session { .. } if !recently_authenticated(state, principal) => {
            Err(crate::refusal::Refusal {
                kind: crate::refusal::RefusalKind::Forbidden,
                code: "password_needed",
                message: "moving a master with a session needs your password again: confirm on the dashboard, or use an API token".into(),
                field: None,
            })
        }
        _ => Ok(()),
    }
}

/// Is the session's last password entry recent enough for a switchover (`auth.reauth_window`)?
pub fn recently_authenticated(state: &AppState, principal: &Principal) -> bool {
    match &principal.via {
        Via::Session { reauth_at, .. } => {
            Utc::now() - *reauth_at
                <= chrono::Duration::from_std(state.settings().auth.reauth_window)
                    .unwrap_or_default()
        }
        _ => false,
    }
}
