//! The dashboard's server-sent event stream (`/ui/stream`): it tells open pages which cluster
//! changed, so `hapulse.js` re-fetches their partials; pages work without it.

use std::convert::Infallible;

use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Extension;
use futures::Stream;
use futures::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use crate::http::auth::Auth;
use crate::http::error::AppError;
use crate::http::limits::StreamCounts;
use crate::refusal::Refusal;
use crate::state::AppState;

/// `GET /ui/stream`: server-sent events; `event: change`, `data: <cluster>` whenever a cluster
/// the caller may see changes (`*` when this stream fell behind and missed some, or for a change
/// of every cluster). 429 when the principal already holds `max_event_streams_per_principal`.
pub async fn changes(
    State(state): State<AppState>,
    Extension(counts): Extension<Arc<StreamCounts>>,
    Auth(me): Auth,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, AppError> {
    let slot = counts
        .open(&me.name, state.settings().max_event_streams_per_principal)
        .ok_or_else(|| {
            AppError::from(Refusal::throttled(format!(
                "{} holds {} event streams already: close a dashboard tab",
                me.name,
                state.settings().max_event_streams_per_principal
            )))
        })?;
    let changes = BroadcastStream::new(state.changes.subscribe())
        .filter_map(move |change| {
            // Counted while the stream lives.
            let _open = &slot;
            let cluster = change.unwrap_or_else(|_lagged| "*".to_string());
            let shown = (cluster == "*" || me.may_see(&cluster))
                .then(|| Ok(SseEvent::default().event("change").data(cluster)));
            std::future::ready(shown)
        })
        .take_until(state.shutdown.clone().cancelled_owned());
    Ok(Sse::new(changes).keep_alive(KeepAlive::default()))
}
