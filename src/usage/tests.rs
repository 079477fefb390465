//! Real-shaped transcripts of the three APIs, each fed whole, split at every byte boundary, and
//! (proptest) cut into arbitrary chunks: the result must never depend on how bytes arrived.

use super::*;
use crate::store::ToolCall;
use proptest::prelude::*;

const OPENAI_CHAT_SSE: &str = concat!(
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\\nlo\"}}],\"usage\":null}\n\n",
    ": keep-alive\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],\"usage\":{\"prompt_tokens\":1200,\"completion_tokens\":35,\"total_tokens\":1235,\"prompt_tokens_details\":{\"cached_tokens\":1024}}}\n\n",
    "data: [DONE]\n\n",
);

const OPENAI_CHAT_SSE_NO_USAGE: &str = concat!(
    "data: {\"id\":\"c\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n",
    "data: [DONE]\n\n",
);

const OPENAI_CHAT_JSON: &str = r#"{"id":"chatcmpl-2","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14}}"#;

const RESPONSES_SSE: &str = concat!(
    "event: response.created\r\n",
    "data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"model\":\"gpt-4.1\",\"status\":\"in_progress\",\"usage\":null}}\r\n\r\n",
    "event: response.output_text.delta\r\n",
    "data: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\r\n\r\n",
    "event: response.completed\r\n",
    "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"model\":\"gpt-4.1\",\"status\":\"completed\",\"output\":[{\"type\":\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"Hi\"}]}],\"usage\":{\"input_tokens\":500,\"input_tokens_details\":{\"cached_tokens\":100},\"output_tokens\":20,\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":520}}}\r\n\r\n",
);

const RESPONSES_JSON: &str = r#"{"id":"resp_2","object":"response","model":"gpt-4.1-mini","status":"incomplete","usage":{"input_tokens":40,"input_tokens_details":{"cached_tokens":0},"output_tokens":7,"total_tokens":47}}"#;

const ANTHROPIC_SSE: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":2000,\"cache_read_input_tokens\":3000,\"output_tokens\":1}}}\n\n",
    "event: ping\n",
    "data: {\"type\":\"ping\"}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":null},\"usage\":{\"output_tokens\":10}}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);

const ANTHROPIC_JSON: &str = r#"{"id":"msg_2","type":"message","role":"assistant","model":"claude-haiku-4-5","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":9,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":2}}"#;

const SSE: Option<&str> = Some("text/event-stream; charset=utf-8");
const JSON: Option<&str> = Some("application/json");

fn run(api: Api, content_type: Option<&str>, chunks: &[&[u8]]) -> Usage {
    let mut tap = UsageTap::new(api, content_type);
    for c in chunks {
        tap.feed(c);
    }
    tap.finish(true)
}

fn usage(model: &str, input: i64, output: i64, read: i64, write: Option<i64>) -> Usage {
    Usage {
        model: Some(model.into()),
        input_tokens: Some(input),
        output_tokens: Some(output),
        cache_read_tokens: Some(read),
        cache_write_tokens: write,
        terminal: Some(TerminalKind::Completed),
        tool_calls: Vec::new(),
    }
}

fn cases() -> Vec<(Api, Option<&'static str>, &'static str, Usage)> {
    vec![
        (
            Api::OpenaiChat,
            SSE,
            OPENAI_CHAT_SSE,
            usage("gpt-4o-2024-08-06", 176, 35, 1024, None),
        ),
        (
            Api::OpenaiChat,
            JSON,
            OPENAI_CHAT_JSON,
            usage("gpt-4o-mini", 11, 3, 0, None),
        ),
        (
            Api::OpenaiResponses,
            SSE,
            RESPONSES_SSE,
            usage("gpt-4.1", 400, 20, 100, None),
        ),
        (
            Api::OpenaiResponses,
            JSON,
            RESPONSES_JSON,
            Usage {
                terminal: Some(TerminalKind::Incomplete),
                ..usage("gpt-4.1-mini", 40, 7, 0, None)
            },
        ),
        (
            Api::AnthropicMessages,
            SSE,
            ANTHROPIC_SSE,
            usage("claude-sonnet-4-5", 25, 15, 3000, Some(2000)),
        ),
        (
            Api::AnthropicMessages,
            JSON,
            ANTHROPIC_JSON,
            usage("claude-haiku-4-5", 9, 2, 0, Some(0)),
        ),
    ]
}

#[test]
fn transcripts_whole_and_split_at_every_byte() {
    for (api, ct, text, want) in cases() {
        let bytes = text.as_bytes();
        assert_eq!(run(api, ct, &[bytes]), want, "{api:?} whole");
        for i in 0..=bytes.len() {
            assert_eq!(
                run(api, ct, &[&bytes[..i], &bytes[i..]]),
                want,
                "{api:?} split at {i}"
            );
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(api, ct, &singles), want, "{api:?} byte by byte");
    }
}

#[test]
fn chat_stream_without_usage_is_missing_not_zero() {
    let u = run(Api::OpenaiChat, SSE, &[OPENAI_CHAT_SSE_NO_USAGE.as_bytes()]);
    assert_eq!(
        (u.input_tokens, u.output_tokens, u.source()),
        (None, None, "missing")
    );
    assert_eq!(u.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(u.outcome(), Outcome::Completed);
}

#[test]
fn a_cut_stream_keeps_the_last_counts_and_is_truncated() {
    let cut = ANTHROPIC_SSE.find("event: message_stop").unwrap();
    let mut tap = UsageTap::new(Api::AnthropicMessages, SSE);
    tap.feed(&ANTHROPIC_SSE.as_bytes()[..cut]);
    let u = tap.finish(false);
    assert_eq!((u.input_tokens, u.output_tokens), (Some(25), Some(15)));
    assert_eq!(u.outcome(), Outcome::Truncated);
    // A JSON body cut short has no usage.
    let mut tap = UsageTap::new(Api::OpenaiChat, JSON);
    tap.feed(&OPENAI_CHAT_JSON.as_bytes()[..40]);
    assert_eq!(tap.finish(false).source(), "missing");
}

#[test]
fn a_megabyte_terminal_event_is_still_read() {
    let big = "x".repeat(3 * 1024 * 1024);
    let text = RESPONSES_SSE.replace("\"text\":\"Hi\"}]}]", &format!("\"text\":\"{big}\"}}]}}]"));
    assert!(text.len() > 3 * 1024 * 1024);
    let u = run(Api::OpenaiResponses, SSE, &[text.as_bytes()]);
    assert_eq!((u.input_tokens, u.output_tokens), (Some(400), Some(20)));
}

/// Found with the `usage_json` oracle: `prompt_tokens − cached_tokens` overflowed (a panic in
/// debug builds) on extreme values. Kept in `fuzz/corpus/{usage_json,sse_openai}` as well.
#[test]
fn extreme_openai_counts_do_not_overflow() {
    let body = r#"{"model":"m","usage":{"prompt_tokens":-9223372036854775808,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":1}}}"#;
    let u = run(Api::OpenaiChat, JSON, &[body.as_bytes()]);
    assert_eq!(u.input_tokens, Some(i64::MIN));
    assert_eq!(u.cache_read_tokens, Some(1));
    let body = r#"{"usage":{"input_tokens":9223372036854775807,"input_tokens_details":{"cached_tokens":-2}}}"#;
    let u = run(Api::OpenaiResponses, JSON, &[body.as_bytes()]);
    assert_eq!(u.input_tokens, Some(i64::MAX));
    let sse = format!(
        "data: {}\n\ndata: [DONE]\n\n",
        r#"{"usage":{"prompt_tokens":9223372036854775807,"prompt_tokens_details":{"cached_tokens":-1}}}"#
    );
    let u = run(Api::OpenaiChat, SSE, &[sse.as_bytes()]);
    assert_eq!(u.input_tokens, Some(i64::MAX));
}

#[test]
fn apis_are_detected_from_kind_and_path() {
    assert_eq!(
        Api::detect(ProviderKind::Openai, "/v1/chat/completions?x=1"),
        Api::OpenaiChat
    );
    assert_eq!(
        Api::detect(ProviderKind::OpenaiCompatible, "/api/v1/chat/completions"),
        Api::OpenaiChat
    );
    assert_eq!(
        Api::detect(ProviderKind::Openai, "/v1/responses"),
        Api::OpenaiResponses
    );
    assert_eq!(
        Api::detect(ProviderKind::Anthropic, "/v1/messages"),
        Api::AnthropicMessages
    );
    assert_eq!(
        Api::detect(ProviderKind::Anthropic, "/v1/chat/completions"),
        Api::Other
    );
    assert_eq!(Api::detect(ProviderKind::Openai, "/v1/models"), Api::Other);
}

const CHAT_TOOLS_SSE: &str = concat!(
    "data: {\"id\":\"c1\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]}}]}\n\n",
    "data: {\"id\":\"c1\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_b\",\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"\"}}]}}]}\n\n",
    "data: {\"id\":\"c1\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]}}]}\n\n",
    "data: {\"id\":\"c1\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"function\":{\"arguments\":\"{\\\"tz\\\":\\\"UTC\\\"}\"}}]}}]}\n\n",
    "data: {\"id\":\"c1\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\" \\\"Paris\\\"}\"}}]}}]}\n\n",
    "data: {\"id\":\"c1\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
    "data: [DONE]\n\n",
);

const CHAT_TOOLS_JSON: &str = r#"{"id":"c2","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_x","type":"function","function":{"name":"lookup","arguments":"{\"q\": \"a b\"}"}},{"id":"call_y","type":"custom","custom":{"name":"apply_patch","input":"*** Begin Patch"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":5,"completion_tokens":9}}"#;

const RESPONSES_TOOLS_SSE: &str = concat!(
    "event: response.output_item.added\n",
    "data: {\"type\":\"response.output_item.added\",\"output_index\":0,\"item\":{\"type\":\"function_call\",\"id\":\"fc_1\",\"call_id\":\"call_1\",\"name\":\"shell\",\"arguments\":\"\"}}\n\n",
    "event: response.output_item.added\n",
    "data: {\"type\":\"response.output_item.added\",\"output_index\":1,\"item\":{\"type\":\"function_call\",\"id\":\"fc_2\",\"call_id\":\"call_2\",\"name\":\"read_file\",\"arguments\":\"\"}}\n\n",
    "event: response.function_call_arguments.delta\n",
    "data: {\"type\":\"response.function_call_arguments.delta\",\"output_index\":0,\"item_id\":\"fc_1\",\"delta\":\"{\\\"cmd\\\":\"}\n\n",
    "event: response.function_call_arguments.delta\n",
    "data: {\"type\":\"response.function_call_arguments.delta\",\"output_index\":1,\"item_id\":\"fc_2\",\"delta\":\"{\\\"path\\\":\\\"a.rs\\\"}\"}\n\n",
    "event: response.function_call_arguments.delta\n",
    "data: {\"type\":\"response.function_call_arguments.delta\",\"output_index\":0,\"item_id\":\"fc_1\",\"delta\":\"[\\\"ls\\\"]}\"}\n\n",
    "event: response.function_call_arguments.done\n",
    "data: {\"type\":\"response.function_call_arguments.done\",\"output_index\":0,\"item_id\":\"fc_1\",\"arguments\":\"{\\\"cmd\\\":[\\\"ls\\\"]}\"}\n\n",
    "event: response.output_item.done\n",
    "data: {\"type\":\"response.output_item.done\",\"output_index\":1,\"item\":{\"type\":\"function_call\",\"id\":\"fc_2\",\"call_id\":\"call_2\",\"name\":\"read_file\",\"arguments\":\"{\\\"path\\\":\\\"a.rs\\\"}\"}}\n\n",
    "event: response.completed\n",
    "data: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-5\",\"status\":\"completed\",\"output\":[{\"type\":\"function_call\",\"id\":\"fc_1\",\"call_id\":\"call_1\",\"name\":\"shell\",\"arguments\":\"{\\\"cmd\\\":[\\\"ls\\\"]}\"},{\"type\":\"function_call\",\"id\":\"fc_2\",\"call_id\":\"call_2\",\"name\":\"read_file\",\"arguments\":\"{\\\"path\\\":\\\"a.rs\\\"}\"}],\"usage\":{\"input_tokens\":10,\"output_tokens\":4}}}\n\n",
);

const RESPONSES_TOOLS_JSON: &str = r#"{"model":"gpt-5","status":"completed","output":[{"type":"reasoning","id":"rs_1"},{"type":"web_search_call","id":"ws_1","status":"completed","action":{"type":"search","query":"rust"}},{"type":"custom_tool_call","id":"ctc_1","call_id":"call_p","name":"apply_patch","input":"*** Begin Patch\n"},{"type":"function_call_output","call_id":"call_0","output":"x"}],"usage":{"input_tokens":3,"output_tokens":2}}"#;

const ANTHROPIC_TOOLS_SSE: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"content\":[],\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Let me look.\"}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\":\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\" \\\"San Francisco\\\"}\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_2\",\"name\":\"no_args\",\"input\":{}}}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":30}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);

const ANTHROPIC_TOOLS_JSON: &str = r#"{"model":"claude-opus-4","content":[{"type":"text","text":"ok"},{"type":"tool_use","id":"toolu_9","name":"edit","input":{"b": [2, 1], "a":"é"}},{"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{"query":"x"}}],"stop_reason":"tool_use","usage":{"input_tokens":4,"output_tokens":6}}"#;

fn call(id: &str, name: &str, kind: &str, args: &str) -> ToolCall {
    ToolCall {
        call_id: Some(id.into()),
        name: name.into(),
        kind: kind.into(),
        arguments: args.into(),
        truncated: false,
    }
}

fn tool_cases() -> Vec<(Api, Option<&'static str>, &'static str, Vec<ToolCall>)> {
    vec![
        (
            Api::OpenaiChat,
            SSE,
            CHAT_TOOLS_SSE,
            vec![
                call("call_a", "get_weather", "function", r#"{"city": "Paris"}"#),
                call("call_b", "get_time", "function", r#"{"tz":"UTC"}"#),
            ],
        ),
        (
            Api::OpenaiChat,
            JSON,
            CHAT_TOOLS_JSON,
            vec![
                call("call_x", "lookup", "function", r#"{"q": "a b"}"#),
                call("call_y", "apply_patch", "custom", "*** Begin Patch"),
            ],
        ),
        (
            Api::OpenaiResponses,
            SSE,
            RESPONSES_TOOLS_SSE,
            vec![
                call("call_1", "shell", "function_call", r#"{"cmd":["ls"]}"#),
                call("call_2", "read_file", "function_call", r#"{"path":"a.rs"}"#),
            ],
        ),
        (
            Api::OpenaiResponses,
            JSON,
            RESPONSES_TOOLS_JSON,
            vec![
                call(
                    "ws_1",
                    "web_search_call",
                    "web_search_call",
                    r#"{"type":"search","query":"rust"}"#,
                ),
                call(
                    "call_p",
                    "apply_patch",
                    "custom_tool_call",
                    "*** Begin Patch\n",
                ),
            ],
        ),
        (
            Api::AnthropicMessages,
            SSE,
            ANTHROPIC_TOOLS_SSE,
            vec![
                call(
                    "toolu_1",
                    "get_weather",
                    "tool_use",
                    r#"{"location": "San Francisco"}"#,
                ),
                call("toolu_2", "no_args", "tool_use", "{}"),
            ],
        ),
        (
            Api::AnthropicMessages,
            JSON,
            ANTHROPIC_TOOLS_JSON,
            vec![
                call("toolu_9", "edit", "tool_use", r#"{"b": [2, 1], "a":"é"}"#),
                call(
                    "srvtoolu_1",
                    "web_search",
                    "server_tool_use",
                    r#"{"query":"x"}"#,
                ),
            ],
        ),
    ]
}

#[test]
fn tool_calls_whole_and_split_at_every_byte() {
    for (api, ct, text, want) in tool_cases() {
        let bytes = text.as_bytes();
        let whole = run(api, ct, &[bytes]);
        assert_eq!(whole.tool_calls, want, "{api:?} {ct:?} whole");
        assert_eq!(whole.outcome(), Outcome::Completed, "{api:?} {ct:?}");
        for i in 0..=bytes.len() {
            let split = run(api, ct, &[&bytes[..i], &bytes[i..]]);
            assert_eq!(split.tool_calls, want, "{api:?} {ct:?} split at {i}");
        }
    }
}

#[test]
fn a_terminal_event_alone_still_yields_its_tool_calls() {
    // A client (or a replay) may see only the terminal event of a Responses stream.
    let from = RESPONSES_TOOLS_SSE
        .find("event: response.completed")
        .unwrap();
    let u = run(
        Api::OpenaiResponses,
        SSE,
        &[&RESPONSES_TOOLS_SSE.as_bytes()[from..]],
    );
    assert_eq!(u.tool_calls, tool_cases()[2].3);
}

#[test]
fn tool_arguments_are_bounded() {
    let mut tap = UsageTap::new(Api::AnthropicMessages, SSE).with_max_tool_args(10);
    tap.feed(ANTHROPIC_TOOLS_SSE.as_bytes());
    let u = tap.finish(true);
    assert_eq!(u.tool_calls[0].arguments, r#"{"location"#);
    assert!(u.tool_calls[0].truncated);
    assert!(!u.tool_calls[1].truncated);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn arbitrary_chunking_gives_the_same_usage(cuts in proptest::collection::vec(0usize..4000, 0..40), case in 0usize..6) {
        let (api, ct, text, want) = cases().swap_remove(case);
        let bytes = text.as_bytes();
        let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for p in points {
            chunks.push(&bytes[start..p]);
            start = p;
        }
        chunks.push(&bytes[start..]);
        prop_assert_eq!(run(api, ct, &chunks), want);
    }
}
