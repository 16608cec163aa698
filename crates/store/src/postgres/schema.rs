//! Tags and custom field definitions (a workspace's "schema"), plus the helpers the
//! contact code uses to resolve tag names and field ids in one query each.

use super::{is_fk_violation, is_unique_violation, now_us, parse_stored, ts, PgStore};
use crate::model::*;
use crate::{Result, SchemaStore, StoreError};
use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgConnection, Row};
use std::collections::HashMap;
use voronka_core::field::{FieldDefinition, FieldSpec};
use voronka_core::*;

const FIELD_COLS: &str = "id, key, label, field_type, choices";

fn field_def(r: &PgRow) -> Result<FieldDefinition> {
    let t: String = r.try_get("field_type")?;
    let Json(choices): Json<Vec<String>> = r.try_get("choices")?;
    Ok(FieldDefinition {
        id: FieldId(r.try_get("id")?),
        spec: FieldSpec {
            key: r.try_get("key")?,
            label: r.try_get("label")?,
            field_type: parse_stored("field type", &t)?,
            choices,
        },
    })
}

/// Makes sure every tag name exists in `ws` and returns name → id. Two statements for
/// any number of names: insert the missing ones, then read them all back.
pub(crate) async fn ensure_tags(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    names: &[String],
    now: i64,
) -> Result<HashMap<String, i64>> {
    if names.is_empty() {
        return Ok(HashMap::new());
    }
    sqlx::query(
        "INSERT INTO tags (workspace_id, name, created_at)
         SELECT $1, n, $3 FROM unnest($2::text[]) AS n
         ON CONFLICT (workspace_id, name) DO NOTHING",
    )
    .bind(ws.0)
    .bind(names)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let rows = sqlx::query("SELECT id, name FROM tags WHERE workspace_id = $1 AND name = ANY($2)")
        .bind(ws.0)
        .bind(names)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get::<String, _>(1)?, r.try_get::<i64, _>(0)?)))
        .collect()
}

/// A field definition as the contact code needs it: its key, for events.
#[derive(Debug, Clone)]
pub(crate) struct FieldInfo {
    /// The field key.
    pub key: String,
}

/// Looks up the given field ids in `ws`; ids of other workspaces are simply absent.
pub(crate) async fn field_infos(
    conn: &mut PgConnection,
    ws: WorkspaceId,
    ids: &[i64],
) -> Result<HashMap<i64, FieldInfo>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(
        "SELECT id, key FROM field_definitions WHERE workspace_id = $1 AND id = ANY($2)",
    )
    .bind(ws.0)
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get::<i64, _>(0)?, FieldInfo { key: r.try_get(1)? })))
        .collect()
}

#[async_trait]
impl SchemaStore for PgStore {
    async fn create_tag(&self, ws: WorkspaceId, name: &str) -> Result<Tag> {
        let r = sqlx::query("INSERT INTO tags (workspace_id, name, created_at) VALUES ($1, $2, $3) RETURNING id, name, created_at")
            .bind(ws.0)
            .bind(name)
            .bind(now_us())
            .fetch_one(&self.pool)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::conflict("tag_exists", format!("a tag named `{name}` already exists"), Some("name"))
                } else if is_fk_violation(&e) {
                    StoreError::not_found("workspace")
                } else {
                    e.into()
                }
            })?;
        Ok(Tag {
            id: TagId(r.try_get("id")?),
            name: r.try_get("name")?,
            contacts: 0,
            created_at: ts(r.try_get("created_at")?),
        })
    }

    async fn list_tags(&self, ws: WorkspaceId) -> Result<Vec<Tag>> {
        // Erasure deletes an erased contact's tag links, so counting links counts
        // non-erased contacts. COLLATE "C" sorts bytewise, as SQLite does.
        sqlx::query(
            r#"SELECT t.id, t.name, t.created_at,
                      (SELECT count(*) FROM contact_tags ct WHERE ct.tag_id = t.id) AS contacts
               FROM tags t WHERE t.workspace_id = $1 ORDER BY t.name COLLATE "C""#,
        )
        .bind(ws.0)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(Tag {
                id: TagId(r.try_get("id")?),
                name: r.try_get("name")?,
                contacts: u64::try_from(r.try_get::<i64, _>("contacts")?).unwrap_or(0),
                created_at: ts(r.try_get("created_at")?),
            })
        })
        .collect()
    }

    async fn delete_tag(&self, ws: WorkspaceId, id: TagId) -> Result<()> {
        // contact_tags rows go with the tag (ON DELETE CASCADE).
        let n = sqlx::query("DELETE FROM tags WHERE id = $1 AND workspace_id = $2")
            .bind(id.0)
            .bind(ws.0)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::not_found("tag"));
        }
        Ok(())
    }

    async fn create_field(&self, ws: WorkspaceId, spec: FieldSpec) -> Result<FieldDefinition> {
        let r = sqlx::query(&format!(
            "INSERT INTO field_definitions (workspace_id, key, label, field_type, choices, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {FIELD_COLS}"
        ))
        .bind(ws.0)
        .bind(&spec.key)
        .bind(&spec.label)
        .bind(spec.field_type.as_str())
        .bind(Json(&spec.choices))
        .bind(now_us())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::conflict("field_exists", format!("a field with key `{}` already exists", spec.key), Some("key"))
            } else if is_fk_violation(&e) {
                StoreError::not_found("workspace")
            } else {
                e.into()
            }
        })?;
        field_def(&r)
    }

    async fn list_fields(&self, ws: WorkspaceId) -> Result<Vec<FieldDefinition>> {
        sqlx::query(&format!(
            r#"SELECT {FIELD_COLS} FROM field_definitions WHERE workspace_id = $1 ORDER BY key COLLATE "C""#
        ))
        .bind(ws.0)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(field_def)
        .collect()
    }

    async fn delete_field(&self, ws: WorkspaceId, id: FieldId) -> Result<()> {
        // Values go with the definition (ON DELETE CASCADE).
        let n = sqlx::query("DELETE FROM field_definitions WHERE id = $1 AND workspace_id = $2")
            .bind(id.0)
            .bind(ws.0)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::not_found("field"));
        }
        Ok(())
    }
}
