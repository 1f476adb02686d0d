//! A cluster's page (`/clusters/{cluster}`): its nodes and instances, roles, priorities, VIP
//! holders, heartbeat ages, maintenance windows, availability, the arbiter's verdict with the
//! failover forms, and the cluster's event timeline.

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Response;
use chrono::{DateTime, Utc};

use crate::fleet::store::Event;
use crate::fleet::view::ClusterView;
use crate::http::auth::Auth;
use crate::http::error::AppError;
use crate::http::extract::ApiQuery;
use crate::http::ui::filters;
use crate::http::ui::page::{render, respond, PageQuery};
use crate::refusal::Refusal;
use crate::state::AppState;

#[derive(Template)]
#[template(path = "cluster_partial.html")]
struct ClusterPartial<'a> {
    now: DateTime<Utc>,
    cluster: &'a ClusterView,
    events: &'a [Event],
    /// Maintenance windows in force for this cluster or its nodes.
    maintenance: &'a [&'a crate::alerting::silences::Silence],
    /// Availability over 24 h, 7 d, 30 d.
    availability: &'a [crate::history::availability::Availability],
    /// The arbiter's verdict, evidence and recent decisions.
    failover: &'a crate::failover::status::FailoverStatus,
    /// The viewer's CSRF token (for the failover forms).
    csrf: &'a str,
}

/// `GET /clusters/{cluster}`: nodes, instances, roles, priorities, VIP holders, heartbeat ages,
/// and the cluster's event timeline.
pub async fn page(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Response, AppError> {
    let fleet = crate::http::snapshot::fleet(&state).await?;
    let now = fleet.now;
    let cluster = fleet
        .cluster(&name)
        .ok_or_else(|| AppError::from(Refusal::not_found(format!("cluster {name:?}"))))?;
    let extras = crate::http::snapshot::cluster(&state, &name).await?;
    let nodes: Vec<&str> = cluster.nodes.iter().map(|n| n.node_id.as_str()).collect();
    let maintenance =
        crate::alerting::silences::maintenance_for(&extras.windows, now, &name, &nodes);
    let body = render(&ClusterPartial {
        now,
        cluster,
        events: &extras.events,
        maintenance: &maintenance,
        availability: &extras.availability,
        failover: &extras.failover,
        csrf: me.csrf(),
    })?;
    respond(&me, &q, &format!("Cluster {name}"), &name, body)
}
