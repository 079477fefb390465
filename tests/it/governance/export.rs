//! The real binary: `interceptions list` streams 100 000 records in constant memory in the
//! API's shape (and as CSV), and `serve` logs the host of every refused CONNECT and of every
//! tunnel when it closes.

use super::*;
use crate::support::bin::{bin, cli_db, state_in, Child};
use crate::support::raw;
use aibridge_proxy::store::Store;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

const ROWS: usize = 100_000;

/// Peak resident memory (KiB) of a running process, read until it exits.
fn peak_rss_kib(pid: u32) -> u64 {
    let mut peak = 0;
    while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        if let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        {
            peak = kib;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    peak
}

/// Run `interceptions list` with `args`; returns its stdout lines and its peak RSS.
fn export(url: &str, args: &[&str]) -> (Vec<String>, u64) {
    let mut child = bin()
        .args(["interceptions", "list", "--database-url", url])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let sampler = std::thread::spawn(move || peak_rss_kib(pid));
    let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(Result::unwrap)
        .collect();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (lines, sampler.join().unwrap())
}

async fn export_in_constant_memory(db: &crate::support::db::TestDb) {
    let store = Store::connect(&db.url).await.unwrap();
    let mut first = None;
    for chunk in 0..ROWS / 5_000 {
        let batch: Vec<_> = (0..5_000)
            .map(|i| stored_record(chunk * 5_000 + i, DAY))
            .collect();
        first.get_or_insert_with(|| batch[0].clone());
        store.insert_interceptions(&batch).await.unwrap();
    }
    store.close().await;
    let first = first.unwrap();
    let url = db.url.clone();
    let (few, few_peak, all, all_peak) = tokio::task::spawn_blocking(move || {
        let (few, few_peak) = export(&url, &["--limit", "1000", "--format", "ndjson"]);
        let (all, all_peak) = export(&url, &["--format", "ndjson"]);
        (few, few_peak, all, all_peak)
    })
    .await
    .unwrap();
    assert_eq!((few.len(), all.len()), (1_000, ROWS));
    println!(
        "FIGURE export peak RSS: {few_peak} KiB for 1 000 records, {all_peak} KiB for {ROWS} ({})",
        db.backend
    );
    // A hundred times the records, and the memory stays where it was (streamed, not held).
    assert!(
        all_peak < few_peak + 16 * 1024,
        "peak RSS grew from {few_peak} KiB to {all_peak} KiB"
    );
    // Oldest first, in the API's record shape, with the prompt and tool calls.
    let v: serde_json::Value = serde_json::from_str(&all[0]).unwrap();
    assert_eq!(v["id"], first.id.to_string());
    assert_eq!(
        v["prompt"]["text"],
        first.prompt.as_ref().unwrap().text.as_str()
    );
    assert_eq!(
        v["tool_calls"][0]["arguments"],
        first.tool_calls[0].arguments.as_str()
    );
    assert_eq!(
        (v["route"].as_str(), v["user"].as_str()),
        (Some("model"), Some("user-0"))
    );
    for line in all.iter().step_by(9_973) {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
}
both_backends!(
    export_streams_100_000_records_in_constant_memory,
    export_in_constant_memory
);

#[tokio::test]
async fn export_formats_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let url = cli_db(dir.path());
    let store = Store::connect(&url).await.unwrap();
    let mut rows: Vec<_> = (0..5).map(|i| stored_record(i, DAY)).collect();
    rows[4].route = "passthrough".into();
    rows[4].prompt = None;
    rows[4].tool_calls.clear();
    store.insert_interceptions(&rows).await.unwrap();
    store.close().await;
    let lines = |args: &[&str]| export(&url, args).0;

    let json: serde_json::Value =
        serde_json::from_str(&lines(&["--format", "json", "--limit", "2"]).join("\n")).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    assert_eq!(json[1]["id"], rows[1].id.to_string());
    let empty = lines(&["--format", "json", "--user", "nobody"]).join("");
    assert_eq!(empty, "[]");

    let csv = lines(&["--format", "csv", "--route", "model"]).join("\n");
    assert!(
        csv.starts_with("id,request_id,started_at,user,provider,model,route,"),
        "{csv}"
    );
    // A prompt with a comma, quotes and a line break is one quoted field.
    assert!(csv.contains("\"prompt 0, with a comma and \"\"quotes\"\"\nand a second line\""));
    assert_eq!(
        csv.matches(",openai,gpt-4o,model,").count(),
        4,
        "four records: {csv}"
    );
    let passthrough = lines(&["--format", "ndjson", "--route", "passthrough"]);
    assert_eq!(passthrough.len(), 1);
    let tool = lines(&["--tool", "shell", "--since", "2d"]);
    assert_eq!(tool.len(), 4);
    let future = lines(&["--since", "2999-01-01T00:00:00Z"]);
    assert!(future.is_empty());
    let bad = bin()
        .args([
            "interceptions",
            "list",
            "--database-url",
            &url,
            "--since",
            "soon",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64), "a bad value is a usage error");
}

/// A `serve` with a token, refusing non-provider hosts or tunnelling to a local echo server.
async fn serve_with(
    dir: &std::path::Path,
    extra: &[String],
) -> (Child, u16, String, std::path::PathBuf) {
    let db = cli_db(dir);
    let token = bin()
        .args(["token", "create", "--user", "ops", "--database-url", &db])
        .output()
        .unwrap();
    let token = String::from_utf8_lossy(&token.stdout).trim().to_string();
    let (port, admin) = (free_port(), free_port());
    let log = dir.join("serve.log");
    let child = Child(
        bin()
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--database-url", &db])
            .args(state_in(dir))
            .args(extra)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap(),
    );
    let client = plain_client();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !client
        .get(format!("http://127.0.0.1:{admin}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "serve did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, port, token, log)
}

async fn log_shows(log: &std::path::Path, wanted: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if wanted.iter().all(|w| text.contains(w)) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{wanted:?} not in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn refused_connects_and_closed_tunnels_are_logged_with_their_host() {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let echo = echo_server().await;
    let (child, port, token, log) = serve_with(
        dir.path(),
        &[
            "--allow-private-cidrs".into(),
            "127.0.0.0/8".into(),
            "--connect-ports".into(),
            format!("443,{echo}"),
        ],
    )
    .await;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("agent:{token}"));
    // A tunnel that carries 5 bytes each way, then closes.
    let mut tunnel = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let head = format!(
        "CONNECT 127.0.0.1:{echo} HTTP/1.1\r\nHost: 127.0.0.1:{echo}\r\nProxy-Authorization: Basic {auth}\r\n\r\n"
    );
    tunnel.write_all(head.as_bytes()).await.unwrap();
    let answer = raw::read_head(&mut tunnel).await;
    assert_eq!(raw::status(&answer), 200, "{answer}");
    tunnel.write_all(b"hello").await.unwrap();
    let mut echoed = [0u8; 5];
    tunnel.read_exact(&mut echoed).await.unwrap();
    drop(tunnel);
    // A CONNECT to a private address outside the allowed range: refused, with its host.
    let refused = format!(
        "CONNECT 10.1.2.3:443 HTTP/1.1\r\nHost: 10.1.2.3:443\r\nProxy-Authorization: Basic {auth}\r\n\r\n"
    );
    let (status, _) = raw::send_head(
        format!("127.0.0.1:{port}").parse().unwrap(),
        refused.as_bytes(),
    )
    .await;
    assert_eq!(raw::status(&status), 403);
    let text = log_shows(
        &log,
        &[
            &format!("target=127.0.0.1:{echo}"),
            "bytes_up=5",
            "bytes_down=5",
            "tunnel closed",
            "target=10.1.2.3:443",
            "reason=private_address",
        ],
    )
    .await;
    // Never a credential.
    assert!(!text.contains(&token) && !text.contains(&auth));
    child.terminate().await;
}
