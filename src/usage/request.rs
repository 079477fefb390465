//! The request side of a model call, read in one pass over the body the model policy already
//! holds: the requested `model` and `stream`, and the prompt — the text of the latest user
//! turn that contains text.
//!
//! - Chat completions: the last `role: user` message with text (a string, or its `text` parts
//!   joined with `\n`).
//! - Responses: `input` when it is a string; else the last `role: user` item with text (a
//!   string, or `input_text` parts). Tool outputs (`function_call_output`, ...) are not turns.
//! - Anthropic messages: the last user message with `text` blocks; a user message carrying only
//!   `tool_result` blocks is skipped.
//!
//! Messages and input items are kept as raw JSON slices during the pass (the array's elements
//! are found in that same pass) and only the last candidates are decoded, so a long
//! conversation costs one scan, not two and not a copy of every turn.
//! The prompt is cut at `max_bytes` on a UTF-8 boundary (`truncated` says so).

use super::tools::floor_char_boundary;
use super::Api;
use crate::store::Prompt;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::marker::PhantomData;

/// What a model call's body asked for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestFacts {
    pub model: Option<String>,
    pub stream: Option<bool>,
    /// The body was a JSON object with at most one of each known key (a duplicate `model` is
    /// ambiguous, and refused when the model matters).
    pub well_formed: bool,
    pub prompt: Option<Prompt>,
}

/// The body's top level: typed where the policy needs it, raw where the prompt lives.
#[derive(Deserialize)]
struct Peek<'a> {
    model: Option<String>,
    stream: Option<bool>,
    #[serde(borrow)]
    messages: Option<Field<'a>>,
    #[serde(borrow)]
    input: Option<Field<'a>>,
    /// Legacy completions.
    #[serde(borrow)]
    prompt: Option<Field<'a>>,
}

/// A top-level field where a prompt may live: a string, or a list whose elements are kept as
/// raw slices (found while the body is scanned), or anything else (skipped).
enum Field<'a> {
    Text(Cow<'a, str>),
    Items(Vec<&'a RawValue>),
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FieldVisitor(PhantomData))
    }
}

struct FieldVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for FieldVisitor<'a> {
    type Value = Field<'a>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Field<'a>, E> {
        Ok(Field::Text(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Field<'a>, E> {
        Ok(Field::Text(Cow::Owned(v.to_owned())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field<'a>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            items.push(item);
        }
        Ok(Field::Items(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field<'a>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Field<'a>, E> {
        Ok(Field::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Field<'a>, E> {
        Ok(Field::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Field<'a>, E> {
        Ok(Field::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Field<'a>, E> {
        Ok(Field::Other)
    }

    fn visit_unit<E>(self) -> Result<Field<'a>, E> {
        Ok(Field::Other)
    }
}

/// One message or input item, its content left raw.
#[derive(Deserialize)]
struct Turn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

/// A content part or block.
#[derive(Deserialize)]
struct Part<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
}

/// Read `body` for `api`. `prompt_limit` is `None` when prompts are not recorded.
pub fn inspect(api: Api, body: &[u8], prompt_limit: Option<usize>) -> RequestFacts {
    let Ok(peek) = serde_json::from_slice::<Peek<'_>>(body) else {
        return RequestFacts::default();
    };
    let prompt = prompt_limit.and_then(|limit| {
        let text = match api {
            Api::OpenaiResponses => peek.input.and_then(responses_prompt),
            Api::OpenaiChat | Api::AnthropicMessages => peek.messages.and_then(messages_prompt),
            // Completions' `prompt` and embeddings' `input`: a string, or the last of a list.
            Api::OpenaiCompletions => peek.prompt.and_then(last_string),
            Api::OpenaiEmbeddings => peek.input.and_then(last_string),
            // Realtime turns arrive as socket messages (`conversation.item.create`), not a body.
            Api::OpenaiRealtime | Api::Other => None,
        }?;
        let keep = floor_char_boundary(&text, limit);
        Some(Prompt {
            truncated: keep < text.len(),
            text: text[..keep].to_string(),
        })
    });
    RequestFacts {
        model: peek.model,
        stream: peek.stream,
        well_formed: true,
        prompt,
    }
}

/// Chat and Anthropic: the last user message with text.
fn messages_prompt(messages: Field<'_>) -> Option<String> {
    let Field::Items(turns) = messages else {
        return None;
    };
    turns.iter().rev().find_map(|raw| user_text(raw, "text"))
}

/// Responses: `input` as a string, or the last user item with text.
fn responses_prompt(input: Field<'_>) -> Option<String> {
    match input {
        Field::Text(text) => non_empty(text.into_owned()),
        Field::Items(items) => items
            .iter()
            .rev()
            .find_map(|raw| user_text(raw, "input_text")),
        Field::Other => None,
    }
}

/// The text of one turn if it is the user's and has any: its content string, or its parts of
/// `part_kind` (or plain `text`) joined with `\n`.
fn user_text(raw: &RawValue, part_kind: &str) -> Option<String> {
    let turn: Turn<'_> = serde_json::from_str(raw.get()).ok()?;
    if turn.role.as_deref() != Some("user") || turn.kind.as_deref().is_some_and(|k| k != "message")
    {
        return None;
    }
    let content = turn.content?.get();
    if let Ok(text) = serde_json::from_str::<Cow<'_, str>>(content) {
        return non_empty(text.into_owned());
    }
    let parts: Vec<&RawValue> = serde_json::from_str(content).ok()?;
    let texts: Vec<Cow<'_, str>> = parts
        .iter()
        .filter_map(|p| serde_json::from_str::<Part<'_>>(p.get()).ok())
        .filter(|p| matches!(p.kind.as_deref(), Some(k) if k == part_kind || k == "text"))
        .filter_map(|p| p.text)
        .collect();
    non_empty(texts.join("\n"))
}

/// A string, or the last string of a list of them.
fn last_string(field: Field<'_>) -> Option<String> {
    match field {
        Field::Text(text) => non_empty(text.into_owned()),
        Field::Items(items) => items
            .iter()
            .rev()
            .find_map(|i| serde_json::from_str::<Cow<'_, str>>(i.get()).ok())
            .and_then(|t| non_empty(t.into_owned())),
        Field::Other => None,
    }
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(api: Api, body: &str) -> Option<String> {
        inspect(
            api,
            body.as_bytes(),
            Some(crate::config::DEFAULT_MAX_PROMPT_BYTES),
        )
        .prompt
        .map(|p| p.text)
    }

    #[test]
    fn chat_takes_the_last_user_message_with_text() {
        let body = r#"{"model":"gpt-4o","stream":true,"messages":[
            {"role":"system","content":"be brief"},
            {"role":"user","content":"first"},
            {"role":"assistant","content":"ok"},
            {"role":"user","content":[{"type":"text","text":"look at"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"this\nimage"}]},
            {"role":"user","content":[{"type":"image_url","image_url":{"url":"y"}}]},
            {"role":"tool","content":"42","tool_call_id":"c"}]}"#;
        let facts = inspect(Api::OpenaiChat, body.as_bytes(), Some(1024));
        assert_eq!(facts.model.as_deref(), Some("gpt-4o"));
        assert_eq!(facts.stream, Some(true));
        assert!(facts.well_formed);
        assert_eq!(facts.prompt.unwrap().text, "look at\nthis\nimage");
    }

    #[test]
    fn responses_takes_a_string_input_or_the_last_user_item() {
        assert_eq!(
            prompt(
                Api::OpenaiResponses,
                r#"{"model":"m","input":"hello there"}"#
            )
            .as_deref(),
            Some("hello there")
        );
        let body = r#"{"model":"m","input":[
            {"type":"message","role":"developer","content":[{"type":"input_text","text":"tools..."}]},
            {"role":"user","content":[{"type":"input_text","text":"fix the bug"},{"type":"input_image","image_url":"x"}]},
            {"type":"function_call","call_id":"c","name":"shell","arguments":"{}"},
            {"type":"function_call_output","call_id":"c","output":"done"}]}"#;
        assert_eq!(
            prompt(Api::OpenaiResponses, body).as_deref(),
            Some("fix the bug")
        );
        // A turn that only carries a tool output has no prompt of its own (Codex sends those
        // with previous_response_id).
        let body = r#"{"model":"m","previous_response_id":"r","input":[{"type":"function_call_output","call_id":"c","output":"x"}]}"#;
        assert_eq!(prompt(Api::OpenaiResponses, body), None);
    }

    #[test]
    fn anthropic_skips_user_messages_with_only_tool_results() {
        let body = r#"{"model":"claude","messages":[
            {"role":"user","content":"what is in a.rs?"},
            {"role":"assistant","content":[{"type":"tool_use","id":"t","name":"read","input":{}}]},
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":"fn main"}]}]}"#;
        assert_eq!(
            prompt(Api::AnthropicMessages, body).as_deref(),
            Some("what is in a.rs?")
        );
    }

    #[test]
    fn the_prompt_is_cut_on_a_character_boundary() {
        let body = r#"{"messages":[{"role":"user","content":"aé€b"}]}"#;
        let p = inspect(Api::OpenaiChat, body.as_bytes(), Some(4))
            .prompt
            .unwrap();
        assert_eq!((p.text.as_str(), p.truncated), ("aé", true));
        let p = inspect(Api::OpenaiChat, body.as_bytes(), Some(7))
            .prompt
            .unwrap();
        assert_eq!((p.text.as_str(), p.truncated), ("aé€b", false));
    }

    #[test]
    fn odd_bodies_give_no_prompt_and_keep_the_policy_rules() {
        // Not JSON, a duplicate model, a model of the wrong type: not well formed.
        for body in ["nope", r#"{"model":"a","model":"b"}"#, r#"{"model":7}"#] {
            let facts = inspect(Api::OpenaiChat, body.as_bytes(), Some(64));
            assert!(!facts.well_formed, "{body}");
        }
        // Odd shapes around the prompt read as no prompt, never as a refusal.
        for body in [
            r#"{"model":"a","messages":5}"#,
            r#"{"model":"a","messages":"hi"}"#,
            r#"{"model":"a","messages":{"role":"user","content":"hi"}}"#,
            r#"{"model":"a","messages":null}"#,
            r#"{"model":"a","messages":[1,"x",{"role":"user","content":7}]}"#,
            r#"{"model":"a","messages":[{"role":"user","content":""}]}"#,
        ] {
            let facts = inspect(Api::OpenaiChat, body.as_bytes(), Some(64));
            assert!(facts.well_formed, "{body}");
            assert_eq!(facts.model.as_deref(), Some("a"));
            assert_eq!(facts.prompt, None, "{body}");
        }
        // Completions and embeddings: the string, or the last of a list.
        assert_eq!(
            prompt(Api::OpenaiCompletions, r#"{"prompt":["a","say hi"]}"#).as_deref(),
            Some("say hi")
        );
        assert_eq!(
            prompt(Api::OpenaiEmbeddings, r#"{"input":"embed me"}"#).as_deref(),
            Some("embed me")
        );
        // A string with escapes is decoded (not borrowed as it stands in the body).
        assert_eq!(
            prompt(Api::OpenaiResponses, r#"{"input":"say \"hi\"\n"}"#).as_deref(),
            Some("say \"hi\"\n")
        );
        assert_eq!(prompt(Api::OpenaiResponses, r#"{"input":{"a":[1]}}"#), None);
        // Prompts off: nothing is read.
        let body = r#"{"messages":[{"role":"user","content":"secret"}]}"#;
        assert_eq!(inspect(Api::OpenaiChat, body.as_bytes(), None).prompt, None);
    }
}
