//! The table: one row per input, grouped as RELIABILITY §9 groups them (A: the CONNECT line and
//! target, B: credentials, C: framing inside MITM and on plain forwards, D: concurrency, E: the
//! admin API).

use super::custom::*;
use super::row::*;
use super::*;
use crate::support::h2raw;

#[rustfmt::skip] // one row per line
pub(super) fn rows(env: &Stage) -> Vec<Row> {
    use Px::{Deny, Tunnel};
    let auth = env.auth(Deny);
    let tauth = env.auth(Tunnel);
    let connect = |target: &str| {
        format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {auth}\r\n\r\n"
        )
    };
    let tconnect = |target: &str| {
        format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {tauth}\r\n\r\n"
        )
    };
    let with_auth = |value: &str| {
        format!("CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\nProxy-Authorization: {value}\r\n\r\n")
    };
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let token = env.deny.token.clone();
    let echo = |headers: &str, body: &str| {
        format!("POST /echo HTTP/1.1\r\nHost: api.openai.com\r\n{headers}\r\n{body}")
    };
    let chat = |headers: &str, body: &str| {
        format!("POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\n{headers}\r\n{body}")
    };
    let plain_port = env.plain.port();
    let plain = |headers: &str, body: &str| {
        format!("POST http://127.0.0.1:{plain_port}/plain HTTP/1.1\r\nHost: 127.0.0.1:{plain_port}\r\nProxy-Authorization: {tauth}\r\n{headers}\r\n{body}")
    };
    let strict = |body: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: strict.example.com\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let strict_bytes = |body: &[u8]| {
        let mut req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: strict.example.com\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        req
    };
    let admin_req = |method: &str, path: &str, auth: Option<&str>, body: Option<&str>| {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\n");
        if let Some(a) = auth {
            req.push_str(&format!("Authorization: {a}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ));
        } else {
            req.push_str("\r\n");
        }
        req
    };
    let bearer = format!("Bearer {}", env.deny.admin_token);
    let admin_auth = Some(bearer.as_str());
    let provider = |field: &str, value: serde_json::Value| {
        let mut body =
            json!({"name": "e-row", "kind": "openai", "base_url": "https://api.example.com"});
        body[field] = value;
        body.to_string()
    };
    let big_header = format!("X-Big: {}\r\n", "a".repeat(70_000));
    let many_headers: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_uri = format!(
        "GET /echo?{} HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
        "q".repeat(9000)
    );
    let over_limit = " ".repeat(BODY_LIMIT + 1024);
    let model_after_whitespace = format!("{{{over_limit}\"model\":\"gpt-allowed\"}}");
    let chunk_exts = format!(
        "{}\r\n",
        (0..40_000).map(|i| format!(";e{i}=x")).collect::<String>()
    );

    vec![
        // --- A: CONNECT line and target (SPEC §2) ---
        mitm_to("A1", Deny, "api.openai.com:443", "api.openai.com", "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
            .status(200).keeps().mock(any_request),
        mitm_to("A2", Deny, "API.OpenAI.COM:443", "api.openai.com", "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
            .status(200).keeps().mock(any_request),
        mitm_to("A3", Deny, "api.openai.com.:443", "api.openai.com", "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
            .status(200).keeps().mock(any_request),
        listener("A4", Deny, connect("api.openai.com..:443")).status(400).reason("bad_host"),
        listener("A4", Deny, connect(".api.openai.com:443")).status(400).reason("bad_host"),
        listener("A4", Deny, connect("api..openai.com:443")).status(400).reason("bad_host"),
        listener("A5", Deny, connect("api.openai.com")).status(400).reason("missing_port"),
        listener("A5", Deny, connect("api.openai.com:")).status(400).reason("bad_port"),
        listener("A6", Deny, connect("api.openai.com:0")).status(400).reason("bad_port"),
        listener("A6", Deny, connect("api.openai.com:65536")).status(400).reason("bad_port"),
        listener("A6", Deny, connect("api.openai.com:99999999999")).status(400).reason("bad_port"),
        listener("A6", Deny, connect("api.openai.com:-1")).status(400).reason("bad_port"),
        listener("A6", Deny, connect("api.openai.com:+443")).status(400).reason("bad_port"),
        listener("A6", Deny, connect("api.openai.com:0443")).status(400).reason("bad_port"),
        listener("A6", Deny, format!("CONNECT api.openai.com:443  HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n"))
            .status(400),
        listener("A7", Deny, connect("api.openai.com:8443")).status(400).reason("port_not_allowed"),
        listener("A8", Deny, connect("user:pw@api.openai.com:443")).status(400),
        listener("A9", Deny, connect("https://api.openai.com:443/")).status(400).reason("not_authority_form"),
        listener("A9", Deny, connect("/")).status(400).reason("not_authority_form"),
        listener("A9", Deny, connect("*")).status(400).reason("not_authority_form"),
        listener("A10", Deny, format!("connect api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n"))
            .status(400).reason("not_proxy_request"),
        listener("A11", Tunnel, tconnect("[::1]:443")).status(403).reason("private_address"),
        listener("A12", Deny, connect("::1:443")).status(400),
        listener("A12", Deny, connect("[fe80::1%25eth0]:443")).status(400),
        listener("A13", Tunnel, tconnect("[::ffff:169.254.169.254]:443")).status(403).reason("private_address"),
        listener("A13", Tunnel, tconnect("[64:ff9b::a9fe:a9fe]:443")).status(403).reason("private_address"),
        listener("A13", Tunnel, tconnect("[2002:a9fe:a9fe::]:443")).status(403).reason("private_address"),
        listener("A14", Deny, connect("0177.0.0.1:443")).status(400).reason("numeric_host"),
        listener("A14", Deny, connect("0x7f.1:443")).status(400).reason("numeric_host"),
        listener("A14", Deny, connect("2130706433:443")).status(400).reason("numeric_host"),
        listener("A15", Tunnel, tconnect("0.0.0.0:443")).status(403).reason("private_address"),
        listener("A15", Tunnel, tconnect("255.255.255.255:443")).status(403).reason("private_address"),
        listener("A15", Tunnel, tconnect("224.0.0.1:443")).status(403).reason("private_address"),
        listener("A16", Deny, connect("ápi.openai.com:443")).status(400),
        listener("A17", Deny, connect("xn--pi-7ia.openai.com:443")).status(403).reason("non_provider_denied"),
        listener("A17", Deny, connect("XN--PI-7IA.openai.com:443")).status(403).reason("non_provider_denied"),
        listener("A18", Deny, connect("api%2eopenai.com:443")).status(400),
        listener("A19", Deny, connect(&format!("{}.com:443", "a".repeat(250)))).status(400).reason("bad_host")
            .note("CONNECT <250 × a>.com:443"),
        listener("A19", Deny, connect(&format!("{}.com:443", "a".repeat(64)))).status(400).reason("bad_host"),
        listener("A20", Deny, connect("api.open\0ai.com:443")).status(400),
        listener("A20", Deny, connect("api.open\rai.com:443")).status(400),
        listener("A20", Deny, connect("api.open ai.com:443")).status(400),
        listener("A20", Deny, connect("api.open\tai.com:443")).status(400),
        listener("A21", Deny, connect("_dmarc.example.com:443")).status(403).reason("non_provider_denied"),
        listener("A22", Deny, format!("CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: {auth}\r\nContent-Length: 5\r\n\r\nhello"))
            .status(400).reason("connect_with_body"),
        listener("A22", Deny, format!("CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"))
            .status(400).reason("connect_with_body"),
        custom("A23", Deny, "CONNECT api.openai.com:443 with Host: evil.example:443", "200, intercepted for api.openai.com", a23),
        custom("A24", Deny, "TLS ClientHello sent with the CONNECT head, before the 200", "200, handshake and request succeed", a24),
        custom("A25", Deny, "plain HTTP inside CONNECT api.openai.com:443", "closed, no answer, reason not_tls", a25),
        custom("A26", Deny, "TLS 1.1-only ClientHello", "handshake failure (alert), closed", a26_tls11),
        custom("A26", Deny, "SSLv2-style ClientHello", "handshake failure, closed", a26_sslv2),
        custom("A27", Deny, "CONNECT api.openai.com:443, SNI evil.example", "handshake aborted, no mint, reason sni_mismatch", a27),
        custom("A28", Deny, "CONNECT 10.1.2.3:443 (intercepted IP), no SNI", "leaf with IP SAN, request 200", a28_ip),
        custom("A28", Deny, "CONNECT api.openai.com:443, client sends no SNI", "leaf for the CONNECT host, request 200", a28_no_sni),
        custom("A29", Deny, "ALPN offers only h3", "handshake failure no_application_protocol", a29_h3),
        custom("A29", Deny, "ALPN offers only garbage bytes", "handshake failure no_application_protocol", a29_garbage),
        custom("A29", Deny, "no ALPN offered", "handshake succeeds, served as HTTP/1.1", a29_none),
        custom("A30", Tunnel, "CONNECT 127.0.0.1:<provider upstream port>, SNI api.openai.com", "200 tunnel: the upstream's certificate, no mint", a30_tunnel),
        listener("A30", Deny, connect("127.0.0.1:443")).status(403).reason("non_provider_denied")
            .note("CONNECT 127.0.0.1:443 (a provider's IP) with --non-provider-hosts deny"),
        custom("A31", Deny, "CONNECT without credentials, then a pipelined authenticated CONNECT", "407, close, second never answered", a31),

        // --- B: Proxy-Authorization (SPEC §2 step 3) ---
        listener("B1", Deny, "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n").status(407).reason("auth_missing"),
        listener("B2", Deny, with_auth(&format!("Bearer {token}"))).status(407).reason("auth_scheme"),
        listener("B2", Deny, with_auth("Digest username=\"agent\", realm=\"x\"")).status(407).reason("auth_scheme"),
        listener("B2", Deny, with_auth(&format!("Negotiate {}", b64(&format!("agent:{token}"))))).status(407).reason("auth_scheme"),
        listener("B3", Deny, with_auth(&format!("basic {}", b64(&format!("agent:{token}"))))).status(200).established(),
        listener("B3", Deny, with_auth(&format!("BASIC {}", b64(&format!("agent:{token}"))))).status(200).established(),
        listener("B4", Deny, with_auth("Basic !!!notbase64")).status(407).reason("auth_malformed"),
        listener("B4", Deny, with_auth(&format!("Basic {}", b64(&format!("agent:{token}")).trim_end_matches('=')))).status(407).reason("auth_malformed")
            .note("Basic base64(agent:TOKEN) without its padding"),
        listener("B4", Deny, with_auth(&{ let e = b64(&format!("agent:{token}")); format!("Basic {} {}", &e[..8], &e[8..]) })).status(407).reason("auth_malformed")
            .note("Basic base64 with a space inside"),
        listener("B5", Deny, with_auth(&format!("Basic {}", { use base64::Engine; base64::engine::general_purpose::STANDARD.encode([b'a', b':', 0xff, 0xfe]) }))).status(407).reason("auth_malformed")
            .note("Basic base64(a:\\xff\\xfe) (not UTF-8)"),
        listener("B6", Deny, with_auth(&format!("Basic {}", b64("agentnocolon")))).status(407).reason("auth_malformed"),
        listener("B6", Deny, with_auth(&format!("Basic {}", b64("agent:")))).status(407).reason("auth_malformed"),
        listener("B6", Deny, with_auth(&format!("Basic {}", b64(&format!("{token}:"))))).status(407).reason("auth_malformed")
            .note("Basic base64(TOKEN:) (token as the user, empty password)"),
        listener("B7", Deny, with_auth(&format!("Basic {}", b64(&format!(":{token}"))))).status(200).established()
            .note("Basic base64(:TOKEN) (empty user)"),
        listener("B7", Deny, with_auth(&format!("Basic {}", b64(&format!("agent:{token}:x"))))).status(407).reason("auth_unknown")
            .note("Basic base64(agent:TOKEN:x) (the password is everything after the first colon)"),
        listener("B8", Deny, format!("CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: {auth}\r\nProxy-Authorization: {auth}\r\n\r\n"))
            .status(407).reason("auth_ambiguous"),
        listener("B9", Deny, with_auth(&format!("Basic {}", b64(&format!("agent:{}", "x".repeat(8192)))))).status(407).reason("auth_malformed")
            .note("Basic base64(agent:<8 KiB>)"),
        custom("B10", Deny, "token revoked through the admin API, then CONNECT", "407, reason auth_unknown", b10),
        listener("B11", Tunnel, format!("GET http://127.0.0.1:{plain_port}/b11 HTTP/1.1\r\nHost: 127.0.0.1:{plain_port}\r\nProxy-Authorization: {tauth}\r\n\r\n"))
            .status(200).keeps().plain(|s| if s.headers.contains_key("proxy-authorization") { Err("proxy-authorization forwarded".into()) } else { Ok(()) }),
        listener("B11", Deny, format!("GET http://api.openai.com/echo HTTP/1.1\r\nHost: api.openai.com\r\nProxy-Authorization: {auth}\r\n\r\n"))
            .status(200).keeps().mock(only_key("authorization", OPENAI_KEY, &["proxy-authorization"]))
            .note("GET http://api.openai.com/echo (plain, provider host) with Proxy-Authorization"),

        // --- C: framing, headers and bodies inside MITM ---
        mitm("C1", echo("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"))
            .status(200).closes().mock(body_is(b"hello")),
        mitm("C1", echo("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "5\r\nhello\r\n0\r\n\r\n"))
            .status(200).closes().mock(body_is(b"hello")),
        mitm("C2", echo("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!")).status(400),
        mitm("C2", echo("Content-Length: 5, 5\r\n", "hello")).status(400),
        mitm("C2", echo("Content-Length: +5\r\n", "hello")).status(400),
        mitm("C2", echo("Content-Length: 0x5\r\n", "hello")).status(400),
        mitm("C2", echo("Content-Length: 5 5\r\n", "hello")).status(400),
        mitm("C2", echo("Content-Length:   5\r\n", "hello")).status(200).keeps().mock(body_is(b"hello")),
        mitm("C3", echo("Content-Length: 5\r\nContent-Length: 5\r\n", "hello")).status(200).keeps()
            .mock(|s| { body_is(b"hello")(s)?; if s.headers.get_all("content-length").iter().count() > 1 { Err("two content-length upstream".into()) } else { Ok(()) } }),
        mitm("C4", echo("Transfer-Encoding: gzip\r\n", "hello")).status(400),
        mitm("C4", echo("Transfer-Encoding: xchunked\r\n", "5\r\nhello\r\n0\r\n\r\n")).status(400),
        mitm("C4", echo("Transfer-Encoding: chunked, chunked\r\n", "5\r\nhello\r\n0\r\n\r\n")).status(400),
        mitm("C4", echo("Transfer-Encoding: gzip, chunked\r\n", "5\r\nhello\r\n0\r\n\r\n")).status(400),
        mitm("C4", echo("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n")).status(400),
        mitm("C5", "POST /echo HTTP/1.0\r\nHost: api.openai.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").status(400),
        mitm("C6", "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nX-Folded: a\r\n b\r\n\r\n").status(400),
        mitm("C7", "POST /echo HTTP/1.1\nHost: api.openai.com\nContent-Length: 5\n\nhello").status(200).keeps().mock(body_is(b"hello")),
        mitm("C8", "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nX-Nul: a\0b\r\n\r\n").status(400),
        mitm("C8", "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nX-Cr: a\rb\r\n\r\n").status(400),
        mitm("C8", "GET /echo HTTP/1.1\r\nHost : api.openai.com\r\n\r\n").status(400),
        mitm("C9", format!("GET /echo HTTP/1.1\r\nHost: api.openai.com\r\n{big_header}\r\n")).status(431),
        mitm("C10", format!("GET /echo HTTP/1.1\r\nHost: api.openai.com\r\n{many_headers}\r\n")).status(431)
            .note("GET /echo with 101 header fields"),
        mitm("C11", long_uri).status(414),
        mitm("C12", chat("Transfer-Encoding: chunked\r\n", "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n")).status(400),
        mitm("C12", chat("Transfer-Encoding: chunked\r\n", "-5\r\nhello\r\n0\r\n\r\n")).status(400),
        mitm("C12", chat("Transfer-Encoding: chunked\r\n", "5\r\nhelloXX0\r\n\r\n")).status(400),
        mitm("C13", chat("Transfer-Encoding: chunked\r\n", &format!("5{chunk_exts}hello\r\n0\r\n\r\n"))).status(400)
            .note("chunked body with 500 KB of chunk extensions"),
        mitm("C14", chat(&format!("Content-Length: {}\r\n", over_limit.len()), &over_limit)).status(413)
            .note("POST /v1/chat/completions, Content-Length over --max-request-body"),
        mitm("C14", chat("Transfer-Encoding: chunked\r\n", &format!("{:x}\r\n{over_limit}\r\n0\r\n\r\n", over_limit.len()))).status(413)
            .note("POST /v1/chat/completions, chunked body over --max-request-body"),
        mitm("C15", "GET /echo HTTP/1.1\r\nHost: evil.example\r\n\r\n").status(421).keeps(),
        mitm("C15", "GET https://other.example/echo HTTP/1.1\r\nHost: other.example\r\n\r\n").status(421).keeps(),
        mitm("C16", "GET /echo HTTP/1.1\r\n\r\n").status(400).keeps(),
        mitm("C16", "GET /echo HTTP/1.0\r\n\r\n").status(200).mock(any_request)
            .note("HTTP/1.0 request without Host (allowed by HTTP/1.0)"),
        h2("C16", &[(":method", "GET"), (":scheme", "https"), (":authority", "api.openai.com"), (":path", "/echo"), ("host", "evil.example")]).status(421).keeps(),
        h2("C16", &[(":method", "GET"), (":scheme", "https"), (":authority", "evil.example"), (":path", "/echo")]).status(421).keeps(),
        h2("C16", &[(":method", "GET"), (":scheme", "https"), (":path", "/echo")]).status(400).keeps(),
        h2("C16", &[(":method", "GET"), (":scheme", "https"), (":path", "/echo"), ("host", "api.openai.com")]).status(200).keeps().mock(any_request),
        h2("C17", &[(":method", "GET"), (":scheme", "https"), (":authority", "api.openai.com"), (":path", "/echo"), ("connection", "keep-alive")]).reset(h2raw::PROTOCOL_ERROR).keeps(),
        h2("C17", &[(":method", "GET"), (":scheme", "https"), (":authority", "api.openai.com"), (":path", "/echo"), ("transfer-encoding", "chunked")]).reset(h2raw::PROTOCOL_ERROR).keeps(),
        h2("C17", &[(":method", "GET"), (":scheme", "https"), (":authority", "api.openai.com"), (":path", "/echo"), ("te", "gzip")]).reset(h2raw::PROTOCOL_ERROR).keeps(),
        mitm("C18", "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nx_api_key: sk-client\r\n\r\n").status(200).keeps()
            .mock(only_key("authorization", OPENAI_KEY, &["x_api_key", "x-api-key"])),
        mitm("C18", "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nX-Api-Key: sk-client-1\r\nX-Api-Key: sk-client-2\r\n\r\n").status(200).keeps()
            .mock(only_key("authorization", OPENAI_KEY, &["x-api-key"])),
        mitm("C18", "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer sk-client-1\r\nAuthorization: Bearer sk-client-2\r\n\r\n").status(200).keeps()
            .mock(only_key("authorization", OPENAI_KEY, &[])),
        mitm("C18", "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nAuThOrIzAtIoN: Bearer sk-client\r\nAPI_KEY: sk-client\r\n\r\n").status(200).keeps()
            .mock(only_key("authorization", OPENAI_KEY, &["api_key", "api-key"])),
        mitm("C19", format!("GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nProxy-Authorization: {auth}\r\nProxy-Connection: keep-alive\r\n\r\n")).status(200).keeps()
            .mock(only_key("authorization", OPENAI_KEY, &["proxy-authorization", "proxy-connection"])),
        mitm_to("C19", Deny, "api.anthropic.com:443", "api.anthropic.com", "GET /echo HTTP/1.1\r\nHost: api.anthropic.com\r\nConnection: x-api-key, x-custom\r\nX-Api-Key: sk-client\r\nX-Custom: 1\r\n\r\n")
            .status(200).keeps().mock(only_key("x-api-key", ANTHROPIC_KEY, &["x-custom", "connection"])),
        // A WebSocket upgrade goes on with its fields (no extension offered); the mock answers
        // 200, not 101, so the connection stays HTTP.
        mitm("C20", "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n")
            .status(200).keeps().mock(|s| match (s.headers.get("upgrade"), s.headers.contains_key("sec-websocket-extensions")) {
                (Some(u), false) if u == "websocket" => Ok(()),
                other => Err(format!("upgrade fields as forwarded: {other:?}")),
            }),
        // Not an upgrade (HTTP/1.0, no `Connection: upgrade`, another protocol): plain HTTP, the
        // upgrade fields stay on their hop.
        mitm("C20", "GET /echo HTTP/1.0\r\nHost: api.openai.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            .status(200).mock(no_upgrade),
        mitm("C20", "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            .status(200).keeps().mock(no_upgrade),
        mitm("C20", "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n")
            .status(200).keeps().mock(no_upgrade),
        // An upgrade without its key is the client's mistake: 400, nothing forwarded.
        mitm("C20", "GET /v1/responses HTTP/1.1\r\nHost: api.openai.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            .status(400).keeps(),
        custom("C21", Deny, "Expect: 100-continue, Content-Length over --max-request-body, body never sent", "413 without 100 Continue, nothing forwarded", c21_too_large),
        custom("C21", Deny, "Expect: 100-continue, body naming a model not configured (enforce_models)", "100 Continue, then 403 after the body, nothing forwarded", c21_model),
        mitm_to("C22", Deny, "strict.example.com:443", "strict.example.com", strict(r#"{"model":"gpt-allowed","messages":[]}"#))
            .status(200).keeps().mock(body_is(br#"{"model":"gpt-allowed","messages":[]}"#)),
        mitm_to("C22", Deny, "strict.example.com:443", "strict.example.com", strict(r#"{"model":"gpt-other","messages":[]}"#))
            .status(403).keeps(),
        mitm_to("C22", Deny, "strict.example.com:443", "strict.example.com", format!("POST /v1/chat/completions HTTP/1.1\r\nHost: strict.example.com\r\nContent-Length: {}\r\n\r\n{model_after_whitespace}", model_after_whitespace.len()))
            .status(413).note("model after 1 MiB of whitespace (over --max-request-body)"),
        mitm_to("C22", Deny, "strict.example.com:443", "strict.example.com", strict(r#"{"model":"gpt-allowed","model":"gpt-other"}"#))
            .status(403).keeps(),
        mitm_to("C22", Deny, "strict.example.com:443", "strict.example.com", strict_bytes(b"{\"model\":\"gpt-allowed\xff\"}"))
            .status(403).keeps().note("body with a non-UTF-8 byte in the model (enforce_models)"),

        // --- C: the same framing on plain absolute-form forwarding (non-provider destination) ---
        listener("C1", Tunnel, plain("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"))
            .status(200).closes().plain(body_is(b"hello")),
        listener("C1", Tunnel, plain("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "5\r\nhello\r\n0\r\n\r\n"))
            .status(200).closes().plain(body_is(b"hello")),
        listener("C2", Tunnel, plain("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!")).status(400),
        listener("C3", Tunnel, plain("Content-Length: 5\r\nContent-Length: 5\r\n", "hello")).status(200).keeps().plain(body_is(b"hello")),
        listener("C4", Tunnel, plain("Transfer-Encoding: chunked, chunked\r\n", "5\r\nhello\r\n0\r\n\r\n")).status(400).reason("bad_transfer_encoding"),
        listener("C4", Tunnel, plain("Transfer-Encoding: gzip\r\n", "hello")).status(400),
        listener("C5", Tunnel, format!("POST http://127.0.0.1:{plain_port}/plain HTTP/1.0\r\nProxy-Authorization: {tauth}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")).status(400),
        listener("C6", Tunnel, plain("X-Folded: a\r\n b\r\n", "")).status(400),
        listener("C7", Tunnel, format!("POST http://127.0.0.1:{plain_port}/plain HTTP/1.1\nHost: 127.0.0.1:{plain_port}\nProxy-Authorization: {tauth}\nContent-Length: 5\n\nhello"))
            .status(200).keeps().plain(body_is(b"hello")),
        listener("C8", Tunnel, plain("X-Nul: a\0b\r\n", "")).status(400),
        listener("C11", Tunnel, format!("GET http://127.0.0.1:{plain_port}/{} HTTP/1.1\r\nProxy-Authorization: {tauth}\r\n\r\n", "q".repeat(9000)))
            .status(414).reason("uri_too_long"),
        listener("C1", Deny, format!("POST http://api.openai.com/echo HTTP/1.1\r\nHost: api.openai.com\r\nProxy-Authorization: {auth}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
            .status(200).closes().mock(body_is(b"hello"))
            .note("CL + TE on plain absolute-form to a provider host (bridge)"),

        // --- D: concurrency and the certificate cache ---
        custom("D9", Deny, "h2: 257 open streams (server allows 256)", "RST_STREAM REFUSED_STREAM for the 257th", d9),
        custom("D10", Deny, "1 000 CONNECTs to distinct non-provider hosts", "403 each, no leaf minted", d10),
        custom("D11", Deny, "50 concurrent first CONNECTs + TLS to one provider host", "exactly one mint", d11),

        // --- E: admin API (SPEC §7) ---
        admin("E1", admin_req("GET", "/api/v1/providers", None, None)).status(401).keeps(),
        admin("E1", admin_req("GET", "/api/v1/providers", Some("Bearer wrong"), None)).status(401).keeps(),
        admin("E1", admin_req("GET", &format!("/api/v1/providers?token={}", env.deny.admin_token), None, None)).status(401).keeps()
            .note("GET /api/v1/providers?token=ADMIN_TOKEN"),
        admin("E1", admin_req("GET", "/api/v1/providers", Some(&format!("Basic {}", b64(&format!("admin:{}", env.deny.admin_token)))), None)).status(401).keeps()
            .note("GET /api/v1/providers with Authorization: Basic base64(admin:ADMIN_TOKEN)"),
        admin("E2", admin_req("POST", "/api/v1/providers", admin_auth, Some("{not json"))).status(400).keeps(),
        admin("E2", admin_req("POST", "/api/v1/providers", admin_auth, Some(&provider("enabled", json!("yes"))))).status(422).keeps(),
        admin("E2", admin_req("POST", "/api/v1/providers", admin_auth, Some(&format!("{{\"name\":\"{}\"}}", "a".repeat(3 * 1024 * 1024))))).status(413)
            .note("POST /api/v1/providers with a 3 MiB JSON body"),
        admin("E3", admin_req("POST", "/api/v1/providers", admin_auth, Some(&provider("unknown_field", json!(1))))).status(422).keeps(),
        admin("E4", admin_req("POST", "/api/v1/providers", admin_auth, Some(&provider("name", json!("Bad_Name"))))).status(422).keeps(),
        admin("E5", admin_req("POST", "/api/v1/providers", admin_auth, Some(&provider("base_url", json!("file:///etc/passwd"))))).status(422).keeps(),
        admin("E5", admin_req("POST", "/api/v1/providers", admin_auth, Some(&provider("base_url", json!("ftp://x.example"))))).status(422).keeps(),
        admin("E5", admin_req("POST", "/api/v1/providers", admin_auth, Some(&provider("base_url", json!("gopher://x.example"))))).status(422).keeps(),
        admin("E5", admin_req("POST", "/api/v1/providers", admin_auth, Some(&provider("base_url", json!("api.example.com"))))).status(422).keeps(),
        admin("E5", admin_req("POST", "/api/v1/providers", admin_auth, Some(&provider("base_url", json!("https://user:pw@x.example"))))).status(422).keeps(),
        admin("E5", admin_req("POST", "/api/v1/providers", admin_auth, Some(&provider("base_url", json!("https://x.example/#frag"))))).status(422).keeps(),
        custom("E7", Deny, "intercept_hosts [\"E7.Example.COM.\"]", "201, stored as e7.example.com, intercepted", e7_normalized),
        admin("E7", admin_req("POST", "/api/v1/providers", admin_auth, Some(&provider("intercept_hosts", json!(["ápi.example.com"]))))).status(422).keeps(),
        admin("E7", admin_req("POST", "/api/v1/providers", admin_auth, Some(&provider("intercept_hosts", json!(["x.example:99999"]))))).status(422).keeps(),
        custom("E8", Deny, "intercept_hosts [\"[::1]:8443\"]", "201, in the live router; no reload fails", e8),
        admin("E9", admin_req("GET", "/api/v1/providers/..%2f..%2fetc", admin_auth, None)).status(404).keeps(),
        admin("E9", admin_req("GET", "/api/v1/../api/v1/providers", admin_auth, None)).status(404).keeps(),
        admin("E9", admin_req("DELETE", "/api/v1/providers/openai/keys/..%2f..", admin_auth, None)).status(404).keeps(),
        custom("E10", Deny, "100 concurrent PUT /default-model over 10 models", "each 200 or 409; exactly one default after", e10),
        custom("E11", Deny, "GET /providers, GET /tokens after creating both", "keys masked, token only in its POST answer", e11),
    ]
}
