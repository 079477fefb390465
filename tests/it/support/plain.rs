//! A plain-HTTP/1.1 destination on loopback for absolute-form forwarding (`GET http://...`):
//! hyper's server, keep-alive, answering `200` with `ok` and recording every request it parsed
//! (head and body), every connection and every connection that ended in a parse error — so a
//! test can tell that exactly one well-framed request arrived and nothing rode along.

use super::upstream::Seen;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

pub struct PlainServer {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    errors: Arc<AtomicUsize>,
}

impl PlainServer {
    pub async fn start() -> PlainServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(AtomicUsize::new(0));
        let (s, c, e) = (seen.clone(), connections.clone(), errors.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let (s, e) = (s.clone(), e.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(record(&s, req).await) }
                    });
                    let served = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                    if let Err(err) = served {
                        if err.is_parse() || err.is_parse_status() {
                            e.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        PlainServer {
            addr,
            seen,
            connections,
            errors,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Connections whose bytes hyper could not parse as HTTP/1.1.
    pub fn parse_errors(&self) -> usize {
        self.errors.load(Ordering::SeqCst)
    }
}

async fn record(seen: &Mutex<Vec<Seen>>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen::of(&parts, body));
    Response::new(Full::new(Bytes::from_static(b"ok")))
}
