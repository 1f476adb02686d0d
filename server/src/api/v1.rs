//! `/api/v1`: the read API. Paths and field names are public: scripts depend on them.

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ApiQuery;
use crate::db::{self, Event, EventFilter};
use crate::error::AppError;
use crate::state::AppState;
use crate::view::{self, ClusterView, NodeView};

/// Body of `GET /api/v1/clusters`.
#[derive(Serialize)]
pub struct ClusterList {
    /// Every cluster with at least one node, by name.
    pub clusters: Vec<ClusterView>,
}

/// `GET /api/v1/clusters`: every cluster with its health verdict, instances, masters and VIP
/// holders.
pub async fn clusters(State(state): State<AppState>) -> Json<ClusterList> {
    let clusters = view::clusters(&state.live(), Utc::now());
    Json(ClusterList { clusters })
}

/// `GET /api/v1/clusters/{cluster}`: one cluster; 404 when no node belongs to it.
pub async fn cluster(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ClusterView>, AppError> {
    view::cluster_view(&state.live(), &name, Utc::now())
        .map(Json)
        .ok_or_else(|| AppError::NotFound(format!("cluster {name:?}")))
}

/// `GET /api/v1/nodes/{node_id}`: one node with its instances; 404 when unknown.
pub async fn node(
    State(state): State<AppState>,
    Path(node_id): Path<String>,
) -> Result<Json<NodeView>, AppError> {
    view::node_view(&state.live(), &node_id, Utc::now())
        .map(Json)
        .ok_or_else(|| AppError::NotFound(format!("node {node_id:?}")))
}

/// Query of `GET /api/v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only this cluster.
    pub cluster: Option<String>,
    /// Only this node.
    pub node: Option<String>,
    /// Only events at or after this RFC 3339 time (`2026-11-21T10:00:00Z`).
    pub since: Option<DateTime<Utc>>,
    /// Most events, 1..=1000 (default 100).
    pub limit: Option<i64>,
}

/// Body of `GET /api/v1/events`.
#[derive(Serialize)]
pub struct EventList {
    /// Matching events, newest first.
    pub events: Vec<Event>,
}

/// `GET /api/v1/events?cluster=&node=&since=&limit=`: stored events, newest first.
pub async fn events(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<EventList>, AppError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(AppError::BadRequest {
            code: "invalid_query",
            message: "limit must be 1..=1000".into(),
            field: Some("limit".into()),
        });
    }
    let filter = EventFilter {
        cluster: q.cluster,
        node_id: q.node,
        since: q.since,
        limit,
    };
    Ok(Json(EventList {
        events: db::list_events(&state.db, &filter).await?,
    }))
}
