//! Queries on the `images` table. A row is written only after its subvolume is published.

use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use nexus_lib::api::{Image, StorageState};

use super::{StoreError, rfc3339_ms};

/// An image row as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRow {
    pub id: Uuid,
    pub name: String,
    pub state: StorageState,
    pub size_bytes: u64,
    pub sha256: String,
    pub source: String,
    pub created_at_ms: i64,
}

impl ImageRow {
    /// The API's view of the row.
    pub fn to_api(&self) -> Image {
        Image {
            id: self.id,
            name: self.name.clone(),
            state: self.state,
            size_bytes: self.size_bytes,
            sha256: self.sha256.clone(),
            source: self.source.clone(),
            created_at: rfc3339_ms(self.created_at_ms),
        }
    }

    /// A ready image row named `name`, for tests that need one without a subvolume.
    #[cfg(test)]
    pub(crate) fn ready(name: &str) -> Self {
        Self {
            id: Uuid::now_v7(),
            name: name.into(),
            state: StorageState::Ready,
            size_bytes: 4096,
            sha256: "00".into(),
            source: "dir:/x".into(),
            created_at_ms: super::now_ms(),
        }
    }
}

/// Outcome of an insert that may clash on the name.
#[derive(Debug)]
pub enum Inserted {
    Ok,
    NameTaken,
}

/// Outcome of a guarded delete.
#[derive(Debug)]
pub enum Deleted {
    Ok(ImageRow),
    NotFound,
    /// Drives made from the image still exist (their names).
    InUse(Vec<String>),
}

const COLUMNS: &str = "id, name, state, size_bytes, sha256, source, created_at_ms";

pub(super) fn uuid_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<Uuid> {
    let s: String = row.get(idx)?;
    Uuid::parse_str(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
    })
}

pub(super) fn state_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<StorageState> {
    let s: String = row.get(idx)?;
    s.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
    })
}

fn image_from_row(row: &Row<'_>) -> rusqlite::Result<ImageRow> {
    Ok(ImageRow {
        id: uuid_col(row, 0)?,
        name: row.get(1)?,
        state: state_col(row, 2)?,
        size_bytes: row.get::<_, i64>(3)? as u64,
        sha256: row.get(4)?,
        source: row.get(5)?,
        created_at_ms: row.get(6)?,
    })
}

/// Whether an image is named `name`.
pub fn name_taken(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM images WHERE name = ?1)",
        [name],
        |r| r.get(0),
    )?)
}

/// Whether image `id` has a row.
pub fn exists(conn: &Connection, id: Uuid) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM images WHERE id = ?1)",
        [id.to_string()],
        |r| r.get(0),
    )?)
}

/// Inserts an image row; a name clash writes nothing.
pub fn insert(conn: &Connection, row: &ImageRow) -> Result<Inserted, StoreError> {
    let inserted = conn.execute(
        &format!(
            "INSERT INTO images ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(name) DO NOTHING"
        ),
        params![
            row.id.to_string(),
            row.name,
            row.state.as_str(),
            row.size_bytes as i64,
            row.sha256,
            row.source,
            row.created_at_ms
        ],
    )?;
    Ok(if inserted == 1 {
        Inserted::Ok
    } else {
        Inserted::NameTaken
    })
}

/// Finds an image by id or by name.
pub fn get(conn: &Connection, id_or_name: &str) -> Result<Option<ImageRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM images WHERE id = ?1 OR name = ?1"),
            [id_or_name],
            image_from_row,
        )
        .optional()?)
}

/// All images, oldest first.
pub fn list(conn: &Connection) -> Result<Vec<ImageRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM images ORDER BY created_at_ms, id"
    ))?;
    let rows = stmt
        .query_map([], image_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Deletes an image unless a drive depends on it.
pub fn delete(conn: &mut Connection, id_or_name: &str) -> Result<Deleted, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let Some(row) = get(&tx, id_or_name)? else {
        return Ok(Deleted::NotFound);
    };
    let mut stmt = tx.prepare("SELECT name FROM drives WHERE image_id = ?1 ORDER BY name")?;
    let users = stmt
        .query_map([row.id.to_string()], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    drop(stmt);
    if !users.is_empty() {
        return Ok(Deleted::InUse(users));
    }
    tx.execute("DELETE FROM images WHERE id = ?1", [row.id.to_string()])?;
    tx.commit()?;
    Ok(Deleted::Ok(row))
}

/// Marks image `id` broken (its subvolume is gone).
pub fn mark_broken(conn: &Connection, id: Uuid) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE images SET state = 'broken' WHERE id = ?1",
        [id.to_string()],
    )?;
    Ok(())
}
