//! Tunnels: after the `200`, copy bytes both ways, untouched, until either side closes.
//!
//! The destination was dialled (and its address checked by the egress policy) before the
//! `200` went out, so a refused or unreachable destination is an HTTP answer, not a reset.
//! The client's socket is taken back from hyper after the upgrade, so the copy runs between
//! two plain TCP sockets with large buffers (bulk transfers are bound by syscalls per byte).
//! A tunnel on which nothing moved either way for `--idle-timeout` is closed.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::net::idle::{Activity, IdleIo};
use std::time::Duration;

/// Copy buffer per direction: large enough that a bulk transfer costs few syscalls.
const COPY_BUFFER: usize = 256 * 1024;

pub(super) async fn relay(
    upgrade: OnUpgrade,
    mut upstream: TcpStream,
    target: String,
    idle: Duration,
    _active: super::ActiveGuard,
) {
    let upgraded = match upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(%target, error = %e, "CONNECT upgrade failed");
            return;
        }
    };
    let activity = Activity::new();
    let copied = async {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let mut client = IdleIo::new(parts.io.into_inner(), activity.clone());
                // Bytes the client sent right behind the CONNECT head were read with it.
                upstream.write_all(&parts.read_buf).await?;
                copy(&mut client, &mut upstream).await
            }
            Err(upgraded) => {
                let mut client = IdleIo::new(TokioIo::new(upgraded), activity.clone());
                copy(&mut client, &mut upstream).await
            }
        }
    };
    let ended = tokio::select! {
        r = copied => match r {
            Ok(_) => "closed",
            Err(e) => {
                tracing::debug!(%target, error = %e, "tunnel ended with an error");
                "error"
            }
        },
        _ = activity.idle_for(idle) => "idle_timeout",
    };
    // The operator's view of what left through the proxy: where, how much, how long.
    let (up, down) = activity.bytes();
    tracing::info!(%target, bytes_up = up, bytes_down = down, duration_ms = activity.age().as_millis() as u64, %ended, "tunnel closed");
}

async fn copy<C>(client: &mut C, upstream: &mut TcpStream) -> std::io::Result<(u64, u64)>
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::io::copy_bidirectional_with_sizes(client, upstream, COPY_BUFFER, COPY_BUFFER).await
}
