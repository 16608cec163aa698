//! AdminStore: migrations, liveness, and the erasure audit.

use super::{schema, SqliteStore};
use crate::{AdminStore, Result};
use async_trait::async_trait;
use rusqlite::Connection;

#[async_trait]
impl AdminStore for SqliteStore {
    async fn migrate(&self) -> Result<usize> {
        self.write(schema::migrate).await
    }

    async fn ping(&self) -> Result<()> {
        self.read(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn find_text_everywhere(&self, needle: &str) -> Result<Vec<String>> {
        let needle = needle.to_string();
        self.read(move |c| find_text(c, &needle)).await
    }
}

/// Scans every text-ish column of every table for `needle`. Deliberately generic (read
/// from the catalogue, not a hard-coded list) so a table added later is audited too.
fn find_text(conn: &Connection, needle: &str) -> Result<Vec<String>> {
    let tables = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")?
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut hits = Vec::new();
    for table in tables {
        let cols = conn
            .prepare(&format!(
                "SELECT name, type FROM pragma_table_info('{}')",
                table.replace('\'', "''")
            ))?
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for (col, ty) in cols {
            let ty = ty.to_ascii_uppercase();
            // SQLite's type affinity: TEXT/CLOB/CHAR are text, BLOB or no type keeps bytes.
            let textish = ty.is_empty()
                || ty.contains("TEXT")
                || ty.contains("CHAR")
                || ty.contains("CLOB")
                || ty.contains("BLOB")
                || ty.contains("JSON");
            if !textish {
                continue;
            }
            // Compared as bytes so BLOB columns (saved response bodies) are searched too.
            let sql = format!(
                "SELECT 1 FROM \"{t}\" WHERE instr(CAST(\"{c}\" AS BLOB), CAST(?1 AS BLOB)) > 0 LIMIT 1",
                t = table.replace('"', "\"\""),
                c = col.replace('"', "\"\"")
            );
            let found = conn.prepare(&sql)?.exists([needle])?;
            if found {
                hits.push(format!("{table}.{col}"));
            }
        }
    }
    Ok(hits)
}
