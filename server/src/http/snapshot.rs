//! Builders of the shared views ([`crate::shared_views`]): the fleet behind the overview page and
//! `GET /api/v1/clusters`, and each cluster page's stored parts.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;

use crate::fleet::store::{self as db, EventFilter};
use crate::fleet::view;
use crate::http::error::AppError;
use crate::shared_views::{ClusterExtras, Fleet};
use crate::state::AppState;

/// The fleet's shared view (see [`crate::shared_views::Snapshots::fleet`]).
pub async fn fleet(state: &AppState) -> Result<Arc<Fleet>, AppError> {
    state.snapshots.fleet(|| build_fleet(state)).await
}

/// Cluster `name`'s shared page parts (see [`crate::shared_views::Snapshots::cluster`]); the
/// caller has checked that the cluster exists.
pub async fn cluster(state: &AppState, name: &str) -> Result<Arc<ClusterExtras>, AppError> {
    state
        .snapshots
        .cluster(name, || build_cluster(state, name))
        .await
}

async fn build_fleet(state: &AppState) -> Result<Fleet, AppError> {
    let epochs: Vec<(String, i64)> = sqlx::query_as("SELECT name, epoch FROM clusters")
        .fetch_all(&state.db)
        .await?;
    let windows = crate::alerting::silences::current(&state.db).await?;
    // Walking every node is CPU work: off the runtime threads that answer heartbeats.
    let state = state.clone();
    let (now, mut clusters) = tokio::task::spawn_blocking(move || {
        let now = Utc::now();
        (now, view::clusters(&state.live(), now))
    })
    .await
    .map_err(|e| AppError::Internal(e.into()))?;
    let epochs: HashMap<String, i64> = epochs.into_iter().collect();
    for c in &mut clusters {
        c.epoch = epochs.get(&c.name).map_or(0, |e| *e as u64);
    }
    Ok(Fleet::new(now, clusters, windows))
}

async fn build_cluster(state: &AppState, cluster: &str) -> Result<ClusterExtras, AppError> {
    let filter = EventFilter {
        cluster: Some(cluster.to_string()),
        limit: 50,
        ..Default::default()
    };
    let events = db::list_events(&state.db, &filter).await?;
    let windows = crate::alerting::silences::current(&state.db).await?;
    let availability = crate::history::availability::of_cluster(&state.db, cluster, Utc::now())
        .await?
        .unwrap_or_default();
    let failover = crate::failover::requests::load_status(state, cluster).await?;
    Ok(ClusterExtras {
        events,
        windows,
        availability,
        failover,
    })
}
