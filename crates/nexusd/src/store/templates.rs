//! Queries on the `templates` table: every `template create` adds a version of its name.

use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use nexus_lib::api::Template;

use super::images::uuid_col;
use super::{StoreError, now_ms, rfc3339_ms};

/// A template version as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRow {
    pub id: Uuid,
    pub name: String,
    pub version: u32,
    pub base: String,
    pub source: String,
    pub created_at_ms: i64,
}

impl TemplateRow {
    pub fn to_api(&self) -> Template {
        Template {
            id: self.id,
            name: self.name.clone(),
            version: self.version,
            base: self.base.clone(),
            source: self.source.clone(),
            created_at: rfc3339_ms(self.created_at_ms),
        }
    }
}

const COLUMNS: &str = "id, name, version, base, source, created_at_ms";

fn from_row(row: &Row<'_>) -> rusqlite::Result<TemplateRow> {
    Ok(TemplateRow {
        id: uuid_col(row, 0)?,
        name: row.get(1)?,
        version: row.get(2)?,
        base: row.get(3)?,
        source: row.get(4)?,
        created_at_ms: row.get(5)?,
    })
}

/// Adds the next version of template `name`.
pub fn insert_version(
    conn: &mut Connection,
    name: &str,
    base: &str,
    source: &str,
) -> Result<TemplateRow, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: u32 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) + 1 FROM templates WHERE name = ?1",
        [name],
        |r| r.get(0),
    )?;
    let row = TemplateRow {
        id: Uuid::now_v7(),
        name: name.to_owned(),
        version,
        base: base.to_owned(),
        source: source.to_owned(),
        created_at_ms: now_ms(),
    };
    tx.execute(
        &format!("INSERT INTO templates ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
        params![
            row.id.to_string(),
            row.name,
            row.version,
            row.base,
            row.source,
            row.created_at_ms
        ],
    )?;
    tx.commit()?;
    Ok(row)
}

/// The newest version of a template by name, or a version by id, or `name@version`.
pub fn get(conn: &Connection, key: &str) -> Result<Option<TemplateRow>, StoreError> {
    if let Some((name, version)) = key.rsplit_once('@')
        && let Ok(version) = version.parse::<u32>()
    {
        return Ok(conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM templates WHERE name = ?1 AND version = ?2"),
                params![name, version],
                from_row,
            )
            .optional()?);
    }
    Ok(conn
        .query_row(
            &format!(
                "SELECT {COLUMNS} FROM templates WHERE id = ?1 OR name = ?1
                 ORDER BY version DESC LIMIT 1"
            ),
            [key],
            from_row,
        )
        .optional()?)
}

/// The newest version of every template, by name.
pub fn list_latest(conn: &Connection) -> Result<Vec<TemplateRow>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM templates t
         WHERE version = (SELECT MAX(version) FROM templates WHERE name = t.name)
         ORDER BY name"
    ))?;
    let rows = stmt
        .query_map([], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Every version of template `name`, oldest first.
pub fn versions(conn: &Connection, name: &str) -> Result<Vec<TemplateRow>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM templates WHERE name = ?1 ORDER BY version"
    ))?;
    let rows = stmt
        .query_map([name], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Deletes every version of template `name` (its builds keep their copies); the number removed.
pub fn delete(conn: &Connection, name: &str) -> Result<usize, StoreError> {
    Ok(conn.execute("DELETE FROM templates WHERE name = ?1", [name])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, crate::store::Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("n.db")).unwrap();
        (dir, store)
    }

    #[test]
    fn versions_count_up_per_name_and_the_newest_is_found_by_name() {
        let (_d, store) = store();
        store
            .call_blocking(|c| {
                insert_version(c, "a", "default", "v1")?;
                insert_version(c, "b", "default", "b1")?;
                let a2 = insert_version(c, "a", "default", "v2")?;
                assert_eq!(a2.version, 2);
                assert_eq!(get(c, "a")?.unwrap().source, "v2");
                assert_eq!(get(c, "a@1")?.unwrap().source, "v1");
                assert_eq!(get(c, &a2.id.to_string())?.unwrap().version, 2);
                assert_eq!(list_latest(c)?.len(), 2);
                assert_eq!(delete(c, "a")?, 2);
                assert!(get(c, "a")?.is_none());
                Ok(())
            })
            .unwrap();
    }
}
