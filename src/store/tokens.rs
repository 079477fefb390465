//! Agent tokens: stored as SHA-256, the clear token shown once.

use super::AgentToken;
use super::{now, Channel, Store, StoreError};
use crate::secret::Secret;
use uuid::Uuid;

pub(super) const SELECT_ACTIVE: &str =
    "SELECT id, user_label, token_hash, created_at, last_used_at, revoked_at FROM agent_tokens WHERE revoked_at IS NULL";

impl Store {
    /// Create a token for `user`. The clear token is returned once and never stored.
    pub async fn create_token(
        &self,
        user: &str,
    ) -> Result<(AgentToken, Secret<String>), StoreError> {
        let user = user.trim();
        if user.is_empty() || user.len() > 128 || user.chars().any(char::is_control) {
            return Err(StoreError::InvalidInput(
                "user must be 1 to 128 printable characters",
            ));
        }
        let token = crate::secret::token::generate()
            .map_err(|_| StoreError::InvalidInput("the system has no entropy source"))?;
        let row = AgentToken {
            id: Uuid::new_v4(),
            user: user.to_string(),
            token_hash: crate::secret::token::digest(token.expose()).to_vec(),
            created_at: now(),
            last_used_at: None,
            revoked_at: None,
        };
        let counter = with_pool!(self, |pool, kind| {
            let (mut tx, counter) = begin_write!(pool, kind, Channel::Tokens);
            sqlx::query("INSERT INTO agent_tokens (id, user_label, token_hash, created_at) VALUES ($1, $2, $3, $4)")
                .bind(row.id)
                .bind(&row.user)
                .bind(&row.token_hash)
                .bind(row.created_at)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            counter
        });
        self.committed(counter);
        Ok((row, token))
    }

    /// All tokens, revoked ones included, oldest first.
    pub async fn list_tokens(&self) -> Result<Vec<AgentToken>, StoreError> {
        let rows = with_pool!(self, |pool, kind| {
            sqlx::query_as(
                "SELECT id, user_label, token_hash, created_at, last_used_at, revoked_at FROM agent_tokens \
                 ORDER BY created_at, id",
            )
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    /// Revoke a token. Returns whether an active token was revoked; revoking twice changes
    /// nothing (and publishes nothing).
    pub async fn revoke_token(&self, id: Uuid) -> Result<bool, StoreError> {
        let (revoked, counter) = with_pool!(self, |pool, kind| {
            let (mut tx, counter) = begin_write!(pool, kind, Channel::Tokens);
            let n = sqlx::query(
                "UPDATE agent_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            )
            .bind(id)
            .bind(now())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            tx.commit().await?;
            (true, counter)
        });
        self.committed(counter);
        Ok(revoked)
    }
}
