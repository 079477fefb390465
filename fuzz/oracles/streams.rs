//! What the usage oracles share: running a tap over chunkings of an input, the reference SSE
//! framing, and the shape every parsed usage must have.

use super::{Outcome, Violation};
use aibridge_proxy::usage::sse::{Event, SseDecoder};
use aibridge_proxy::usage::{Api, Usage, UsageTap, MAX_PARSED_BYTES};

pub(super) const SSE_TYPE: Option<&str> = Some("text/event-stream");
pub(super) const JSON_TYPE: Option<&str> = Some("application/json");

/// One API's stream oracle: whole input vs several chunkings (byte by byte, cuts chosen by the
/// input's own bytes, and for short inputs every two-way split), each compared on the usage and
/// on the decoded events against [`reference_events`]; `finish(true)` and `finish(false)` agree
/// (SSE has no length to be short of).
pub(super) fn check_stream(api: Api, data: &[u8]) -> Outcome {
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
pub(super) fn check_usage_shape(api: Api, usage: &Usage) -> Outcome {
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

pub(super) fn run_tap(
    api: Api,
    content_type: Option<&str>,
    chunks: &[&[u8]],
    complete: bool,
) -> Usage {
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
pub(super) fn chunkings(data: &[u8]) -> Vec<Vec<&[u8]>> {
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
