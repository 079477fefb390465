//! From a finished interception record to the metrics: which errors are the upstream's, which
//! model label a record counts under, its tokens by direction. The metrics module only counts
//! what it is told; the meaning of a record stays here, beside the record's other readers.

use crate::metrics::{Metrics, RequestFinished};
use crate::store::Interception;
use std::time::Duration;

/// The `tokens_total{model}` label of models the provider does not configure: the label set
/// stays bounded whatever names traffic carries (the record keeps the real name).
pub const OTHER_MODEL: &str = "other";

/// Account one finished bridged request from its record. Tokens count for model calls only.
pub fn observe(metrics: &Metrics, r: &Interception, model_label: Option<&str>) {
    let millis = |ms: i64| Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    let model_call = r.route == "model";
    let tokens = |n: Option<i64>| {
        n.filter(|_| model_call)
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0)
    };
    metrics.request_finished(&RequestFinished {
        provider: &r.provider,
        status: u16::try_from(r.status).unwrap_or(0),
        duration: millis(r.duration_ms),
        ttfb: r.ttfb_ms.map(millis),
        upstream_failure: r.error.as_deref().filter(|e| is_upstream_failure(e)),
        model: model_label.unwrap_or(OTHER_MODEL),
        tokens: [
            ("input", tokens(r.input_tokens)),
            ("output", tokens(r.output_tokens)),
            ("cache_read", tokens(r.cache_read_tokens)),
            ("cache_write", tokens(r.cache_write_tokens)),
        ],
    });
}

/// Record errors that are the upstream's (or the path to it) failing; the client's own doings
/// (leaving, a refused model, a body too large) are not.
pub fn is_upstream_failure(reason: &str) -> bool {
    matches!(
        reason,
        "dns"
            | "connect_refused"
            | "connect_timeout"
            | "connect_error"
            | "tls"
            | "upstream_address_denied"
            | "upstream_timeout"
            | "upstream_error"
            | "upstream_reset"
            | "upstream_idle_timeout"
            | "bad_upstream_uri"
            | "bad_uri"
            | "invalid_key"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_providers_side_counts_as_an_upstream_failure() {
        for upstream in ["dns", "tls", "upstream_reset", "upstream_timeout"] {
            assert!(is_upstream_failure(upstream), "{upstream}");
        }
        for client in [
            "client_cancelled",
            "client_body_timeout",
            "model_not_allowed",
            "request_too_large",
            "shutdown",
        ] {
            assert!(!is_upstream_failure(client), "{client}");
        }
    }
}
