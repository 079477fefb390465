//! Records an operator can govern with (issue 12): true outcomes, route classes, prompts, tool
//! calls, retention, export and bounded metric labels — through real TLS, with real clients,
//! on both databases where the data is stored.

mod export;
mod outcomes;
mod records;
mod retention;

use crate::support::*;

/// Read a streamed answer until `terminal` has arrived, then drop it: the client closes right
/// after the terminal event, as Codex and the OpenAI Python SDK do.
async fn read_until_then_close(mut resp: reqwest::Response, terminal: &str) {
    let mut seen = String::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if seen.contains(terminal) {
            return;
        }
    }
    panic!("the stream ended without {terminal}: {seen}");
}

/// A record written straight to the store (no request behind it), started `age` ago, with a
/// prompt and one tool call, as retention and export find them.
fn stored_record(i: usize, age: std::time::Duration) -> aibridge_proxy::store::Interception {
    use aibridge_proxy::store::{Interception, Prompt, ToolCall};
    let id = uuid::Uuid::now_v7();
    Interception {
        id,
        request_id: id.to_string(),
        token_id: None,
        user: format!("user-{}", i % 7),
        provider: "openai".into(),
        model: Some("gpt-4o".into()),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        status: 200,
        input_tokens: Some(100),
        output_tokens: Some(20),
        cache_read_tokens: Some(0),
        cache_write_tokens: None,
        usage_source: "reported".into(),
        outcome: "completed".into(),
        started_at: time::OffsetDateTime::now_utc() - age,
        duration_ms: 40,
        ttfb_ms: Some(10),
        error: None,
        route: "model".into(),
        transport: "http".into(),
        prompt: Some(Prompt {
            text: format!("prompt {i}, with a comma and \"quotes\"\nand a second line"),
            truncated: false,
        }),
        tool_calls: vec![ToolCall {
            call_id: Some(format!("call_{i}")),
            name: "shell".into(),
            kind: "function".into(),
            arguments: format!("{{\"cmd\":\"ls {i}\"}}"),
            truncated: false,
        }],
        trace: None,
    }
}

const DAY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
