//! From a finished interception record to the metrics: which errors are the upstream's, which
//! model label a record counts under, its tokens by direction. The metrics module only counts
//! what it is told; the meaning of a record stays here, beside the record's other readers.

use crate::metrics::{Metrics, RequestFinished};
use crate::otlp::{SpanContext, SpanData, Value};
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

/// The span of a finished request, from its record (GenAI semantic conventions). Never a
/// prompt, an argument, a key or a token.
pub fn span(r: &Interception) -> SpanData {
    let trace = r.trace.as_ref();
    let context = trace.map_or_else(SpanContext::root, |t| t.context);
    let start: std::time::SystemTime = r.started_at.into();
    let operation = operation(&r.path);
    let model_call = r.route == "model";
    let requested = trace.and_then(|t| t.requested_model.clone());
    let name = match (model_call, requested.as_deref().or(r.model.as_deref())) {
        (true, Some(model)) => format!("{operation} {model}"),
        (true, None) => operation.to_string(),
        (false, _) => format!("{} {}", r.method, r.path),
    };
    let mut attributes = vec![
        ("enduser.id", Value::Str(r.user.clone())),
        ("aibridge.provider", Value::Str(r.provider.clone())),
        ("aibridge.route", Value::Str(r.route.clone())),
        ("aibridge.transport", Value::Str(r.transport.clone())),
        ("aibridge.outcome", Value::Str(r.outcome.clone())),
        ("aibridge.request_id", Value::Str(r.request_id.clone())),
        ("http.request.method", Value::Str(r.method.clone())),
        ("url.path", Value::Str(r.path.clone())),
        ("http.response.status_code", Value::Int(i64::from(r.status))),
    ];
    if let Some(system) = trace.map(|t| t.system) {
        attributes.push(("gen_ai.system", Value::Str(system.into())));
    }
    if model_call {
        attributes.push(("gen_ai.operation.name", Value::Str(operation.into())));
    }
    let strings = [
        ("gen_ai.request.model", requested),
        ("gen_ai.response.model", r.model.clone()),
    ];
    for (key, value) in strings {
        if let Some(v) = value {
            attributes.push((key, Value::Str(v)));
        }
    }
    let ints = [
        ("gen_ai.usage.input_tokens", r.input_tokens),
        ("gen_ai.usage.output_tokens", r.output_tokens),
        ("aibridge.usage.cache_read_tokens", r.cache_read_tokens),
        ("aibridge.usage.cache_write_tokens", r.cache_write_tokens),
        ("aibridge.ttfb_ms", r.ttfb_ms),
    ];
    for (key, value) in ints {
        if let Some(v) = value {
            attributes.push((key, Value::Int(v)));
        }
    }
    SpanData {
        context,
        name,
        server: true,
        start,
        end: start + Duration::from_millis(u64::try_from(r.duration_ms).unwrap_or(0)),
        attributes,
        error: r.error.clone(),
    }
}

/// The GenAI operation a model route performs.
fn operation(path: &str) -> &'static str {
    let path = path.trim_end_matches('/');
    if path.ends_with("/embeddings") {
        "embeddings"
    } else if path.ends_with("/chat/completions") || path.ends_with("/messages") {
        "chat"
    } else if path.ends_with("/completions") {
        "text_completion"
    } else if path.ends_with("/responses") || path.ends_with("/realtime") {
        "generate_content"
    } else {
        "request"
    }
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
