//! Rows that make their own checks: what a table row cannot say (eager ClientHellos, legacy
//! TLS, ALPN, pipelining, revocation, `Expect: 100-continue`, concurrency, admin writes).

use super::row::{shown, ANTHROPIC_KEY};
use super::run::{answered_200, send, tls_after, tls_to_host};
use super::*;
use crate::support::h2raw::{self, Reply, H2};
use crate::support::observe::Tls;
use futures_util::future::BoxFuture;

pub(super) fn a23(env: &Stage) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let connect = format!(
            "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: evil.example:443\r\nProxy-Authorization: {}\r\n\r\n",
            env.auth(Px::Deny)
        );
        let tls = tls_after(env, Px::Deny, &connect, "api.openai.com", &[b"http/1.1"])
            .await
            .map_err(|e| format!("the leaf is for the CONNECT target: {e}"))?;
        request_ok(tls, "api.openai.com").await
    })
}

/// `GET /echo` on an established TLS stream must answer 200.
pub(super) async fn request_ok<S: AsyncRead + AsyncWrite + Unpin>(
    mut tls: S,
    host: &str,
) -> Result<(), String> {
    let req = format!("GET /echo HTTP/1.1\r\nHost: {host}\r\n\r\n");
    answered_200(&mut tls, req.as_bytes(), "request inside").await
}

pub(super) fn a24(env: &Stage) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        // The ClientHello goes out in the same write as the CONNECT head, as eager clients do.
        let config = tls::client_config(&[&env.deny.ca_pem], &[b"http/1.1"]);
        let name = rustls_pki_types::ServerName::try_from("api.openai.com").unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut first = format!(
            "CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
            env.auth(Px::Deny)
        )
        .into_bytes();
        conn.write_tls(&mut first).unwrap();
        let mut tcp = TcpStream::connect(env.deny.addr)
            .await
            .map_err(|e| e.to_string())?;
        tcp.write_all(&first).await.map_err(|e| e.to_string())?;
        let head = raw::read_head(&mut tcp).await;
        if raw::status(&head) != 200 {
            return Err(format!("CONNECT: {head:?}"));
        }
        let work = async {
            let mut buf = vec![0u8; 16 * 1024];
            std::io::Write::write_all(
                &mut conn.writer(),
                b"GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nConnection: close\r\n\r\n",
            )
            .map_err(|e| e.to_string())?;
            let mut plain = Vec::new();
            loop {
                while conn.wants_write() {
                    let mut out = Vec::new();
                    conn.write_tls(&mut out).map_err(|e| e.to_string())?;
                    tcp.write_all(&out).await.map_err(|e| e.to_string())?;
                }
                let n = tcp.read(&mut buf).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                conn.read_tls(&mut &buf[..n]).map_err(|e| e.to_string())?;
                conn.process_new_packets()
                    .map_err(|e| format!("handshake: {e}"))?;
                let mut chunk = [0u8; 4096];
                while let Ok(k) = std::io::Read::read(&mut conn.reader(), &mut chunk) {
                    if k == 0 {
                        break;
                    }
                    plain.extend_from_slice(&chunk[..k]);
                }
                if plain.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Ok::<_, String>(plain)
        };
        let plain = tokio::time::timeout(WAIT, work)
            .await
            .map_err(|_| "timed out")??;
        let text = String::from_utf8_lossy(&plain);
        if text.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(format!("answer inside: {text:?}"))
        }
    })
}

pub(super) fn a25(env: &Stage) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let before = env.rejections(Px::Deny, "not_tls");
        let mut tcp = raw::connect(env.deny.addr, "api.openai.com:443", &env.deny.token).await;
        tcp.write_all(b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut rest = Vec::new();
        match tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest)).await {
            Err(_) => return Err("connection stayed open".into()),
            Ok(_) if rest.starts_with(b"HTTP/") => {
                return Err(format!("answered in clear: {}", shown(&rest)))
            }
            Ok(_) => {}
        }
        let after = env.rejections(Px::Deny, "not_tls");
        if after != before + 1 {
            return Err(format!(
                "connect_rejections_total{{reason=\"not_tls\"}} went {before} → {after}"
            ));
        }
        Ok(())
    })
}

/// Send raw bytes after a CONNECT to api.openai.com and expect the TLS session to end: nothing
/// but (optionally) an alert record, then EOF. Returns the bytes received.
pub(super) async fn handshake_refused(env: &Stage, hello: &[u8]) -> Result<Vec<u8>, String> {
    let mut tcp = raw::connect(env.deny.addr, "api.openai.com:443", &env.deny.token).await;
    tcp.write_all(hello).await.map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    match tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest)).await {
        Err(_) => Err("connection stayed open".into()),
        Ok(_) if rest.is_empty() || rest[0] == 0x15 => Ok(rest),
        Ok(_) => Err(format!("unexpected answer {}", shown(&rest))),
    }
}

/// A ClientHello record with the given legacy version and no supported_versions extension.
pub(super) fn legacy_client_hello(version: [u8; 2]) -> Vec<u8> {
    let name = b"api.openai.com";
    let mut sni = vec![0x00];
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    let mut sni_list = (sni.len() as u16).to_be_bytes().to_vec();
    sni_list.extend_from_slice(&sni);
    let mut extensions = vec![0x00, 0x00];
    extensions.extend_from_slice(&(sni_list.len() as u16).to_be_bytes());
    extensions.extend_from_slice(&sni_list);
    let mut body = version.to_vec();
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0x00, 0x2f, 0x00, 0x35]); // two RSA suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

pub(super) fn a26_tls11(env: &Stage) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let rest = handshake_refused(env, &legacy_client_hello([0x03, 0x02])).await?;
        if rest.first() != Some(&0x15) {
            return Err(format!("no alert before the close: {}", shown(&rest)));
        }
        Ok(())
    })
}

pub(super) fn a26_sslv2(env: &Stage) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        // SSLv2 record header (two-byte length, high bit set), CLIENT-HELLO, version 3.1.
        let mut hello = vec![
            0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
        ];
        hello.extend_from_slice(&[0x00, 0x00, 0x2f, 0x00, 0x00, 0x35, 0x01, 0x00, 0x80]);
        hello.extend_from_slice(&[0x07, 0x00, 0xc0, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x09]);
        hello.extend_from_slice(&[0x11u8; 16]);
        handshake_refused(env, &hello).await.map(|_| ())
    })
}

pub(super) fn a27(env: &Stage) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let mints = env.deny.mints();
        let before = env.rejections(Px::Deny, "sni_mismatch");
        let result = raw::connect_tls(
            env.deny.addr,
            "api.openai.com:443",
            &env.deny.token,
            "evil.example",
            &env.deny.ca_pem,
        )
        .await;
        if result.is_ok() {
            return Err("handshake with a foreign SNI succeeded".into());
        }
        if env.deny.mints() != mints {
            return Err("a leaf was minted".into());
        }
        let after = env.rejections(Px::Deny, "sni_mismatch");
        if after != before + 1 {
            return Err(format!(
                "connect_rejections_total{{reason=\"sni_mismatch\"}} went {before} → {after}"
            ));
        }
        Ok(())
    })
}

pub(super) fn a28_ip(env: &Stage) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        // rustls sends no SNI for an IP address; the leaf must carry the IP as its SAN.
        let tls = tls_to_host(env, Px::Deny, "10.1.2.3", &[b"http/1.1"]).await?;
        request_ok(tls, "10.1.2.3").await
    })
}

pub(super) fn a28_no_sni(env: &Stage) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let tcp = raw::connect(env.deny.addr, "api.openai.com:443", &env.deny.token).await;
        let mut config = tls::client_config(&[&env.deny.ca_pem], &[b"http/1.1"]);
        config.enable_sni = false;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls_pki_types::ServerName::try_from("api.openai.com").unwrap();
        let tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
            .await
            .map_err(|_| "handshake timed out")?
            .map_err(|e| format!("handshake: {e}"))?;
        request_ok(tls, "api.openai.com").await
    })
}

pub(super) async fn alpn_refused(env: &Stage, alpn: &[u8]) -> Result<(), String> {
    match raw::connect_tls_alpn(
        env.deny.addr,
        "api.openai.com:443",
        &env.deny.token,
        "api.openai.com",
        &env.deny.ca_pem,
        &[alpn],
    )
    .await
    {
        Ok(_) => Err("handshake succeeded".into()),
        Err(e) if e.to_string().contains("NoApplicationProtocol") => Ok(()),
        Err(e) => Err(format!("handshake failed otherwise: {e}")),
    }
}

pub(super) fn a29_h3(env: &Stage) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(alpn_refused(env, b"h3"))
}

pub(super) fn a29_garbage(env: &Stage) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(alpn_refused(env, b"\x00\xffgarbage\x01"))
}

pub(super) fn a29_none(env: &Stage) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let tls = tls_to_host(env, Px::Deny, "api.openai.com", &[]).await?;
        request_ok(tls, "api.openai.com").await
    })
}

pub(super) fn a30_tunnel(env: &Stage) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let mints = env.tunnel.mints();
        let (tunnels, mitms) = (
            env.connections(Px::Tunnel, "tunnel"),
            env.connections(Px::Tunnel, "mitm"),
        );
        let target = format!("127.0.0.1:{}", env.upstream().addr.port());
        let result = raw::connect_tls(
            env.tunnel.addr,
            &target,
            &env.tunnel.token,
            "api.openai.com",
            &env.tunnel.ca_pem,
        )
        .await;
        match result {
            Ok(_) => return Err("the proxy's own leaf answered: intercepted".into()),
            Err(e) if e.to_string().contains("UnknownIssuer") => {}
            Err(e) => return Err(format!("handshake failed otherwise: {e}")),
        }
        if env.tunnel.mints() != mints {
            return Err("a leaf was minted".into());
        }
        let now = (
            env.connections(Px::Tunnel, "tunnel"),
            env.connections(Px::Tunnel, "mitm"),
        );
        if now != (tunnels + 1, mitms) {
            return Err(format!(
                "connections tunnel/mitm went {tunnels}/{mitms} → {}/{}",
                now.0, now.1
            ));
        }
        Ok(())
    })
}

pub(super) fn a31(env: &Stage) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let req = format!(
            "CONNECT api.openai.com:443 HTTP/1.1\r\n\r\nCONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
            env.auth(Px::Deny)
        );
        let (_, mut tcp) = raw::send_head(env.deny.addr, req.as_bytes()).await;
        let mut tcp_rest = Vec::new();
        // The head was read; the rest (body, then EOF) must not contain a second answer.
        match tokio::time::timeout(WAIT, tcp.read_to_end(&mut tcp_rest)).await {
            Err(_) => Err("connection stayed open after the 407".into()),
            Ok(_) if String::from_utf8_lossy(&tcp_rest).contains("HTTP/1.1") => Err(format!(
                "the pipelined request was answered: {}",
                shown(&tcp_rest)
            )),
            Ok(_) => Ok(()),
        }
    })
}

pub(super) fn b10(env: &Stage) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let (status, created) = env
            .deny
            .admin_post("/api/v1/tokens", json!({"user": "b10"}))
            .await;
        if status != 201 {
            return Err(format!("token create: {status} {created}"));
        }
        let token = created["token"].as_str().unwrap_or_default().to_string();
        let connect = format!(
            "CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
            raw::basic(&token)
        );
        let (head, _) = raw::send_head(env.deny.addr, connect.as_bytes()).await;
        if raw::status(&head) != 200 {
            return Err(format!("before the revoke: {head:?}"));
        }
        let path = format!("/api/v1/tokens/{}", created["id"].as_str().unwrap_or("x"));
        let (status, _) = env.deny.admin_delete(&path).await;
        if status != 204 {
            return Err(format!("revoke: {status}"));
        }
        let before = env.rejections(Px::Deny, "auth_unknown");
        let (head, mut tcp) = raw::send_head(env.deny.addr, connect.as_bytes()).await;
        if raw::status(&head) != 407 || !raw::closes(&mut tcp).await {
            return Err(format!("after the revoke: {head:?}"));
        }
        if env.rejections(Px::Deny, "auth_unknown") != before + 1 {
            return Err("auth_unknown not counted".into());
        }
        Ok(())
    })
}

/// A chat POST head to `host` through the deny proxy, declaring a body of `length` bytes and
/// `Expect: 100-continue`, sent; the body is the caller's to send (or not).
async fn expect_continue(env: &Stage, host: &str, length: usize) -> Result<Tls, String> {
    let mut tls = tls_to_host(env, Px::Deny, host, &[b"http/1.1"]).await?;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nExpect: 100-continue\r\nContent-Length: {length}\r\n\r\n"
    );
    send(&mut tls, head.as_bytes()).await?;
    Ok(tls)
}

/// `Expect: 100-continue` with a declared body over the limit: the answer comes without a
/// `100 Continue` and without the client sending a byte of the body.
pub(super) fn c21_too_large(env: &Stage) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let seen = env.upstream().seen().len();
        let mut tls = expect_continue(env, "api.openai.com", BODY_LIMIT * 4).await?;
        let answer = raw::read_response(&mut tls).await;
        if answer.status != 413 {
            return Err(format!("answer: {:?}", answer.head));
        }
        if !raw::closes(&mut tls).await {
            return Err("connection stayed open with the body unread".into());
        }
        if env.upstream().seen().len() != seen {
            return Err("forwarded".into());
        }
        Ok(())
    })
}

/// `Expect: 100-continue` with a refused model: the model is in the body, so the proxy asks
/// for it (`100 Continue`), reads it and answers 403; nothing is forwarded.
pub(super) fn c21_model(env: &Stage) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let seen = env.upstream().seen().len();
        let body = r#"{"model":"gpt-other"}"#;
        let mut tls = expect_continue(env, "strict.example.com", body.len()).await?;
        let interim = raw::read_response(&mut tls).await;
        if interim.status != 100 {
            return Err(format!("first answer: {:?}", interim.head));
        }
        send(&mut tls, body.as_bytes()).await?;
        let answer = raw::read_response(&mut tls).await;
        if answer.status != 403 || !String::from_utf8_lossy(&answer.body).contains("gpt-other") {
            return Err(format!("answer: {:?} {}", answer.head, shown(&answer.body)));
        }
        if env.upstream().seen().len() != seen {
            return Err("forwarded".into());
        }
        Ok(())
    })
}

pub(super) fn d9(env: &Stage) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let tls = tls_to_host(env, Px::Deny, "api.openai.com", &[b"h2"]).await?;
        let mut h2 = H2::handshake(tls).await.map_err(|e| e.to_string())?;
        // Open streams that wait for their bodies (the policy reads a chat body first), so
        // they stay open without reaching the upstream.
        let fields = [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", "api.openai.com"),
            (":path", "/v1/chat/completions"),
        ];
        for i in 0..257u32 {
            h2.headers(1 + 2 * i, &fields, false)
                .await
                .map_err(|e| e.to_string())?;
        }
        let last = 1 + 2 * 256;
        match h2.reply(last).await {
            Reply::Reset(h2raw::REFUSED_STREAM) => Ok(()),
            other => Err(format!("stream 257: {other:?}")),
        }
    })
}

pub(super) fn d10(env: &Stage) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let mints = env.deny.mints();
        let auth = env.auth(Px::Deny);
        for batch in 0..20 {
            let tries = (0..50).map(|i| {
                let req = format!(
                    "CONNECT host-{batch}-{i}.example.net:443 HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n"
                );
                let addr = env.deny.addr;
                async move { raw::status(&raw::send_head(addr, req.as_bytes()).await.0) }
            });
            let statuses = futures_util::future::join_all(tries).await;
            if let Some(s) = statuses.iter().find(|s| **s != 403) {
                return Err(format!("a CONNECT got {s}"));
            }
        }
        if env.deny.mints() != mints {
            return Err(format!("{} leaves minted", env.deny.mints() - mints));
        }
        Ok(())
    })
}

pub(super) fn d11(env: &Stage) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let mints = env.deny.mints();
        let tries = (0..50).map(|_| async {
            let tls = tls_to_host(env, Px::Deny, "d11.example.com", &[b"http/1.1"]).await?;
            request_ok(tls, "d11.example.com").await
        });
        for result in futures_util::future::join_all(tries).await {
            result?;
        }
        match env.deny.mints() - mints {
            1 => Ok(()),
            n => Err(format!("{n} mints")),
        }
    })
}

pub(super) fn e7_normalized(env: &Stage) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let body = json!({"name": "e7", "kind": "openai", "base_url": env.upstream().base_url(),
                          "intercept_hosts": ["E7.Example.COM."]});
        let (status, created) = env.deny.admin_post("/api/v1/providers", body).await;
        if status != 201 || created["intercept_hosts"] != json!(["e7.example.com"]) {
            return Err(format!("{status} {created}"));
        }
        let tls = tls_to_host(env, Px::Deny, "e7.example.com", &[b"http/1.1"]).await?;
        request_ok(tls, "e7.example.com").await
    })
}

pub(super) fn e8(env: &Stage) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let errors = env
            .deny
            .app
            .reload_stats
            .errors
            .load(std::sync::atomic::Ordering::SeqCst);
        let body = json!({"name": "e8", "kind": "openai", "base_url": env.upstream().base_url(),
                          "intercept_hosts": ["[::1]:8443"]});
        let (status, created) = env.deny.admin_post("/api/v1/providers", body).await;
        if status != 201 || created["status"] != "enabled" {
            return Err(format!("{status} {created}"));
        }
        let (_, router) = env.deny.admin_get("/api/v1/router").await;
        if router["hosts"]["[::1]:8443"] != "e8"
            || router["hosts"]["api.openai.com:443"] != "openai"
        {
            return Err(format!("router: {}", router["hosts"]));
        }
        let now = env
            .deny
            .app
            .reload_stats
            .errors
            .load(std::sync::atomic::Ordering::SeqCst);
        if now != errors {
            return Err(format!("failed reloads went {errors} → {now}"));
        }
        Ok(())
    })
}

pub(super) fn e10(env: &Stage) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let (status, body) = env
            .deny
            .admin_post(
                "/api/v1/providers",
                json!({"name": "e10", "kind": "openai", "base_url": env.upstream().base_url(),
                            "intercept_hosts": ["e10.example.com"]}),
            )
            .await;
        if status != 201 {
            return Err(format!("provider: {status} {body}"));
        }
        let mut ids = Vec::new();
        for i in 0..10 {
            let (status, m) = env
                .deny
                .admin_post(
                    "/api/v1/models",
                    json!({"provider": "e10", "model": format!("m{i}")}),
                )
                .await;
            if status != 201 {
                return Err(format!("model: {status} {m}"));
            }
            ids.push(m["id"].as_str().unwrap_or_default().to_string());
        }
        let puts = (0..100).map(|i| {
            let id = ids[i % ids.len()].clone();
            async move {
                env.deny
                    .admin_put("/api/v1/default-model", json!({"model_id": id}))
                    .await
                    .0
            }
        });
        let statuses = futures_util::future::join_all(puts).await;
        if let Some(s) = statuses.iter().find(|s| **s != 200 && **s != 409) {
            return Err(format!("a PUT got {s}"));
        }
        let (_, models) = env.deny.admin_get("/api/v1/models").await;
        let defaults = models["items"]
            .as_array()
            .map(|items| items.iter().filter(|m| m["is_default"] == true).count())
            .unwrap_or(0);
        if defaults != 1 {
            return Err(format!("{defaults} defaults"));
        }
        Ok(())
    })
}

pub(super) fn e11(env: &Stage) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move {
        let (status, created) = env
            .deny
            .admin_post("/api/v1/tokens", json!({"user": "e11"}))
            .await;
        let token = created["token"].as_str().unwrap_or_default().to_string();
        if status != 201 || token.is_empty() {
            return Err(format!("token create: {status}"));
        }
        let (_, tokens) = env.deny.admin_get("/api/v1/tokens").await;
        if tokens.to_string().contains(&token) {
            return Err("GET /tokens shows a token".into());
        }
        let (_, providers) = env.deny.admin_get("/api/v1/providers").await;
        let text = providers.to_string();
        for key in [
            "sk-provider-openai-0123456789",
            ANTHROPIC_KEY,
            "sk-provider-other-0123456789",
        ] {
            if text.contains(key) {
                return Err("GET /providers shows a key".into());
            }
        }
        if !text.contains("sk-...6789") {
            return Err(format!("no masked key: {text}"));
        }
        let (_, one) = env.deny.admin_get("/api/v1/providers/openai").await;
        if one.to_string().contains("sk-provider-openai-0123456789") {
            return Err("GET /providers/openai shows the key".into());
        }
        Ok(())
    })
}
