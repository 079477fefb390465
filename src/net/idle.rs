//! Idle timeout (`--idle-timeout`) for byte streams the proxy relays whole — tunnels and
//! WebSockets: one on which no byte moved in either direction for the whole limit is closed.
//!
//! Intercepted connections do not use it: there the limit applies per request (a response body
//! silent for the limit, a request body stalled for it), because a connection whose request
//! waits on a slow non-streamed completion is silent for minutes and must not be cut. Between
//! HTTP/1 requests hyper's header read timer closes an idle keep-alive connection; HTTP/2
//! connections are kept while the client answers our keep-alive pings.
//!
//! Reads and writes only store a coarse timestamp (one relaxed atomic store); a watchdog sleeps
//! until the last activity plus the limit and checks again, so the cost per byte is nil and
//! there is one timer per connection, not one per read.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When a connection last moved a byte (in milliseconds since it opened), and how many bytes
/// it read and wrote.
#[derive(Clone)]
pub struct Activity {
    opened: Instant,
    last_ms: Arc<AtomicU64>,
    bytes: Arc<[AtomicU64; 2]>,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub fn new() -> Self {
        Activity {
            opened: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
            bytes: Arc::new([AtomicU64::new(0), AtomicU64::new(0)]),
        }
    }

    /// Bytes read from and written to the wrapped I/O so far.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.bytes[0].load(Ordering::Relaxed),
            self.bytes[1].load(Ordering::Relaxed),
        )
    }

    /// How long since the connection opened.
    pub fn age(&self) -> Duration {
        self.opened.elapsed()
    }

    fn moved(&self, direction: Direction, n: usize) {
        self.bytes[direction as usize].fetch_add(n as u64, Ordering::Relaxed);
        self.touch();
    }

    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Resolves once nothing moved for `limit`.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            let deadline = self.last() + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Which way bytes moved, seen from the wrapped I/O (the agent's side of a tunnel).
#[derive(Clone, Copy)]
enum Direction {
    /// Read from it: towards the destination.
    Up = 0,
    /// Written to it: towards the agent.
    Down = 1,
}

/// An I/O object that records its activity.
pub struct IdleIo<S> {
    inner: S,
    activity: Activity,
}

impl<S> IdleIo<S> {
    pub fn new(inner: S, activity: Activity) -> Self {
        IdleIo { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if matches!(r, Poll::Ready(Ok(()))) && n > 0 {
            self.activity.moved(Direction::Up, n);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.activity.moved(Direction::Down, n);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.activity.moved(Direction::Down, n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn idle_fires_only_after_a_whole_silent_limit() {
        let (a, mut b) = tokio::io::duplex(64);
        let activity = Activity::new();
        let mut io = IdleIo::new(a, activity.clone());
        let limit = Duration::from_millis(100);
        let started = Instant::now();
        tokio::time::sleep(Duration::from_millis(60)).await;
        b.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        io.read_exact(&mut byte).await.unwrap();
        activity.idle_for(limit).await;
        // 60 ms of silence, a byte, then a whole limit of silence again: the byte moved the
        // deadline (without it the watchdog would have fired at 100 ms).
        assert!(started.elapsed() >= Duration::from_millis(160));
    }
}
