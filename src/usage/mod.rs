//! Usage accounting: read the model and token counts from a provider's answer as its bytes pass.
//!
//! Tee, don't transform: the client gets the upstream's bytes as they came; a copy is fed to a
//! [`UsageTap`], which frames SSE incrementally ([`sse`]) or keeps a bounded copy of a JSON body,
//! and understands three APIs:
//! - OpenAI chat completions: usage from the last non-null `usage` (the final empty-`choices`
//!   chunk when the client asked for `include_usage`); none → recorded as missing, never guessed.
//!   Input is stored uncached (`prompt_tokens − cached_tokens`), cached tokens as cache reads.
//! - OpenAI Responses: usage from whichever terminal event arrives (`response.completed`,
//!   `.incomplete`, `.failed`), however large it is.
//! - Anthropic messages: `message_start` gives uncached input and cache read/write;
//!   `message_delta` usage is cumulative and may repeat — overwrite, never sum.
//!
//! A stream that ends before its terminal event keeps the last counts seen and is `truncated`.

mod doc;
pub mod observe;
pub mod recorder;
pub mod sse;

use crate::provider::ProviderKind;
use doc::{Doc, Presence, Tokens};
use sse::{Event, SseDecoder};

/// The largest single SSE event (or JSON body) read for usage. Larger ones pass through to the
/// client untouched but are not parsed (and are counted).
pub const MAX_PARSED_BYTES: usize = 16 * 1024 * 1024;

/// Which API a request speaks, decided from the provider kind and the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    OpenaiChat,
    OpenaiResponses,
    AnthropicMessages,
    /// Anything else (model lists, embeddings, ...): no usage parsed.
    Other,
}

impl Api {
    pub fn detect(kind: ProviderKind, path: &str) -> Api {
        let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
        match kind {
            ProviderKind::Anthropic if path.ends_with("/messages") => Api::AnthropicMessages,
            ProviderKind::Openai | ProviderKind::OpenaiCompatible
                if path.ends_with("/chat/completions") =>
            {
                Api::OpenaiChat
            }
            ProviderKind::Openai | ProviderKind::OpenaiCompatible
                if path.ends_with("/responses") =>
            {
                Api::OpenaiResponses
            }
            _ => Api::Other,
        }
    }
}

/// How a response ended, as far as usage is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Incomplete,
    Failed,
    /// The stream ended before its terminal event.
    Truncated,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Incomplete => "incomplete",
            Outcome::Failed => "failed",
            Outcome::Truncated => "truncated",
        }
    }
}

/// What was learned from one response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// The model that answered, if the response named it.
    pub model: Option<String>,
    /// Uncached input tokens.
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub cache_read_tokens: Option<i64>,
    pub cache_write_tokens: Option<i64>,
    /// Whether a terminal event (or a complete JSON body) was seen.
    pub terminal: Option<TerminalKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminalKind {
    Completed,
    Incomplete,
    Failed,
}

impl Usage {
    /// `reported` when the upstream sent token counts, else `missing`.
    pub fn source(&self) -> &'static str {
        if self.input_tokens.is_some() || self.output_tokens.is_some() {
            "reported"
        } else {
            "missing"
        }
    }

    pub fn outcome(&self) -> Outcome {
        match self.terminal {
            Some(TerminalKind::Completed) => Outcome::Completed,
            Some(TerminalKind::Incomplete) => Outcome::Incomplete,
            Some(TerminalKind::Failed) => Outcome::Failed,
            None => Outcome::Truncated,
        }
    }
}

enum Mode {
    Sse(SseDecoder),
    /// A bounded copy of a JSON body; `None` once it outgrew the bound.
    Json(Option<Vec<u8>>),
    Off,
}

/// Fed a copy of the response bytes; knows the usage when they end.
pub struct UsageTap {
    api: Api,
    mode: Mode,
    usage: Usage,
    /// Events or bodies too large to parse.
    pub skipped: u64,
}

impl UsageTap {
    /// A tap for a response of `content_type` to a request of `api`.
    pub fn new(api: Api, content_type: Option<&str>) -> Self {
        let sse =
            content_type.is_some_and(|c| c.to_ascii_lowercase().starts_with("text/event-stream"));
        let mode = match (api, sse) {
            (Api::Other, _) => Mode::Off,
            (_, true) => Mode::Sse(SseDecoder::new(MAX_PARSED_BYTES)),
            (_, false) => Mode::Json(Some(Vec::new())),
        };
        UsageTap {
            api,
            mode,
            usage: Usage::default(),
            skipped: 0,
        }
    }

    /// Feed the next piece of the body, exactly as it went to the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        let api = self.api;
        let usage = &mut self.usage;
        match &mut self.mode {
            Mode::Sse(decoder) => decoder.feed(bytes, &mut |event| apply_event(api, usage, event)),
            Mode::Json(buf) => {
                if let Some(b) = buf {
                    if b.len() + bytes.len() > MAX_PARSED_BYTES {
                        *buf = None;
                        self.skipped += 1;
                    } else {
                        b.extend_from_slice(bytes);
                    }
                }
            }
            Mode::Off => {}
        }
    }

    /// The body ended (`complete`: cleanly; otherwise it was cut). Returns what was learned.
    pub fn finish(mut self, complete: bool) -> Usage {
        match std::mem::replace(&mut self.mode, Mode::Off) {
            Mode::Json(Some(body)) if complete => {
                let (api, usage) = (self.api, &mut self.usage);
                doc::parse(&body, |d| apply_json_body(api, usage, d));
            }
            Mode::Sse(decoder) => self.skipped += decoder.skipped(),
            _ => {}
        }
        self.usage
    }
}

fn model(d: &Doc<'_>) -> Option<String> {
    d.model.as_deref().map(str::to_string)
}

/// OpenAI usage objects (chat: prompt/completion; Responses: input/output), input stored uncached.
fn apply_openai_usage(usage: &mut Usage, u: &Tokens) {
    let cached_in = |d: &Option<doc::Details>| d.as_ref().and_then(|d| d.cached_tokens);
    let (input, output, cached) = match u.prompt_tokens {
        Some(prompt) => (
            prompt,
            u.completion_tokens,
            cached_in(&u.prompt_tokens_details),
        ),
        None => (
            u.input_tokens,
            u.output_tokens,
            cached_in(&u.input_tokens_details),
        ),
    };
    // Upstream numbers are not trusted to be sane: an absurd pair must not overflow (a panic
    // in debug builds, a wrapped count in release).
    usage.input_tokens = input.map(|i| i.saturating_sub(cached.unwrap_or(0)));
    usage.output_tokens = output;
    usage.cache_read_tokens = cached.or(Some(0)).filter(|_| input.is_some());
    usage.cache_write_tokens = None;
}

/// Anthropic usage: present fields overwrite (message_delta is cumulative).
fn apply_anthropic_usage(usage: &mut Usage, u: &Tokens) {
    for (field, value) in [
        (&mut usage.input_tokens, u.input_tokens),
        (&mut usage.output_tokens, u.output_tokens),
        (&mut usage.cache_read_tokens, u.cache_read_input_tokens),
        (&mut usage.cache_write_tokens, u.cache_creation_input_tokens),
    ] {
        if value.is_some() {
            *field = value;
        }
    }
}

fn apply_event(api: Api, usage: &mut Usage, event: &Event) {
    if event.data == "[DONE]" {
        if api == Api::OpenaiChat {
            usage.terminal = Some(TerminalKind::Completed);
        }
        return;
    }
    doc::parse(event.data.as_bytes(), |d| {
        apply_event_doc(api, usage, &event.event, d)
    });
}

fn apply_event_doc(api: Api, usage: &mut Usage, event: &str, v: &Doc<'_>) {
    match api {
        Api::OpenaiChat => {
            if let Some(m) = model(v) {
                usage.model = Some(m);
            }
            if let Some(u) = &v.usage {
                apply_openai_usage(usage, u);
            }
        }
        Api::OpenaiResponses => {
            let terminal = match v.kind.as_deref().unwrap_or(event) {
                "response.completed" => Some(TerminalKind::Completed),
                "response.incomplete" => Some(TerminalKind::Incomplete),
                "response.failed" => Some(TerminalKind::Failed),
                _ => None,
            };
            if let Some(response) = &v.response {
                if let Some(m) = response.as_deref().and_then(model) {
                    usage.model = Some(m);
                }
                if terminal.is_some() {
                    if let Some(u) = response.as_deref().and_then(|r| r.usage.as_ref()) {
                        apply_openai_usage(usage, u);
                    }
                    usage.terminal = terminal;
                }
            }
        }
        Api::AnthropicMessages => match v.kind.as_deref().unwrap_or(event) {
            "message_start" => {
                if let Some(message) = &v.message {
                    if let Some(m) = model(message) {
                        usage.model = Some(m);
                    }
                    if let Some(u) = &message.usage {
                        apply_anthropic_usage(usage, u);
                    }
                }
            }
            "message_delta" => {
                if let Some(u) = &v.usage {
                    apply_anthropic_usage(usage, u);
                }
            }
            "message_stop" => usage.terminal = Some(TerminalKind::Completed),
            "error" => usage.terminal = Some(TerminalKind::Failed),
            _ => {}
        },
        Api::Other => {}
    }
}

fn apply_json_body(api: Api, usage: &mut Usage, v: &Doc<'_>) {
    match api {
        Api::OpenaiChat => {
            usage.model = model(v);
            if let Some(u) = &v.usage {
                apply_openai_usage(usage, u);
            }
            usage.terminal = Some(if v.error != Presence::Absent {
                TerminalKind::Failed
            } else {
                TerminalKind::Completed
            });
        }
        Api::OpenaiResponses => {
            usage.model = model(v);
            if let Some(u) = &v.usage {
                apply_openai_usage(usage, u);
            }
            usage.terminal = Some(match v.status.as_deref() {
                Some("incomplete") => TerminalKind::Incomplete,
                Some("failed") => TerminalKind::Failed,
                _ if v.error == Presence::Value => TerminalKind::Failed,
                _ => TerminalKind::Completed,
            });
        }
        Api::AnthropicMessages => {
            usage.model = model(v);
            if let Some(u) = &v.usage {
                apply_anthropic_usage(usage, u);
            }
            usage.terminal = Some(if v.kind.as_deref() == Some("error") {
                TerminalKind::Failed
            } else {
                TerminalKind::Completed
            });
        }
        Api::Other => {}
    }
}

#[cfg(test)]
mod tests;
