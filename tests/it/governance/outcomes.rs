//! True outcomes: a stream whose terminal event reached the client has ended, whatever the
//! connection does after it; a bodiless answer is never truncated; a stream cut before its end
//! still is.

use super::*;

#[tokio::test]
async fn a_client_closing_right_after_the_terminal_event_is_recorded_completed() {
    let env = Env::openai_and_anthropic().await;
    let streams = [
        (CHAT, "data: [DONE]", (176, 35)),
        (RESPONSES, "event: response.completed", (400, 20)),
        (MESSAGES, "event: message_stop", (25, 15)),
    ];
    for http in [Http::One, Http::Two] {
        let client = env.client(http);
        for (url, terminal, (input, output)) in streams {
            // The upstream keeps its body open 2 s after the terminal event.
            let resp = client
                .post(url)
                .header("x-mock-tail-ms", "2000")
                .body(r#"{"model":"m","stream":true}"#)
                .call()
                .await;
            let id = request_id(&resp);
            read_until_then_close(resp, terminal).await;
            let row = env.row(&id).await;
            assert_eq!(
                (row.outcome.as_str(), row.error.as_deref()),
                ("completed", None),
                "{url} over {http:?}"
            );
            assert_eq!(
                (row.input_tokens, row.output_tokens),
                (Some(input), Some(output))
            );
        }
    }
}

#[tokio::test]
async fn a_stream_cut_before_its_terminal_event_is_still_client_cancelled() {
    let env = Env::openai().await;
    // The tool stream waits 3 s before its terminal event; the client leaves once it has the
    // first tool call's name.
    let resp = env
        .client(Http::Two)
        .post(CHAT)
        .header("x-mock-tools", "1")
        .header("x-mock-hold-ms", "3000")
        .body(r#"{"model":"gpt-4o","stream":true}"#)
        .call()
        .await;
    let id = request_id(&resp);
    read_until_then_close(resp, "read_file").await;
    let row = env.row(&id).await;
    assert_eq!(row.outcome, "client_cancelled");
    assert_eq!(row.error.as_deref(), Some("client_cancelled"));
}

#[tokio::test]
async fn bodiless_answers_are_complete_and_head_is_passthrough() {
    let env = Env::openai().await;
    // `codex doctor` sends HEAD /v1/responses; the answer has a length and no body.
    // Over HTTP/2 too: hyper's h2 client reads a HEAD answer's length as missing bytes.
    for http in [Http::One, Http::Two] {
        let resp = env.client(http).head(RESPONSES).call().await;
        assert_eq!(resp.status(), 200, "{http:?}");
        assert_eq!(
            resp.headers()["content-length"],
            crate::support::upstream::RESPONSES_JSON.len().to_string()
        );
        let row = env.row(&request_id(&resp)).await;
        assert_eq!(
            (
                row.outcome.as_str(),
                row.error.as_deref(),
                row.route.as_str()
            ),
            ("completed", None, "passthrough"),
            "{http:?}"
        );
        assert_eq!(row.usage_source, "missing");
    }
}

/// SIGTERM while a stream is open: the grace runs out, the stream is cut, and its record is
/// written with the prompt and the tool calls seen so far.
#[tokio::test]
async fn a_stream_cut_at_shutdown_keeps_its_prompt_and_tool_calls() {
    let env = Env::openai().await;
    let body = serde_json::json!({
        "model": "gpt-4o",
        "stream": true,
        "messages": [{"role": "user", "content": "refactor the parser"}],
    });
    // Every event but the terminal one, then a 30 s wait.
    let mut resp = env
        .client(Http::Two)
        .post(CHAT)
        .header("x-mock-tools", "1")
        .header("x-mock-hold-ms", "30000")
        .body(body.to_string())
        .call()
        .await;
    let id: uuid::Uuid = request_id(&resp).parse().unwrap();
    let mut seen = String::new();
    while !seen.contains("completion_tokens") {
        let chunk = resp.chunk().await.unwrap().expect("more events");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let Env {
        proxy, upstream, ..
    } = env;
    let TestProxy { app, dir, .. } = proxy;
    let cut = app.stop(std::time::Duration::from_millis(300)).await;
    assert!(cut >= 1, "the open stream was cut");
    drop((resp, upstream));
    let url = format!("sqlite://{}", dir.path().join("aibridge.db").display());
    let store = aibridge_proxy::store::Store::connect(&url).await.unwrap();
    let row = store
        .get_interception(id)
        .await
        .unwrap()
        .expect("the record");
    assert_eq!(
        (row.outcome.as_str(), row.error.as_deref()),
        ("truncated", Some("shutdown"))
    );
    assert_eq!(row.prompt.unwrap().text, "refactor the parser");
    let names: Vec<&str> = row.tool_calls.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["read_file", "list_dir"]);
    assert_eq!(row.tool_calls[1].arguments, r#"{"dir":"."}"#);
    assert_eq!((row.input_tokens, row.output_tokens), (Some(50), Some(20)));
}
