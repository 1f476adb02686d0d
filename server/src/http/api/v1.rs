//! `/api/v1`: the read API. Paths and field names are public: scripts depend on them.

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::access::auth::Principal;
use crate::alerting::requests;
use crate::fleet::store::{self as db, Event, EventFilter};
use crate::fleet::view::{self, ClusterView, NodeView};
use crate::history::series::{self, Metric, Point, SeriesQuery, Source};
use crate::http::auth::Auth;
use crate::http::error::AppError;
use crate::http::extract::{ApiJson, ApiQuery};
use crate::refusal::Refusal;
use crate::state::AppState;
use crate::switchover::plan::SwitchoverRequest;
use crate::switchover::request::{self, SwitchoverAccepted};
use crate::switchover::store::{self as switchovers, Switchover};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

/// Body of `GET /api/v1/clusters`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ClusterList<'a> {
    /// A page of the clusters with at least one node, by name (each a [`ClusterView`],
    /// serialized once per shared copy: [`crate::shared_views::Fleet::clusters_json`]).
    #[schema(value_type = Vec<ClusterView>)]
    pub clusters: Vec<&'a serde_json::value::RawValue>,
    /// Clusters the caller may see, on every page.
    pub total: usize,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
    /// When the views were built: heartbeat ages are as of then (at most a second old).
    pub generated_at: DateTime<Utc>,
}

/// Default page size of `GET /api/v1/clusters`.
pub const CLUSTER_PAGE_DEFAULT: usize = 100;
/// Largest page size of `GET /api/v1/clusters`.
pub const CLUSTER_PAGE_MAX: usize = 1000;

/// Query of `GET /api/v1/clusters`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterListQuery {
    /// Clusters per page, 1 to 1000 (default 100).
    pub limit: Option<usize>,
    /// Only clusters whose name sorts after this one (the previous page's `next_after`).
    pub after: Option<String>,
}

/// `GET /api/v1/clusters?limit=&after=`: clusters with their health verdict, instances,
/// masters and VIP holders, by name, a page at a time (400 for a limit outside 1–1000).
pub async fn clusters(
    State(state): State<AppState>,
    Auth(me): Auth,
    ApiQuery(q): ApiQuery<ClusterListQuery>,
) -> Result<Response, AppError> {
    let limit = q.limit.unwrap_or(CLUSTER_PAGE_DEFAULT);
    if !(1..=CLUSTER_PAGE_MAX).contains(&limit) {
        return Err(AppError::from(Refusal::invalid(
            "invalid_query",
            "limit",
            format!("1 to {CLUSTER_PAGE_MAX}"),
        )));
    }
    let fleet = crate::http::snapshot::fleet(&state).await?;
    let json = fleet.clusters_json().await.map_err(AppError::Internal)?;
    let visible = || {
        fleet
            .clusters
            .iter()
            .zip(json)
            .filter(|(c, _)| me.may_see(&c.name))
    };
    let total = visible().count();
    let mut page: Vec<_> = visible()
        .filter(|(c, _)| {
            q.after
                .as_deref()
                .is_none_or(|after| c.name.as_str() > after)
        })
        .take(limit + 1)
        .collect();
    let next_after = (page.len() > limit).then(|| {
        page.truncate(limit);
        page.last().map(|(c, _)| c.name.clone())
    });
    Ok(Json(ClusterList {
        clusters: page.into_iter().map(|(_, json)| &**json).collect(),
        total,
        next_after: next_after.flatten(),
        generated_at: fleet.now,
    })
    .into_response())
}

/// `GET /api/v1/clusters/{cluster}`: one cluster; 404 when no node belongs to it.
pub async fn cluster(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ClusterView>, AppError> {
    crate::fleet::clusters::with_epoch(&state, &name)
        .await?
        .map(Json)
        .ok_or_else(|| AppError::from(Refusal::not_found(format!("cluster {name:?}"))))
}

/// `GET /api/v1/clusters/{cluster}/availability`: uptime with and without a MASTER, failures,
/// MTTF and MTTR over 24 h, 7 d and 30 d (see [`crate::history::availability`]); 404 for a cluster never
/// seen.
pub async fn availability(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<AvailabilityList>, AppError> {
    let windows = crate::history::availability::of_cluster(&state.db, &name, Utc::now())
        .await?
        .ok_or_else(|| AppError::from(Refusal::not_found(format!("cluster {name:?}"))))?;
    Ok(Json(AvailabilityList {
        cluster: name,
        windows,
    }))
}

/// Body of `GET /api/v1/clusters/{cluster}/availability`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AvailabilityList {
    /// The cluster.
    pub cluster: String,
    /// 24 h, 7 d and 30 d.
    pub windows: Vec<crate::history::availability::Availability>,
}

/// `GET /api/v1/nodes/{node_id}`: one node with its instances; 404 when unknown.
pub async fn node(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(node_id): Path<String>,
) -> Result<Json<NodeView>, AppError> {
    view::node_view(&state.live(), &node_id, Utc::now())
        .filter(|n| me.may_see(&n.cluster))
        .map(Json)
        .ok_or_else(|| AppError::from(Refusal::not_found(format!("node {node_id:?}"))))
}

/// 404 unless `node_id` is a node of a cluster `who` may see.
pub fn node_in_scope(state: &AppState, who: &Principal, node_id: &str) -> Result<(), AppError> {
    let live = state.live();
    match live.nodes.get(node_id) {
        Some(n) if who.may_see(&n.cluster) => Ok(()),
        _ => Err(AppError::from(Refusal::not_found(format!(
            "node {node_id:?}"
        )))),
    }
}

/// Query of `GET /api/v1/events`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
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
#[derive(Serialize, utoipa::ToSchema)]
pub struct EventList {
    /// Matching events, newest first.
    pub events: Vec<Event>,
}

/// `GET /api/v1/events?cluster=&node=&since=&limit=`: stored events, newest first.
pub async fn events(
    State(state): State<AppState>,
    Auth(me): Auth,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<EventList>, AppError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(AppError::from(Refusal::invalid(
            "invalid_query",
            "limit",
            "limit must be 1..=1000",
        )));
    }
    let filter = EventFilter {
        cluster: q.cluster,
        node_id: q.node,
        since: q.since,
        limit,
        scope: me.clusters.clone(),
    };
    let events = db::list_events(&state.db, &filter).await?;
    Ok(Json(EventList { events }))
}

/// Query of `GET /api/v1/nodes/{node_id}/history`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// `lag_bytes`, `lag_seconds`, `heartbeats`, `load1`, `check_passing` or
    /// `check_duration_ms`.
    pub metric: Metric,
    /// Link key (`postgresql:pg`) for lag metrics; may be left out when the node has one link.
    pub link: Option<String>,
    /// Service check name (`pg-port`) for check metrics; may be left out when the node reports
    /// one check. A check the node no longer reports still has its history.
    pub check: Option<String>,
    /// Range start, RFC 3339 (default: an hour before `to`).
    pub from: Option<DateTime<Utc>>,
    /// Range end, RFC 3339 (default: now).
    pub to: Option<DateTime<Utc>>,
    /// Bucket width (`15s`, `1m`, `1h`; default: about 240 buckets).
    pub step: Option<String>,
}

/// Body of `GET /api/v1/nodes/{node_id}/history`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct History {
    /// Node.
    pub node_id: String,
    /// Metric.
    pub metric: Metric,
    /// Link, for lag metrics.
    pub link: Option<String>,
    /// Service check, for check metrics (absent for the others).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// Range start.
    pub from: DateTime<Utc>,
    /// Range end.
    pub to: DateTime<Utc>,
    /// Bucket width in seconds.
    pub step_seconds: u64,
    /// `raw` samples or per-minute `rollup`s.
    pub source: Source,
    /// Buckets in time order: `t` (bucket start), `min`, `max`, `avg`, `count`.
    pub points: Vec<Point>,
}

/// The link or check (`field`) a series is of: the one given, else the node's only one.
fn series_part(
    field: &'static str,
    given: Option<String>,
    known: Vec<String>,
) -> Result<String, AppError> {
    match (given, known.as_slice()) {
        (Some(part), _) => Ok(part),
        (None, [only]) => Ok(only.clone()),
        (None, _) => Err(AppError::from(Refusal::invalid(
            "invalid_query",
            field,
            format!(
                "this metric needs a {field}; the node has: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        ))),
    }
}

/// Resolves a history request against a node: which link or check, which range, which source.
pub fn history_query(
    state: &AppState,
    node_id: &str,
    q: HistoryQuery,
) -> Result<SeriesQuery, AppError> {
    let (links, checks): (Vec<String>, Vec<String>) = {
        let live = state.live();
        let node = live
            .nodes
            .get(node_id)
            .ok_or_else(|| AppError::from(Refusal::not_found(format!("node {node_id:?}"))))?;
        (
            node.replication.iter().map(|l| l.key()).collect(),
            node.checks.iter().map(|c| c.name.clone()).collect(),
        )
    };
    let link = q
        .metric
        .needs_link()
        .then(|| series_part("link", q.link, links))
        .transpose()?;
    let check = q
        .metric
        .needs_check()
        .then(|| series_part("check", q.check, checks))
        .transpose()?;
    let step = q
        .step
        .map(|s| {
            humantime::parse_duration(&s).map_err(|e| {
                AppError::from(Refusal::invalid(
                    "invalid_query",
                    "step",
                    format!("{s:?}: {e}"),
                ))
            })
        })
        .transpose()?;
    let (from, to, step, source) = series::plan(
        Utc::now(),
        q.from,
        q.to,
        step,
        state.settings().history.retention,
    )
    .map_err(|e| AppError::from(Refusal::invalid("invalid_query", e.field, e.message)))?;
    Ok(SeriesQuery {
        node_id: node_id.to_string(),
        metric: q.metric,
        link,
        check,
        from,
        to,
        step,
        source,
    })
}

/// `GET /api/v1/nodes/{node_id}/history?metric=&link=&from=&to=&step=`: a time series of one
/// node, from raw samples or, for long ranges, per-minute rollups.
pub async fn history(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(node_id): Path<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<History>, AppError> {
    node_in_scope(&state, &me, &node_id)?;
    let query = history_query(&state, &node_id, q)?;
    let points = series::series(&state.db, &state.history, &query).await?;
    Ok(Json(History {
        node_id,
        metric: query.metric,
        link: query.link,
        check: query.check,
        from: query.from,
        to: query.to,
        step_seconds: query.step.as_secs(),
        source: query.source,
        points,
    }))
}

/// `POST /api/v1/clusters/{cluster}/switchover`: preflight, then 200 with the plan for a dry
/// run, or 202 with the id; 4xx/409 naming the reason when preflight refuses.
pub async fn switchover(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SwitchoverRequest>,
) -> Result<(StatusCode, Json<SwitchoverAccepted>), AppError> {
    if !req.dry_run {
        crate::access::sessions::require_recent_password(&state, &me)?;
    }
    let accepted = request::request_switchover(&state, &name, req, &me).await?;
    let status = if accepted.id.is_some() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(accepted)))
}

/// `GET /api/v1/switchovers/{id}`: the switchover, its steps and their states.
pub async fn get_switchover(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<Switchover>, AppError> {
    switchovers::get(&state.db, id)
        .await?
        .filter(|s| me.may_see(&s.cluster))
        .map(Json)
        .ok_or_else(|| AppError::from(Refusal::not_found(format!("switchover {id}"))))
}

/// `DELETE /api/v1/switchovers/{id}`: cancels a switchover that has not started (409 otherwise).
pub async fn cancel_switchover(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<serde_json::Value>, AppError> {
    let sw = switchovers::get(&state.db, id)
        .await?
        .filter(|s| me.may_see(&s.cluster))
        .ok_or_else(|| AppError::from(Refusal::not_found(format!("switchover {id}"))))?;
    switchovers::cancel(&state, sw.id, &me).await?;
    Ok(Json(serde_json::json!({ "id": id, "state": "cancelled" })))
}

/// Body of `GET /api/v1/alerts`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AlertList {
    /// Pending and firing alerts first, then the latest resolved ones.
    pub alerts: Vec<crate::alerting::engine::Alert>,
}

/// `GET /api/v1/alerts`: open alerts, then recent history.
pub async fn alerts(
    State(state): State<AppState>,
    Auth(me): Auth,
) -> Result<Json<AlertList>, AppError> {
    let mut alerts = crate::alerting::engine::list(&state.db).await?;
    alerts.retain(|a| me.may_see(&a.cluster));
    Ok(Json(AlertList { alerts }))
}

/// Body of `GET /api/v1/notifications`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct NotificationList {
    /// The latest notifications, newest first, with their delivery state.
    pub notifications: Vec<crate::alerting::notify::Notification>,
}

/// `GET /api/v1/notifications`: the delivery log of the clusters the caller may see (phone
/// numbers hidden, no secret in an error).
pub async fn notifications(
    State(state): State<AppState>,
    Auth(me): Auth,
) -> Result<Json<NotificationList>, AppError> {
    Ok(Json(NotificationList {
        notifications: crate::alerting::notify::list(
            &state.db,
            &state.settings().alerts,
            me.clusters.as_deref(),
        )
        .await?,
    }))
}

/// Body of `POST /api/v1/alerts/{id}/ack`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// What they say (kept with the alert).
    pub comment: String,
}

/// `POST /api/v1/alerts/{id}/ack`: acknowledges an open alert; it is not repeated until it
/// resolves. 404 when it is not open.
pub async fn ack_alert(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<Uuid>,
    ApiJson(ack): ApiJson<AckRequest>,
) -> Result<Json<serde_json::Value>, AppError> {
    requests::acknowledge(&state, id, &ack.comment, &me).await?;
    Ok(Json(serde_json::json!({ "id": id, "acknowledged": true })))
}

/// Body of `GET /api/v1/silences`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SilenceList {
    /// Silences and maintenance windows not over yet, soonest end first.
    pub silences: Vec<crate::alerting::silences::Silence>,
}

/// `GET /api/v1/silences`: current and future silences.
pub async fn silences(
    State(state): State<AppState>,
    Auth(me): Auth,
) -> Result<Json<SilenceList>, AppError> {
    let mut silences = crate::alerting::silences::current(&state.db).await?;
    silences.retain(|s| s.cluster.as_deref().is_none_or(|c| me.may_see(c)));
    Ok(Json(SilenceList { silences }))
}

/// `POST /api/v1/silences`: a silence or maintenance window (201). 400 naming the field for a
/// silence that would match everything, unknown rules, or bad times; 403 for a maintenance
/// window without the admin role, or a silence reaching beyond the caller's clusters.
pub async fn create_silence(
    State(state): State<AppState>,
    Auth(me): Auth,
    ApiJson(new): ApiJson<crate::alerting::silences::NewSilence>,
) -> Result<(StatusCode, Json<crate::alerting::silences::Silence>), AppError> {
    let silence = requests::silence(&state, new, &me).await?;
    Ok((StatusCode::CREATED, Json(silence)))
}

/// `DELETE /api/v1/silences/{id}`: ends a silence now.
pub async fn expire_silence(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<Uuid>,
) -> Result<Json<serde_json::Value>, AppError> {
    requests::end_silence(&state, id, &me).await?;
    Ok(Json(serde_json::json!({ "id": id, "expired": true })))
}
