//! Workspaces, users, API keys and channels: the small administrative tables. Nothing
//! here is hot, so each method is a plain query or a short transaction.

use super::rows::{self, API_KEY_COLS, CHANNEL_COLS};
use super::{is_fk_violation, is_unique_violation, now_us, parse_stored, ts, PgStore};
use crate::model::*;
use crate::{ApiKeyStore, ChannelStore, Result, StoreError, UserStore, WorkspaceStore};
use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::Row;
use voronka_core::*;

fn workspace(r: &PgRow) -> Result<Workspace> {
    Ok(Workspace {
        id: WorkspaceId(r.try_get("id")?),
        name: r.try_get("name")?,
        created_at: ts(r.try_get("created_at")?),
    })
}

fn user(r: &PgRow) -> Result<User> {
    Ok(User {
        id: UserId(r.try_get("id")?),
        email: r.try_get("email")?,
        name: r.try_get("name")?,
        created_at: ts(r.try_get("created_at")?),
    })
}

#[async_trait]
impl WorkspaceStore for PgStore {
    async fn create_workspace(&self, name: &str) -> Result<Workspace> {
        let r = sqlx::query("INSERT INTO workspaces (name, created_at) VALUES ($1, $2) RETURNING id, name, created_at")
            .bind(name)
            .bind(now_us())
            .fetch_one(&self.pool)
            .await?;
        workspace(&r)
    }

    async fn get_workspace(&self, id: WorkspaceId) -> Result<Workspace> {
        let r = sqlx::query("SELECT id, name, created_at FROM workspaces WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::not_found("workspace"))?;
        workspace(&r)
    }

    async fn list_workspaces(&self) -> Result<Vec<Workspace>> {
        sqlx::query("SELECT id, name, created_at FROM workspaces ORDER BY id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(workspace)
            .collect()
    }
}

#[async_trait]
impl UserStore for PgStore {
    async fn create_user(&self, ws: WorkspaceId, new: NewUser) -> Result<Member> {
        let mut tx = self.pool.begin().await?;
        let exists: bool = sqlx::query("SELECT EXISTS (SELECT 1 FROM workspaces WHERE id = $1)")
            .bind(ws.0)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if !exists {
            return Err(StoreError::not_found("workspace"));
        }
        let now = now_us();
        let found = sqlx::query(
            "SELECT id, email, name, created_at FROM users WHERE lower(email) = lower($1)",
        )
        .bind(&new.email)
        .fetch_optional(&mut *tx)
        .await?;
        let user = match found {
            Some(r) => user(&r)?,
            None => {
                let r = sqlx::query(
                    "INSERT INTO users (email, name, password_hash, created_at) VALUES ($1, $2, $3, $4)
                     RETURNING id, email, name, created_at",
                )
                .bind(&new.email)
                .bind(&new.name)
                .bind(&new.password_hash)
                .bind(now)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        // Another request created the same e-mail a moment ago.
                        StoreError::conflict("email_taken", "a user with this e-mail was just created; retry", Some("email"))
                    } else {
                        e.into()
                    }
                })?;
                user(&r)?
            }
        };
        let inserted = sqlx::query(
            "INSERT INTO memberships (workspace_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (workspace_id, user_id) DO NOTHING",
        )
        .bind(ws.0)
        .bind(user.id.0)
        .bind(new.role.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::conflict(
                "member_exists",
                format!("{} is already a member of this workspace", user.email),
                Some("email"),
            ));
        }
        tx.commit().await?;
        Ok(Member {
            user,
            role: new.role,
        })
    }

    async fn find_user_by_email(&self, email: &str) -> Result<Option<UserLogin>> {
        let r = sqlx::query("SELECT id, email, name, created_at, password_hash FROM users WHERE lower(email) = lower($1)")
            .bind(email)
            .fetch_optional(&self.pool)
            .await?;
        r.map(|r| {
            Ok(UserLogin {
                user: user(&r)?,
                password_hash: r.try_get("password_hash")?,
            })
        })
        .transpose()
    }

    async fn list_members(&self, ws: WorkspaceId) -> Result<Vec<Member>> {
        sqlx::query(
            "SELECT u.id, u.email, u.name, u.created_at, m.role
             FROM memberships m JOIN users u ON u.id = m.user_id
             WHERE m.workspace_id = $1 ORDER BY u.id",
        )
        .bind(ws.0)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            let role: String = r.try_get("role")?;
            Ok(Member {
                user: user(r)?,
                role: parse_stored("role", &role)?,
            })
        })
        .collect()
    }
}

fn scopes_text(scopes: &[voronka_core::role::Scope]) -> String {
    scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

#[async_trait]
impl ApiKeyStore for PgStore {
    async fn create_api_key(&self, ws: WorkspaceId, new: NewApiKey) -> Result<ApiKey> {
        let r = sqlx::query(&format!(
            "INSERT INTO api_keys (workspace_id, name, prefix, secret_hash, scopes, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {API_KEY_COLS}"
        ))
        .bind(ws.0)
        .bind(&new.name)
        .bind(&new.prefix)
        .bind(&new.secret_hash)
        .bind(scopes_text(&new.scopes))
        .bind(now_us())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::conflict(
                    "api_key_exists",
                    "an API key with this prefix exists",
                    Some("prefix"),
                )
            } else if is_fk_violation(&e) {
                StoreError::not_found("workspace")
            } else {
                e.into()
            }
        })?;
        rows::api_key(&r)
    }

    async fn find_api_key(&self, prefix: &str) -> Result<Option<ApiKeyAuth>> {
        let r = sqlx::query(&format!(
            "SELECT {API_KEY_COLS}, secret_hash FROM api_keys WHERE prefix = $1"
        ))
        .bind(prefix)
        .fetch_optional(&self.pool)
        .await?;
        r.map(|r| {
            Ok(ApiKeyAuth {
                key: rows::api_key(&r)?,
                secret_hash: r.try_get("secret_hash")?,
            })
        })
        .transpose()
    }

    async fn touch_api_key(&self, id: ApiKeyId, at: Timestamp) -> Result<()> {
        sqlx::query("UPDATE api_keys SET last_used_at = $2 WHERE id = $1")
            .bind(id.0)
            .bind(at.as_microsecond())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_api_keys(&self, ws: WorkspaceId) -> Result<Vec<ApiKey>> {
        sqlx::query(&format!(
            "SELECT {API_KEY_COLS} FROM api_keys WHERE workspace_id = $1 ORDER BY id"
        ))
        .bind(ws.0)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::api_key)
        .collect()
    }

    async fn revoke_api_key(&self, ws: WorkspaceId, id: ApiKeyId) -> Result<ApiKey> {
        let r = sqlx::query(&format!(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $3)
             WHERE id = $1 AND workspace_id = $2 RETURNING {API_KEY_COLS}"
        ))
        .bind(id.0)
        .bind(ws.0)
        .bind(now_us())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::not_found("api_key"))?;
        rows::api_key(&r)
    }
}

#[async_trait]
impl ChannelStore for PgStore {
    async fn create_channel(&self, ws: WorkspaceId, new: NewChannel) -> Result<Channel> {
        let now = now_us();
        let r = sqlx::query(&format!(
            "INSERT INTO channels (workspace_id, kind, name, status, credentials, credentials_key_id, settings, created_at, updated_at)
             VALUES ($1, $2, $3, 'active', $4, $5, $6, $7, $7) RETURNING {CHANNEL_COLS}"
        ))
        .bind(ws.0)
        .bind(new.kind.as_str())
        .bind(&new.name)
        .bind(&new.credentials.data)
        .bind(&new.credentials.key_id)
        .bind(Json(&new.settings))
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| if is_fk_violation(&e) { StoreError::not_found("workspace") } else { e.into() })?;
        rows::channel(&r)
    }

    async fn get_channel(&self, ws: WorkspaceId, id: ChannelId) -> Result<Channel> {
        let r = sqlx::query(&format!(
            "SELECT {CHANNEL_COLS} FROM channels WHERE id = $1 AND workspace_id = $2"
        ))
        .bind(id.0)
        .bind(ws.0)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::not_found("channel"))?;
        rows::channel(&r)
    }

    async fn list_channels(&self, ws: WorkspaceId) -> Result<Vec<Channel>> {
        sqlx::query(&format!(
            "SELECT {CHANNEL_COLS} FROM channels WHERE workspace_id = $1 ORDER BY id"
        ))
        .bind(ws.0)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::channel)
        .collect()
    }

    async fn update_channel(
        &self,
        ws: WorkspaceId,
        id: ChannelId,
        patch: ChannelPatch,
    ) -> Result<Channel> {
        let (cred, key_id) = match patch.credentials {
            Some(s) => (Some(s.data), Some(s.key_id)),
            None => (None, None),
        };
        let r = sqlx::query(&format!(
            "UPDATE channels SET
                name = COALESCE($3, name),
                status = COALESCE($4, status),
                credentials = COALESCE($5, credentials),
                credentials_key_id = COALESCE($6, credentials_key_id),
                settings = COALESCE($7, settings),
                runtime = COALESCE($8, runtime),
                updated_at = $9
             WHERE id = $1 AND workspace_id = $2 RETURNING {CHANNEL_COLS}"
        ))
        .bind(id.0)
        .bind(ws.0)
        .bind(patch.name)
        .bind(patch.status.map(|s| s.as_str()))
        .bind(cred)
        .bind(key_id)
        .bind(patch.settings.as_ref().map(Json))
        .bind(patch.runtime.as_ref().map(Json))
        .bind(now_us())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::not_found("channel"))?;
        rows::channel(&r)
    }

    async fn delete_channel(&self, ws: WorkspaceId, id: ChannelId) -> Result<()> {
        let in_use = || {
            StoreError::conflict(
                "channel_in_use",
                "contacts have identities on this channel; remove them first",
                None,
            )
        };
        let mut tx = self.pool.begin().await?;
        let used: bool = sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM identities WHERE channel_id = $1 AND workspace_id = $2)",
        )
        .bind(id.0)
        .bind(ws.0)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        if used {
            return Err(in_use());
        }
        let n = sqlx::query("DELETE FROM channels WHERE id = $1 AND workspace_id = $2")
            .bind(id.0)
            .bind(ws.0)
            .execute(&mut *tx)
            .await
            // An identity attached concurrently still trips the foreign key.
            .map_err(|e| {
                if is_fk_violation(&e) {
                    in_use()
                } else {
                    e.into()
                }
            })?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::not_found("channel"));
        }
        tx.commit().await?;
        Ok(())
    }
}
