//! The overview (`/`): every cluster the viewer may see with its verdict, masters and VIP
//! holders, the worst first, a page at a time, with a count per health and a name filter.

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::fleet::view::{self, ClusterView};
use crate::http::auth::Auth;
use crate::http::error::AppError;
use crate::http::extract::ApiQuery;
use crate::http::ui::page::{render, respond, PageQuery};
use crate::refusal::Refusal;
use crate::state::AppState;

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

/// `GET /?page=&q=`: clusters with their verdict, masters and VIP holders, the worst first,
/// [`OVERVIEW_PAGE_SIZE`] per page, with a count per health; `q` filters by name.
pub async fn page(
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
