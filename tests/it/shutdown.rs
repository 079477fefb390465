//! Graceful shutdown of the real binary (RELIABILITY F25, figure F-18): SIGTERM stops accepting,
//! streams shorter than `--shutdown-grace` finish, longer ones and tunnels are cut at the grace,
//! every stream leaves its interception record, and the process exits 0; a second signal exits
//! at once.

use crate::support::bin::{bin, state_in, Child};
use crate::support::db::{new_provider, writer};
use crate::support::*;
use aibridge_proxy::secret::Secret;
use aibridge_proxy::store::{NewProvider, Store};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GRACE: Duration = Duration::from_secs(2);

struct Serve {
    child: Child,
    addr: std::net::SocketAddr,
    token: String,
    ca_pem: String,
    db: String,
}

impl Serve {
    fn signal(&self, name: &str) {
        self.child.signal(name);
    }

    /// Wait (bounded) for the process to exit.
    async fn exit(&mut self, within: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < within,
                "serve did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `serve` in `dir` with one provider to `upstream` (whose CA is `upstream_ca`), tunnels to
/// `127.0.0.1:extra_port` allowed, and [`GRACE`].
async fn start(dir: &Path, upstream: &MockUpstream, upstream_ca: &Path, extra_port: u16) -> Serve {
    let db = format!("sqlite://{}", dir.join("shutdown.db").display());
    let store = writer(&db).await;
    store
        .create_provider(NewProvider {
            api_keys: vec![Secret::new("sk-shutdown-0123456789".into())],
            ..new_provider("openai", &upstream.base_url(), "api.openai.com")
        })
        .await
        .unwrap();
    let (_, token) = store.create_token("drain").await.unwrap();
    store.close().await;
    let port = free_port();
    let child = Child(
        bin()
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", "127.0.0.1:0", "--database-url", &db])
            .args(state_in(dir))
            .arg("--upstream-ca-file")
            .arg(upstream_ca)
            .args(["--allow-private-cidrs", "127.0.0.0/8"])
            .args(["--allow-private-upstreams", "127.0.0.0/8"])
            .args(["--connect-ports", &format!("443,{extra_port}")])
            .args(["--shutdown-grace", &format!("{}s", GRACE.as_secs())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() || !dir.join("ca.pem").exists() {
        assert!(started.elapsed() < WAIT, "serve did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Serve {
        child,
        addr,
        token: token.expose().clone(),
        ca_pem: std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
        db,
    }
}

/// Open a chat stream of `events` events 50 ms apart; returns once the first event arrived,
/// with a task that reads the rest: `Ok(body)` for a clean end, `Err(elapsed)` when cut.
async fn open_stream(
    client: &reqwest::Client,
    events: usize,
) -> tokio::task::JoinHandle<Result<String, Instant>> {
    let mut resp = paced_chat(client, events, 50).call().await;
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().unwrap();
    let mut body = String::from_utf8_lossy(&first).into_owned();
    tokio::spawn(async move {
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => body.push_str(&String::from_utf8_lossy(&c)),
                Ok(None) => return Ok(body),
                Err(_) => return Err(Instant::now()),
            }
        }
    })
}

#[tokio::test]
async fn sigterm_drains_short_streams_cuts_long_ones_records_all_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, upstream_ca) = MockUpstream::for_binary(dir.path()).await;
    let echo = echo_server().await;
    let mut serve = start(dir.path(), &upstream, &upstream_ca, echo).await;
    const SHORT: usize = 20;
    const LONG: usize = 5;

    let mut short = Vec::new();
    let mut long = Vec::new();
    for i in 0..SHORT + LONG {
        // Both protocols, one connection per stream.
        let http = if i % 2 == 0 { Http::One } else { Http::Two };
        let client = agent_client(serve.addr, &serve.token, &[&serve.ca_pem], http);
        if i < SHORT {
            short.push(open_stream(&client, 16).await); // ~0.8 s, well inside the grace
        } else {
            long.push(open_stream(&client, 400).await); // ~20 s, cut at the grace
        }
    }
    // A tunnel, open and working.
    let mut tunnel = raw::connect(serve.addr, &format!("127.0.0.1:{echo}"), &serve.token).await;
    tunnel.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tunnel.read_exact(&mut buf).await.unwrap();

    let signalled = Instant::now();
    serve.signal("TERM");
    // Accepting stops at once.
    let mut refused = false;
    while signalled.elapsed() < Duration::from_secs(1) {
        if tokio::net::TcpStream::connect(serve.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the listener still accepts after SIGTERM");
    // Established work keeps going during the drain.
    tunnel.write_all(b"pong").await.unwrap();
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");

    for s in short {
        let body = s
            .await
            .unwrap()
            .expect("a short stream completes during the drain");
        assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    }
    let mut cut_at = Vec::new();
    for s in long {
        let at = s
            .await
            .unwrap()
            .expect_err("a long stream is cut at the grace");
        cut_at.push(at.duration_since(signalled));
    }
    for at in &cut_at {
        assert!(
            *at >= GRACE - Duration::from_millis(200) && *at <= GRACE + Duration::from_secs(1),
            "cut {at:?} after SIGTERM, grace {GRACE:?}"
        );
    }
    let tunnel_closed = tokio::time::timeout(Duration::from_secs(2), tunnel.read(&mut buf)).await;
    assert!(
        matches!(tunnel_closed, Ok(Ok(0)) | Ok(Err(_))),
        "the tunnel is closed at the grace"
    );
    let (status, _) = serve.exit(GRACE + Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "exit status after a cut drain");
    let exited = signalled.elapsed();

    let store = Store::connect(&serve.db).await.unwrap();
    let rows = store.recent_interceptions(100).await.unwrap();
    store.close().await;
    let completed = rows.iter().filter(|r| r.outcome == "completed").count();
    let cut = rows
        .iter()
        .filter(|r| r.error.as_deref() == Some("shutdown") && r.outcome == "truncated")
        .count();
    assert_eq!(
        rows.len(),
        SHORT + LONG,
        "one record per stream, flushed before exit"
    );
    assert_eq!((completed, cut), (SHORT, LONG));
    assert!(rows
        .iter()
        .filter(|r| r.outcome == "completed")
        .all(|r| r.output_tokens == Some(5)));
    println!(
        "FIGURE F-18 shutdown: {SHORT}/{SHORT} short streams completed, {LONG}/{LONG} long cut at {:?}..{:?} (grace {GRACE:?}), exit 0 after {exited:?}, records {}/{}",
        cut_at.iter().min().unwrap(),
        cut_at.iter().max().unwrap(),
        rows.len(),
        SHORT + LONG
    );
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, upstream_ca) = MockUpstream::for_binary(dir.path()).await;
    let mut serve = start(dir.path(), &upstream, &upstream_ca, 443).await;
    let client = agent_client(serve.addr, &serve.token, &[&serve.ca_pem], Http::One);
    let stream = open_stream(&client, 400).await;
    serve.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        serve.child.0.try_wait().unwrap().is_none(),
        "still draining"
    );
    serve.signal("TERM");
    let (status, took) = serve.exit(Duration::from_secs(2)).await;
    assert_eq!(status.code(), Some(1));
    assert!(took < GRACE, "exited {took:?} after the second signal");
    assert!(stream.await.unwrap().is_err());
}
