//! Accounting on a socket: one interception record per response, not per socket.
//!
//! Responses WebSocket mode: the client sends `{"type":"response.create", ...}` (the same fields
//! as a `POST /v1/responses` body); the server answers with the streaming events, one per text
//! message, each response ending in `response.completed` / `.incomplete` / `.failed`. Realtime:
//! the client adds turns with `conversation.item.create` and asks with `response.create` (or the
//! server starts a response by itself on voice activity); each response ends in
//! `response.done`. Responses on one socket follow each other: server events belong to the
//! oldest response not yet ended.
//!
//! Each record has the socket's request id (the one on the `101`), `"transport":
//! "websocket"`, the model, tokens, prompt and tool calls read from the messages with the same
//! parsers as HTTP, ttfb from the ask to the first server event, and an outcome. A response
//! still open when the socket ends is recorded as the end says: `client_cancelled` (the client
//! left), or `truncated` with the reason (`upstream_closed`, `upstream_idle_timeout`,
//! `token_revoked`, `shutdown`).

use crate::store::{Interception, Prompt};
use crate::usage::recorder::Recorder;
use crate::usage::request;
use crate::usage::ws::Frame;
use crate::usage::{Api, UsageTap};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// Which API a socket speaks, from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketApi {
    /// `…/responses`: Codex's Responses WebSocket mode.
    Responses,
    /// `…/realtime`.
    Realtime,
}

impl SocketApi {
    /// The accounted API of a socket to `path`, if it is a model socket.
    pub fn detect(kind: crate::provider::ProviderKind, path: &str) -> Option<SocketApi> {
        use crate::provider::ProviderKind::{Openai, OpenaiCompatible};
        let path = path.trim_end_matches('/');
        match kind {
            Openai | OpenaiCompatible if path.ends_with("/responses") => Some(Self::Responses),
            Openai | OpenaiCompatible if path.ends_with("/realtime") => Some(Self::Realtime),
            _ => None,
        }
    }

    fn api(self) -> Api {
        match self {
            SocketApi::Responses => Api::OpenaiResponses,
            SocketApi::Realtime => Api::OpenaiRealtime,
        }
    }
}

/// Who spoke a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
}

impl Side {
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn label(self) -> &'static str {
        match self {
            Side::Client => "to_upstream",
            Side::Upstream => "to_client",
        }
    }
}

/// How a socket ended, for the responses still open on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    ClientLeft,
    UpstreamClosed,
    Idle,
    Revoked,
    Shutdown,
}

impl Ending {
    fn outcome(self) -> (&'static str, &'static str) {
        match self {
            Ending::ClientLeft => ("client_cancelled", "client_cancelled"),
            Ending::UpstreamClosed => ("truncated", "upstream_closed"),
            Ending::Idle => ("truncated", "upstream_idle_timeout"),
            Ending::Revoked => ("truncated", "token_revoked"),
            Ending::Shutdown => ("truncated", "shutdown"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Ending::ClientLeft => "client_left",
            Ending::UpstreamClosed => "upstream_closed",
            Ending::Idle => "idle_timeout",
            Ending::Revoked => "token_revoked",
            Ending::Shutdown => "shutdown",
        }
    }
}

/// Totals for the log line when the socket closes.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub messages: [u64; 2],
    pub responses: u64,
    pub close_codes: [Option<u16>; 2],
    /// Who sent the first close frame: the side that ended the socket.
    pub first_close: Option<Side>,
    pub unparsed: u64,
}

/// One response asked for (or started by the server) and not yet ended.
struct Turn {
    record: Interception,
    started: Instant,
    tap: UsageTap,
    requested_model: Option<String>,
    /// `response.created` seen.
    created: bool,
    answered: bool,
    /// A message of this response was too large to read.
    unparsed: bool,
}

/// Limits and settings the account reads messages under.
pub struct Limits {
    /// `None` when prompts are not recorded.
    pub prompt_limit: Option<usize>,
    pub max_tool_args: usize,
}

pub struct Account {
    api: Option<SocketApi>,
    /// The fields every record of this socket shares.
    template: Interception,
    recorder: Recorder,
    models: Arc<HashSet<String>>,
    limits: Limits,
    turns: VecDeque<Turn>,
    /// Realtime: the model the session runs (the URL's `model=`, or `session.created`).
    session_model: Option<String>,
    /// Realtime: the latest user text added with `conversation.item.create`.
    pending_prompt: Option<Prompt>,
    /// A client message too large to read came before the next response.
    client_unparsed: bool,
    pub totals: Totals,
}

#[derive(Deserialize)]
struct Kind<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
}

/// The parts of Realtime messages the account reads.
#[derive(Deserialize)]
struct RealtimeItem<'a> {
    #[serde(borrow)]
    item: Option<RealtimeTurn<'a>>,
    #[serde(borrow)]
    session: Option<RealtimeSession<'a>>,
}

#[derive(Deserialize)]
struct RealtimeTurn<'a> {
    #[serde(borrow)]
    role: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    content: Vec<RealtimePart<'a>>,
}

#[derive(Deserialize)]
struct RealtimePart<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RealtimeSession<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
}

impl Account {
    /// `template` is the socket's record as far as the upgrade knows it (user, provider,
    /// path, request id); `url_model` the Realtime `model=` query parameter.
    pub fn new(
        api: Option<SocketApi>,
        template: Interception,
        recorder: Recorder,
        models: Arc<HashSet<String>>,
        limits: Limits,
        url_model: Option<String>,
    ) -> Self {
        Account {
            api,
            template,
            recorder,
            models,
            limits,
            turns: VecDeque::new(),
            session_model: url_model,
            pending_prompt: None,
            client_unparsed: false,
            totals: Totals::default(),
        }
    }

    /// One complete frame or message, from `side`.
    pub fn on_frame(&mut self, side: Side, frame: Frame<'_>) {
        match frame {
            Frame::Message { binary, data } => {
                self.totals.messages[side.index()] += 1;
                if !binary && self.api.is_some() {
                    match side {
                        Side::Client => self.client_message(data),
                        Side::Upstream => self.server_message(data),
                    }
                }
            }
            Frame::Oversized { len, .. } => {
                self.totals.messages[side.index()] += 1;
                self.totals.unparsed += 1;
                tracing::info!(request_id = %self.template.request_id, len, from = side.label(), "WebSocket message over --max-ws-message-bytes: relayed, not read");
                match side {
                    Side::Upstream => {
                        if let Some(turn) = self.turns.front_mut() {
                            turn.unparsed = true;
                        }
                    }
                    // Probably a `response.create` we could not read: the response the server
                    // then starts says so.
                    Side::Client => self.client_unparsed = true,
                }
            }
            Frame::Close(code) => {
                self.totals.close_codes[side.index()] = code;
                self.totals.first_close.get_or_insert(side);
            }
            Frame::Broken(why) => {
                tracing::info!(request_id = %self.template.request_id, from = side.label(), why, "WebSocket framing not followed; the rest of this direction is relayed unread")
            }
            Frame::Ping | Frame::Pong => {}
        }
    }

    fn client_message(&mut self, data: &[u8]) {
        let Ok(Kind { kind: Some(kind) }) = serde_json::from_slice::<Kind<'_>>(data) else {
            return;
        };
        match (self.api, kind.as_ref()) {
            (Some(SocketApi::Responses), "response.create") => {
                let facts = request::inspect(Api::OpenaiResponses, data, self.limits.prompt_limit);
                self.open(facts.model, facts.prompt);
            }
            (Some(SocketApi::Realtime), "conversation.item.create") => {
                if let Some(prompt) = self.realtime_user_text(data) {
                    self.pending_prompt = Some(prompt);
                }
            }
            (Some(SocketApi::Realtime), "response.create") => {
                let prompt = self.pending_prompt.take();
                self.open(self.session_model.clone(), prompt);
            }
            _ => {}
        }
    }

    /// The text of a user turn added to a Realtime conversation.
    fn realtime_user_text(&self, data: &[u8]) -> Option<Prompt> {
        let limit = self.limits.prompt_limit?;
        let item = serde_json::from_slice::<RealtimeItem<'_>>(data)
            .ok()?
            .item?;
        if item.role.as_deref() != Some("user") {
            return None;
        }
        let text: Vec<&str> = item
            .content
            .iter()
            .filter(|p| matches!(p.kind.as_deref(), Some("input_text" | "text")))
            .filter_map(|p| p.text.as_deref())
            .collect();
        let text = text.join("\n");
        if text.is_empty() {
            return None;
        }
        let keep = crate::usage::tools::floor_char_boundary(&text, limit);
        Some(Prompt {
            truncated: keep < text.len(),
            text: text[..keep].to_string(),
        })
    }

    fn open(&mut self, model: Option<String>, prompt: Option<Prompt>) {
        let Some(api) = self.api else { return };
        let id = uuid::Uuid::now_v7();
        let mut record = self.template.clone();
        record.id = id;
        record.started_at = time::OffsetDateTime::now_utc();
        record.model = model.clone();
        record.prompt = prompt;
        // Each response is a span of its own under the socket's.
        record.trace = self
            .template
            .trace
            .as_ref()
            .map(|t| crate::otlp::TraceInfo {
                context: t.context.child(),
                system: t.system,
                requested_model: model.clone(),
            });
        self.recorder.started(&record.provider);
        self.turns.push_back(Turn {
            record,
            started: Instant::now(),
            tap: UsageTap::for_messages(api.api()).with_max_tool_args(self.limits.max_tool_args),
            requested_model: model,
            created: false,
            answered: false,
            unparsed: std::mem::take(&mut self.client_unparsed),
        });
    }

    fn server_message(&mut self, data: &[u8]) {
        let Ok(Kind { kind: Some(kind) }) = serde_json::from_slice::<Kind<'_>>(data) else {
            return;
        };
        let kind = kind.into_owned();
        if kind == "session.created" || kind == "session.updated" {
            if let Some(model) = serde_json::from_slice::<RealtimeItem<'_>>(data)
                .ok()
                .and_then(|m| m.session?.model)
            {
                self.session_model = Some(model.into_owned());
            }
            return;
        }
        if kind == "response.created" {
            match self.turns.iter_mut().find(|t| !t.created) {
                Some(turn) => turn.created = true,
                // A response the server started by itself (Realtime voice activity).
                None => {
                    let prompt = self.pending_prompt.take();
                    self.open(self.session_model.clone(), prompt);
                    if let Some(turn) = self.turns.back_mut() {
                        turn.created = true;
                    }
                }
            }
        }
        let Some(turn) = self.turns.front_mut() else {
            return;
        };
        if !turn.answered {
            turn.answered = true;
            turn.record.ttfb_ms = Some(turn.started.elapsed().as_millis() as i64);
        }
        turn.tap.feed_message(data);
        let refused = kind == "error" && !turn.created;
        if turn.tap.terminal().is_some() || refused {
            if let Some(turn) = self.turns.pop_front() {
                let error = refused.then_some(("failed", "upstream_error"));
                self.finish(turn, error);
            }
        }
    }

    /// The socket ended: record every response still open.
    pub fn end(&mut self, how: Ending) {
        while let Some(turn) = self.turns.pop_front() {
            self.finish(turn, Some(how.outcome()));
        }
    }

    fn finish(&mut self, turn: Turn, ended: Option<(&'static str, &'static str)>) {
        let Turn {
            mut record,
            started,
            tap,
            requested_model,
            unparsed,
            ..
        } = turn;
        let usage = tap.finish(true);
        if usage.model.is_some() {
            record.model = usage.model.clone();
        }
        record.input_tokens = usage.input_tokens;
        record.output_tokens = usage.output_tokens;
        record.cache_read_tokens = usage.cache_read_tokens;
        record.cache_write_tokens = usage.cache_write_tokens;
        record.usage_source = usage.source().into();
        let (outcome, error) = match (usage.terminal, ended) {
            // A response that reached its end did, whatever happened to the socket after.
            (Some(_), _) => (usage.outcome().as_str(), None),
            (None, Some((outcome, error))) => (outcome, Some(error)),
            (None, None) => ("truncated", None),
        };
        record.outcome = outcome.into();
        record.error = error
            .or(unparsed.then_some("message_too_large"))
            .map(str::to_string);
        record.tool_calls = usage.tool_calls;
        record.duration_ms = started.elapsed().as_millis() as i64;
        self.totals.responses += 1;
        tracing::info!(
            request_id = %record.request_id,
            user = %record.user,
            provider = %record.provider,
            model = record.model.as_deref().unwrap_or("-"),
            input_tokens = record.input_tokens,
            output_tokens = record.output_tokens,
            outcome = %record.outcome,
            tool_calls = record.tool_calls.len(),
            duration_ms = record.duration_ms,
            transport = "websocket",
            "request"
        );
        let label = [record.model.as_deref(), requested_model.as_deref()]
            .into_iter()
            .flatten()
            .find_map(|m| self.models.get(m));
        self.recorder.record(record, label.map(String::as_str));
    }
}
