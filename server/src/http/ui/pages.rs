//! The dashboard's pages, forms, event stream and static files; what they share is in
//! [`crate::http::ui::page`].

use std::convert::Infallible;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::Stream;
use futures::StreamExt;
use serde::Deserialize;
use tokio_stream::wrappers::BroadcastStream;

use crate::access::auth::{Principal, Role};
use crate::access::sessions;
use crate::fleet::store::{self as db, Event, EventFilter};
use crate::fleet::view::{self, ClusterView, NodeView};
use crate::history::series::{self, Metric, SeriesQuery};
use crate::http::auth::{self, Auth};
use crate::http::error::AppError;
use crate::http::extract::ApiQuery;
use crate::http::ui::charts::{self, Unit};
use crate::http::ui::filters;
use crate::http::ui::page::{full_page, render, respond, PageQuery};
use crate::refusal::{Refusal, RefusalKind};
use crate::state::AppState;
use crate::switchover::error::SwitchoverError;
use crate::switchover::plan::{cluster_view, plan as plan_switchover, Plan, SwitchoverRequest};
use crate::switchover::store::{self as switchovers, Switchover};
use axum::extract::ConnectInfo;
use axum::response::Redirect;
use axum::Form;
use hapulse_protocol::ReplicationKind;
use uuid::Uuid;

#[derive(Template)]
#[template(path = "overview_partial.html")]
struct OverviewPartial<'a> {
    now: DateTime<Utc>,
    /// This page's clusters: the worst health first, then by name.
    clusters: &'a [&'a ClusterView],
    /// Clusters with a maintenance window in force (for them or one of their nodes).
    in_maintenance: &'a [&'a str],
    /// Clusters the viewer may see that match the filter, per health, best first.
    counts: &'a [(view::Health, usize)],
    /// Clusters the viewer may see that match the filter.
    matching: usize,
    /// The name filter (`?q=`), empty for none.
    filter: &'a str,
    /// 1-based page number and the number of pages (at least 1).
    page: usize,
    pages: usize,
    /// 1-based positions of this page's first and last cluster among `matching` (0 when the
    /// page is empty).
    first: usize,
    last: usize,
}

/// Clusters on one overview page.
pub const OVERVIEW_PAGE_SIZE: usize = 100;

/// Query of the overview.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OverviewQuery {
    #[serde(default)]
    partial: Option<u8>,
    /// 1-based page number (default 1).
    #[serde(default)]
    page: Option<usize>,
    /// Shows only clusters whose name contains this (case-insensitive).
    #[serde(default)]
    q: Option<String>,
}

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

/// Charts of a node over the last `hours`: replication lag per link, heartbeats.
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
        state.settings.history.retention,
    )
    .map_err(|e| AppError::Internal(anyhow::anyhow!("chart plan: {}", e.message)))?;
    let mut wanted: Vec<(Metric, Option<String>, String, Unit)> = Vec::new();
    for link in &node.replication {
        let key = link.key();
        if link.kind != ReplicationKind::Mysql {
            wanted.push((
                Metric::LagBytes,
                Some(key.clone()),
                format!("{key} lag (bytes)"),
                Unit::Bytes,
            ));
        }
        if link.kind != ReplicationKind::Drbd {
            wanted.push((
                Metric::LagSeconds,
                Some(key.clone()),
                format!("{key} lag (seconds)"),
                Unit::Seconds,
            ));
        }
    }
    wanted.push((
        Metric::Heartbeats,
        None,
        format!("heartbeats per {}", humantime::format_duration(step)),
        Unit::Count,
    ));
    let mut charts = Vec::new();
    for (metric, link, title, unit) in wanted {
        let query = SeriesQuery {
            node_id: node.summary.node_id.clone(),
            metric,
            link,
            from,
            to,
            step,
            source,
        };
        let points = series::series(&state.db, &query).await?;
        charts.push(Chart {
            svg: charts::line_chart(&title, unit, &points, from, to),
        });
    }
    Ok(charts)
}

#[derive(Template)]
#[template(path = "events_partial.html")]
struct EventsPartial<'a> {
    now: DateTime<Utc>,
    events: &'a [Event],
}

/// `GET /?page=&q=`: clusters with their verdict, masters and VIP holders, the worst first,
/// [`OVERVIEW_PAGE_SIZE`] per page, with a count per health; `q` filters by name.
pub async fn overview(
    State(state): State<AppState>,
    Auth(me): Auth,
    ApiQuery(q): ApiQuery<OverviewQuery>,
) -> Result<Response, AppError> {
    let page_number = q.page.unwrap_or(1);
    if page_number == 0 {
        return Err(AppError::from(Refusal::invalid(
            "invalid_query",
            "page",
            "1 or more",
        )));
    }
    let filter = q.q.as_deref().unwrap_or("").trim().to_lowercase();
    let fleet = crate::http::snapshot::fleet(&state).await?;
    let mut clusters: Vec<&ClusterView> = fleet
        .clusters
        .iter()
        .filter(|c| me.may_see(&c.name))
        .filter(|c| filter.is_empty() || c.name.to_lowercase().contains(&filter))
        .collect();
    let mut counts: Vec<(view::Health, usize)> = Vec::new();
    for c in &clusters {
        match counts.iter_mut().find(|(h, _)| *h == c.health) {
            Some((_, n)) => *n += 1,
            None => counts.push((c.health, 1)),
        }
    }
    counts.sort();
    // Problems first; a stable sort keeps each health's clusters by name.
    clusters.sort_by_key(|c| std::cmp::Reverse(c.health));
    let matching = clusters.len();
    let pages = matching.div_ceil(OVERVIEW_PAGE_SIZE).max(1);
    let start = (page_number - 1).saturating_mul(OVERVIEW_PAGE_SIZE);
    let shown: Vec<&ClusterView> = clusters
        .into_iter()
        .skip(start)
        .take(OVERVIEW_PAGE_SIZE)
        .collect();
    let in_maintenance: Vec<&str> = shown
        .iter()
        .filter(|c| {
            let nodes: Vec<&str> = c.nodes.iter().map(|n| n.node_id.as_str()).collect();
            !crate::alerting::silences::maintenance_for(&fleet.windows, fleet.now, &c.name, &nodes)
                .is_empty()
        })
        .map(|c| c.name.as_str())
        .collect();
    let body = render(&OverviewPartial {
        now: fleet.now,
        clusters: &shown,
        in_maintenance: &in_maintenance,
        counts: &counts,
        matching,
        filter: q.q.as_deref().unwrap_or("").trim(),
        page: page_number,
        pages,
        first: if shown.is_empty() { 0 } else { start + 1 },
        last: start + shown.len(),
    })?;
    let q = PageQuery { partial: q.partial };
    respond(&me, &q, "Clusters", "*", body)
}

/// `GET /clusters/{cluster}`: nodes, instances, roles, priorities, VIP holders, heartbeat ages,
/// and the cluster's event timeline.
pub async fn cluster(
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

/// `GET /nodes/{node_id}`: one node, its instances and its events.
pub async fn node(
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
    let filter = EventFilter {
        node_id: Some(node_id.clone()),
        limit: 50,
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

#[derive(Template)]
#[template(path = "switchover_preview_partial.html")]
struct SwitchoverPreviewPartial<'a> {
    now: DateTime<Utc>,
    cluster: &'a str,
    plan: Option<Plan>,
    error: Option<String>,
    reason: &'a str,
    csrf: &'a str,
    /// The password must be given again (`auth.reauth_window` has passed).
    needs_password: bool,
}

#[derive(Template)]
#[template(path = "switchover_partial.html")]
struct SwitchoverPartial<'a> {
    now: DateTime<Utc>,
    sw: &'a Switchover,
}

/// Query of the switchover preview.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewQuery {
    instance: Option<String>,
    target: String,
}

/// The confirmation form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmForm {
    instance: String,
    target: String,
    reason: String,
    confirm: String,
    /// The user's password, unless given within `auth.reauth_window`.
    #[serde(default)]
    password: String,
}

async fn preview_page(
    state: &AppState,
    me: &Principal,
    cluster: &str,
    instance: Option<String>,
    target: String,
    reason: &str,
    error: Option<String>,
) -> Result<(StatusCode, Response), AppError> {
    let req = SwitchoverRequest {
        target_node: target,
        instance,
        reason: "preview".into(),
        dry_run: true,
        max_lag_bytes: None,
        scheduled_at: None,
    };
    let view = cluster_view(state, cluster).await?;
    let (plan, status, error) = match plan_switchover(&view, &req) {
        Ok(plan) => (
            Some(plan),
            if error.is_some() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            },
            error,
        ),
        Err(e) => (
            None,
            StatusCode::CONFLICT,
            Some(format!("Preflight refuses: {e}")),
        ),
    };
    let body = render(&SwitchoverPreviewPartial {
        now: Utc::now(),
        cluster,
        plan,
        error,
        reason,
        csrf: me.csrf(),
        needs_password: !sessions::recently_authenticated(state, me),
    })?;
    // Not live (scope `none`): the page holds a form to fill in.
    let full = full_page(Some(me), &format!("Switchover in {cluster}"), "none", &body)?;
    Ok((status, Html(full).into_response()))
}

/// `GET /clusters/{cluster}/switchover?instance=&target=`: the preview (plan, lag, data at
/// risk, expected time) and the confirmation form, or why preflight refuses.
pub async fn switchover_preview(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(cluster): Path<String>,
    ApiQuery(q): ApiQuery<PreviewQuery>,
) -> Result<Response, AppError> {
    let (status, page) =
        preview_page(&state, &me, &cluster, q.instance, q.target, "", None).await?;
    Ok((status, page).into_response())
}

/// `POST /clusters/{cluster}/switchover`: the confirmed form; the target's name must be typed
/// again. Redirects to the progress page.
pub async fn switchover_confirm(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(cluster): Path<String>,
    Form(form): Form<ConfirmForm>,
) -> Result<Response, AppError> {
    let confirmed = form.confirm.trim() == form.target;
    let authenticated = sessions::recently_authenticated(&state, &me)
        || (confirmed && sessions::reauthenticate(&state, &me, &form.password).await?);
    if !confirmed || !authenticated {
        let message = if confirmed {
            "Your password, again: a switchover needs it.".to_string()
        } else {
            format!("Type {} exactly to confirm.", form.target)
        };
        let (status, page) = preview_page(
            &state,
            &me,
            &cluster,
            Some(form.instance),
            form.target,
            &form.reason,
            Some(message),
        )
        .await?;
        return Ok((status, page).into_response());
    }
    let req = SwitchoverRequest {
        target_node: form.target.clone(),
        instance: Some(form.instance.clone()),
        reason: form.reason.clone(),
        dry_run: false,
        max_lag_bytes: None,
        scheduled_at: None,
    };
    match crate::switchover::request::request_switchover(&state, &cluster, req, &me).await {
        Ok(accepted) => match accepted.id {
            Some(id) => Ok(Redirect::to(&format!("/switchovers/{id}")).into_response()),
            None => Err(AppError::Internal(anyhow::anyhow!(
                "accepted switchover without id"
            ))),
        },
        Err(SwitchoverError::Refused(e))
            if matches!(
                e.kind,
                RefusalKind::Conflict | RefusalKind::Invalid | RefusalKind::NotFound
            ) =>
        {
            let (status, page) = preview_page(
                &state,
                &me,
                &cluster,
                Some(form.instance),
                form.target,
                &form.reason,
                Some(e.to_string()),
            )
            .await?;
            Ok((status, page).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

/// The failover confirmation form on the cluster page.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverForm {
    target: String,
    reason: String,
    /// A checkbox: present when ticked.
    #[serde(default)]
    accept_data_loss: Option<String>,
    /// The user's password, unless given within `auth.reauth_window`.
    #[serde(default)]
    password: String,
}

/// `POST /clusters/{cluster}/failover`: a person confirms the proposed failover (password
/// again unless given recently). Redirects to its progress page; a refusal says why.
pub async fn failover_confirm(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(cluster): Path<String>,
    Form(form): Form<FailoverForm>,
) -> Result<Response, AppError> {
    let authenticated = sessions::recently_authenticated(&state, &me)
        || sessions::reauthenticate(&state, &me, &form.password).await?;
    if !authenticated {
        return Err(AppError::from(Refusal::forbidden(
            "your password, again: a failover needs it",
        )));
    }
    let req = crate::failover::requests::FailoverRequest {
        target_node: form.target,
        reason: form.reason,
        accept_data_loss: form.accept_data_loss.is_some(),
    };
    let id = crate::failover::requests::request_failover(&state, &cluster, &req, &me).await?;
    Ok(Redirect::to(&format!("/switchovers/{id}")).into_response())
}

/// The acknowledgement form of an automatic failover.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverAckForm {
    reason: String,
}

/// `POST /switchovers/{id}/acknowledge`: acknowledges an automatic failover (lifts its
/// anti-flapping hold) and returns to its progress page.
pub async fn failover_acknowledge(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<Uuid>,
    Form(form): Form<FailoverAckForm>,
) -> Result<Response, AppError> {
    crate::failover::requests::acknowledge_failover(&state, id, &form.reason, &me).await?;
    Ok(Redirect::to(&format!("/switchovers/{id}")).into_response())
}

/// `GET /switchovers/{id}`: steps and their states, live while it runs.
pub async fn switchover_progress(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<Uuid>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Response, AppError> {
    let sw = switchovers::get(&state.db, id)
        .await?
        .filter(|s| me.may_see(&s.cluster))
        .ok_or_else(|| AppError::from(Refusal::not_found(format!("switchover {id}"))))?;
    let body = render(&SwitchoverPartial {
        now: Utc::now(),
        sw: &sw,
    })?;
    respond(&me, &q, &format!("Switchover {id}"), &sw.cluster, body)
}

#[derive(Template)]
#[template(path = "alerts_partial.html")]
struct AlertsPartial<'a> {
    now: DateTime<Utc>,
    alerts: &'a [crate::alerting::engine::Alert],
    silences: &'a [crate::alerting::silences::Silence],
    notifications: &'a [crate::alerting::notify::Notification],
    rules: &'a [&'static str],
    error: Option<String>,
    csrf: &'a str,
    /// May acknowledge and silence.
    operator: bool,
    /// May open and end maintenance windows.
    admin: bool,
}

/// `GET /alerts`: open alerts and recent history, silences and maintenance windows, and the
/// delivery log.
pub async fn alerts(
    State(state): State<AppState>,
    Auth(me): Auth,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Response, AppError> {
    alerts_page(&state, &me, &q, None).await
}

async fn alerts_page(
    state: &AppState,
    me: &Principal,
    q: &PageQuery,
    error: Option<String>,
) -> Result<Response, AppError> {
    let mut alerts = crate::alerting::engine::list(&state.db).await?;
    alerts.retain(|a| me.may_see(&a.cluster));
    let mut silences = crate::alerting::silences::current(&state.db).await?;
    silences.retain(|s| s.cluster.as_deref().is_none_or(|c| me.may_see(c)));
    // The delivery log names clusters in its subjects: whole-fleet principals only.
    let notifications = if me.clusters.is_none() {
        crate::alerting::notify::list(&state.db).await?
    } else {
        Vec::new()
    };
    let body = render(&AlertsPartial {
        now: Utc::now(),
        alerts: &alerts,
        silences: &silences,
        notifications: &notifications,
        rules: &crate::alerting::rules::RULES,
        error,
        csrf: me.csrf(),
        operator: me.role >= Role::Operator,
        admin: me.role >= Role::Admin,
    })?;
    respond(me, q, "Alerts", "*", body)
}

/// A form's answer: back to the alerts page, or the page again with what was wrong (400).
async fn after_form(
    state: &AppState,
    me: &Principal,
    outcome: Result<(), AppError>,
) -> Result<Response, AppError> {
    match outcome {
        Ok(()) => Ok(Redirect::to("/alerts").into_response()),
        Err(AppError::Refused(r))
            if matches!(
                r.kind,
                RefusalKind::Invalid | RefusalKind::NotFound | RefusalKind::Forbidden
            ) =>
        {
            let status = if r.kind == RefusalKind::Forbidden {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::BAD_REQUEST
            };
            let page = alerts_page(state, me, &PageQuery::default(), Some(r.to_string())).await?;
            Ok((status, page).into_response())
        }
        Err(e) => Err(e),
    }
}

/// The acknowledgement form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckForm {
    comment: String,
}

/// `POST /alerts/{id}/ack`: acknowledges an open alert (no more repeats until it resolves).
pub async fn ack_alert(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<Uuid>,
    Form(form): Form<AckForm>,
) -> Result<Response, AppError> {
    let outcome = crate::alerting::requests::acknowledge(&state, id, &form.comment, &me)
        .await
        .map_err(AppError::from);
    after_form(&state, &me, outcome).await
}

/// The silence form: empty matchers are left out; `hours` from now.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceForm {
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    node_id: String,
    #[serde(default)]
    rule: String,
    #[serde(default)]
    severity: String,
    #[serde(default)]
    maintenance: Option<String>,
    hours: f64,
    reason: String,
}

/// `POST /alerts/silences`: a silence or maintenance window from the alerts page.
pub async fn create_silence(
    State(state): State<AppState>,
    Auth(me): Auth,
    Form(form): Form<SilenceForm>,
) -> Result<Response, AppError> {
    let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
    let outcome = if !(form.hours > 0.0 && form.hours <= 24.0 * 90.0) {
        Err(AppError::from(Refusal::invalid(
            "invalid_body",
            "hours",
            "a duration from 0 to 2160 hours (90 days)",
        )))
    } else {
        let silence = crate::alerting::silences::NewSilence {
            cluster: some(&form.cluster),
            node_id: some(&form.node_id),
            rules: some(&form.rule).into_iter().collect(),
            severity: some(&form.severity),
            maintenance: form.maintenance.is_some(),
            starts_at: None,
            ends_at: Utc::now() + chrono::Duration::seconds((form.hours * 3600.0) as i64),
            author: String::new(),
            reason: form.reason,
        };
        crate::alerting::requests::silence(&state, silence, &me)
            .await
            .map(|_| ())
            .map_err(AppError::from)
    };
    after_form(&state, &me, outcome).await
}

/// `POST /alerts/silences/{id}/end`: ends a silence now.
pub async fn end_silence(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<Uuid>,
) -> Result<Response, AppError> {
    let outcome = crate::alerting::requests::end_silence(&state, id, &me)
        .await
        .map_err(AppError::from);
    after_form(&state, &me, outcome).await
}

/// `GET /events`: the latest 200 events of every cluster.
pub async fn events(
    State(state): State<AppState>,
    Auth(me): Auth,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Response, AppError> {
    let now = Utc::now();
    let mut events = db::list_events(
        &state.db,
        &EventFilter {
            limit: 200,
            ..Default::default()
        },
    )
    .await?;
    events.retain(|e| me.may_see(&e.cluster));
    let body = render(&EventsPartial {
        now,
        events: &events,
    })?;
    respond(&me, &q, "Events", "*", body)
}

/// `GET /ui/stream`: server-sent events; `event: change`, `data: <cluster>` whenever a cluster's
/// state changes (`*` when this stream fell behind and missed some).
pub async fn stream(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let changes = BroadcastStream::new(state.changes.subscribe())
        .map(|change| {
            let cluster = change.unwrap_or_else(|_lagged| "*".to_string());
            Ok(SseEvent::default().event("change").data(cluster))
        })
        .take_until(state.shutdown.clone().cancelled_owned());
    Sse::new(changes).keep_alive(KeepAlive::default())
}

/// `GET /static/{file}`: the stylesheet and script, compiled into the binary.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "hapulse.css" => (
            include_str!("../../../../web/static/hapulse.css"),
            "text/css; charset=utf-8",
        ),
        "hapulse.js" => (
            include_str!("../../../../web/static/hapulse.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return (StatusCode::NOT_FOUND, "not found").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    next: &'a str,
    error: Option<&'a str>,
}

/// Query of the login page: where to go after.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LoginQuery {
    #[serde(default)]
    next: Option<String>,
}

/// Only a path on this server: `/…`, never `//host` or a URL.
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n,
        _ => "/",
    }
}

fn login_page(status: StatusCode, next: &str, error: Option<&str>) -> Result<Response, AppError> {
    let body = render(&LoginPage { next, error })?;
    let full = full_page(None, "Log in", "none", &body)?;
    Ok((status, Html(full)).into_response())
}

/// `GET /login`: the login form.
pub async fn login_form(ApiQuery(q): ApiQuery<LoginQuery>) -> Result<Response, AppError> {
    login_page(StatusCode::OK, local_path(q.next.as_deref()), None)
}

/// The login form's fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginForm {
    name: String,
    password: String,
    #[serde(default)]
    next: Option<String>,
}

/// `POST /login`: checks the name and password (throttled per account and per address), opens a
/// session with a new id and sets its cookie; every attempt is audited.
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Form(form): Form<LoginForm>,
) -> Result<Response, AppError> {
    let source = peer.ip().to_string();
    let next = local_path(form.next.as_deref()).to_string();
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
                    auth::session_cookie(&state, Some(&session.id)),
                )],
                Redirect::to(&next),
            )
                .into_response())
        }
        Err(e) => {
            let (status, message, outcome) = match e {
                sessions::LoginError::Throttled => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many failed logins for this account or from this address; wait a few minutes.",
                    "refused: throttled",
                ),
                sessions::LoginError::Wrong => (
                    StatusCode::UNAUTHORIZED,
                    "Wrong name or password.",
                    "failed",
                ),
            };
            crate::access::audit::Audit {
                actor: &name,
                target: &name,
                ..audit(outcome)
            }
            .record(&state.db)
            .await?;
            tracing::warn!(user = %name, source = %source, outcome, "login refused");
            login_page(status, &next, Some(message))
        }
    }
}

/// `POST /logout`: ends the session on the server and clears the cookie.
pub async fn logout(State(state): State<AppState>, Auth(me): Auth) -> Result<Response, AppError> {
    if matches!(me.via, crate::access::auth::Via::Session { .. }) {
        sessions::logout(&state, &me).await?;
        crate::access::audit::Audit::by(&me, "logout", &me.name, "succeeded")
            .record(&state.db)
            .await?;
    }
    Ok((
        [(header::SET_COOKIE, auth::session_cookie(&state, None))],
        Redirect::to("/login"),
    )
        .into_response())
}

#[derive(Template)]
#[template(path = "audit_partial.html")]
struct AuditPartial<'a> {
    now: DateTime<Utc>,
    entries: &'a [crate::access::audit::Entry],
}

/// `GET /audit`: the latest 500 audit rows (admins only).
pub async fn audit(
    State(state): State<AppState>,
    Auth(me): Auth,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Response, AppError> {
    let entries = crate::access::audit::list(&state.db, 500, None).await?;
    let body = render(&AuditPartial {
        now: Utc::now(),
        entries: &entries,
    })?;
    respond(&me, &q, "Audit log", "none", body)
}
