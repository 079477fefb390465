//! Oracle of the `base_url` fuzz target.

use super::{Outcome, Violation};
use aibridge_proxy::net::target::Target;
use aibridge_proxy::provider::{self, BaseUrl};

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
