//! Building a snapshot from store rows.
//!
//! Rules (SPEC §5, §6): providers are considered oldest first; a disabled provider routes
//! nothing; a row that does not parse (kind, base URL, intercept host), whose base URL host the
//! upstream egress policy refuses (a row written before the policy, or under a wider
//! `--allow-private-upstreams`), holds a key the store could not decrypt, or whose upstream
//! client cannot be built is marked `error` and excluded alone; a provider claiming a host an older provider already holds is marked `excluded` as a
//! whole. Nothing in a row can fail the build.
//! Upstream clients of providers whose base URL did not change are carried over from the
//! previous snapshot so their warm connections survive the reload.

use super::tokens::{TokenEntry, TokenTable};
use crate::net::egress::EgressPolicy;
use crate::net::upstream::{UpstreamClient, UpstreamFactory};
use crate::provider::{self, BaseUrl, Passthrough, ProviderKind};
use crate::secret::Secret;
use crate::store::{AgentToken, RoutingData, TokenChange};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

/// Everything the data path needs to send a request to one provider.
pub struct ProviderRoute {
    pub id: Uuid,
    pub name: String,
    pub kind: ProviderKind,
    pub base: BaseUrl,
    /// The injected key; `None` passes the client's own credentials through.
    pub key: Option<Secret<String>>,
    pub enforce_models: bool,
    /// Enabled models configured for this provider: the allowlist when `enforce_models`, and
    /// the only model names used as metric labels.
    pub models: Arc<std::collections::HashSet<String>>,
    /// What happens to requests that are not model calls.
    pub passthrough: Passthrough,
    /// Whether model calls have their prompt recorded (with `--record-prompts`).
    pub record_prompts: bool,
    /// Raw base URL, to tell whether the upstream client can be reused at the next reload.
    base_url: String,
    pub upstream: UpstreamClient,
    /// HTTP/1.1 only, for WebSocket upgrades.
    pub upstream_http1: UpstreamClient,
}

/// A provider's standing in this snapshot, for the API and logs.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderState {
    pub id: Uuid,
    pub name: String,
    /// `enabled`, `disabled`, `excluded` or `error`.
    pub status: &'static str,
    pub hosts: Vec<String>,
    pub warnings: Vec<String>,
}

/// The provider half of a snapshot: rebuilt only by a full reload, shared by the snapshots
/// token deltas make.
struct Routing {
    routes: HashMap<String, Arc<ProviderRoute>>,
    /// Every routable provider by name (the direct bridge's lookup), with or without hosts.
    by_name: HashMap<String, Arc<ProviderRoute>>,
}

/// One immutable routing state.
pub struct Snapshot {
    pub generation: u64,
    pub loaded_at: OffsetDateTime,
    /// The store's change counter this snapshot reflects.
    pub counter: i64,
    routing: Arc<Routing>,
    pub providers: Arc<Vec<ProviderState>>,
    /// Active (not revoked) tokens; expiry is checked per request against the clock.
    tokens: TokenTable,
}

impl Snapshot {
    /// The snapshot before anything was loaded: routes nothing, accepts no token.
    pub fn empty() -> Self {
        Snapshot {
            generation: 0,
            loaded_at: OffsetDateTime::now_utc(),
            counter: -1,
            routing: Arc::new(Routing {
                routes: HashMap::new(),
                by_name: HashMap::new(),
            }),
            providers: Arc::default(),
            tokens: TokenTable::default(),
        }
    }

    /// The provider intercepting `key` ("host:port"), if any.
    pub fn route(&self, key: &str) -> Option<&Arc<ProviderRoute>> {
        self.routing.routes.get(key)
    }

    /// The enabled provider named `name`, if it is routable.
    pub fn provider(&self, name: &str) -> Option<&Arc<ProviderRoute>> {
        self.routing.by_name.get(name)
    }

    /// Whether the token with this id still authenticates now (neither revoked nor expired):
    /// open connections re-check it per request.
    pub fn token_active(&self, id: Uuid) -> bool {
        let now = OffsetDateTime::now_utc();
        self.tokens.by_id(id).is_some_and(|e| e.valid_at(now))
    }

    /// The token whose SHA-256 is `digest`, if active and not expired at this instant (an
    /// expired token is refused exactly like a revoked one, with no reload needed). The digests
    /// are compared in constant time, see [`TokenTable::by_digest`].
    pub fn token(&self, digest: &[u8; 32]) -> Option<&Arc<TokenEntry>> {
        let now = OffsetDateTime::now_utc();
        self.tokens
            .by_digest(digest)
            .filter(|entry| entry.valid_at(now))
    }

    /// The token table, expired entries included (they are refused at lookup).
    pub fn tokens(&self) -> &TokenTable {
        &self.tokens
    }

    /// The next snapshot: this one with token `changes` applied, reflecting `counter`. Shares
    /// the providers and every untouched part of the token table, so it costs time in the number
    /// of changes, not in the number of tokens or providers.
    pub fn with_token_changes(
        &self,
        changes: Vec<TokenChange>,
        counter: i64,
        generation: u64,
    ) -> Snapshot {
        let mut tokens = self.tokens.clone();
        for change in changes {
            match change.row.filter(|r| r.revoked_at.is_none()) {
                Some(row) => match token_entry(row) {
                    Some(entry) => tokens.upsert(entry),
                    None => tokens.remove(change.id),
                },
                None => tokens.remove(change.id),
            }
        }
        Snapshot {
            generation,
            loaded_at: OffsetDateTime::now_utc(),
            counter,
            routing: self.routing.clone(),
            providers: self.providers.clone(),
            tokens,
        }
    }

    /// Every routed provider (once per host it claims).
    pub fn host_routes(&self) -> impl Iterator<Item = &Arc<ProviderRoute>> {
        self.routing.routes.values()
    }

    /// Host → provider name, sorted, for `/router` and tests.
    pub fn host_map(&self) -> Vec<(String, String)> {
        let mut out: Vec<_> = self
            .routing
            .routes
            .iter()
            .map(|(h, r)| (h.clone(), r.name.clone()))
            .collect();
        out.sort();
        out
    }

    /// Build the next snapshot from store data.
    pub fn build(
        data: RoutingData,
        generation: u64,
        previous: &Snapshot,
        upstreams: &UpstreamFactory,
    ) -> Snapshot {
        let reusable: HashMap<Uuid, &Arc<ProviderRoute>> = previous
            .routing
            .by_name
            .values()
            .map(|r| (r.id, r))
            .collect();
        let mut routes: HashMap<String, Arc<ProviderRoute>> = HashMap::new();
        let mut by_name: HashMap<String, Arc<ProviderRoute>> = HashMap::new();
        let mut owners: HashMap<String, String> = HashMap::new();
        let mut providers = Vec::with_capacity(data.providers.len());

        for row in data.providers {
            let mut state = ProviderState {
                id: row.id,
                name: row.name.clone(),
                status: "enabled",
                hosts: Vec::new(),
                warnings: Vec::new(),
            };
            let parsed = parse_row(&row, upstreams.policy());
            let (kind, passthrough, base, targets) = match parsed {
                Ok(p) => p,
                Err(reason) => {
                    tracing::warn!(provider = %row.name, %reason, "provider excluded from routing");
                    state.status = "error";
                    state.warnings.push(reason);
                    providers.push(state);
                    continue;
                }
            };
            let keys: Vec<String> = targets.iter().map(|t| t.key()).collect();
            state.hosts = keys.clone();
            if !row.enabled {
                state.status = "disabled";
                providers.push(state);
                continue;
            }
            let taken: Vec<String> = keys
                .iter()
                .filter_map(|k| {
                    owners
                        .get(k)
                        .map(|owner| format!("host {k} is already intercepted by provider {owner}"))
                })
                .collect();
            if !taken.is_empty() {
                tracing::warn!(provider = %row.name, warnings = ?taken, "provider excluded from routing");
                state.status = "excluded";
                state.warnings = taken;
                providers.push(state);
                continue;
            }
            let (upstream, upstream_http1) = match reusable.get(&row.id) {
                Some(prev) if prev.base_url == row.base_url => {
                    (prev.upstream.clone(), prev.upstream_http1.clone())
                }
                _ => (upstreams.client(), upstreams.client_http1()),
            };
            let route = Arc::new(ProviderRoute {
                id: row.id,
                name: row.name.clone(),
                kind,
                base,
                key: row
                    .keys
                    .first()
                    .and_then(|k| k.api_key.as_ref().ok().cloned()),
                enforce_models: row.enforce_models,
                models: Arc::new(
                    data.models
                        .iter()
                        .filter(|m| m.provider_id == row.id && m.enabled)
                        .map(|m| m.model.clone())
                        .collect(),
                ),
                passthrough,
                record_prompts: row.record_prompts,
                base_url: row.base_url.clone(),
                upstream,
                upstream_http1,
            });
            for k in keys {
                owners.insert(k.clone(), row.name.clone());
                routes.insert(k, route.clone());
            }
            by_name.insert(row.name.clone(), route);
            providers.push(state);
        }

        let now = OffsetDateTime::now_utc();
        let tokens = TokenTable::build(
            data.tokens
                .into_iter()
                .filter(|t| t.active_at(now))
                .filter_map(token_entry)
                .collect(),
        );

        Snapshot {
            generation,
            loaded_at: now,
            counter: data.counter,
            routing: Arc::new(Routing { routes, by_name }),
            providers: Arc::new(providers),
            tokens,
        }
    }
}

/// The snapshot's entry for a stored token; `None` (logged) when its hash is malformed.
fn token_entry(t: AgentToken) -> Option<TokenEntry> {
    let Ok(digest) = <[u8; 32]>::try_from(t.token_hash.as_slice()) else {
        tracing::warn!(token_id = %t.id, "token row has a malformed hash; ignored");
        return None;
    };
    Some(TokenEntry {
        id: t.id,
        user: t.user.into(),
        digest,
        expires_at: t.expires_at,
    })
}

type ParsedRow = (
    ProviderKind,
    Passthrough,
    BaseUrl,
    Vec<crate::net::target::Target>,
);

fn parse_row(row: &crate::store::Provider, policy: &EgressPolicy) -> Result<ParsedRow, String> {
    let kind: ProviderKind = row
        .kind
        .parse()
        .map_err(|e: provider::ProviderError| e.to_string())?;
    let passthrough: Passthrough = row
        .passthrough
        .parse()
        .map_err(|e: provider::ProviderError| e.to_string())?;
    let base = BaseUrl::parse_with_policy(&row.base_url, policy).map_err(|e| e.to_string())?;
    let targets =
        provider::intercept_targets(&row.intercept_hosts, &base).map_err(|e| e.to_string())?;
    // Any undecryptable key excludes the provider, not just the injected one: serving on
    // another key would change which key goes out when the operator fixes or deletes one.
    if let Some((id, e)) = row
        .keys
        .iter()
        .find_map(|k| k.api_key.as_ref().err().map(|e| (k.id, e)))
    {
        return Err(format!("key {id} cannot be decrypted: {e}"));
    }
    Ok((kind, passthrough, base, targets))
}
