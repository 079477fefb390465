//! The Responses WebSocket mode end to end: the key on the upgrade, one record per response
//! with its usage, prompt and tool calls; the Realtime API's `response.done`.

use super::*;
use futures_util::SinkExt;

#[tokio::test]
async fn two_responses_on_one_socket_are_two_records_with_the_provider_key() {
    let (upstream, env) = ws_env(Handshake::Accept).await;
    let (mut socket, answer) = open(&env, "/v1/responses").await;
    let request_id = answer["x-request-id"].to_str().unwrap().to_string();
    // No extension was agreed: the offer was taken out on the way.
    assert!(answer.get("sec-websocket-extensions").is_none());
    for turn in ["fix the tests", "now run them"] {
        socket.send(create(turn)).await.unwrap();
        ws::read_until(&mut socket, "response.completed").await;
    }
    socket.close(None).await.unwrap();

    let seen = upstream.wait(0, 2).await;
    assert_eq!(seen.path, "/v1/responses");
    let auth: Vec<_> = seen.headers.get_all("authorization").iter().collect();
    assert_eq!(auth, ["Bearer sk-provider-openai-0123456789"]);
    assert!(seen.headers.get("proxy-authorization").is_none());
    assert!(seen.headers.get("sec-websocket-extensions").is_none());
    assert_eq!(
        seen.headers["openai-beta"], "responses_websockets=2026-02-06",
        "the client's other fields pass"
    );

    let records = env.wait_rows(2).await;
    let mut mine: Vec<_> = records
        .iter()
        .filter(|r| r.request_id == request_id)
        .collect();
    mine.sort_by_key(|r| r.started_at);
    assert_eq!(mine.len(), 2, "{records:#?}");
    for (n, (r, prompt)) in mine
        .iter()
        .zip(["fix the tests", "now run them"])
        .enumerate()
    {
        let n = n as i64 + 1;
        assert_eq!(
            (r.transport.as_str(), r.route.as_str(), r.outcome.as_str()),
            ("websocket", "model", "completed")
        );
        assert_eq!(r.model.as_deref(), Some("gpt-5"));
        assert_eq!(
            (r.input_tokens, r.cache_read_tokens, r.output_tokens),
            (Some(90 * n), Some(10 * n), Some(10 * n))
        );
        assert_eq!(r.prompt.as_ref().unwrap().text, prompt);
        assert_eq!(r.tool_calls.len(), 1);
        assert_eq!(r.tool_calls[0].arguments, r#"{"cmd":"ls"}"#);
        assert_eq!(r.status, 101);
        assert!(r.ttfb_ms.is_some());
    }
    assert_eq!(
        env.metric(
            "aibridge_proxy_websocket_messages_total",
            &[("provider", "openai"), ("direction", "to_upstream")]
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn a_realtime_response_done_is_a_record() {
    let (upstream, env) = ws_env(Handshake::Accept).await;
    let (mut socket, _) = open(&env, "/v1/realtime?model=gpt-realtime").await;
    let item = serde_json::json!({"type": "conversation.item.create", "item": {"type": "message",
        "role": "user", "content": [{"type": "input_text", "text": "what time is it?"}]}});
    socket
        .send(ws::Message::text(item.to_string()))
        .await
        .unwrap();
    socket
        .send(ws::Message::text(r#"{"type":"response.create"}"#))
        .await
        .unwrap();
    ws::read_until(&mut socket, "response.done").await;
    upstream.wait(0, 2).await;
    let row = env.wait_rows(1).await.remove(0);
    assert_eq!(
        (
            row.transport.as_str(),
            row.outcome.as_str(),
            row.model.as_deref()
        ),
        ("websocket", "completed", Some("gpt-realtime"))
    );
    assert_eq!(
        (row.input_tokens, row.cache_read_tokens, row.output_tokens),
        (Some(45), Some(5), Some(10))
    );
    assert_eq!(row.prompt.unwrap().text, "what time is it?");
}
