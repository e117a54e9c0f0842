//! Queries on `vm_mcp_servers`: the MCP servers each VM runs, written with the VM's row.

use rusqlite::{Connection, params};
use uuid::Uuid;

use nexus_lib::agent::McpServerSpec;
use nexus_lib::api::VmState;

use super::StoreError;
use super::images::uuid_col;

/// Records `servers` for VM `vm` (inside the VM's insert transaction).
pub fn insert_in(conn: &Connection, vm: Uuid, servers: &[McpServerSpec]) -> Result<(), StoreError> {
    for server in servers {
        let spec = serde_json::to_string(server).map_err(|e| {
            StoreError::Sqlite(rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
        })?;
        conn.execute(
            "INSERT INTO vm_mcp_servers (vm_id, name, spec) VALUES (?1, ?2, ?3)",
            params![vm.to_string(), server.name, spec],
        )?;
    }
    Ok(())
}

/// The MCP servers of VM `vm`, by name.
pub fn of_vm(conn: &Connection, vm: Uuid) -> Result<Vec<McpServerSpec>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT spec FROM vm_mcp_servers WHERE vm_id = ?1 ORDER BY name")?;
    let rows = stmt.query_map([vm.to_string()], |r| r.get::<_, String>(0))?;
    let mut servers = Vec::new();
    for row in rows {
        servers.push(parse(&row?)?);
    }
    Ok(servers)
}

/// Running VMs that have MCP servers: id, name and servers.
pub fn running(conn: &Connection) -> Result<Vec<(Uuid, String, Vec<McpServerSpec>)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT v.id, v.name FROM vms v JOIN vm_mcp_servers s ON s.vm_id = v.id
         WHERE v.state = ?1 ORDER BY v.name",
    )?;
    let vms = stmt
        .query_map([VmState::Running.as_str()], |r| {
            Ok((uuid_col(r, 0)?, r.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    vms.into_iter()
        .map(|(id, name)| Ok((id, name, of_vm(conn, id)?)))
        .collect()
}

fn parse(spec: &str) -> Result<McpServerSpec, StoreError> {
    serde_json::from_str(spec).map_err(|e| {
        StoreError::Sqlite(rusqlite::Error::FromSqlConversionFailure(
            2,
            rusqlite::types::Type::Text,
            Box::new(e),
        ))
    })
}
