//! End-to-end load harness: the same client against the same TLS upstream, direct and through
//! the proxy's MITM path (or a tunnel), in one run, with min/median/max over repeated rounds.
//!
//! ```text
//! cargo bench --bench load -- [--seconds S] [--rounds N] [--only a,b] [--idle 1000,10000]
//!                             [--no-pin] [--json PATH]
//! ```
//!
//! The proxy is the real binary (a child process set up with the CLI, SQLite, info logging to a
//! file). With two or more CPUs the proxy is pinned to CPU 1 with one tokio worker, and the load
//! client and the upstream (the fixtures) share CPU 0: the system under test never competes
//! with them, and direct and proxied runs see the same fixtures on the same core. So the direct
//! baseline has one core and the proxied path two; throughput ratios must be read that way
//! (`--no-pin` lets everything float). Direct and proxied rounds alternate so drift hits both.
//!
//! Rows: `direct` (no proxy), `relay` (the floor: a minimal MITM relay on the proxy's crates),
//! `hudsucker` (the peer: hudsucker's current release, pass-through handler; see peer.rs) and
//! `proxy`; `proxy-np` is a second proxy with `--record-prompts false`.
//!
//! Scenarios (`--only` names): `keepalive1`, `keepalive16`, `newconn` (full and resumed TLS
//! handshakes), `sse`, `toolcall` (a streamed tool call), `body200k` (a ~200 KiB conversation,
//! prompt recording on and off), `websocket` (Responses WebSocket mode), `tunnel`, `idle`,
//! `reload`. The keep-alive scenarios end with a counting pass per row: system calls and heap
//! allocations per request (count.rs; `--no-count` skips it). Set `AIBRIDGE_BENCH_SERVE_ARGS` to
//! pass extra `serve` flags to the proxy, `AIBRIDGE_BENCH_PROXY_BIN` to run another build of it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod client;
mod count;
mod peer;
mod proxy;
mod relay;
mod report;
#[path = "../../tests/it/support/tls.rs"]
#[allow(dead_code)]
mod tls;
mod upstream;

use client::{Endpoints, Path};
use proxy::{ProxyProcess, Setup};
use report::{pct_us, Report};
use std::time::{Duration, Instant};

struct Options {
    seconds: f64,
    rounds: usize,
    only: Option<Vec<String>>,
    idle: Vec<usize>,
    pin: bool,
    json: Option<String>,
    bulk_mib: usize,
    count: bool,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let list = |s: String| s.split(',').map(str::to_string).collect::<Vec<_>>();
    Options {
        seconds: value("--seconds")
            .and_then(|s| s.parse().ok())
            .unwrap_or(2.0),
        rounds: value("--rounds").and_then(|s| s.parse().ok()).unwrap_or(5),
        only: value("--only").map(list),
        idle: value("--idle")
            .map(|s| list(s).iter().filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_else(|| vec![1000, 10_000]),
        pin: !args.iter().any(|a| a == "--no-pin"),
        json: value("--json"),
        bulk_mib: value("--bulk-mib")
            .and_then(|s| s.parse().ok())
            .unwrap_or(512),
        count: !args.iter().any(|a| a == "--no-count"),
    }
}

/// Everything a scenario needs.
struct Bench {
    opts: Options,
    ep: Endpoints,
    proxy: ProxyProcess,
    setup_upstream_base: String,
    upstream_ca_pem: String,
    bulk: std::net::SocketAddr,
    pin_proxy: Option<usize>,
    relay: relay::RelayProcess,
    hudsucker: Option<peer::PeerProcess>,
    /// The second proxy (`--record-prompts false`), for `body200k`.
    proxy_np: Option<ProxyProcess>,
    /// The rows of the keep-alive and new-connection scenarios, in the order each round runs.
    paths: Vec<Path>,
    report: Report,
}

impl Bench {
    fn wants(&self, name: &str) -> bool {
        self.opts
            .only
            .as_ref()
            .is_none_or(|o| o.iter().any(|n| n == name))
    }

    /// CPU time so far of the process in the middle of `path`.
    fn sut_cpu(&self, path: Path) -> Duration {
        match path {
            Path::Direct => Duration::ZERO,
            Path::Relay => self.relay.cpu(),
            Path::Hudsucker => self.hudsucker.as_ref().map_or(Duration::ZERO, |h| h.cpu()),
            Path::Proxy => self.proxy.cpu(),
            Path::ProxyNoPrompts => self.proxy_np.as_ref().map_or(Duration::ZERO, |p| p.cpu()),
        }
    }

    /// The process in the middle of `path`.
    fn sut_pid(&self, path: Path) -> Option<u32> {
        match path {
            Path::Direct => None,
            Path::Relay => Some(self.relay.pid()),
            Path::Hudsucker => self.hudsucker.as_ref().map(|h| h.pid()),
            Path::Proxy => Some(self.proxy.pid()),
            Path::ProxyNoPrompts => self.proxy_np.as_ref().map(|p| p.pid()),
        }
    }

    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.opts.seconds)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--relay-child") {
        relay::child_main(&args[i + 1..]);
        return;
    }
    let opts = options();
    let _ = *upstream::EPOCH;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = opts.pin && cpus >= 2;
    // Pin first: threads inherit the mask of the thread that creates them, so the client's and
    // the upstream's runtimes both stay on CPU 0 and the proxy has CPU 1 to itself.
    if pin {
        let status = std::process::Command::new("taskset")
            .args(["-p", "-c", "0", &std::process::id().to_string()])
            .stdout(std::process::Stdio::null())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "taskset failed");
    }
    let upstream_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(if pin { 1 } else { 2 })
        .thread_name("upstream")
        .enable_all()
        .build()
        .unwrap();
    let ca = tls::TestCa::new();
    let upstream_addr =
        upstream_rt.block_on(upstream::start_tls(ca.server_config(&upstream_alpn())));
    let bulk = upstream_rt.block_on(upstream::start_bulk(opts.bulk_mib << 20));
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let upstream_base = format!("https://127.0.0.1:{}", upstream_addr.port());
    let pin_proxy = pin.then_some(1);
    let proxy = ProxyProcess::start(&Setup {
        upstream_base: &upstream_base,
        upstream_ca_pem: &ca.cert_pem,
        bulk_port: bulk.port(),
        pin: pin_proxy,
        extra: &[],
    });
    let relay = relay::RelayProcess::start(&upstream_base, &ca.cert_pem, pin_proxy);
    let hudsucker = peer::start_hudsucker(&upstream_base, &ca.cert_pem, pin_proxy);
    let wants = |name: &str| {
        opts.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|n| n == name))
    };
    let proxy_np = wants("body200k").then(|| {
        ProxyProcess::start(&Setup {
            upstream_base: &upstream_base,
            upstream_ca_pem: &ca.cert_pem,
            bulk_port: bulk.port(),
            pin: pin_proxy,
            extra: &["--record-prompts", "false"],
        })
    });
    let mut ep = Endpoints::new(
        upstream_addr,
        proxy.addr,
        &proxy.token,
        &ca.cert_pem,
        &proxy.ca_pem,
    )
    .with_relay(relay.addr, &relay.ca_pem);
    if let Some(h) = &hudsucker {
        ep = ep.with_hudsucker(h.addr, &h.ca_pem);
    }
    if let Some(p) = &proxy_np {
        ep = ep.with_proxy_np(p.addr, &p.token, &p.ca_pem);
    }
    let mut paths = vec![Path::Direct, Path::Relay];
    if hudsucker.is_some() {
        paths.push(Path::Hudsucker);
    }
    paths.push(Path::Proxy);
    let placement = if pin {
        "client and upstream on CPU 0 (one thread each), proxy/relay/hudsucker each alone on CPU 1 (1 tokio worker) in turn"
    } else {
        "nothing pinned"
    };
    println!(
        "load: {cpus} CPUs; {placement}; {} rounds of {:.1}s per cell; proxy = release binary, SQLite, info logs to a file",
        opts.rounds, opts.seconds
    );
    println!(
        "{:<20} {:<10} {:<22} {:>10} {:>10} {:>10}",
        "scenario", "path", "metric", "min", "median", "max"
    );
    let mut bench = Bench {
        opts,
        ep,
        proxy,
        setup_upstream_base: upstream_base,
        upstream_ca_pem: ca.cert_pem.clone(),
        bulk,
        pin_proxy,
        relay,
        hudsucker,
        proxy_np,
        paths,
        report: Report::default(),
    };
    let started = Instant::now();
    client_rt.block_on(async {
        for conns in [1usize, 16] {
            if bench.wants(&format!("keepalive{conns}")) {
                keepalive(&mut bench, conns).await;
            }
        }
        if bench.wants("newconn") {
            newconn(&mut bench, false).await;
            newconn(&mut bench, true).await;
        }
        if bench.wants("sse") {
            sse(&mut bench, false).await;
        }
        if bench.wants("toolcall") {
            sse(&mut bench, true).await;
        }
        if bench.wants("body200k") {
            body200k(&mut bench).await;
        }
        if bench.wants("websocket") {
            websocket(&mut bench).await;
        }
        if bench.wants("tunnel") {
            tunnel(&mut bench).await;
        }
        if bench.wants("idle") {
            idle(&mut bench).await;
        }
        if bench.wants("reload") {
            reload(&mut bench).await;
        }
    });
    targets(&mut bench.report);
    bench.report.print_targets();
    println!("\nelapsed {:.0}s", started.elapsed().as_secs_f64());
    if let Some(path) = &bench.opts.json {
        let header = serde_json::json!({
            "cpus": cpus, "placement": placement, "rounds": bench.opts.rounds,
            "seconds": bench.opts.seconds, "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        });
        std::fs::write(
            path,
            serde_json::to_string_pretty(&bench.report.json(header)).unwrap(),
        )
        .unwrap();
        println!("wrote {path}");
    }
    drop(upstream_rt);
}

/// The upstream's ALPN list: `h2,http/1.1` unless `AIBRIDGE_BENCH_UPSTREAM_ALPN` says otherwise.
fn upstream_alpn() -> Vec<&'static [u8]> {
    match std::env::var("AIBRIDGE_BENCH_UPSTREAM_ALPN").as_deref() {
        Ok("http/1.1") => vec![b"http/1.1"],
        Ok("h2") => vec![b"h2"],
        _ => vec![b"h2", b"http/1.1"],
    }
}

/// Sequential keep-alive requests on `conns` connections per path.
async fn keepalive(b: &mut Bench, conns: usize) {
    let scenario = format!("keepalive_{conns}conn");
    let paths = b.paths.clone();
    let mut results: Vec<(Path, Vec<[f64; 7]>)> = paths.iter().map(|p| (*p, vec![])).collect();
    let mut senders = Vec::new();
    for &path in &paths {
        let mut s = Vec::new();
        for _ in 0..conns {
            s.push(b.ep.open(path).await);
        }
        s = run_keepalive(s, &b.ep.host(path), Duration::from_millis(300))
            .await
            .0;
        senders.push(s);
    }
    for _ in 0..b.opts.rounds {
        for (i, &path) in paths.iter().enumerate() {
            let cpu0 = b.sut_cpu(path);
            let up0 = upstream_cpu();
            let s = std::mem::take(&mut senders[i]);
            let (s, mut lat, errors, elapsed) =
                run_keepalive(s, &b.ep.host(path), b.duration()).await;
            senders[i] = s;
            let cpu = (b.sut_cpu(path) - cpu0).as_nanos() as f64 / 1000.0;
            let up = (upstream_cpu() - up0).as_nanos() as f64 / 1000.0;
            lat.sort_unstable();
            let n = lat.len() as f64;
            results[i].1.push([
                n / elapsed,
                pct_us(&lat, 0.5),
                pct_us(&lat, 0.99),
                pct_us(&lat, 0.999),
                errors as f64,
                cpu / n,
                up / n,
            ]);
        }
    }
    for (path, rounds) in results {
        let col = |i: usize| rounds.iter().map(|r| r[i]).collect::<Vec<_>>();
        b.report.push(&scenario, path.name(), "req/s", col(0));
        b.report.push(&scenario, path.name(), "p50 µs", col(1));
        b.report.push(&scenario, path.name(), "p99 µs", col(2));
        b.report.push(&scenario, path.name(), "p999 µs", col(3));
        b.report.push(&scenario, path.name(), "errors", col(4));
        if path != Path::Direct {
            b.report
                .push(&scenario, path.name(), "proxy CPU µs/req", col(5));
        }
        b.report
            .push(&scenario, path.name(), "upstream CPU µs/req", col(6));
    }
    if b.opts.count {
        for (i, &path) in paths.iter().enumerate() {
            let s = std::mem::take(&mut senders[i]);
            senders[i] = count_pass(b, &scenario, path, s).await;
        }
    }
}

/// Two passes (see count.rs): the in-kernel syscall count at speed, then one under strace and
/// perf: the syscalls behind the total, allocations and reallocations per request of the
/// process in the middle of `path`.
async fn count_pass(
    b: &mut Bench,
    scenario: &str,
    path: Path,
    senders: Vec<Sender>,
) -> Vec<Sender> {
    let Some(pid) = b.sut_pid(path) else {
        return senders;
    };
    let one = |v: Option<f64>| v.map(|v| vec![v]).unwrap_or_default();
    let mut senders = senders;
    if let Some(total) = count::SyscallTotal::attach(pid) {
        let (s, lat, _, _) = run_keepalive(senders, &b.ep.host(path), Duration::from_secs(2)).await;
        senders = s;
        if let Some(n) = total.finish(lat.len()) {
            b.report
                .push(scenario, path.name(), "syscalls/req", vec![n]);
        }
    }
    let counting = count::Counting::attach(pid);
    let (senders, lat, _, _) =
        run_keepalive(senders, &b.ep.host(path), Duration::from_secs(2)).await;
    let counts = counting.finish(lat.len());
    if counts.syscalls.is_some() {
        b.report.push(
            scenario,
            path.name(),
            "syscalls/req (strace)",
            one(counts.syscalls),
        );
        let top: Vec<String> = counts
            .by_syscall
            .iter()
            .filter(|(_, v)| *v >= 0.01)
            .map(|(n, v)| format!("{n} {v:.2}"))
            .collect();
        println!(
            "{:<20} {:<10}   strace: {}",
            scenario,
            path.name(),
            top.join(", ")
        );
    }
    if counts.allocs.is_some() {
        b.report
            .push(scenario, path.name(), "allocs/req", one(counts.allocs));
        b.report
            .push(scenario, path.name(), "reallocs/req", one(counts.reallocs));
    }
    senders
}

/// CPU time of this process's upstream threads (named `upstream`), for a per-request
/// reference: what a minimal TLS server costs on this machine.
fn upstream_cpu() -> Duration {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("upstream") {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            ticks += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
        }
    }
    Duration::from_nanos(ticks * 1_000_000_000 / proxy::clock_ticks())
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>;

/// Run every connection in its own task until `duration` passes. Returns the senders, the
/// latencies (ns), the error count and the elapsed seconds.
async fn run_keepalive(
    senders: Vec<Sender>,
    host: &str,
    duration: Duration,
) -> (Vec<Sender>, Vec<u64>, usize, f64) {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            let host = host.to_string();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(32 * 1024);
                let mut errors = 0;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if client::call(&mut sender, &host).await {
                        lat.push(t.elapsed().as_nanos() as u64);
                    } else {
                        errors += 1;
                        if sender.is_closed() {
                            break;
                        }
                    }
                }
                (sender, lat, errors)
            })
        })
        .collect();
    let mut senders = Vec::new();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (s, lat, e) = t.await.unwrap();
        senders.push(s);
        all.extend(lat);
        errors += e;
    }
    (senders, all, errors, started.elapsed().as_secs_f64())
}

/// One new connection per request: TCP (+ CONNECT) + a TLS handshake + one request. The TLS
/// handshake is a full one, or with `resume` a resumed one (the client keeps the sessions the
/// previous connections got; TLS 1.3 tickets).
async fn newconn(b: &mut Bench, resume: bool) {
    let scenario = if resume {
        "new_conn_resumed"
    } else {
        "new_connection"
    };
    let paths = b.paths.clone();
    let mut rounds: Vec<Vec<[f64; 3]>> = paths.iter().map(|_| vec![]).collect();
    for &path in &paths {
        // Warm: leaf cached, upstream pool open, and (resuming) a session to resume.
        let mut s = if resume {
            b.ep.open_resuming(path).await
        } else {
            b.ep.open(path).await
        };
        client::call(&mut s, &b.ep.host(path)).await;
    }
    for _ in 0..b.opts.rounds {
        for (i, &path) in paths.iter().enumerate() {
            let host = b.ep.host(path);
            let started = Instant::now();
            let deadline = started + b.duration();
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let mut s = if resume {
                    b.ep.open_resuming(path).await
                } else {
                    b.ep.open(path).await
                };
                assert!(
                    client::call(&mut s, &host).await,
                    "new-connection request failed"
                );
                lat.push(t.elapsed().as_nanos() as u64);
            }
            let elapsed = started.elapsed().as_secs_f64();
            lat.sort_unstable();
            rounds[i].push([
                lat.len() as f64 / elapsed,
                pct_us(&lat, 0.5),
                pct_us(&lat, 0.99),
            ]);
        }
    }
    for (i, &path) in paths.iter().enumerate() {
        let col = |c: usize| rounds[i].iter().map(|r| r[c]).collect::<Vec<_>>();
        b.report.push(scenario, path.name(), "conn/s", col(0));
        b.report.push(scenario, path.name(), "p50 µs", col(1));
        b.report.push(scenario, path.name(), "p99 µs", col(2));
    }
}

const SSE_EVENTS: usize = 200;
const SSE_GAP_US: u64 = 1000;

/// SSE: time to the first event, and each later event's delay from the upstream's send to the
/// client's read. With `tool`, the events are one streamed tool call (`delta.tool_calls`
/// argument pieces, the proxy assembling the call for its record).
async fn sse(b: &mut Bench, tool: bool) {
    let scenario = if tool {
        "sse_tool_call"
    } else {
        "sse_200_events"
    };
    let streams_per_round =
        ((b.opts.seconds * 1e6) / (SSE_EVENTS as f64 * SSE_GAP_US as f64)).max(1.0) as usize;
    // The relay row is the floor for a streamed answer on these crates.
    const PATHS: [Path; 3] = [Path::Direct, Path::Relay, Path::Proxy];
    let mut rounds: [Vec<[f64; 3]>; 3] = [vec![], vec![], vec![]];
    let mut senders = Vec::new();
    for path in PATHS {
        let mut s = b.ep.open(path).await;
        client::call(&mut s, &b.ep.host(path)).await;
        senders.push(s);
    }
    for _ in 0..b.opts.rounds {
        for (i, path) in PATHS.into_iter().enumerate() {
            let host = b.ep.host(path);
            let mut first = Vec::new();
            let mut later = Vec::new();
            for _ in 0..streams_per_round {
                let (f, l) = one_stream(&mut senders[i], &host, tool).await;
                first.push(f);
                later.extend(l);
            }
            first.sort_unstable();
            later.sort_unstable();
            rounds[i].push([
                pct_us(&first, 0.5),
                pct_us(&later, 0.5),
                pct_us(&later, 0.99),
            ]);
        }
    }
    for (i, path) in PATHS.into_iter().enumerate() {
        let col = |c: usize| rounds[i].iter().map(|r| r[c]).collect::<Vec<_>>();
        b.report
            .push(scenario, path.name(), "first event µs", col(0));
        b.report.push(scenario, path.name(), "event p50 µs", col(1));
        b.report.push(scenario, path.name(), "event p99 µs", col(2));
    }
}

/// One stream: (ns from request to the first event, ns send→read of every later event).
async fn one_stream(sender: &mut Sender, host: &str, tool: bool) -> (u64, Vec<u64>) {
    use http_body_util::BodyExt;
    sender.ready().await.unwrap();
    let extra = [
        ("x-bench-events", SSE_EVENTS.to_string()),
        ("x-bench-gap-us", SSE_GAP_US.to_string()),
        ("x-bench-tool", u8::from(tool).to_string()),
    ];
    let t0 = upstream::now_ns();
    let resp = sender
        .send_request(client::request(host, client::STREAM_BODY, &extra))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut pending = Vec::new();
    let mut first = None;
    let mut later = Vec::with_capacity(SSE_EVENTS);
    while let Some(frame) = body.frame().await {
        let now = upstream::now_ns();
        let Ok(data) = frame.unwrap().into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            if let Some(sent) = sent_at(&event) {
                if first.is_none() {
                    first = Some(now - t0);
                } else {
                    later.push(now.saturating_sub(sent));
                }
            }
        }
    }
    assert_eq!(later.len() + 1, SSE_EVENTS, "every event arrives");
    (first.unwrap(), later)
}

fn sent_at(event: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(event).ok()?;
    let at = s.find("\"t\":")? + 4;
    let digits: String = s[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A chat request the size of a long agent conversation: ~200 KiB of alternating turns, the
/// last a short user message (the prompt the proxy records).
fn conversation_200k() -> bytes::Bytes {
    let filler = "lorem ipsum dolor sit amet, ".repeat(36); // ~1 KiB per turn
    let mut messages = Vec::new();
    for i in 0..200 {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages.push(serde_json::json!({"role": role, "content": format!("turn {i}: {filler}")}));
    }
    messages.push(serde_json::json!({"role": "user", "content": "Say hello."}));
    let body = serde_json::json!({"model": "gpt-4o-mini", "messages": messages});
    bytes::Bytes::from(serde_json::to_vec(&body).unwrap())
}

/// A ~200 KiB request body on one keep-alive connection: direct, the proxy recording prompts
/// (the default) and a second proxy with `--record-prompts false`, alternating. The proxy's
/// added latency and CPU per request, and what prompt recording adds to them.
async fn body200k(b: &mut Bench) {
    let scenario = "body_200k";
    let body = conversation_200k();
    let mut paths = vec![Path::Direct, Path::Proxy];
    if b.proxy_np.is_some() {
        paths.push(Path::ProxyNoPrompts);
    }
    let mut senders = Vec::new();
    for &path in &paths {
        let mut s = b.ep.open(path).await;
        assert!(client::call_with(&mut s, &b.ep.host(path), body.clone()).await);
        senders.push(s);
    }
    let mut rounds: Vec<Vec<[f64; 4]>> = paths.iter().map(|_| vec![]).collect();
    for _ in 0..b.opts.rounds {
        for (i, &path) in paths.iter().enumerate() {
            let host = b.ep.host(path);
            let cpu0 = b.sut_cpu(path);
            let started = Instant::now();
            let deadline = started + b.duration();
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                assert!(
                    client::call_with(&mut senders[i], &host, body.clone()).await,
                    "200 KiB request failed on {}",
                    path.name()
                );
                lat.push(t.elapsed().as_nanos() as u64);
            }
            let cpu = (b.sut_cpu(path) - cpu0).as_nanos() as f64 / 1000.0;
            let elapsed = started.elapsed().as_secs_f64();
            lat.sort_unstable();
            let n = lat.len() as f64;
            rounds[i].push([n / elapsed, pct_us(&lat, 0.5), pct_us(&lat, 0.99), cpu / n]);
        }
    }
    println!("{scenario:<20} (body {} bytes)", body.len());
    for (i, &path) in paths.iter().enumerate() {
        let col = |c: usize| rounds[i].iter().map(|r| r[c]).collect::<Vec<_>>();
        b.report.push(scenario, path.name(), "req/s", col(0));
        b.report.push(scenario, path.name(), "p50 µs", col(1));
        b.report.push(scenario, path.name(), "p99 µs", col(2));
        if path != Path::Direct {
            b.report
                .push(scenario, path.name(), "proxy CPU µs/req", col(3));
        }
    }
}

/// The Responses WebSocket mode on one socket: `response.create` after `response.create`, each
/// answered with `response.created`, [`upstream::WS_DELTAS`] deltas and `response.completed`.
/// Messages per second (server to client) and each delta's delay from the upstream's send to
/// the client's read, direct and through the proxy (which reads every frame and records every
/// response), alternating.
async fn websocket(b: &mut Bench) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let scenario = "websocket_responses";
    let paths = [Path::Direct, Path::Proxy];
    let mut sockets = Vec::new();
    for &path in &paths {
        let tls = b.ep.tls(path, false).await;
        let url = format!("wss://{}/v1/responses", b.ep.host(path));
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert(
            "authorization",
            http::HeaderValue::from_static("Bearer sk-agent-placeholder"),
        );
        req.headers_mut().insert(
            "openai-beta",
            http::HeaderValue::from_static("responses_websockets=2026-02-06"),
        );
        let (ws, resp) = tokio_tungstenite::client_async(req, tls).await.unwrap();
        assert_eq!(resp.status(), 101);
        sockets.push(ws);
    }
    let create = r#"{"type":"response.create","model":"gpt-4o-mini","input":"Say hello."}"#;
    let mut rounds: Vec<Vec<[f64; 4]>> = paths.iter().map(|_| vec![]).collect();
    for _ in 0..b.opts.rounds {
        for (i, &path) in paths.iter().enumerate() {
            let ws = &mut sockets[i];
            let cpu0 = b.sut_cpu(path);
            let started = Instant::now();
            let deadline = started + b.duration();
            let (mut messages, mut lat) = (0usize, Vec::new());
            while Instant::now() < deadline {
                ws.send(Message::text(create)).await.unwrap();
                loop {
                    let msg = ws.next().await.expect("socket open").unwrap();
                    let now = upstream::now_ns();
                    let Message::Text(text) = msg else { continue };
                    messages += 1;
                    if let Some(sent) = sent_at(text.as_bytes()) {
                        lat.push(now.saturating_sub(sent));
                    }
                    if text.contains("\"response.completed\"") {
                        break;
                    }
                }
            }
            let elapsed = started.elapsed().as_secs_f64();
            let cpu = (b.sut_cpu(path) - cpu0).as_nanos() as f64 / 1000.0;
            lat.sort_unstable();
            rounds[i].push([
                messages as f64 / elapsed,
                pct_us(&lat, 0.5),
                pct_us(&lat, 0.99),
                cpu / messages.max(1) as f64,
            ]);
        }
    }
    for (i, &path) in paths.iter().enumerate() {
        let col = |c: usize| rounds[i].iter().map(|r| r[c]).collect::<Vec<_>>();
        b.report.push(scenario, path.name(), "msg/s", col(0));
        b.report.push(scenario, path.name(), "msg p50 µs", col(1));
        b.report.push(scenario, path.name(), "msg p99 µs", col(2));
        if path != Path::Direct {
            b.report
                .push(scenario, path.name(), "proxy CPU µs/msg", col(3));
        }
    }
}

/// Bulk download through a CONNECT tunnel vs a direct TCP connection.
async fn tunnel(b: &mut Bench) {
    use tokio::io::AsyncReadExt;
    let scenario = "tunnel_bulk";
    let total = b.opts.bulk_mib << 20;
    let mut rounds: [Vec<f64>; 2] = [vec![], vec![]];
    let mut cpu_per_mb = Vec::new();
    let target = format!("127.0.0.1:{}", b.bulk.port());
    for _ in 0..b.opts.rounds {
        for (i, path) in [Path::Direct, Path::Proxy].into_iter().enumerate() {
            let started = Instant::now();
            let cpu_before = b.sut_cpu(path);
            let mut tcp = match path {
                Path::Direct => tokio::net::TcpStream::connect(b.bulk).await.unwrap(),
                _ => b.ep.connect_tunnel(&target).await,
            };
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0;
            loop {
                let n = tcp.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got += n;
            }
            assert_eq!(got, total, "bulk transfer complete");
            rounds[i].push(total as f64 / 1e6 / started.elapsed().as_secs_f64());
            if path == Path::Proxy {
                let cpu = b.sut_cpu(path) - cpu_before;
                cpu_per_mb.push(cpu.as_secs_f64() * 1e6 / (total as f64 / 1e6));
            }
        }
    }
    for (i, path) in [Path::Direct, Path::Proxy].into_iter().enumerate() {
        b.report
            .push(scenario, path.name(), "MB/s", rounds[i].clone());
    }
    b.report
        .push(scenario, "proxy", "proxy CPU µs/MB", cpu_per_mb);
}

/// RSS per idle intercepted connection (CONNECT + TLS + one request, then idle) of every
/// proxy-like row, each round on a fresh process so earlier rounds' freed memory cannot hide
/// the cost; the relay's and hudsucker's figures are the floor for what the proxy holds.
async fn idle(b: &mut Bench) {
    let rows: Vec<Path> = b
        .paths
        .iter()
        .copied()
        .filter(|p| *p != Path::Direct)
        .collect();
    for &n in &b.opts.idle.clone() {
        let scenario = format!("idle_{n}_mitm");
        let rounds = if n >= 10_000 {
            b.opts.rounds.min(3)
        } else {
            b.opts.rounds
        };
        let mut per_conn = vec![Vec::new(); rows.len()];
        for _ in 0..rounds {
            for (i, &path) in rows.iter().enumerate() {
                per_conn[i].push(idle_round(b, path, n).await);
            }
        }
        for (i, &path) in rows.iter().enumerate() {
            b.report
                .push(&scenario, path.name(), "RSS KiB/conn", per_conn[i].clone());
        }
    }
}

/// One fresh process of `path`'s kind: RSS KiB it gained per connection once `n` are idle.
async fn idle_round(b: &Bench, path: Path, n: usize) -> f64 {
    let upstream = (b.setup_upstream_base.as_str(), b.upstream_ca_pem.as_str());
    let (ep, pid, process): (Endpoints, u32, Box<dyn std::any::Any>) = match path {
        Path::Relay => {
            let relay = relay::RelayProcess::start(upstream.0, upstream.1, b.pin_proxy);
            let ep = b.ep.clone().with_relay(relay.addr, &relay.ca_pem);
            (ep, relay.pid(), Box::new(relay))
        }
        Path::Hudsucker => {
            let peer = peer::start_hudsucker(upstream.0, upstream.1, b.pin_proxy)
                .expect("the hudsucker row exists, so it was built");
            let ep = b.ep.clone().with_hudsucker(peer.addr, &peer.ca_pem);
            (ep, peer.pid(), Box::new(peer))
        }
        _ => {
            let proxy = ProxyProcess::start(&Setup {
                upstream_base: upstream.0,
                upstream_ca_pem: upstream.1,
                bulk_port: b.bulk.port(),
                pin: b.pin_proxy,
                extra: &[],
            });
            let ep = Endpoints::new(
                b.ep.upstream,
                proxy.addr,
                &proxy.token,
                upstream.1,
                &proxy.ca_pem,
            );
            (ep, proxy.pid(), Box::new(proxy))
        }
    };
    let row = if matches!(path, Path::Relay | Path::Hudsucker) {
        path
    } else {
        Path::Proxy
    };
    {
        let mut warm = ep.open(row).await;
        assert!(client::call(&mut warm, "api.openai.com").await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = proxy::rss_kib(pid);
    let held = open_many(&ep, row, n).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Some(proxy) = process.downcast_ref::<ProxyProcess>() {
        let active = active_mitm(proxy).await;
        assert!(
            active >= n as f64,
            "{active} of {n} connections open at the proxy"
        );
    }
    let gained = (proxy::rss_kib(pid) as f64 - base as f64) / n as f64;
    drop(held);
    gained
}

async fn open_many(ep: &Endpoints, path: Path, n: usize) -> Vec<Sender> {
    const PARALLEL: usize = 32;
    let mut held = Vec::with_capacity(n);
    let mut set = tokio::task::JoinSet::new();
    let mut started = 0;
    while held.len() < n {
        while started < n && set.len() < PARALLEL {
            let ep = ep.clone();
            set.spawn(async move {
                let mut s = ep.open(path).await;
                assert!(client::call(&mut s, "api.openai.com").await);
                s
            });
            started += 1;
        }
        held.push(set.join_next().await.unwrap().unwrap());
    }
    held
}

async fn active_mitm(proxy: &ProxyProcess) -> f64 {
    let (_, text) = proxy.admin("GET", "/metrics", None).await;
    text.lines()
        .find(|l| l.starts_with("aibridge_proxy_active_connections{kind=\"mitm\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Requests on 16 connections, alternating: steady; while the provider is rewritten 10 times a
/// second (full reloads); while agent tokens change 100 times a second (50 created and 50
/// revoked: token deltas, issue 18).
async fn reload(b: &mut Bench) {
    let scenario = "reload_16conn";
    let (status, body) = b
        .proxy
        .admin(
            "POST",
            "/api/v1/models",
            Some(r#"{"provider":"openai","model":"gpt-4o-mini"}"#),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut senders = Vec::new();
    for _ in 0..16 {
        senders.push(b.ep.open(Path::Proxy).await);
    }
    let host = b.ep.host(Path::Proxy);
    let writers = [None, Some(Writes::Provider), Some(Writes::Tokens)];
    let mut rows: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = vec![Default::default(); writers.len()];
    for _ in 0..b.opts.rounds {
        for (row, writes) in writers.iter().enumerate() {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let writer = writes.map(|w| {
                let (admin, token, stop) =
                    (b.proxy.admin, b.proxy.admin_token.clone(), stop.clone());
                tokio::spawn(write_loop(w, admin, token, stop))
            });
            let (s, lat, errors, elapsed) =
                run_keepalive(std::mem::take(&mut senders), &host, b.duration()).await;
            senders = s;
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            let r = &mut rows[row];
            r.0.push(lat.len() as f64 / elapsed);
            r.1.push(errors as f64);
            if let Some(w) = writer {
                let (changes, failed) = w.await.unwrap();
                assert_eq!(failed, 0, "admin writes failed");
                r.2.push(changes as f64 / elapsed);
            }
        }
    }
    for (writes, (rps, errors, changes)) in writers.iter().zip(rows) {
        let (path, unit) = match writes {
            None => ("steady", ""),
            Some(Writes::Provider) => ("reloading", "rewrites/s"),
            Some(Writes::Tokens) => ("token_churn", "token changes/s"),
        };
        b.report.push(scenario, path, "req/s", rps);
        b.report.push(scenario, path, "errors", errors);
        if !unit.is_empty() {
            b.report.push(scenario, path, unit, changes);
        }
    }
}

/// What the admin writer changes while requests run.
#[derive(Clone, Copy)]
enum Writes {
    /// PATCH the provider every 100 ms (toggling its model policy; the model used is allowed
    /// either way): a full reload each.
    Provider,
    /// Every 20 ms create a token and revoke it: 100 token changes a second, applied as deltas.
    Tokens,
}

/// Run `writes` until told to stop. Returns (changes made, failed writes).
async fn write_loop(
    writes: Writes,
    admin: std::net::SocketAddr,
    token: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (usize, usize) {
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls::client_config(&[], &[]))
        .build()
        .unwrap();
    let base = format!("http://{admin}/api/v1");
    let period = match writes {
        Writes::Provider => Duration::from_millis(100),
        Writes::Tokens => Duration::from_millis(20),
    };
    let mut tick = tokio::time::interval(period);
    let (mut changes, mut failed) = (0, 0);
    let mut enforce = false;
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        tick.tick().await;
        match writes {
            Writes::Provider => {
                enforce = !enforce;
                let resp = client
                    .patch(format!("{base}/providers/openai"))
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(format!("{{\"enforce_models\":{enforce}}}"))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().is_success() => changes += 1,
                    _ => failed += 1,
                }
            }
            Writes::Tokens => {
                n += 1;
                let created = client
                    .post(format!("{base}/tokens"))
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(format!("{{\"user\":\"churn-{n}\"}}"))
                    .send()
                    .await;
                let id = match created {
                    Ok(r) if r.status().is_success() => r
                        .bytes()
                        .await
                        .ok()
                        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                        .and_then(|v| v["id"].as_str().map(str::to_owned)),
                    _ => None,
                };
                let Some(id) = id else {
                    failed += 1;
                    continue;
                };
                changes += 1;
                let revoked = client
                    .delete(format!("{base}/tokens/{id}"))
                    .bearer_auth(&token)
                    .send()
                    .await;
                match revoked {
                    Ok(r) if r.status().is_success() => changes += 1,
                    _ => failed += 1,
                }
            }
        }
    }
    (changes, failed)
}

/// The performance issue's targets (issue 14), from this run's medians.
fn targets(r: &mut Report) {
    let med = |r: &Report, s: &str, p: &str, m: &str| r.median(s, p, m);
    let k16 = "keepalive_16conn";
    let rps = |p: &str| med(r, k16, p, "req/s");
    let vs_huds = rps("proxy") / rps("hudsucker");
    let vs_relay16 = rps("proxy") / rps("relay");
    r.target("16 conns: req/s vs hudsucker", vs_huds, "x", 1.15, false);
    r.target(
        "16 conns: req/s vs minimal relay",
        vs_relay16,
        "x",
        0.8,
        false,
    );
    let k1 = "keepalive_1conn";
    let added = |r: &Report, m: &str| med(r, k1, "proxy", m) - med(r, k1, "relay", m);
    let (p50, p99) = (added(r, "p50 µs"), added(r, "p99 µs"));
    r.target("1 conn: p50 added over relay", p50, " µs", 15.0, true);
    r.target("1 conn: p99 added over relay", p99, " µs", 60.0, true);
    for (k, name) in [
        (k1, "1 conn: proxy CPU/req over relay"),
        (k16, "16 conns: proxy CPU/req over relay"),
    ] {
        let over = med(r, k, "proxy", "proxy CPU µs/req") - med(r, k, "relay", "proxy CPU µs/req");
        r.target(name, over, " µs", 10.0, true);
    }
    let sys = med(r, k16, "proxy", "syscalls/req");
    r.target("16 conns: proxy syscalls/req", sys, "", 4.5, true);
    let nc = |r: &Report, s: &str| med(r, s, "proxy", "p50 µs") / med(r, s, "direct", "p50 µs");
    let (full, resumed) = (nc(r, "new_connection"), nc(r, "new_conn_resumed"));
    r.target("new connection: p50 vs direct", full, "x", 1.5, true);
    r.target(
        "new conn, resumed TLS: p50 vs direct",
        resumed,
        "x",
        1.5,
        true,
    );
    let s = "sse_200_events";
    let first =
        (med(r, s, "proxy", "first event µs") - med(r, s, "direct", "first event µs")) / 1000.0;
    let each = med(r, s, "proxy", "event p50 µs") - med(r, s, "direct", "event p50 µs");
    r.target("SSE: first event added", first, " ms", 0.5, true);
    r.target("SSE: later event added (p50)", each, " µs", 40.0, true);
    let t = "tunnel_bulk";
    let tunnel = med(r, t, "proxy", "MB/s") / med(r, t, "direct", "MB/s");
    r.target("tunnel: bulk throughput vs direct", tunnel, "x", 0.9, false);
    for n in ["idle_1000_mitm", "idle_10000_mitm"] {
        let v = med(r, n, "proxy", "RSS KiB/conn");
        let name = if n.contains("10000") {
            "10 000 idle MITM: RSS per conn"
        } else {
            "1 000 idle MITM: RSS per conn"
        };
        r.target(name, v, " KiB", 24.0, true);
    }
    let errors: f64 = r
        .series
        .iter()
        .filter(|s| s.scenario == "reload_16conn" && s.path != "steady" && s.metric == "errors")
        .flat_map(|s| s.values.iter())
        .sum();
    if r.series.iter().any(|s| s.scenario == "reload_16conn") {
        r.target(
            "reload and token churn under load: errors (all rounds)",
            errors,
            "",
            0.0,
            true,
        );
    }
}
