//! Row types and the inputs of writes. Clear-text keys and tokens only ever appear inside
//! [`Secret`].

use super::crypto::{CryptoError, Keyring};
use crate::provider::{Passthrough, ProviderKind};
use crate::secret::Secret;
use time::OffsetDateTime;
use uuid::Uuid;

/// A provider with its keys, as stored.
#[derive(Debug, Clone)]
pub struct Provider {
    pub id: Uuid,
    pub name: String,
    /// The stored kind; an unknown value (written by a newer version) excludes the provider.
    pub kind: String,
    pub base_url: String,
    pub intercept_hosts: Vec<String>,
    pub enabled: bool,
    pub enforce_models: bool,
    /// `forward` or `deny` (see [`crate::provider::Passthrough`]); an unknown value excludes
    /// the provider.
    pub passthrough: String,
    /// Whether model calls through this provider have their prompt recorded.
    pub record_prompts: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// Oldest first; the first is the one injected.
    pub keys: Vec<ProviderKey>,
}

#[derive(Debug, Clone)]
pub struct ProviderKey {
    pub id: Uuid,
    /// The clear key, or why it could not be decrypted (wrong or missing secrets key file, an
    /// altered or moved value): such a key excludes its provider from routing.
    pub api_key: Result<Secret<String>, CryptoError>,
    pub created_at: OffsetDateTime,
}

impl ProviderKey {
    /// The masked form shown by the API and the CLI (`sk-...abcd`), or a placeholder for a key
    /// that cannot be decrypted.
    pub fn masked(&self) -> String {
        match &self.api_key {
            Ok(key) => crate::secret::mask(key.expose()),
            Err(_) => UNREADABLE_MASK.to_string(),
        }
    }
}

/// What the API and the CLI show for a key that cannot be decrypted.
pub const UNREADABLE_MASK: &str = "(cannot decrypt)";

/// An agent token; the clear token is never stored, only its SHA-256.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AgentToken {
    pub id: Uuid,
    #[sqlx(rename = "user_label")]
    pub user: String,
    pub token_hash: Vec<u8>,
    pub created_at: OffsetDateTime,
    pub last_used_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
    /// After this instant the token is refused like a revoked one; `None` never expires.
    pub expires_at: Option<OffsetDateTime>,
}

impl AgentToken {
    /// Whether the token still authenticates at `now` (not revoked, not expired).
    pub fn active_at(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

/// A token to create: its user label and optional expiry.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub user: String,
    pub expires_at: Option<OffsetDateTime>,
}

/// What one logged change says about one token: its row as committed, or `None` when the row
/// is gone. The router applies it as a delta.
#[derive(Debug, Clone)]
pub struct TokenChange {
    pub id: Uuid,
    pub row: Option<AgentToken>,
}

/// The changes committed after a counter, as the change log tells them.
#[derive(Debug, Clone)]
pub enum Changes {
    /// Nothing was committed after it.
    None,
    /// Only token changes, all of them logged: apply these, in order, to reach `counter`.
    Tokens {
        counter: i64,
        tokens: Vec<TokenChange>,
    },
    /// Something not in the log (a provider or model write, a hand edit, a pruned range, more
    /// rows than a delta is worth): only a full reload is sure to be right.
    Gap,
}

/// A provider to create. Validated by the store before anything is written.
#[derive(Debug, Clone)]
pub struct NewProvider {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    pub intercept_hosts: Vec<String>,
    pub enabled: bool,
    pub enforce_models: bool,
    pub passthrough: Passthrough,
    pub record_prompts: bool,
    pub api_keys: Vec<Secret<String>>,
}

/// Fields to change on a provider; `None` leaves a field as it is. `api_keys: Some(..)`
/// replaces every key.
#[derive(Debug, Clone, Default)]
pub struct ProviderPatch {
    pub name: Option<String>,
    pub kind: Option<ProviderKind>,
    pub base_url: Option<String>,
    pub intercept_hosts: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub enforce_models: Option<bool>,
    pub passthrough: Option<Passthrough>,
    pub record_prompts: Option<bool>,
    pub api_keys: Option<Vec<Secret<String>>>,
}

/// Everything the router is built from, read in one transaction.
#[derive(Debug, Clone)]
pub struct RoutingData {
    pub providers: Vec<Provider>,
    /// Active (not revoked) tokens.
    pub tokens: Vec<AgentToken>,
    /// Every model (the router keeps the enabled ones per provider for the model policy).
    pub models: Vec<Model>,
    /// The change counter the data reflects.
    pub counter: i64,
}

/// The raw provider row; keys are attached afterwards.
#[derive(sqlx::FromRow)]
pub(super) struct ProviderRow {
    pub id: Uuid,
    pub name: String,
    pub kind: String,
    pub base_url: String,
    pub intercept_hosts: sqlx::types::Json<Vec<String>>,
    pub enabled: bool,
    pub enforce_models: bool,
    pub passthrough: String,
    pub record_prompts: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
pub(super) struct KeyRow {
    pub id: Uuid,
    pub provider_id: Uuid,
    pub api_key: String,
    pub created_at: OffsetDateTime,
}

impl ProviderRow {
    pub(super) fn with_keys(self, keys: Vec<ProviderKey>) -> Provider {
        Provider {
            id: self.id,
            name: self.name,
            kind: self.kind,
            base_url: self.base_url,
            intercept_hosts: self.intercept_hosts.0,
            enabled: self.enabled,
            enforce_models: self.enforce_models,
            passthrough: self.passthrough,
            record_prompts: self.record_prompts,
            created_at: self.created_at,
            updated_at: self.updated_at,
            keys,
        }
    }
}

impl KeyRow {
    /// Decrypt (or pass through, if stored in clear) with `keyring`.
    pub(super) fn open(self, keyring: &Keyring) -> ProviderKey {
        ProviderKey {
            id: self.id,
            api_key: keyring.open(self.id, self.provider_id, Secret::new(self.api_key)),
            created_at: self.created_at,
        }
    }
}

/// A model offered by a provider.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Model {
    pub id: Uuid,
    pub provider_id: Uuid,
    pub model: String,
    pub display_name: Option<String>,
    pub context_limit: Option<i64>,
    pub enabled: bool,
    pub is_default: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// A model to create. `is_default` makes it the default (demoting the previous one); the first
/// model becomes the default whatever it says.
#[derive(Debug, Clone)]
pub struct NewModel {
    /// Provider id or name.
    pub provider: String,
    pub model: String,
    pub display_name: Option<String>,
    pub context_limit: Option<i64>,
    pub enabled: bool,
    pub is_default: bool,
}

/// Fields to change on a model; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ModelPatch {
    pub model: Option<String>,
    pub display_name: Option<Option<String>>,
    pub context_limit: Option<Option<i64>>,
    pub enabled: Option<bool>,
    pub is_default: Option<bool>,
}

/// The latest user turn's text of a model call, as recorded (bounded by `--max-prompt-bytes`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Prompt {
    pub text: String,
    /// The text was longer than the bound and was cut (on a UTF-8 boundary).
    pub truncated: bool,
}

/// One tool invocation a model made.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ToolCall {
    pub call_id: Option<String>,
    pub name: String,
    /// The provider's own item type: `function`, `custom`, `function_call`, `custom_tool_call`,
    /// `web_search_call`, `tool_use`, `server_tool_use`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The arguments as the model wrote them (JSON text for function tools), bounded by
    /// `--max-tool-args-bytes`.
    pub arguments: String,
    /// The arguments were longer than the bound and were cut.
    pub truncated: bool,
}

/// One bridged request (SPEC §4 interception record).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Interception {
    pub id: Uuid,
    pub request_id: String,
    pub token_id: Option<Uuid>,
    #[sqlx(rename = "user_label")]
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
    pub started_at: OffsetDateTime,
    pub duration_ms: i64,
    pub ttfb_ms: Option<i64>,
    pub error: Option<String>,
    /// `model` (a model call) or `passthrough` (anything else sent to the provider).
    pub route: String,
    /// `http` or `websocket`.
    pub transport: String,
    /// Model calls only, when prompts are recorded; stored in `interception_prompts`.
    #[sqlx(skip)]
    pub prompt: Option<Prompt>,
    /// In order; stored in `interception_tool_calls`.
    #[sqlx(skip)]
    pub tool_calls: Vec<ToolCall>,
    /// The request's span, when traces are exported (never stored).
    #[sqlx(skip)]
    pub trace: Option<crate::otlp::TraceInfo>,
}
