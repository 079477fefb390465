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
//!
//! Split by concern: [`policy`] (pure: which addresses), [`resolve`] (names to addresses),
//! [`dial`] (the only sockets).

mod dial;
mod policy;
mod resolve;

pub use dial::{connect, Dialer};
pub use policy::{is_reserved, unwrap_embedded, AllowedAddr, EgressPolicy};
pub use resolve::{Lookup, Resolve, Resolver, StaticResolver, SystemResolver};

use std::net::IpAddr;

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

#[cfg(test)]
mod tests;
