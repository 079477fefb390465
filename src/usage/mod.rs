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
pub mod request;
pub mod retention;
pub mod sse;
pub mod tools;
pub mod ws;

use crate::provider::ProviderKind;
use crate::store::ToolCall;
use doc::{Delta, Doc, Presence, Tokens};
use sse::{Event, SseDecoder};
use tools::{Key, ToolCalls};

/// The largest single SSE event (or JSON body) read for usage. Larger ones pass through to the
/// client untouched but are not parsed (and are counted).
pub const MAX_PARSED_BYTES: usize = 16 * 1024 * 1024;

/// Which API a request speaks, decided from the provider kind and the path: each provider
/// kind knows its model-call routes. Anything else sent to a provider (model lists, settings,
/// telemetry, token counting, batches) is `Other`, and a request to it is passthrough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    OpenaiChat,
    /// Legacy completions: chat's usage shape and stream framing.
    OpenaiCompletions,
    OpenaiResponses,
    OpenaiEmbeddings,
    /// The Realtime API (WebSocket only): Responses-shaped items, each response ending in
    /// `response.done` with its status and usage.
    OpenaiRealtime,
    AnthropicMessages,
    Other,
}

impl Api {
    pub fn detect(kind: ProviderKind, path: &str) -> Api {
        let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
        let openai = |suffix: &str| {
            matches!(kind, ProviderKind::Openai | ProviderKind::OpenaiCompatible)
                && path.ends_with(suffix)
        };
        if kind == ProviderKind::Anthropic && path.ends_with("/messages") {
            Api::AnthropicMessages
        } else if openai("/chat/completions") {
            Api::OpenaiChat
        } else if openai("/completions") {
            Api::OpenaiCompletions
        } else if openai("/responses") {
            Api::OpenaiResponses
        } else if openai("/embeddings") {
            Api::OpenaiEmbeddings
        } else {
            Api::Other
        }
    }

    /// Whether a request with `method` to this API is a model call (recorded with its prompt,
    /// counted in `/usage`); anything else sent to a provider is passthrough.
    pub fn is_model_call(self, method: &http::Method) -> bool {
        self != Api::Other && method == http::Method::POST
    }

    /// The usage and stream shape this API shares with another.
    fn family(self) -> Api {
        match self {
            Api::OpenaiCompletions | Api::OpenaiEmbeddings => Api::OpenaiChat,
            other => other,
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
    /// Every tool invocation the model made, in order.
    pub tool_calls: Vec<ToolCall>,
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
    tools: ToolCalls,
    /// Events or bodies too large to parse.
    pub skipped: u64,
}

impl UsageTap {
    /// A tap for a response of `content_type` to a request of `api`.
    pub fn new(api: Api, content_type: Option<&str>) -> Self {
        let api = api.family();
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
            tools: ToolCalls::new(crate::config::DEFAULT_MAX_TOOL_ARGS_BYTES),
            skipped: 0,
        }
    }

    /// A tap fed whole messages instead of a byte stream (a WebSocket's text messages, each one
    /// event): see [`UsageTap::feed_message`].
    pub fn for_messages(api: Api) -> Self {
        UsageTap {
            api: api.family(),
            mode: Mode::Off,
            usage: Usage::default(),
            tools: ToolCalls::new(crate::config::DEFAULT_MAX_TOOL_ARGS_BYTES),
            skipped: 0,
        }
    }

    /// One whole event (a WebSocket text message).
    pub fn feed_message(&mut self, json: &[u8]) {
        let (api, usage, tools) = (self.api, &mut self.usage, &mut self.tools);
        doc::parse(json, |d| apply_event_doc(api, usage, tools, "", d));
    }

    /// What the messages said so far of the model and the tokens.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// Keep at most `bytes` of each tool call's arguments (`--max-tool-args-bytes`).
    pub fn with_max_tool_args(mut self, bytes: usize) -> Self {
        self.tools = ToolCalls::new(bytes);
        self
    }

    /// The terminal event (or a complete body) has been seen: whatever happens to the
    /// connection now, the response reached its end.
    pub fn terminal(&self) -> Option<TerminalKind> {
        self.usage.terminal
    }

    /// Feed the next piece of the body, exactly as it went to the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        let api = self.api;
        let (usage, tools) = (&mut self.usage, &mut self.tools);
        match &mut self.mode {
            Mode::Sse(decoder) => {
                decoder.feed(bytes, &mut |event| apply_event(api, usage, tools, event))
            }
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
                let (api, usage, tools) = (self.api, &mut self.usage, &mut self.tools);
                doc::parse(&body, |d| apply_json_body(api, usage, tools, d));
            }
            Mode::Sse(decoder) => self.skipped += decoder.skipped(),
            _ => {}
        }
        if self.tools.dropped() > 0 {
            tracing::debug!(
                dropped = self.tools.dropped(),
                "tool calls beyond the bound not kept"
            );
        }
        self.usage.tool_calls = self.tools.into_calls();
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

fn apply_event(api: Api, usage: &mut Usage, tools: &mut ToolCalls, event: &Event) {
    if event.data == "[DONE]" {
        if api == Api::OpenaiChat {
            usage.terminal = Some(TerminalKind::Completed);
        }
        return;
    }
    doc::parse(event.data.as_bytes(), |d| {
        apply_event_doc(api, usage, tools, &event.event, d)
    });
}

fn apply_event_doc(api: Api, usage: &mut Usage, tools: &mut ToolCalls, event: &str, v: &Doc<'_>) {
    match api {
        Api::OpenaiChat | Api::OpenaiCompletions | Api::OpenaiEmbeddings => {
            if let Some(m) = model(v) {
                usage.model = Some(m);
            }
            if let Some(u) = &v.usage {
                apply_openai_usage(usage, u);
            }
            chat_tool_calls(tools, v, true);
        }
        Api::OpenaiResponses | Api::OpenaiRealtime => {
            let kind = v.kind.as_deref().unwrap_or(event);
            responses_tool_event(tools, kind, v);
            let terminal = match kind {
                "response.completed" => Some(TerminalKind::Completed),
                "response.incomplete" => Some(TerminalKind::Incomplete),
                "response.failed" => Some(TerminalKind::Failed),
                // Realtime: one terminal event, the status inside says how it ended (a
                // response the client cancelled ended early: incomplete).
                "response.done" => Some(realtime_status(v)),
                _ => None,
            };
            if let Some(response) = &v.response {
                if let Some(m) = response.as_deref().and_then(model) {
                    usage.model = Some(m);
                }
                if terminal.is_some() {
                    if let Some(r) = response.as_deref() {
                        if let Some(u) = &r.usage {
                            apply_openai_usage(usage, u);
                        }
                        responses_output_items(tools, r, true);
                    }
                    usage.terminal = terminal;
                }
            }
        }
        Api::AnthropicMessages => match v.kind.as_deref().unwrap_or(event) {
            kind @ ("content_block_start" | "content_block_delta") => {
                anthropic_tool_event(tools, kind, v)
            }
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

/// How a Realtime `response.done` says its response ended.
fn realtime_status(v: &Doc<'_>) -> TerminalKind {
    let status = v
        .response
        .as_ref()
        .and_then(|r| r.as_deref())
        .and_then(|r| r.status.as_deref());
    match status {
        Some("incomplete" | "cancelled") => TerminalKind::Incomplete,
        Some("failed") => TerminalKind::Failed,
        _ => TerminalKind::Completed,
    }
}

fn apply_json_body(api: Api, usage: &mut Usage, tools: &mut ToolCalls, v: &Doc<'_>) {
    match api {
        Api::OpenaiChat | Api::OpenaiCompletions | Api::OpenaiEmbeddings => {
            chat_tool_calls(tools, v, false);
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
        Api::OpenaiResponses | Api::OpenaiRealtime => {
            responses_output_items(tools, v, false);
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
            for block in v.content.iter().flatten() {
                if let Some(kind) = block.kind.as_deref().filter(|k| is_anthropic_tool(k)) {
                    let args = block.input.map_or("", |r| r.get());
                    tools.push(kind, block.id.as_deref(), block.name.as_deref(), args);
                }
            }
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

// === tool calls ===

/// Chat `choices[].delta.tool_calls` pieces (a stream) or `choices[].message.tool_calls` (a
/// whole body). A `custom` tool carries `custom: {name, input}` instead of `function`.
fn chat_tool_calls(tools: &mut ToolCalls, v: &Doc<'_>, streamed: bool) {
    for choice in v.choices.iter().flatten() {
        let message = if streamed {
            &choice.delta
        } else {
            &choice.message
        };
        let calls = message.as_ref().and_then(|m| m.tool_calls.as_ref());
        for (position, call) in calls.into_iter().flatten().enumerate() {
            let f = call.function.as_ref().or(call.custom.as_ref());
            let name = f.and_then(|f| f.name.as_deref());
            let piece = f.and_then(|f| f.arguments.as_deref().or(f.input.as_deref()));
            let kind = call.kind.as_deref().unwrap_or("function");
            if !streamed {
                tools.push(kind, call.id.as_deref(), name, piece.unwrap_or(""));
                continue;
            }
            let index = call.index.unwrap_or(position as i64);
            let key = Key::Chat(choice.index.unwrap_or(0), index);
            tools.open(key.clone(), kind, call.id.as_deref(), name, None, false);
            if let Some(piece) = piece {
                tools.append(&key, piece);
            }
        }
    }
}

/// A Responses streaming event that builds a tool call.
fn responses_tool_event(tools: &mut ToolCalls, kind: &str, v: &Doc<'_>) {
    let Some(key) = v.output_index.map(Key::Output) else {
        return;
    };
    match kind {
        "response.output_item.added" | "response.output_item.done" => {
            let Some(item) = v.item.as_deref() else {
                return;
            };
            let Some(item_kind) = item.kind.as_deref().filter(|k| is_responses_tool(k)) else {
                return;
            };
            let call_id = item.call_id.as_deref().or(item.id.as_deref());
            let name = item.name.as_deref().or(Some(item_kind));
            let args = item_arguments(item);
            if kind == "response.output_item.added" {
                tools.open(key, item_kind, call_id, name, args, false);
            } else {
                tools.open(key.clone(), item_kind, call_id, name, None, false);
                // The finished item is the whole truth; an empty one says nothing.
                if let Some(args) = args.filter(|a| !a.is_empty()) {
                    tools.set(&key, args);
                }
            }
        }
        "response.function_call_arguments.delta" | "response.custom_tool_call_input.delta" => {
            if let Some(Delta::Text(piece)) = &v.delta {
                tools.append(&key, piece);
            }
        }
        "response.function_call_arguments.done" => {
            if let Some(args) = v.arguments.as_deref() {
                tools.set(&key, args);
            }
        }
        "response.custom_tool_call_input.done" => {
            if let Some(input) = v.input.as_deref() {
                tools.set(&key, input);
            }
        }
        _ => {}
    }
}

/// The tool items of a complete response's `output[]`. After a stream, only items its events
/// did not already build are added (a client may get the terminal event alone).
fn responses_output_items(tools: &mut ToolCalls, response: &Doc<'_>, streamed: bool) {
    for (position, item) in response.output.iter().flatten().enumerate() {
        let Some(kind) = item.kind.as_deref().filter(|k| is_responses_tool(k)) else {
            continue;
        };
        let call_id = item.call_id.as_deref().or(item.id.as_deref());
        let name = item.name.as_deref().or(Some(kind));
        let args = item_arguments(item).unwrap_or("");
        if !streamed {
            tools.push(kind, call_id, name, args);
            continue;
        }
        let key = Key::Output(position as i64);
        if !tools.is_open(&key) {
            tools.open(key, kind, call_id, name, Some(args), false);
        }
    }
}

/// What a Responses tool item was asked to do: function `arguments`, custom tool `input`, or
/// a built-in tool's `action` (as JSON text).
fn item_arguments<'a>(item: &'a doc::Item<'_>) -> Option<&'a str> {
    item.arguments
        .as_deref()
        .or(item.input.as_deref())
        .or(item.action.map(|raw| raw.get()))
}

/// Anthropic `content_block_start` of a tool block, and its `input_json_delta` pieces.
fn anthropic_tool_event(tools: &mut ToolCalls, kind: &str, v: &Doc<'_>) {
    let Some(key) = v.index.map(Key::Block) else {
        return;
    };
    if kind == "content_block_start" {
        let Some(block) = v.content_block.as_deref() else {
            return;
        };
        if let Some(block_kind) = block.kind.as_deref().filter(|k| is_anthropic_tool(k)) {
            let initial = block.input.map(|raw| raw.get());
            tools.open(
                key,
                block_kind,
                block.id.as_deref(),
                block.name.as_deref(),
                initial,
                true,
            );
        }
    } else if let Some(Delta::Object(delta)) = &v.delta {
        if delta.kind.as_deref() == Some("input_json_delta") {
            if let Some(piece) = delta.partial_json.as_deref() {
                tools.append(&key, piece);
            }
        }
    }
}

/// Responses output items that are tool invocations (`function_call`, `custom_tool_call`,
/// `web_search_call`, ...), not their outputs.
fn is_responses_tool(kind: &str) -> bool {
    kind.ends_with("_call")
}

/// Anthropic blocks that are tool invocations (`tool_use`, `server_tool_use`, `mcp_tool_use`).
fn is_anthropic_tool(kind: &str) -> bool {
    kind.ends_with("tool_use")
}

#[cfg(test)]
mod tests;
