//! `/providers/{p}/keys/match`: whether a provider holds exactly a given set of keys, without
//! ever returning one.
//!
//! `apply` in remote mode needs it to stay idempotent: the API shows keys only masked, and a
//! masked form (`sk-...abcd`) cannot tell two keys apart. The answer is one boolean; keys are
//! compared by their SHA-256 digests, so how long a comparison takes says nothing about how
//! much of a guess was right.

use super::error::{ApiError, ApiJson, ApiPath};
use super::AdminState;
use crate::secret::Secret;
use crate::store::Provider;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchKeys {
    api_keys: Vec<String>,
}

#[derive(Serialize)]
pub struct KeysMatch {
    /// The provider's keys are exactly these, in any order (a key that cannot be decrypted
    /// matches nothing).
    #[serde(rename = "match")]
    matches: bool,
}

pub async fn matches(
    State(state): State<Arc<AdminState>>,
    ApiPath(p): ApiPath<String>,
    ApiJson(body): ApiJson<MatchKeys>,
) -> Result<Json<KeysMatch>, ApiError> {
    let provider = state
        .store
        .get_provider(&p)
        .await?
        .ok_or_else(|| ApiError::not_found("provider"))?;
    let keys: Vec<Secret<String>> = body.api_keys.into_iter().map(Secret::new).collect();
    Ok(Json(KeysMatch {
        matches: same_keys(&provider, &keys),
    }))
}

/// Whether `provider` holds exactly `keys` (as a multiset, any order). A key that cannot be
/// decrypted matches nothing, so a set that includes one is never "the same".
pub fn same_keys(provider: &Provider, keys: &[Secret<String>]) -> bool {
    let digest = |k: &str| -> [u8; 32] { Sha256::digest(k.as_bytes()).into() };
    let have: Option<Vec<[u8; 32]>> = provider
        .keys
        .iter()
        .map(|k| k.api_key.as_ref().ok().map(|k| digest(k.expose())))
        .collect();
    let Some(mut have) = have else {
        return false;
    };
    let mut want: Vec<[u8; 32]> = keys.iter().map(|k| digest(k.expose())).collect();
    have.sort_unstable();
    want.sort_unstable();
    have == want
}
