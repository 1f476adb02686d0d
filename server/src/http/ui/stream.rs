//! The dashboard's server-sent event stream (`/ui/stream`): it tells open pages which cluster
//! changed, so `hapulse.js` re-fetches their partials; pages work without it.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use futures::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use crate::http::auth::Auth;
use crate::state::AppState;

/// `GET /ui/stream`: server-sent events; `event: change`, `data: <cluster>` whenever a cluster
/// the caller may see changes (`*` when this stream fell behind and missed some, or for a change
/// of every cluster).
pub async fn changes(
    State(state): State<AppState>,
    Auth(me): Auth,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let changes = BroadcastStream::new(state.changes.subscribe())
        .filter_map(move |change| {
            let cluster = change.unwrap_or_else(|_lagged| "*".to_string());
            let shown = (cluster == "*" || me.may_see(&cluster))
                .then(|| Ok(SseEvent::default().event("change").data(cluster)));
            std::future::ready(shown)
        })
        .take_until(state.shutdown.clone().cancelled_owned());
    Sse::new(changes).keep_alive(KeepAlive::default())
}
