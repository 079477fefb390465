//! Loopback sockets the tests need besides the mock upstream: an echo server for tunnels and a
//! port where nothing listens.

use tokio::net::TcpListener;

/// A TCP echo server on 127.0.0.1; returns its port.
pub async fn echo_server() -> u16 {
    echo_server_on("127.0.0.1:0").await
}

/// A TCP echo server bound to `bind` (e.g. `[::1]:0`); returns its port.
pub async fn echo_server_on(bind: &str) -> u16 {
    let listener = TcpListener::bind(bind).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// A loopback port with nothing listening on it (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TLS terminator on 127.0.0.1 in front of `target` (plain TCP): what an operator puts in
/// front of the admin listener. Returns its address.
pub async fn tls_front(
    config: std::sync::Arc<rustls::ServerConfig>,
    target: std::net::SocketAddr,
) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}
