//! Micro-benchmarks of the hot primitives: leaf minting (cold) and cache hits, router lookups
//! at 1 / 100 / 10 000 providers, token validation, and SSE usage parsing throughput per API.
//! Run with `cargo bench --bench micro`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use aibridge_proxy::auth;
use aibridge_proxy::ca::{generate_files, CaPaths, CertificateAuthority, LeafCache};
use aibridge_proxy::config::AuthMode;
use aibridge_proxy::net::egress::{Dialer, EgressPolicy};
use aibridge_proxy::net::target::Host;
use aibridge_proxy::net::upstream::UpstreamFactory;
use aibridge_proxy::router::Snapshot;
use aibridge_proxy::secret::token::digest as hash_token;
use aibridge_proxy::secret::Secret;
use aibridge_proxy::store::{AgentToken, Provider, ProviderKey, RoutingData};
use aibridge_proxy::usage::{Api, UsageTap};
use base64::Engine;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

fn ca() -> (tempfile::TempDir, Arc<CertificateAuthority>) {
    let dir = tempfile::tempdir().unwrap();
    let paths = CaPaths {
        cert: dir.path().join("ca.pem"),
        key: dir.path().join("ca-key.pem"),
    };
    generate_files(&paths, false).unwrap();
    (dir, Arc::new(CertificateAuthority::load(&paths).unwrap()))
}

fn certificates(c: &mut Criterion) {
    let (_dir, ca) = ca();
    let host = Host::Domain("api.openai.com".into());
    c.bench_function("leaf_mint_cold", |b| {
        b.iter(|| ca.mint(&host, Duration::from_secs(7 * 86400)).unwrap())
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let crypto = Arc::new(rustls::crypto::ring::default_provider());
    let cache = LeafCache::new(ca.clone(), 10_000, Duration::from_secs(7 * 86400), crypto);
    rt.block_on(cache.server_config(&host)).unwrap();
    c.bench_function("leaf_cache_hit", |b| {
        b.iter(|| rt.block_on(cache.server_config(&host)).unwrap())
    });
}

fn routing_data(providers: usize, tokens: usize) -> RoutingData {
    let now = OffsetDateTime::now_utc();
    RoutingData {
        providers: (0..providers)
            .map(|i| Provider {
                id: Uuid::new_v4(),
                name: format!("p{i}"),
                kind: "openai".into(),
                base_url: format!("https://upstream{i}.example.com"),
                intercept_hosts: vec![format!("api{i}.example.com")],
                enabled: true,
                enforce_models: false,
                passthrough: "forward".into(),
                record_prompts: true,
                created_at: now,
                updated_at: now,
                keys: vec![ProviderKey {
                    id: Uuid::new_v4(),
                    api_key: Ok(Secret::new(format!("sk-{i}"))),
                    created_at: now,
                }],
            })
            .collect(),
        tokens: (0..tokens)
            .map(|i| AgentToken {
                id: Uuid::new_v4(),
                user: format!("user{i}"),
                token_hash: hash_token(&format!("abp_token_{i}")).to_vec(),
                created_at: now,
                last_used_at: None,
                revoked_at: None,
                expires_at: None,
            })
            .collect(),
        models: Vec::new(),
        counter: 1,
    }
}

fn router(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let crypto = Arc::new(rustls::crypto::ring::default_provider());
    let dialer = Dialer::new(EgressPolicy::default(), Duration::from_secs(1));
    let upstreams = UpstreamFactory::new(crypto, None, dialer).unwrap();
    let mut group = c.benchmark_group("router_lookup");
    for n in [1usize, 100, 10_000] {
        let snapshot = Snapshot::build(routing_data(n, 10), 1, &Snapshot::empty(), &upstreams);
        let key = format!("api{}.example.com:443", n / 2);
        group.bench_with_input(BenchmarkId::from_parameter(n), &key, |b, key| {
            b.iter(|| assert!(snapshot.route(key).is_some()))
        });
    }
    group.finish();

    let snapshot = Snapshot::build(routing_data(1, 10_000), 1, &Snapshot::empty(), &upstreams);
    let mut headers = http::HeaderMap::new();
    let basic = base64::engine::general_purpose::STANDARD.encode("agent:abp_token_4242");
    headers.insert(
        http::header::PROXY_AUTHORIZATION,
        format!("Basic {basic}").parse().unwrap(),
    );
    c.bench_function("token_validation_10k_tokens", |b| {
        b.iter(|| auth::authenticate(&headers, &snapshot, AuthMode::Token).unwrap())
    });
}

/// A realistic long stream per API: `n` content deltas between the opening and terminal events.
fn transcript(api: Api, n: usize) -> String {
    let mut out = String::new();
    match api {
        Api::OpenaiChat => {
            for i in 0..n {
                out.push_str(&format!("data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_1\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token {i} \"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"));
            }
            out.push_str("data: {\"id\":\"chatcmpl-1\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],\"usage\":{\"prompt_tokens\":1200,\"completion_tokens\":500,\"prompt_tokens_details\":{\"cached_tokens\":1024}}}\n\ndata: [DONE]\n\n");
        }
        Api::OpenaiResponses => {
            out.push_str("event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"model\":\"gpt-4.1\",\"usage\":null}}\n\n");
            for i in 0..n {
                out.push_str(&format!("event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"token {i} \",\"sequence_number\":{i}}}\n\n"));
            }
            out.push_str("event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-4.1\",\"status\":\"completed\",\"usage\":{\"input_tokens\":500,\"input_tokens_details\":{\"cached_tokens\":100},\"output_tokens\":20}}}\n\n");
        }
        _ => {
            out.push_str("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":2000,\"cache_read_input_tokens\":3000,\"output_tokens\":1}}}\n\n");
            for i in 0..n {
                out.push_str(&format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"token {i} \"}}}}\n\n"));
            }
            out.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":500}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        }
    }
    out
}

/// SSE usage parsing throughput per API, fed in 1 KiB reads as a proxy sees them.
fn usage_parsing(c: &mut Criterion) {
    let mut group = c.benchmark_group("sse_usage_parse");
    for (name, api) in [
        ("openai_chat", Api::OpenaiChat),
        ("openai_responses", Api::OpenaiResponses),
        ("anthropic_messages", Api::AnthropicMessages),
    ] {
        let body = transcript(api, 500);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut tap = UsageTap::new(api, Some("text/event-stream"));
                for chunk in body.as_bytes().chunks(1024) {
                    tap.feed(chunk);
                }
                let usage = tap.finish(true);
                assert!(usage.output_tokens.is_some());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, certificates, router, usage_parsing);
criterion_main!(benches);
