//! Workspaces, users and memberships, API keys and channels: small tables written
//! rarely, read on every request (API key lookup), so plain single-row statements.

use super::rows::{is_unique, json_col, now, parsed, to_json, ts, ts_opt, us};
use super::SqliteStore;
use crate::model::*;
use crate::{ApiKeyStore, ChannelStore, Result, StoreError, UserStore, WorkspaceStore};
use async_trait::async_trait;
use jiff::Timestamp;
use rusqlite::{params, Connection, OptionalExtension, Row};
use voronka_core::channel::ChannelStatus;
use voronka_core::crypto::Sealed;
use voronka_core::role::Scope;
use voronka_core::*;

fn workspace_row(r: &Row<'_>) -> rusqlite::Result<Workspace> {
    Ok(Workspace {
        id: WorkspaceId(r.get(0)?),
        name: r.get(1)?,
        created_at: ts(r, 2)?,
    })
}

fn ensure_workspace(conn: &Connection, ws: WorkspaceId) -> Result<()> {
    conn.prepare_cached("SELECT 1 FROM workspaces WHERE id = ?1")?
        .query_row([ws.0], |_| Ok(()))
        .optional()?
        .ok_or_else(|| StoreError::not_found("workspace"))
}

#[async_trait]
impl WorkspaceStore for SqliteStore {
    async fn create_workspace(&self, name: &str) -> Result<Workspace> {
        let name = name.to_string();
        self.write(move |c| {
            let at = now();
            c.execute(
                "INSERT INTO workspaces (name, created_at) VALUES (?1, ?2)",
                params![name, us(at)],
            )?;
            Ok(Workspace {
                id: WorkspaceId(c.last_insert_rowid()),
                name,
                created_at: at,
            })
        })
        .await
    }

    async fn get_workspace(&self, id: WorkspaceId) -> Result<Workspace> {
        self.read(move |c| {
            c.prepare_cached("SELECT id, name, created_at FROM workspaces WHERE id = ?1")?
                .query_row([id.0], workspace_row)
                .optional()?
                .ok_or_else(|| StoreError::not_found("workspace"))
        })
        .await
    }

    async fn list_workspaces(&self) -> Result<Vec<Workspace>> {
        self.read(|c| {
            Ok(
                c.prepare_cached("SELECT id, name, created_at FROM workspaces ORDER BY id")?
                    .query_map([], workspace_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            )
        })
        .await
    }
}

const USER_COLS: &str = "u.id, u.email, u.name, u.created_at";

fn user_row(r: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: UserId(r.get(0)?),
        email: r.get(1)?,
        name: r.get(2)?,
        created_at: ts(r, 3)?,
    })
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn create_user(&self, ws: WorkspaceId, new: NewUser) -> Result<Member> {
        self.write(move |c| {
            ensure_workspace(c, ws)?;
            let at = now();
            // users.email is COLLATE NOCASE: this lookup and the UNIQUE are case-insensitive.
            let existing = c
                .prepare_cached(&format!("SELECT {USER_COLS} FROM users u WHERE u.email = ?1"))?
                .query_row([&new.email], user_row)
                .optional()?;
            let user = match existing {
                Some(u) => u,
                None => {
                    c.execute(
                        "INSERT INTO users (email, name, password_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
                        params![new.email, new.name, new.password_hash, us(at)],
                    )?;
                    User {
                        id: UserId(c.last_insert_rowid()),
                        email: new.email.clone(),
                        name: new.name.clone(),
                        created_at: at,
                    }
                }
            };
            let inserted = c.execute(
                "INSERT INTO memberships (workspace_id, user_id, role, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![ws.0, user.id.0, new.role.as_str(), us(at)],
            );
            match inserted {
                Ok(_) => Ok(Member { user, role: new.role }),
                Err(e) if is_unique(&e) => Err(StoreError::conflict(
                    "member_exists",
                    format!("{} is already a member of this workspace", new.email),
                    Some("email"),
                )),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn find_user_by_email(&self, email: &str) -> Result<Option<UserLogin>> {
        let email = email.to_string();
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {USER_COLS}, u.password_hash FROM users u WHERE u.email = ?1"
            ))?
            .query_row([&email], |r| {
                Ok(UserLogin {
                    user: user_row(r)?,
                    password_hash: r.get(4)?,
                })
            })
            .optional()?)
        })
        .await
    }

    async fn list_members(&self, ws: WorkspaceId) -> Result<Vec<Member>> {
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {USER_COLS}, m.role FROM memberships m JOIN users u ON u.id = m.user_id \
                 WHERE m.workspace_id = ?1 ORDER BY u.id"
            ))?
            .query_map([ws.0], |r| {
                Ok(Member {
                    user: user_row(r)?,
                    role: parsed(r, 4)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}

const KEY_COLS: &str =
    "id, workspace_id, name, prefix, scopes, created_at, last_used_at, revoked_at, secret_hash";

fn key_row(r: &Row<'_>) -> rusqlite::Result<ApiKeyAuth> {
    let scopes: String = r.get(4)?;
    let scopes = scopes
        .split_whitespace()
        .map(|s| s.parse::<Scope>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, e.into())
        })?;
    Ok(ApiKeyAuth {
        key: ApiKey {
            id: ApiKeyId(r.get(0)?),
            workspace_id: WorkspaceId(r.get(1)?),
            name: r.get(2)?,
            prefix: r.get(3)?,
            scopes,
            created_at: ts(r, 5)?,
            last_used_at: ts_opt(r, 6)?,
            revoked_at: ts_opt(r, 7)?,
        },
        secret_hash: r.get(8)?,
    })
}

fn get_key(c: &Connection, ws: WorkspaceId, id: ApiKeyId) -> Result<ApiKey> {
    c.prepare_cached(&format!(
        "SELECT {KEY_COLS} FROM api_keys WHERE id = ?1 AND workspace_id = ?2"
    ))?
    .query_row([id.0, ws.0], key_row)
    .optional()?
    .map(|k| k.key)
    .ok_or_else(|| StoreError::not_found("api_key"))
}

#[async_trait]
impl ApiKeyStore for SqliteStore {
    async fn create_api_key(&self, ws: WorkspaceId, new: NewApiKey) -> Result<ApiKey> {
        self.write(move |c| {
            ensure_workspace(c, ws)?;
            let at = now();
            let scopes: Vec<&str> = new.scopes.iter().map(|s| s.as_str()).collect();
            let r = c.execute(
                "INSERT INTO api_keys (workspace_id, name, prefix, secret_hash, scopes, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![ws.0, new.name, new.prefix, new.secret_hash, scopes.join(" "), us(at)],
            );
            match r {
                Ok(_) => get_key(c, ws, ApiKeyId(c.last_insert_rowid())),
                Err(e) if is_unique(&e) => Err(StoreError::conflict(
                    "api_key_exists",
                    "an API key with this prefix already exists",
                    Some("prefix"),
                )),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn find_api_key(&self, prefix: &str) -> Result<Option<ApiKeyAuth>> {
        let prefix = prefix.to_string();
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {KEY_COLS} FROM api_keys WHERE prefix = ?1"
            ))?
            .query_row([&prefix], key_row)
            .optional()?)
        })
        .await
    }

    async fn touch_api_key(&self, id: ApiKeyId, at: Timestamp) -> Result<()> {
        self.write(move |c| {
            let n = c
                .prepare_cached("UPDATE api_keys SET last_used_at = ?1 WHERE id = ?2")?
                .execute([us(at), id.0])?;
            if n == 0 {
                return Err(StoreError::not_found("api_key"));
            }
            Ok(())
        })
        .await
    }

    async fn list_api_keys(&self, ws: WorkspaceId) -> Result<Vec<ApiKey>> {
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {KEY_COLS} FROM api_keys WHERE workspace_id = ?1 ORDER BY id"
            ))?
            .query_map([ws.0], |r| key_row(r).map(|k| k.key))?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn revoke_api_key(&self, ws: WorkspaceId, id: ApiKeyId) -> Result<ApiKey> {
        self.write(move |c| {
            // COALESCE keeps the first revocation time: revoking is idempotent.
            let n = c.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?1) WHERE id = ?2 AND workspace_id = ?3",
                params![us(now()), id.0, ws.0],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("api_key"));
            }
            get_key(c, ws, id)
        })
        .await
    }
}

/// Columns read by [`channel_row`].
pub(crate) const CHANNEL_COLS: &str =
    "id, workspace_id, kind, name, status, credentials, credentials_key_id, \
     settings, runtime, created_at, updated_at";

/// A channel row (columns [`CHANNEL_COLS`]).
pub(crate) fn channel_row(r: &Row<'_>) -> rusqlite::Result<Channel> {
    Ok(Channel {
        id: ChannelId(r.get(0)?),
        workspace_id: WorkspaceId(r.get(1)?),
        kind: parsed(r, 2)?,
        name: r.get(3)?,
        status: parsed(r, 4)?,
        credentials: Sealed {
            data: r.get(5)?,
            key_id: r.get(6)?,
        },
        settings: json_col(r, 7)?,
        runtime: json_col(r, 8)?,
        created_at: ts(r, 9)?,
        updated_at: ts(r, 10)?,
    })
}

fn get_channel(c: &Connection, ws: WorkspaceId, id: ChannelId) -> Result<Channel> {
    c.prepare_cached(&format!(
        "SELECT {CHANNEL_COLS} FROM channels WHERE id = ?1 AND workspace_id = ?2"
    ))?
    .query_row([id.0, ws.0], channel_row)
    .optional()?
    .ok_or_else(|| StoreError::not_found("channel"))
}

#[async_trait]
impl ChannelStore for SqliteStore {
    async fn create_channel(&self, ws: WorkspaceId, new: NewChannel) -> Result<Channel> {
        self.write(move |c| {
            ensure_workspace(c, ws)?;
            let at = now();
            c.execute(
                "INSERT INTO channels (workspace_id, kind, name, status, credentials, credentials_key_id, \
                 settings, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                params![
                    ws.0,
                    new.kind.as_str(),
                    new.name,
                    ChannelStatus::Active.as_str(),
                    new.credentials.data,
                    new.credentials.key_id,
                    to_json(&new.settings)?,
                    us(at)
                ],
            )?;
            get_channel(c, ws, ChannelId(c.last_insert_rowid()))
        })
        .await
    }

    async fn get_channel(&self, ws: WorkspaceId, id: ChannelId) -> Result<Channel> {
        self.read(move |c| get_channel(c, ws, id)).await
    }

    async fn list_channels(&self, ws: WorkspaceId) -> Result<Vec<Channel>> {
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {CHANNEL_COLS} FROM channels WHERE workspace_id = ?1 ORDER BY id"
            ))?
            .query_map([ws.0], channel_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn update_channel(
        &self,
        ws: WorkspaceId,
        id: ChannelId,
        patch: ChannelPatch,
    ) -> Result<Channel> {
        self.write(move |c| {
            let (data, key_id) = match patch.credentials {
                Some(s) => (Some(s.data), Some(s.key_id)),
                None => (None, None),
            };
            let settings = patch.settings.as_ref().map(to_json).transpose()?;
            let runtime = patch.runtime.as_ref().map(to_json).transpose()?;
            let n = c.execute(
                "UPDATE channels SET name = COALESCE(?1, name), status = COALESCE(?2, status), \
                 credentials = COALESCE(?3, credentials), credentials_key_id = COALESCE(?4, credentials_key_id), \
                 settings = COALESCE(?5, settings), runtime = COALESCE(?6, runtime), \
                 updated_at = ?7 WHERE id = ?8 AND workspace_id = ?9",
                params![
                    patch.name,
                    patch.status.map(|s| s.as_str()),
                    data,
                    key_id,
                    settings,
                    runtime,
                    us(now()),
                    id.0,
                    ws.0
                ],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("channel"));
            }
            get_channel(c, ws, id)
        })
        .await
    }

    async fn delete_channel(&self, ws: WorkspaceId, id: ChannelId) -> Result<()> {
        self.write(move |c| {
            get_channel(c, ws, id)?;
            let used = c
                .prepare_cached("SELECT 1 FROM identities WHERE channel_id = ?1 LIMIT 1")?
                .exists([id.0])?;
            if used {
                return Err(StoreError::conflict(
                    "channel_in_use",
                    "contacts still have identities on this channel",
                    None,
                ));
            }
            c.execute(
                "DELETE FROM channels WHERE id = ?1 AND workspace_id = ?2",
                [id.0, ws.0],
            )?;
            Ok(())
        })
        .await
    }
}
