//! The at-rest state of provider keys: how they are stored, and rewriting them all under another
//! secrets key (or back in clear) in one published transaction.

use super::crypto::{stored_form, KeyId, SecretsKey, StoredForm};
use super::{Channel, Store, StoreError};
use crate::secret::Secret;
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

/// How many provider keys are stored in each form (no key is read to count them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyStorage {
    pub clear: u64,
    pub encrypted: BTreeMap<KeyId, u64>,
    /// `enc:` values this version does not read.
    pub unknown: u64,
}

/// What a rotation did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rotation {
    /// Keys rewritten under the target.
    pub rewritten: u64,
    /// Keys already under the target, left as they were.
    pub unchanged: u64,
}

#[derive(sqlx::FromRow)]
struct StoredKey {
    id: Uuid,
    provider_id: Uuid,
    provider: String,
    api_key: String,
}

impl Store {
    /// Count keys by stored form: in clear, encrypted per secrets key id, unknown.
    pub async fn key_storage(&self) -> Result<KeyStorage, StoreError> {
        // Only the 16-character prefix of encrypted values leaves the database.
        let rows: Vec<(String, i64)> = with_pool!(self, |pool, kind| {
            sqlx::query_as(
                "SELECT CASE WHEN api_key LIKE 'enc:%' THEN substr(api_key, 1, 16) ELSE '' END AS form, \
                 COUNT(*) FROM ai_provider_keys GROUP BY form",
            )
            .fetch_all(pool)
            .await?
        });
        let mut storage = KeyStorage::default();
        for (form, count) in rows {
            let count = u64::try_from(count).unwrap_or(0);
            match stored_form(&form) {
                StoredForm::Clear => storage.clear += count,
                StoredForm::Encrypted(id) => *storage.encrypted.entry(id).or_default() += count,
                StoredForm::Unknown => storage.unknown += count,
            }
        }
        Ok(storage)
    }

    /// Rewrite every provider key under `target` (`None`: in clear), in one transaction that
    /// publishes like every write, so running proxies reload. Keys are read with this store's
    /// keyring plus `target`. If any key cannot be read, nothing is written and the error names
    /// it. Idempotent: keys already under `target` are left alone, and when nothing changes
    /// nothing is published.
    pub async fn rotate_keys(
        &self,
        target: Option<Arc<SecretsKey>>,
    ) -> Result<Rotation, StoreError> {
        let reading = self.keyring.with(target.as_ref());
        let (rotation, counter) = with_pool!(self, |pool, kind| {
            let (mut tx, counter) = begin_write!(pool, kind, Channel::Providers);
            let rows: Vec<StoredKey> = sqlx::query_as(
                "SELECT k.id, k.provider_id, p.name AS provider, k.api_key FROM ai_provider_keys k \
                 JOIN ai_providers p ON p.id = k.provider_id ORDER BY k.created_at, k.id",
            )
            .fetch_all(&mut *tx)
            .await?;
            let mut rotation = Rotation::default();
            for row in rows {
                let form = stored_form(&row.api_key);
                let clear = reading
                    .open(row.id, row.provider_id, Secret::new(row.api_key))
                    .map_err(|reason| StoreError::UnreadableKey {
                        provider: row.provider.clone(),
                        key_id: row.id,
                        reason,
                    })?;
                let current = match (&target, form) {
                    (None, StoredForm::Clear) => true,
                    (Some(key), StoredForm::Encrypted(id)) => id == key.id(),
                    _ => false,
                };
                if current {
                    rotation.unchanged += 1;
                    continue;
                }
                let stored = match &target {
                    Some(key) => Secret::new(key.seal(row.id, row.provider_id, clear.expose())?),
                    None => clear,
                };
                sqlx::query("UPDATE ai_provider_keys SET api_key = $2 WHERE id = $1")
                    .bind(row.id)
                    .bind(stored.expose().as_str())
                    .execute(&mut *tx)
                    .await?;
                rotation.rewritten += 1;
            }
            if rotation.rewritten == 0 {
                tx.rollback().await?;
                (rotation, None)
            } else {
                tx.commit().await?;
                (rotation, Some(counter))
            }
        });
        if let Some(counter) = counter {
            self.committed(counter);
        }
        Ok(rotation)
    }
}
