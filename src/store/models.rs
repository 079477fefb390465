//! Models and the default-model invariant: exactly one default whenever any model exists.
//!
//! "At most one" is the partial unique index `ai_models_one_default`. "At least one" is kept by
//! the writes themselves, each in one transaction: setting a default demotes the previous one
//! first; every write that can leave no default (delete, un-default, provider delete) ends with
//! [`ENSURE_DEFAULT`], which promotes the oldest enabled model (else the oldest). Writers are
//! serialized by the change-counter update that opens every write transaction, so two racing
//! writers never both see "no default" or both promote.

use super::{conflict, now, Channel, Store, StoreError};
use super::{Model, ModelPatch, NewModel};
use uuid::Uuid;

const MODEL_COLUMNS: &str =
    "id, provider_id, model, display_name, context_limit, enabled, is_default, created_at, updated_at";

/// Promote the oldest enabled model (else the oldest) when no default exists. `$1` = now.
pub(super) const ENSURE_DEFAULT: &str = "UPDATE ai_models SET is_default = TRUE, updated_at = $1 \
     WHERE id = (SELECT id FROM ai_models ORDER BY enabled DESC, created_at, id LIMIT 1) \
     AND NOT EXISTS (SELECT 1 FROM ai_models WHERE is_default)";

/// Demote whatever is default except `$2`. `$1` = now.
const DEMOTE_OTHERS: &str =
    "UPDATE ai_models SET is_default = FALSE, updated_at = $1 WHERE is_default AND id <> $2";

const MAX_TEXT: usize = 256;

impl Store {
    /// Every model, oldest first.
    pub async fn list_models(&self) -> Result<Vec<Model>, StoreError> {
        let rows = with_pool!(self, |pool, kind| {
            sqlx::query_as(&format!(
                "SELECT {MODEL_COLUMNS} FROM ai_models ORDER BY created_at, id"
            ))
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    pub async fn get_model(&self, id: Uuid) -> Result<Option<Model>, StoreError> {
        let row = with_pool!(self, |pool, kind| {
            sqlx::query_as(&format!(
                "SELECT {MODEL_COLUMNS} FROM ai_models WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(pool)
            .await?
        });
        Ok(row)
    }

    /// The default model, if any model exists.
    pub async fn default_model(&self) -> Result<Option<Model>, StoreError> {
        let row = with_pool!(self, |pool, kind| {
            sqlx::query_as(&format!(
                "SELECT {MODEL_COLUMNS} FROM ai_models WHERE is_default"
            ))
            .fetch_optional(pool)
            .await?
        });
        Ok(row)
    }

    pub async fn create_model(&self, new: NewModel) -> Result<Model, StoreError> {
        validate_text("model", &new.model, false)?;
        validate_optional(&new.display_name)?;
        validate_limit(new.context_limit)?;
        let provider = self
            .get_provider(&new.provider)
            .await?
            .ok_or(StoreError::NotFound("provider"))?;
        let id = Uuid::new_v4();
        let now = now();
        let counter = with_pool!(self, |pool, kind| {
            let (mut tx, counter) = begin_write!(pool, kind, Channel::Providers);
            if new.is_default {
                sqlx::query(DEMOTE_OTHERS)
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(&format!(
                "INSERT INTO ai_models ({MODEL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)"
            ))
            .bind(id)
            .bind(provider.id)
            .bind(&new.model)
            .bind(&new.display_name)
            .bind(new.context_limit)
            .bind(new.enabled)
            .bind(new.is_default)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| model_write_error(e, "this provider already has that model"))?;
            sqlx::query(ENSURE_DEFAULT)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            counter
        });
        self.committed(counter);
        self.get_model(id)
            .await?
            .ok_or(StoreError::NotFound("model"))
    }

    /// Change a model. `is_default: true` promotes it (demoting the previous default);
    /// `is_default: false` on the default hands the role to the oldest other enabled model, and
    /// is refused while it is the only model (there must be a default).
    pub async fn update_model(&self, id: Uuid, patch: ModelPatch) -> Result<Model, StoreError> {
        if let Some(m) = &patch.model {
            validate_text("model", m, false)?;
        }
        if let Some(d) = &patch.display_name {
            validate_optional(d)?;
        }
        if let Some(limit) = patch.context_limit {
            validate_limit(limit)?;
        }
        let now = now();
        let counter = with_pool!(self, |pool, kind| {
            let (mut tx, counter) = begin_write!(pool, kind, Channel::Providers);
            let current: Option<Model> = sqlx::query_as(&format!(
                "SELECT {MODEL_COLUMNS} FROM ai_models WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(current) = current else {
                return Err(StoreError::NotFound("model"));
            };
            match patch.is_default {
                Some(true) => {
                    sqlx::query(DEMOTE_OTHERS)
                        .bind(now)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                Some(false) if current.is_default => {
                    let successor: Option<Uuid> = sqlx::query_scalar(
                        "SELECT id FROM ai_models WHERE id <> $1 ORDER BY enabled DESC, created_at, id LIMIT 1",
                    )
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some(successor) = successor else {
                        return Err(StoreError::Conflict(
                            "the only model must stay the default; create another model first"
                                .into(),
                        ));
                    };
                    sqlx::query(DEMOTE_OTHERS)
                        .bind(now)
                        .bind(successor)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "UPDATE ai_models SET is_default = TRUE, updated_at = $1 WHERE id = $2",
                    )
                    .bind(now)
                    .bind(successor)
                    .execute(&mut *tx)
                    .await?;
                }
                _ => {}
            }
            let is_default = match patch.is_default {
                Some(true) => true,
                Some(false) => false,
                None => current.is_default,
            };
            sqlx::query(
                "UPDATE ai_models SET model = $2, display_name = $3, context_limit = $4, enabled = $5, \
                 is_default = $6, updated_at = $7 WHERE id = $1",
            )
            .bind(id)
            .bind(patch.model.as_ref().unwrap_or(&current.model))
            .bind(patch.display_name.clone().unwrap_or(current.display_name))
            .bind(patch.context_limit.unwrap_or(current.context_limit))
            .bind(patch.enabled.unwrap_or(current.enabled))
            .bind(is_default)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| model_write_error(e, "this provider already has that model"))?;
            sqlx::query(ENSURE_DEFAULT)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            counter
        });
        self.committed(counter);
        self.get_model(id)
            .await?
            .ok_or(StoreError::NotFound("model"))
    }

    /// Delete a model; if it was the default, the oldest enabled model takes over.
    pub async fn delete_model(&self, id: Uuid) -> Result<bool, StoreError> {
        let now = now();
        let (deleted, counter) = with_pool!(self, |pool, kind| {
            let (mut tx, counter) = begin_write!(pool, kind, Channel::Providers);
            let n = sqlx::query("DELETE FROM ai_models WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query(ENSURE_DEFAULT)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            (true, counter)
        });
        self.committed(counter);
        Ok(deleted)
    }

    /// Make `id` the default. Idempotent: setting the current default again changes nothing
    /// but is not an error.
    pub async fn set_default_model(&self, id: Uuid) -> Result<Model, StoreError> {
        let now = now();
        let counter = with_pool!(self, |pool, kind| {
            let (mut tx, counter) = begin_write!(pool, kind, Channel::Providers);
            let exists: Option<bool> =
                sqlx::query_scalar("SELECT is_default FROM ai_models WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            match exists {
                None => return Err(StoreError::NotFound("model")),
                Some(true) => {
                    tx.rollback().await?;
                    None
                }
                Some(false) => {
                    sqlx::query(DEMOTE_OTHERS)
                        .bind(now)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "UPDATE ai_models SET is_default = TRUE, updated_at = $1 WHERE id = $2",
                    )
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Some(counter)
                }
            }
        });
        if let Some(counter) = counter {
            self.committed(counter);
        }
        self.get_model(id)
            .await?
            .ok_or(StoreError::NotFound("model"))
    }
}

fn model_write_error(e: sqlx::Error, duplicate: &str) -> StoreError {
    match e.as_database_error() {
        Some(db) if db.is_foreign_key_violation() => StoreError::NotFound("provider"),
        _ => conflict(e, duplicate),
    }
}

fn validate_text(field: &'static str, s: &str, allow_empty: bool) -> Result<(), StoreError> {
    let ok = (allow_empty || !s.trim().is_empty())
        && s.len() <= MAX_TEXT
        && !s.chars().any(char::is_control);
    if ok {
        Ok(())
    } else if field == "model" {
        Err(StoreError::InvalidInput(
            "model must be 1 to 256 printable characters",
        ))
    } else {
        Err(StoreError::InvalidInput(
            "display_name must be at most 256 printable characters",
        ))
    }
}

fn validate_optional(s: &Option<String>) -> Result<(), StoreError> {
    match s {
        Some(s) => validate_text("display_name", s, true),
        None => Ok(()),
    }
}

fn validate_limit(limit: Option<i64>) -> Result<(), StoreError> {
    match limit {
        Some(l) if l <= 0 => Err(StoreError::InvalidInput(
            "context_limit must be greater than zero",
        )),
        _ => Ok(()),
    }
}
