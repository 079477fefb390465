//! Egress policy: which addresses the proxy may open a connection to.
//!
//! One policy type and one dialer for every outbound connection: tunnels, plain forwards and
//! provider upstreams each get a [`Dialer`] with their own [`EgressPolicy`] (public addresses
//! plus `--allow-private-cidrs`, respectively `--allow-private-upstreams`). There is no
//! "allow everything" policy; an operator who wants one lists `0.0.0.0/0,::/0`.
//!
//! The check runs on the exact IP that is dialled, after resolution, so a name that resolves to
//! a private address (or changes between two lookups) cannot slip through: the dialer connects
//! only to an [`AllowedAddr`], and only [`EgressPolicy::check`] makes one. IPv4 addresses
//! embedded in IPv6 (IPv4-mapped, IPv4-compatible, NAT64, 6to4) are unwrapped and classified as
//! what they are. Names are resolved through a [`Resolver`]: the system's, or a fixed map in
//! front of it ([`StaticResolver`], which tests use to make names point at every range).

use crate::proxy::target::Host;
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use std::collections::HashMap;
use std::fmt;
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

/// A socket address that passed the policy. The only thing [`connect`] dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedAddr(SocketAddr);

impl AllowedAddr {
    pub fn addr(&self) -> SocketAddr {
        self.0
    }
}

/// Which destinations may be dialled: public addresses, plus reserved ones inside the
/// explicitly allowed ranges. The default allows no reserved address at all.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    /// Reserved addresses inside these ranges are allowed anyway.
    allowed: Vec<IpNet>,
}

impl EgressPolicy {
    /// Public addresses only, plus the given CIDRs.
    pub fn public_only(allowed: Vec<IpNet>) -> Self {
        EgressPolicy { allowed }
    }

    /// The reserved ranges this policy allows anyway.
    pub fn allowed(&self) -> &[IpNet] {
        &self.allowed
    }

    /// Whether `ip` may be dialled. An allowed range matches the address as written or the
    /// IPv4 address it embeds.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let inner = unwrap_embedded(ip);
        !is_reserved(ip)
            || self
                .allowed
                .iter()
                .any(|n| n.contains(&ip) || n.contains(&inner))
    }

    /// Classify one address.
    pub fn check(&self, addr: SocketAddr) -> Result<AllowedAddr, EgressError> {
        if self.permits(addr.ip()) {
            Ok(AllowedAddr(addr))
        } else {
            Err(EgressError::Denied(addr.ip()))
        }
    }

    /// Keep the addresses the policy allows. If every address is refused, the first refusal is
    /// returned.
    pub fn filter(&self, addrs: Vec<SocketAddr>) -> Result<Vec<AllowedAddr>, EgressError> {
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

/// The future a [`Resolve`] lookup returns.
pub type Lookup<'a> = Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// Turns a host name into addresses. Whatever it answers still goes through the policy: a
/// resolver decides where a name points, never whether the proxy may go there.
pub trait Resolve: fmt::Debug + Send + Sync {
    /// The addresses of `name` (a normalized host name, never an IP literal) at `port`.
    fn lookup<'a>(&'a self, name: &'a str, port: u16) -> Lookup<'a>;
}

/// The system resolver (`getaddrinfo` on tokio's blocking pool).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn lookup<'a>(&'a self, name: &'a str, port: u16) -> Lookup<'a> {
        Box::pin(async move { Ok(tokio::net::lookup_host((name, port)).await?.collect()) })
    }
}

/// A fixed name → addresses map in front of the system resolver, like a hosts file: names in
/// the map get its addresses, every other name is asked of the system.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    names: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    pub fn new() -> Self {
        StaticResolver::default()
    }

    /// Make `name` (any case, one trailing dot allowed) resolve to `addrs`.
    pub fn with(mut self, name: &str, addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        let key = name.trim_end_matches('.').to_ascii_lowercase();
        self.names.entry(key).or_default().extend(addrs);
        self
    }
}

impl Resolve for StaticResolver {
    fn lookup<'a>(&'a self, name: &'a str, port: u16) -> Lookup<'a> {
        match self.names.get(name) {
            Some(ips) => {
                let addrs = ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
                Box::pin(std::future::ready(Ok(addrs)))
            }
            None => SystemResolver.lookup(name, port),
        }
    }
}

/// A shared handle to the resolver every dialer of one proxy uses (the system's by default).
#[derive(Debug, Clone)]
pub struct Resolver(Arc<dyn Resolve>);

impl Default for Resolver {
    fn default() -> Self {
        Resolver::new(SystemResolver)
    }
}

impl Resolver {
    pub fn new(resolver: impl Resolve + 'static) -> Self {
        Resolver(Arc::new(resolver))
    }

    /// The addresses of `host` at `port`; an IP literal is its own answer.
    pub async fn lookup(&self, host: &Host, port: u16) -> Result<Vec<SocketAddr>, EgressError> {
        match host {
            Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, port)]),
            Host::Domain(name) => self
                .0
                .lookup(name, port)
                .await
                .map_err(EgressError::Resolve),
        }
    }
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

    /// Every reserved range (S9 and the documentation/relay ranges beside it) with addresses at
    /// its start, inside and at its end.
    const MATRIX: &[(&str, &[&str])] = &[
        ("0.0.0.0/8", &["0.0.0.0", "0.1.2.3", "0.255.255.255"]),
        ("10.0.0.0/8", &["10.0.0.0", "10.1.2.3", "10.255.255.255"]),
        (
            "100.64.0.0/10",
            &["100.64.0.0", "100.100.100.200", "100.127.255.255"],
        ),
        (
            "127.0.0.0/8",
            &["127.0.0.0", "127.0.0.1", "127.255.255.255"],
        ),
        (
            "169.254.0.0/16",
            &["169.254.0.0", "169.254.169.254", "169.254.255.255"],
        ),
        (
            "172.16.0.0/12",
            &["172.16.0.0", "172.20.1.2", "172.31.255.255"],
        ),
        ("192.0.0.0/24", &["192.0.0.0", "192.0.0.170", "192.0.0.255"]),
        ("192.0.2.0/24", &["192.0.2.0", "192.0.2.1", "192.0.2.255"]),
        (
            "192.88.99.0/24",
            &["192.88.99.0", "192.88.99.1", "192.88.99.255"],
        ),
        (
            "192.168.0.0/16",
            &["192.168.0.0", "192.168.1.1", "192.168.255.255"],
        ),
        (
            "198.18.0.0/15",
            &["198.18.0.0", "198.18.5.6", "198.19.255.255"],
        ),
        (
            "198.51.100.0/24",
            &["198.51.100.0", "198.51.100.7", "198.51.100.255"],
        ),
        (
            "203.0.113.0/24",
            &["203.0.113.0", "203.0.113.9", "203.0.113.255"],
        ),
        (
            "224.0.0.0/4",
            &["224.0.0.0", "224.0.0.1", "239.255.255.255"],
        ),
        (
            "240.0.0.0/4",
            &["240.0.0.0", "250.1.2.3", "255.255.255.255"],
        ),
        ("::/128", &["::"]),
        ("::1/128", &["::1"]),
        ("100::/64", &["100::", "100::1", "100::ffff:ffff:ffff:ffff"]),
        ("64:ff9b:1::/48", &["64:ff9b:1::", "64:ff9b:1::1"]),
        (
            "2001:db8::/32",
            &["2001:db8::", "2001:db8::1", "2001:db8:ffff::1"],
        ),
        ("fc00::/7", &["fc00::", "fd00:ec2::254", "fdff:ffff::1"]),
        ("fe80::/10", &["fe80::", "fe80::1", "febf::1"]),
        ("ff00::/8", &["ff00::", "ff02::1", "ff0e::1"]),
    ];

    const PUBLIC: &[&str] = &[
        "8.8.8.8",
        "1.1.1.1",
        "100.63.255.255",
        "100.128.0.0",
        "172.32.0.0",
        "2606:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::",
    ];

    /// The IPv6 spellings that embed an IPv4 address.
    fn embedded(v4: Ipv4Addr) -> [IpAddr; 4] {
        let [a, b, c, d] = v4.octets();
        let tail = |p: [u16; 6]| {
            IpAddr::V6(Ipv6Addr::new(
                p[0],
                p[1],
                p[2],
                p[3],
                p[4],
                p[5],
                u16::from_be_bytes([a, b]),
                u16::from_be_bytes([c, d]),
            ))
        };
        [
            IpAddr::V6(v4.to_ipv6_mapped()),
            tail([0, 0, 0, 0, 0, 0]),
            tail([0x64, 0xff9b, 0, 0, 0, 0]),
            IpAddr::V6(Ipv6Addr::new(
                0x2002,
                u16::from_be_bytes([a, b]),
                u16::from_be_bytes([c, d]),
                0,
                0,
                0,
                0,
                0,
            )),
        ]
    }

    #[test]
    fn the_matrix_covers_every_s9_range() {
        let s9 = [
            "0.0.0.0/8",
            "10.0.0.0/8",
            "100.64.0.0/10",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "172.16.0.0/12",
            "192.0.0.0/24",
            "192.168.0.0/16",
            "198.18.0.0/15",
            "224.0.0.0/4",
            "240.0.0.0/4",
            "::/128",
            "::1/128",
            "fc00::/7",
            "fe80::/10",
            "ff00::/8",
        ];
        for range in s9 {
            assert!(MATRIX.iter().any(|(r, _)| *r == range), "{range}");
        }
        for (range, addrs) in MATRIX {
            let net: IpNet = range.parse().unwrap();
            for a in *addrs {
                assert!(
                    net.contains(&a.parse::<IpAddr>().unwrap()),
                    "{a} in {range}"
                );
            }
        }
    }

    #[test]
    fn every_reserved_address_is_refused_by_default_in_every_spelling() {
        let policy = EgressPolicy::default();
        let mut refused = 0;
        for (range, addrs) in MATRIX {
            for a in *addrs {
                let ip: IpAddr = a.parse().unwrap();
                let mut forms = vec![ip];
                if let IpAddr::V4(v4) = ip {
                    forms.extend(embedded(v4));
                }
                for f in forms {
                    let err = policy.check(SocketAddr::new(f, 443)).unwrap_err();
                    assert!(err.is_denied(), "{f} ({range})");
                    assert_eq!(err.reason(), "private_address");
                    refused += 1;
                }
            }
        }
        assert!(refused > 150, "{refused}");
        for p in PUBLIC {
            assert!(policy.check(sa(p)).is_ok(), "{p} must be allowed");
        }
    }

    #[test]
    fn an_allowed_cidr_opens_exactly_its_own_range() {
        for (allowed, _) in MATRIX {
            let net: IpNet = allowed.parse().unwrap();
            let policy = EgressPolicy::public_only(vec![net]);
            for (range, addrs) in MATRIX {
                for a in *addrs {
                    let ip: IpAddr = a.parse().unwrap();
                    assert_eq!(
                        policy.check(SocketAddr::new(ip, 443)).is_ok(),
                        net.contains(&ip),
                        "{a} ({range}) with {allowed} allowed"
                    );
                }
            }
            for p in PUBLIC {
                assert!(policy.check(sa(p)).is_ok(), "{p}");
            }
        }
        // An allowed IPv4 range also admits its IPv6 spellings, and nothing next to it.
        let policy = EgressPolicy::public_only(vec!["127.0.0.0/8".parse().unwrap()]);
        for f in embedded(Ipv4Addr::new(127, 0, 0, 1)) {
            assert!(policy.check(SocketAddr::new(f, 443)).is_ok(), "{f}");
        }
        for f in embedded(Ipv4Addr::new(169, 254, 169, 254)) {
            assert!(policy.check(SocketAddr::new(f, 443)).is_err(), "{f}");
        }
        assert!(
            policy.check(sa("::1")).is_err(),
            "::1 is not in 127.0.0.0/8"
        );
    }

    fn host(name: &str) -> Host {
        Host::Domain(name.into())
    }

    #[tokio::test]
    async fn names_are_classified_by_the_addresses_they_resolve_to() {
        let mut resolver = StaticResolver::new();
        let mut names = Vec::new();
        for (i, (range, addrs)) in MATRIX.iter().enumerate() {
            let name = format!("r{i}.egress.test");
            resolver = resolver.with(&name, addrs.iter().map(|a| a.parse().unwrap()));
            names.push((name, *range));
        }
        let resolver = Resolver::new(
            resolver
                .with("Public.Egress.Test.", ["8.8.8.8".parse().unwrap()])
                .with(
                    "mixed.egress.test",
                    ["10.0.0.1".parse().unwrap(), "8.8.4.4".parse().unwrap()],
                ),
        );
        let dialer = Dialer::new(EgressPolicy::default(), Duration::from_secs(1))
            .with_resolver(resolver.clone());
        for (name, range) in &names {
            let err = dialer.resolve(&host(name), 443).await.unwrap_err();
            assert!(err.is_denied(), "{name} -> {range}: {err}");
        }
        let public = dialer.resolve(&host("public.egress.test"), 443).await;
        assert_eq!(public.unwrap()[0].addr(), sa("8.8.8.8"));
        // Only the allowed answers of a mixed answer are kept.
        let mixed = dialer
            .resolve(&host("mixed.egress.test"), 443)
            .await
            .unwrap();
        assert_eq!(
            mixed.iter().map(|a| a.addr()).collect::<Vec<_>>(),
            vec![sa("8.8.4.4")]
        );

        // Allowing one range lets exactly the name pointing into it through.
        for (allowed, _) in MATRIX {
            let policy = EgressPolicy::public_only(vec![allowed.parse().unwrap()]);
            let dialer =
                Dialer::new(policy, Duration::from_secs(1)).with_resolver(resolver.clone());
            for (name, range) in &names {
                let ok = dialer.resolve(&host(name), 443).await.is_ok();
                assert_eq!(ok, range == allowed, "{name} -> {range} with {allowed}");
            }
        }
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_never_dialled_unless_allowed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let resolver = Resolver::new(
            StaticResolver::new().with("loop.egress.test", ["127.0.0.1".parse().unwrap()]),
        );
        let denied = Dialer::new(EgressPolicy::default(), Duration::from_secs(1))
            .with_resolver(resolver.clone());
        let err = denied
            .dial(&host("loop.egress.test"), port)
            .await
            .unwrap_err();
        assert!(err.is_denied(), "{err}");
        let err = denied
            .dial(&Host::Ip("::ffff:127.0.0.1".parse().unwrap()), port)
            .await
            .unwrap_err();
        assert!(err.is_denied(), "{err}");
        let nothing = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
        assert!(nothing.is_err(), "a refused dial must not connect");

        let allowed = Dialer::new(
            EgressPolicy::public_only(vec!["127.0.0.0/8".parse().unwrap()]),
            Duration::from_secs(1),
        )
        .with_resolver(resolver);
        let _stream = allowed.dial(&host("loop.egress.test"), port).await.unwrap();
        let accepted = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await;
        assert!(matches!(accepted, Ok(Ok(_))));
    }
}
