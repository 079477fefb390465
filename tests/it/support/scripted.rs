//! Upstreams that misbehave on cue, for the upstream fault tests (RELIABILITY §10):
//! [`ScriptedUpstream`] is a real hyper server (h2 and HTTP/1.1) whose answers a test writes and
//! which can send GOAWAY on demand; [`RawUpstream`] writes fixed bytes over TLS and then keeps,
//! closes or resets the connection — for what no well-behaved server library would send.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};

pub type Body = BoxBody<Bytes, Infallible>;

/// A response body fed frame by frame through the returned sender.
pub fn channel_body() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(8);
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|b| b.map(|b| Ok::<_, Infallible>(Frame::data(b))))
    });
    (tx, StreamBody::new(stream).boxed())
}

/// A hyper server on loopback TLS answering with the test's handler, which gets the index of
/// the connection (in accept order) and the request.
pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    goaway: Arc<Notify>,
}

impl ScriptedUpstream {
    pub async fn start<F, Fut>(config: Arc<rustls::ServerConfig>, handler: F) -> Self
    where
        F: Fn(usize, Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let goaway = Arc::new(Notify::new());
        let handler = Arc::new(handler);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (c, r, g) = (connections.clone(), requests.clone(), goaway.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let index = c.fetch_add(1, Ordering::SeqCst);
                let (acceptor, handler, r, g) =
                    (acceptor.clone(), handler.clone(), r.clone(), g.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req| {
                        r.fetch_add(1, Ordering::SeqCst);
                        let answer = handler(index, req);
                        async move { Ok::<_, Infallible>(answer.await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(tls), service);
                    tokio::pin!(conn);
                    let goaway = g.notified();
                    tokio::pin!(goaway);
                    goaway.as_mut().enable();
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = goaway => {
                            // h2: GOAWAY; streams in flight run to their end.
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
        });
        ScriptedUpstream {
            addr,
            connections,
            requests,
            goaway,
        }
    }

    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// TLS connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Request heads received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Shut every connection open now down gracefully (h2: GOAWAY, then the final GOAWAY once
    /// a ping round trip shows the peer has it); later connections are not affected.
    pub fn goaway(&self) {
        self.goaway.notify_waiters();
    }
}

/// What a [`RawUpstream`] does after writing its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Wait for the next request on the same connection.
    KeepAlive,
    /// Send close_notify and FIN after this delay, reading nothing more.
    Close(Duration),
    /// Wait for [`RawUpstream::release`], then reset the TCP connection (RST, no close_notify).
    ResetWhenReleased,
    /// Keep the connection open, reading nothing, until the peer closes it.
    Hold,
}

pub struct Reply {
    pub bytes: Vec<u8>,
    pub then: Then,
}

/// A TLS server (ALPN http/1.1 only) that reads each request head (and a `content-length`
/// body) and answers with the bytes its script returns for (request index, head).
pub struct RawUpstream {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
    release: Arc<Notify>,
}

impl RawUpstream {
    pub async fn start<F>(ca: &super::TestCa, script: F) -> Self
    where
        F: Fn(usize, &str) -> Reply + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(&[b"http/1.1"]));
        let connections = Arc::new(AtomicUsize::new(0));
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let release = Arc::new(Notify::new());
        let script = Arc::new(script);
        let (c, h, rel) = (connections.clone(), heads.clone(), release.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let (acceptor, script, h, rel) =
                    (acceptor.clone(), script.clone(), h.clone(), rel.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    while let Some(head) = read_request(&mut tls, &mut buf).await {
                        let index = {
                            let mut heads = h.lock().unwrap();
                            heads.push(head.clone());
                            heads.len() - 1
                        };
                        let reply = script(index, &head);
                        if tls.write_all(&reply.bytes).await.is_err() || tls.flush().await.is_err()
                        {
                            return;
                        }
                        match reply.then {
                            Then::KeepAlive => continue,
                            Then::Close(delay) => {
                                tokio::time::sleep(delay).await;
                                let _ = tls.shutdown().await;
                            }
                            Then::ResetWhenReleased => {
                                rel.notified().await;
                                let (tcp, _) = tls.into_inner();
                                let _ = tcp.set_zero_linger();
                            }
                            Then::Hold => {
                                let mut sink = [0u8; 1024];
                                while let Ok(n) = tls.read(&mut sink).await {
                                    if n == 0 {
                                        break;
                                    }
                                }
                            }
                        }
                        return;
                    }
                });
            }
        });
        RawUpstream {
            addr,
            connections,
            heads,
            release,
        }
    }

    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The request heads read so far.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Let one connection waiting in [`Then::ResetWhenReleased`] reset.
    pub fn release(&self) {
        self.release.notify_one();
    }
}

/// One request head and its `content-length` body off `stream`; `buf` keeps what was read past
/// it. `None` at EOF or error.
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            let length = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                fill(stream, buf).await?;
            }
            buf.drain(..end + 4 + length);
            return Some(head);
        }
        fill(stream, buf).await?;
    }
}

async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// A server config whose certificate (for `name` and 127.0.0.1) expired yesterday, and the PEM
/// of the CA that signed it (trust it to make expiry the only fault).
pub fn expired_server_config(name: &str, alpn: &[&[u8]]) -> (String, Arc<rustls::ServerConfig>) {
    let ca = super::TestCa::named("aibridge test expiry CA");
    let mut params = super::tls::leaf_params(name);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now - time::Duration::days(1);
    (ca.cert_pem.clone(), ca.server_config_signing(params, alpn))
}
