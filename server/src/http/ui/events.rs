//! The events page (`/events`): the latest events of every cluster the viewer may see.

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};

use crate::fleet::store::{self as db, Event, EventFilter};
use crate::http::auth::Auth;
use crate::http::error::AppError;
use crate::http::extract::ApiQuery;
use crate::http::ui::page::{render, respond, PageQuery};
use crate::state::AppState;

#[derive(Template)]
#[template(path = "events_partial.html")]
struct EventsPartial<'a> {
    now: DateTime<Utc>,
    events: &'a [Event],
}

/// `GET /events`: the latest 200 events of every cluster.
pub async fn page(
    State(state): State<AppState>,
    Auth(me): Auth,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Response, AppError> {
    let now = Utc::now();
    let events = db::list_events(
        &state.db,
        &EventFilter {
            limit: 200,
            scope: me.clusters.clone(),
            ..Default::default()
        },
    )
    .await?;
    let body = render(&EventsPartial {
        now,
        events: &events,
    })?;
    respond(&me, &q, "Events", "*", body)
}
