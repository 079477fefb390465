//! Tunnels: after the `200`, copy bytes both ways, untouched, until either side closes.
//!
//! The destination was dialled (and its address checked by the egress policy) before the
//! `200` went out, so a refused or unreachable destination is an HTTP answer, not a reset.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub(super) async fn relay(
    upgrade: OnUpgrade,
    mut upstream: TcpStream,
    target: String,
    _active: super::ActiveGuard,
) {
    let upgraded = match upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(%target, error = %e, "CONNECT upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(upgraded);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => {
            tracing::debug!(%target, bytes_up = up, bytes_down = down, "tunnel closed")
        }
        Err(e) => tracing::debug!(%target, error = %e, "tunnel ended with an error"),
    }
}
