//! RELIABILITY §9.4, rows D1–D8: slow clients, the connection limit and HTTP/2 abuse. Every test
//! starts its own proxy with short limits (a few hundred milliseconds, through the config tweak)
//! in front of the mock provider upstream, and checks the offending connection ends in bounded
//! time while a well-behaved client on another connection is still served.
//!
//! `slow`: D1–D5 (slow heads, handshakes and bodies, idle tunnels, the connection limit);
//! `h2`: D6–D8 (HTTP/2 floods).

mod h2;
mod slow;

use crate::support::h2raw::H2;
use crate::support::*;
use aibridge_proxy::config::AppConfig;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{sleep, Instant};

const HOST: &str = "api.openai.com";
const TARGET: &str = "api.openai.com:443";
/// The limit under test (header read, TLS handshake or idle timeout).
const LIMIT: Duration = Duration::from_millis(500);
/// What a cut may take beyond its limit on a loaded two-core machine.
const MARGIN: Duration = Duration::from_millis(1500);

/// The proxy with `tweak` applied, intercepting `api.openai.com` to the mock upstream.
async fn start(tweak: impl FnOnce(&mut AppConfig) + Send + 'static) -> Env {
    Env::with(|o| o.openai().tweak(tweak)).await
}

/// [`start`], with tunnels to the echo server on `port` allowed.
async fn start_tunnelling(port: u16, tweak: impl FnOnce(&mut AppConfig) + Send + 'static) -> Env {
    Env::with(|o| o.openai().tunnels_to(port).tweak(tweak)).await
}

/// One request from a well-behaved agent on a fresh connection: `POST /echo` answered by the
/// upstream. Returns how long it took.
async fn served(env: &Env, http: Http) -> Duration {
    let started = Instant::now();
    let resp = env
        .client(http)
        .post(format!("https://{HOST}/echo"))
        .body("still here")
        .send()
        .await
        .expect("a normal client is served");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "still here");
    started.elapsed()
}

/// CONNECT to the intercepted host and finish TLS offering `alpn`.
async fn intercepted(env: &Env, alpn: &[&[u8]]) -> crate::support::observe::Tls {
    env.tls_alpn(TARGET, HOST, alpn)
        .await
        .expect("TLS through the proxy")
}

/// An HTTP/2 connection to the intercepted host, past the SETTINGS exchange.
async fn open_h2(env: &Env) -> H2<crate::support::observe::Tls> {
    H2::handshake(intercepted(env, &[b"h2"]).await)
        .await
        .expect("h2 handshake")
}

/// Write `bytes` one at a time, `gap` apart (then nothing more), while reading. Returns when the
/// server closed the connection (EOF or error) and what it sent before, or `None` if it was still
/// open after `wait`.
async fn dribble<S>(stream: S, bytes: &[u8], gap: Duration, wait: Duration) -> Option<Cut>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let (mut r, mut w) = tokio::io::split(stream);
    let write = async {
        for b in bytes {
            if raw::send(&mut w, std::slice::from_ref(b)).await.is_err() {
                break;
            }
            sleep(gap).await;
        }
        std::future::pending::<()>().await
    };
    let read = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = r.read(&mut buf).await {
            got.extend_from_slice(&buf[..n]);
        }
        got
    };
    tokio::select! {
        got = read => Some(Cut { after: started.elapsed(), got }),
        _ = write => None,
        _ = sleep(wait) => None,
    }
}

/// A connection the server ended.
#[derive(Debug)]
struct Cut {
    after: Duration,
    /// What the server sent before closing.
    got: Vec<u8>,
}

impl Cut {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.got).into_owned()
    }
}
