//! Request targets: the `host:port` of a `CONNECT` (authority form, RFC 9112 §3.2.3) or the
//! authority of an absolute-form URI, normalized into a [`Target`].
//!
//! This is the only place host names are normalized (lowercase, one trailing dot removed, IPv6
//! in brackets), so router keys and leaf certificate names always agree. Anything that is not a
//! plain DNS name or IP literal is refused rather than repaired: no percent-decoding, no
//! userinfo, no numeric host spellings (`2130706433`, `0177.0.0.1`, `0x7f.1`) that resolvers
//! read as IPv4 and policy checks might not. Pure, bounded, and it never panics.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest input considered; longer is refused before any work.
const MAX_INPUT: usize = 300;
const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

/// A normalized host: a lowercase ASCII domain without trailing dot, or an IP literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Domain(String),
    Ip(IpAddr),
}

/// A normalized `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: Host,
    pub port: u16,
}

/// Why a target was refused. Every variant answers `400`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("empty target")]
    Empty,
    #[error("target contains a character that is not allowed")]
    BadCharacter,
    #[error("target has userinfo")]
    Userinfo,
    #[error("target is not in authority form")]
    NotAuthorityForm,
    #[error("target has no port")]
    MissingPort,
    #[error("port is not a canonical decimal number from 1 to 65535")]
    BadPort,
    #[error("malformed host name")]
    BadHost,
    #[error("numeric host names other than dotted-quad IPv4 are not accepted")]
    NumericHost,
    #[error("malformed IPv6 literal")]
    BadIpv6,
}

impl TargetError {
    /// A static label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            TargetError::Empty => "empty_target",
            TargetError::BadCharacter => "bad_character",
            TargetError::Userinfo => "userinfo",
            TargetError::NotAuthorityForm => "not_authority_form",
            TargetError::MissingPort => "missing_port",
            TargetError::BadPort => "bad_port",
            TargetError::BadHost => "bad_host",
            TargetError::NumericHost => "numeric_host",
            TargetError::BadIpv6 => "bad_ipv6",
        }
    }
}

impl Host {
    /// Parse a host alone (no port). IPv6 must be bracketed: `[::1]`.
    pub fn parse(s: &str) -> Result<Host, TargetError> {
        check_characters(s)?;
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(TargetError::BadIpv6)?;
            return parse_ipv6(inner);
        }
        parse_name(s)
    }

    pub fn is_ip(&self) -> bool {
        matches!(self, Host::Ip(_))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::Ip(IpAddr::V4(v4)) => write!(f, "{v4}"),
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
        }
    }
}

impl Target {
    /// Parse an authority-form target; the port is required.
    pub fn parse(s: &str) -> Result<Target, TargetError> {
        parse_authority(s, None)
    }

    /// Parse `host` or `host:port`, with `default_port` when the port is absent (intercept
    /// hosts, URI authorities).
    pub fn parse_with_default_port(s: &str, default_port: u16) -> Result<Target, TargetError> {
        parse_authority(s, Some(default_port))
    }

    /// The router key: `host:port`, IPv6 bracketed.
    pub fn key(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

fn parse_authority(s: &str, default_port: Option<u16>) -> Result<Target, TargetError> {
    check_characters(s)?;
    let (host_part, port_part) = split_host_port(s)?;
    let port = match (port_part, default_port) {
        (Some(p), _) => parse_port(p)?,
        (None, Some(d)) => d,
        (None, None) => return Err(TargetError::MissingPort),
    };
    let host = match host_part.strip_prefix('[') {
        Some(inner) => parse_ipv6(inner.strip_suffix(']').ok_or(TargetError::BadIpv6)?)?,
        None => parse_name(host_part)?,
    };
    Ok(Target { host, port })
}

/// Refuse what no authority may contain, before any splitting.
fn check_characters(s: &str) -> Result<(), TargetError> {
    if s.is_empty() {
        return Err(TargetError::Empty);
    }
    if s.len() > MAX_INPUT {
        return Err(TargetError::BadHost);
    }
    if !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) || s.contains('%') {
        return Err(TargetError::BadCharacter);
    }
    if s.contains('@') {
        return Err(TargetError::Userinfo);
    }
    if s.contains("://") || s.bytes().any(|b| matches!(b, b'/' | b'?' | b'#' | b'*')) {
        return Err(TargetError::NotAuthorityForm);
    }
    Ok(())
}

/// Split into host and optional port: after `]` for bracketed IPv6, else at the last colon.
fn split_host_port(s: &str) -> Result<(&str, Option<&str>), TargetError> {
    if s.starts_with('[') {
        let close = s.find(']').ok_or(TargetError::BadIpv6)?;
        let (host, rest) = s.split_at(close + 1);
        return match rest {
            "" => Ok((host, None)),
            _ => match rest.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(TargetError::BadIpv6),
            },
        };
    }
    match s.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => Err(TargetError::BadIpv6),
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((s, None)),
    }
}

/// Only canonical decimal 1–65535: no sign, no leading zero, no spaces.
fn parse_port(p: &str) -> Result<u16, TargetError> {
    let canonical = !p.is_empty()
        && p.len() <= 5
        && p.bytes().all(|b| b.is_ascii_digit())
        && !p.starts_with('0');
    if !canonical {
        return Err(TargetError::BadPort);
    }
    match p.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(TargetError::BadPort),
    }
}

fn parse_ipv6(inner: &str) -> Result<Host, TargetError> {
    if inner.contains('.') && !inner.contains(':') {
        return Err(TargetError::BadIpv6);
    }
    inner
        .parse::<Ipv6Addr>()
        .map(|ip| Host::Ip(IpAddr::V6(ip)))
        .map_err(|_| TargetError::BadIpv6)
}

/// A DNS name (LDH labels plus `_`) or a dotted-quad IPv4 address.
fn parse_name(s: &str) -> Result<Host, TargetError> {
    if s.contains(':') || s.contains('[') || s.contains(']') {
        return Err(TargetError::BadIpv6);
    }
    let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    if let Ok(v4) = name.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(v4)));
    }
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(TargetError::BadHost);
    }
    let labels: Vec<&str> = name.split('.').collect();
    if !labels.iter().all(|l| valid_label(l)) {
        return Err(TargetError::BadHost);
    }
    if looks_numeric(&labels) {
        return Err(TargetError::NumericHost);
    }
    Ok(Host::Domain(name))
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Names resolvers may read as IPv4 (`2130706433`, `0177.0.0.1`, `127.1`, `0x7f.1`): an
/// all-digit last label (no TLD is numeric), or hex-prefixed labels throughout.
fn looks_numeric(labels: &[&str]) -> bool {
    let last_numeric = labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    let hexish = labels.iter().any(|l| l.starts_with("0x"))
        && labels.iter().all(|l| {
            let digits = l.strip_prefix("0x").unwrap_or(l);
            digits.bytes().all(|b| b.is_ascii_hexdigit())
        });
    last_numeric || hexish
}

#[cfg(test)]
mod tests {
    use super::*;
    use TargetError::*;

    #[test]
    fn authority_form_table() {
        let long_label = format!("{}.com:443", "a".repeat(64));
        let ok_label = format!("{}.com:443", "a".repeat(63));
        let long_name = format!("{}.com:443", "a.".repeat(125));
        type Case<'a> = (&'a str, Result<(&'a str, u16), TargetError>);
        let cases: Vec<Case> = vec![
            ("api.openai.com:443", Ok(("api.openai.com", 443))),
            ("API.OpenAI.COM:443", Ok(("api.openai.com", 443))),
            ("api.openai.com.:443", Ok(("api.openai.com", 443))),
            ("api.openai.com..:443", Err(BadHost)),
            (".api.openai.com:443", Err(BadHost)),
            ("api..openai.com:443", Err(BadHost)),
            ("api.openai.com", Err(MissingPort)),
            ("api.openai.com:", Err(BadPort)),
            ("api.openai.com:0", Err(BadPort)),
            ("api.openai.com:65536", Err(BadPort)),
            ("api.openai.com:65535", Ok(("api.openai.com", 65535))),
            ("api.openai.com:99999999999", Err(BadPort)),
            ("api.openai.com:-1", Err(BadPort)),
            ("api.openai.com:+443", Err(BadPort)),
            ("api.openai.com:0443", Err(BadPort)),
            ("api.openai.com:443 ", Err(BadCharacter)),
            (" api.openai.com:443", Err(BadCharacter)),
            ("api.openai.com\t:443", Err(BadCharacter)),
            ("api.openai.com:443\0", Err(BadCharacter)),
            ("api.openai.com:443\r\n", Err(BadCharacter)),
            ("ápi.openai.com:443", Err(BadCharacter)),
            ("api%2eopenai.com:443", Err(BadCharacter)),
            ("user:pw@api.openai.com:443", Err(Userinfo)),
            ("https://api.openai.com:443/", Err(NotAuthorityForm)),
            ("/", Err(NotAuthorityForm)),
            ("*", Err(NotAuthorityForm)),
            ("", Err(Empty)),
            ("[::1]:443", Ok(("[::1]", 443))),
            ("[0:0:0:0:0:0:0:1]:443", Ok(("[::1]", 443))),
            ("[2001:DB8::1]:8443", Ok(("[2001:db8::1]", 8443))),
            ("::1:443", Err(BadIpv6)),
            ("[fe80::1%25eth0]:443", Err(BadCharacter)),
            ("[::1]", Err(MissingPort)),
            ("[::1]x:443", Err(BadIpv6)),
            ("[1.2.3.4]:443", Err(BadIpv6)),
            ("[::1:443", Err(BadIpv6)),
            ("127.0.0.1:443", Ok(("127.0.0.1", 443))),
            ("0177.0.0.1:443", Err(NumericHost)),
            ("0x7f.1:443", Err(NumericHost)),
            ("0x7f000001:443", Err(NumericHost)),
            ("2130706433:443", Err(NumericHost)),
            ("127.1:443", Err(NumericHost)),
            ("1.2.3.4.5:443", Err(NumericHost)),
            ("1.2.3.example.com:443", Ok(("1.2.3.example.com", 443))),
            ("_dmarc.example.com:443", Ok(("_dmarc.example.com", 443))),
            (
                "xn--pi-7ia.openai.com:443",
                Ok(("xn--pi-7ia.openai.com", 443)),
            ),
            (
                "XN--PI-7IA.openai.com:443",
                Ok(("xn--pi-7ia.openai.com", 443)),
            ),
            ("-api.openai.com:443", Err(BadHost)),
            ("api-.openai.com:443", Err(BadHost)),
            ("localhost:443", Ok(("localhost", 443))),
            (&long_label, Err(BadHost)),
            (&ok_label, Ok((&ok_label[..67], 443))),
            (&long_name, Err(BadHost)),
        ];
        assert!(cases.len() >= 40);
        for (input, expected) in &cases {
            let got = Target::parse(input);
            let got_view = got
                .as_ref()
                .map(|t| (t.host.to_string(), t.port))
                .map_err(Clone::clone);
            let want_view = expected.clone().map(|(h, p)| (h.to_string(), p));
            assert_eq!(got_view, want_view, "input {input:?}");
            if let Ok(t) = got {
                assert_eq!(
                    Target::parse(&t.key()),
                    Ok(t.clone()),
                    "key round-trips for {input:?}"
                );
            }
        }
    }

    #[test]
    fn default_port_and_bare_hosts() {
        let t = Target::parse_with_default_port("api.openai.com", 443).unwrap();
        assert_eq!(t.key(), "api.openai.com:443");
        assert_eq!(
            Target::parse_with_default_port("API.openai.com:8443", 443)
                .unwrap()
                .key(),
            "api.openai.com:8443"
        );
        assert_eq!(
            Target::parse_with_default_port("[::1]", 80).unwrap().key(),
            "[::1]:80"
        );
        assert_eq!(Target::parse_with_default_port("x.com:", 443), Err(BadPort));
        assert_eq!(
            Host::parse("Example.COM."),
            Ok(Host::Domain("example.com".into()))
        );
        assert_eq!(Host::parse("[::1]").unwrap().to_string(), "[::1]");
        assert_eq!(
            Host::parse("10.0.0.1").unwrap(),
            Host::Ip("10.0.0.1".parse().unwrap())
        );
        assert!(Host::parse("::1").is_err());
        assert!(Host::parse("a b").is_err());
        assert!(Host::parse("").is_err());
    }

    #[test]
    fn short_strings_never_panic() {
        let alphabet = ["a", ".", ":", "[", "]", "0", "1", "%", "-"];
        let mut inputs = vec![String::new()];
        for _ in 0..3 {
            let next: Vec<String> = inputs
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            inputs.extend(next);
        }
        for s in &inputs {
            let _ = Target::parse(s);
            let _ = Target::parse_with_default_port(s, 443);
            let _ = Host::parse(s);
        }
    }
}
