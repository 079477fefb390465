//! Running a row: send its input, check the answer, the connection, the destinations and the
//! rejection counter; and the health probe after it.

use super::row::*;
use super::*;
use crate::support::h2raw::{Reply, H2};
use crate::support::raw::Answer;
use crate::support::upstream::Seen;

/// Connect to the proxy, send the `connect` head, and after its `200` finish a TLS handshake
/// with `sni` and `alpn`.
pub(super) async fn tls_after(
    env: &Stage,
    px: Px,
    connect: &str,
    sni: &str,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let mut tcp = TcpStream::connect(env.proxy(px).addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    send(&mut tcp, connect.as_bytes()).await?;
    let head = raw::read_head(&mut tcp).await;
    if raw::status(&head) != 200 {
        return Err(format!("{connect:?}: {head:?}"));
    }
    let config = tls::client_config(&[&env.proxy(px).ca_pem], alpn);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name =
        rustls_pki_types::ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| format!("handshake: {e}"))
}

/// CONNECT `host:443` through `px` and finish TLS with SNI `host`.
pub(super) async fn tls_to_host(
    env: &Stage,
    px: Px,
    host: &str,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let connect = raw::connect_head(&format!("{host}:443"), &env.proxy(px).token);
    tls_after(env, px, &connect, host, alpn).await
}

/// Write and flush all of `bytes`; a failure as the row's error.
pub(super) async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
) -> Result<(), String> {
    raw::send(stream, bytes).await.map_err(|e| e.to_string())
}

/// Send `request` and read the answer: `Ok` for a `200`, else the head, for `what`.
pub(super) async fn answered_200<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
    what: &str,
) -> Result<(), String> {
    send(stream, request).await?;
    let answer = raw::read_response(stream).await;
    if answer.status == 200 {
        Ok(())
    } else {
        Err(format!("{what}: {:?}", answer.head))
    }
}

/// Send `bytes` while reading the answer (a proxy may answer before it has read everything),
/// check the answer and, for [`Conn::Closes`], that the connection ends.
pub(super) async fn exchange<S>(
    mut stream: S,
    bytes: &[u8],
    want: Want,
    conn: Conn,
) -> Result<S, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let answer = {
        let (mut r, mut w) = tokio::io::split(&mut stream);
        let done = tokio::sync::Notify::new();
        let connect = bytes.starts_with(b"CONNECT ");
        let read = async {
            let answer = read_rest(&mut r, connect).await;
            done.notify_one();
            answer
        };
        let write = async {
            let write_all = async {
                let _ = w.write_all(bytes).await;
                let _ = w.flush().await;
            };
            // A write still going once the answer is in gets a moment, then is dropped: the
            // proxy may have refused without reading the rest.
            let answered = async {
                done.notified().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            tokio::select! {
                () = write_all => {}
                () = answered => {}
            }
        };
        tokio::join!(read, write).0
    };
    check_answer(&answer, want)?;
    if conn == Conn::Closes && !raw::closes(&mut stream).await {
        return Err("connection stayed open".into());
    }
    Ok(stream)
}

/// A normal request on the same connection must be answered 200.
pub(super) async fn follow_up<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
) -> Result<(), String> {
    raw::send(stream, request)
        .await
        .map_err(|e| format!("follow-up write: {e}"))?;
    let next = raw::read_response_to(stream, request.starts_with(b"CONNECT ")).await;
    if next.status == 200 {
        Ok(())
    } else {
        Err(format!("follow-up on the same connection: {:?}", next.head))
    }
}

/// The final answer, past any interim `1xx`.
pub(super) async fn read_rest<S: AsyncRead + Unpin>(r: &mut S, connect: bool) -> Answer {
    let mut answer = raw::read_response_to(r, connect).await;
    while (100..200).contains(&answer.status) {
        answer = raw::read_response_to(r, connect).await;
    }
    answer
}

pub(super) fn check_answer(answer: &Answer, want: Want) -> Result<(), String> {
    let ok = match want {
        Want::Status(s) => answer.status == s,
        Want::Closed => answer.status == 0,
        Want::Reset(_) | Want::Custom(_) => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "answer {:?} {}",
            answer.head.lines().next().unwrap_or("(none)"),
            shown(&answer.body)
        ))
    }
}

pub(super) async fn run_row(env: &Stage, row: &Row) -> Result<(), String> {
    let reason_before = row.reason.map(|r| env.rejections(row.px, r));
    let before = (env.upstream().seen().len(), env.plain.seen().len());
    let proxy = env.proxy(row.px);
    let keep = row.conn == Conn::KeepAlive;
    match &row.send {
        Input::Listener(bytes) => {
            let tcp = TcpStream::connect(proxy.addr)
                .await
                .map_err(|e| e.to_string())?;
            let mut tcp = exchange(tcp, bytes, row.want, row.conn).await?;
            check_dest(env, row, before).await?;
            if keep {
                let next = format!(
                    "CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
                    env.auth(row.px)
                );
                follow_up(&mut tcp, next.as_bytes()).await?;
            }
        }
        Input::Admin(bytes) => {
            let admin = proxy.app.admin_addr.ok_or("no admin listener")?;
            let tcp = TcpStream::connect(admin).await.map_err(|e| e.to_string())?;
            let mut tcp = exchange(tcp, bytes, row.want, row.conn).await?;
            check_dest(env, row, before).await?;
            if keep {
                follow_up(&mut tcp, b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n").await?;
            }
        }
        Input::Mitm { target, sni, bytes } => {
            let connect = raw::connect_head(target, &env.proxy(row.px).token);
            let tls = tls_after(env, row.px, &connect, sni, &[b"http/1.1"]).await?;
            let mut tls = exchange(tls, bytes, row.want, row.conn).await?;
            check_dest(env, row, before).await?;
            if keep {
                let next = format!("GET /echo HTTP/1.1\r\nHost: {sni}\r\n\r\n");
                follow_up(&mut tls, next.as_bytes()).await?;
            }
        }
        Input::H2(fields) => {
            let tls = tls_to_host(env, row.px, "api.openai.com", &[b"h2"]).await?;
            let mut h2 = H2::handshake(tls).await.map_err(|e| format!("h2: {e}"))?;
            let fields: Vec<(&str, &str)> = fields
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            h2.headers(1, &fields, true)
                .await
                .map_err(|e| e.to_string())?;
            let reply = h2.reply(1).await;
            let ok = match row.want {
                Want::Status(s) => reply == Reply::Status(s),
                Want::Reset(c) => reply == Reply::Reset(c),
                _ => false,
            };
            if !ok {
                return Err(format!("h2 reply {reply:?}"));
            }
            check_dest(env, row, before).await?;
            if keep {
                h2.headers(3, &GOOD_H2, true)
                    .await
                    .map_err(|e| e.to_string())?;
                let next = h2.reply(3).await;
                if next != Reply::Status(200) {
                    return Err(format!("next stream on the same connection: {next:?}"));
                }
            }
        }
        Input::Custom(f) => f(env).await?,
    }
    if let (Some(reason), Some(before)) = (row.reason, reason_before) {
        let after = env.rejections(row.px, reason);
        if after != before + 1 {
            return Err(format!(
                "connect_rejections_total{{reason={reason:?}}} went {before} → {after}"
            ));
        }
    }
    Ok(())
}

/// What reached the destinations since `before` (mock, plain) matches the row.
pub(super) async fn check_dest(
    env: &Stage,
    row: &Row,
    before: (usize, usize),
) -> Result<(), String> {
    // A destination's record completes once it has read the body: give it a moment.
    let settle = Instant::now() + Duration::from_millis(500);
    loop {
        let mock: Vec<Seen> = env.upstream().seen().split_off(before.0);
        let plain: Vec<Seen> = env.plain.seen().split_off(before.1);
        let verdict = match &row.dest {
            Dest::Custom => Ok(()),
            Dest::Nothing if mock.is_empty() && plain.is_empty() => Ok(()),
            Dest::Nothing => Err(format!(
                "forwarded: {:?}",
                mock.iter()
                    .chain(&plain)
                    .map(|s| &s.path)
                    .collect::<Vec<_>>()
            )),
            Dest::Mock(check) if mock.len() == 1 && plain.is_empty() => check(&mock[0]),
            Dest::Plain(check) if plain.len() == 1 && mock.is_empty() => check(&plain[0]),
            Dest::Mock(_) | Dest::Plain(_) => Err(format!(
                "{} requests upstream, {} at the plain destination",
                mock.len(),
                plain.len()
            )),
        };
        match verdict {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > settle => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

pub(super) const GOOD_H2: [(&str, &str); 4] = [
    (":method", "GET"),
    (":scheme", "https"),
    (":authority", "api.openai.com"),
    (":path", "/echo"),
];

/// The health probe: a full intercepted request through `px`.
pub(super) async fn probe(env: &Stage, px: Px) -> Result<(), String> {
    let mut tls = tls_to_host(env, px, "api.openai.com", &[b"http/1.1"]).await?;
    let request = b"GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nConnection: close\r\n\r\n";
    answered_200(&mut tls, request, "probe").await
}
