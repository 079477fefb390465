//! What the commands read and print, in the admin API's JSON shapes (`admin::views`).
//!
//! Remote mode decodes them from the API's answers; local mode builds the API's own views from
//! the rows and converts them through JSON, so both modes print the same fields, named the
//! same way. Fields a newer API adds are kept (`rest`) and printed with `--output json`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyItem {
    pub id: Uuid,
    pub masked: String,
    pub created_at: String,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderItem {
    pub id: Uuid,
    pub name: String,
    pub kind: String,
    pub base_url: String,
    /// As configured; empty means the base URL's host.
    pub intercept_hosts: Vec<String>,
    /// What it intercepts, as `host:port`.
    #[serde(default)]
    pub hosts: Vec<String>,
    pub enabled: bool,
    pub enforce_models: bool,
    pub passthrough: String,
    pub record_prompts: bool,
    /// `enabled`, `disabled`, `excluded` or `error`.
    pub status: String,
    pub warnings: Vec<String>,
    /// Oldest first; the first is the one injected.
    pub api_keys: Vec<KeyItem>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelItem {
    pub id: Uuid,
    pub provider_id: Uuid,
    pub model: String,
    pub display_name: Option<String>,
    pub context_limit: Option<i64>,
    pub enabled: bool,
    pub is_default: bool,
    pub created_at: String,
    pub updated_at: String,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenItem {
    pub id: Uuid,
    pub user: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// A token as created: the only time `token` appears.
#[derive(Serialize, Deserialize)]
pub struct CreatedToken {
    pub id: Uuid,
    pub user: String,
    pub token: String,
    pub created_at: String,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

impl Drop for CreatedToken {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.token);
    }
}

/// Token totals of one group (`key` is the provider, model or user; `null` for records without
/// one, such as a call whose model could not be read).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UsageItem {
    pub key: Option<String>,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
}

/// What `GET /usage` answers.
#[derive(Deserialize)]
pub struct UsageAnswer {
    pub items: Vec<UsageItem>,
}

/// What `GET|PUT /default-model` answers.
#[derive(Serialize, Deserialize)]
pub struct DefaultModel {
    pub model_id: Option<Uuid>,
}

/// What `POST /providers/{p}/keys/match` answers.
#[derive(Deserialize)]
pub struct KeysMatch {
    #[serde(rename = "match")]
    pub matches: bool,
}

/// A list answer of the API.
#[derive(Deserialize)]
pub struct List<T> {
    pub items: Vec<T>,
}

impl ProviderItem {
    /// The key the proxy injects (the oldest).
    pub fn injected_key(&self) -> Option<&KeyItem> {
        self.api_keys.first()
    }
}
