//! Dialling: the only code that opens an outbound socket. It resolves, keeps the addresses the
//! policy allows and connects to one of them, so the check runs on the exact IP dialled and a
//! name that resolves to a private address (or changes between two lookups) cannot slip through.

use super::{AllowedAddr, EgressError, EgressPolicy, Resolver};
use crate::net::target::{Host, Target};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// Connect to the first allowed address that answers, within `timeout` each. TCP_NODELAY is
/// set: small request heads must not wait for delayed ACKs.
pub async fn connect(addrs: &[AllowedAddr], timeout: Duration) -> Result<TcpStream, EgressError> {
    let mut last = EgressError::NoAddress;
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr.addr())).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => last = EgressError::Connect(e),
            Err(_) => last = EgressError::Timeout,
        }
    }
    Err(last)
}

/// Resolves, applies the policy and dials; also a hyper connector. The only way the proxy opens
/// connections: tunnels, plain forwards and provider upstreams each hold one.
#[derive(Clone)]
pub struct Dialer {
    policy: Arc<EgressPolicy>,
    resolver: Resolver,
    connect_timeout: Duration,
}

impl Dialer {
    /// A dialer with the system resolver.
    pub fn new(policy: EgressPolicy, connect_timeout: Duration) -> Self {
        Dialer {
            policy: Arc::new(policy),
            resolver: Resolver::default(),
            connect_timeout,
        }
    }

    /// The same dialer resolving names through `resolver`.
    pub fn with_resolver(mut self, resolver: Resolver) -> Self {
        self.resolver = resolver;
        self
    }

    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// Resolve `host` and keep the addresses the policy allows.
    pub async fn resolve(&self, host: &Host, port: u16) -> Result<Vec<AllowedAddr>, EgressError> {
        let addrs = self.resolver.lookup(host, port).await?;
        self.policy.filter(addrs)
    }

    /// Resolve, check and connect to `host:port`.
    pub async fn dial(&self, host: &Host, port: u16) -> Result<TcpStream, EgressError> {
        let addrs = self.resolve(host, port).await?;
        connect(&addrs, self.connect_timeout).await
    }
}

impl tower_service::Service<http::Uri> for Dialer {
    type Response = TokioIo<TcpStream>;
    type Error = EgressError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let dialer = self.clone();
        Box::pin(async move {
            let authority = uri.authority().ok_or(EgressError::NoHost)?;
            let default_port = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
                443
            } else {
                80
            };
            let target = Target::parse_with_default_port(authority.as_str(), default_port)
                .map_err(|_| EgressError::NoHost)?;
            dialer
                .dial(&target.host, target.port)
                .await
                .map(TokioIo::new)
        })
    }
}
