//! Tool calls: every tool invocation a model made, in order, assembled from whole responses and
//! from streamed pieces.
//!
//! The three APIs stream a call in pieces tied together by a position: chat by
//! `choices[c].delta.tool_calls[i].index` (parallel calls may interleave), Responses by
//! `output_index` (`response.output_item.added`, then `...arguments.delta` pieces, then `.done`
//! with the whole text), Anthropic by the content block `index` (`content_block_start`, then
//! `input_json_delta` pieces). The arguments are kept as the exact text the model produced —
//! pieces concatenated, never re-encoded — bounded per call (`--max-tool-args-bytes`, cut on a
//! UTF-8 boundary, `truncated` set). At most [`MAX_TOOL_CALLS`] calls are kept per response.

use crate::store::ToolCall;
use std::collections::HashMap;

/// Calls kept per response; further ones are counted in [`ToolCalls::dropped`], not kept.
pub const MAX_TOOL_CALLS: usize = 256;

/// Where a streamed call's pieces are addressed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Key {
    /// Chat: (choice index, tool call index).
    Chat(i64, i64),
    /// Responses: `output_index`.
    Output(i64),
    /// Anthropic: content block index.
    Block(i64),
}

/// The calls of one response, as they are assembled.
pub(super) struct ToolCalls {
    calls: Vec<ToolCall>,
    by_key: HashMap<Key, Slot>,
    max_args: usize,
    dropped: u64,
}

#[derive(Clone, Copy)]
struct Slot {
    index: usize,
    /// The arguments so far are a placeholder (Anthropic's `{}` at block start): the first
    /// streamed piece replaces them.
    placeholder: bool,
}

impl ToolCalls {
    pub fn new(max_args: usize) -> Self {
        ToolCalls {
            calls: Vec::new(),
            by_key: HashMap::new(),
            max_args,
            dropped: 0,
        }
    }

    /// Calls beyond [`MAX_TOOL_CALLS`], seen but not kept.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn into_calls(self) -> Vec<ToolCall> {
        self.calls
    }

    /// A whole call (from a complete response).
    pub fn push(&mut self, kind: &str, call_id: Option<&str>, name: Option<&str>, args: &str) {
        if let Some(index) = self.new_call(kind, call_id, name) {
            self.set_at(index, args);
        }
    }

    /// The first sight of a streamed call at `key` (a later sight fills what was missing).
    /// `initial` is the arguments it starts with; `placeholder` says the first piece replaces
    /// them instead of following them.
    pub fn open(
        &mut self,
        key: Key,
        kind: &str,
        call_id: Option<&str>,
        name: Option<&str>,
        initial: Option<&str>,
        placeholder: bool,
    ) {
        if let Some(slot) = self.by_key.get(&key).copied() {
            let call = &mut self.calls[slot.index];
            if call.call_id.is_none() {
                call.call_id = call_id.map(str::to_string);
            }
            if call.name.is_empty() {
                if let Some(n) = name {
                    call.name = n.to_string();
                }
            }
            return;
        }
        let Some(index) = self.new_call(kind, call_id, name) else {
            return;
        };
        if let Some(args) = initial {
            self.set_at(index, args);
        }
        self.by_key.insert(key, Slot { index, placeholder });
    }

    /// Whether a call is open at `key`.
    pub fn is_open(&self, key: &Key) -> bool {
        self.by_key.contains_key(key)
    }

    /// The next streamed piece of the arguments of the call at `key`.
    pub fn append(&mut self, key: &Key, piece: &str) {
        let Some(slot) = self.by_key.get_mut(key) else {
            return;
        };
        let index = slot.index;
        if std::mem::take(&mut slot.placeholder) {
            self.set_at(index, piece);
            return;
        }
        let call = &mut self.calls[index];
        if call.truncated {
            return;
        }
        let room = self.max_args.saturating_sub(call.arguments.len());
        let take = floor_char_boundary(piece, room);
        call.arguments.push_str(&piece[..take]);
        call.truncated = take < piece.len();
    }

    /// The whole arguments of the call at `key` (a `.done` event): they replace the pieces.
    pub fn set(&mut self, key: &Key, args: &str) {
        if let Some(slot) = self.by_key.get_mut(key) {
            slot.placeholder = false;
            let index = slot.index;
            self.set_at(index, args);
        }
    }

    fn new_call(&mut self, kind: &str, call_id: Option<&str>, name: Option<&str>) -> Option<usize> {
        if self.calls.len() >= MAX_TOOL_CALLS {
            self.dropped += 1;
            return None;
        }
        self.calls.push(ToolCall {
            call_id: call_id.map(str::to_string),
            name: name.unwrap_or_default().to_string(),
            kind: kind.to_string(),
            arguments: String::new(),
            truncated: false,
        });
        Some(self.calls.len() - 1)
    }

    fn set_at(&mut self, index: usize, args: &str) {
        let take = floor_char_boundary(args, self.max_args);
        let call = &mut self.calls[index];
        call.arguments.clear();
        call.arguments.push_str(&args[..take]);
        call.truncated = take < args.len();
    }
}

/// The largest `n <= max` at which `s` can be cut without splitting a character.
pub fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_pieces_assemble_per_key_in_order_of_first_sight() {
        let mut t = ToolCalls::new(1024);
        t.open(
            Key::Chat(0, 1),
            "function",
            Some("b"),
            Some("second"),
            Some(""),
            false,
        );
        t.open(
            Key::Chat(0, 0),
            "function",
            Some("a"),
            Some("first"),
            Some(""),
            false,
        );
        for (k, piece) in [(0, "{\"x\""), (1, "{\"y\":"), (0, ":1}"), (1, "2}")] {
            t.append(&Key::Chat(0, k), piece);
        }
        let calls = t.into_calls();
        assert_eq!(calls[0].name, "second");
        assert_eq!(calls[0].arguments, "{\"y\":2}");
        assert_eq!(calls[1].arguments, "{\"x\":1}");
    }

    #[test]
    fn a_placeholder_is_replaced_by_the_first_piece_and_done_replaces_all() {
        let mut t = ToolCalls::new(1024);
        t.open(
            Key::Block(1),
            "tool_use",
            Some("toolu_1"),
            Some("read"),
            Some("{}"),
            true,
        );
        t.append(&Key::Block(1), "{\"path\":");
        t.append(&Key::Block(1), "\"a\"}");
        t.open(
            Key::Output(0),
            "function_call",
            Some("c"),
            Some("f"),
            Some(""),
            false,
        );
        t.append(&Key::Output(0), "{\"partial");
        t.set(&Key::Output(0), "{\"whole\":true}");
        let calls = t.into_calls();
        assert_eq!(calls[0].arguments, "{\"path\":\"a\"}");
        assert_eq!(calls[1].arguments, "{\"whole\":true}");
    }

    #[test]
    fn arguments_are_cut_on_a_character_boundary() {
        let mut t = ToolCalls::new(4);
        t.open(
            Key::Output(0),
            "function_call",
            None,
            Some("f"),
            None,
            false,
        );
        t.append(&Key::Output(0), "abcé");
        t.append(&Key::Output(0), "zz");
        t.push("function", Some("x"), Some("g"), "ééé");
        let calls = t.into_calls();
        assert_eq!(
            (calls[0].arguments.as_str(), calls[0].truncated),
            ("abc", true)
        );
        assert_eq!(
            (calls[1].arguments.as_str(), calls[1].truncated),
            ("éé", true)
        );
    }

    #[test]
    fn calls_beyond_the_bound_are_counted_not_kept() {
        let mut t = ToolCalls::new(8);
        for i in 0..MAX_TOOL_CALLS + 3 {
            t.push("function", None, Some(&i.to_string()), "{}");
        }
        assert_eq!(t.dropped(), 3);
        assert_eq!(t.into_calls().len(), MAX_TOOL_CALLS);
    }
}
