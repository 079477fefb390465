//! Oracle of the `usage_json` fuzz target.

use super::streams::{check_usage_shape, chunkings, run_tap, JSON_TYPE};
use super::{Outcome, Violation};
use aibridge_proxy::usage::{Api, Usage};

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
