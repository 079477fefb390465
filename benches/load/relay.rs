//! The floor: a minimal MITM relay on the same crates as the proxy (CONNECT, one leaf minted at
//! start, hyper on both sides, a pooled hyper-rustls client to the upstream, HTTP/2 when offered)
//! and nothing else: no auth, no router, no policy, no usage, no records, no metrics, no logs.
//! It runs as a child process of this bench (`--relay-child`), placed like the proxy, so the
//! proxy's cost can be read as "the floor + what is ours".

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;
type Upstream = Client<hyper_rustls::HttpsConnector<HttpConnector>, Incoming>;

/// The child's entry point: `--relay-child UPSTREAM_BASE DIR` (DIR holds `upstream-ca.pem`; the
/// relay writes `ca.pem` and then `addr` there).
pub fn child_main(args: &[String]) {
    let base: Uri = args[0].parse().unwrap();
    let dir = Path::new(&args[1]).to_path_buf();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let ca = crate::tls::TestCa::new();
        let leaf = ca.server_config_for("api.openai.com", &[b"http/1.1"]);
        let upstream_ca = std::fs::read_to_string(dir.join("upstream-ca.pem")).unwrap();
        let tls = crate::tls::client_config(&[&upstream_ca], &[]);
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_all_versions()
            .wrap_connector(http);
        let client: Upstream = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .build(connector);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        std::fs::write(dir.join("ca.pem"), &ca.cert_pem).unwrap();
        std::fs::write(dir.join("addr"), listener.local_addr().unwrap().to_string()).unwrap();
        let shared = Arc::new((leaf, client, base));
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let shared = shared.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| connect(shared.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
}

type Shared = Arc<(Arc<rustls::ServerConfig>, Upstream, Uri)>;

async fn connect(
    shared: Shared,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, hyper::Error> {
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let acceptor = tokio_rustls::TlsAcceptor::from(shared.0.clone());
        let Ok(tls) = acceptor.accept(TokioIo::new(upgraded)).await else {
            return;
        };
        let svc = service_fn(move |req| forward(shared.clone(), req));
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tls), svc)
            .await;
    });
    Ok(Response::new(
        Empty::new().map_err(|e| match e {}).boxed_unsync(),
    ))
}

async fn forward(shared: Shared, req: Request<Incoming>) -> Result<Response<Body>, hyper::Error> {
    let (mut parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("{}{pq}", shared.2).parse().unwrap();
    parts.headers.remove(http::header::HOST);
    match shared.1.request(Request::from_parts(parts, body)).await {
        Ok(resp) => Ok(resp.map(|b| b.boxed_unsync())),
        Err(e) => {
            if std::env::var_os("AIBRIDGE_BENCH_DEBUG").is_some() {
                eprintln!("relay: upstream request failed: {e:?}");
            }
            let mut r = Response::new(Empty::new().map_err(|e| match e {}).boxed_unsync());
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            Ok(r)
        }
    }
}

/// A proxy-like child process placed like the proxy (pinned with one tokio worker when `pin`
/// says so): the relay and the hudsucker peer. Given the upstream's base URL and a directory
/// holding `upstream-ca.pem`, it writes its `ca.pem` and then its `addr` there.
pub struct ChildProcess {
    child: Child,
    pub addr: std::net::SocketAddr,
    pub ca_pem: String,
    _dir: tempfile::TempDir,
}

/// The relay row's process.
pub type RelayProcess = ChildProcess;

impl ChildProcess {
    /// Start the relay (this bench binary with `--relay-child`).
    pub fn start(upstream_base: &str, upstream_ca_pem: &str, pin: Option<usize>) -> Self {
        let exe = std::env::current_exe().unwrap();
        Self::spawn(
            "relay",
            &exe,
            &["--relay-child"],
            upstream_base,
            upstream_ca_pem,
            pin,
        )
    }

    /// Start `exe` with `args`, then the upstream base and the directory; wait (bounded) until
    /// it has written its address.
    pub fn spawn(
        name: &str,
        exe: &Path,
        args: &[&str],
        upstream_base: &str,
        upstream_ca_pem: &str,
        pin: Option<usize>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("upstream-ca.pem"), upstream_ca_pem).unwrap();
        let mut cmd = match pin {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(exe);
                c.env("TOKIO_WORKER_THREADS", "1");
                c
            }
            None => Command::new(exe),
        };
        cmd.args(args)
            .arg(upstream_base)
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(dir.path().join("addr")) {
                if let Ok(addr) = a.parse() {
                    break addr;
                }
            }
            assert!(child.try_wait().unwrap().is_none(), "{name} exited");
            assert!(Instant::now() < deadline, "{name} not ready");
            std::thread::sleep(Duration::from_millis(20));
        };
        let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        ChildProcess {
            child,
            addr,
            ca_pem,
            _dir: dir,
        }
    }

    pub fn cpu(&self) -> Duration {
        crate::proxy::process_cpu(self.child.id())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
