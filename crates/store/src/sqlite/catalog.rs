//! SchemaStore: the workspace's tags and custom field definitions.

use super::rows::{is_unique, now, parsed, strings, ts, us};
use super::SqliteStore;
use crate::model::*;
use crate::{Result, SchemaStore, StoreError};
use async_trait::async_trait;
use rusqlite::{params, Row};
use voronka_core::field::{FieldDefinition, FieldSpec};
use voronka_core::*;

fn field_row(r: &Row<'_>) -> rusqlite::Result<FieldDefinition> {
    Ok(FieldDefinition {
        id: FieldId(r.get(0)?),
        spec: FieldSpec {
            key: r.get(1)?,
            label: r.get(2)?,
            field_type: parsed(r, 3)?,
            choices: strings(r, 4)?,
        },
    })
}

#[async_trait]
impl SchemaStore for SqliteStore {
    async fn create_tag(&self, ws: WorkspaceId, name: &str) -> Result<Tag> {
        let name = name.to_string();
        self.write(move |c| {
            let at = now();
            let r = c.execute(
                "INSERT INTO tags (workspace_id, name, created_at) VALUES (?1, ?2, ?3)",
                params![ws.0, name, us(at)],
            );
            match r {
                Ok(_) => Ok(Tag {
                    id: TagId(c.last_insert_rowid()),
                    name,
                    contacts: 0,
                    created_at: at,
                }),
                Err(e) if is_unique(&e) => Err(StoreError::conflict(
                    "tag_exists",
                    format!("a tag named `{name}` already exists"),
                    Some("name"),
                )),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn list_tags(&self, ws: WorkspaceId) -> Result<Vec<Tag>> {
        self.read(move |c| {
            // Counting contact_tags alone (a covering range of its primary key) is exact
            // because erasure deletes an erased contact's tags: no join to contacts needed.
            Ok(c.prepare_cached(
                "SELECT t.id, t.name, t.created_at, \
                 (SELECT count(*) FROM contact_tags ct WHERE ct.tag_id = t.id) \
                 FROM tags t WHERE t.workspace_id = ?1 ORDER BY t.name",
            )?
            .query_map([ws.0], |r| {
                Ok(Tag {
                    id: TagId(r.get(0)?),
                    name: r.get(1)?,
                    created_at: ts(r, 2)?,
                    contacts: r.get::<_, i64>(3)?.max(0) as u64,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn delete_tag(&self, ws: WorkspaceId, id: TagId) -> Result<()> {
        self.write(move |c| {
            // contact_tags rows go with it (ON DELETE CASCADE).
            let n = c.execute(
                "DELETE FROM tags WHERE id = ?1 AND workspace_id = ?2",
                [id.0, ws.0],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("tag"));
            }
            Ok(())
        })
        .await
    }

    async fn create_field(&self, ws: WorkspaceId, spec: FieldSpec) -> Result<FieldDefinition> {
        self.write(move |c| {
            let r = c.execute(
                "INSERT INTO field_definitions (workspace_id, key, label, field_type, choices, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    ws.0,
                    spec.key,
                    spec.label,
                    spec.field_type.as_str(),
                    super::rows::json_strings(&spec.choices),
                    us(now())
                ],
            );
            match r {
                Ok(_) => Ok(FieldDefinition {
                    id: FieldId(c.last_insert_rowid()),
                    spec,
                }),
                Err(e) if is_unique(&e) => Err(StoreError::conflict(
                    "field_exists",
                    format!("a field with key `{}` already exists", spec.key),
                    Some("key"),
                )),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn list_fields(&self, ws: WorkspaceId) -> Result<Vec<FieldDefinition>> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT id, key, label, field_type, choices FROM field_definitions \
                 WHERE workspace_id = ?1 ORDER BY key",
            )?
            .query_map([ws.0], field_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn delete_field(&self, ws: WorkspaceId, id: FieldId) -> Result<()> {
        self.write(move |c| {
            // contact_fields rows go with it (ON DELETE CASCADE).
            let n = c.execute(
                "DELETE FROM field_definitions WHERE id = ?1 AND workspace_id = ?2",
                [id.0, ws.0],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("field"));
            }
            Ok(())
        })
        .await
    }
}
