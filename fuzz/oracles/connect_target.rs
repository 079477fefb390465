//! Oracle of the `connect_target` fuzz target.

use super::{Outcome, Violation};
use aibridge_proxy::net::target::{Host, Target, TargetError};
use aibridge_proxy::provider;

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
