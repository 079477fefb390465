//! The egress policy: which addresses may be dialled. Pure and synchronous — it classifies
//! addresses and never touches a socket or a resolver, so it can be checked anywhere (a base URL
//! being written, an address about to be dialled) with the same answer.
//!
//! IPv4 addresses embedded in IPv6 (IPv4-mapped, IPv4-compatible, NAT64, 6to4) are unwrapped and
//! classified as what they are. There is no "allow everything" policy; an operator who wants one
//! lists `0.0.0.0/0,::/0`.

use super::EgressError;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;

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
