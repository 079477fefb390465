//! Idle intercepted HTTP/2 connections: one with no open stream for `--idle-timeout` gets a
//! GOAWAY and closes, so an idle agent stops holding a `--max-connections` place.
//!
//! hyper's HTTP/2 server has keep-alive pings but no idle timer (an agent that answers pings is
//! kept forever), so the connection counts its own streams: a stream is open from the moment
//! its request reaches the service until its response body is dropped (finished, reset or cut).
//! The count is a `watch` channel; the idle timer restarts on every change, so a connection
//! that opens a stream now and then is never cut, and one with a long SSE stream open is never
//! idle.

use crate::net::upstream::ProxyBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;

/// The open streams of one connection.
#[derive(Clone)]
pub(super) struct OpenStreams(Arc<watch::Sender<usize>>);

impl OpenStreams {
    pub fn new() -> Self {
        OpenStreams(Arc::new(watch::channel(0).0))
    }

    /// One more open stream, until the returned guard is dropped.
    pub fn open(&self) -> StreamGuard {
        self.0.send_modify(|n| *n += 1);
        StreamGuard(self.0.clone())
    }

    /// Resolves once no stream has been open for `idle` in a row.
    pub async fn idle_for(&self, idle: Duration) {
        let mut rx = self.0.subscribe();
        loop {
            let open = *rx.borrow_and_update();
            if open == 0 {
                tokio::select! {
                    _ = tokio::time::sleep(idle) => return,
                    r = rx.changed() => if r.is_err() { return },
                }
            } else if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Holds one stream open.
pub(super) struct StreamGuard(Arc<watch::Sender<usize>>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// `body`, holding `guard` until hyper drops it: the stream is open while its response flows.
pub(super) fn hold(body: ProxyBody, guard: StreamGuard) -> ProxyBody {
    Held {
        inner: body,
        _guard: guard,
    }
    .boxed_unsync()
}

struct Held {
    inner: ProxyBody,
    _guard: StreamGuard,
}

impl Body for Held {
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::sleep;

    #[tokio::test]
    async fn idle_only_after_the_last_stream_and_the_full_limit() {
        let limit = Duration::from_millis(400);
        let streams = OpenStreams::new();
        let guard = streams.open();
        let idle = tokio::spawn({
            let s = streams.clone();
            async move { s.idle_for(limit).await }
        });
        sleep(limit * 2).await;
        assert!(!idle.is_finished(), "a stream is open");
        drop(guard);
        sleep(limit / 4).await;
        drop(streams.open());
        sleep(limit / 2).await;
        assert!(!idle.is_finished(), "a new stream restarts the timer");
        let waited = tokio::time::timeout(Duration::from_secs(10), idle).await;
        assert!(matches!(waited, Ok(Ok(()))));
    }
}
