//! What a provider is, independent of where it is stored: its kind, its name rule, its base
//! URL and the hosts it intercepts.
//!
//! Writes (CLI, `apply`, admin API, all through the store) and the router build both validate
//! through these functions, so a row the store accepted is a row the router can use, and a row
//! written by an older version that no longer parses, or whose base URL the upstream egress
//! policy refuses, is excluded alone, with this module's error as its reason.

use crate::net::egress::EgressPolicy;
use crate::net::target::{Host, Target, TargetError};
use http::uri::{Authority, Scheme};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The API dialect a provider speaks; it decides how the key is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    Openai,
    Anthropic,
    OpenaiCompatible,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::OpenaiCompatible => "openai-compatible",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProviderKind {
    type Err = ProviderError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "openai" => Ok(ProviderKind::Openai),
            "anthropic" => Ok(ProviderKind::Anthropic),
            "openai-compatible" => Ok(ProviderKind::OpenaiCompatible),
            _ => Err(ProviderError::Kind(s.chars().take(64).collect())),
        }
    }
}

/// What happens to a provider's requests that are not model calls (model lists, settings,
/// telemetry...): forwarded with the key and recorded as `passthrough`, or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Passthrough {
    #[default]
    Forward,
    Deny,
}

impl Passthrough {
    pub fn as_str(self) -> &'static str {
        match self {
            Passthrough::Forward => "forward",
            Passthrough::Deny => "deny",
        }
    }
}

impl fmt::Display for Passthrough {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Passthrough {
    type Err = ProviderError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "forward" => Ok(Passthrough::Forward),
            "deny" => Ok(Passthrough::Deny),
            _ => Err(ProviderError::Passthrough(s.chars().take(64).collect())),
        }
    }
}

/// Why a provider field is unacceptable. The texts are safe to show to an admin: they name the
/// field and the rule, never a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("name must match ^[a-z0-9]+(-[a-z0-9]+)*$ and be at most 63 characters")]
    Name,
    #[error("unknown kind {0:?}: expected openai, anthropic or openai-compatible")]
    Kind(String),
    #[error("unknown passthrough {0:?}: expected forward or deny")]
    Passthrough(String),
    #[error("base_url {0}")]
    BaseUrl(&'static str),
    /// Names the host only: the rest of the URL is never echoed.
    #[error(
        "base_url host {host} is a private, loopback or reserved address; \
         allow its range with --allow-private-upstreams CIDR"
    )]
    PrivateUpstream { host: String },
    #[error("intercept host {host:?}: {source}")]
    InterceptHost { host: String, source: TargetError },
}

/// Validate a provider name: lowercase words joined by single hyphens.
pub fn validate_name(name: &str) -> Result<(), ProviderError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.split('-').all(|w| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    if ok {
        Ok(())
    } else {
        Err(ProviderError::Name)
    }
}

/// A provider's upstream: scheme, authority and an optional path prefix without trailing slash.
/// Request paths are appended to it verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    scheme: Scheme,
    authority: Authority,
    target: Target,
    prefix: String,
}

impl BaseUrl {
    /// Parse an absolute `http` or `https` URL with a host, no userinfo, no query or fragment.
    pub fn parse(s: &str) -> Result<BaseUrl, ProviderError> {
        if s.len() > 2048 {
            return Err(ProviderError::BaseUrl("is too long"));
        }
        if s.contains('#') || s.contains('?') {
            return Err(ProviderError::BaseUrl("must not have a query or fragment"));
        }
        let uri: http::Uri = s
            .parse()
            .map_err(|_| ProviderError::BaseUrl("is not a valid absolute URL"))?;
        let scheme = uri.scheme().cloned().ok_or(ProviderError::BaseUrl(
            "must be absolute (http:// or https://)",
        ))?;
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return Err(ProviderError::BaseUrl("scheme must be http or https")),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or(ProviderError::BaseUrl("must have a host"))?;
        if authority.as_str().contains('@') {
            return Err(ProviderError::BaseUrl("must not contain userinfo"));
        }
        let target = Target::parse_with_default_port(authority.as_str(), default_port)
            .map_err(|_| ProviderError::BaseUrl("has a malformed host or port"))?;
        let prefix = uri.path().trim_end_matches('/').to_string();
        Ok(BaseUrl {
            scheme,
            authority,
            target,
            prefix,
        })
    }

    /// [`BaseUrl::parse`], then [`BaseUrl::check_egress`]: what every write of a provider's
    /// base URL goes through.
    pub fn parse_with_policy(s: &str, policy: &EgressPolicy) -> Result<BaseUrl, ProviderError> {
        let base = BaseUrl::parse(s)?;
        base.check_egress(policy)?;
        Ok(base)
    }

    /// Refuse a base URL whose host is, by itself, an address the upstream policy would not
    /// dial: a reserved IP literal (any spelling that embeds one), or a name whose address is
    /// fixed without DNS (see [`implied_addresses`]). Other names are not resolved here: their
    /// addresses may change after the write, so the dial-time check on the exact address is
    /// the guard, and a write must not depend on the writer's resolver.
    pub fn check_egress(&self, policy: &EgressPolicy) -> Result<(), ProviderError> {
        let denied = match &self.target.host {
            Host::Ip(ip) => !policy.permits(*ip),
            Host::Domain(name) => {
                let implied = implied_addresses(name);
                !implied.is_empty() && !implied.iter().any(|ip| policy.permits(*ip))
            }
        };
        if denied {
            return Err(ProviderError::PrivateUpstream {
                host: self.target.host.to_string(),
            });
        }
        Ok(())
    }

    /// The upstream URI for a request path-and-query (which starts with `/`).
    pub fn join(&self, path_and_query: &str) -> Result<http::Uri, http::Error> {
        let mut pq = String::with_capacity(self.prefix.len() + path_and_query.len());
        pq.push_str(&self.prefix);
        pq.push_str(path_and_query);
        http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
    }

    /// The host and port the upstream is dialled at; also the default intercept host.
    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }
}

const LOOPBACK: &[IpAddr] = &[
    IpAddr::V4(Ipv4Addr::LOCALHOST),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
];
const METADATA: &[IpAddr] = &[
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

/// The addresses a (normalized) host name stands for without asking DNS: loopback for
/// `localhost`, `*.localhost` (RFC 6761) and the usual hosts-file aliases; the metadata service
/// for the names clouds give it. Empty for every other name.
pub fn implied_addresses(name: &str) -> &'static [IpAddr] {
    match name {
        "localhost" | "localhost.localdomain" | "ip6-localhost" | "ip6-loopback" => LOOPBACK,
        n if n.ends_with(".localhost") => LOOPBACK,
        "metadata"
        | "metadata.google.internal"
        | "metadata.goog"
        | "instance-data"
        | "instance-data.ec2.internal" => METADATA,
        _ => &[],
    }
}

/// Normalize a configured intercept host (`host` or `host:port`, port 443 by default).
pub fn parse_intercept_host(s: &str) -> Result<Target, ProviderError> {
    Target::parse_with_default_port(s.trim(), 443).map_err(|source| ProviderError::InterceptHost {
        host: s.chars().take(300).collect(),
        source,
    })
}

/// The hosts a provider claims: the configured list, or the base URL's own host:port.
pub fn intercept_targets(
    intercept_hosts: &[String],
    base: &BaseUrl,
) -> Result<Vec<Target>, ProviderError> {
    if intercept_hosts.is_empty() {
        return Ok(vec![base.target().clone()]);
    }
    intercept_hosts
        .iter()
        .map(|h| parse_intercept_host(h))
        .collect()
}

/// Normalize intercept hosts for storage: each in its canonical `host` (port 443) or
/// `host:port` spelling, duplicates removed, order kept.
pub fn normalize_intercept_hosts(hosts: &[String]) -> Result<Vec<String>, ProviderError> {
    let mut out: Vec<String> = Vec::with_capacity(hosts.len());
    for h in hosts {
        let t = parse_intercept_host(h)?;
        let canonical = if t.port == 443 {
            t.host.to_string()
        } else {
            t.key()
        };
        if !out.contains(&canonical) {
            out.push(canonical);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["openai", "my-openai-2", "a", "x1-y2"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "OpenAI",
            "-a",
            "a-",
            "a--b",
            "a_b",
            "a b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn base_urls() {
        let b = BaseUrl::parse("https://api.openai.com").unwrap();
        assert_eq!(b.target().key(), "api.openai.com:443");
        assert_eq!(
            b.join("/v1/chat?x=1").unwrap().to_string(),
            "https://api.openai.com/v1/chat?x=1"
        );
        let b = BaseUrl::parse("http://127.0.0.1:8080/prefix/").unwrap();
        assert_eq!(b.target().key(), "127.0.0.1:8080");
        assert_eq!(
            b.join("/v1/x").unwrap().to_string(),
            "http://127.0.0.1:8080/prefix/v1/x"
        );
        let b = BaseUrl::parse("https://API.Example.COM:8443/v1").unwrap();
        assert_eq!(b.target().key(), "api.example.com:8443");
        for bad in [
            "api.openai.com",
            "ftp://x.com",
            "file:///etc/passwd",
            "https://user:pw@x.com",
            "https://x.com/#frag",
            "https://x.com/?q=1",
            "https://",
            "https://x.com:0",
            "https://x..com",
            "gopher://x.com",
        ] {
            assert!(BaseUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn base_urls_to_private_hosts_are_refused_unless_their_range_is_allowed() {
        let public = EgressPolicy::default();
        let refused = [
            "http://169.254.169.254/latest/meta-data",
            "https://[fd00:ec2::254]",
            "http://127.0.0.1:8080",
            "http://127.1.2.3",
            "http://[::1]:8080",
            "http://[::ffff:169.254.169.254]",
            "http://[64:ff9b::a9fe:a9fe]",
            "http://[2002:a9fe:a9fe::]",
            "https://localhost:8443/v1",
            "https://LOCALHOST.",
            "https://api.localhost",
            "https://ip6-localhost",
            "http://metadata.google.internal/computeMetadata/v1",
            "http://metadata",
            "http://instance-data.ec2.internal",
            "http://100.100.100.200",
            "http://10.0.0.1",
            "http://192.168.1.1",
            "http://0.0.0.0",
            "http://[::]",
            "http://[fe80::1]",
            "http://224.0.0.1",
        ];
        for url in refused {
            let err = BaseUrl::parse_with_policy(url, &public).unwrap_err();
            assert!(
                matches!(err, ProviderError::PrivateUpstream { .. }),
                "{url}: {err}"
            );
            assert!(err.to_string().contains("--allow-private-upstreams"));
            assert!(BaseUrl::parse(url).is_ok(), "{url} is well-formed");
        }
        // Names are not resolved at write time; public literals pass.
        for url in [
            "https://api.openai.com",
            "https://llm.internal.example",
            "https://8.8.8.8",
            "https://localhost.example.com",
            "https://notlocalhost",
        ] {
            assert!(BaseUrl::parse_with_policy(url, &public).is_ok(), "{url}");
        }
        // Syntax errors still come first (userinfo is refused without echoing it).
        let err = BaseUrl::parse_with_policy("https://user:pw@127.0.0.1", &public).unwrap_err();
        assert_eq!(err, ProviderError::BaseUrl("must not contain userinfo"));
        assert!(!err.to_string().contains("pw"));

        // Exactly the allowed ranges open up.
        let loopback = EgressPolicy::public_only(vec!["127.0.0.0/8".parse().unwrap()]);
        for url in [
            "http://127.0.0.1:8080",
            "http://[::ffff:127.0.0.1]",
            "https://localhost",
            "https://a.localhost",
        ] {
            assert!(BaseUrl::parse_with_policy(url, &loopback).is_ok(), "{url}");
        }
        for url in [
            "http://[::1]",
            "http://169.254.169.254",
            "http://metadata.google.internal",
            "http://10.0.0.1",
        ] {
            assert!(BaseUrl::parse_with_policy(url, &loopback).is_err(), "{url}");
        }
        let metadata = EgressPolicy::public_only(vec!["169.254.169.254/32".parse().unwrap()]);
        assert!(BaseUrl::parse_with_policy("http://metadata.google.internal", &metadata).is_ok());
        assert!(BaseUrl::parse_with_policy("http://169.254.169.253", &metadata).is_err());
        assert!(BaseUrl::parse_with_policy("http://localhost", &metadata).is_err());
    }

    #[test]
    fn intercept_hosts_normalize() {
        let hosts = vec![
            "API.OpenAI.com.".to_string(),
            "api.openai.com:443".to_string(),
            "x.com:8443".to_string(),
        ];
        assert_eq!(
            normalize_intercept_hosts(&hosts).unwrap(),
            vec!["api.openai.com", "x.com:8443"]
        );
        assert!(normalize_intercept_hosts(&["a b".to_string()]).is_err());
        assert!(normalize_intercept_hosts(&["x.com:99999".to_string()]).is_err());
    }
}
