//! What a provider is, independent of where it is stored: its kind, its name rule, its base
//! URL and the hosts it intercepts.
//!
//! Writes (CLI, admin API) and the router build both validate through these functions, so a row
//! the store accepted is a row the router can use, and a row written by an older version that no
//! longer parses is excluded alone, with this module's error as its reason.

use crate::proxy::target::{Target, TargetError};
use http::uri::{Authority, Scheme};
use serde::{Deserialize, Serialize};
use std::fmt;
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

/// Why a provider field is unacceptable. The texts are safe to show to an admin: they name the
/// field and the rule, never a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("name must match ^[a-z0-9]+(-[a-z0-9]+)*$ and be at most 63 characters")]
    Name,
    #[error("unknown kind {0:?}: expected openai, anthropic or openai-compatible")]
    Kind(String),
    #[error("base_url {0}")]
    BaseUrl(&'static str),
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
