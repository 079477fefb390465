//! RELIABILITY §9 bad inputs as one table (figure F-1). Every row is one distinct input with its
//! documented answer: a status (or "closed without an answer", "handshake failure", "stream
//! reset"), whether the connection closes after it, what reached a destination (nothing, or
//! exactly one request of the expected shape) and, for refusals the proxy makes itself, the
//! `connect_rejections_total{reason}` it counts. After every row a full request through the same
//! proxy (CONNECT, TLS, `GET /echo`) proves the process still serves; the proxies run on a
//! runtime whose panics are counted.
//!
//! Two proxies share one mock provider upstream (TLS, h2) and one plain-HTTP destination:
//! `deny` (`--non-provider-hosts deny`: a valid non-provider target is refused at once, without
//! DNS) and `tunnel` (tunnels and plain forwards to 127.0.0.0/8 allowed, for the egress and plain
//! forwarding rows). Both run with `--max-request-body 1 MiB`.
//!
//! `cargo test --test it bad_input -- --nocapture` prints every row and the F-1 figure.

use crate::support::h2raw::{self, Reply, H2};
use crate::support::plain::PlainServer;
use crate::support::raw::Answer;
use crate::support::upstream::Seen;
use crate::support::*;
use aibridge_proxy::config::NonProviderHosts;
use aibridge_proxy::provider::ProviderKind;
use futures_util::future::BoxFuture;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// `--max-request-body` of both proxies.
const BODY_LIMIT: usize = 1024 * 1024;
/// The panic-counting runtime's name.
const RUNTIME: &str = "bad-input";

// === the environment ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Px {
    Deny,
    Tunnel,
}

struct Env {
    upstream: MockUpstream,
    plain: PlainServer,
    deny: TestProxy,
    tunnel: TestProxy,
}

impl Env {
    async fn start() -> Env {
        let ca = TestCa::new();
        let upstream = MockUpstream::start(ca.server_config(&[b"h2", b"http/1.1"])).await;
        let plain = PlainServer::start().await;
        let mut openai = ProviderSpec::openai(upstream.base_url());
        // Absolute-form `http://api.openai.com/...` reaches the bridge too.
        openai.intercept_hosts.push("api.openai.com:80".into());
        let spec = |name: &'static str, host: &str| ProviderSpec {
            name,
            kind: ProviderKind::Openai,
            base_url: upstream.base_url(),
            intercept_hosts: vec![host.to_string()],
            key: Some("sk-provider-other-0123456789"),
        };
        let deny = TestProxy::start(TestProxyOptions {
            providers: vec![
                openai.clone(),
                ProviderSpec::anthropic(upstream.base_url()),
                // enforce_models with one model, set below.
                spec("strict", "strict.example.com"),
                // Intercepted by IP literal: no SNI, IP SAN.
                spec("byip", "10.1.2.3"),
                // Touched only by D11: its first leaf is minted there.
                spec("fresh", "d11.example.com"),
            ],
            upstream_ca_pem: Some(ca.cert_pem.clone()),
            non_provider_hosts: NonProviderHosts::Deny,
            max_request_body: Some(BODY_LIMIT),
            ..Default::default()
        })
        .await;
        let tunnel = TestProxy::start(TestProxyOptions {
            providers: vec![openai],
            upstream_ca_pem: Some(ca.cert_pem.clone()),
            allow_private_cidrs: vec!["127.0.0.0/8"],
            extra_ports: vec![plain.port(), upstream.addr.port()],
            max_request_body: Some(BODY_LIMIT),
            ..Default::default()
        })
        .await;
        let (status, body) = deny
            .admin(
                "PATCH",
                "/api/v1/providers/strict",
                Some(json!({"enforce_models": true})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = deny
            .admin(
                "POST",
                "/api/v1/models",
                Some(json!({"provider": "strict", "model": "gpt-allowed"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        Env {
            upstream,
            plain,
            deny,
            tunnel,
        }
    }

    fn proxy(&self, px: Px) -> &TestProxy {
        match px {
            Px::Deny => &self.deny,
            Px::Tunnel => &self.tunnel,
        }
    }

    fn auth(&self, px: Px) -> String {
        raw::basic(&self.proxy(px).token)
    }

    fn rejections(&self, px: Px, reason: &str) -> u64 {
        self.proxy(px)
            .app
            .metrics
            .connect_rejections_total
            .with_label_values(&[reason])
            .get()
    }

    fn connections(&self, px: Px, kind: &str) -> u64 {
        self.proxy(px)
            .app
            .metrics
            .connections_total
            .with_label_values(&[kind])
            .get()
    }
}

// === rows ===

/// What a row sends.
enum Input {
    /// Raw bytes to a proxy listener.
    Listener(Vec<u8>),
    /// Raw bytes to the deny proxy's admin listener.
    Admin(Vec<u8>),
    /// `CONNECT target`, TLS with `sni` (ALPN http/1.1, trusting the proxy CA), then raw bytes.
    Mitm {
        target: String,
        sni: &'static str,
        bytes: Vec<u8>,
    },
    /// Raw h2 (ALPN h2) inside an intercepted connection to api.openai.com: one HEADERS frame
    /// with these fields and END_STREAM, on stream 1.
    H2(Vec<(String, String)>),
    /// Anything else: the function makes its own checks.
    Custom(for<'a> fn(&'a Env) -> BoxFuture<'a, Result<(), String>>),
}

/// The documented answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Status(u16),
    /// The connection closes without any answer.
    Closed,
    /// h2 RST_STREAM with this code.
    Reset(u32),
    /// A custom row's own checks.
    Custom(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    /// EOF after the answer.
    Closes,
    /// A normal follow-up request on the same connection is answered 200.
    KeepAlive,
    /// A `200` to CONNECT: the connection is now a tunnel or intercepted.
    Established,
    /// Checked by the custom row itself.
    Custom,
}

type Check = Box<dyn Fn(&Seen) -> Result<(), String>>;

/// What reached the destinations.
enum Dest {
    /// Neither the mock provider nor the plain destination saw a request.
    Nothing,
    /// Exactly one request at the mock provider, nothing at the plain destination.
    Mock(Check),
    /// Exactly one request at the plain destination, nothing at the mock provider.
    Plain(Check),
    /// Checked by the custom row itself.
    Custom,
}

struct Row {
    id: &'static str,
    px: Px,
    input: String,
    send: Input,
    want: Want,
    conn: Conn,
    dest: Dest,
    reason: Option<&'static str>,
}

impl Row {
    fn new(id: &'static str, px: Px, send: Input) -> Row {
        let input = match &send {
            Input::Listener(b) | Input::Admin(b) => shown(b),
            Input::Mitm { target, bytes, .. } => format!("[in CONNECT {target}] {}", shown(bytes)),
            Input::H2(fields) => format!(
                "[h2] {}",
                fields
                    .iter()
                    .map(|(n, v)| format!("{n}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Input::Custom(_) => String::new(),
        };
        Row {
            id,
            px,
            input,
            send,
            want: Want::Closed,
            conn: Conn::Closes,
            dest: Dest::Nothing,
            reason: None,
        }
    }

    fn note(mut self, input: impl Into<String>) -> Row {
        self.input = input.into();
        self
    }

    fn status(mut self, status: u16) -> Row {
        self.want = Want::Status(status);
        self
    }

    fn reset(mut self, code: u32) -> Row {
        self.want = Want::Reset(code);
        self
    }

    fn closes(mut self) -> Row {
        self.conn = Conn::Closes;
        self
    }

    fn keeps(mut self) -> Row {
        self.conn = Conn::KeepAlive;
        self
    }

    fn established(mut self) -> Row {
        self.conn = Conn::Established;
        self
    }

    fn reason(mut self, reason: &'static str) -> Row {
        self.reason = Some(reason);
        self
    }

    fn mock(mut self, check: impl Fn(&Seen) -> Result<(), String> + 'static) -> Row {
        self.dest = Dest::Mock(Box::new(check));
        self
    }

    fn plain(mut self, check: impl Fn(&Seen) -> Result<(), String> + 'static) -> Row {
        self.dest = Dest::Plain(Box::new(check));
        self
    }

    /// What the row expects, for the printed table.
    fn expected(&self) -> String {
        let answer = match self.want {
            Want::Status(s) => s.to_string(),
            Want::Closed => "closed, no answer".into(),
            Want::Reset(c) => format!("RST_STREAM {c:#x}"),
            Want::Custom(what) => what.into(),
        };
        let conn = match self.conn {
            Conn::Closes => ", close",
            Conn::KeepAlive => ", keep-alive",
            Conn::Established => ", established",
            Conn::Custom => "",
        };
        let dest = match self.dest {
            Dest::Nothing => ", nothing forwarded",
            Dest::Mock(_) => ", 1 request upstream",
            Dest::Plain(_) => ", 1 request at the destination",
            Dest::Custom => "",
        };
        let reason = self
            .reason
            .map(|r| format!(", reason {r}"))
            .unwrap_or_default();
        format!("{answer}{conn}{dest}{reason}")
    }
}

fn listener(id: &'static str, px: Px, bytes: impl Into<Vec<u8>>) -> Row {
    Row::new(id, px, Input::Listener(bytes.into()))
}

fn admin(id: &'static str, bytes: impl Into<Vec<u8>>) -> Row {
    Row::new(id, Px::Deny, Input::Admin(bytes.into()))
}

fn mitm(id: &'static str, bytes: impl Into<Vec<u8>>) -> Row {
    mitm_to(id, Px::Deny, "api.openai.com:443", "api.openai.com", bytes)
}

fn mitm_to(
    id: &'static str,
    px: Px,
    target: &str,
    sni: &'static str,
    bytes: impl Into<Vec<u8>>,
) -> Row {
    Row::new(
        id,
        px,
        Input::Mitm {
            target: target.to_string(),
            sni,
            bytes: bytes.into(),
        },
    )
}

fn h2(id: &'static str, fields: &[(&str, &str)]) -> Row {
    let fields = fields
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    Row::new(id, Px::Deny, Input::H2(fields))
}

fn custom(
    id: &'static str,
    px: Px,
    input: &str,
    want: &'static str,
    f: for<'a> fn(&'a Env) -> BoxFuture<'a, Result<(), String>>,
) -> Row {
    let mut row = Row::new(id, px, Input::Custom(f)).note(input);
    row.want = Want::Custom(want);
    row.conn = Conn::Custom;
    row.dest = Dest::Custom;
    row
}

/// A printable prefix of raw bytes.
fn shown(bytes: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(&bytes[..bytes.len().min(90)])
        .escape_debug()
        .collect();
    if bytes.len() > 90 {
        format!("{text}… ({} bytes)", bytes.len())
    } else {
        text
    }
}

// === destination checks ===

fn body_is(expected: &'static [u8]) -> impl Fn(&Seen) -> Result<(), String> {
    move |seen| {
        if seen.body.as_ref() == expected {
            Ok(())
        } else {
            Err(format!(
                "destination got body {:?}, expected {:?}",
                shown(&seen.body),
                shown(expected)
            ))
        }
    }
}

fn any_request(_: &Seen) -> Result<(), String> {
    Ok(())
}

/// The provider's key is the only credential, and none of `gone` arrived.
fn only_key(header: &'static str, key: &'static str, gone: &'static [&'static str]) -> Check {
    Box::new(move |seen| {
        let values: Vec<_> = seen.headers.get_all(header).iter().collect();
        if values != [key] {
            return Err(format!(
                "{header} upstream: {values:?}, expected only {key:?}"
            ));
        }
        for name in gone {
            if seen.headers.contains_key(*name) {
                return Err(format!("{name} reached the upstream: {:?}", seen.headers));
            }
        }
        Ok(())
    })
}

const OPENAI_KEY: &str = "Bearer sk-provider-openai-0123456789";
const ANTHROPIC_KEY: &str = "sk-ant-provider-0123456789";

// === running a row ===

/// Connect to the proxy, CONNECT `target` and finish a TLS handshake with `sni` and `alpn`.
async fn tls_in(
    env: &Env,
    px: Px,
    target: &str,
    sni: &str,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let mut tcp = TcpStream::connect(env.proxy(px).addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let req = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {}\r\n\r\n",
        env.auth(px)
    );
    tcp.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let head = raw::read_head(&mut tcp).await;
    if raw::status(&head) != 200 {
        return Err(format!("CONNECT {target}: {head:?}"));
    }
    let config = tls::client_config(&[&env.proxy(px).ca_pem], alpn);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name =
        rustls_pki_types::ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| format!("handshake: {e}"))
}

/// Send `bytes` while reading the answer (a proxy may answer before it has read everything),
/// check the answer and, for [`Conn::Closes`], that the connection ends.
async fn exchange<S>(mut stream: S, bytes: &[u8], want: Want, conn: Conn) -> Result<S, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let answer = {
        let (mut r, mut w) = tokio::io::split(&mut stream);
        let done = tokio::sync::Notify::new();
        let connect = bytes.starts_with(b"CONNECT ");
        let read = async {
            let answer = read_rest(&mut r, connect).await;
            done.notify_one();
            answer
        };
        let write = async {
            let write_all = async {
                let _ = w.write_all(bytes).await;
                let _ = w.flush().await;
            };
            // A write still going once the answer is in gets a moment, then is dropped: the
            // proxy may have refused without reading the rest.
            let answered = async {
                done.notified().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            tokio::select! {
                () = write_all => {}
                () = answered => {}
            }
        };
        tokio::join!(read, write).0
    };
    check_answer(&answer, want)?;
    if conn == Conn::Closes && !raw::closes(&mut stream).await {
        return Err("connection stayed open".into());
    }
    Ok(stream)
}

/// A normal request on the same connection must be answered 200.
async fn follow_up<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
) -> Result<(), String> {
    raw::send(stream, request)
        .await
        .map_err(|e| format!("follow-up write: {e}"))?;
    let next = raw::read_response_to(stream, request.starts_with(b"CONNECT ")).await;
    if next.status == 200 {
        Ok(())
    } else {
        Err(format!("follow-up on the same connection: {:?}", next.head))
    }
}

/// The final answer, past any interim `1xx`.
async fn read_rest<S: AsyncRead + Unpin>(r: &mut S, connect: bool) -> Answer {
    let mut answer = raw::read_response_to(r, connect).await;
    while (100..200).contains(&answer.status) {
        answer = raw::read_response_to(r, connect).await;
    }
    answer
}

fn check_answer(answer: &Answer, want: Want) -> Result<(), String> {
    let ok = match want {
        Want::Status(s) => answer.status == s,
        Want::Closed => answer.status == 0,
        Want::Reset(_) | Want::Custom(_) => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "answer {:?} {}",
            answer.head.lines().next().unwrap_or("(none)"),
            shown(&answer.body)
        ))
    }
}

async fn run_row(env: &Env, row: &Row) -> Result<(), String> {
    let reason_before = row.reason.map(|r| env.rejections(row.px, r));
    let before = (env.upstream.seen().len(), env.plain.seen().len());
    let proxy = env.proxy(row.px);
    let keep = row.conn == Conn::KeepAlive;
    match &row.send {
        Input::Listener(bytes) => {
            let tcp = TcpStream::connect(proxy.addr)
                .await
                .map_err(|e| e.to_string())?;
            let mut tcp = exchange(tcp, bytes, row.want, row.conn).await?;
            check_dest(env, row, before).await?;
            if keep {
                let next = format!(
                    "CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
                    env.auth(row.px)
                );
                follow_up(&mut tcp, next.as_bytes()).await?;
            }
        }
        Input::Admin(bytes) => {
            let admin = proxy.app.admin_addr.ok_or("no admin listener")?;
            let tcp = TcpStream::connect(admin).await.map_err(|e| e.to_string())?;
            let mut tcp = exchange(tcp, bytes, row.want, row.conn).await?;
            check_dest(env, row, before).await?;
            if keep {
                follow_up(&mut tcp, b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n").await?;
            }
        }
        Input::Mitm { target, sni, bytes } => {
            let tls = tls_in(env, row.px, target, sni, &[b"http/1.1"]).await?;
            let mut tls = exchange(tls, bytes, row.want, row.conn).await?;
            check_dest(env, row, before).await?;
            if keep {
                let next = format!("GET /echo HTTP/1.1\r\nHost: {sni}\r\n\r\n");
                follow_up(&mut tls, next.as_bytes()).await?;
            }
        }
        Input::H2(fields) => {
            let tls = tls_in(
                env,
                row.px,
                "api.openai.com:443",
                "api.openai.com",
                &[b"h2"],
            )
            .await?;
            let mut h2 = H2::handshake(tls).await.map_err(|e| format!("h2: {e}"))?;
            let fields: Vec<(&str, &str)> = fields
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            h2.headers(1, &fields, true)
                .await
                .map_err(|e| e.to_string())?;
            let reply = h2.reply(1).await;
            let ok = match row.want {
                Want::Status(s) => reply == Reply::Status(s),
                Want::Reset(c) => reply == Reply::Reset(c),
                _ => false,
            };
            if !ok {
                return Err(format!("h2 reply {reply:?}"));
            }
            check_dest(env, row, before).await?;
            if keep {
                h2.headers(3, &GOOD_H2, true)
                    .await
                    .map_err(|e| e.to_string())?;
                let next = h2.reply(3).await;
                if next != Reply::Status(200) {
                    return Err(format!("next stream on the same connection: {next:?}"));
                }
            }
        }
        Input::Custom(f) => f(env).await?,
    }
    if let (Some(reason), Some(before)) = (row.reason, reason_before) {
        let after = env.rejections(row.px, reason);
        if after != before + 1 {
            return Err(format!(
                "connect_rejections_total{{reason={reason:?}}} went {before} → {after}"
            ));
        }
    }
    Ok(())
}

/// What reached the destinations since `before` (mock, plain) matches the row.
async fn check_dest(env: &Env, row: &Row, before: (usize, usize)) -> Result<(), String> {
    // A destination's record completes once it has read the body: give it a moment.
    let settle = Instant::now() + Duration::from_millis(500);
    loop {
        let mock: Vec<Seen> = env.upstream.seen().split_off(before.0);
        let plain: Vec<Seen> = env.plain.seen().split_off(before.1);
        let verdict = match &row.dest {
            Dest::Custom => Ok(()),
            Dest::Nothing if mock.is_empty() && plain.is_empty() => Ok(()),
            Dest::Nothing => Err(format!(
                "forwarded: {:?}",
                mock.iter()
                    .chain(&plain)
                    .map(|s| &s.path)
                    .collect::<Vec<_>>()
            )),
            Dest::Mock(check) if mock.len() == 1 && plain.is_empty() => check(&mock[0]),
            Dest::Plain(check) if plain.len() == 1 && mock.is_empty() => check(&plain[0]),
            Dest::Mock(_) | Dest::Plain(_) => Err(format!(
                "{} requests upstream, {} at the plain destination",
                mock.len(),
                plain.len()
            )),
        };
        match verdict {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > settle => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

const GOOD_H2: [(&str, &str); 4] = [
    (":method", "GET"),
    (":scheme", "https"),
    (":authority", "api.openai.com"),
    (":path", "/echo"),
];

/// The health probe: a full intercepted request through `px`.
async fn probe(env: &Env, px: Px) -> Result<(), String> {
    let tls = tls_in(
        env,
        px,
        "api.openai.com:443",
        "api.openai.com",
        &[b"http/1.1"],
    )
    .await?;
    let (mut r, mut w) = tokio::io::split(tls);
    raw::send(
        &mut w,
        b"GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nConnection: close\r\n\r\n",
    )
    .await
    .map_err(|e| e.to_string())?;
    let answer = raw::read_response(&mut r).await;
    if answer.status == 200 {
        Ok(())
    } else {
        Err(format!("probe: {:?}", answer.head))
    }
}

// === the table ===

#[rustfmt::skip] // one row per line
fn rows(env: &Env) -> Vec<Row> {
    use Px::{Deny, Tunnel};
    let auth = env.auth(Deny);
    let tauth = env.auth(Tunnel);
    let connect = |target: &str| {
        format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {auth}\r\n\r\n"
        )
    };
    let tconnect = |target: &str| {
        format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {tauth}\r\n\r\n"
        )
    };
    let with_auth = |value: &str| {
        format!("CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\nProxy-Authorization: {value}\r\n\r\n")
    };
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let token = env.deny.token.clone();
    let echo = |headers: &str, body: &str| {
        format!("POST /echo HTTP/1.1\r\nHost: api.openai.com\r\n{headers}\r\n{body}")
    };
    let chat = |headers: &str, body: &str| {
        format!("POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\n{headers}\r\n{body}")
    };
    let plain_port = env.plain.port();
    let plain = |headers: &str, body: &str| {
        format!("POST http://127.0.0.1:{plain_port}/plain HTTP/1.1\r\nHost: 127.0.0.1:{plain_port}\r\nProxy-Authorization: {tauth}\r\n{headers}\r\n{body}")
    };
    let strict = |body: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: strict.example.com\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let strict_bytes = |body: &[u8]| {
        let mut req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: strict.example.com\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        req
    };
    let admin_req = |method: &str, path: &str, auth: Option<&str>, body: Option<&str>| {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\n");
        if let Some(a) = auth {
            req.push_str(&format!("Authorization: {a}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ));
        } else {
            req.push_str("\r\n");
        }
        req
    };
    let bearer = format!("Bearer {}", env.deny.admin_token);
    let admin_auth = Some(bearer.as_str());
    let provider = |field: &str, value: serde_json::Value| {
        let mut body =
            json!({"name": "e-row", "kind": "openai", "base_url": "https://api.example.com"});
        body[field] = value;
        body.to_string()
    };
    let big_header = format!("X-Big: {}\r\n", "a".repeat(70_000));
    let many_headers: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_uri = format!(
        "GET /echo?{} HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
        "q".repeat(9000)
    );
    let over_limit = " ".repeat(BODY_LIMIT + 1024);
    let model_after_whitespace = format!("{{{over_limit}\"model\":\"gpt-allowed\"}}");
    let chunk_exts = format!(
        "{}\r\n",
        (0..40_000).map(|i| format!(";e{i}=x")).collect::<String>()
    );

    vec![
        // --- A: CONNECT line and target (SPEC §2) ---
        mitm_to("A1", Deny, "api.openai.com:443", "api.openai.com", "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
            .status(200).keeps().mock(any_request),
        mitm_to("A2", Deny, "API.OpenAI.COM:443", "api.openai.com", "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
            .status(200).keeps().mock(any_request),
        mitm_to("A3", Deny, "api.openai.com.:443", "api.openai.com", "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
            .status(200).keeps().mock(any_request),
        listener("A4", Deny, connect("api.openai.com..:443")).status(400).reason("bad_host"),
        listener("A4", Deny, connect(".api.openai.com:443")).status(400).reason("bad_host"),
        listener("A4", Deny, connect("api..openai.com:443")).status(400).reason("bad_host"),
        listener("A5", Deny, connect("api.openai.com")).status(400).reason("missing_port"),
        listener("A5", Deny, connect("api.openai.com:")).status(400).reason("bad_port"),
        listener("A6", Deny, connect("api.openai.com:0")).status(400).reason("bad_port"),
        listener("A6", Deny, connect("api.openai.com:65536")).status(400).reason("bad_port"),
        listener("A6", Deny, connect("api.openai.com:99999999999")).status(400).reason("bad_port"),
        listener("A6", Deny, connect("api.openai.com:-1")).status(400).reason("bad_port"),
        listener("A6", Deny, connect("api.openai.com:+443")).status(400).reason("bad_port"),
        listener("A6", Deny, connect("api.openai.com:0443")).status(400).reason("bad_port"),
        listener("A6", Deny, format!("CONNECT api.openai.com:443  HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n"))
            .status(400),
        listener("A7", Deny, connect("api.openai.com:8443")).status(400).reason("port_not_allowed"),
        listener("A8", Deny, connect("user:pw@api.openai.com:443")).status(400),
        listener("A9", Deny, connect("https://api.openai.com:443/")).status(400).reason("not_authority_form"),
        listener("A9", Deny, connect("/")).status(400).reason("not_authority_form"),
        listener("A9", Deny, connect("*")).status(400).reason("not_authority_form"),
        listener("A10", Deny, format!("connect api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n"))
            .status(400).reason("not_proxy_request"),
        listener("A11", Tunnel, tconnect("[::1]:443")).status(403).reason("private_address"),
        listener("A12", Deny, connect("::1:443")).status(400),
        listener("A12", Deny, connect("[fe80::1%25eth0]:443")).status(400),
        listener("A13", Tunnel, tconnect("[::ffff:169.254.169.254]:443")).status(403).reason("private_address"),
        listener("A13", Tunnel, tconnect("[64:ff9b::a9fe:a9fe]:443")).status(403).reason("private_address"),
        listener("A13", Tunnel, tconnect("[2002:a9fe:a9fe::]:443")).status(403).reason("private_address"),
        listener("A14", Deny, connect("0177.0.0.1:443")).status(400).reason("numeric_host"),
        listener("A14", Deny, connect("0x7f.1:443")).status(400).reason("numeric_host"),
        listener("A14", Deny, connect("2130706433:443")).status(400).reason("numeric_host"),
        listener("A15", Tunnel, tconnect("0.0.0.0:443")).status(403).reason("private_address"),
        listener("A15", Tunnel, tconnect("255.255.255.255:443")).status(403).reason("private_address"),
        listener("A15", Tunnel, tconnect("224.0.0.1:443")).status(403).reason("private_address"),
        listener("A16", Deny, connect("ápi.openai.com:443")).status(400),
        listener("A17", Deny, connect("xn--pi-7ia.openai.com:443")).status(403).reason("non_provider_denied"),
        listener("A17", Deny, connect("XN--PI-7IA.openai.com:443")).status(403).reason("non_provider_denied"),
        listener("A18", Deny, connect("api%2eopenai.com:443")).status(400),
        listener("A19", Deny, connect(&format!("{}.com:443", "a".repeat(250)))).status(400).reason("bad_host")
            .note("CONNECT <250 × a>.com:443"),
        listener("A19", Deny, connect(&format!("{}.com:443", "a".repeat(64)))).status(400).reason("bad_host"),
        listener("A20", Deny, connect("api.open\0ai.com:443")).status(400),
        listener("A20", Deny, connect("api.open\rai.com:443")).status(400),
        listener("A20", Deny, connect("api.open ai.com:443")).status(400),
        listener("A20", Deny, connect("api.open\tai.com:443")).status(400),
        listener("A21", Deny, connect("_dmarc.example.com:443")).status(403).reason("non_provider_denied"),
        listener("A22", Deny, format!("CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: {auth}\r\nContent-Length: 5\r\n\r\nhello"))
            .status(400).reason("connect_with_body"),
        listener("A22", Deny, format!("CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"))
            .status(400).reason("connect_with_body"),
        custom("A23", Deny, "CONNECT api.openai.com:443 with Host: evil.example:443", "200, intercepted for api.openai.com", a23),
        custom("A24", Deny, "TLS ClientHello sent with the CONNECT head, before the 200", "200, handshake and request succeed", a24),
        custom("A25", Deny, "plain HTTP inside CONNECT api.openai.com:443", "closed, no answer, reason not_tls", a25),
        custom("A26", Deny, "TLS 1.1-only ClientHello", "handshake failure (alert), closed", a26_tls11),
        custom("A26", Deny, "SSLv2-style ClientHello", "handshake failure, closed", a26_sslv2),
        custom("A27", Deny, "CONNECT api.openai.com:443, SNI evil.example", "handshake aborted, no mint, reason sni_mismatch", a27),
        custom("A28", Deny, "CONNECT 10.1.2.3:443 (intercepted IP), no SNI", "leaf with IP SAN, request 200", a28_ip),
        custom("A28", Deny, "CONNECT api.openai.com:443, client sends no SNI", "leaf for the CONNECT host, request 200", a28_no_sni),
        custom("A29", Deny, "ALPN offers only h3", "handshake failure no_application_protocol", a29_h3),
        custom("A29", Deny, "ALPN offers only garbage bytes", "handshake failure no_application_protocol", a29_garbage),
        custom("A29", Deny, "no ALPN offered", "handshake succeeds, served as HTTP/1.1", a29_none),
        custom("A30", Tunnel, "CONNECT 127.0.0.1:<provider upstream port>, SNI api.openai.com", "200 tunnel: the upstream's certificate, no mint", a30_tunnel),
        listener("A30", Deny, connect("127.0.0.1:443")).status(403).reason("non_provider_denied")
            .note("CONNECT 127.0.0.1:443 (a provider's IP) with --non-provider-hosts deny"),
        custom("A31", Deny, "CONNECT without credentials, then a pipelined authenticated CONNECT", "407, close, second never answered", a31),

        // --- B: Proxy-Authorization (SPEC §2 step 3) ---
        listener("B1", Deny, "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n").status(407).reason("auth_missing"),
        listener("B2", Deny, with_auth(&format!("Bearer {token}"))).status(407).reason("auth_scheme"),
        listener("B2", Deny, with_auth("Digest username=\"agent\", realm=\"x\"")).status(407).reason("auth_scheme"),
        listener("B2", Deny, with_auth(&format!("Negotiate {}", b64(&format!("agent:{token}"))))).status(407).reason("auth_scheme"),
        listener("B3", Deny, with_auth(&format!("basic {}", b64(&format!("agent:{token}"))))).status(200).established(),
        listener("B3", Deny, with_auth(&format!("BASIC {}", b64(&format!("agent:{token}"))))).status(200).established(),
        listener("B4", Deny, with_auth("Basic !!!notbase64")).status(407).reason("auth_malformed"),
        listener("B4", Deny, with_auth(&format!("Basic {}", b64(&format!("agent:{token}")).trim_end_matches('=')))).status(407).reason("auth_malformed")
            .note("Basic base64(agent:TOKEN) without its padding"),
        listener("B4", Deny, with_auth(&{ let e = b64(&format!("agent:{token}")); format!("Basic {} {}", &e[..8], &e[8..]) })).status(407).reason("auth_malformed")
            .note("Basic base64 with a space inside"),
        listener("B5", Deny, with_auth(&format!("Basic {}", { use base64::Engine; base64::engine::general_purpose::STANDARD.encode([b'a', b':', 0xff, 0xfe]) }))).status(407).reason("auth_malformed")
            .note("Basic base64(a:\\xff\\xfe) (not UTF-8)"),
        listener("B6", Deny, with_auth(&format!("Basic {}", b64("agentnocolon")))).status(407).reason("auth_malformed"),
        listener("B6", Deny, with_auth(&format!("Basic {}", b64("agent:")))).status(407).reason("auth_malformed"),
        listener("B6", Deny, with_auth(&format!("Basic {}", b64(&format!("{token}:"))))).status(407).reason("auth_malformed")
            .note("Basic base64(TOKEN:) (token as the user, empty password)"),
        listener("B7", Deny, with_auth(&format!("Basic {}", b64(&format!(":{token}"))))).status(200).established()
            .note("Basic base64(:TOKEN) (empty user)"),
        listener("B7", Deny, with_auth(&format!("Basic {}", b64(&format!("agent:{token}:x"))))).status(407).reason("auth_unknown")
            .note("Basic base64(agent:TOKEN:x) (the password is everything after the first colon)"),
        listener("B8", Deny, format!("CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: {auth}\r\nProxy-Authorization: {auth}\r\n\r\n"))
            .status(407).reason("auth_ambiguous"),
        listener("B9", Deny, with_auth(&format!("Basic {}", b64(&format!("agent:{}", "x".repeat(8192)))))).status(407).reason("auth_malformed")
            .note("Basic base64(agent:<8 KiB>)"),
        custom("B10", Deny, "token revoked through the admin API, then CONNECT", "407, reason auth_unknown", b10),
        listener("B11", Tunnel, format!("GET http://127.0.0.1:{plain_port}/b11 HTTP/1.1\r\nHost: 127.0.0.1:{plain_port}\r\nProxy-Authorization: {tauth}\r\n\r\n"))
            .status(200).keeps().plain(|s| if s.headers.contains_key("proxy-authorization") { Err("proxy-authorization forwarded".into()) } else { Ok(()) }),
        listener("B11", Deny, format!("GET http://api.openai.com/echo HTTP/1.1\r\nHost: api.openai.com\r\nProxy-Authorization: {auth}\r\n\r\n"))
            .status(200).keeps().mock(only_key("authorization", OPENAI_KEY, &["proxy-authorization"]))
            .note("GET http://api.openai.com/echo (plain, provider host) with Proxy-Authorization"),

        // --- C: framing, headers and bodies inside MITM ---
        mitm("C1", echo("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"))
            .status(200).closes().mock(body_is(b"hello")),
        mitm("C1", echo("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "5\r\nhello\r\n0\r\n\r\n"))
            .status(200).closes().mock(body_is(b"hello")),
        mitm("C2", echo("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!")).status(400),
        mitm("C2", echo("Content-Length: 5, 5\r\n", "hello")).status(400),
        mitm("C2", echo("Content-Length: +5\r\n", "hello")).status(400),
        mitm("C2", echo("Content-Length: 0x5\r\n", "hello")).status(400),
        mitm("C2", echo("Content-Length: 5 5\r\n", "hello")).status(400),
        mitm("C2", echo("Content-Length:   5\r\n", "hello")).status(200).keeps().mock(body_is(b"hello")),
        mitm("C3", echo("Content-Length: 5\r\nContent-Length: 5\r\n", "hello")).status(200).keeps()
            .mock(|s| { body_is(b"hello")(s)?; if s.headers.get_all("content-length").iter().count() > 1 { Err("two content-length upstream".into()) } else { Ok(()) } }),
        mitm("C4", echo("Transfer-Encoding: gzip\r\n", "hello")).status(400),
        mitm("C4", echo("Transfer-Encoding: xchunked\r\n", "5\r\nhello\r\n0\r\n\r\n")).status(400),
        mitm("C4", echo("Transfer-Encoding: chunked, chunked\r\n", "5\r\nhello\r\n0\r\n\r\n")).status(400),
        mitm("C4", echo("Transfer-Encoding: gzip, chunked\r\n", "5\r\nhello\r\n0\r\n\r\n")).status(400),
        mitm("C4", echo("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n")).status(400),
        mitm("C5", "POST /echo HTTP/1.0\r\nHost: api.openai.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").status(400),
        mitm("C6", "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nX-Folded: a\r\n b\r\n\r\n").status(400),
        mitm("C7", "POST /echo HTTP/1.1\nHost: api.openai.com\nContent-Length: 5\n\nhello").status(200).keeps().mock(body_is(b"hello")),
        mitm("C8", "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nX-Nul: a\0b\r\n\r\n").status(400),
        mitm("C8", "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nX-Cr: a\rb\r\n\r\n").status(400),
        mitm("C8", "GET /echo HTTP/1.1\r\nHost : api.openai.com\r\n\r\n").status(400),
        mitm("C9", format!("GET /echo HTTP/1.1\r\nHost: api.openai.com\r\n{big_header}\r\n")).status(431),
        mitm("C10", format!("GET /echo HTTP/1.1\r\nHost: api.openai.com\r\n{many_headers}\r\n")).status(431)
            .note("GET /echo with 101 header fields"),
        mitm("C11", long_uri).status(414),
        mitm("C12", chat("Transfer-Encoding: chunked\r\n", "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n")).status(400),
        mitm("C12", chat("Transfer-Encoding: chunked\r\n", "-5\r\nhello\r\n0\r\n\r\n")).status(400),
        mitm("C12", chat("Transfer-Encoding: chunked\r\n", "5\r\nhelloXX0\r\n\r\n")).status(400),
        mitm("C13", chat("Transfer-Encoding: chunked\r\n", &format!("5{chunk_exts}hello\r\n0\r\n\r\n"))).status(400)
            .note("chunked body with 500 KB of chunk extensions"),
        mitm("C14", chat(&format!("Content-Length: {}\r\n", over_limit.len()), &over_limit)).status(413)
            .note("POST /v1/chat/completions, Content-Length over --max-request-body"),
        mitm("C14", chat("Transfer-Encoding: chunked\r\n", &format!("{:x}\r\n{over_limit}\r\n0\r\n\r\n", over_limit.len()))).status(413)
            .note("POST /v1/chat/completions, chunked body over --max-request-body"),
        mitm("C15", "GET /echo HTTP/1.1\r\nHost: evil.example\r\n\r\n").status(421).keeps(),
        mitm("C15", "GET https://other.example/echo HTTP/1.1\r\nHost: other.example\r\n\r\n").status(421).keeps(),
        mitm("C16", "GET /echo HTTP/1.1\r\n\r\n").status(400).keeps(),
        mitm("C16", "GET /echo HTTP/1.0\r\n\r\n").status(200).mock(any_request)
            .note("HTTP/1.0 request without Host (allowed by HTTP/1.0)"),
        h2("C16", &[(":method", "GET"), (":scheme", "https"), (":authority", "api.openai.com"), (":path", "/echo"), ("host", "evil.example")]).status(421).keeps(),
        h2("C16", &[(":method", "GET"), (":scheme", "https"), (":authority", "evil.example"), (":path", "/echo")]).status(421).keeps(),
        h2("C16", &[(":method", "GET"), (":scheme", "https"), (":path", "/echo")]).status(400).keeps(),
        h2("C16", &[(":method", "GET"), (":scheme", "https"), (":path", "/echo"), ("host", "api.openai.com")]).status(200).keeps().mock(any_request),
        h2("C17", &[(":method", "GET"), (":scheme", "https"), (":authority", "api.openai.com"), (":path", "/echo"), ("connection", "keep-alive")]).reset(h2raw::PROTOCOL_ERROR).keeps(),
        h2("C17", &[(":method", "GET"), (":scheme", "https"), (":authority", "api.openai.com"), (":path", "/echo"), ("transfer-encoding", "chunked")]).reset(h2raw::PROTOCOL_ERROR).keeps(),
        h2("C17", &[(":method", "GET"), (":scheme", "https"), (":authority", "api.openai.com"), (":path", "/echo"), ("te", "gzip")]).reset(h2raw::PROTOCOL_ERROR).keeps(),
        mitm("C18", "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nx_api_key: sk-client\r\n\r\n").status(200).keeps()
            .mock(only_key("authorization", OPENAI_KEY, &["x_api_key", "x-api-key"])),
        mitm("C18", "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nX-Api-Key: sk-client-1\r\nX-Api-Key: sk-client-2\r\n\r\n").status(200).keeps()
            .mock(only_key("authorization", OPENAI_KEY, &["x-api-key"])),
        mitm("C18", "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer sk-client-1\r\nAuthorization: Bearer sk-client-2\r\n\r\n").status(200).keeps()
            .mock(only_key("authorization", OPENAI_KEY, &[])),
        mitm("C18", "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nAuThOrIzAtIoN: Bearer sk-client\r\nAPI_KEY: sk-client\r\n\r\n").status(200).keeps()
            .mock(only_key("authorization", OPENAI_KEY, &["api_key", "api-key"])),
        mitm("C19", format!("GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nProxy-Authorization: {auth}\r\nProxy-Connection: keep-alive\r\n\r\n")).status(200).keeps()
            .mock(only_key("authorization", OPENAI_KEY, &["proxy-authorization", "proxy-connection"])),
        mitm_to("C19", Deny, "api.anthropic.com:443", "api.anthropic.com", "GET /echo HTTP/1.1\r\nHost: api.anthropic.com\r\nConnection: x-api-key, x-custom\r\nX-Api-Key: sk-client\r\nX-Custom: 1\r\n\r\n")
            .status(200).keeps().mock(only_key("x-api-key", ANTHROPIC_KEY, &["x-custom", "connection"])),
        mitm("C20", "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            .status(200).keeps().mock(|s| if s.headers.contains_key("upgrade") { Err("upgrade forwarded".into()) } else { Ok(()) }),
        custom("C21", Deny, "Expect: 100-continue, Content-Length over --max-request-body, body never sent", "413 without 100 Continue, nothing forwarded", c21_too_large),
        custom("C21", Deny, "Expect: 100-continue, body naming a model not configured (enforce_models)", "100 Continue, then 403 after the body, nothing forwarded", c21_model),
        mitm_to("C22", Deny, "strict.example.com:443", "strict.example.com", strict(r#"{"model":"gpt-allowed","messages":[]}"#))
            .status(200).keeps().mock(body_is(br#"{"model":"gpt-allowed","messages":[]}"#)),
        mitm_to("C22", Deny, "strict.example.com:443", "strict.example.com", strict(r#"{"model":"gpt-other","messages":[]}"#))
            .status(403).keeps(),
        mitm_to("C22", Deny, "strict.example.com:443", "strict.example.com", format!("POST /v1/chat/completions HTTP/1.1\r\nHost: strict.example.com\r\nContent-Length: {}\r\n\r\n{model_after_whitespace}", model_after_whitespace.len()))
            .status(413).note("model after 1 MiB of whitespace (over --max-request-body)"),
        mitm_to("C22", Deny, "strict.example.com:443", "strict.example.com", strict(r#"{"model":"gpt-allowed","model":"gpt-other"}"#))
            .status(403).keeps(),
        mitm_to("C22", Deny, "strict.example.com:443", "strict.example.com", strict_bytes(b"{\"model\":\"gpt-allowed\xff\"}"))
            .status(403).keeps().note("body with a non-UTF-8 byte in the model (enforce_models)"),

        // --- C: the same framing on plain absolute-form forwarding (non-provider destination) ---
        listener("C1", Tunnel, plain("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"))
            .status(200).closes().plain(body_is(b"hello")),
        listener("C1", Tunnel, plain("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "5\r\nhello\r\n0\r\n\r\n"))
            .status(200).closes().plain(body_is(b"hello")),
        listener("C2", Tunnel, plain("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!")).status(400),
        listener("C3", Tunnel, plain("Content-Length: 5\r\nContent-Length: 5\r\n", "hello")).status(200).keeps().plain(body_is(b"hello")),
        listener("C4", Tunnel, plain("Transfer-Encoding: chunked, chunked\r\n", "5\r\nhello\r\n0\r\n\r\n")).status(400).reason("bad_transfer_encoding"),
        listener("C4", Tunnel, plain("Transfer-Encoding: gzip\r\n", "hello")).status(400),
        listener("C5", Tunnel, format!("POST http://127.0.0.1:{plain_port}/plain HTTP/1.0\r\nProxy-Authorization: {tauth}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")).status(400),
        listener("C6", Tunnel, plain("X-Folded: a\r\n b\r\n", "")).status(400),
        listener("C7", Tunnel, format!("POST http://127.0.0.1:{plain_port}/plain HTTP/1.1\nHost: 127.0.0.1:{plain_port}\nProxy-Authorization: {tauth}\nContent-Length: 5\n\nhello"))
            .status(200).keeps().plain(body_is(b"hello")),
        listener("C8", Tunnel, plain("X-Nul: a\0b\r\n", "")).status(400),
        listener("C11", Tunnel, format!("GET http://127.0.0.1:{plain_port}/{} HTTP/1.1\r\nProxy-Authorization: {tauth}\r\n\r\n", "q".repeat(9000)))
            .status(414).reason("uri_too_long"),
        listener("C1", Deny, format!("POST http://api.openai.com/echo HTTP/1.1\r\nHost: api.openai.com\r\nProxy-Authorization: {auth}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
            .status(200).closes().mock(body_is(b"hello"))
            .note("CL + TE on plain absolute-form to a provider host (bridge)"),

        // --- D: concurrency and the certificate cache ---
        custom("D9", Deny, "h2: 257 open streams (server allows 256)", "RST_STREAM REFUSED_STREAM for the 257th", d9),
        custom("D10", Deny, "1 000 CONNECTs to distinct non-provider hosts", "403 each, no leaf minted", d10),
        custom("D11", Deny, "50 concurrent first CONNECTs + TLS to one provider host", "exactly one mint", d11),

        // --- E: admin API (SPEC §7) ---
        admin("E1", admin_req("GET", "/api/v1/providers", None, None)).status(401).keeps(),
        admin("E1", admin_req("GET", "/api/v1/providers", Some("Bearer wrong"), None)).status(401).keeps(),
        admin("E1", admin_req("GET", &format!("/api/v1/providers?token={}", env.deny.admin_token), None, None)).status(401).keeps()
            .note("GET /api/v1/providers?token=ADMIN_TOKEN"),
        admin("E1", admin_req("GET", "/api/v1/providers", Some(&format!("Basic {}", b64(&format!("admin:{}", env.deny.admin_token)))), None)).status(401).keeps()
            .note("GET /api/v1/providers with Authorization: Basic base64(admin:ADMIN_TOKEN)"),
        admin("E2", admin_req("POST", "/api/v1/providers", admin_auth, Some("{not json"))).status(400).keeps(),
        admin("E2", admin_req("POST", "/api/v1/providers", admin_auth, Some(&provider("enabled", json!("yes"))))).status(422).keeps(),
        admin("E2", admin_req("POST", "/api/v1/providers", admin_auth, Some(&format!("{{\"name\":\"{}\"}}", "a".repeat(3 * 1024 * 1024))))).status(413)
            .note("POST /api/v1/providers with a 3 MiB JSON body"),
        admin("E3", admin_req("POST", "/api/v1/providers", admin_auth, Some(&provider("unknown_field", json!(1))))).status(422).keeps(),
        admin("E4", admin_req("POST", "/api/v1/providers", admin_auth, Some(&provider("name", json!("Bad_Name"))))).status(422).keeps(),
        admin("E5", admin_req("POST", "/api/v1/providers", admin_auth, Some(&provider("base_url", json!("file:///etc/passwd"))))).status(422).keeps(),
        admin("E5", admin_req("POST", "/api/v1/providers", admin_auth, Some(&provider("base_url", json!("ftp://x.example"))))).status(422).keeps(),
        admin("E5", admin_req("POST", "/api/v1/providers", admin_auth, Some(&provider("base_url", json!("gopher://x.example"))))).status(422).keeps(),
        admin("E5", admin_req("POST", "/api/v1/providers", admin_auth, Some(&provider("base_url", json!("api.example.com"))))).status(422).keeps(),
        admin("E5", admin_req("POST", "/api/v1/providers", admin_auth, Some(&provider("base_url", json!("https://user:pw@x.example"))))).status(422).keeps(),
        admin("E5", admin_req("POST", "/api/v1/providers", admin_auth, Some(&provider("base_url", json!("https://x.example/#frag"))))).status(422).keeps(),
        custom("E7", Deny, "intercept_hosts [\"E7.Example.COM.\"]", "201, stored as e7.example.com, intercepted", e7_normalized),
        admin("E7", admin_req("POST", "/api/v1/providers", admin_auth, Some(&provider("intercept_hosts", json!(["ápi.example.com"]))))).status(422).keeps(),
        admin("E7", admin_req("POST", "/api/v1/providers", admin_auth, Some(&provider("intercept_hosts", json!(["x.example:99999"]))))).status(422).keeps(),
        custom("E8", Deny, "intercept_hosts [\"[::1]:8443\"]", "201, in the live router; no reload fails", e8),
        admin("E9", admin_req("GET", "/api/v1/providers/..%2f..%2fetc", admin_auth, None)).status(404).keeps(),
        admin("E9", admin_req("GET", "/api/v1/../api/v1/providers", admin_auth, None)).status(404).keeps(),
        admin("E9", admin_req("DELETE", "/api/v1/providers/openai/keys/..%2f..", admin_auth, None)).status(404).keeps(),
        custom("E10", Deny, "100 concurrent PUT /default-model over 10 models", "each 200 or 409; exactly one default after", e10),
        custom("E11", Deny, "GET /providers, GET /tokens after creating both", "keys masked, token only in its POST answer", e11),
    ]
}

// === custom rows ===

fn a23(env: &Env) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let mut tcp = TcpStream::connect(env.deny.addr)
            .await
            .map_err(|e| e.to_string())?;
        let req = format!(
            "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: evil.example:443\r\nProxy-Authorization: {}\r\n\r\n",
            env.auth(Px::Deny)
        );
        tcp.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let head = raw::read_head(&mut tcp).await;
        if raw::status(&head) != 200 {
            return Err(format!("CONNECT: {head:?}"));
        }
        let config = tls::client_config(&[&env.deny.ca_pem], &[b"http/1.1"]);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls_pki_types::ServerName::try_from("api.openai.com").unwrap();
        let tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
            .await
            .map_err(|_| "handshake timed out")?
            .map_err(|e| format!("the leaf is for the CONNECT target: {e}"))?;
        request_ok(tls, "api.openai.com").await
    })
}

/// `GET /echo` on an established TLS stream must answer 200.
async fn request_ok<S: AsyncRead + AsyncWrite + Unpin>(
    mut tls: S,
    host: &str,
) -> Result<(), String> {
    let req = format!("GET /echo HTTP/1.1\r\nHost: {host}\r\n\r\n");
    raw::send(&mut tls, req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let answer = raw::read_response(&mut tls).await;
    if answer.status == 200 {
        Ok(())
    } else {
        Err(format!("request inside: {:?}", answer.head))
    }
}

fn a24(env: &Env) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        // The ClientHello goes out in the same write as the CONNECT head, as eager clients do.
        let config = tls::client_config(&[&env.deny.ca_pem], &[b"http/1.1"]);
        let name = rustls_pki_types::ServerName::try_from("api.openai.com").unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut first = format!(
            "CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
            env.auth(Px::Deny)
        )
        .into_bytes();
        conn.write_tls(&mut first).unwrap();
        let mut tcp = TcpStream::connect(env.deny.addr)
            .await
            .map_err(|e| e.to_string())?;
        tcp.write_all(&first).await.map_err(|e| e.to_string())?;
        let head = raw::read_head(&mut tcp).await;
        if raw::status(&head) != 200 {
            return Err(format!("CONNECT: {head:?}"));
        }
        let work = async {
            let mut buf = vec![0u8; 16 * 1024];
            std::io::Write::write_all(
                &mut conn.writer(),
                b"GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nConnection: close\r\n\r\n",
            )
            .map_err(|e| e.to_string())?;
            let mut plain = Vec::new();
            loop {
                while conn.wants_write() {
                    let mut out = Vec::new();
                    conn.write_tls(&mut out).map_err(|e| e.to_string())?;
                    tcp.write_all(&out).await.map_err(|e| e.to_string())?;
                }
                let n = tcp.read(&mut buf).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                conn.read_tls(&mut &buf[..n]).map_err(|e| e.to_string())?;
                conn.process_new_packets()
                    .map_err(|e| format!("handshake: {e}"))?;
                let mut chunk = [0u8; 4096];
                while let Ok(k) = std::io::Read::read(&mut conn.reader(), &mut chunk) {
                    if k == 0 {
                        break;
                    }
                    plain.extend_from_slice(&chunk[..k]);
                }
                if plain.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Ok::<_, String>(plain)
        };
        let plain = tokio::time::timeout(WAIT, work)
            .await
            .map_err(|_| "timed out")??;
        let text = String::from_utf8_lossy(&plain);
        if text.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(format!("answer inside: {text:?}"))
        }
    })
}

fn a25(env: &Env) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let before = env.rejections(Px::Deny, "not_tls");
        let mut tcp = raw::connect(env.deny.addr, "api.openai.com:443", &env.deny.token).await;
        tcp.write_all(b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut rest = Vec::new();
        match tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest)).await {
            Err(_) => return Err("connection stayed open".into()),
            Ok(_) if rest.starts_with(b"HTTP/") => {
                return Err(format!("answered in clear: {}", shown(&rest)))
            }
            Ok(_) => {}
        }
        let after = env.rejections(Px::Deny, "not_tls");
        if after != before + 1 {
            return Err(format!(
                "connect_rejections_total{{reason=\"not_tls\"}} went {before} → {after}"
            ));
        }
        Ok(())
    })
}

/// Send raw bytes after a CONNECT to api.openai.com and expect the TLS session to end: nothing
/// but (optionally) an alert record, then EOF. Returns the bytes received.
async fn handshake_refused(env: &Env, hello: &[u8]) -> Result<Vec<u8>, String> {
    let mut tcp = raw::connect(env.deny.addr, "api.openai.com:443", &env.deny.token).await;
    tcp.write_all(hello).await.map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    match tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest)).await {
        Err(_) => Err("connection stayed open".into()),
        Ok(_) if rest.is_empty() || rest[0] == 0x15 => Ok(rest),
        Ok(_) => Err(format!("unexpected answer {}", shown(&rest))),
    }
}

/// A ClientHello record with the given legacy version and no supported_versions extension.
fn legacy_client_hello(version: [u8; 2]) -> Vec<u8> {
    let name = b"api.openai.com";
    let mut sni = vec![0x00];
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    let mut sni_list = (sni.len() as u16).to_be_bytes().to_vec();
    sni_list.extend_from_slice(&sni);
    let mut extensions = vec![0x00, 0x00];
    extensions.extend_from_slice(&(sni_list.len() as u16).to_be_bytes());
    extensions.extend_from_slice(&sni_list);
    let mut body = version.to_vec();
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0x00, 0x2f, 0x00, 0x35]); // two RSA suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

fn a26_tls11(env: &Env) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let rest = handshake_refused(env, &legacy_client_hello([0x03, 0x02])).await?;
        if rest.first() != Some(&0x15) {
            return Err(format!("no alert before the close: {}", shown(&rest)));
        }
        Ok(())
    })
}

fn a26_sslv2(env: &Env) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        // SSLv2 record header (two-byte length, high bit set), CLIENT-HELLO, version 3.1.
        let mut hello = vec![
            0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
        ];
        hello.extend_from_slice(&[0x00, 0x00, 0x2f, 0x00, 0x00, 0x35, 0x01, 0x00, 0x80]);
        hello.extend_from_slice(&[0x07, 0x00, 0xc0, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x09]);
        hello.extend_from_slice(&[0x11u8; 16]);
        handshake_refused(env, &hello).await.map(|_| ())
    })
}

fn a27(env: &Env) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let mints = env.deny.mints();
        let before = env.rejections(Px::Deny, "sni_mismatch");
        let result = raw::connect_tls(
            env.deny.addr,
            "api.openai.com:443",
            &env.deny.token,
            "evil.example",
            &env.deny.ca_pem,
        )
        .await;
        if result.is_ok() {
            return Err("handshake with a foreign SNI succeeded".into());
        }
        if env.deny.mints() != mints {
            return Err("a leaf was minted".into());
        }
        let after = env.rejections(Px::Deny, "sni_mismatch");
        if after != before + 1 {
            return Err(format!(
                "connect_rejections_total{{reason=\"sni_mismatch\"}} went {before} → {after}"
            ));
        }
        Ok(())
    })
}

fn a28_ip(env: &Env) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        // rustls sends no SNI for an IP address; the leaf must carry the IP as its SAN.
        let tls = tls_in(env, Px::Deny, "10.1.2.3:443", "10.1.2.3", &[b"http/1.1"]).await?;
        request_ok(tls, "10.1.2.3").await
    })
}

fn a28_no_sni(env: &Env) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let tcp = raw::connect(env.deny.addr, "api.openai.com:443", &env.deny.token).await;
        let mut config = tls::client_config(&[&env.deny.ca_pem], &[b"http/1.1"]);
        config.enable_sni = false;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls_pki_types::ServerName::try_from("api.openai.com").unwrap();
        let tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
            .await
            .map_err(|_| "handshake timed out")?
            .map_err(|e| format!("handshake: {e}"))?;
        request_ok(tls, "api.openai.com").await
    })
}

async fn alpn_refused(env: &Env, alpn: &[u8]) -> Result<(), String> {
    match raw::connect_tls_alpn(
        env.deny.addr,
        "api.openai.com:443",
        &env.deny.token,
        "api.openai.com",
        &env.deny.ca_pem,
        &[alpn],
    )
    .await
    {
        Ok(_) => Err("handshake succeeded".into()),
        Err(e) if e.to_string().contains("NoApplicationProtocol") => Ok(()),
        Err(e) => Err(format!("handshake failed otherwise: {e}")),
    }
}

fn a29_h3(env: &Env) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(alpn_refused(env, b"h3"))
}

fn a29_garbage(env: &Env) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(alpn_refused(env, b"\x00\xffgarbage\x01"))
}

fn a29_none(env: &Env) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let tls = tls_in(env, Px::Deny, "api.openai.com:443", "api.openai.com", &[]).await?;
        request_ok(tls, "api.openai.com").await
    })
}

fn a30_tunnel(env: &Env) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let mints = env.tunnel.mints();
        let (tunnels, mitms) = (
            env.connections(Px::Tunnel, "tunnel"),
            env.connections(Px::Tunnel, "mitm"),
        );
        let target = format!("127.0.0.1:{}", env.upstream.addr.port());
        let result = raw::connect_tls(
            env.tunnel.addr,
            &target,
            &env.tunnel.token,
            "api.openai.com",
            &env.tunnel.ca_pem,
        )
        .await;
        match result {
            Ok(_) => return Err("the proxy's own leaf answered: intercepted".into()),
            Err(e) if e.to_string().contains("UnknownIssuer") => {}
            Err(e) => return Err(format!("handshake failed otherwise: {e}")),
        }
        if env.tunnel.mints() != mints {
            return Err("a leaf was minted".into());
        }
        let now = (
            env.connections(Px::Tunnel, "tunnel"),
            env.connections(Px::Tunnel, "mitm"),
        );
        if now != (tunnels + 1, mitms) {
            return Err(format!(
                "connections tunnel/mitm went {tunnels}/{mitms} → {}/{}",
                now.0, now.1
            ));
        }
        Ok(())
    })
}

fn a31(env: &Env) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let req = format!(
            "CONNECT api.openai.com:443 HTTP/1.1\r\n\r\nCONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
            env.auth(Px::Deny)
        );
        let (_, mut tcp) = raw::send_head(env.deny.addr, req.as_bytes()).await;
        let mut tcp_rest = Vec::new();
        // The head was read; the rest (body, then EOF) must not contain a second answer.
        match tokio::time::timeout(WAIT, tcp.read_to_end(&mut tcp_rest)).await {
            Err(_) => Err("connection stayed open after the 407".into()),
            Ok(_) if String::from_utf8_lossy(&tcp_rest).contains("HTTP/1.1") => Err(format!(
                "the pipelined request was answered: {}",
                shown(&tcp_rest)
            )),
            Ok(_) => Ok(()),
        }
    })
}

fn b10(env: &Env) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let (status, created) = env
            .deny
            .admin("POST", "/api/v1/tokens", Some(json!({"user": "b10"})))
            .await;
        if status != 201 {
            return Err(format!("token create: {status} {created}"));
        }
        let token = created["token"].as_str().unwrap_or_default().to_string();
        let connect = format!(
            "CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
            raw::basic(&token)
        );
        let (head, _) = raw::send_head(env.deny.addr, connect.as_bytes()).await;
        if raw::status(&head) != 200 {
            return Err(format!("before the revoke: {head:?}"));
        }
        let path = format!("/api/v1/tokens/{}", created["id"].as_str().unwrap_or("x"));
        let (status, _) = env.deny.admin("DELETE", &path, None).await;
        if status != 204 {
            return Err(format!("revoke: {status}"));
        }
        let before = env.rejections(Px::Deny, "auth_unknown");
        let (head, mut tcp) = raw::send_head(env.deny.addr, connect.as_bytes()).await;
        if raw::status(&head) != 407 || !raw::closes(&mut tcp).await {
            return Err(format!("after the revoke: {head:?}"));
        }
        if env.rejections(Px::Deny, "auth_unknown") != before + 1 {
            return Err("auth_unknown not counted".into());
        }
        Ok(())
    })
}

/// `Expect: 100-continue` with a declared body over the limit: the answer comes without a
/// `100 Continue` and without the client sending a byte of the body.
fn c21_too_large(env: &Env) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let seen = env.upstream.seen().len();
        let mut tls = tls_in(
            env,
            Px::Deny,
            "api.openai.com:443",
            "api.openai.com",
            &[b"http/1.1"],
        )
        .await?;
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            BODY_LIMIT * 4
        );
        raw::send(&mut tls, head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let answer = raw::read_response(&mut tls).await;
        if answer.status != 413 {
            return Err(format!("answer: {:?}", answer.head));
        }
        if !raw::closes(&mut tls).await {
            return Err("connection stayed open with the body unread".into());
        }
        if env.upstream.seen().len() != seen {
            return Err("forwarded".into());
        }
        Ok(())
    })
}

/// `Expect: 100-continue` with a refused model: the model is in the body, so the proxy asks
/// for it (`100 Continue`), reads it and answers 403; nothing is forwarded.
fn c21_model(env: &Env) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let seen = env.upstream.seen().len();
        let mut tls = tls_in(
            env,
            Px::Deny,
            "strict.example.com:443",
            "strict.example.com",
            &[b"http/1.1"],
        )
        .await?;
        let body = r#"{"model":"gpt-other"}"#;
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: strict.example.com\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        raw::send(&mut tls, head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let interim = raw::read_response(&mut tls).await;
        if interim.status != 100 {
            return Err(format!("first answer: {:?}", interim.head));
        }
        raw::send(&mut tls, body.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let answer = raw::read_response(&mut tls).await;
        if answer.status != 403 || !String::from_utf8_lossy(&answer.body).contains("gpt-other") {
            return Err(format!("answer: {:?} {}", answer.head, shown(&answer.body)));
        }
        if env.upstream.seen().len() != seen {
            return Err("forwarded".into());
        }
        Ok(())
    })
}

fn d9(env: &Env) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let tls = tls_in(
            env,
            Px::Deny,
            "api.openai.com:443",
            "api.openai.com",
            &[b"h2"],
        )
        .await?;
        let mut h2 = H2::handshake(tls).await.map_err(|e| e.to_string())?;
        // Open streams that wait for their bodies (the policy reads a chat body first), so
        // they stay open without reaching the upstream.
        let fields = [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", "api.openai.com"),
            (":path", "/v1/chat/completions"),
        ];
        for i in 0..257u32 {
            h2.headers(1 + 2 * i, &fields, false)
                .await
                .map_err(|e| e.to_string())?;
        }
        let last = 1 + 2 * 256;
        match h2.reply(last).await {
            Reply::Reset(h2raw::REFUSED_STREAM) => Ok(()),
            other => Err(format!("stream 257: {other:?}")),
        }
    })
}

fn d10(env: &Env) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let mints = env.deny.mints();
        let auth = env.auth(Px::Deny);
        for batch in 0..20 {
            let tries = (0..50).map(|i| {
                let req = format!(
                    "CONNECT host-{batch}-{i}.example.net:443 HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n"
                );
                let addr = env.deny.addr;
                async move { raw::status(&raw::send_head(addr, req.as_bytes()).await.0) }
            });
            let statuses = futures_util::future::join_all(tries).await;
            if let Some(s) = statuses.iter().find(|s| **s != 403) {
                return Err(format!("a CONNECT got {s}"));
            }
        }
        if env.deny.mints() != mints {
            return Err(format!("{} leaves minted", env.deny.mints() - mints));
        }
        Ok(())
    })
}

fn d11(env: &Env) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let mints = env.deny.mints();
        let tries = (0..50).map(|_| async {
            let tls = tls_in(
                env,
                Px::Deny,
                "d11.example.com:443",
                "d11.example.com",
                &[b"http/1.1"],
            )
            .await?;
            request_ok(tls, "d11.example.com").await
        });
        for result in futures_util::future::join_all(tries).await {
            result?;
        }
        match env.deny.mints() - mints {
            1 => Ok(()),
            n => Err(format!("{n} mints")),
        }
    })
}

fn e7_normalized(env: &Env) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let body = json!({"name": "e7", "kind": "openai", "base_url": env.upstream.base_url(),
                          "intercept_hosts": ["E7.Example.COM."]});
        let (status, created) = env
            .deny
            .admin("POST", "/api/v1/providers", Some(body))
            .await;
        if status != 201 || created["intercept_hosts"] != json!(["e7.example.com"]) {
            return Err(format!("{status} {created}"));
        }
        let tls = tls_in(
            env,
            Px::Deny,
            "e7.example.com:443",
            "e7.example.com",
            &[b"http/1.1"],
        )
        .await?;
        request_ok(tls, "e7.example.com").await
    })
}

fn e8(env: &Env) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let errors = env
            .deny
            .app
            .reload_stats
            .errors
            .load(std::sync::atomic::Ordering::SeqCst);
        let body = json!({"name": "e8", "kind": "openai", "base_url": env.upstream.base_url(),
                          "intercept_hosts": ["[::1]:8443"]});
        let (status, created) = env
            .deny
            .admin("POST", "/api/v1/providers", Some(body))
            .await;
        if status != 201 || created["status"] != "enabled" {
            return Err(format!("{status} {created}"));
        }
        let (_, router) = env.deny.admin("GET", "/api/v1/router", None).await;
        if router["hosts"]["[::1]:8443"] != "e8"
            || router["hosts"]["api.openai.com:443"] != "openai"
        {
            return Err(format!("router: {}", router["hosts"]));
        }
        let now = env
            .deny
            .app
            .reload_stats
            .errors
            .load(std::sync::atomic::Ordering::SeqCst);
        if now != errors {
            return Err(format!("failed reloads went {errors} → {now}"));
        }
        Ok(())
    })
}

fn e10(env: &Env) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let (status, body) = env
            .deny
            .admin(
                "POST",
                "/api/v1/providers",
                Some(
                    json!({"name": "e10", "kind": "openai", "base_url": env.upstream.base_url(),
                            "intercept_hosts": ["e10.example.com"]}),
                ),
            )
            .await;
        if status != 201 {
            return Err(format!("provider: {status} {body}"));
        }
        let mut ids = Vec::new();
        for i in 0..10 {
            let (status, m) = env
                .deny
                .admin(
                    "POST",
                    "/api/v1/models",
                    Some(json!({"provider": "e10", "model": format!("m{i}")})),
                )
                .await;
            if status != 201 {
                return Err(format!("model: {status} {m}"));
            }
            ids.push(m["id"].as_str().unwrap_or_default().to_string());
        }
        let puts = (0..100).map(|i| {
            let id = ids[i % ids.len()].clone();
            async move {
                env.deny
                    .admin(
                        "PUT",
                        "/api/v1/default-model",
                        Some(json!({"model_id": id})),
                    )
                    .await
                    .0
            }
        });
        let statuses = futures_util::future::join_all(puts).await;
        if let Some(s) = statuses.iter().find(|s| **s != 200 && **s != 409) {
            return Err(format!("a PUT got {s}"));
        }
        let (_, models) = env.deny.admin("GET", "/api/v1/models", None).await;
        let defaults = models["items"]
            .as_array()
            .map(|items| items.iter().filter(|m| m["is_default"] == true).count())
            .unwrap_or(0);
        if defaults != 1 {
            return Err(format!("{defaults} defaults"));
        }
        Ok(())
    })
}

fn e11(env: &Env) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let (status, created) = env
            .deny
            .admin("POST", "/api/v1/tokens", Some(json!({"user": "e11"})))
            .await;
        let token = created["token"].as_str().unwrap_or_default().to_string();
        if status != 201 || token.is_empty() {
            return Err(format!("token create: {status}"));
        }
        let (_, tokens) = env.deny.admin("GET", "/api/v1/tokens", None).await;
        if tokens.to_string().contains(&token) {
            return Err("GET /tokens shows a token".into());
        }
        let (_, providers) = env.deny.admin("GET", "/api/v1/providers", None).await;
        let text = providers.to_string();
        for key in [
            "sk-provider-openai-0123456789",
            ANTHROPIC_KEY,
            "sk-provider-other-0123456789",
        ] {
            if text.contains(key) {
                return Err("GET /providers shows a key".into());
            }
        }
        if !text.contains("sk-...6789") {
            return Err(format!("no masked key: {text}"));
        }
        let (_, one) = env
            .deny
            .admin("GET", "/api/v1/providers/openai", None)
            .await;
        if one.to_string().contains("sk-provider-openai-0123456789") {
            return Err("GET /providers/openai shows the key".into());
        }
        Ok(())
    })
}

// === the suite ===

#[test]
fn bad_input_table() {
    let rt = panics::runtime(RUNTIME);
    let env = rt.block_on(Env::start());
    let rows = rows(&env);
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut documented = 0usize;
    let mut per_group = std::collections::BTreeMap::<char, usize>::new();
    for row in &rows {
        *per_group
            .entry(row.id.chars().next().unwrap_or('?'))
            .or_default() += 1;
        let t = Instant::now();
        let result = rt.block_on(run_row(&env, row));
        let took = t.elapsed();
        let probe = rt.block_on(probe(&env, row.px));
        let mark = match (&result, &probe) {
            (Ok(()), Ok(())) => {
                documented += 1;
                "ok"
            }
            _ => "FAIL",
        };
        println!(
            "{mark:4} {:4} {:70} → {} ({} ms)",
            row.id,
            truncate(&row.input, 70),
            row.expected(),
            took.as_millis()
        );
        if let Err(e) = result {
            failures.push(format!("{} {}: {e}", row.id, row.input));
        }
        if let Err(e) = probe {
            failures.push(format!(
                "{} {}: health probe failed: {e}",
                row.id, row.input
            ));
        }
    }
    let panicked = panics::seen(RUNTIME);
    println!(
        "FIGURE F-1 bad-input cases: {}, documented answers: {documented}, panics: {} (per group {per_group:?}; a health probe after every case; {:.1} s)",
        rows.len(),
        panicked.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(panicked.is_empty(), "proxy tasks panicked: {panicked:#?}");
    assert!(rows.len() >= 60, "only {} rows", rows.len());
    let Env { deny, tunnel, .. } = env;
    rt.block_on(async {
        deny.app.stop(Duration::from_secs(5)).await;
        tunnel.app.stop(Duration::from_secs(5)).await;
    });
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}
