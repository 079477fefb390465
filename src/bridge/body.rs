//! The response body on its way to the client: relayed frame by frame, with a copy of each data
//! frame fed to the usage tap. When the body ends (or fails, or the client goes away and drops
//! it) the interception record is completed and queued — exactly once.
//!
//! A body silent for longer than `--idle-timeout` between two reads is aborted (the client sees
//! a truncated response, the record says `upstream_idle_timeout`). The bound is per read, never
//! on the total: a stream that keeps talking may run as long as it likes.

use crate::net::upstream::ProxyBody;
use crate::store::Interception;
use crate::usage::recorder::Recorder;
use crate::usage::{Api, UsageTap};
use crate::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::time::Sleep;

/// What the record needs besides the usage.
pub struct Pending {
    pub recorder: Recorder,
    pub record: Interception,
    pub started: Instant,
    pub api: Api,
    /// The model the request named (the response's own name may carry a version suffix).
    pub requested_model: Option<String>,
    /// The provider's configured models: the only names metrics label tokens with.
    pub models: Arc<HashSet<String>>,
}

pub struct TappedBody {
    inner: ProxyBody,
    tap: Option<UsageTap>,
    pending: Option<Box<Pending>>,
    idle: IdleTimer,
}

/// The per-read idle bound. Silence is counted from the first time the body is asked for data
/// and has none, not from the last frame: a body nobody asked for a while (a slow reader, a
/// full HTTP/2 window) is not silent. Frames only clear a flag; the timer is created the first
/// time the body waits and moved each time a new wait begins.
struct IdleTimer {
    limit: Duration,
    waiting: bool,
    timer: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    fn new(limit: Duration) -> Self {
        IdleTimer {
            limit,
            waiting: false,
            timer: None,
        }
    }

    fn read(&mut self) {
        self.waiting = false;
    }

    /// Called when the body has nothing: whether it has had nothing for the whole limit since
    /// this wait began; if not, the task is woken when it has.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.waiting {
            self.waiting = true;
            let deadline = tokio::time::Instant::now() + self.limit;
            match self.timer.as_mut() {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        match self.timer.as_mut() {
            Some(timer) => timer.as_mut().poll(cx).is_ready(),
            None => false,
        }
    }
}

/// A request body on its way to the upstream, ended with [`IdleTimeout`] when the client stalls
/// for the whole limit (the upstream request is then cancelled with it).
///
/// How it failed is noted in `failure`, because the upstream client reports only its own side
/// of it (an HTTP/2 upstream sees a stream we reset, an HTTP/1 one an aborted write): the
/// bridge reads the note to tell a client that left from an upstream that failed.
pub struct IdleBody<B> {
    inner: B,
    idle: IdleTimer,
    failure: Arc<OnceLock<&'static str>>,
}

impl<B> IdleBody<B> {
    pub fn new(inner: B, limit: Duration, failure: Arc<OnceLock<&'static str>>) -> Self {
        IdleBody {
            inner,
            idle: IdleTimer::new(limit),
            failure,
        }
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.read();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let _ = this.failure.set("client_cancelled");
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending if this.idle.expired(cx) => {
                let _ = this.failure.set("client_body_timeout");
                Poll::Ready(Some(Err(IdleTimeout(this.idle.limit).into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error a body aborted for silence ends with.
#[derive(Debug, thiserror::Error)]
#[error("nothing arrived for {0:?} (--idle-timeout)")]
pub struct IdleTimeout(Duration);

impl TappedBody {
    pub fn new(inner: ProxyBody, tap: UsageTap, pending: Pending, idle_limit: Duration) -> Self {
        TappedBody {
            inner,
            tap: Some(tap),
            pending: Some(Box::new(pending)),
            idle: IdleTimer::new(idle_limit),
        }
    }

    fn finish(&mut self, complete: bool, error: Option<&'static str>) {
        let (Some(tap), Some(pending)) = (self.tap.take(), self.pending.take()) else {
            return;
        };
        let Pending {
            recorder,
            mut record,
            started,
            api,
            requested_model,
            models,
        } = *pending;
        // A response whose terminal event was relayed to the client has ended, whatever
        // happens to the connection after it (clients close right after `[DONE]`).
        let error = error.filter(|_| tap.terminal().is_none());
        let usage = tap.finish(complete);
        record.outcome = match error {
            Some("client_cancelled") => "client_cancelled",
            Some(_) => "truncated",
            None if api == Api::Other => "completed",
            None => usage.outcome().as_str(),
        }
        .into();
        record.usage_source = usage.source().into();
        if usage.model.is_some() {
            record.model = usage.model.clone();
        }
        record.input_tokens = usage.input_tokens;
        record.output_tokens = usage.output_tokens;
        record.cache_read_tokens = usage.cache_read_tokens;
        record.cache_write_tokens = usage.cache_write_tokens;
        record.tool_calls = usage.tool_calls;
        record.duration_ms = started.elapsed().as_millis() as i64;
        record.error = error.map(str::to_string);
        tracing::info!(
            request_id = %record.request_id,
            user = %record.user,
            provider = %record.provider,
            model = record.model.as_deref().unwrap_or("-"),
            status = record.status,
            input_tokens = record.input_tokens,
            output_tokens = record.output_tokens,
            outcome = %record.outcome,
            error = error.unwrap_or("-"),
            tool_calls = record.tool_calls.len(),
            duration_ms = record.duration_ms,
            "request"
        );
        let label = [record.model.as_deref(), requested_model.as_deref()]
            .into_iter()
            .flatten()
            .find_map(|m| models.get(m));
        recorder.record(record, label.map(String::as_str));
    }
}

impl Body for TappedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.read();
                if let (Some(tap), Some(data)) = (this.tap.as_mut(), frame.data_ref()) {
                    tap.feed(data);
                }
                // A body of known length ends with its last frame: the server may never poll
                // again, so the record is completed now.
                if this.inner.is_end_stream() {
                    this.finish(true, None);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(false, Some("upstream_reset"));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finish(true, None);
                Poll::Ready(None)
            }
            Poll::Pending if this.idle.expired(cx) => {
                this.finish(false, Some("upstream_idle_timeout"));
                // Dropping the upstream body cancels the upstream request.
                this.inner = http_body_util::Empty::new()
                    .map_err(|e| match e {})
                    .boxed_unsync();
                Poll::Ready(Some(Err(IdleTimeout(this.idle.limit).into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TappedBody {
    fn drop(&mut self) {
        // Dropped before the end: the client went away, or the shutdown's grace ran out.
        if self.inner.is_end_stream() {
            self.finish(true, None);
        } else {
            let reason = self
                .pending
                .as_ref()
                .map_or("client_cancelled", |p| p.recorder.cancel_reason());
            self.finish(false, Some(reason));
        }
    }
}
