//! The parts of a response event or body that usage accounting reads, parsed without building
//! the rest: unknown fields are skipped by serde, and strings are borrowed where the JSON has
//! no escapes. A stream's hundreds of content deltas then cost a scan each, not a tree.
//!
//! Every field is lenient: a value of an unexpected type reads as absent, the way
//! `serde_json::Value::as_str`/`as_i64` would, instead of failing the whole document. The one
//! thing derive cannot take — a duplicated key — falls back to parsing a `Value` first (last
//! key wins) and reading the same structure from it ([`parse`]).

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::marker::PhantomData;

/// An event or body of any of the three APIs.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Doc<'a> {
    #[serde(borrow, deserialize_with = "text")]
    pub model: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow, deserialize_with = "text")]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "text")]
    pub status: Option<Cow<'a, str>>,
    /// Present and not null (a non-object reads as an empty usage).
    #[serde(deserialize_with = "non_null")]
    pub usage: Option<Tokens>,
    /// Responses events: `Some` when present, holding the object if it is one.
    #[serde(borrow, deserialize_with = "present_object")]
    pub response: Option<Option<Box<Doc<'a>>>>,
    /// Anthropic `message_start`.
    #[serde(borrow, deserialize_with = "object")]
    pub message: Option<Box<Doc<'a>>>,
    #[serde(deserialize_with = "presence")]
    pub error: Presence,

    // Tool calls. Chat: `choices[]` (stream deltas and complete messages).
    #[serde(borrow, deserialize_with = "object_list")]
    pub choices: Option<Vec<Choice<'a>>>,
    /// Responses: the item of `response.output_item.added` / `.done`.
    #[serde(borrow, deserialize_with = "object")]
    pub item: Option<Box<Item<'a>>>,
    /// Responses: `output[]` of a complete response (a JSON body or a terminal event's).
    #[serde(borrow, deserialize_with = "object_list")]
    pub output: Option<Vec<Item<'a>>>,
    #[serde(deserialize_with = "int")]
    pub output_index: Option<i64>,
    /// Responses `delta` (argument text) or Anthropic `delta` (an object).
    #[serde(borrow, deserialize_with = "delta")]
    pub delta: Option<Delta<'a>>,
    /// Responses `response.function_call_arguments.done`: the whole arguments.
    #[serde(borrow, deserialize_with = "text")]
    pub arguments: Option<Cow<'a, str>>,
    /// Responses `response.custom_tool_call_input.done`: the whole input.
    #[serde(borrow, deserialize_with = "text")]
    pub input: Option<Cow<'a, str>>,
    /// Anthropic: the content block an event is about.
    #[serde(deserialize_with = "int")]
    pub index: Option<i64>,
    #[serde(borrow, deserialize_with = "object")]
    pub content_block: Option<Box<Block<'a>>>,
    /// Anthropic: `content[]` of a complete message.
    #[serde(borrow, deserialize_with = "object_list")]
    pub content: Option<Vec<Block<'a>>>,
}

/// One chat completion choice: its stream delta or its complete message.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Choice<'a> {
    #[serde(deserialize_with = "int")]
    pub index: Option<i64>,
    #[serde(borrow, deserialize_with = "object")]
    pub delta: Option<ChatMessage<'a>>,
    #[serde(borrow, deserialize_with = "object")]
    pub message: Option<ChatMessage<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct ChatMessage<'a> {
    #[serde(borrow, deserialize_with = "object_list")]
    pub tool_calls: Option<Vec<ChatToolCall<'a>>>,
}

/// A chat tool call, whole or one streamed piece of it (`index` ties the pieces together).
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct ChatToolCall<'a> {
    #[serde(deserialize_with = "int")]
    pub index: Option<i64>,
    #[serde(borrow, deserialize_with = "text")]
    pub id: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow, deserialize_with = "text")]
    pub kind: Option<Cow<'a, str>>,
    /// `function` tools: `{name, arguments}`; `custom` tools: `{name, input}`.
    #[serde(borrow, deserialize_with = "object")]
    pub function: Option<FunctionCall<'a>>,
    #[serde(borrow, deserialize_with = "object")]
    pub custom: Option<FunctionCall<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct FunctionCall<'a> {
    #[serde(borrow, deserialize_with = "text")]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "text")]
    pub arguments: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "text")]
    pub input: Option<Cow<'a, str>>,
}

/// A Responses output item (tool calls are the types ending in `_call`).
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Item<'a> {
    #[serde(rename = "type", borrow, deserialize_with = "text")]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "text")]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "text")]
    pub call_id: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "text")]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "text")]
    pub arguments: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "text")]
    pub input: Option<Cow<'a, str>>,
    /// Built-in tools (`web_search_call`, `computer_call`...) carry what they do here.
    #[serde(borrow, deserialize_with = "raw")]
    pub action: Option<&'a RawValue>,
}

/// An Anthropic content block (tool calls are the types ending in `tool_use`).
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Block<'a> {
    #[serde(rename = "type", borrow, deserialize_with = "text")]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "text")]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "text")]
    pub name: Option<Cow<'a, str>>,
    /// The tool input as the model wrote it (an object; `{}` at a stream's block start).
    #[serde(borrow, deserialize_with = "raw")]
    pub input: Option<&'a RawValue>,
}

/// A `delta` field: text (Responses argument pieces) or an object (Anthropic).
pub(super) enum Delta<'a> {
    Text(Cow<'a, str>),
    Object(DeltaObject<'a>),
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct DeltaObject<'a> {
    #[serde(rename = "type", borrow, deserialize_with = "text")]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "text")]
    pub partial_json: Option<Cow<'a, str>>,
}

/// Token counts as the three APIs name them.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Tokens {
    /// `Some` when present (OpenAI chat naming), with the count if it is an integer.
    #[serde(deserialize_with = "present_int")]
    pub prompt_tokens: Option<Option<i64>>,
    #[serde(deserialize_with = "int")]
    pub completion_tokens: Option<i64>,
    #[serde(deserialize_with = "object")]
    pub prompt_tokens_details: Option<Details>,
    #[serde(deserialize_with = "int")]
    pub input_tokens: Option<i64>,
    #[serde(deserialize_with = "int")]
    pub output_tokens: Option<i64>,
    /// (`input_token_details` in the Realtime API.)
    #[serde(alias = "input_token_details", deserialize_with = "object")]
    pub input_tokens_details: Option<Details>,
    #[serde(deserialize_with = "int")]
    pub cache_read_input_tokens: Option<i64>,
    #[serde(deserialize_with = "int")]
    pub cache_creation_input_tokens: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Details {
    #[serde(deserialize_with = "int")]
    pub cached_tokens: Option<i64>,
}

/// Whether a field was there, and whether it was `null`.
#[derive(Default, PartialEq, Eq)]
pub(super) enum Presence {
    #[default]
    Absent,
    Null,
    Value,
}

/// Parse `json` and hand the document to `f`; invalid JSON gives nothing. A root that is not an
/// object reads as an empty document (as `Value::get` on it would).
pub(super) fn parse<R>(json: &[u8], f: impl FnOnce(&Doc<'_>) -> R) -> Option<R> {
    // Skipped strings are not checked for UTF-8 by serde_json: check the whole input, as a
    // `Value` parse would.
    let json = std::str::from_utf8(json).ok()?;
    let mut de = serde_json::Deserializer::from_str(json);
    match root(&mut de).and_then(|doc| de.end().map(|()| doc)) {
        Ok(doc) => Some(f(&doc)),
        // Valid JSON with a duplicated key: read it as a `Value` (last key wins), then as a Doc.
        Err(e) if e.is_data() => {
            let value = serde_json::from_str::<serde_json::Value>(json).ok()?;
            let doc = root(&value).ok()?;
            Some(f(&doc))
        }
        Err(_) => None,
    }
}

fn root<'de, D: Deserializer<'de>>(d: D) -> Result<Doc<'de>, D::Error> {
    Ok(object(d)?.unwrap_or_default())
}

/// What a JSON value turned out to be, with objects parsed as `T`.
enum Seen<'de, T> {
    Null,
    Int(Option<i64>),
    Str(Cow<'de, str>),
    Map(T),
    Other,
}

struct SeenVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for SeenVisitor<T> {
    type Value = Seen<'de, T>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Seen::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Seen::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Seen::Other)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Seen::Int(Some(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Seen::Int(i64::try_from(v).ok()))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Seen::Other)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Seen::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Seen::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Seen::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Seen::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Seen::Map)
    }
}

fn seen<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Seen<'de, T>, D::Error> {
    d.deserialize_any(SeenVisitor(PhantomData))
}

fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    Ok(match seen::<_, IgnoredAny>(d)? {
        Seen::Str(s) => Some(s),
        _ => None,
    })
}

fn int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(match seen::<_, IgnoredAny>(d)? {
        Seen::Int(v) => v,
        _ => None,
    })
}

fn present_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    int(d).map(Some)
}

fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Ok(match seen::<_, T>(d)? {
        Seen::Map(t) => Some(t),
        _ => None,
    })
}

fn present_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    object(d).map(Some)
}

fn non_null<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> Result<Option<T>, D::Error> {
    Ok(match seen::<_, T>(d)? {
        Seen::Null => None,
        Seen::Map(t) => Some(t),
        _ => Some(T::default()),
    })
}

/// An array, keeping the elements that are objects (others are skipped, as absent fields are).
fn object_list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Vec<T>>, D::Error> {
    struct ListVisitor<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
        type Value = Option<Vec<T>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(element) = seq.next_element_seed(SeenSeed::<T>(PhantomData))? {
                if let Seen::Map(t) = element {
                    out.push(t);
                }
            }
            Ok(Some(out))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(ListVisitor(PhantomData))
}

/// [`seen`] as a seed, for sequence elements.
struct SeenSeed<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> de::DeserializeSeed<'de> for SeenSeed<T> {
    type Value = Seen<'de, T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        seen(d)
    }
}

/// The JSON text of a value exactly as it came; `None` where it cannot be borrowed (the
/// duplicate-key fallback reads a `Value`, which has no text).
fn raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    Ok(<&'de RawValue>::deserialize(d).ok())
}

fn delta<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Delta<'de>>, D::Error> {
    Ok(match seen::<_, DeltaObject<'de>>(d)? {
        Seen::Str(s) => Some(Delta::Text(s)),
        Seen::Map(m) => Some(Delta::Object(m)),
        _ => None,
    })
}

fn presence<'de, D: Deserializer<'de>>(d: D) -> Result<Presence, D::Error> {
    Ok(match seen::<_, IgnoredAny>(d)? {
        Seen::Null => Presence::Null,
        _ => Presence::Value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_types_read_as_absent_and_duplicates_take_the_last_key() {
        let json = br#"{"model":7,"type":"x","usage":{"prompt_tokens":null,"completion_tokens":1.5,
            "input_tokens":"3","output_tokens":18446744073709551615,"prompt_tokens_details":[1]},
            "error":null,"message":"m","response":null,"extra":{"deep":[{"a":1}]}}"#;
        parse(json, |d| {
            assert!(d.model.is_none());
            assert_eq!(d.kind.as_deref(), Some("x"));
            let u = d.usage.as_ref().unwrap();
            assert_eq!(u.prompt_tokens, Some(None));
            assert_eq!(
                (u.completion_tokens, u.input_tokens, u.output_tokens),
                (None, None, None)
            );
            assert!(u.prompt_tokens_details.is_none());
            assert!(d.error == Presence::Null);
            assert!(d.message.is_none());
            assert!(matches!(d.response, Some(None)));
        })
        .unwrap();
        let dup = br#"{"model":"a","usage":{"output_tokens":1},"model":"b"}"#;
        parse(dup, |d| {
            assert_eq!(d.model.as_deref(), Some("b"));
            assert_eq!(d.usage.as_ref().unwrap().output_tokens, Some(1));
        })
        .unwrap();
        assert!(parse(b"{\"model\":", |_| ()).is_none());
        assert!(parse(b"{} x", |_| ()).is_none());
        // Arrays never fill fields by position.
        parse(br#"["gpt-4o","x"]"#, |d| {
            assert!(d.model.is_none() && d.kind.is_none())
        })
        .unwrap();
        parse(br#"{"usage":5}"#, |d| {
            assert!(d.usage.as_ref().unwrap().output_tokens.is_none())
        })
        .unwrap();
    }
}
