//! Property-based wire fuzz (RELIABILITY.md F-3, mitmproxy style): CONNECT and absolute-form
//! request byte streams generated from a small grammar, mutated (cut, splice, duplicate, delete,
//! flip), split at random boundaries and sent over raw TCP to one in-process proxy with one
//! provider and the mock upstream.
//!
//! Each case must end in a documented status (or a clean close) within 2 s of the client having
//! nothing more to say: the client sends its bytes, reads until the proxy closes or falls quiet
//! for [`QUIET`], then half-closes (FIN) and the proxy must close within [`CLOSE_WITHIN`]. After
//! every batch a CONNECT health probe must succeed, at the end a full bridged request must, and
//! no task of the proxy may have panicked.
//!
//! Cases run [`BATCH`] at a time (one proptest case = one batch; a failing batch shrinks to the
//! failing stream). The run is seeded: the seed is printed, and `AIBRIDGE_FUZZ_SEED=N` replays
//! it; `AIBRIDGE_WIRE_FUZZ_CASES` changes the case count.

use crate::support::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Cases per `cargo test` run (F-3 target).
const CASES: usize = 10_000;
/// Streams in flight at once.
const BATCH: usize = 100;
/// No byte and no close for this long: the proxy is waiting for input, so the client half-closes.
const QUIET: Duration = Duration::from_millis(100);
/// After the client's FIN the proxy must have closed within this.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);
/// Statuses a case may end in: the proxy's own (SPEC §2, RELIABILITY §9), hyper's parse errors
/// (400, 414, 431), and what the mock upstream answers through the bridge (200, 404). `100` is
/// an interim answer to `Expect: 100-continue`; the final one after it is checked.
const DOCUMENTED: &[u16] = &[200, 400, 403, 404, 405, 407, 413, 414, 421, 431, 502];

// === the grammar ===

#[derive(Debug, Clone)]
enum Auth {
    Valid,
    /// Valid token, `basic` scheme in lower case.
    ValidLower,
    Wrong,
    Bearer,
    Garbage(String),
}

#[derive(Debug, Clone)]
enum Header {
    Host(String),
    Auth(Auth),
    ContentLength(String),
    TransferEncoding(&'static str),
    Connection(&'static str),
    Expect,
    Other(String, String),
    /// An obs-fold continuation line.
    Folded,
    /// A header this many bytes long.
    Long(usize),
}

#[derive(Debug, Clone)]
enum Body {
    Empty,
    Bytes(Vec<u8>),
    Json { model: &'static str, stream: bool },
    Chunked(Vec<Vec<u8>>),
}

/// What follows the first request on the same connection.
#[derive(Debug, Clone)]
enum Tail {
    Nothing,
    /// A real TLS ClientHello for `api.openai.com` (the MITM handshake starts).
    ClientHello,
    /// Plain HTTP where TLS is expected (or a pipelined second request).
    Http,
    Garbage(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Request {
    method: String,
    target: String,
    version: &'static str,
    eol: &'static str,
    headers: Vec<Header>,
    /// Add a correct `Content-Length` for the body.
    auto_length: bool,
    body: Body,
    tail: Tail,
}

#[derive(Debug, Clone)]
enum Mutation {
    Cut(usize),
    Splice(usize, Vec<u8>),
    Duplicate(usize, usize),
    Delete(usize, usize),
    Flip(usize, u8),
}

#[derive(Debug, Clone)]
struct Case {
    request: Request,
    mutations: Vec<Mutation>,
    /// Sizes of the first chunks; the rest goes in one write.
    splits: Vec<usize>,
    /// Sleep 1 ms between chunks (so they arrive as separate reads).
    pause: bool,
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just("CONNECT".to_string()),
        3 => Just("POST".to_string()),
        2 => Just("GET".to_string()),
        1 => Just("connect".to_string()),
        1 => Just("PUT".to_string()),
        1 => "[A-Z]{1,8}",
    ]
}

fn target() -> impl Strategy<Value = String> {
    let fixed = prop::sample::select(vec![
        "api.openai.com:443",
        "API.OpenAI.COM.:443",
        "api.openai.com..:443",
        "api.openai.com",
        "api.openai.com:0443",
        "api.openai.com:8443",
        "user:pw@api.openai.com:443",
        "[::1]:443",
        "[fe80::1%25eth0]:443",
        "0x7f.1:443",
        "127.0.0.1:443",
        "example.com:443",
        "http://api.openai.com/v1/chat/completions",
        "http://api.openai.com/v1/messages",
        "http://api.openai.com/echo",
        "http://api.openai.com/v1/stream",
        "http://api.openai.com:80/v1/models",
        "http://API.openai.com./v1/chat/completions?x=1",
        "http://example.com/",
        "https://api.openai.com/",
        "ftp://api.openai.com/",
        "/",
        "*",
    ]);
    prop_oneof![
        8 => fixed.prop_map(str::to_string),
        1 => "[a-zA-Z0-9.:\\[\\]%@/_-]{0,24}",
        1 => (1usize..70_000).prop_map(|n| format!("http://api.openai.com/{}", "a".repeat(n))),
    ]
}

fn auth() -> impl Strategy<Value = Auth> {
    prop_oneof![
        6 => Just(Auth::Valid),
        1 => Just(Auth::ValidLower),
        1 => Just(Auth::Wrong),
        1 => Just(Auth::Bearer),
        1 => "[ -~]{0,40}".prop_map(Auth::Garbage),
    ]
}

fn header() -> impl Strategy<Value = Header> {
    prop_oneof![
        2 => prop::sample::select(vec!["api.openai.com", "API.openai.com:443", "other.example", ""])
            .prop_map(|h| Header::Host(h.to_string())),
        2 => auth().prop_map(Header::Auth),
        1 => prop::sample::select(vec!["0", "5", "abc", "-1", "+5", "5, 6", "18446744073709551616"])
            .prop_map(|v| Header::ContentLength(v.to_string())),
        1 => prop::sample::select(vec!["chunked", "gzip", "gzip, chunked", "chunked, chunked", "xchunked"])
            .prop_map(Header::TransferEncoding),
        1 => prop::sample::select(vec!["close", "keep-alive", "Upgrade", "x-api-key"])
            .prop_map(Header::Connection),
        1 => Just(Header::Expect),
        2 => ("[A-Za-z_-]{1,12}", "[ -~]{0,30}").prop_map(|(n, v)| Header::Other(n, v)),
        1 => Just(Header::Folded),
        1 => (1usize..70_000).prop_map(Header::Long),
    ]
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        3 => Just(Body::Empty),
        2 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Body::Bytes),
        3 => (prop::sample::select(vec!["gpt-4o-mini", "claude-sonnet-4-5", ""]), any::<bool>())
            .prop_map(|(model, stream)| Body::Json { model, stream }),
        1 => prop::collection::vec(prop::collection::vec(any::<u8>(), 0..16), 0..4)
            .prop_map(Body::Chunked),
    ]
}

fn tail() -> impl Strategy<Value = Tail> {
    prop_oneof![
        4 => Just(Tail::Nothing),
        3 => Just(Tail::ClientHello),
        1 => Just(Tail::Http),
        1 => prop::collection::vec(any::<u8>(), 1..64).prop_map(Tail::Garbage),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    (
        method(),
        target(),
        prop_oneof![
            12 => Just("HTTP/1.1"),
            1 => Just("HTTP/1.0"),
            1 => Just("HTTP/2.0"),
            1 => Just("HTTP/1.1 "),
            1 => Just(""),
        ],
        prop::sample::select(vec!["\r\n", "\r\n", "\r\n", "\n"]),
        prop::collection::vec(header(), 0..4),
        any::<bool>(),
        body(),
        tail(),
        prop::bool::weighted(0.8),
    )
        .prop_map(
            |(
                mut method,
                target,
                version,
                eol,
                mut headers,
                auto_length,
                mut body,
                tail,
                coherent,
            )| {
                // Mostly a method that fits the target's form, so requests get past the parser.
                if coherent {
                    let absolute = target.contains("://") || target == "/" || target == "*";
                    if absolute && method == "CONNECT" {
                        method = "POST".into();
                    } else if !absolute {
                        method = "CONNECT".into();
                        // A CONNECT has no body (one is refused with 400).
                        body = Body::Empty;
                    }
                }
                // Most requests carry valid credentials, or little gets past the 407.
                if !headers.iter().any(|h| matches!(h, Header::Auth(_))) {
                    headers.insert(0, Header::Auth(Auth::Valid));
                }
                Request {
                    method,
                    target,
                    version,
                    eol,
                    headers,
                    auto_length,
                    body,
                    tail,
                }
            },
        )
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => any::<usize>().prop_map(Mutation::Cut),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, b)| Mutation::Splice(at, b)),
        1 => (any::<usize>(), 1usize..64).prop_map(|(at, n)| Mutation::Duplicate(at, n)),
        1 => (any::<usize>(), 1usize..16).prop_map(|(at, n)| Mutation::Delete(at, n)),
        2 => (any::<usize>(), 1u8..=255).prop_map(|(at, m)| Mutation::Flip(at, m)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        request(),
        // About half the streams stay as generated.
        prop_oneof![1 => Just(Vec::new()), 1 => prop::collection::vec(mutation(), 1..4)],
        prop::collection::vec(1usize..64, 0..6),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(request, mutations, splits, pause)| Case {
            request,
            mutations,
            splits,
            pause,
        })
}

// === rendering ===

struct Render<'a> {
    token: &'a str,
    client_hello: &'a [u8],
}

impl Render<'_> {
    fn auth(&self, a: &Auth) -> String {
        match a {
            Auth::Valid => raw::basic(self.token),
            Auth::ValidLower => raw::basic(self.token).replacen("Basic", "basic", 1),
            Auth::Wrong => raw::basic("aibr_not_a_real_token"),
            Auth::Bearer => format!("Bearer {}", self.token),
            Auth::Garbage(g) => g.clone(),
        }
    }

    fn request(&self, r: &Request) -> Vec<u8> {
        let eol = r.eol;
        let mut out = format!("{} {} {}{eol}", r.method, r.target, r.version).into_bytes();
        let body: Vec<u8> = match &r.body {
            Body::Empty => Vec::new(),
            Body::Bytes(b) => b.clone(),
            Body::Json { model, stream } => {
                format!("{{\"model\":\"{model}\",\"stream\":{stream},\"messages\":[]}}")
                    .into_bytes()
            }
            Body::Chunked(chunks) => {
                let mut b = Vec::new();
                for c in chunks.iter().filter(|c| !c.is_empty()) {
                    b.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    b.extend_from_slice(c);
                    b.extend_from_slice(b"\r\n");
                }
                b.extend_from_slice(b"0\r\n\r\n");
                b
            }
        };
        for h in &r.headers {
            let line = match h {
                Header::Host(v) => format!("Host: {v}"),
                Header::Auth(a) => format!("Proxy-Authorization: {}", self.auth(a)),
                Header::ContentLength(v) => format!("Content-Length: {v}"),
                Header::TransferEncoding(v) => format!("Transfer-Encoding: {v}"),
                Header::Connection(v) => format!("Connection: {v}"),
                Header::Expect => "Expect: 100-continue".to_string(),
                Header::Other(n, v) => format!("{n}: {v}"),
                Header::Folded => format!("X-Folded: a{eol} continued"),
                Header::Long(n) => format!("X-Long: {}", "a".repeat(*n)),
            };
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(eol.as_bytes());
        }
        if matches!(r.body, Body::Chunked(_)) {
            out.extend_from_slice(format!("Transfer-Encoding: chunked{eol}").as_bytes());
        } else if r.auto_length && !body.is_empty() {
            out.extend_from_slice(format!("Content-Length: {}{eol}", body.len()).as_bytes());
        }
        out.extend_from_slice(eol.as_bytes());
        out.extend_from_slice(&body);
        match &r.tail {
            Tail::Nothing => {}
            Tail::ClientHello => out.extend_from_slice(self.client_hello),
            Tail::Http => out.extend_from_slice(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 2\r\n\r\n{}",
            ),
            Tail::Garbage(g) => out.extend_from_slice(g),
        }
        out
    }

    fn case(&self, c: &Case) -> Vec<u8> {
        let mut bytes = self.request(&c.request);
        for m in &c.mutations {
            let len = bytes.len();
            match m {
                Mutation::Cut(at) => bytes.truncate(at % (len + 1)),
                Mutation::Splice(at, b) => {
                    let at = at % (len + 1);
                    bytes.splice(at..at, b.iter().copied());
                }
                Mutation::Duplicate(at, n) => {
                    let at = at % (len + 1);
                    let end = (at + n).min(len);
                    let copy = bytes[at..end].to_vec();
                    bytes.splice(end..end, copy);
                }
                Mutation::Delete(at, n) => {
                    let at = at % (len + 1);
                    let end = (at + n).min(len);
                    bytes.drain(at..end);
                }
                Mutation::Flip(at, mask) if len > 0 => bytes[at % len] ^= mask,
                Mutation::Flip(..) => {}
            }
        }
        bytes
    }
}

// === running a case ===

/// What the proxy did with one stream.
#[derive(Debug)]
struct Observed {
    /// Final status of the first response (0: closed without answering).
    status: u16,
    /// Whether the client had to half-close first.
    fin_sent: bool,
}

/// Send `bytes` in the case's chunks, then read until the proxy closes (half-closing after a
/// quiet spell). Err describes a broken rule.
async fn run_case(proxy: SocketAddr, case: &Case, bytes: &[u8]) -> Result<Observed, String> {
    let mut stream = TcpStream::connect(proxy)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut rest = bytes;
    let mut write_ok = true;
    for &n in &case.splits {
        if rest.is_empty() || !write_ok {
            break;
        }
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        write_ok = stream.write_all(chunk).await.is_ok();
        rest = tail;
        if case.pause {
            tokio::time::sleep(Duration::from_millis(1)).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
    if write_ok && !rest.is_empty() {
        // A write error means the proxy already closed (after a refusal); reading tells the rest.
        let _ = stream.write_all(rest).await;
    }
    let mut received = Vec::new();
    let mut buf = [0u8; 8192];
    let started = Instant::now();
    let mut fin_at: Option<Instant> = None;
    loop {
        if let Some(at) = fin_at {
            if at.elapsed() > CLOSE_WITHIN {
                return Err(format!(
                    "not closed {CLOSE_WITHIN:?} after the client's FIN; got {:?}",
                    String::from_utf8_lossy(&received[..received.len().min(200)])
                ));
            }
        }
        if started.elapsed() > WAIT {
            return Err("case still running after the harness wait".into());
        }
        match tokio::time::timeout(QUIET, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) if fin_at.is_none() => {
                let _ = stream.shutdown().await;
                fin_at = Some(Instant::now());
            }
            Err(_) => {}
        }
    }
    Ok(Observed {
        status: final_status(&received)?,
        fin_sent: fin_at.is_some(),
    })
}

/// The status of the first non-interim response; 0 if nothing was sent.
fn final_status(mut received: &[u8]) -> Result<u16, String> {
    loop {
        if received.is_empty() {
            return Ok(0);
        }
        let head_end = received.windows(4).position(|w| w == b"\r\n\r\n");
        let line_end = received
            .iter()
            .position(|b| *b == b'\n')
            .unwrap_or(received.len());
        let line = String::from_utf8_lossy(&received[..line_end]);
        let mut parts = line.split(' ');
        let version = parts.next().unwrap_or("");
        let status: u16 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        if !(version == "HTTP/1.1" || version == "HTTP/1.0") || status == 0 {
            return Err(format!("not an HTTP response: {line:?}"));
        }
        if status == 100 {
            match head_end {
                Some(end) => {
                    received = &received[end + 4..];
                    continue;
                }
                None => return Err("cut interim response".into()),
            }
        }
        return Ok(status);
    }
}

async fn run_batch(
    proxy: SocketAddr,
    render: &Render<'_>,
    batch: &[Case],
) -> Result<Vec<Observed>, String> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, case) in batch.iter().enumerate() {
        let bytes = render.case(case);
        let case = case.clone();
        tasks.spawn(async move { (i, run_case(proxy, &case, &bytes).await, bytes) });
    }
    let mut observed = Vec::new();
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, result, bytes) = joined.map_err(|e| format!("case task failed: {e}"))?;
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
        match result {
            Ok(o) if o.status == 0 || DOCUMENTED.contains(&o.status) => observed.push(o),
            Ok(o) => failures.push(format!(
                "case {i}: undocumented status {}: {shown:?}",
                o.status
            )),
            Err(e) => failures.push(format!("case {i}: {e}: {shown:?}")),
        }
    }
    if failures.is_empty() {
        Ok(observed)
    } else {
        Err(failures.join("\n"))
    }
}

#[test]
fn generated_streams_end_in_documented_answers() {
    let rt = panics::runtime("wire");
    // No tunnels: a valid non-provider target answers 403 without DNS or dialling.
    let proxy = rt.block_on(Env::with(|o| o.openai_also_on_80().deny_non_providers()));
    // The first bytes a TLS client sends: a real ClientHello for `api.openai.com`.
    let hello = raw::client_hello(&[b"h2", b"http/1.1"]);
    let render = Render {
        token: &proxy.token,
        client_hello: &hello,
    };
    let seed = fuzz::seed();
    let cases = fuzz::cases("AIBRIDGE_WIRE_FUZZ_CASES", CASES);
    let batches = cases.div_ceil(BATCH);
    println!("wire fuzz: seed {seed} (replay with AIBRIDGE_FUZZ_SEED={seed}), {cases} cases in {batches} batches of {BATCH}");
    let config = Config {
        cases: batches as u32,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let started = Instant::now();
    let stats = std::sync::Mutex::new((0usize, 0usize, std::collections::BTreeMap::new()));
    let result = runner.run(&prop::collection::vec(case(), BATCH..=BATCH), |batch| {
        let observed = rt
            .block_on(run_batch(proxy.addr, &render, &batch))
            .map_err(TestCaseError::fail)?;
        // Still serving: a CONNECT to the provider host is accepted.
        rt.block_on(async {
            let _ = raw::connect(proxy.addr, "api.openai.com:443", &proxy.token).await;
        });
        let mut s = stats.lock().unwrap();
        for o in observed {
            s.0 += 1;
            s.1 += usize::from(o.fin_sent);
            *s.2.entry(o.status).or_insert(0usize) += 1;
        }
        Ok(())
    });
    let elapsed = started.elapsed();
    if let Err(e) = result {
        panic!("wire fuzz failed (seed {seed}, replay with AIBRIDGE_FUZZ_SEED={seed}): {e}");
    }
    let (ran, fins, statuses) = stats.into_inner().unwrap();
    println!(
        "wire fuzz: {ran} cases in {elapsed:?}; client half-closed {fins}; final statuses (0 = closed without answer): {statuses:?}"
    );
    assert!(ran >= cases, "ran {ran} of {cases} cases");
    // The grammar reaches every layer: refusals, MITM CONNECTs and bridged answers.
    for status in [200, 400, 407] {
        assert!(
            statuses.get(&status).is_some_and(|n| *n > 0),
            "no case ended in {status}: {statuses:?}"
        );
    }
    rt.block_on(async {
        // A full bridged request still works.
        let resp = proxy
            .client(Http::One)
            .post(CHAT)
            .header("content-type", "application/json")
            .body(r#"{"model":"gpt-4o-mini","messages":[]}"#)
            .call()
            .await;
        assert_eq!(resp.status(), 200);
        assert!(resp.text().await.unwrap().contains("chat.completion"));
    });
    let panicked = panics::seen("wire");
    assert!(panicked.is_empty(), "proxy tasks panicked: {panicked:#?}");
    rt.block_on(proxy.stop());
}

/// The harness itself can fail: a server that never closes after the client's FIN, one that
/// answers with an undocumented status, and one that sends garbage are each reported.
#[tokio::test]
async fn the_harness_catches_hangs_and_undocumented_answers() {
    async fn server(answer: &'static [u8], close: bool) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            for _ in 0..4 {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let _ = s.write_all(answer).await;
                if !close {
                    // Never closes: the connection is kept until the test ends.
                    held.push(s);
                }
            }
            tokio::time::sleep(WAIT).await;
        });
        addr
    }
    let case = Case {
        request: Request {
            method: "CONNECT".into(),
            target: "api.openai.com:443".into(),
            version: "HTTP/1.1",
            eol: "\r\n",
            headers: Vec::new(),
            auto_length: false,
            body: Body::Empty,
            tail: Tail::Nothing,
        },
        mutations: Vec::new(),
        splits: Vec::new(),
        pause: false,
    };
    let render = Render {
        token: "t",
        client_hello: &[],
    };
    let hang = server(b"", false).await;
    let err = run_case(hang, &case, &render.case(&case))
        .await
        .unwrap_err();
    assert!(err.contains("not closed"), "{err}");
    let bad = server(b"HTTP/1.1 500 Internal Server Error\r\n\r\n", true).await;
    let err = run_batch(bad, &render, std::slice::from_ref(&case))
        .await
        .unwrap_err();
    assert!(
        err.contains("not closed") || err.contains("undocumented status 500"),
        "{err}"
    );
    assert_eq!(
        final_status(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\n\r\n"),
        Ok(404)
    );
    assert_eq!(final_status(b""), Ok(0));
    assert!(final_status(b"SSH-2.0-x\r\n").is_err());
}
