//! The response body on its way to the client: relayed frame by frame, with a copy of each data
//! frame fed to the usage tap. When the body ends (or fails, or the client goes away and drops
//! it) the interception record is completed and queued — exactly once.

use super::ProxyBody;
use crate::store::Interception;
use crate::usage::recorder::Recorder;
use crate::usage::{Api, UsageTap};
use crate::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// What the record needs besides the usage.
pub struct Pending {
    pub recorder: Recorder,
    pub record: Interception,
    pub started: Instant,
    pub api: Api,
}

pub struct TappedBody {
    inner: ProxyBody,
    tap: Option<UsageTap>,
    pending: Option<Box<Pending>>,
}

impl TappedBody {
    pub fn new(inner: ProxyBody, tap: UsageTap, pending: Pending) -> Self {
        TappedBody {
            inner,
            tap: Some(tap),
            pending: Some(Box::new(pending)),
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
        } = *pending;
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
            duration_ms = record.duration_ms,
            "request"
        );
        recorder.record(record);
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
