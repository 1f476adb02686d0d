//! A cluster's view as of now, with its epoch (the fencing token stored in `clusters`).

use chrono::Utc;

use crate::fleet::view::{self, ClusterView};
use crate::state::AppState;

/// The view of cluster `name` from live state, with the epoch stored for it (0 before its
/// first switchover); `None` when no node belongs to it.
pub async fn with_epoch(state: &AppState, name: &str) -> Result<Option<ClusterView>, sqlx::Error> {
    let Some(mut view) = view::cluster_view(&state.live(), name, Utc::now()) else {
        return Ok(None);
    };
    view.epoch = sqlx::query_scalar::<_, i64>("SELECT epoch FROM clusters WHERE name = $1")
        .bind(name)
        .fetch_optional(&state.db)
        .await?
        .unwrap_or(0) as u64;
    Ok(Some(view))
}
