//! Egress policy: which addresses the proxy may open a connection to.
//!
//! The check runs on the exact IP that is dialled, after resolution, so a name that resolves to
//! a private address (or changes between two lookups) cannot slip through: the dialer takes only
//! an [`AllowedAddr`], and only [`EgressPolicy::check`] makes one. IPv4 addresses embedded in IPv6
//! (IPv4-mapped, IPv4-compatible, NAT64, 6to4) are unwrapped and classified as what they are.

use crate::proxy::target::Host;
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// Ranges never dialled unless explicitly allowed (RELIABILITY S9).
static RESERVED: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "100::/64",
        "64:ff9b:1::/48",
        "2001:db8::/32",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    ]
    .iter()
    .filter_map(|s| s.parse().ok())
    .collect()
});

/// Why an egress connection was not made. `reason()` labels metrics and logs; clients get a
/// fixed sentence per status, never this text.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("destination {0} is a private or reserved address")]
    Denied(IpAddr),
    #[error("name resolution failed: {0}")]
    Resolve(std::io::Error),
    #[error("name resolved to no address")]
    NoAddress,
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    #[error("connect timed out")]
    Timeout,
    #[error("request URI has no host")]
    NoHost,
}

impl EgressError {
    pub fn reason(&self) -> &'static str {
        match self {
            EgressError::Denied(_) => "private_address",
            EgressError::Resolve(_) | EgressError::NoAddress => "dns",
            EgressError::Connect(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                "connect_refused"
            }
            EgressError::Connect(_) => "connect_error",
            EgressError::Timeout => "connect_timeout",
            EgressError::NoHost => "bad_uri",
        }
    }

    /// Whether the policy (not the network) refused the connection.
    pub fn is_denied(&self) -> bool {
        matches!(self, EgressError::Denied(_))
    }
}

/// A socket address that passed the policy. The only way to dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedAddr(SocketAddr);

impl AllowedAddr {
    pub fn addr(&self) -> SocketAddr {
        self.0
    }
}

/// Which destinations may be dialled.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    /// Reserved addresses inside these ranges are allowed anyway.
    allowed: Vec<IpNet>,
    /// Allow every address (used for provider upstreams until per-provider policy lands).
    allow_all: bool,
}

impl EgressPolicy {
    /// Public addresses only, plus the given CIDRs.
    pub fn public_only(allowed: Vec<IpNet>) -> Self {
        EgressPolicy {
            allowed,
            allow_all: false,
        }
    }

    /// Every address.
    pub fn allow_all() -> Self {
        EgressPolicy {
            allowed: Vec::new(),
            allow_all: true,
        }
    }

    /// Classify one address.
    pub fn check(&self, addr: SocketAddr) -> Result<AllowedAddr, EgressError> {
        let ip = addr.ip();
        let inner = unwrap_embedded(ip);
        if self.allow_all
            || !is_reserved(ip)
            || self
                .allowed
                .iter()
                .any(|n| n.contains(&ip) || n.contains(&inner))
        {
            return Ok(AllowedAddr(addr));
        }
        Err(EgressError::Denied(ip))
    }

    /// Resolve `host` and keep the addresses the policy allows. If every address is refused,
    /// the first refusal is returned.
    pub async fn resolve(&self, host: &Host, port: u16) -> Result<Vec<AllowedAddr>, EgressError> {
        let addrs: Vec<SocketAddr> = match host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, port)],
            Host::Domain(name) => tokio::net::lookup_host((name.as_str(), port))
                .await
                .map_err(EgressError::Resolve)?
                .collect(),
        };
        let mut first_denial = None;
        let mut allowed = Vec::with_capacity(addrs.len());
        for addr in addrs {
            match self.check(addr) {
                Ok(a) => allowed.push(a),
                Err(e) => {
                    first_denial.get_or_insert(e);
                }
            }
        }
        match (allowed.is_empty(), first_denial) {
            (false, _) => Ok(allowed),
            (true, Some(denial)) => Err(denial),
            (true, None) => Err(EgressError::NoAddress),
        }
    }
}

/// Whether an address is in a reserved range, looking through IPv6 forms that embed IPv4.
pub fn is_reserved(ip: IpAddr) -> bool {
    let ip = unwrap_embedded(ip);
    RESERVED.iter().any(|net| net.contains(&ip))
}

/// The IPv4 address inside an IPv4-mapped, IPv4-compatible, NAT64 (64:ff9b::/96) or 6to4
/// (2002::/16) IPv6 address; other addresses unchanged.
pub fn unwrap_embedded(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    let o = v6.octets();
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    let seg = v6.segments();
    if seg[..6] == [0, 0, 0, 0, 0, 0] && v6 != Ipv6Addr::UNSPECIFIED && v6 != Ipv6Addr::LOCALHOST {
        return IpAddr::V4(tail); // IPv4-compatible (deprecated, still routable by some stacks)
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return IpAddr::V4(tail);
    }
    if seg[0] == 0x2002 {
        return IpAddr::V4(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    ip
}

/// Connect to the first allowed address that answers, within `timeout` each. TCP_NODELAY is
/// set: small request heads must not wait for delayed ACKs.
pub async fn connect(addrs: &[AllowedAddr], timeout: Duration) -> Result<TcpStream, EgressError> {
    let mut last = EgressError::NoAddress;
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr.0)).await {
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

/// A hyper connector that resolves, applies the policy and dials; the only way the proxy's HTTP
/// clients open connections.
#[derive(Clone)]
pub struct Dialer {
    policy: Arc<EgressPolicy>,
    connect_timeout: Duration,
}

impl Dialer {
    pub fn new(policy: EgressPolicy, connect_timeout: Duration) -> Self {
        Dialer {
            policy: Arc::new(policy),
            connect_timeout,
        }
    }

    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// Resolve, check and connect to `host:port`.
    pub async fn dial(&self, host: &Host, port: u16) -> Result<TcpStream, EgressError> {
        let addrs = self.policy.resolve(host, port).await?;
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
            let target = crate::proxy::target::Target::parse_with_default_port(
                authority.as_str(),
                default_port,
            )
            .map_err(|_| EgressError::NoHost)?;
            dialer
                .dial(&target.host, target.port)
                .await
                .map(TokioIo::new)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap(), 443)
    }

    #[test]
    fn reserved_ranges_are_refused_and_public_allowed() {
        let policy = EgressPolicy::public_only(vec![]);
        for denied in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::",
            "::127.0.0.1",
        ] {
            assert!(
                policy.check(sa(denied)).is_err(),
                "{denied} must be refused"
            );
        }
        for allowed in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(
                policy.check(sa(allowed)).is_ok(),
                "{allowed} must be allowed"
            );
        }
    }

    #[test]
    fn allowed_cidrs_open_exactly_their_range() {
        let policy = EgressPolicy::public_only(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(policy.check(sa("127.0.0.1")).is_ok());
        assert!(policy.check(sa("10.0.0.1")).is_err());
        assert!(EgressPolicy::allow_all().check(sa("10.0.0.1")).is_ok());
    }
}
