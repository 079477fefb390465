//! A socket's life: frames of every kind relayed and read, a message over the bound, closes
//! from either side, and the ends the proxy gives it — idle, revoked (1008), shutdown (1001) —
//! with the responses in flight recorded as such.

use super::*;
use crate::support::raw;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;

/// The close code the proxy sent this client (waiting for the close frame).
async fn close_code(socket: &mut ws::ClientSocket) -> Option<u16> {
    loop {
        match tokio::time::timeout(WAIT, socket.next()).await.ok()? {
            Some(Ok(ws::Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            _ => return None,
        }
    }
}

#[tokio::test]
async fn fragmented_frames_pings_and_closes_pass_and_are_read() {
    let (upstream, env) = ws_env(Handshake::Accept).await;
    let (mut socket, _) = open(&env, "/v1/responses").await;
    // A response.create in three fragments, a ping between them.
    let text = create("fragmented").into_text().unwrap().to_string();
    let (a, rest) = text.split_at(10);
    let (b, c) = rest.split_at(20);
    for (i, part) in [a, b, c].into_iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(part.as_bytes().to_vec(), opcode, i == 2);
        socket.send(ws::Message::Frame(frame)).await.unwrap();
        if i == 0 {
            socket
                .send(ws::Message::Ping(b"are you there".to_vec().into()))
                .await
                .unwrap();
        }
    }
    let mut pong = false;
    let mut completed = false;
    while !(pong && completed) {
        match tokio::time::timeout(WAIT, socket.next()).await.unwrap() {
            Some(Ok(ws::Message::Pong(p))) => pong = &p[..] == b"are you there",
            Some(Ok(ws::Message::Text(t))) => completed |= t.contains("response.completed"),
            other => panic!("{other:?}"),
        }
    }
    let row = env.wait_rows(1).await.remove(0);
    assert_eq!(row.prompt.unwrap().text, "fragmented");
    assert_eq!(row.outcome, "completed");
    // A close from the upstream reaches the client.
    socket.send(ws::Message::text("close-me")).await.unwrap();
    assert_eq!(close_code(&mut socket).await, Some(1000));
    let seen = upstream.wait(0, 2).await;
    assert!(seen
        .messages
        .contains(&ws::Message::Ping(b"are you there".to_vec().into())));
    assert!(
        seen.messages.contains(&ws::Message::text(text)),
        "reassembled: {seen:?}"
    );
}

#[tokio::test]
async fn a_message_over_the_bound_is_relayed_and_its_record_says_so() {
    let (upstream, env) = ws_env_with(Handshake::Accept, |o| {
        o.tweak(|c| c.proxy.max_ws_message_bytes = 1024)
    })
    .await;
    let (mut socket, _) = open(&env, "/v1/responses").await;
    let big = "x".repeat(4096);
    socket.send(create(&big)).await.unwrap();
    ws::read_until(&mut socket, "response.completed").await;
    let seen = upstream.wait(0, 1).await;
    assert!(seen.messages[0].len() > 4096, "relayed whole");
    let row = env.wait_rows(1).await.remove(0);
    assert_eq!(row.error.as_deref(), Some("message_too_large"));
    assert_eq!(row.prompt, None, "the create could not be read");
    assert_eq!((row.input_tokens, row.output_tokens), (Some(90), Some(10)));
}

#[tokio::test]
async fn a_client_closing_mid_response_records_it_cancelled() {
    let (upstream, env) = ws_env(Handshake::Accept).await;
    let (mut socket, _) = open(&env, "/v1/responses").await;
    socket.send(create("hold on")).await.unwrap();
    ws::read_until(&mut socket, "response.created").await;
    socket.close(None).await.unwrap();
    let row = env.wait_rows(1).await.remove(0);
    assert_eq!(
        (row.outcome.as_str(), row.error.as_deref()),
        ("client_cancelled", Some("client_cancelled"))
    );
    upstream.wait(0, 2).await;
}

#[tokio::test]
async fn a_revoked_token_closes_its_sockets_with_1008() {
    let (upstream, env) = ws_env(Handshake::Accept).await;
    let (mut socket, _) = open(&env, "/v1/responses").await;
    socket.send(create("hold while revoked")).await.unwrap();
    ws::read_until(&mut socket, "response.created").await;
    let (status, _) = env
        .admin_delete(&format!("/api/v1/tokens/{}", env.token_id))
        .await;
    assert_eq!(status, 204);
    assert_eq!(close_code(&mut socket).await, Some(1008));
    assert_eq!(upstream.wait(0, 2).await.close, Some(1008));
    let row = env.wait_rows(1).await.remove(0);
    assert_eq!(
        (row.outcome.as_str(), row.error.as_deref()),
        ("truncated", Some("token_revoked"))
    );
}

#[tokio::test]
async fn an_idle_socket_is_closed_and_open_sockets_hold_their_connection_place() {
    let (_upstream, env) = ws_env_with(Handshake::Accept, |o| {
        o.tweak(|c| {
            c.proxy.idle_timeout = std::time::Duration::from_millis(600);
            c.proxy.max_connections = 1;
        })
    })
    .await;
    let (mut socket, _) = open(&env, "/v1/responses").await;
    let gauge = || {
        env.metric(
            "aibridge_proxy_active_connections",
            &[("kind", "websocket")],
        )
    };
    assert_eq!(gauge().await, 1.0);
    // The socket holds the one place: another connection is turned away.
    let (head, _) = raw::send_head(
        env.addr,
        raw::connect_head("api.openai.com:443", &env.token).as_bytes(),
    )
    .await;
    assert_eq!(raw::status(&head), 503);
    assert_eq!(
        close_code(&mut socket).await,
        Some(1001),
        "closed when idle"
    );
    env.wait_metric(
        "aibridge_proxy_active_connections",
        &[("kind", "websocket")],
        0.0,
    )
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (head, _) = raw::send_head(
            env.addr,
            raw::connect_head("api.openai.com:443", &env.token).as_bytes(),
        )
        .await;
        if raw::status(&head) == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place was never given back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001_and_records_what_was_in_flight() {
    let (upstream, env) = ws_env(Handshake::Accept).await;
    let (mut socket, answer) = open(&env, "/v1/responses").await;
    let request_id = answer["x-request-id"].to_str().unwrap().to_string();
    socket.send(create("hold through shutdown")).await.unwrap();
    ws::read_until(&mut socket, "response.created").await;
    let Env { proxy, .. } = env;
    let TestProxy { app, dir, .. } = proxy;
    let closing = tokio::spawn(async move { close_code(&mut socket).await });
    app.stop(std::time::Duration::from_millis(300)).await;
    assert_eq!(closing.await.unwrap(), Some(1001));
    assert_eq!(upstream.wait(0, 2).await.close, Some(1001));
    let url = format!("sqlite://{}", dir.path().join("aibridge.db").display());
    let store = aibridge_proxy::store::Store::connect(&url).await.unwrap();
    let rows = store.recent_interceptions(10).await.unwrap();
    let row = rows.iter().find(|r| r.request_id == request_id).unwrap();
    assert_eq!(
        (row.outcome.as_str(), row.error.as_deref()),
        ("truncated", Some("shutdown"))
    );
    assert_eq!(row.prompt.as_ref().unwrap().text, "hold through shutdown");
}
