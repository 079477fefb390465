//! Name resolution for every dial: the system resolver, or a fixed map in front of it
//! ([`StaticResolver`], which tests use to make names point at every range). A resolver decides
//! where a name points, never whether the proxy may go there: its answers still pass the policy.

use super::EgressError;
use crate::net::target::Host;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

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
