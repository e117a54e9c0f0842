//! Queries on the `drives` table: this module owns its rows. A row is written only after its
//! subvolume is published. Changes guarded by a VM's state (attach, detach, delete, and a VM
//! created with its root drive) span the `vms` table too and live on the VM side
//! ([`super::vms`]), built from the pieces here; every check runs in the same immediate
//! transaction as the change, and the schema's constraints are the backstop.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use uuid::Uuid;

use nexus_lib::api::{Drive, StorageState, VmState};

use super::images::{state_col, uuid_col};
use super::{StoreError, rfc3339_ms};

/// A drive row as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct DriveRow {
    pub id: Uuid,
    pub name: String,
    pub image_id: Uuid,
    pub size_bytes: u64,
    pub vm_id: Option<Uuid>,
    pub is_root: bool,
    pub created_with_vm: bool,
    pub state: StorageState,
    pub created_at_ms: i64,
}

impl DriveRow {
    /// The API's view of the row.
    pub fn to_api(&self) -> Drive {
        Drive {
            id: self.id,
            name: self.name.clone(),
            state: self.state,
            image_id: self.image_id,
            size_bytes: self.size_bytes,
            vm_id: self.vm_id,
            is_root: self.is_root,
            created_with_vm: self.created_with_vm,
            created_at: rfc3339_ms(self.created_at_ms),
        }
    }

    /// A ready, detached drive row named `name`, for tests that need one without a subvolume.
    #[cfg(test)]
    pub(crate) fn ready(name: &str, image_id: Uuid) -> Self {
        Self {
            id: Uuid::now_v7(),
            name: name.into(),
            image_id,
            size_bytes: 4096,
            vm_id: None,
            is_root: false,
            created_with_vm: false,
            state: StorageState::Ready,
            created_at_ms: super::now_ms(),
        }
    }
}

/// Why a guarded change was refused; nothing was written.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    DriveNotFound,
    VmNotFound,
    DriveNameTaken,
    /// The drive's subvolume is missing.
    Broken,
    /// The drive is attached to another VM (its name).
    AttachedElsewhere(String),
    /// The drive is not attached.
    NotAttached,
    /// The VM the drive is (or would be) attached to is live.
    VmLive {
        vm: String,
        state: VmState,
    },
    /// The VM already has a root drive (its name).
    RootTaken(String),
    /// The image the drive is made from is gone (deleted while the drive was being made).
    ImageNotFound,
    /// The drive's VM changed while the caller waited for the VM's operation lock; look again.
    VmChanged,
}

const COLUMNS: &str =
    "id, name, image_id, size_bytes, vm_id, is_root, created_with_vm, state, created_at_ms";

fn drive_from_row(row: &Row<'_>) -> rusqlite::Result<DriveRow> {
    let vm_id: Option<String> = row.get(4)?;
    Ok(DriveRow {
        id: uuid_col(row, 0)?,
        name: row.get(1)?,
        image_id: uuid_col(row, 2)?,
        size_bytes: row.get::<_, i64>(3)? as u64,
        vm_id: vm_id.map(|_| uuid_col(row, 4)).transpose()?,
        is_root: row.get(5)?,
        created_with_vm: row.get(6)?,
        state: state_col(row, 7)?,
        created_at_ms: row.get(8)?,
    })
}

/// Whether a drive is named `name`.
pub fn name_taken(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM drives WHERE name = ?1)",
        [name],
        |r| r.get(0),
    )?)
}

/// Inserts a drive row inside transaction `tx`, after checking that its image still exists: an
/// image deleted while the drive was made is a refusal, not a foreign-key failure.
pub fn insert_in(tx: &Transaction<'_>, row: &DriveRow) -> Result<Result<(), Refusal>, StoreError> {
    if !super::images::exists(tx, row.image_id)? {
        return Ok(Err(Refusal::ImageNotFound));
    }
    let n = tx.execute(
        &format!(
            "INSERT INTO drives ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT(name) DO NOTHING"
        ),
        params![
            row.id.to_string(),
            row.name,
            row.image_id.to_string(),
            row.size_bytes as i64,
            row.vm_id.map(|v| v.to_string()),
            row.is_root,
            row.created_with_vm,
            row.state.as_str(),
            row.created_at_ms
        ],
    );
    match n {
        Ok(1) => Ok(Ok(())),
        Ok(_) => Ok(Err(Refusal::DriveNameTaken)),
        // The check above runs in the same immediate transaction, so this is only the backstop.
        Err(e) if super::is_foreign_key_violation(&e) => Ok(Err(Refusal::ImageNotFound)),
        Err(e) => Err(e.into()),
    }
}

/// Inserts a detached drive row, in one transaction with the check that its image exists; a
/// refusal writes nothing.
pub fn insert(conn: &mut Connection, row: &DriveRow) -> Result<Result<(), Refusal>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Err(refusal) = insert_in(&tx, row)? {
        return Ok(Err(refusal));
    }
    tx.commit()?;
    Ok(Ok(()))
}

/// Finds a drive by id or by name.
pub fn get(conn: &Connection, id_or_name: &str) -> Result<Option<DriveRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM drives WHERE id = ?1 OR name = ?1"),
            [id_or_name],
            drive_from_row,
        )
        .optional()?)
}

/// All drives, oldest first.
pub fn list(conn: &Connection) -> Result<Vec<DriveRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM drives ORDER BY created_at_ms, id"
    ))?;
    let rows = stmt
        .query_map([], drive_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The drives attached to a VM, its root drive first.
pub fn attached_to(conn: &Connection, vm_id: Uuid) -> Result<Vec<DriveRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM drives WHERE vm_id = ?1 ORDER BY is_root DESC, created_at_ms, id"
    ))?;
    let rows = stmt
        .query_map([vm_id.to_string()], drive_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The name of VM `vm_id`'s root drive, if it has one.
pub fn root_of(conn: &Connection, vm_id: Uuid) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT name FROM drives WHERE vm_id = ?1 AND is_root = 1",
            [vm_id.to_string()],
            |r| r.get(0),
        )
        .optional()?)
}

/// Attaches drive `id` to VM `vm` (as its root drive when `root`), or detaches it (`None`).
pub fn set_attachment(
    conn: &Connection,
    id: Uuid,
    vm: Option<Uuid>,
    root: bool,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE drives SET vm_id = ?2, is_root = ?3 WHERE id = ?1",
        params![id.to_string(), vm.map(|v| v.to_string()), root],
    )?;
    Ok(())
}

/// Deletes the row of drive `id`.
pub fn delete_row(conn: &Connection, id: Uuid) -> Result<(), StoreError> {
    conn.execute("DELETE FROM drives WHERE id = ?1", [id.to_string()])?;
    Ok(())
}

/// Inside a VM's deletion: deletes the rows of the drives made with VM `vm_id` (unless
/// `keep_drives`) and returns their ids, whose subvolumes the caller then removes. The other drives
/// are detached by the schema (`ON DELETE SET NULL`).
pub fn release_for_vm_delete(
    tx: &Transaction<'_>,
    vm_id: Uuid,
    keep_drives: bool,
) -> Result<Vec<Uuid>, StoreError> {
    if keep_drives {
        return Ok(Vec::new());
    }
    let mut stmt =
        tx.prepare("DELETE FROM drives WHERE vm_id = ?1 AND created_with_vm = 1 RETURNING id")?;
    let ids = stmt
        .query_map([vm_id.to_string()], |r| uuid_col(r, 0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(ids)
}

/// Marks drive `id` broken (its subvolume is gone).
pub fn mark_broken(conn: &Connection, id: Uuid) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE drives SET state = 'broken' WHERE id = ?1",
        [id.to_string()],
    )?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::images::{self, ImageRow};

    /// A store holding one ready image named `base`.
    pub(crate) fn store_with_image() -> (tempfile::TempDir, Store, Uuid) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        let image = ImageRow::ready("base");
        store.call_blocking(|c| images::insert(c, &image)).unwrap();
        (dir, store, image.id)
    }

    /// A detached drive row made from `image_id`.
    pub(crate) fn drive(name: &str, image_id: Uuid) -> DriveRow {
        DriveRow::ready(name, image_id)
    }

    #[test]
    fn a_drive_whose_image_is_gone_is_refused_not_a_database_error() {
        let (_d, store, image) = store_with_image();
        store.call_blocking(|c| images::delete(c, "base")).unwrap();

        let out = store
            .call_blocking(|c| insert(c, &drive("d", image)))
            .unwrap();

        assert_eq!(out, Err(Refusal::ImageNotFound));
        assert!(store.call_blocking(|c| get(c, "d")).unwrap().is_none());
    }

    #[test]
    fn a_drive_name_clash_is_refused() {
        let (_d, store, image) = store_with_image();
        store
            .call_blocking(|c| insert(c, &drive("taken", image)))
            .unwrap()
            .unwrap();

        let out = store
            .call_blocking(|c| insert(c, &drive("taken", image)))
            .unwrap();

        assert_eq!(out, Err(Refusal::DriveNameTaken));
    }

    #[test]
    fn image_delete_is_refused_while_a_drive_depends_on_it() {
        let (_d, store, image) = store_with_image();
        store
            .call_blocking(|c| insert(c, &drive("d", image)))
            .unwrap()
            .unwrap();

        let out = store.call_blocking(|c| images::delete(c, "base")).unwrap();

        assert!(matches!(out, images::Deleted::InUse(ref names) if names == &["d"]));
    }
}
