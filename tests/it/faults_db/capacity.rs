//! Bounded resources: F22 a full record queue, F23 `EMFILE` on accept.

use super::*;
use crate::support::bin::{state_in, Child};
use aibridge_proxy::store::{Interception, Store};

// ---------------------------------------------------------------------------------------------
// F22: interception sink down (usage.rs shows records held and written after an outage; this
// adds the overflow, counted in `interceptions_dropped_total`, never silent).

fn record(i: usize) -> Interception {
    Interception {
        id: uuid::Uuid::new_v4(),
        request_id: format!("f22-{i}"),
        token_id: None,
        user: "f22".into(),
        provider: "f22".into(),
        model: None,
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        status: 200,
        input_tokens: Some(1),
        output_tokens: Some(1),
        cache_read_tokens: None,
        cache_write_tokens: None,
        usage_source: "response".into(),
        outcome: "ok".into(),
        started_at: time::OffsetDateTime::now_utc(),
        duration_ms: 1,
        ttfb_ms: Some(1),
        error: None,
        route: "model".into(),
        transport: "http".into(),
        prompt: None,
        tool_calls: Vec::new(),
        trace: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f22_a_full_record_queue_counts_every_dropped_record() {
    use aibridge_proxy::usage::recorder::{BATCH, QUEUE_CAPACITY};
    let Some(db) = TestDb::postgres("faults_db::f22_record_overflow").await else {
        return;
    };
    let (relay, proxy) = behind_relay(&db).await;
    relay.cut();
    // More records than the queue (plus the one batch the writer holds) can keep.
    let sent = QUEUE_CAPACITY + BATCH + 1500;
    let recorder = &proxy.app.recorder;
    for i in 0..sent {
        recorder.started("f22");
        recorder.record(record(i), None);
    }
    let stats = recorder.stats().clone();
    let dropped = stats.dropped.load(Ordering::SeqCst);
    let counted = proxy
        .metric("aibridge_proxy_interceptions_dropped_total", &[])
        .await;
    println!("FIGURE F22: {sent} records during an outage → {dropped} dropped ({counted} counted)");
    // Bounded, and used in full before anything is dropped: what the queue and the writer's
    // held batch (at most BATCH) could not take, and nothing more.
    let overflow = (sent - QUEUE_CAPACITY) as u64;
    assert!(
        (overflow.saturating_sub(BATCH as u64)..=overflow).contains(&dropped),
        "{dropped} of {sent} dropped with a queue of {QUEUE_CAPACITY}"
    );
    assert_eq!(counted, dropped as f64, "every drop is in the metric");
    assert_eq!(stats.written.load(Ordering::SeqCst), 0);

    // Back: the held records drain (all of them takes a while in a debug build; two batches
    // show it), and nothing more is dropped.
    relay.restore();
    let started = Instant::now();
    while stats.written.load(Ordering::SeqCst) < 1000 {
        assert!(
            started.elapsed() < WAIT,
            "held records are not written after recovery: {}",
            stats.written.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM interceptions WHERE provider = 'f22'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(
        (1000..=sent as u64 - dropped).contains(&(rows as u64)),
        "{rows} rows written"
    );
    assert_eq!(stats.dropped.load(Ordering::SeqCst), dropped);
    let _ = conn.close().await;
}

// ---------------------------------------------------------------------------------------------
// F23: EMFILE on accept, on the real binary under a low descriptor limit.

const FD_LIMIT: usize = 128;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

async fn healthz(admin: SocketAddr) -> u16 {
    let attempt = async {
        let mut s = TcpStream::connect(admin).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        Some(raw::status(&raw::read_head(&mut s).await))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f23_emfile_on_accept_backs_off_without_spinning_and_recovers() {
    if !std::path::Path::new("/proc/self/stat").exists() {
        eprintln!("SKIPPED f23: needs /proc");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("emfile.db").display());
    let store = Store::connect(&db).await.unwrap();
    let (_, token) = store.create_token("emfile").await.unwrap();
    store.close().await;
    let echo = echo_server().await;
    let (port, admin_port) = (free_port(), free_port());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {FD_LIMIT} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_aibridge-proxy"))
        .args(["serve", "--listen", &addr.to_string()])
        .args(["--admin-listen", &admin.to_string(), "--database-url", &db])
        .args(state_in(dir.path()))
        .args(["--allow-private-cidrs", "127.0.0.0/8"])
        .args(["--connect-ports", &format!("443,{echo}")])
        .stdout(std::process::Stdio::null())
        .stderr(stderr);
    for var in ["DATABASE_URL", "AIBRIDGE_DATABASE_URL", "RUST_LOG"] {
        cmd.env_remove(var);
    }
    let mut child = Child(cmd.spawn().unwrap());
    let pid = child.0.id();
    let token = token.expose().clone();
    let target = format!("127.0.0.1:{echo}");
    let started = Instant::now();
    while healthz(admin).await != 200 {
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "serve exited at start: {}",
            std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
        );
        assert!(started.elapsed() < WAIT, "serve did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        tunnel_echo(addr, &target, &token, b"before").await,
        (200, true)
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let max_open = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    assert!(
        max_open.split_whitespace().nth(3) == Some(&FD_LIMIT.to_string()),
        "the limit applies: {max_open}"
    );
    let baseline = open_fds(pid);
    assert!(baseline < FD_LIMIT, "{baseline} descriptors at rest");

    // Idle client connections until the process runs out of descriptors; the rest wait in the
    // listen backlog, so accept keeps failing with EMFILE.
    let mut held = Vec::new();
    for _ in 0..(FD_LIMIT - baseline + 32) {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    let started = Instant::now();
    while open_fds(pid) < FD_LIMIT {
        assert!(
            started.elapsed() < WAIT,
            "the proxy never ran out of descriptors: {} of {FD_LIMIT}",
            open_fds(pid)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ticks = clock_ticks_per_second() as f64;
    let (cpu0, t0) = (cpu_ticks(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu1, window) = (cpu_ticks(pid), t0.elapsed());
    let cpu = (cpu1 - cpu0) as f64 / ticks;
    assert!(open_fds(pid) >= FD_LIMIT, "still out of descriptors");
    println!("FIGURE F23: {cpu:.2} CPU-seconds over {window:?} of EMFILE");
    assert!(
        cpu < 0.3,
        "the accept loop spins on EMFILE: {cpu:.2} CPU-s in {window:?}"
    );
    assert!(child.0.try_wait().unwrap().is_none(), "serve survived");

    // Descriptors come back: the proxy serves again.
    drop(held);
    let started = Instant::now();
    loop {
        if tunnel_echo(addr, &target, &token, b"after").await == (200, true) {
            break;
        }
        assert!(started.elapsed() < WAIT, "the proxy did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "FIGURE F23: serving again {:?} after the descriptors came back",
        started.elapsed()
    );
    assert_eq!(healthz(admin).await, 200);
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(
        log.contains("accept failed"),
        "the accept errors were logged: {}",
        log.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
    drop(child);
}
