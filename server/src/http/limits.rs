//! Bounds on what a stranger can hold open: connections (a cap, checked when a connection is
//! accepted, before any TLS handshake; the handshake and the first bytes of a request within
//! the header-read timeout) and the dashboard's event streams per principal. Once a connection
//! has sent bytes, hyper's own header-read timeout (set in `launch::serve_http`) closes it when
//! a request head takes longer, or when it idles that long between requests.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// An acceptor that refuses connections beyond `permits` open at once (the connection is closed
/// at once, before `inner` — the TLS handshake — runs), gives `inner` `first_bytes` to finish,
/// and closes a connection that sends nothing within `first_bytes` (hyper's protocol sniffing
/// would otherwise wait for its first bytes for ever).
#[derive(Clone)]
pub struct ConnectionLimit<A> {
    inner: A,
    permits: Arc<Semaphore>,
    first_bytes: Duration,
}

impl<A> ConnectionLimit<A> {
    /// At most `max` connections open at once through `inner`; each must send its first bytes
    /// within `first_bytes`.
    pub fn new(inner: A, max: usize, first_bytes: Duration) -> Self {
        ConnectionLimit {
            inner,
            permits: Arc::new(Semaphore::new(max.max(1))),
            first_bytes,
        }
    }
}

impl<A, I, S> Accept<I, S> for ConnectionLimit<A>
where
    A: Accept<I, S> + Clone + Send + Sync + 'static,
    A::Future: Send,
    I: Send + 'static,
    S: Send + 'static,
{
    type Stream = Held<A::Stream>;
    type Service = A::Service;
    type Future = BoxFuture<'static, io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let permit = self.permits.clone().try_acquire_owned();
        let (inner, first_bytes) = (self.inner.clone(), self.first_bytes);
        Box::pin(async move {
            let Ok(permit) = permit else {
                tracing::warn!(
                    "connection refused: the server holds its most connections (max_connections)"
                );
                return Err(io::Error::other("too many connections"));
            };
            let (stream, service) =
                tokio::time::timeout(first_bytes, inner.accept(stream, service))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake too slow"))??;
            Ok((
                Held {
                    stream,
                    first_byte: Some(Box::pin(tokio::time::sleep(first_bytes))),
                    _permit: permit,
                },
                service,
            ))
        })
    }
}

/// A connection that holds its permit until it is closed, and fails its reads when its first
/// bytes do not come in time.
pub struct Held<T> {
    stream: T,
    first_byte: Option<Pin<Box<tokio::time::Sleep>>>,
    _permit: OwnedSemaphorePermit,
}

impl<T: AsyncRead + Unpin> AsyncRead for Held<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.first_byte = None;
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let late = this
                    .first_byte
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if late {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within header_read_timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Held<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Open event streams per principal.
#[derive(Debug, Default)]
pub struct StreamCounts {
    open: Mutex<HashMap<String, usize>>,
}

/// One open event stream, counted until it is dropped.
#[derive(Debug)]
pub struct StreamSlot {
    counts: Arc<StreamCounts>,
    principal: String,
}

impl StreamCounts {
    /// A slot for one more stream of `principal`, or None when it holds `max` already.
    pub fn open(self: &Arc<Self>, principal: &str, max: usize) -> Option<StreamSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(principal.to_string()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            counts: self.clone(),
            principal: principal.to_string(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .counts
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.principal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_streams_are_counted_per_principal_until_closed() {
        let counts = Arc::new(StreamCounts::default());
        let a: Vec<StreamSlot> = (0..3).map(|_| counts.open("ann", 3).unwrap()).collect();
        assert!(counts.open("ann", 3).is_none());
        assert!(
            counts.open("bob", 3).is_some(),
            "another principal's own count"
        );
        drop(a);
        assert!(counts.open("ann", 3).is_some());
        assert!(
            counts.open.lock().unwrap().get("bob").is_none(),
            "closed streams leave nothing"
        );
    }
}
