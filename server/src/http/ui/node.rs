//! A node's page (`/nodes/{node_id}`): the node, its instances and replication links, its
//! maintenance windows, its events, and SVG charts of its replication lag, heartbeats and
//! service checks over the chosen range.

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use hapulse_protocol::ReplicationKind;
use serde::Deserialize;

use crate::fleet::store::{self as db, Event, EventFilter};
use crate::fleet::view::{self, NodeView};
use crate::history::series::{self, Metric, SeriesQuery};
use crate::http::auth::Auth;
use crate::http::error::AppError;
use crate::http::extract::ApiQuery;
use crate::http::ui::charts::{self, Unit};
use crate::http::ui::filters;
use crate::http::ui::page::{render, respond, PageQuery};
use crate::refusal::Refusal;
use crate::state::AppState;

#[derive(Template)]
#[template(path = "node_partial.html")]
struct NodePartial<'a> {
    now: DateTime<Utc>,
    node: &'a NodeView,
    events: &'a [Event],
    /// `1h`, `24h` or `7d`.
    range: &'a str,
    charts: &'a [Chart],
    /// Maintenance windows in force for this node.
    maintenance: &'a [&'a crate::alerting::silences::Silence],
}

/// A chart on a page: its SVG, drawn by [`charts::line_chart`].
pub struct Chart {
    /// The SVG element (safe: built from numbers and escaped text).
    pub svg: String,
}

/// Query of the node page.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePageQuery {
    #[serde(default)]
    partial: Option<u8>,
    /// Chart range: `1h` (default), `24h` or `7d`.
    #[serde(default)]
    range: Option<String>,
}

/// The ranges the node page offers.
const RANGES: [(&str, i64); 3] = [("1h", 1), ("24h", 24), ("7d", 168)];

/// Charts of a node over the last `hours`: replication lag per link, heartbeats, and per
/// service check its duration with its state under it.
async fn node_charts(
    state: &AppState,
    node: &NodeView,
    hours: i64,
    now: DateTime<Utc>,
) -> Result<Vec<Chart>, AppError> {
    let (from, to, step, source) = series::plan(
        now,
        Some(now - chrono::Duration::hours(hours)),
        Some(now),
        None,
        state.settings().history.retention,
    )
    .map_err(|e| AppError::Internal(anyhow::anyhow!("chart plan: {}", e.message)))?;
    let query = |metric, link: Option<&String>, check: Option<&String>| SeriesQuery {
        node_id: node.summary.node_id.clone(),
        metric,
        link: link.cloned(),
        check: check.cloned(),
        from,
        to,
        step,
        source,
    };
    let mut wanted: Vec<(SeriesQuery, String, Unit)> = Vec::new();
    for link in &node.replication {
        let key = link.key();
        if link.kind != ReplicationKind::Mysql {
            wanted.push((
                query(Metric::LagBytes, Some(&key), None),
                format!("{key} lag (bytes)"),
                Unit::Bytes,
            ));
        }
        if link.kind != ReplicationKind::Drbd {
            wanted.push((
                query(Metric::LagSeconds, Some(&key), None),
                format!("{key} lag (seconds)"),
                Unit::Seconds,
            ));
        }
    }
    wanted.push((
        query(Metric::Heartbeats, None, None),
        format!("heartbeats per {}", humantime::format_duration(step)),
        Unit::Count,
    ));
    let mut charts = Vec::new();
    for (query, title, unit) in wanted {
        let points = series::series(&state.db, &state.history, &query).await?;
        charts.push(Chart {
            svg: charts::line_chart(&title, unit, &points, from, to),
        });
    }
    for check in &node.summary.checks {
        let name = Some(&check.name);
        let duration = series::series(
            &state.db,
            &state.history,
            &query(Metric::CheckDurationMs, None, name),
        )
        .await?;
        let passing = series::series(
            &state.db,
            &state.history,
            &query(Metric::CheckPassing, None, name),
        )
        .await?;
        let title = format!(
            "check {} ({}): duration, state",
            check.name,
            check.kind.as_str()
        );
        charts.push(Chart {
            svg: charts::check_chart(&title, &duration, &passing, step, from, to),
        });
    }
    Ok(charts)
}

/// `GET /nodes/{node_id}`: one node, its instances and its events.
pub async fn page(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(node_id): Path<String>,
    ApiQuery(q): ApiQuery<NodePageQuery>,
) -> Result<Response, AppError> {
    let now = Utc::now();
    let range = q.range.as_deref().unwrap_or("1h");
    let Some((range, hours)) = RANGES.iter().copied().find(|(name, _)| *name == range) else {
        return Err(AppError::from(Refusal::invalid(
            "invalid_query",
            "range",
            "one of 1h, 24h, 7d",
        )));
    };
    let node = view::node_view(&state.live(), &node_id, now)
        .filter(|n| me.may_see(&n.cluster))
        .ok_or_else(|| AppError::from(Refusal::not_found(format!("node {node_id:?}"))))?;
    let charts = node_charts(&state, &node, hours, now).await?;
    // Only its events in clusters the caller may see: a node moved from another cluster keeps
    // that cluster's history to itself.
    let filter = EventFilter {
        node_id: Some(node_id.clone()),
        limit: 50,
        scope: me.clusters.clone(),
        ..Default::default()
    };
    let events = db::list_events(&state.db, &filter).await?;
    let windows = crate::alerting::silences::current(&state.db).await?;
    let maintenance =
        crate::alerting::silences::maintenance_for(&windows, now, &node.cluster, &[&node_id]);
    let body = render(&NodePartial {
        now,
        node: &node,
        events: &events,
        range,
        charts: &charts,
        maintenance: &maintenance,
    })?;
    let q = PageQuery { partial: q.partial };
    respond(&me, &q, &format!("Node {node_id}"), &node.cluster, body)
}
