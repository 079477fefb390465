//! The network floor: every authority we parse and every socket we open.
//!
//! [`target`] parses and normalizes `host:port` (CONNECT targets, intercept hosts, base URLs);
//! [`egress`] decides which addresses may be dialled and is the only code that dials; [`upstream`]
//! is the pooled, TLS-verified HTTP client for provider upstreams, built on the egress dialer.
//! Nothing here knows about providers, agents or records: the floors above decide what to
//! connect to, this one decides whether and how.

pub mod egress;
pub mod idle;
pub mod target;
pub mod upstream;
