//! Queries on `vm_runtime` (the processes of a live VM, so a restarted daemon can re-adopt
//! them) and `vm_boots` (one row per boot with its phase timings and outcome).

use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use nexus_lib::api::BootRecord;

use super::{StoreError, rfc3339_ms};

/// The processes of a live VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeRow {
    pub vm_id: Uuid,
    pub boot_id: i64,
    pub backend: String,
    pub accel: String,
    pub runtime_dir: String,
    pub vmm_pid: u32,
    pub vmm_start_ticks: u64,
    pub helper_pid: Option<u32>,
    pub helper_start_ticks: Option<u64>,
}

pub fn put_runtime(conn: &Connection, row: &RuntimeRow) -> Result<(), StoreError> {
    conn.execute(
        "INSERT OR REPLACE INTO vm_runtime (vm_id, boot_id, backend, accel, runtime_dir,
             vmm_pid, vmm_start_ticks, helper_pid, helper_start_ticks)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            row.vm_id.to_string(),
            row.boot_id,
            row.backend,
            row.accel,
            row.runtime_dir,
            row.vmm_pid,
            row.vmm_start_ticks as i64,
            row.helper_pid,
            row.helper_start_ticks.map(|t| t as i64),
        ],
    )?;
    Ok(())
}

pub fn get_runtime(conn: &Connection, vm_id: Uuid) -> Result<Option<RuntimeRow>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT boot_id, backend, accel, runtime_dir, vmm_pid, vmm_start_ticks, helper_pid,
                    helper_start_ticks
             FROM vm_runtime WHERE vm_id = ?1",
            [vm_id.to_string()],
            |r| {
                Ok(RuntimeRow {
                    vm_id,
                    boot_id: r.get(0)?,
                    backend: r.get(1)?,
                    accel: r.get(2)?,
                    runtime_dir: r.get(3)?,
                    vmm_pid: r.get(4)?,
                    vmm_start_ticks: r.get::<_, i64>(5)? as u64,
                    helper_pid: r.get(6)?,
                    helper_start_ticks: r.get::<_, Option<i64>>(7)?.map(|t| t as u64),
                })
            },
        )
        .optional()?)
}

/// Forgets the processes of `boot_id` only (a newer boot's row stays).
pub fn delete_runtime_of_boot(
    conn: &Connection,
    vm_id: Uuid,
    boot_id: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM vm_runtime WHERE vm_id = ?1 AND boot_id = ?2",
        params![vm_id.to_string(), boot_id],
    )?;
    Ok(())
}

pub fn delete_runtime(conn: &Connection, vm_id: Uuid) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM vm_runtime WHERE vm_id = ?1",
        [vm_id.to_string()],
    )?;
    Ok(())
}

/// Opens a boot record; returns its id.
pub fn insert_boot(
    conn: &Connection,
    vm_id: Uuid,
    started_at_ms: i64,
    backend: &str,
    accel: &str,
) -> Result<i64, StoreError> {
    conn.execute(
        "INSERT INTO vm_boots (vm_id, started_at_ms, backend, accel, outcome)
         VALUES (?1, ?2, ?3, ?4, 'booting')",
        params![vm_id.to_string(), started_at_ms, backend, accel],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Phase timings of a boot, all in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootPhases {
    pub vmm_ready_ms: Option<u64>,
    pub guest_init_ms: Option<u64>,
    pub guest_ready_ms: Option<u64>,
    pub agent_ready_ms: Option<u64>,
}

pub fn finish_boot(
    conn: &Connection,
    boot_id: i64,
    phases: BootPhases,
    outcome: &str,
) -> Result<(), StoreError> {
    let ms = |v: Option<u64>| v.map(|v| v as i64);
    conn.execute(
        "UPDATE vm_boots SET vmm_ready_ms = ?2, guest_init_ms = ?3, guest_ready_ms = ?4,
                agent_ready_ms = ?5, outcome = ?6 WHERE id = ?1",
        params![
            boot_id,
            ms(phases.vmm_ready_ms),
            ms(phases.guest_init_ms),
            ms(phases.guest_ready_ms),
            ms(phases.agent_ready_ms),
            outcome
        ],
    )?;
    Ok(())
}

pub fn end_boot(
    conn: &Connection,
    boot_id: i64,
    ended_at_ms: i64,
    exit: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE vm_boots SET ended_at_ms = ?2, exit = ?3 WHERE id = ?1",
        params![boot_id, ended_at_ms, exit],
    )?;
    Ok(())
}

const BOOT_COLUMNS: &str = "id, started_at_ms, backend, accel, vmm_ready_ms, guest_init_ms,
    guest_ready_ms, agent_ready_ms, outcome, ended_at_ms, exit";

fn boot_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BootRecord> {
    let ms = |i| r.get::<_, Option<i64>>(i).map(|v| v.map(|v| v as u64));
    let started: i64 = r.get(1)?;
    Ok(BootRecord {
        id: r.get(0)?,
        started_at: rfc3339_ms(started),
        backend: r.get(2)?,
        accel: r.get(3)?,
        vmm_ready_ms: ms(4)?,
        guest_init_ms: ms(5)?,
        guest_ready_ms: ms(6)?,
        agent_ready_ms: ms(7)?,
        outcome: r.get(8)?,
        ended_at: r.get::<_, Option<i64>>(9)?.map(rfc3339_ms),
        exit: r.get(10)?,
    })
}

/// Every boot of a VM, oldest first (bounded).
pub fn boots(conn: &Connection, vm_id: Uuid, limit: u32) -> Result<Vec<BootRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT * FROM (SELECT {BOOT_COLUMNS} FROM vm_boots WHERE vm_id = ?1 ORDER BY id DESC LIMIT ?2)
         ORDER BY id"
    ))?;
    let rows = stmt
        .query_map(params![vm_id.to_string(), limit], boot_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}
