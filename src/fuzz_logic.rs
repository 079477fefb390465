//! Fuzz oracles: one function per fuzz target in `fuzz/`, each checking invariants of a parser
//! on arbitrary bytes rather than only "it did not panic".
//!
//! The targets in `fuzz/fuzz_targets/` are two-line shims into these functions, and
//! `tests/it/fuzz_corpus.rs` replays every committed corpus file through them on each
//! `cargo test` (Envoy's corpus-as-regression rule), so the module is compiled always, not only
//! under `cfg(fuzzing)`. A broken invariant is returned as a [`Violation`] (the shims turn it
//! into a panic, which libFuzzer reports as a crash); a panic inside the parsers themselves is a
//! bug the fuzzer reports the same way.
//!
//! Inputs are plain bytes, so corpus files are readable: a CONNECT target, a header value, an
//! SSE transcript, a JSON body, a base URL. Where an oracle needs choices (how to chunk a
//! stream), it derives them from the input itself.

use crate::config::AuthMode;
use crate::provider::{self, BaseUrl};
use crate::proxy::auth::{self, AuthError};
use crate::proxy::target::{Host, Target, TargetError};
use crate::router::Snapshot;
use crate::usage::sse::{Event, SseDecoder};
use crate::usage::{Api, Usage, UsageTap, MAX_PARSED_BYTES};
use base64::Engine;
use http::header::{HeaderMap, HeaderValue, PROXY_AUTHORIZATION};
use std::fmt;

/// A broken invariant: which one, and on what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Violation {}

/// The outcome of one oracle run.
pub type Outcome = Result<(), Violation>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(Violation(format!($($msg)+)));
        }
    };
}

macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($msg:tt)+) => {
        match (&$left, &$right) {
            (l, r) => {
                if l != r {
                    return Err(Violation(format!(
                        "{}: left {:?} != right {:?}",
                        format!($($msg)+),
                        l,
                        r
                    )));
                }
            }
        }
    };
}

/// Turn a broken invariant into a panic, which is how libFuzzer learns of it (the fuzz shims
/// call this; the corpus replay test reports violations itself).
#[allow(clippy::panic)]
pub fn check(outcome: Outcome) {
    if let Err(v) = outcome {
        panic!("fuzz invariant broken: {v}");
    }
}

/// An oracle: one fuzz input in, whether every invariant held.
pub type Oracle = fn(&[u8]) -> Outcome;

/// Names of the fuzz targets, in the order of `fuzz/Cargo.toml`, with their oracle.
pub const TARGETS: &[(&str, Oracle)] = &[
    ("connect_target", connect_target),
    ("proxy_authorization", proxy_authorization),
    ("sse_openai", sse_openai),
    ("sse_anthropic", sse_anthropic),
    ("usage_json", usage_json),
    ("base_url", base_url),
];

// === connect_target ===

/// CONNECT authority parsing ([`Target::parse`] and friends). The input is the request-target
/// (invalid UTF-8 is read lossily: hyper hands over `&str`, and U+FFFD must be refused too).
///
/// Invariants: ASCII case never changes the result; a parsed target's key is lowercase, has a
/// port in 1..=65535 and re-parses to the same target (also through `Host::parse`, the
/// default-port parser and the intercept-host parser); one trailing dot is the same name, two
/// are refused; the default-port parser agrees with the strict one whenever a port is given.
pub fn connect_target(data: &[u8]) -> Outcome {
    let s = String::from_utf8_lossy(data);
    let s = s.as_ref();
    let strict = Target::parse(s);
    ensure_eq!(
        Target::parse(&s.to_ascii_uppercase()),
        strict,
        "upper-casing {s:?} changed the result"
    );
    ensure_eq!(
        Target::parse(&s.to_ascii_lowercase()),
        strict,
        "lower-casing {s:?} changed the result"
    );
    let defaulted = Target::parse_with_default_port(s, 443);
    match &strict {
        Ok(t) => {
            check_target(t, s)?;
            ensure_eq!(
                defaulted.as_ref(),
                Ok(t),
                "default-port parse of {s:?} disagrees"
            );
        }
        Err(TargetError::MissingPort) => {
            if let Ok(t) = &defaulted {
                ensure_eq!(t.port, 443, "default port not used for {s:?}");
                check_target(t, s)?;
            }
        }
        Err(_) => {}
    }
    if let Ok(t) = &defaulted {
        ensure_eq!(
            Target::parse(&t.key()).as_ref(),
            Ok(t),
            "key of default-port parse of {s:?}"
        );
    }
    if let Ok(h) = Host::parse(s) {
        ensure_eq!(
            defaulted.as_ref().map(|t| &t.host),
            Ok(&h),
            "Host::parse({s:?}) accepted what the target parser did not"
        );
    }
    Ok(())
}

/// Everything a successfully parsed target must satisfy.
fn check_target(t: &Target, input: &str) -> Outcome {
    ensure!(t.port != 0, "port 0 from {input:?}");
    let key = t.key();
    ensure!(
        key.bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && !b.is_ascii_uppercase()),
        "key {key:?} of {input:?} is not lowercase visible ASCII"
    );
    ensure_eq!(
        Target::parse(&key).as_ref(),
        Ok(t),
        "key {key:?} of {input:?} does not re-parse"
    );
    let host = t.host.to_string();
    ensure_eq!(
        Host::parse(&host).as_ref(),
        Ok(&t.host),
        "host {host:?} of {input:?} does not re-parse"
    );
    ensure_eq!(
        provider::parse_intercept_host(&key).as_ref(),
        Ok(t),
        "intercept-host parse of key {key:?}"
    );
    if let Host::Domain(name) = &t.host {
        ensure!(
            !name.is_empty() && name.len() <= 253 && !name.ends_with('.'),
            "domain {name:?} from {input:?}"
        );
        ensure!(
            name.split('.').all(|l| !l.is_empty() && l.len() <= 63),
            "label bounds in {name:?}"
        );
        let dotted = format!("{name}.:{}", t.port);
        ensure_eq!(
            Target::parse(&dotted).as_ref(),
            Ok(t),
            "one trailing dot must name the same host"
        );
        let two_dots = format!("{name}..:{}", t.port);
        ensure!(
            Target::parse(&two_dots).is_err(),
            "two trailing dots accepted: {two_dots:?}"
        );
    }
    Ok(())
}

// === proxy_authorization ===

/// `Proxy-Authorization` parsing ([`auth::basic_password`]) and its use in
/// [`auth::authenticate`]. The input is the header value.
///
/// Invariants: an accepted credential has a non-empty password and fits the length bound;
/// re-encoding that password under any user label and any scheme case gives it back; the
/// scheme's case never matters; `authenticate` fails exactly as the parser does (with an empty
/// token table an accepted credential is `Unknown`), two headers are always `Ambiguous`, and
/// `--auth none` accepts anything.
pub fn proxy_authorization(data: &[u8]) -> Outcome {
    let parsed = auth::basic_password(data);
    if let Ok(password) = &parsed {
        ensure!(!password.is_empty(), "empty password accepted");
        ensure!(data.len() <= 4096, "over-long value accepted");
        let after_first_colon = format!(":{password}");
        for (scheme, user, expect) in [
            ("Basic", "agent", password.as_str()),
            ("basic", "", password.as_str()),
            // The password is everything after the *first* colon.
            ("BASIC", "u:", after_first_colon.as_str()),
        ] {
            let encoded = base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{password}").as_bytes());
            let again = format!("{scheme} {encoded}");
            if again.len() <= 4096 {
                ensure_eq!(
                    auth::basic_password(again.as_bytes()),
                    Ok(expect.to_string()),
                    "re-encoded credential with scheme {scheme} and user {user:?}"
                );
            }
        }
    }
    // The scheme is case-insensitive: flipping its case never changes the answer (the rebuilt
    // value is the trimmed one, so only inputs within the length bound compare).
    if let (Ok(text), true) = (std::str::from_utf8(data), data.len() <= 4096) {
        let trimmed = text.trim();
        if let Some((scheme, rest)) = trimmed.split_once(' ') {
            for flipped in [scheme.to_ascii_uppercase(), scheme.to_ascii_lowercase()] {
                let value = format!("{flipped} {rest}");
                ensure_eq!(
                    auth::basic_password(value.as_bytes()),
                    parsed,
                    "scheme case of {trimmed:?}"
                );
            }
        }
    }
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let snapshot = Snapshot::empty();
        let mut headers = HeaderMap::new();
        headers.insert(PROXY_AUTHORIZATION, value.clone());
        let expected = match &parsed {
            Ok(_) => AuthError::Unknown,
            Err(e) => *e,
        };
        ensure_eq!(
            auth::authenticate(&headers, &snapshot, AuthMode::Token).err(),
            Some(expected),
            "authenticate disagrees with basic_password"
        );
        ensure!(
            auth::authenticate(&headers, &snapshot, AuthMode::None).is_ok(),
            "--auth none refused a request"
        );
        headers.append(PROXY_AUTHORIZATION, value);
        ensure_eq!(
            auth::authenticate(&headers, &snapshot, AuthMode::Token).err(),
            Some(AuthError::Ambiguous),
            "two Proxy-Authorization headers"
        );
    }
    Ok(())
}

// === usage parsers ===

const SSE_TYPE: Option<&str> = Some("text/event-stream");
const JSON_TYPE: Option<&str> = Some("application/json");

/// OpenAI chat completions and Responses SSE: the input is a transcript, parsed as both.
///
/// Invariants (see [`check_stream`]): the usage never depends on how the bytes were chunked,
/// and the events match a whole-input reference framing.
pub fn sse_openai(data: &[u8]) -> Outcome {
    check_stream(Api::OpenaiChat, data)?;
    check_stream(Api::OpenaiResponses, data)
}

/// Anthropic messages SSE: the input is a transcript. Same invariants as [`sse_openai`].
pub fn sse_anthropic(data: &[u8]) -> Outcome {
    check_stream(Api::AnthropicMessages, data)
}

/// Non-streaming JSON bodies, parsed for all three APIs.
///
/// Invariants: chunking never matters; a body that ended early yields nothing; a complete body
/// yields a terminal outcome exactly when it is valid JSON, and nothing otherwise; `Other`
/// requests are never parsed; the OpenAI usage shape holds (see [`check_usage_shape`]).
///
/// "Valid JSON" is what a `serde_json::Value` accepts. A number beyond `f64` range (`1e999`) is
/// JSON by the grammar but not by `Value`; the typed parser skips it in a field it does not read
/// and refuses it in one it does, so for such documents either answer is accepted (found by the
/// fuzzer: an unknown field holding `922372036854e775807`).
pub fn usage_json(data: &[u8]) -> Outcome {
    let valid_json = serde_json::from_slice::<serde_json::Value>(data).is_ok();
    let grammatical = serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok();
    let out_of_range = grammatical && !valid_json;
    for api in [
        Api::OpenaiChat,
        Api::OpenaiResponses,
        Api::AnthropicMessages,
    ] {
        let whole = run_tap(api, JSON_TYPE, &[data], true);
        check_usage_shape(api, &whole)?;
        if !out_of_range {
            ensure_eq!(
                whole.terminal.is_some(),
                valid_json,
                "{api:?}: terminal outcome vs valid JSON"
            );
        }
        if !grammatical {
            ensure_eq!(whole, Usage::default(), "{api:?}: usage from invalid JSON");
        }
        for chunks in chunkings(data) {
            ensure_eq!(
                run_tap(api, JSON_TYPE, &chunks, true),
                whole,
                "{api:?}: JSON usage depends on chunking ({} chunks)",
                chunks.len()
            );
        }
        ensure_eq!(
            run_tap(api, JSON_TYPE, &[data], false),
            Usage::default(),
            "{api:?}: a cut JSON body must yield nothing"
        );
    }
    ensure_eq!(
        run_tap(Api::Other, JSON_TYPE, &[data], true),
        Usage::default(),
        "Other is never parsed"
    );
    Ok(())
}

/// One API's stream oracle: whole input vs several chunkings (byte by byte, cuts chosen by the
/// input's own bytes, and for short inputs every two-way split), each compared on the usage and
/// on the decoded events against [`reference_events`]; `finish(true)` and `finish(false)` agree
/// (SSE has no length to be short of).
fn check_stream(api: Api, data: &[u8]) -> Outcome {
    let whole = run_tap(api, SSE_TYPE, &[data], true);
    check_usage_shape(api, &whole)?;
    ensure_eq!(
        run_tap(api, SSE_TYPE, &[data], false),
        whole,
        "{api:?}: complete flag changed SSE usage"
    );
    ensure_eq!(
        run_tap(api, Some("Text/Event-Stream; charset=utf-8"), &[data], true),
        whole,
        "{api:?}: content type is case-insensitive"
    );
    let reference = reference_events(data);
    for chunks in chunkings(data) {
        ensure_eq!(
            run_tap(api, SSE_TYPE, &chunks, true),
            whole,
            "{api:?}: SSE usage depends on chunking ({} chunks)",
            chunks.len()
        );
        ensure_eq!(
            decode(&chunks),
            reference,
            "{api:?}: SSE events differ from the reference framing ({} chunks)",
            chunks.len()
        );
    }
    Ok(())
}

/// OpenAI usage is stored uncached: input and cache-read counts come together (never one
/// without the other) and there is no cache-write count.
fn check_usage_shape(api: Api, usage: &Usage) -> Outcome {
    if matches!(api, Api::OpenaiChat | Api::OpenaiResponses) {
        ensure_eq!(
            usage.input_tokens.is_some(),
            usage.cache_read_tokens.is_some(),
            "{api:?}: input and cache-read counts come together"
        );
        ensure_eq!(usage.cache_write_tokens, None, "{api:?}: no cache writes");
    }
    Ok(())
}

fn run_tap(api: Api, content_type: Option<&str>, chunks: &[&[u8]], complete: bool) -> Usage {
    let mut tap = UsageTap::new(api, content_type);
    for c in chunks {
        tap.feed(c);
    }
    tap.finish(complete)
}

fn decode(chunks: &[&[u8]]) -> Vec<Event> {
    let mut decoder = SseDecoder::new(MAX_PARSED_BYTES);
    let mut out = Vec::new();
    for c in chunks {
        decoder.feed(c, &mut |e| out.push(e.clone()));
    }
    out
}

/// Inputs up to this long are also split at every position (quadratic, so bounded).
const EVERY_SPLIT_MAX: usize = 256;

/// The chunkings every stream oracle compares with the whole input.
fn chunkings(data: &[u8]) -> Vec<Vec<&[u8]>> {
    let mut out = vec![data.chunks(1).collect::<Vec<_>>()];
    // Cuts chosen by the data: after each byte where a running FNV-1a hash says so, so the
    // fuzzer steers the boundaries (a CR at the end of a chunk, a split UTF-8 sequence) by
    // mutating the input.
    let mut cuts = Vec::new();
    let mut hash: u32 = 0x811c_9dc5;
    for (i, b) in data.iter().enumerate() {
        hash = (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193);
        if hash % 5 == 0 {
            cuts.push(i + 1);
        }
    }
    out.push(split_at(data, &cuts));
    if data.len() <= EVERY_SPLIT_MAX {
        for i in 1..data.len() {
            out.push(vec![&data[..i], &data[i..]]);
        }
    }
    // Empty chunks are legal (a zero-length data frame) and must change nothing.
    out.push(vec![&data[..0], data, &data[data.len()..]]);
    out
}

fn split_at<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for &cut in cuts {
        if cut > start && cut <= data.len() {
            chunks.push(&data[start..cut]);
            start = cut;
        }
    }
    chunks.push(&data[start..]);
    chunks
}

/// A deliberately simple, whole-input event-stream framing with the decoder's rules: lines end
/// at CRLF, LF or CR; an unterminated last line is not a line; `:` starts a comment; one space
/// after the field's colon is dropped; `data` lines join with LF; a blank line dispatches an
/// event that has data; lines are read as lossy UTF-8 (no BOM handling, as in the decoder).
pub fn reference_events(data: &[u8]) -> Vec<Event> {
    let mut events = Vec::new();
    let (mut event, mut buf, mut lines) = (String::new(), String::new(), 0usize);
    let mut start = 0;
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        if b == b'\n' || b == b'\r' {
            let line = String::from_utf8_lossy(&data[start..i]);
            if b == b'\r' && data.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
            start = i + 1;
            if line.is_empty() {
                if lines > 0 {
                    events.push(Event {
                        event: std::mem::take(&mut event),
                        data: std::mem::take(&mut buf),
                    });
                }
                event.clear();
                buf.clear();
                lines = 0;
            } else if !line.starts_with(':') {
                let (field, value) = match line.split_once(':') {
                    Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                    None => (line.as_ref(), ""),
                };
                if field == "data" {
                    if lines > 0 {
                        buf.push('\n');
                    }
                    buf.push_str(value);
                    lines += 1;
                } else if field == "event" {
                    event = value.to_string();
                }
            }
        }
        i += 1;
    }
    events
}

// === base_url ===

/// Provider base URLs ([`BaseUrl::parse`], [`BaseUrl::join`]) and intercept hosts. The input is
/// a base URL, optionally followed by a newline and a request path-and-query.
///
/// Invariants: an accepted base URL is http or https (as written, case aside), bounded, with a
/// host and no userinfo, query or fragment; its target key re-parses; it re-parses from its own
/// joined form to the same target, scheme and joins; joining any valid path-and-query keeps the
/// scheme and authority (a request path can never move the upstream) and keeps the prefix. An
/// accepted intercept host normalizes to a lowercase canonical spelling that is a fixed point.
pub fn base_url(data: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(data);
    let (url, path) = match text.split_once('\n') {
        Some((u, p)) => (u, Some(p)),
        None => (text.as_ref(), None),
    };
    if let Ok(base) = BaseUrl::parse(url) {
        check_base(&base, url, path)?;
    }
    if let Ok(t) = provider::parse_intercept_host(url) {
        let hosts = [url.to_string(), url.to_string()];
        let normalized = provider::normalize_intercept_hosts(&hosts)
            .map_err(|e| Violation(format!("{url:?} parsed but did not normalize: {e}")))?;
        ensure_eq!(normalized.len(), 1, "duplicates of {url:?} not removed");
        let canonical = &normalized[0];
        ensure!(
            !canonical.bytes().any(|b| b.is_ascii_uppercase()),
            "canonical host {canonical:?} is not lowercase"
        );
        ensure_eq!(
            provider::normalize_intercept_hosts(&normalized).as_ref(),
            Ok(&normalized),
            "normalizing {canonical:?} again changed it"
        );
        ensure_eq!(
            provider::parse_intercept_host(canonical).as_ref(),
            Ok(&t),
            "canonical host {canonical:?} names another target"
        );
    }
    Ok(())
}

fn check_base(base: &BaseUrl, url: &str, path: Option<&str>) -> Outcome {
    ensure!(url.len() <= 2048, "over-long base URL accepted");
    ensure!(
        !url.contains('?') && !url.contains('#'),
        "query or fragment accepted in {url:?}"
    );
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    ensure!(
        scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"),
        "scheme {scheme:?} accepted"
    );
    let root = base
        .join("/")
        .map_err(|e| Violation(format!("join(\"/\") failed for {url:?}: {e}")))?;
    let joined_scheme = root.scheme_str().unwrap_or("");
    ensure!(
        joined_scheme.eq_ignore_ascii_case(scheme),
        "joined scheme {joined_scheme:?} for {url:?}"
    );
    ensure_eq!(
        base.is_https(),
        scheme.eq_ignore_ascii_case("https"),
        "is_https of {url:?}"
    );
    let authority = root
        .authority()
        .ok_or_else(|| Violation(format!("no authority in the join of {url:?}")))?;
    ensure!(
        !authority.as_str().contains('@'),
        "userinfo accepted in {url:?}"
    );
    ensure!(
        !authority.host().is_empty(),
        "empty host accepted in {url:?}"
    );
    let target = base.target();
    ensure!(target.port != 0, "port 0 from {url:?}");
    ensure_eq!(
        Target::parse(&target.key()).as_ref(),
        Ok(target),
        "target key of {url:?}"
    );
    let root_text = root.to_string();
    // The joined form adds a `/`; at the length bound it may no longer be accepted.
    if root_text.len() <= 2048 {
        let again = BaseUrl::parse(&root_text)
            .map_err(|e| Violation(format!("{root} (from {url:?}) does not re-parse: {e}")))?;
        ensure_eq!(again.target(), target, "re-parsed target of {url:?}");
        ensure_eq!(again.is_https(), base.is_https(), "re-parsed scheme");
        let sample = "/v1/chat/completions?x=1";
        ensure_eq!(
            again.join(sample).ok(),
            base.join(sample).ok(),
            "joins differ after re-parse of {url:?}"
        );
    }
    let prefix = root.path().trim_end_matches('/');
    if let Some(path) = path {
        let candidate = format!("/{path}");
        if let Ok(pq) = candidate.parse::<http::uri::PathAndQuery>() {
            let joined = base.join(pq.as_str()).map_err(|e| {
                Violation(format!(
                    "join of valid {candidate:?} onto {url:?} failed: {e}"
                ))
            })?;
            ensure_eq!(joined.scheme(), root.scheme(), "join changed the scheme");
            ensure_eq!(
                joined.authority(),
                Some(authority),
                "a request path moved the upstream"
            );
            ensure!(
                joined.path().starts_with(prefix),
                "join of {candidate:?} lost the prefix {prefix:?}"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oracles_accept_known_good_inputs() {
        let cases: &[(&str, &[u8])] = &[
            ("connect_target", b"API.OpenAI.com.:443"),
            ("connect_target", b"[::ffff:1.2.3.4]:443"),
            ("proxy_authorization", b"Basic YWdlbnQ6dG9r"),
            ("proxy_authorization", b"Bearer x"),
            ("sse_openai", b"data: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\r\n\r\ndata: [DONE]\r\r"),
            ("sse_anthropic", b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
            ("usage_json", br#"{"model":"m","usage":{"input_tokens":1,"output_tokens":2}}"#),
            ("base_url", b"https://API.example.com:8443/v1/\n//evil.example/x?y"),
        ];
        for (name, input) in cases {
            let (_, oracle) = TARGETS.iter().find(|(n, _)| n == name).unwrap();
            assert_eq!(
                oracle(input),
                Ok(()),
                "{name} on {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn reference_framing_matches_known_transcript() {
        let events =
            reference_events(b": c\r\nevent: a\r\ndata: one\r\ndata:two\r\n\r\ndata: x\rdata");
        assert_eq!(
            events,
            vec![Event {
                event: "a".into(),
                data: "one\ntwo".into()
            }]
        );
    }

    #[test]
    fn violations_are_reported_not_hidden() {
        // The oracle machinery itself must be able to fail.
        let check = |x: u8| -> Outcome {
            ensure_eq!(x, 1, "x must be one");
            Ok(())
        };
        assert!(check(1).is_ok());
        let err = check(2).unwrap_err();
        assert!(err.0.contains("x must be one"), "{err}");
    }
}
