//! Queries on `e2b_sandboxes` (the E2B adapter's record of each sandbox: the VM behind it, its
//! template, metadata, environment, envd token and expiry) and `e2b_sandbox_ends` (why each
//! one ended, kept after its VM is gone).

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use super::StoreError;
use super::images::uuid_col;

/// One sandbox record.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxRow {
    pub vm_id: Uuid,
    pub sandbox_id: String,
    pub template_id: String,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    pub access_token: String,
    pub started_at_ms: i64,
    pub end_at_ms: i64,
}

const COLUMNS: &str =
    "vm_id, sandbox_id, template_id, metadata, env_vars, access_token, started_at_ms, end_at_ms";

fn json_map(row: &Row<'_>, idx: usize) -> rusqlite::Result<BTreeMap<String, String>> {
    let text: String = row.get(idx)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<SandboxRow> {
    Ok(SandboxRow {
        vm_id: uuid_col(row, 0)?,
        sandbox_id: row.get(1)?,
        template_id: row.get(2)?,
        metadata: json_map(row, 3)?,
        env_vars: json_map(row, 4)?,
        access_token: row.get(5)?,
        started_at_ms: row.get(6)?,
        end_at_ms: row.get(7)?,
    })
}

fn to_json(map: &BTreeMap<String, String>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".into())
}

pub fn insert(conn: &Connection, row: &SandboxRow) -> Result<(), StoreError> {
    conn.execute(
        &format!("INSERT INTO e2b_sandboxes ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
        params![
            row.vm_id.to_string(),
            row.sandbox_id,
            row.template_id,
            to_json(&row.metadata),
            to_json(&row.env_vars),
            row.access_token,
            row.started_at_ms,
            row.end_at_ms
        ],
    )?;
    Ok(())
}

pub fn get(conn: &Connection, sandbox_id: &str) -> Result<Option<SandboxRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM e2b_sandboxes WHERE sandbox_id = ?1"),
            [sandbox_id],
            from_row,
        )
        .optional()?)
}

/// Every sandbox, oldest first (ties by id), so pages are stable.
pub fn list(conn: &mut Connection) -> Result<Vec<SandboxRow>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM e2b_sandboxes ORDER BY started_at_ms, sandbox_id"
    ))?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Sets when the sandbox expires; false when there is no such sandbox.
pub fn set_end(conn: &Connection, sandbox_id: &str, end_at_ms: i64) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "UPDATE e2b_sandboxes SET end_at_ms = ?2 WHERE sandbox_id = ?1",
        params![sandbox_id, end_at_ms],
    )? == 1)
}

/// Sandboxes whose expiry is at or before `now_ms`.
pub fn due(conn: &Connection, now_ms: i64) -> Result<Vec<SandboxRow>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM e2b_sandboxes WHERE end_at_ms <= ?1 ORDER BY end_at_ms"
    ))?;
    let rows = stmt.query_map([now_ms], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The earliest expiry, if any sandbox exists.
pub fn next_end(conn: &mut Connection) -> Result<Option<i64>, StoreError> {
    Ok(conn.query_row("SELECT MIN(end_at_ms) FROM e2b_sandboxes", [], |r| r.get(0))?)
}

/// Records why a sandbox ended.
pub fn record_end(
    conn: &Connection,
    sandbox_id: &str,
    vm_id: Uuid,
    reason: &str,
    at_ms: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO e2b_sandbox_ends (sandbox_id, vm_id, reason, ended_at_ms) VALUES (?1, ?2, ?3, ?4)",
        params![sandbox_id, vm_id.to_string(), reason, at_ms],
    )?;
    Ok(())
}

/// Why a sandbox ended, the latest record.
pub fn end_reason(conn: &Connection, sandbox_id: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT reason FROM e2b_sandbox_ends WHERE sandbox_id = ?1 ORDER BY seq DESC LIMIT 1",
            [sandbox_id],
            |r| r.get(0),
        )
        .optional()?)
}
