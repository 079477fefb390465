//! Real-shaped transcripts of the three APIs, each fed whole, split at every byte boundary, and
//! (proptest) cut into arbitrary chunks: the result must never depend on how bytes arrived.

use super::*;
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
