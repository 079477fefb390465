//! Request targets: the request-target of a `CONNECT` (authority form `host:port`, RFC 9112
//! §3.2.3) or the authority of an absolute-form URI, turned into a normalized [`Target`].
//!
//! This is the only place host names are normalized (ASCII lowercase, one trailing dot removed,
//! IPv6 in brackets), so router keys and leaf-certificate names always agree. Anything that is
//! not a plain DNS name or IP literal is refused rather than repaired: no percent-decoding, no
//! userinfo, no numeric host spellings (`2130706433`, `0177.0.0.1`, `0x7f.1`) that resolvers
//! read as IPv4 but policy checks might not.
//!
//! The module is pure (no I/O), bounds its work by refusing long input up front, and never
//! panics on any input.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest input considered; anything longer is refused before any other work.
const MAX_INPUT: usize = 300;
/// Longest DNS name (RFC 1035 §2.3.4), without the trailing dot.
const MAX_NAME: usize = 253;
/// Longest DNS label (RFC 1035 §2.3.4).
const MAX_LABEL: usize = 63;
/// Longest canonical port spelling ("65535").
const MAX_PORT_DIGITS: usize = 5;

/// A host, normalized: lowercase ASCII domain without trailing dot, or an IP literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Domain(String),
    Ip(IpAddr),
}

impl Host {
    /// Parse and normalize a host alone (no port), with the same rules as [`Target::parse`].
    /// IPv6 must be bracketed (`[::1]`); any `:` outside brackets is refused as [`TargetError::BadIpv6`].
    pub fn parse(s: &str) -> Result<Host, TargetError> {
        check_input(s)?;
        match split_authority(s)? {
            (raw, None) => parse_raw_host(raw),
            // A colon after the host is either a port or an unbracketed IPv6: neither is a host.
            (_, Some(_)) => Err(TargetError::BadIpv6),
        }
    }

    /// Whether this is an IP literal.
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

/// A normalized `host:port`; the port is always 1..=65535.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: Host,
    pub port: u16,
}

impl Target {
    /// Parse an authority-form target `host:port`; the port is required.
    pub fn parse(s: &str) -> Result<Target, TargetError> {
        parse_target(s, None)
    }

    /// Parse `host` or `host:port`, using `default_port` when the port is absent (intercept
    /// hosts, URI authorities). A `default_port` of 0 is refused as [`TargetError::BadPort`]
    /// so that every `Target` has a usable port.
    pub fn parse_with_default_port(s: &str, default_port: u16) -> Result<Target, TargetError> {
        parse_target(s, Some(default_port))
    }

    /// The router key, `host:port` (IPv6 bracketed), e.g. `api.openai.com:443`, `[::1]:443`.
    pub fn key(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Why a target was refused.
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
    /// A static snake_case label for metrics and logs (bounded cardinality).
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

/// The host part of an authority, before validation.
#[derive(Debug, Clone, Copy)]
enum RawHost<'a> {
    /// The contents between `[` and `]`.
    Bracketed(&'a str),
    /// Everything before the port separator.
    Plain(&'a str),
}

/// Shared body of both `Target` parsers; `default_port` is `None` when the port is required.
fn parse_target(s: &str, default_port: Option<u16>) -> Result<Target, TargetError> {
    check_input(s)?;
    let (raw, port) = split_authority(s)?;
    let host = parse_raw_host(raw)?;
    let port = match (port, default_port) {
        (Some(p), _) => parse_port(p)?,
        (None, Some(0)) => return Err(TargetError::BadPort),
        (None, Some(d)) => d,
        (None, None) => return Err(TargetError::MissingPort),
    };
    Ok(Target { host, port })
}

/// Refuse what no authority may contain, before any splitting. Checks run in a fixed order so
/// each input gets one stable error.
fn check_input(s: &str) -> Result<(), TargetError> {
    if s.is_empty() {
        return Err(TargetError::Empty);
    }
    if s.len() > MAX_INPUT {
        return Err(TargetError::BadHost);
    }
    // Visible ASCII only: no whitespace, controls or non-ASCII. `%` is refused too: percent-
    // decoding would give two spellings of one host, so none is ever done.
    if !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) || s.contains('%') {
        return Err(TargetError::BadCharacter);
    }
    if s.contains('@') {
        return Err(TargetError::Userinfo);
    }
    // Paths, queries, fragments, `*` (asterisk form) and schemes (`x://`, caught by `/`).
    if s.bytes().any(|b| matches!(b, b'/' | b'?' | b'#' | b'*')) {
        return Err(TargetError::NotAuthorityForm);
    }
    Ok(())
}

/// Split into host and optional port text: after the `]` for bracketed IPv6, else at the last
/// colon. Only the bracket structure is checked here.
fn split_authority(s: &str) -> Result<(RawHost<'_>, Option<&str>), TargetError> {
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or(TargetError::BadIpv6)?;
        if after.is_empty() {
            return Ok((RawHost::Bracketed(inner), None));
        }
        let port = after.strip_prefix(':').ok_or(TargetError::BadIpv6)?;
        return Ok((RawHost::Bracketed(inner), Some(port)));
    }
    match s.rsplit_once(':') {
        Some((host, port)) => Ok((RawHost::Plain(host), Some(port))),
        None => Ok((RawHost::Plain(s), None)),
    }
}

fn parse_raw_host(raw: RawHost<'_>) -> Result<Host, TargetError> {
    match raw {
        RawHost::Bracketed(inner) => parse_ipv6(inner),
        // A colon left in the host means an unbracketed IPv6 literal (or garbage like it).
        RawHost::Plain(host) if host.contains(':') => Err(TargetError::BadIpv6),
        RawHost::Plain(host) => parse_name(host),
    }
}

/// Bracket contents must be a plain IPv6 address. `Ipv6Addr` refuses IPv4 (`[1.2.3.4]`) and
/// zone ids; `%` never gets this far anyway.
fn parse_ipv6(inner: &str) -> Result<Host, TargetError> {
    inner
        .parse::<Ipv6Addr>()
        .map(|ip| Host::Ip(IpAddr::V6(ip)))
        .map_err(|_| TargetError::BadIpv6)
}

/// A dotted-quad IPv4 address or a DNS name, normalized.
fn parse_name(raw: &str) -> Result<Host, TargetError> {
    // Exactly one trailing dot is the root label; a second one leaves an empty label below.
    let name = raw.strip_suffix('.').unwrap_or(raw).to_ascii_lowercase();
    // `Ipv4Addr` accepts only canonical dotted-quad (no leading zeros, no short forms).
    if let Ok(v4) = name.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(v4)));
    }
    validate_name(&name)?;
    if looks_numeric(&name) {
        return Err(TargetError::NumericHost);
    }
    Ok(Host::Domain(name))
}

/// Length and label syntax of an already-lowercased name without trailing dot.
fn validate_name(name: &str) -> Result<(), TargetError> {
    if name.is_empty() || name.len() > MAX_NAME || !name.split('.').all(valid_label) {
        return Err(TargetError::BadHost);
    }
    Ok(())
}

/// 1..=63 bytes of `[a-z0-9_-]`, not starting or ending with `-`. Underscores are allowed for
/// service names like `_dmarc`; uppercase is already gone.
fn valid_label(label: &str) -> bool {
    (1..=MAX_LABEL).contains(&label.len())
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Names resolvers (inet_aton, WHATWG URL) may read as IPv4 although they are not dotted-quad:
/// an all-digit last label (`2130706433`, `127.1`, `0177.0.0.1`, `1.2.3.4.5`; no TLD is
/// numeric), or a `0x` label in a name made only of hex digits, dots and `x` (`0x7f000001`).
fn looks_numeric(name: &str) -> bool {
    let last_all_digits = name
        .rsplit('.')
        .next()
        .is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()));
    let hex_form = name.split('.').any(|l| l.starts_with("0x"))
        && name
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b'x');
    last_all_digits || hex_form
}

/// Only canonical decimal 1..=65535: 1–5 digits, no sign, no leading zero.
fn parse_port(p: &str) -> Result<u16, TargetError> {
    let canonical = (1..=MAX_PORT_DIGITS).contains(&p.len())
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

#[cfg(test)]
mod tests {
    use super::*;
    use TargetError::*;

    /// What a successful parse looks like: the displayed host and the port.
    type Expect = Result<(String, u16), TargetError>;
    type Row = (String, Expect);

    fn ok(input: &str, host: &str, port: u16) -> Row {
        (input.to_string(), Ok((host.to_string(), port)))
    }

    fn err(input: &str, e: TargetError) -> Row {
        (input.to_string(), Err(e))
    }

    /// Every rule of `Target::parse`, one or more rows each.
    fn authority_rows() -> Vec<Row> {
        let label63 = "a".repeat(63);
        let label64 = "a".repeat(64);
        // 63 + 1 + 63 + 1 + 63 + 1 + 61 = 253 and 254 bytes.
        let name253 = format!("{label63}.{label63}.{label63}.{}", "b".repeat(61));
        let name254 = format!("{label63}.{label63}.{label63}.{}", "b".repeat(62));
        vec![
            // Domains and normalization.
            ok("api.openai.com:443", "api.openai.com", 443),
            ok("API.OpenAI.COM:443", "api.openai.com", 443),
            ok("api.openai.com.:443", "api.openai.com", 443),
            err("api.openai.com..:443", BadHost),
            err(".api.openai.com:443", BadHost),
            err("api..openai.com:443", BadHost),
            err(".:443", BadHost),
            err(":443", BadHost),
            ok("localhost:443", "localhost", 443),
            ok("_dmarc.example.com:443", "_dmarc.example.com", 443),
            ok("xn--pi-7ia.openai.com:443", "xn--pi-7ia.openai.com", 443),
            ok("XN--PI-7IA.openai.com:443", "xn--pi-7ia.openai.com", 443),
            ok("a-b.example.com:443", "a-b.example.com", 443),
            err("-api.openai.com:443", BadHost),
            err("api-.openai.com:443", BadHost),
            err("api!.openai.com:443", BadHost),
            err("a]b.com:443", BadHost),
            ok(
                &format!("{label63}.com:443"),
                &format!("{label63}.com"),
                443,
            ),
            err(&format!("{label64}.com:443"), BadHost),
            ok(&format!("{name253}:443"), &name253, 443),
            ok(&format!("{name253}.:443"), &name253, 443),
            err(&format!("{name254}:443"), BadHost),
            err(&format!("{}:443", "a".repeat(MAX_INPUT)), BadHost),
            // Ports.
            err("api.openai.com", MissingPort),
            err("api.openai.com:", BadPort),
            err("api.openai.com:0", BadPort),
            ok("api.openai.com:1", "api.openai.com", 1),
            ok("api.openai.com:65535", "api.openai.com", 65535),
            err("api.openai.com:65536", BadPort),
            err("api.openai.com:99999999999", BadPort),
            err("api.openai.com:-1", BadPort),
            err("api.openai.com:+443", BadPort),
            err("api.openai.com:0443", BadPort),
            err("api.openai.com:44a", BadPort),
            err("api.openai.com:443:443", BadIpv6),
            // Characters.
            err("", Empty),
            err("api.openai.com:443 ", BadCharacter),
            err(" api.openai.com:443", BadCharacter),
            err("api.openai.com\t:443", BadCharacter),
            err("api.openai.com:443\0", BadCharacter),
            err("api.openai.com:443\r\n", BadCharacter),
            err("api.openai.com:443\x7f", BadCharacter),
            err("ápi.openai.com:443", BadCharacter),
            err("api%2eopenai.com:443", BadCharacter),
            // Userinfo and other request-target forms.
            err("user:pw@api.openai.com:443", Userinfo),
            err("@api.openai.com:443", Userinfo),
            err("https://api.openai.com:443/", NotAuthorityForm),
            err("https:api.openai.com:443/", NotAuthorityForm),
            err("/", NotAuthorityForm),
            err("*", NotAuthorityForm),
            err("api.openai.com:443?x", NotAuthorityForm),
            err("api.openai.com:443#x", NotAuthorityForm),
            // IPv6.
            ok("[::1]:443", "[::1]", 443),
            ok("[0:0:0:0:0:0:0:1]:443", "[::1]", 443),
            ok("[2001:DB8::1]:8443", "[2001:db8::1]", 8443),
            ok("[::ffff:1.2.3.4]:443", "[::ffff:1.2.3.4]", 443),
            err("::1:443", BadIpv6),
            err("::1", BadIpv6),
            err("2001:db8::1:443", BadIpv6),
            err("[fe80::1%25eth0]:443", BadCharacter),
            err("[::1]", MissingPort),
            err("[::1]:", BadPort),
            err("[::1]:0443", BadPort),
            err("[::1]x:443", BadIpv6),
            err("[::1]]:443", BadIpv6),
            err("[::1:443", BadIpv6),
            err("[]:443", BadIpv6),
            err("[1.2.3.4]:443", BadIpv6),
            err("[example.com]:443", BadIpv6),
            // IPv4 and numeric spellings of it.
            ok("127.0.0.1:443", "127.0.0.1", 443),
            ok("127.0.0.1.:443", "127.0.0.1", 443),
            ok("1.2.3.example.com:443", "1.2.3.example.com", 443),
            ok("0x.example.com:443", "0x.example.com", 443),
            err("2130706433:443", NumericHost),
            err("0177.0.0.1:443", NumericHost),
            err("010.0.0.1:443", NumericHost),
            err("0x7f.1:443", NumericHost),
            err("0X7F.0X1:443", NumericHost),
            err("127.1:443", NumericHost),
            err("0x7f000001:443", NumericHost),
            err("1.2.3.4.5:443", NumericHost),
            err("256.0.0.1:443", NumericHost),
            err("example.123:443", NumericHost),
        ]
    }

    fn view(r: &Result<Target, TargetError>) -> Expect {
        r.as_ref()
            .map(|t| (t.host.to_string(), t.port))
            .map_err(Clone::clone)
    }

    #[test]
    fn authority_form_table() {
        let rows = authority_rows();
        assert!(rows.len() >= 40, "only {} rows", rows.len());
        for (input, expected) in &rows {
            assert_eq!(&view(&Target::parse(input)), expected, "input {input:?}");
        }
    }

    #[test]
    fn key_round_trips() {
        for (input, _) in authority_rows() {
            if let Ok(t) = Target::parse(&input) {
                let key = t.key();
                assert_eq!(key, t.to_string());
                assert_eq!(Target::parse(&key), Ok(t), "key {key:?} of {input:?}");
            }
        }
    }

    #[test]
    fn default_port_and_host_table() {
        let targets: Vec<(&str, Expect)> = vec![
            ("api.openai.com", Ok(("api.openai.com".into(), 443))),
            ("API.openai.com.", Ok(("api.openai.com".into(), 443))),
            ("api.openai.com:8443", Ok(("api.openai.com".into(), 8443))),
            ("[::1]", Ok(("[::1]".into(), 443))),
            ("[::1]:80", Ok(("[::1]".into(), 80))),
            ("10.0.0.1", Ok(("10.0.0.1".into(), 443))),
            ("api.openai.com:", Err(BadPort)),
            ("api.openai.com:0", Err(BadPort)),
            ("::1", Err(BadIpv6)),
            ("[::1]x", Err(BadIpv6)),
            ("127.1", Err(NumericHost)),
            ("u@api.openai.com", Err(Userinfo)),
            ("", Err(Empty)),
        ];
        for (input, expected) in &targets {
            let got = Target::parse_with_default_port(input, 443);
            assert_eq!(&view(&got), expected, "input {input:?}");
        }
        assert_eq!(
            Target::parse_with_default_port("api.openai.com", 0),
            Err(BadPort)
        );

        let hosts: Vec<(&str, Result<Host, TargetError>)> = vec![
            ("Example.COM.", Ok(Host::Domain("example.com".into()))),
            ("[::1]", Ok(Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)))),
            (
                "10.0.0.1",
                Ok(Host::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))),
            ),
            ("::1", Err(BadIpv6)),
            ("[::1]:443", Err(BadIpv6)),
            ("example.com:443", Err(BadIpv6)),
            ("a b", Err(BadCharacter)),
            ("example..com", Err(BadHost)),
            ("0x7f000001", Err(NumericHost)),
            ("", Err(Empty)),
        ];
        for (input, expected) in &hosts {
            assert_eq!(&Host::parse(input), expected, "input {input:?}");
        }
        assert!(Host::parse("[::1]").is_ok_and(|h| h.is_ip()));
        assert!(Host::parse("example.com").is_ok_and(|h| !h.is_ip()));
    }

    #[test]
    fn reasons_are_snake_case() {
        let all = [
            Empty,
            BadCharacter,
            Userinfo,
            NotAuthorityForm,
            MissingPort,
            BadPort,
            BadHost,
            NumericHost,
            BadIpv6,
        ];
        for e in all {
            let r = e.reason();
            assert!(
                !r.is_empty()
                    && r.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            );
        }
    }

    #[test]
    fn short_strings_never_panic() {
        let alphabet = ['a', '.', ':', '[', ']', '0', '1', '%'];
        let mut inputs = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..3 {
            frontier = frontier
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            inputs.extend(frontier.iter().cloned());
        }
        assert_eq!(inputs.len(), 1 + 8 + 64 + 512);
        for s in &inputs {
            let _ = Target::parse(s);
            let _ = Target::parse_with_default_port(s, 443);
            let _ = Host::parse(s);
        }
    }
}
