//! What people ask of alerting (shared by the REST API and the dashboard): acknowledging an
//! alert, creating a silence or maintenance window, ending one. Each is checked against the
//! caller's role and clusters, audited, and announced to the dashboards.

use uuid::Uuid;

use crate::access::audit::Audit;
use crate::access::auth::{Principal, Role};
use crate::alerting::error::AlertingError;
use crate::alerting::silences::{self, NewSilence, Silence};
use crate::refusal::Refusal;
use crate::state::AppState;

/// Acknowledges open alert `id` for `who` and audits it. 400 (field `comment`) without a
/// one-line comment; 404 when it is not open or not in `who`'s clusters.
pub async fn acknowledge(
    state: &AppState,
    id: Uuid,
    comment: &str,
    who: &Principal,
) -> Result<(), AlertingError> {
    if comment.trim().is_empty() || comment.len() > 1000 || comment.chars().any(char::is_control) {
        return Err(AlertingError::from(Refusal::invalid(
            "invalid_body",
            "comment",
            "a comment is required, one line of at most 1000 bytes",
        )));
    }
    let cluster: Option<String> = sqlx::query_scalar("SELECT cluster FROM alerts WHERE id = $1")
        .bind(id)
        .fetch_optional(&state.db)
        .await?;
    if !cluster.is_some_and(|c| who.may_see(&c)) {
        return Err(AlertingError::from(Refusal::not_found(format!(
            "open alert {id}"
        ))));
    }
    crate::alerting::engine::acknowledge(&state.db, id, &who.name, comment).await?;
    Audit::by(who, "alert_ack", &id.to_string(), "acknowledged")
        .reason(comment)
        .record(&state.db)
        .await?;
    Ok(())
}

/// Stores a silence or maintenance window for `who`, audits it and tells the dashboards. Errors
/// as [`silences::create`]; 403 for a maintenance window without the admin role, or a
/// silence reaching beyond `who`'s clusters.
pub async fn silence(
    state: &AppState,
    mut new: NewSilence,
    who: &Principal,
) -> Result<Silence, AlertingError> {
    if new.maintenance {
        who.require(Role::Admin)?;
    }
    if who.clusters.is_some() && !new.cluster.as_deref().is_some_and(|c| who.may_see(c)) {
        return Err(AlertingError::from(Refusal::forbidden(format!(
            "{} may only silence its own clusters: name one",
            who.name
        ))));
    }
    new.author = who.name.clone();
    let silence = silences::create(&state.db, &new, None).await?;
    let id = silence.id.to_string();
    Audit::by(
        who,
        if new.maintenance { "maintenance" } else { "silence" },
        &id,
        "created",
    )
    .reason(&new.reason)
    .detail(serde_json::json!({ "cluster": new.cluster, "node_id": new.node_id, "rules": new.rules, "ends_at": new.ends_at }))
    .record(&state.db)
    .await?;
    state.announce(silence.cluster.as_deref().unwrap_or("*"));
    Ok(silence)
}

/// Ends silence `id` now for `who`, and audits it. 404 when it is not current; 403 for a
/// maintenance window without the admin role.
pub async fn end_silence(state: &AppState, id: Uuid, who: &Principal) -> Result<(), AlertingError> {
    let current = silences::current(&state.db).await?;
    let Some(s) = current
        .iter()
        .find(|s| s.id == id && s.cluster.as_deref().is_none_or(|c| who.may_see(c)))
    else {
        return Err(AlertingError::from(Refusal::not_found(format!(
            "silence {id}"
        ))));
    };
    if s.maintenance {
        who.require(Role::Admin)?;
    }
    if s.cluster.is_none() {
        who.require_unscoped("a silence that names no cluster")?;
    }
    silences::expire(&state.db, id).await?;
    Audit::by(who, "silence_expire", &id.to_string(), "expired")
        .record(&state.db)
        .await?;
    state.announce(s.cluster.as_deref().unwrap_or("*"));
    Ok(())
}
