//! Queries on `api_tokens` and `api_token_vms`: tokens by the digest of their secret, and the VMs
//! in each one's scope.

use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use nexus_lib::api::Token;

use super::images::uuid_col;
use super::{StoreError, rfc3339_ms};

/// A token to insert.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub id: Uuid,
    pub name: Option<String>,
    pub digest: [u8; 32],
    pub lifecycle: bool,
    pub created_at_ms: i64,
}

/// What a presented secret grants.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub id: Uuid,
    pub lifecycle: bool,
    pub vms: Vec<Uuid>,
}

/// Inserts `token` with the VMs named by `vms` (ids or names) in one transaction; `Ok(Err(key))`
/// names a VM that does not exist (nothing is written then).
pub fn insert(
    conn: &mut Connection,
    token: &NewToken,
    vms: &[String],
) -> Result<Result<Token, String>, StoreError> {
    let tx = conn.transaction()?;
    let mut scope = Vec::with_capacity(vms.len());
    for key in vms {
        let found: Option<Uuid> = tx
            .query_row(
                "SELECT id FROM vms WHERE id = ?1 OR name = ?1",
                [key],
                |r| uuid_col(r, 0),
            )
            .optional()?;
        match found {
            Some(id) => scope.push(id),
            None => return Ok(Err(key.clone())),
        }
    }
    tx.execute(
        "INSERT INTO api_tokens (id, name, digest, lifecycle, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            token.id.to_string(),
            token.name,
            &token.digest[..],
            token.lifecycle,
            token.created_at_ms
        ],
    )?;
    for vm in &scope {
        tx.execute(
            "INSERT OR IGNORE INTO api_token_vms (token_id, vm_id) VALUES (?1, ?2)",
            params![token.id.to_string(), vm.to_string()],
        )?;
    }
    let created =
        get(&tx, token.id)?.ok_or(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))?;
    tx.commit()?;
    Ok(Ok(created))
}

/// One token as listed.
pub fn get(conn: &Connection, id: Uuid) -> Result<Option<Token>, StoreError> {
    Ok(list(conn)?.into_iter().find(|t| t.id == id))
}

/// Every token, oldest first, with the names of its VMs.
pub fn list(conn: &Connection) -> Result<Vec<Token>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT t.id, t.name, t.lifecycle, t.created_at_ms, v.name
         FROM api_tokens t
         LEFT JOIN api_token_vms s ON s.token_id = t.id
         LEFT JOIN vms v ON v.id = s.vm_id
         ORDER BY t.created_at_ms, t.id, v.name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            uuid_col(r, 0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, bool>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, Option<String>>(4)?,
        ))
    })?;
    let mut tokens: Vec<Token> = Vec::new();
    for row in rows {
        let (id, name, lifecycle, created_at_ms, vm) = row?;
        if tokens.last().is_none_or(|t| t.id != id) {
            tokens.push(Token {
                id,
                name,
                vms: Vec::new(),
                lifecycle,
                created_at: rfc3339_ms(created_at_ms),
            });
        }
        if let (Some(vm), Some(token)) = (vm, tokens.last_mut()) {
            token.vms.push(vm);
        }
    }
    Ok(tokens)
}

/// Deletes a token; whether it existed.
pub fn delete(conn: &Connection, id: Uuid) -> Result<bool, StoreError> {
    Ok(conn.execute("DELETE FROM api_tokens WHERE id = ?1", [id.to_string()])? > 0)
}

/// What the token whose secret has `digest` grants, if there is one.
pub fn grant(conn: &Connection, digest: &[u8; 32]) -> Result<Option<Grant>, StoreError> {
    let head = conn
        .query_row(
            "SELECT id, lifecycle FROM api_tokens WHERE digest = ?1",
            [&digest[..]],
            |r| Ok((uuid_col(r, 0)?, r.get::<_, bool>(1)?)),
        )
        .optional()?;
    let Some((id, lifecycle)) = head else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached("SELECT vm_id FROM api_token_vms WHERE token_id = ?1")?;
    let vms = stmt
        .query_map([id.to_string()], |r| uuid_col(r, 0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(Grant { id, lifecycle, vms }))
}

/// Adds a VM to a token's scope (a VM the token created).
pub fn add_vm(conn: &Connection, token: Uuid, vm: Uuid) -> Result<(), StoreError> {
    conn.execute(
        "INSERT OR IGNORE INTO api_token_vms (token_id, vm_id) VALUES (?1, ?2)",
        params![token.to_string(), vm.to_string()],
    )?;
    Ok(())
}
