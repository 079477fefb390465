//! What a record says: its route, its prompt, its tool calls — stored with it on both
//! databases, shown by the API — and what stays out of `/usage` and `/metrics`.

use super::*;
use aibridge_proxy::store::{Interception, ToolCall};
use serde_json::{json, Value};

fn call(id: &str, name: &str, kind: &str, arguments: &str) -> ToolCall {
    ToolCall {
        call_id: Some(id.into()),
        name: name.into(),
        kind: kind.into(),
        arguments: arguments.into(),
        truncated: false,
    }
}

/// One model call per API and shape, each answered with tool calls; its prompt is the latest
/// user turn with text.
fn tool_turns() -> Vec<(&'static str, Value, Vec<ToolCall>)> {
    let chat = json!({"model": "gpt-4o", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "read é.rs"}, {"type": "text", "text": "and list"}]},
    ]});
    let responses = json!({"model": "gpt-5", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "run ls"}]},
        {"type": "function_call", "call_id": "c0", "name": "shell", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c0", "output": "a.rs"},
    ]});
    // The last user message carries only a tool result: the prompt is the one before.
    let messages = json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [
        {"role": "user", "content": "what is in the repo?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t0", "name": "Bash", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t0", "content": "a.rs"}]},
    ]});
    let streamed = |mut body: Value| {
        body["stream"] = json!(true);
        body
    };
    vec![
        (
            CHAT,
            streamed(chat.clone()),
            vec![
                call("call_a", "read_file", "function", r#"{"path":"src/é.rs"}"#),
                call("call_b", "list_dir", "function", r#"{"dir":"."}"#),
            ],
        ),
        (
            CHAT,
            chat,
            vec![call("call_j", "grep", "function", r#"{"q":"x"}"#)],
        ),
        (
            RESPONSES,
            streamed(responses.clone()),
            vec![
                call("call_1", "shell", "function_call", r#"{"cmd":"ls"}"#),
                call("call_2", "apply", "function_call", "{}"),
            ],
        ),
        (
            RESPONSES,
            responses,
            vec![call(
                "call_c",
                "apply_patch",
                "custom_tool_call",
                "*** Begin",
            )],
        ),
        (
            MESSAGES,
            streamed(messages.clone()),
            vec![call("toolu_1", "Bash", "tool_use", r#"{"command": "ls"}"#)],
        ),
        (
            MESSAGES,
            messages,
            vec![call("toolu_j", "Read", "tool_use", r#"{"file": "a.rs"}"#)],
        ),
    ]
}

fn expected_prompt(url: &str) -> &'static str {
    match url {
        CHAT => "read é.rs\nand list",
        RESPONSES => "run ls",
        _ => "what is in the repo?",
    }
}

async fn prompts_and_tool_calls(db: &crate::support::db::TestDb) {
    let env = Env::with(|o| o.openai().anthropic().database(&db.url)).await;
    let client = env.client(Http::Two);
    for (url, body, want) in tool_turns() {
        let resp = client
            .post(url)
            .header("x-mock-tools", "1")
            .body(body.to_string())
            .call()
            .await;
        assert_eq!(resp.status(), 200, "{url}");
        let id = request_id(&resp);
        resp.bytes().await.unwrap();
        let row = env.row(&id).await;
        let what = format!("{url} stream={}", body["stream"]);
        assert_eq!(row.route, "model", "{what}");
        assert_eq!(row.outcome, "completed", "{what}");
        assert_eq!(row.tool_calls, want, "{what}");
        let prompt = row.prompt.as_ref().expect("a prompt");
        assert_eq!(
            (prompt.text.as_str(), prompt.truncated),
            (expected_prompt(url), false),
            "{what}"
        );
        // The API shows the same record, prompt and calls included.
        let (status, shown) = env
            .admin_get(&format!("/api/v1/interceptions/{}", row.id))
            .await;
        assert_eq!(status, 200);
        assert_eq!(shown["prompt"]["text"], expected_prompt(url));
        assert_eq!(shown["tool_calls"][0]["name"], want[0].name.as_str());
        assert_eq!(
            shown["tool_calls"][0]["arguments"],
            want[0].arguments.as_str()
        );
        assert_eq!(shown["tool_calls"][0]["type"], want[0].kind.as_str());
        assert_eq!(shown["route"], "model");
        assert_eq!(shown["transport"], "http");
    }
    // Filter by tool name: the two records that called `shell` and `Bash` only.
    for (tool, n) in [("shell", 1), ("Bash", 1), ("read_file", 1), ("nothing", 0)] {
        let (status, list) = env
            .admin_get(&format!("/api/v1/interceptions?tool={tool}"))
            .await;
        assert_eq!(status, 200);
        assert_eq!(list["items"].as_array().unwrap().len(), n, "tool={tool}");
    }
    let (status, _) = env
        .admin_get(&format!("/api/v1/interceptions/{}", uuid::Uuid::nil()))
        .await;
    assert_eq!(status, 404);
}
both_backends!(
    prompts_and_tool_calls_are_stored_with_their_record,
    prompts_and_tool_calls
);

#[tokio::test]
async fn prompts_are_cut_on_a_character_boundary_and_can_be_turned_off() {
    let env = Env::with(|o| {
        o.openai()
            .anthropic()
            .tweak(|c| c.proxy.max_prompt_bytes = 6)
    })
    .await;
    let client = env.client(Http::One);
    // "aé€" is 1 + 2 + 3 bytes: kept whole. In "éé€€" the sixth byte is inside the first `€`.
    for (text, kept, truncated) in [("aé€", "aé€", false), ("éé€€", "éé", true)] {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": text}]});
        let resp = client.post(CHAT).body(body.to_string()).call().await;
        let row = env.row(&request_id(&resp)).await;
        let prompt = row.prompt.unwrap();
        assert_eq!((prompt.text.as_str(), prompt.truncated), (kept, truncated));
    }
    // The provider's own setting turns capture off; the request goes through unchanged.
    let (status, _) = env
        .admin_patch(
            "/api/v1/providers/anthropic",
            json!({"record_prompts": false}),
        )
        .await;
    assert_eq!(status, 200);
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "secret plan"}]});
    let resp = client.post(MESSAGES).body(body.to_string()).call().await;
    assert_eq!(resp.status(), 200);
    let row = env.row(&request_id(&resp)).await;
    assert_eq!(row.prompt, None);
    assert_eq!(row.route, "model");
    let seen = env.upstream.seen();
    assert_eq!(seen.last().unwrap().body, body.to_string().as_bytes());

    // And `--record-prompts false` turns it off for every provider.
    let off = Env::with(|o| o.openai().tweak(|c| c.proxy.record_prompts = false)).await;
    let resp = off
        .client(Http::Two)
        .post(CHAT)
        .body(body.to_string())
        .call()
        .await;
    assert_eq!(off.row(&request_id(&resp)).await.prompt, None);
}

/// Side traffic (a model list, settings, telemetry) is passthrough: forwarded with the key,
/// recorded, never prompt-captured, and out of `/usage` unless asked for.
async fn passthrough_is_recorded_apart(db: &crate::support::db::TestDb) {
    let env = Env::with(|o| o.openai().database(&db.url)).await;
    let client = env.client(Http::Two);
    let model = client
        .post(CHAT)
        .body(r#"{"model":"gpt-4o-mini"}"#)
        .call()
        .await;
    let side = [
        client.get(MODELS).call().await,
        client
            .post("https://api.openai.com/api/event_logging/v2/batch")
            .body(r#"{"events":[]}"#)
            .call()
            .await,
    ];
    let mut ids = vec![request_id(&model)];
    ids.extend(side.iter().map(request_id));
    let rows: Vec<Interception> = env.rows_of(&ids).await;
    for row in &rows {
        let want = if row.request_id == ids[0] {
            "model"
        } else {
            "passthrough"
        };
        assert_eq!(row.route, want, "{} {}", row.method, row.path);
        if want == "passthrough" {
            assert_eq!(row.prompt, None);
        }
    }
    // The provider key went out on the side requests too.
    let seen = env.upstream.seen();
    assert!(seen
        .iter()
        .all(|s| s.headers["authorization"] == "Bearer sk-provider-openai-0123456789"));

    let requests = |v: &Value| v["items"][0]["requests"].as_i64().unwrap_or(0);
    let (_, model_only) = env.admin_get("/api/v1/usage?group_by=provider").await;
    assert_eq!(requests(&model_only), 1);
    let (_, all) = env
        .admin_get("/api/v1/usage?group_by=provider&include=passthrough")
        .await;
    assert_eq!(requests(&all), 3);
    assert_eq!(
        env.admin_get("/api/v1/usage?include=everything").await.0,
        422
    );
    let (_, listed) = env
        .admin_get("/api/v1/interceptions?route=passthrough")
        .await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
    assert_eq!(
        env.admin_get("/api/v1/interceptions?route=side").await.0,
        422
    );
}
both_backends!(
    passthrough_is_recorded_apart_and_left_out_of_usage,
    passthrough_is_recorded_apart
);

#[tokio::test]
async fn a_provider_can_refuse_passthrough() {
    let env = Env::openai().await;
    let (status, shown) = env
        .admin_patch("/api/v1/providers/openai", json!({"passthrough": "deny"}))
        .await;
    assert_eq!((status, shown["passthrough"].as_str()), (200, Some("deny")));
    let client = env.client(Http::Two);
    let refused = client.get(MODELS).call().await;
    assert_eq!(refused.status(), 403);
    let id = request_id(&refused);
    let body: Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "passthrough_denied");
    // Model calls still go through; the refused request never reached the upstream.
    assert_eq!(client.chat().await.status(), 200);
    let row = env.row(&id).await;
    assert_eq!(
        (row.status, row.route.as_str(), row.error.as_deref()),
        (403, "passthrough", Some("passthrough_denied"))
    );
    assert!(env.upstream.seen().iter().all(|s| s.path != "/v1/models"));
    let bad = env
        .admin_patch(
            "/api/v1/providers/openai",
            json!({"passthrough": "sometimes"}),
        )
        .await;
    assert_eq!(bad.0, 422);
}

/// 10 000 requests naming 10 000 models (the upstream echoes each name back): the records keep
/// every name, the token series stay the configured models plus `other`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_model_names_leave_the_metric_series_bounded() {
    const NAMES: usize = 10_000;
    let env = Env::openai().await;
    let (status, _) = env
        .admin_post(
            "/api/v1/models",
            json!({"provider": "openai", "model": "gpt-4o"}),
        )
        .await;
    assert_eq!(status, 201);
    let client = env.client(Http::Two);
    let send = |model: String| {
        let client = client.clone();
        async move {
            let resp = client
                .post(CHAT)
                .header("x-mock-echo-model", "1")
                .body(json!({ "model": model }).to_string())
                .call()
                .await;
            assert_eq!(resp.status(), 200);
            resp.bytes().await.unwrap();
        }
    };
    let names =
        std::iter::once("gpt-4o".to_string()).chain((1..NAMES).map(|i| format!("model-{i}")));
    futures_util::StreamExt::for_each_concurrent(futures_util::stream::iter(names), 64, send).await;
    let text = env.metrics().await;
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("aibridge_proxy_tokens_total{"))
        .collect();
    // input and output, for `gpt-4o` and `other`.
    assert_eq!(series.len(), 4, "{series:#?}");
    let tokens = |model: &str, direction: &str| {
        metric(
            &text,
            "aibridge_proxy_tokens_total",
            &[
                ("provider", "openai"),
                ("model", model),
                ("direction", direction),
            ],
        )
    };
    assert_eq!(tokens("gpt-4o", "input"), 1.0);
    assert_eq!(tokens("other", "output"), (NAMES - 1) as f64);
    // The records keep the real names.
    let mut found = 0;
    for _ in 0..100 {
        let (_, list) = env
            .admin_get("/api/v1/interceptions?model=model-9999")
            .await;
        found = list["items"].as_array().unwrap().len();
        if found == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(found, 1);
}
