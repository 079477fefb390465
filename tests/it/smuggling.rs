//! Request smuggling (RELIABILITY F-5): every framing vector of §9.3 C1–C6, plus a request hidden
//! in a body, sent through the three ways a request crosses the proxy:
//!
//! - `mitm`: HTTP/1.1 inside an intercepted CONNECT to api.openai.com, bridged to the mock
//!   provider (which the proxy reaches over h2);
//! - `plain`: absolute-form `POST http://127.0.0.1:P/...` to a non-provider HTTP/1.1 server,
//!   forwarded by the proxy's plain client (`--allow-private-cidrs 127.0.0.0/8`, P an extra port);
//! - `plain-bridge`: absolute-form `POST http://api.openai.com/...` to a provider host.
//!
//! Each vector carries a trailing request (`.../smuggled`) placed where a parser that disagreed
//! with hyper's framing would see the start of a second request. Per case the destination must
//! have received exactly the documented requests (one, with the documented body, or none for a
//! refusal) and nothing with `smuggled` in it; the client must get exactly one final answer, with
//! the documented status; the connection must close where documented (hyper closes after a
//! request framed by both `Content-Length` and `Transfer-Encoding`, RFC 9112 §6.1, and after any
//! refusal), or else carry a normal follow-up request. The plain destination also counts the
//! connections on which it saw bytes it could not parse: none.
//!
//! Decision (RELIABILITY §13.1): a request with both `Content-Length` and `Transfer-Encoding:
//! chunked` is not refused; hyper frames it by the chunked coding alone, drops `Content-Length`,
//! forwards one re-framed request and closes the client connection after the answer.
//!
//! `cargo test --test it smuggling -- --nocapture` prints every case and the F-5 figure.

use crate::support::plain::PlainServer;
use crate::support::upstream::Seen;
use crate::support::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const RUNTIME: &str = "smuggling";

/// One vector. In `request`, `{target}` is the request-target, `{host}` the Host value, `{auth}`
/// the proxy credentials line (empty inside MITM) and `{smuggled}` a request-target for the
/// trailing request.
struct Vector {
    id: &'static str,
    name: &'static str,
    request: &'static str,
    /// The documented final status.
    status: u16,
    /// The body the destination must receive (`None`: nothing may be forwarded).
    forwarded: Option<&'static [u8]>,
    /// Whether the connection closes after the answer (else a follow-up request is served).
    closes: bool,
}

const VECTORS: &[Vector] = &[
    Vector {
        id: "C1",
        name: "CL.TE: Content-Length covers a trailing request, chunked ends before it",
        request: "POST {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET {smuggled} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n",
        status: 200,
        forwarded: Some(b""),
        closes: true,
    },
    Vector {
        id: "C1",
        name: "TE.CL: the chunk carries a request, Content-Length ends inside it",
        request: "POST {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n23\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n",
        status: 200,
        forwarded: Some(b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
        closes: true,
    },
    Vector {
        id: "C2",
        name: "two different Content-Length headers",
        request: "POST {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 5\r\nContent-Length: 44\r\n\r\nhelloGET {smuggled} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n",
        status: 400,
        forwarded: None,
        closes: true,
    },
    Vector {
        id: "C2",
        name: "Content-Length: 5, 44 (a list)",
        request: "POST {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 5, 44\r\n\r\nhelloGET {smuggled} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n",
        status: 400,
        forwarded: None,
        closes: true,
    },
    Vector {
        id: "C2",
        name: "Content-Length: +5",
        request: "POST {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: +5\r\n\r\nhello",
        status: 400,
        forwarded: None,
        closes: true,
    },
    Vector {
        id: "C3",
        name: "two identical Content-Length headers",
        request: "POST {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        status: 200,
        forwarded: Some(b"hello"),
        closes: false,
    },
    Vector {
        id: "C4",
        name: "Transfer-Encoding: chunked, chunked",
        request: "POST {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Transfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        status: 400,
        forwarded: None,
        closes: true,
    },
    Vector {
        id: "C4",
        name: "Transfer-Encoding: gzip, chunked",
        request: "POST {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        status: 400,
        forwarded: None,
        closes: true,
    },
    Vector {
        id: "C4",
        name: "Transfer-Encoding: xchunked with Content-Length",
        request: "POST {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\nhello",
        status: 400,
        forwarded: None,
        closes: true,
    },
    Vector {
        id: "C4",
        name: "Transfer-Encoding twice: chunked, then identity",
        request: "POST {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello",
        status: 400,
        forwarded: None,
        closes: true,
    },
    Vector {
        id: "C4",
        name: "Transfer-Encoding with a space before the colon",
        request: "POST {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello",
        status: 400,
        forwarded: None,
        closes: true,
    },
    Vector {
        id: "C5",
        name: "Transfer-Encoding on HTTP/1.0",
        request: "POST {target} HTTP/1.0\r\nHost: {host}\r\n{auth}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        status: 400,
        forwarded: None,
        closes: true,
    },
    Vector {
        id: "C6",
        name: "obs-fold continuing Transfer-Encoding",
        request: "POST {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 5\r\nTransfer-Encoding: identity\r\n chunked\r\n\r\nhello",
        status: 400,
        forwarded: None,
        closes: true,
    },
    Vector {
        id: "body",
        name: "a whole second request as the body (Content-Length covers it)",
        request: "POST {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 35\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        status: 200,
        forwarded: Some(b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
        closes: false,
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Mitm,
    Plain,
    PlainBridge,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Mitm => "mitm",
            Path::Plain => "plain",
            Path::PlainBridge => "plain-bridge",
        }
    }
}

/// The proxy and both destinations.
struct Stage {
    env: Env,
    plain: PlainServer,
}

impl Stage {
    /// (request-target, smuggled target, host, auth line) for a path.
    fn parts(&self, path: Path) -> (String, String, String, String) {
        let auth = format!("Proxy-Authorization: {}\r\n", raw::basic(&self.env.token));
        match path {
            Path::Mitm => (
                "/echo".into(),
                "/smuggled".into(),
                "api.openai.com".into(),
                String::new(),
            ),
            Path::Plain => {
                let host = format!("127.0.0.1:{}", self.plain.port());
                (
                    format!("http://{host}/echo"),
                    format!("http://{host}/smuggled"),
                    host,
                    auth,
                )
            }
            Path::PlainBridge => (
                "http://api.openai.com/echo".into(),
                "http://api.openai.com/smuggled".into(),
                "api.openai.com".into(),
                auth,
            ),
        }
    }

    fn render(&self, template: &str, path: Path) -> String {
        let (target, smuggled, host, auth) = self.parts(path);
        template
            .replace("{target}", &target)
            .replace("{smuggled}", &smuggled)
            .replace("{host}", &host)
            .replace("{auth}", &auth)
    }

    /// Requests seen so far at the destination `path` reaches.
    fn seen(&self, path: Path) -> Vec<Seen> {
        match path {
            Path::Plain => self.plain.seen(),
            Path::Mitm | Path::PlainBridge => self.env.upstream.seen(),
        }
    }
}

/// What one case did; `Err` names a broken rule.
struct Outcome {
    /// Requests the destination received for this case (follow-up excluded).
    forwarded: usize,
}

async fn run_case(env: &Stage, v: &Vector, path: Path) -> Result<Outcome, String> {
    let before = env.seen(path).len();
    let plain_errors = env.plain.parse_errors();
    let other_before = match path {
        Path::Plain => env.env.upstream.seen().len(),
        _ => env.plain.seen().len(),
    };
    let bytes = env.render(v.request, path);
    let follow_up = env.render(
        "GET {target}?follow-up HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n",
        path,
    );
    match path {
        Path::Mitm => {
            let tls = env
                .env
                .tls_to("api.openai.com:443", "api.openai.com")
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            converse(tls, bytes.as_bytes(), v, follow_up.as_bytes()).await?;
        }
        Path::Plain | Path::PlainBridge => {
            let tcp = TcpStream::connect(env.env.addr)
                .await
                .map_err(|e| e.to_string())?;
            converse(tcp, bytes.as_bytes(), v, follow_up.as_bytes()).await?;
        }
    }
    // The destination's record completes once it has read the body.
    let want = usize::from(v.forwarded.is_some()) + usize::from(!v.closes);
    let deadline = Instant::now() + Duration::from_millis(500);
    let seen = loop {
        let seen = env.seen(path).split_off(before);
        if seen.len() >= want || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    if let Some(s) = seen.iter().find(|s| s.path.contains("smuggled")) {
        return Err(format!(
            "a smuggled request arrived: {} {}",
            s.method, s.path
        ));
    }
    let own: Vec<&Seen> = seen
        .iter()
        .filter(|s| !s.path.contains("follow-up"))
        .collect();
    match (v.forwarded, own.as_slice()) {
        (None, []) => {}
        (Some(body), [one]) if one.body.as_ref() == body => {}
        (_, got) => {
            return Err(format!(
                "destination got {:?}",
                got.iter()
                    .map(|s| format!(
                        "{} {} {:?}",
                        s.method,
                        s.path,
                        String::from_utf8_lossy(&s.body)
                    ))
                    .collect::<Vec<_>>()
            ))
        }
    }
    if seen.len() != want {
        return Err(format!(
            "{} requests at the destination, expected {want}",
            seen.len()
        ));
    }
    let other_now = match path {
        Path::Plain => env.env.upstream.seen().len(),
        _ => env.plain.seen().len(),
    };
    if other_now != other_before {
        return Err("a request reached the other destination".into());
    }
    if env.plain.parse_errors() != plain_errors {
        return Err("the plain destination received bytes it could not parse".into());
    }
    Ok(Outcome {
        forwarded: own.len(),
    })
}

/// Send the vector, read its answer, then check the connection: it closes with nothing more
/// on it, or it serves the follow-up (and then closes, as the follow-up asks).
async fn converse<S>(
    mut stream: S,
    bytes: &[u8],
    v: &Vector,
    follow_up: &[u8],
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    raw::send(&mut stream, bytes)
        .await
        .map_err(|e| e.to_string())?;
    let answer = raw::read_response(&mut stream).await;
    if answer.status != v.status {
        return Err(format!("answer {:?}, expected {}", answer.head, v.status));
    }
    if !v.closes {
        raw::send(&mut stream, follow_up)
            .await
            .map_err(|e| format!("follow-up: {e}"))?;
        let next = raw::read_response(&mut stream).await;
        if next.status != 200 {
            return Err(format!("follow-up answered {:?}", next.head));
        }
    }
    let mut rest = Vec::new();
    match tokio::time::timeout(WAIT, stream.read_to_end(&mut rest)).await {
        Err(_) => Err("connection stayed open".into()),
        Ok(_) if !rest.is_empty() => Err(format!(
            "more on the connection after the answer: {:?}",
            String::from_utf8_lossy(&rest)
        )),
        Ok(_) => Ok(()),
    }
}

#[test]
fn smuggling_vectors_reach_the_destination_once() {
    let rt = panics::runtime(RUNTIME);
    let env = rt.block_on(async {
        let plain = PlainServer::start().await;
        let env = Env::with(|o| o.openai_also_on_80().tunnels_to(plain.port())).await;
        Stage { env, plain }
    });
    let mut failures = Vec::new();
    let (mut cases, mut accepted, mut forwarded) = (0usize, 0usize, 0usize);
    for v in VECTORS {
        for path in [Path::Mitm, Path::Plain, Path::PlainBridge] {
            cases += 1;
            accepted += usize::from(v.forwarded.is_some());
            let result = rt.block_on(run_case(&env, v, path));
            let mark = if result.is_ok() { "ok" } else { "FAIL" };
            println!(
                "{mark:4} {:4} {:13} {:66} → {}{}",
                v.id,
                path.name(),
                v.name,
                v.status,
                if v.closes { ", close" } else { ", keep-alive" }
            );
            match result {
                Ok(o) => forwarded += o.forwarded,
                Err(e) => failures.push(format!("{} {} via {}: {e}", v.id, v.name, path.name())),
            }
        }
    }
    let panicked = panics::seen(RUNTIME);
    println!(
        "FIGURE F-5 smuggling: {} vectors x 3 paths (MITM, plain forward, plain to a provider) = {cases} cases; upstream requests: {forwarded} for {accepted} accepted client requests, 0 for {} refused; smuggled requests seen: {}; failures: {}; panics: {}",
        VECTORS.len(),
        cases - accepted,
        failures.iter().filter(|f| f.contains("smuggled request arrived")).count(),
        failures.len(),
        panicked.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        forwarded, accepted,
        "one upstream request per accepted request"
    );
    assert!(panicked.is_empty(), "proxy tasks panicked: {panicked:#?}");
    rt.block_on(env.env.stop());
}

/// The check can fail: a destination that saw the trailing request is reported.
#[test]
fn a_smuggled_request_is_reported() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let plain = PlainServer::start().await;
        // Straight to the destination, no proxy: it parses the trailing request as its own.
        let mut tcp = TcpStream::connect(plain.addr).await.unwrap();
        let v = &VECTORS[0];
        let host = format!("127.0.0.1:{}", plain.port());
        let bytes = v
            .request
            .replace("Transfer-Encoding: chunked\r\n", "")
            .replace("Content-Length: 40", "Content-Length: 5")
            .replace("{target}", "/echo")
            .replace("{smuggled}", "/smuggled")
            .replace("{host}", &host)
            .replace("{auth}", "");
        tcp.write_all(bytes.as_bytes()).await.unwrap();
        let _ = raw::read_response(&mut tcp).await;
        let _ = raw::read_response(&mut tcp).await;
        let seen = plain.seen();
        assert!(
            seen.iter().any(|s| s.path == "/smuggled"),
            "a parser that stops at Content-Length sees the second request: {:?}",
            seen.iter().map(|s| &s.path).collect::<Vec<_>>()
        );
    });
}
