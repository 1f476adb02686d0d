//! The dashboard's server-sent event stream (`/ui/stream`): it tells open pages which cluster
//! changed, so `hapulse.js` re-fetches their partials; pages work without it.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use futures::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use crate::state::AppState;

/// `GET /ui/stream`: server-sent events; `event: change`, `data: <cluster>` whenever a cluster's
/// state changes (`*` when this stream fell behind and missed some).
pub async fn changes(
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
