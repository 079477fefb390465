//! The load client: hyper's HTTP/1.1 client over rustls, either straight to the upstream or
//! through the proxy the way an agent does it (`CONNECT api.openai.com:443` with
//! `Proxy-Authorization`, then TLS to the name, trusting the proxy's CA). Same code, same TLS
//! settings on both paths; only the CONNECT preamble differs.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub const CHAT_BODY: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}]}"#;
pub const STREAM_BODY: &str = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Count."}]}"#;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Path {
    Direct,
    /// The minimal relay (the floor).
    Relay,
    /// hudsucker, a MITM proxy crate, with a pass-through handler (the peer).
    Hudsucker,
    Proxy,
    /// A second proxy process, started with `--record-prompts false`.
    ProxyNoPrompts,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Relay => "relay",
            Path::Hudsucker => "hudsucker",
            Path::Proxy => "proxy",
            Path::ProxyNoPrompts => "proxy-np",
        }
    }
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Endpoints {
    pub upstream: SocketAddr,
    pub proxy: SocketAddr,
    /// `Basic base64(agent:TOKEN)`.
    pub proxy_auth: String,
    /// Trusts the upstream's CA (direct).
    pub tls_direct: TlsConnector,
    /// Trusts the proxy's CA (proxied).
    pub tls_proxy: TlsConnector,
    /// The minimal relay and its CA, when started.
    pub relay: Option<(SocketAddr, TlsConnector)>,
    /// hudsucker and its CA, when built and started.
    pub hudsucker: Option<(SocketAddr, TlsConnector)>,
    /// The proxy started with `--record-prompts false` (same CA and token as the proxy).
    pub proxy_np: Option<(SocketAddr, String, TlsConnector)>,
    /// The same trust as the connectors above, with TLS resumption on (one session store per
    /// path, shared by its connections): `[direct, relay, hudsucker, proxy]`.
    pub resuming: [Option<TlsConnector>; 4],
}

impl Endpoints {
    pub fn new(
        upstream: SocketAddr,
        proxy: SocketAddr,
        token: &str,
        upstream_ca: &str,
        proxy_ca: &str,
    ) -> Self {
        use base64::Engine;
        let cfg = |pem: &str| {
            let mut c = crate::tls::client_config(&[pem], &[b"http/1.1"]);
            // Every new connection is a full handshake on both paths.
            c.resumption = rustls::client::Resumption::disabled();
            TlsConnector::from(Arc::new(c))
        };
        Endpoints {
            upstream,
            proxy,
            proxy_auth: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("agent:{token}"))
            ),
            tls_direct: cfg(upstream_ca),
            tls_proxy: cfg(proxy_ca),
            relay: None,
            hudsucker: None,
            proxy_np: None,
            resuming: [
                Some(resuming(upstream_ca)),
                None,
                None,
                Some(resuming(proxy_ca)),
            ],
        }
    }

    pub fn with_relay(mut self, addr: SocketAddr, ca: &str) -> Self {
        self.relay = Some((addr, cfg(ca)));
        self.resuming[1] = Some(resuming(ca));
        self
    }

    pub fn with_hudsucker(mut self, addr: SocketAddr, ca: &str) -> Self {
        self.hudsucker = Some((addr, cfg(ca)));
        self.resuming[2] = Some(resuming(ca));
        self
    }

    pub fn with_proxy_np(mut self, addr: SocketAddr, token: &str, ca: &str) -> Self {
        use base64::Engine;
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("agent:{token}"))
        );
        self.proxy_np = Some((addr, auth, cfg(ca)));
        self
    }

    /// The `Host` a request on `path` carries.
    pub fn host(&self, path: Path) -> String {
        match path {
            Path::Direct => format!("localhost:{}", self.upstream.port()),
            _ => "api.openai.com".to_string(),
        }
    }

    /// A raw byte stream to `target` through the proxy's CONNECT (a tunnel or a MITM session).
    pub async fn connect_tunnel(&self, target: &str) -> TcpStream {
        self.connect_via(self.proxy, target).await
    }

    async fn connect_via(&self, proxy: SocketAddr, target: &str) -> TcpStream {
        self.connect_auth(proxy, target, &self.proxy_auth).await
    }

    async fn connect_auth(&self, proxy: SocketAddr, target: &str, auth: &str) -> TcpStream {
        let mut tcp = TcpStream::connect(proxy).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let head = format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {auth}\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        // Read exactly the response head: byte by byte, so no tunnel byte is consumed.
        let mut buf = Vec::with_capacity(128);
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            let n = tcp.read(&mut byte).await.unwrap();
            assert!(n == 1, "proxy closed during CONNECT");
            buf.push(byte[0]);
        }
        assert!(
            buf.starts_with(b"HTTP/1.1 200"),
            "CONNECT refused: {}",
            String::from_utf8_lossy(&buf)
        );
        tcp
    }

    /// A new HTTP/1.1 connection over TLS on `path`.
    pub async fn open(&self, path: Path) -> SendRequest<Full<Bytes>> {
        handshake(self.tls(path, false).await).await
    }

    /// [`Endpoints::open`] with TLS resumption allowed (a resumed handshake once this path's
    /// session store holds a session).
    pub async fn open_resuming(&self, path: Path) -> SendRequest<Full<Bytes>> {
        handshake(self.tls(path, true).await).await
    }

    /// A TLS stream to the upstream's name on `path` (ALPN http/1.1).
    pub async fn tls(&self, path: Path, resume: bool) -> Tls {
        let (tcp, tls, name) = match path {
            Path::Direct => {
                let tcp = TcpStream::connect(self.upstream).await.unwrap();
                tcp.set_nodelay(true).unwrap();
                (tcp, &self.tls_direct, "localhost")
            }
            Path::Proxy => (
                self.connect_tunnel("api.openai.com:443").await,
                &self.tls_proxy,
                "api.openai.com",
            ),
            Path::Relay | Path::Hudsucker => {
                let (addr, tls) = match path {
                    Path::Relay => self.relay.as_ref().expect("relay started"),
                    _ => self.hudsucker.as_ref().expect("hudsucker started"),
                };
                (
                    self.connect_via(*addr, "api.openai.com:443").await,
                    tls,
                    "api.openai.com",
                )
            }
            Path::ProxyNoPrompts => {
                let (addr, auth, tls) = self.proxy_np.as_ref().expect("second proxy started");
                (
                    self.connect_auth(*addr, "api.openai.com:443", auth).await,
                    tls,
                    "api.openai.com",
                )
            }
        };
        let slot = match path {
            Path::Direct => 0,
            Path::Relay => 1,
            Path::Hudsucker => 2,
            Path::Proxy | Path::ProxyNoPrompts => 3,
        };
        // The second proxy has its own CA: no resuming connector for it.
        let tls = match (resume && path != Path::ProxyNoPrompts, &self.resuming[slot]) {
            (true, Some(r)) => r,
            _ => tls,
        };
        let name = ServerName::try_from(name.to_string()).unwrap();
        tls.connect(name, tcp).await.unwrap()
    }
}

pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn handshake(stream: Tls) -> SendRequest<Full<Bytes>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// A connector trusting `pem` that resumes TLS sessions (rustls' default in-memory store).
fn resuming(pem: &str) -> TlsConnector {
    TlsConnector::from(Arc::new(crate::tls::client_config(&[pem], &[b"http/1.1"])))
}

fn cfg(pem: &str) -> TlsConnector {
    let mut c = crate::tls::client_config(&[pem], &[b"http/1.1"]);
    // Every new connection is a full handshake on every path.
    c.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(c))
}

pub fn request(
    host: &str,
    body: &'static str,
    extra: &[(&'static str, String)],
) -> Request<Full<Bytes>> {
    request_bytes(host, Bytes::from_static(body.as_bytes()), extra)
}

pub fn request_bytes(
    host: &str,
    body: Bytes,
    extra: &[(&'static str, String)],
) -> Request<Full<Bytes>> {
    let mut b = Request::post("/v1/chat/completions")
        .header("host", host)
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-agent-placeholder");
    for (k, v) in extra {
        b = b.header(*k, v.as_str());
    }
    b.body(Full::new(body)).unwrap()
}

/// One small JSON call on an open connection; returns whether it got a 200 and a full body.
pub async fn call(sender: &mut SendRequest<Full<Bytes>>, host: &str) -> bool {
    call_with(sender, host, Bytes::from_static(CHAT_BODY.as_bytes())).await
}

/// [`call`] with this request body.
pub async fn call_with(sender: &mut SendRequest<Full<Bytes>>, host: &str, body: Bytes) -> bool {
    if sender.ready().await.is_err() {
        return false;
    }
    let Ok(resp) = sender.send_request(request_bytes(host, body, &[])).await else {
        return false;
    };
    let ok = resp.status() == 200;
    match resp.into_body().collect().await {
        Ok(body) => ok && !body.to_bytes().is_empty(),
        Err(_) => false,
    }
}
