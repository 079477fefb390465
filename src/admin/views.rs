//! JSON shapes of the admin API (SPEC §7). Field names are the contract.

use crate::router::Snapshot;
use crate::store::{AgentToken, Interception, Model, Prompt, Provider, ToolCall};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

#[derive(Serialize)]
pub struct KeyView {
    pub id: Uuid,
    pub masked: String,
    pub created_at: String,
}

#[derive(Serialize)]
pub struct ProviderView {
    pub id: Uuid,
    pub name: String,
    pub kind: String,
    pub base_url: String,
    pub intercept_hosts: Vec<String>,
    /// What the provider intercepts (or would, once enabled), each as `host:port`: the
    /// `intercept_hosts`, or the base URL's own host and port when there are none. Empty when
    /// the row does not parse (its status is then `error`).
    pub hosts: Vec<String>,
    pub enabled: bool,
    pub enforce_models: bool,
    pub passthrough: String,
    pub record_prompts: bool,
    pub status: &'static str,
    pub warnings: Vec<String>,
    pub api_keys: Vec<KeyView>,
    pub created_at: String,
    pub updated_at: String,
}

impl ProviderView {
    /// The row as stored, with its standing in the serving snapshot.
    pub fn new(p: Provider, snapshot: &Snapshot) -> Self {
        let state = snapshot.providers.iter().find(|s| s.id == p.id);
        let (status, warnings) = match state {
            Some(s) => (s.status, s.warnings.clone()),
            None if p.enabled => ("enabled", Vec::new()),
            None => ("disabled", Vec::new()),
        };
        let hosts = effective_hosts(&p.intercept_hosts, &p.base_url);
        ProviderView {
            id: p.id,
            name: p.name,
            kind: p.kind,
            base_url: p.base_url,
            intercept_hosts: p.intercept_hosts,
            hosts,
            enabled: p.enabled,
            enforce_models: p.enforce_models,
            passthrough: p.passthrough,
            record_prompts: p.record_prompts,
            status,
            warnings,
            api_keys: p
                .keys
                .iter()
                .map(|k| KeyView {
                    id: k.id,
                    masked: k.masked(),
                    created_at: rfc3339(k.created_at),
                })
                .collect(),
            created_at: rfc3339(p.created_at),
            updated_at: rfc3339(p.updated_at),
        }
    }
}

/// The `host:port` keys a provider row claims, by the router's own rule
/// ([`crate::provider::intercept_targets`]); empty for a row that does not parse.
fn effective_hosts(intercept_hosts: &[String], base_url: &str) -> Vec<String> {
    crate::provider::BaseUrl::parse(base_url)
        .and_then(|base| crate::provider::intercept_targets(intercept_hosts, &base))
        .map(|targets| targets.iter().map(|t| t.key()).collect())
        .unwrap_or_default()
}

#[derive(Serialize)]
pub struct ModelView {
    pub id: Uuid,
    pub provider_id: Uuid,
    pub model: String,
    pub display_name: Option<String>,
    pub context_limit: Option<i64>,
    pub enabled: bool,
    pub is_default: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Model> for ModelView {
    fn from(m: Model) -> Self {
        ModelView {
            id: m.id,
            provider_id: m.provider_id,
            model: m.model,
            display_name: m.display_name,
            context_limit: m.context_limit,
            enabled: m.enabled,
            is_default: m.is_default,
            created_at: rfc3339(m.created_at),
            updated_at: rfc3339(m.updated_at),
        }
    }
}

#[derive(Serialize)]
pub struct TokenView {
    pub id: Uuid,
    pub user: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
    pub expires_at: Option<String>,
}

impl From<AgentToken> for TokenView {
    fn from(t: AgentToken) -> Self {
        TokenView {
            id: t.id,
            user: t.user,
            created_at: rfc3339(t.created_at),
            last_used_at: t.last_used_at.map(rfc3339),
            revoked_at: t.revoked_at.map(rfc3339),
            expires_at: t.expires_at.map(rfc3339),
        }
    }
}

/// The list envelope; pagination comes with the lists that need it.
#[derive(Serialize)]
pub struct List<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> List<T> {
    pub fn all(items: Vec<T>) -> Self {
        List {
            items,
            next_cursor: None,
        }
    }
}

/// An interception record (SPEC §7), with its prompt and tool calls; also what `interceptions
/// list` exports as JSON.
#[derive(Serialize)]
pub struct InterceptionView {
    pub id: Uuid,
    pub request_id: String,
    pub user: String,
    pub provider: String,
    pub model: Option<String>,
    pub method: String,
    pub path: String,
    pub status: i32,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub cache_read_tokens: Option<i64>,
    pub cache_write_tokens: Option<i64>,
    pub usage_source: String,
    pub outcome: String,
    pub started_at: String,
    pub duration_ms: i64,
    pub ttfb_ms: Option<i64>,
    pub error: Option<String>,
    pub route: String,
    pub transport: String,
    pub prompt: Option<Prompt>,
    pub tool_calls: Vec<ToolCall>,
}

impl From<Interception> for InterceptionView {
    fn from(r: Interception) -> Self {
        InterceptionView {
            id: r.id,
            request_id: r.request_id,
            user: r.user,
            provider: r.provider,
            model: r.model,
            method: r.method,
            path: r.path,
            status: r.status,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cache_read_tokens: r.cache_read_tokens,
            cache_write_tokens: r.cache_write_tokens,
            usage_source: r.usage_source,
            outcome: r.outcome,
            started_at: rfc3339(r.started_at),
            duration_ms: r.duration_ms,
            ttfb_ms: r.ttfb_ms,
            error: r.error,
            route: r.route,
            transport: r.transport,
            prompt: r.prompt,
            tool_calls: r.tool_calls,
        }
    }
}
