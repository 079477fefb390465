//! The relay of an upgraded socket: bytes copied both ways as they come, never re-encoded, a
//! copy of each direction read by a frame decoder for the account.
//!
//! Each direction writes what it read first and parses it after, so parsing adds nothing to the
//! path of a message. The relay ends when both sides have closed; before that it may end the
//! socket itself — idle for `--idle-timeout` (pings count as traffic), the agent's token revoked
//! or expired at a reload (close code 1008), the shutdown's grace over (1001) — by writing a close
//! frame to each side where its stream stands between two frames, then closing.

use super::account::{Account, Ending, Side};
use crate::metrics::Metrics;
use crate::net::idle::{Activity, IdleIo};
use crate::router::Router;
use crate::usage::ws::{close_frame, Frame, FrameDecoder};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Close codes of our own (RFC 6455 §7.4.1).
const GOING_AWAY: u16 = 1001;
const POLICY_VIOLATION: u16 = 1008;
/// How long the sides get to close after we ended the socket.
const CLOSING: Duration = Duration::from_secs(2);
const BUFFER: usize = 16 * 1024;

/// What the relay of one socket needs.
pub struct Relay {
    pub account: Account,
    pub idle: Duration,
    pub max_message: usize,
    /// The agent's token, re-checked at every reload (`None` with `--auth none`).
    pub token_id: Option<uuid::Uuid>,
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    pub provider: String,
    pub request_id: String,
}

/// Relay until both sides closed or the relay ended the socket. `hold` lives as long (the
/// client connection's place under `--max-connections`).
pub async fn run<H: Send>(
    relay: Relay,
    client: OnUpgrade,
    upstream: impl Future<Output = hyper::Result<Upgraded>>,
    cut: CancellationToken,
    hold: H,
) {
    let _hold = hold;
    let Relay {
        account,
        idle,
        max_message,
        token_id,
        router,
        metrics,
        provider,
        request_id,
    } = relay;
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::info!(%request_id, error = %e, "WebSocket upgrade did not complete");
            let mut account = account;
            account.end(Ending::ClientLeft);
            return;
        }
    };
    let started = Instant::now();
    let active = metrics.active_connections.with_label_values(&["websocket"]);
    active.inc();
    let activity = Activity::new();
    let (client_r, client_w) =
        tokio::io::split(IdleIo::new(TokioIo::new(client), activity.clone()));
    let (up_r, up_w) = tokio::io::split(TokioIo::new(upstream));
    let account = Mutex::new(account);
    let (stop_tx, stop_rx) = watch::channel(None::<u16>);
    let counters = |side: Side| {
        metrics
            .websocket_messages_total
            .with_label_values(&[provider.as_str(), side.label()])
    };
    let to_upstream = Pump {
        side: Side::Client,
        account: &account,
        max_message,
        stop: stop_rx.clone(),
        messages: counters(Side::Client),
    }
    .run(client_r, up_w);
    let to_client = Pump {
        side: Side::Upstream,
        account: &account,
        max_message,
        stop: stop_rx,
        messages: counters(Side::Upstream),
    }
    .run(up_r, client_w);
    let mut to_upstream = Box::pin(to_upstream);
    let mut to_client = Box::pin(to_client);
    let watch = watch_socket(&router, token_id, idle, &activity, &cut);
    tokio::pin!(watch);
    let (mut up_end, mut down_end, mut ours) = (None, None, None);
    // Once one side is gone (or we ended the socket), the other gets `CLOSING` to follow.
    let mut closing: Option<tokio::time::Instant> = None;
    while up_end.is_none() || down_end.is_none() {
        let give_up = async {
            match closing {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            t = &mut to_upstream, if up_end.is_none() => {
                up_end = Some(t);
                closing.get_or_insert_with(|| tokio::time::Instant::now() + CLOSING);
            }
            t = &mut to_client, if down_end.is_none() => {
                down_end = Some(t);
                closing.get_or_insert_with(|| tokio::time::Instant::now() + CLOSING);
            }
            (ending, code) = &mut watch, if ours.is_none() => {
                ours = Some(ending);
                let _ = stop_tx.send(Some(code));
                closing = Some(tokio::time::Instant::now() + CLOSING);
            }
            _ = give_up => break,
        }
    }
    drop((to_upstream, to_client));
    let first_close = account.lock().ok().and_then(|a| a.totals.first_close);
    let ending = ours.unwrap_or(match (first_close, up_end, down_end) {
        // The side that sent the first close frame ended the socket; without one, the side
        // whose stream ended first.
        (Some(Side::Client), ..) => Ending::ClientLeft,
        (Some(Side::Upstream), ..) => Ending::UpstreamClosed,
        (None, Some(up), Some(down)) if down < up => Ending::UpstreamClosed,
        (None, None, Some(_)) => Ending::UpstreamClosed,
        _ => Ending::ClientLeft,
    });
    let mut account = account
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    account.end(ending);
    active.dec();
    let t = account.totals;
    let (bytes_up, bytes_down) = activity.bytes();
    tracing::info!(
        %request_id,
        %provider,
        ended = ending.as_str(),
        responses = t.responses,
        messages_up = t.messages[Side::Client.index()],
        messages_down = t.messages[Side::Upstream.index()],
        unparsed = t.unparsed,
        bytes_up,
        bytes_down,
        client_close_code = t.close_codes[Side::Client.index()],
        upstream_close_code = t.close_codes[Side::Upstream.index()],
        duration_ms = started.elapsed().as_millis() as u64,
        "websocket closed"
    );
}

/// Resolves when the relay must end the socket itself, with why and the close code to send.
async fn watch_socket(
    router: &Router,
    token_id: Option<uuid::Uuid>,
    idle: Duration,
    activity: &Activity,
    cut: &CancellationToken,
) -> (Ending, u16) {
    let mut installs = router.installs();
    loop {
        tokio::select! {
            _ = cut.cancelled() => return (Ending::Shutdown, GOING_AWAY),
            _ = activity.idle_for(idle) => return (Ending::Idle, GOING_AWAY),
            changed = installs.changed() => {
                if changed.is_err() {
                    // The router is gone (the process is stopping): the cut will come.
                    std::future::pending::<()>().await;
                }
                if let Some(id) = token_id {
                    if !router.load().token_active(id) {
                        return (Ending::Revoked, POLICY_VIOLATION);
                    }
                }
            }
        }
    }
}

/// One direction of the socket.
struct Pump<'a> {
    /// Who speaks in this direction.
    side: Side,
    account: &'a Mutex<Account>,
    max_message: usize,
    stop: watch::Receiver<Option<u16>>,
    messages: prometheus::IntCounter,
}

impl Pump<'_> {
    /// Copy until the source ends or the relay says stop. Returns when it ended (for who went
    /// first).
    async fn run<R, W>(mut self, mut from: R, mut to: W) -> Instant
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut decoder = FrameDecoder::new(self.max_message);
        let mut buf = vec![0u8; BUFFER];
        loop {
            tokio::select! {
                biased;
                _ = self.stop.changed() => {
                    let code = *self.stop.borrow();
                    if let Some(code) = code.filter(|_| decoder.at_frame_boundary()) {
                        // Toward the upstream we speak as a client: masked.
                        let frame = close_frame(code, self.side == Side::Client);
                        let _ = to.write_all(&frame).await;
                    }
                    let _ = to.shutdown().await;
                    return Instant::now();
                }
                read = from.read(&mut buf) => {
                    let n = match read {
                        Ok(n) if n > 0 => n,
                        _ => {
                            let _ = to.shutdown().await;
                            return Instant::now();
                        }
                    };
                    if to.write_all(&buf[..n]).await.is_err() {
                        return Instant::now();
                    }
                    let (side, account, messages) = (self.side, self.account, &self.messages);
                    decoder.feed(&buf[..n], &mut |frame| {
                        if matches!(frame, Frame::Message { .. } | Frame::Oversized { .. }) {
                            messages.inc();
                        }
                        if let Ok(mut a) = account.lock() {
                            a.on_frame(side, frame);
                        }
                    });
                }
            }
        }
    }
}
