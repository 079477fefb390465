//! Oracle of the `sse_anthropic` fuzz target.

use super::streams::check_stream;
use super::Outcome;
use aibridge_proxy::usage::Api;

/// Anthropic messages SSE: the input is a transcript. Same invariants as [`sse_openai`].
pub fn sse_anthropic(data: &[u8]) -> Outcome {
    check_stream(Api::AnthropicMessages, data)
}
