//! Queries on the `drives` table. A row is written only after its subvolume is published. Every
//! check that guards a change (the VM's state, the drive's attachment, the root slot) runs in the
//! same immediate transaction as the change; the schema's constraints are the backstop.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use uuid::Uuid;

use nexus_lib::api::{Drive, StorageState, VmState};

use super::images::{state_col, uuid_col};
use super::vms::{self, NewVm, VmRow};
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
    VmNameTaken,
    /// The new VM's network could not be recorded.
    VmNetwork(super::network::NetRefusal),
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
fn insert_row(tx: &Transaction<'_>, row: &DriveRow) -> Result<Result<(), Refusal>, StoreError> {
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
    if let Err(refusal) = insert_row(&tx, row)? {
        return Ok(Err(refusal));
    }
    tx.commit()?;
    Ok(Ok(()))
}

/// Inserts a VM and its root drive `drive` (made with it) in one transaction: either both rows exist
/// afterwards or neither.
pub fn insert_with_vm(
    conn: &mut Connection,
    new: &NewVm,
    mut drive: DriveRow,
) -> Result<Result<(VmRow, DriveRow), Refusal>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let vm = match vms::insert_in(&tx, new)? {
        vms::Inserted::Ok(vm) => vm,
        vms::Inserted::NameTaken => return Ok(Err(Refusal::VmNameTaken)),
        vms::Inserted::Network(refusal) => return Ok(Err(Refusal::VmNetwork(refusal))),
    };
    drive.vm_id = Some(vm.id);
    drive.is_root = true;
    drive.created_with_vm = true;
    if let Err(refusal) = insert_row(&tx, &drive)? {
        return Ok(Err(refusal));
    }
    tx.commit()?;
    Ok(Ok((vm, drive)))
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

/// The drive and, when attached, its VM.
fn drive_and_vm(
    tx: &Transaction<'_>,
    drive: &str,
) -> Result<Result<(DriveRow, Option<VmRow>), Refusal>, StoreError> {
    let Some(row) = get(tx, drive)? else {
        return Ok(Err(Refusal::DriveNotFound));
    };
    let vm = match row.vm_id {
        Some(id) => vms::get(tx, &id.to_string())?,
        None => None,
    };
    Ok(Ok((row, vm)))
}

/// Refuses when `vm` is live.
fn not_live(vm: Option<&VmRow>, live: &impl Fn(VmState) -> bool) -> Result<(), Refusal> {
    match vm {
        Some(vm) if live(vm.state) => Err(Refusal::VmLive {
            vm: vm.name.clone(),
            state: vm.state,
        }),
        _ => Ok(()),
    }
}

/// Attaches `drive` to `vm` (as its root drive when `root`), unless the drive is broken or attached,
/// the VM is live, or the VM already has a root drive.
pub fn attach(
    conn: &mut Connection,
    drive: &str,
    vm: &str,
    root: bool,
    live: impl Fn(VmState) -> bool,
) -> Result<Result<DriveRow, Refusal>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (mut row, current) = match drive_and_vm(&tx, drive)? {
        Ok(found) => found,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let Some(target) = vms::get(&tx, vm)? else {
        return Ok(Err(Refusal::VmNotFound));
    };
    if row.state == StorageState::Broken {
        return Ok(Err(Refusal::Broken));
    }
    if let Some(current) = current {
        return Ok(Err(Refusal::AttachedElsewhere(current.name)));
    }
    if let Err(refusal) = not_live(Some(&target), &live) {
        return Ok(Err(refusal));
    }
    if root {
        let taken: Option<String> = tx
            .query_row(
                "SELECT name FROM drives WHERE vm_id = ?1 AND is_root = 1",
                [target.id.to_string()],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(name) = taken {
            return Ok(Err(Refusal::RootTaken(name)));
        }
    }
    tx.execute(
        "UPDATE drives SET vm_id = ?2, is_root = ?3 WHERE id = ?1",
        params![row.id.to_string(), target.id.to_string(), root],
    )?;
    tx.commit()?;
    row.vm_id = Some(target.id);
    row.is_root = root;
    Ok(Ok(row))
}

/// Detaches `drive` from its VM unless the VM is live. `locked` is the VM whose operation lock
/// the caller holds: a drive now attached elsewhere is [`Refusal::VmChanged`].
pub fn detach(
    conn: &mut Connection,
    drive: &str,
    locked: Option<Uuid>,
    live: impl Fn(VmState) -> bool,
) -> Result<Result<DriveRow, Refusal>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (mut row, vm) = match drive_and_vm(&tx, drive)? {
        Ok(found) => found,
        Err(refusal) => return Ok(Err(refusal)),
    };
    if row.vm_id != locked {
        return Ok(Err(Refusal::VmChanged));
    }
    if row.vm_id.is_none() {
        return Ok(Err(Refusal::NotAttached));
    }
    if let Err(refusal) = not_live(vm.as_ref(), &live) {
        return Ok(Err(refusal));
    }
    tx.execute(
        "UPDATE drives SET vm_id = NULL, is_root = 0 WHERE id = ?1",
        [row.id.to_string()],
    )?;
    tx.commit()?;
    row.vm_id = None;
    row.is_root = false;
    Ok(Ok(row))
}

/// Deletes the row of `drive` unless it is attached to a live VM. `locked` as for [`detach`].
pub fn delete(
    conn: &mut Connection,
    drive: &str,
    locked: Option<Uuid>,
    live: impl Fn(VmState) -> bool,
) -> Result<Result<DriveRow, Refusal>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (row, vm) = match drive_and_vm(&tx, drive)? {
        Ok(found) => found,
        Err(refusal) => return Ok(Err(refusal)),
    };
    if row.vm_id != locked {
        return Ok(Err(Refusal::VmChanged));
    }
    if let Err(refusal) = not_live(vm.as_ref(), &live) {
        return Ok(Err(refusal));
    }
    tx.execute("DELETE FROM drives WHERE id = ?1", [row.id.to_string()])?;
    tx.commit()?;
    Ok(Ok(row))
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
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::images::{self, ImageRow};

    fn store_with_image() -> (tempfile::TempDir, Store, Uuid) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        let image = ImageRow::ready("base");
        store.call_blocking(|c| images::insert(c, &image)).unwrap();
        (dir, store, image.id)
    }

    fn drive(name: &str, image_id: Uuid) -> DriveRow {
        DriveRow::ready(name, image_id)
    }

    fn vm(name: &str) -> NewVm {
        NewVm {
            name: name.into(),
            vcpus: 1,
            memory_mib: 256,
            network: None,
        }
    }

    #[test]
    fn database_refuses_a_second_root_drive_for_a_vm() {
        let (_d, store, image) = store_with_image();
        let (vm, _) = store
            .call_blocking(|c| insert_with_vm(c, &vm("a"), drive("a-root", image)))
            .unwrap()
            .unwrap();
        let second = DriveRow {
            vm_id: Some(vm.id),
            is_root: true,
            ..drive("other", image)
        };

        let err = store.call_blocking(|c| insert(c, &second)).unwrap_err();

        assert!(err.to_string().contains("database"), "{err}");
    }

    #[test]
    fn attaching_a_second_root_is_refused_with_the_first_ones_name() {
        let (_d, store, image) = store_with_image();
        store
            .call_blocking(|c| insert_with_vm(c, &vm("a"), drive("a-root", image)))
            .unwrap()
            .unwrap();
        store
            .call_blocking(|c| insert(c, &drive("spare", image)))
            .unwrap()
            .unwrap();

        let out = store
            .call_blocking(|c| attach(c, "spare", "a", true, |_| false))
            .unwrap();

        assert_eq!(out, Err(Refusal::RootTaken("a-root".into())));
    }

    #[test]
    fn deleting_a_vm_detaches_kept_drives_and_clears_their_root_flag() {
        let (_d, store, image) = store_with_image();
        store
            .call_blocking(|c| insert_with_vm(c, &vm("a"), drive("a-root", image)))
            .unwrap()
            .unwrap();

        store
            .call_blocking(|c| vms::delete(c, "a", true, |_| true))
            .unwrap();

        let row = store.call_blocking(|c| get(c, "a-root")).unwrap().unwrap();
        assert_eq!((row.vm_id, row.is_root), (None, false));
    }

    #[test]
    fn deleting_a_vm_deletes_the_rows_of_drives_made_with_it() {
        let (_d, store, image) = store_with_image();
        let (_, root) = store
            .call_blocking(|c| insert_with_vm(c, &vm("a"), drive("a-root", image)))
            .unwrap()
            .unwrap();

        let (_, released) = store
            .call_blocking(|c| vms::delete(c, "a", false, |_| true))
            .unwrap();

        assert_eq!(released, vec![root.id]);
        assert!(store.call_blocking(|c| get(c, "a-root")).unwrap().is_none());
    }

    #[test]
    fn a_drive_name_clash_leaves_no_vm_row() {
        let (_d, store, image) = store_with_image();
        store
            .call_blocking(|c| insert(c, &drive("taken", image)))
            .unwrap()
            .unwrap();

        let out = store
            .call_blocking(|c| insert_with_vm(c, &vm("a"), drive("taken", image)))
            .unwrap();

        assert_eq!(out.map(|_| ()), Err(Refusal::DriveNameTaken));
        assert!(store.call_blocking(|c| vms::get(c, "a")).unwrap().is_none());
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
    fn a_vm_whose_root_image_is_gone_is_refused_and_leaves_no_vm_row() {
        let (_d, store, image) = store_with_image();
        store.call_blocking(|c| images::delete(c, "base")).unwrap();

        let out = store
            .call_blocking(|c| insert_with_vm(c, &vm("a"), drive("a-root", image)))
            .unwrap();

        assert_eq!(out.map(|_| ()), Err(Refusal::ImageNotFound));
        assert!(store.call_blocking(|c| vms::get(c, "a")).unwrap().is_none());
    }

    #[test]
    fn detaching_under_the_lock_of_another_vm_is_refused_as_changed() {
        let (_d, store, image) = store_with_image();
        store
            .call_blocking(|c| insert_with_vm(c, &vm("a"), drive("a-root", image)))
            .unwrap()
            .unwrap();

        let out = store
            .call_blocking(|c| detach(c, "a-root", None, |_| false))
            .unwrap();

        assert_eq!(out.map(|_| ()), Err(Refusal::VmChanged));
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
