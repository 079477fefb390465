//! Providers and their keys.

use super::crypto::Keyring;
use super::model::{KeyRow, ProviderRow};
use super::{conflict, now, parse_id, Channel, Store, StoreError};
use super::{NewProvider, Provider, ProviderKey, ProviderPatch};
use crate::net::egress::EgressPolicy;
use crate::provider;
use crate::secret::Secret;
use uuid::Uuid;

/// Insert `$keys` for provider `$id` in transaction `$tx`, sealed with `$store`'s keyring, in
/// order: each key is stamped one microsecond after the previous, so "the oldest key" (the one
/// injected) is the first listed.
macro_rules! insert_keys {
    ($store:expr, $tx:ident, $id:expr, $keys:expr, $now:expr) => {
        if !$keys.is_empty() {
            refuse_clear_next_to_encrypted!($store, $tx);
        }
        for (i, key) in $keys.iter().enumerate() {
            let key_id = Uuid::new_v4();
            let stored = $store.keyring.seal(key_id, $id, key)?;
            sqlx::query("INSERT INTO ai_provider_keys (id, provider_id, api_key, created_at) VALUES ($1, $2, $3, $4)")
                .bind(key_id)
                .bind($id)
                .bind(stored.expose().as_str())
                .bind($now + std::time::Duration::from_micros(i as u64))
                .execute(&mut *$tx)
                .await?;
        }
    };
}

/// Without a secrets key, keys are written in clear, unless the table already holds encrypted
/// ones: then the missing `--secrets-key-file` is a mistake, not a choice, and the write is
/// refused instead of quietly storing a clear key next to encrypted ones.
macro_rules! refuse_clear_next_to_encrypted {
    ($store:expr, $tx:ident) => {
        if $store.keyring.primary().is_none() {
            let encrypted: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM ai_provider_keys WHERE api_key LIKE 'enc:%'",
            )
            .fetch_one(&mut *$tx)
            .await?;
            if encrypted > 0 {
                return Err(StoreError::Conflict(CLEAR_NEXT_TO_ENCRYPTED.to_string()));
            }
        }
    };
}

const CLEAR_NEXT_TO_ENCRYPTED: &str = "provider keys in this database are encrypted and this \
     process has no --secrets-key-file: refusing to store a key in clear";

/// What a provider's keys become in an update.
enum KeyChange<'a> {
    Keep,
    Replace(&'a [Secret<String>]),
}

/// The row an update writes.
struct Plan<'a> {
    name: String,
    kind_str: String,
    base_url: String,
    hosts: Vec<String>,
    enabled: bool,
    enforce_models: bool,
    passthrough: String,
    record_prompts: bool,
    keys: KeyChange<'a>,
}

/// Validate `patch` against the current row. A base URL whose scheme or host:port changes
/// drops the keys unless the patch supplies new ones. A base URL the patch writes must pass the
/// upstream policy; a stored one it leaves alone is only parsed, so a row written before the
/// policy (which the router keeps in `error`) can still be disabled, renamed or repointed.
fn plan_update<'a>(
    current: &ProviderRow,
    has_keys: bool,
    patch: &'a ProviderPatch,
    policy: &EgressPolicy,
) -> Result<Plan<'a>, StoreError> {
    let name = patch.name.clone().unwrap_or_else(|| current.name.clone());
    provider::validate_name(&name)?;
    let kind_str = patch
        .kind
        .map(|k| k.as_str().to_string())
        .unwrap_or_else(|| current.kind.clone());
    let (base_url, new_base) = match &patch.base_url {
        Some(url) => (
            url.clone(),
            provider::BaseUrl::parse_with_policy(url, policy)?,
        ),
        None => (
            current.base_url.clone(),
            provider::BaseUrl::parse(&current.base_url)?,
        ),
    };
    let hosts = match &patch.intercept_hosts {
        Some(h) => provider::normalize_intercept_hosts(h)?,
        None => current.intercept_hosts.0.clone(),
    };
    let moved = provider::BaseUrl::parse(&current.base_url)
        .map(|old| old.target() != new_base.target() || old.is_https() != new_base.is_https())
        .unwrap_or(true);
    let keys = match &patch.api_keys {
        Some(keys) => {
            validate_keys(keys)?;
            KeyChange::Replace(keys)
        }
        None if moved && has_keys => {
            tracing::warn!(provider = %name, "base_url host changed without new keys: keys detached");
            KeyChange::Replace(&[])
        }
        None => KeyChange::Keep,
    };
    Ok(Plan {
        name,
        kind_str,
        base_url,
        hosts,
        enabled: patch.enabled.unwrap_or(current.enabled),
        enforce_models: patch.enforce_models.unwrap_or(current.enforce_models),
        passthrough: patch
            .passthrough
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| current.passthrough.clone()),
        record_prompts: patch.record_prompts.unwrap_or(current.record_prompts),
        keys,
    })
}

impl Store {
    /// Every provider with its keys, oldest first.
    pub async fn list_providers(&self) -> Result<Vec<Provider>, StoreError> {
        with_pool!(self, |pool, kind| {
            let mut conn = pool.acquire().await?;
            Ok(select_providers!(self, conn))
        })
    }

    /// One provider by id or name.
    pub async fn get_provider(&self, id_or_name: &str) -> Result<Option<Provider>, StoreError> {
        let all = self.list_providers().await?;
        Ok(all
            .into_iter()
            .find(|p| p.name == id_or_name || parse_id(id_or_name) == Some(p.id)))
    }

    /// Validate and insert a provider with its keys.
    pub async fn create_provider(&self, new: NewProvider) -> Result<Provider, StoreError> {
        provider::validate_name(&new.name)?;
        provider::BaseUrl::parse_with_policy(&new.base_url, &self.upstream_policy)?;
        let hosts = provider::normalize_intercept_hosts(&new.intercept_hosts)?;
        validate_keys(&new.api_keys)?;
        let id = Uuid::new_v4();
        let now = now();
        let counter = with_pool!(self, |pool, kind| {
            let (mut tx, counter) = begin_write!(pool, kind, Channel::Providers);
            sqlx::query(
                "INSERT INTO ai_providers (id, name, kind, base_url, intercept_hosts, enabled, enforce_models, \
                 passthrough, record_prompts, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
            )
            .bind(id)
            .bind(&new.name)
            .bind(new.kind.as_str())
            .bind(&new.base_url)
            .bind(sqlx::types::Json(&hosts))
            .bind(new.enabled)
            .bind(new.enforce_models)
            .bind(new.passthrough.as_str())
            .bind(new.record_prompts)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| conflict(e, "a provider with that name already exists"))?;
            insert_keys!(self, tx, id, &new.api_keys, now);
            tx.commit().await?;
            counter
        });
        self.committed(counter);
        self.get_provider(&id.to_string())
            .await?
            .ok_or(StoreError::NotFound("provider"))
    }

    /// Apply a patch. A base URL whose host:port changes drops the provider's keys unless the
    /// same patch supplies keys: whoever can edit a provider must not be able to send its
    /// existing key to a host of their choosing.
    pub async fn update_provider(
        &self,
        id_or_name: &str,
        patch: ProviderPatch,
    ) -> Result<Provider, StoreError> {
        let id = self
            .get_provider(id_or_name)
            .await?
            .ok_or(StoreError::NotFound("provider"))?
            .id;
        let now = now();
        let counter = with_pool!(self, |pool, kind| {
            let (mut tx, counter) = begin_write!(pool, kind, Channel::Providers);
            // Decide from the row as it is now, under the write lock: a concurrent PATCH that
            // committed first is neither undone nor allowed to carry keys to a moved host.
            let current: Option<ProviderRow> = sqlx::query_as(
                "SELECT id, name, kind, base_url, intercept_hosts, enabled, enforce_models, passthrough, record_prompts, created_at, updated_at \
                 FROM ai_providers WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(current) = current else {
                return Err(StoreError::NotFound("provider"));
            };
            let key_count: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM ai_provider_keys WHERE provider_id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
            let Plan {
                name,
                kind_str,
                base_url,
                hosts,
                enabled,
                enforce_models,
                passthrough,
                record_prompts,
                keys,
            } = plan_update(&current, key_count > 0, &patch, &self.upstream_policy)?;
            let updated = sqlx::query(
                "UPDATE ai_providers SET name = $2, kind = $3, base_url = $4, intercept_hosts = $5, \
                 enabled = $6, enforce_models = $7, passthrough = $8, record_prompts = $9, \
                 updated_at = $10 WHERE id = $1",
            )
            .bind(id)
            .bind(&name)
            .bind(&kind_str)
            .bind(&base_url)
            .bind(sqlx::types::Json(&hosts))
            .bind(enabled)
            .bind(enforce_models)
            .bind(&passthrough)
            .bind(record_prompts)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| conflict(e, "a provider with that name already exists"))?;
            if updated.rows_affected() == 0 {
                return Err(StoreError::NotFound("provider"));
            }
            if let KeyChange::Replace(keys) = keys {
                sqlx::query("DELETE FROM ai_provider_keys WHERE provider_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                insert_keys!(self, tx, id, keys, now);
            }
            tx.commit().await?;
            counter
        });
        self.committed(counter);
        self.get_provider(&id.to_string())
            .await?
            .ok_or(StoreError::NotFound("provider"))
    }

    /// Delete a provider (its keys and models go with it; the default model moves if it was
    /// one of them). Returns whether it existed.
    pub async fn delete_provider(&self, id_or_name: &str) -> Result<bool, StoreError> {
        let Some(current) = self.get_provider(id_or_name).await? else {
            return Ok(false);
        };
        let (deleted, counter) = with_pool!(self, |pool, kind| {
            let (mut tx, counter) = begin_write!(pool, kind, Channel::Providers);
            let n = sqlx::query("DELETE FROM ai_providers WHERE id = $1")
                .bind(current.id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query(super::models::ENSURE_DEFAULT)
                .bind(now())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            (n > 0, counter)
        });
        self.committed(counter);
        Ok(deleted)
    }

    /// Add one key to a provider.
    pub async fn add_key(
        &self,
        id_or_name: &str,
        api_key: Secret<String>,
    ) -> Result<ProviderKey, StoreError> {
        validate_keys(std::slice::from_ref(&api_key))?;
        let current = self
            .get_provider(id_or_name)
            .await?
            .ok_or(StoreError::NotFound("provider"))?;
        let key_id = Uuid::new_v4();
        let created_at = now();
        let stored = self.keyring.seal(key_id, current.id, &api_key)?;
        let counter = with_pool!(self, |pool, kind| {
            let (mut tx, counter) = begin_write!(pool, kind, Channel::Providers);
            refuse_clear_next_to_encrypted!(self, tx);
            sqlx::query("INSERT INTO ai_provider_keys (id, provider_id, api_key, created_at) VALUES ($1, $2, $3, $4)")
                .bind(key_id)
                .bind(current.id)
                .bind(stored.expose().as_str())
                .bind(created_at)
                .execute(&mut *tx)
                .await
                .map_err(|e| match e.as_database_error() {
                    Some(db) if db.is_foreign_key_violation() => StoreError::NotFound("provider"),
                    _ => StoreError::Database(e),
                })?;
            tx.commit().await?;
            counter
        });
        self.committed(counter);
        Ok(ProviderKey {
            id: key_id,
            api_key: Ok(api_key),
            created_at,
        })
    }

    /// Remove one key. Returns whether it existed on that provider.
    pub async fn delete_key(&self, id_or_name: &str, key_id: Uuid) -> Result<bool, StoreError> {
        let current = self
            .get_provider(id_or_name)
            .await?
            .ok_or(StoreError::NotFound("provider"))?;
        let (deleted, counter) = with_pool!(self, |pool, kind| {
            let (mut tx, counter) = begin_write!(pool, kind, Channel::Providers);
            let n = sqlx::query("DELETE FROM ai_provider_keys WHERE id = $1 AND provider_id = $2")
                .bind(key_id)
                .bind(current.id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            (n > 0, counter)
        });
        self.committed(counter);
        Ok(deleted)
    }
}

pub(super) fn attach_keys(
    rows: Vec<ProviderRow>,
    keys: Vec<KeyRow>,
    keyring: &Keyring,
) -> Vec<Provider> {
    let mut by_provider: std::collections::HashMap<Uuid, Vec<ProviderKey>> =
        std::collections::HashMap::new();
    for key in keys {
        by_provider
            .entry(key.provider_id)
            .or_default()
            .push(key.open(keyring));
    }
    rows.into_iter()
        .map(|row| {
            let keys = by_provider.remove(&row.id).unwrap_or_default();
            row.with_keys(keys)
        })
        .collect()
}

fn validate_keys(keys: &[Secret<String>]) -> Result<(), StoreError> {
    let ok = keys.iter().all(|k| {
        let k = k.expose();
        !k.is_empty() && k.len() <= 4096 && k.bytes().all(|b| b.is_ascii_graphic())
    });
    if !ok {
        return Err(StoreError::InvalidInput(
            "api keys must be 1 to 4096 visible ASCII characters",
        ));
    }
    // A clear key must never read as an encrypted one.
    let prefix = super::crypto::ENCRYPTED_PREFIX;
    let looks_encrypted = keys.iter().any(|k| {
        k.expose()
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    });
    if looks_encrypted {
        return Err(StoreError::InvalidInput(
            "api keys must not start with enc:",
        ));
    }
    Ok(())
}
