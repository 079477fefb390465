//! Oracle of the `sse_openai` fuzz target.

use super::streams::check_stream;
use super::Outcome;
use aibridge_proxy::usage::Api;

/// OpenAI chat completions and Responses SSE: the input is a transcript, parsed as both.
///
/// Invariants (see [`check_stream`]): the usage never depends on how the bytes were chunked,
/// and the events match a whole-input reference framing.
pub fn sse_openai(data: &[u8]) -> Outcome {
    check_stream(Api::OpenaiChat, data)?;
    check_stream(Api::OpenaiResponses, data)
}
