//! Queries on the `vms` and `vm_transitions` tables, and the one place for transactions that
//! span VMs and their drives: a VM created with its root drive, a VM deleted with the drives
//! made with it, and drive changes guarded by their VM's state (attach, detach, delete). These
//! call [`super::drives`] for the drive rows; the drives module never calls back here.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use uuid::Uuid;

use nexus_lib::api::{StorageState, Transition, Vm, VmState};

use super::drives::{self, DriveRow, Refusal};
use super::{StoreError, now_ms, rfc3339_ms};

/// A VM row as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRow {
    pub id: Uuid,
    pub name: String,
    pub state: VmState,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub vsock_cid: u32,
    pub created_at_ms: i64,
    pub state_changed_at_ms: i64,
}

impl VmRow {
    /// The API's view of the row.
    pub fn to_api(&self) -> Vm {
        Vm {
            id: self.id,
            name: self.name.clone(),
            state: self.state,
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            vsock_cid: self.vsock_cid,
            created_at: rfc3339_ms(self.created_at_ms),
            state_changed_at: rfc3339_ms(self.state_changed_at_ms),
            network: None,
            mcp_servers: Vec::new(),
        }
    }
}

/// What a new VM row needs.
#[derive(Debug, Clone)]
pub struct NewVm {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// The VM's network, recorded in the same transaction (none: no row, as before networking).
    pub network: Option<super::network::NewNetwork>,
    /// MCP servers the VM runs, recorded in the same transaction.
    pub mcp_servers: Vec<nexus_lib::agent::McpServerSpec>,
}

/// Outcome of an insert that may clash on the name.
#[derive(Debug)]
pub enum Inserted {
    Ok(VmRow),
    NameTaken,
    /// The VM's network could not be recorded; nothing was.
    Network(super::network::NetRefusal),
}

/// Outcome of inserting a VM with its root drive.
#[derive(Debug)]
pub enum InsertedWithRoot {
    Ok(VmRow, DriveRow),
    NameTaken,
    /// The VM's network could not be recorded; nothing was.
    Network(super::network::NetRefusal),
    /// The drive could not be inserted (its name is taken, its image is gone).
    Drive(Refusal),
}

/// Outcome of a guarded state change.
#[derive(Debug)]
pub enum Changed {
    Ok(VmRow),
    NotFound,
    /// The current state (and the VM's name) did not allow the change; nothing was written.
    Refused(VmState, String),
}

const COLUMNS: &str =
    "id, name, state, vcpus, memory_mib, vsock_cid, created_at_ms, state_changed_at_ms";

fn parse_state(s: String, idx: usize) -> rusqlite::Result<VmState> {
    s.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
    })
}

fn vm_from_row(row: &Row<'_>) -> rusqlite::Result<VmRow> {
    let id: String = row.get(0)?;
    Ok(VmRow {
        id: Uuid::parse_str(&id).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
        })?,
        name: row.get(1)?,
        state: parse_state(row.get(2)?, 2)?,
        vcpus: row.get(3)?,
        memory_mib: row.get(4)?,
        vsock_cid: row.get(5)?,
        created_at_ms: row.get(6)?,
        state_changed_at_ms: row.get(7)?,
    })
}

/// Inserts a VM in state `created`, allocating the lowest free vsock CID (>= 3) and recording
/// the creation in the history, all in one immediate transaction.
pub fn insert(conn: &mut Connection, new: &NewVm) -> Result<Inserted, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let inserted = insert_in(&tx, new)?;
    if matches!(inserted, Inserted::Ok(_)) {
        tx.commit()?;
    }
    Ok(inserted)
}

/// The body of [`insert`], for callers that insert more rows in the same transaction `tx`.
pub fn insert_in(tx: &Connection, new: &NewVm) -> Result<Inserted, StoreError> {
    let taken: bool = tx.query_row(
        "SELECT EXISTS(SELECT 1 FROM vms WHERE name = ?1)",
        [&new.name],
        |r| r.get(0),
    )?;
    if taken {
        return Ok(Inserted::NameTaken);
    }
    let cid: u32 = tx.query_row(
        "SELECT c FROM (SELECT 3 AS c UNION ALL SELECT vsock_cid + 1 FROM vms)
         WHERE c NOT IN (SELECT vsock_cid FROM vms) ORDER BY c LIMIT 1",
        [],
        |r| r.get(0),
    )?;
    let now = now_ms();
    let row = VmRow {
        id: Uuid::now_v7(),
        name: new.name.clone(),
        state: VmState::Created,
        vcpus: new.vcpus,
        memory_mib: new.memory_mib,
        vsock_cid: cid,
        created_at_ms: now,
        state_changed_at_ms: now,
    };
    tx.execute(
        &format!("INSERT INTO vms ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
        params![
            row.id.to_string(),
            row.name,
            row.state.as_str(),
            row.vcpus,
            row.memory_mib,
            row.vsock_cid,
            row.created_at_ms,
            row.state_changed_at_ms
        ],
    )?;
    tx.execute(
        "INSERT INTO vm_transitions (vm_id, from_state, to_state, reason, at_ms)
         VALUES (?1, NULL, ?2, 'created', ?3)",
        params![row.id.to_string(), row.state.as_str(), now],
    )?;
    if let Some(net) = &new.network
        && let Err(refusal) = super::network::insert_in(tx, row.id, net)?
    {
        return Ok(Inserted::Network(refusal));
    }
    super::mcp_servers::insert_in(tx, row.id, &new.mcp_servers)?;
    Ok(Inserted::Ok(row))
}

/// The API's view of `row`, with its network.
pub fn to_api(conn: &Connection, row: &VmRow) -> Result<Vm, StoreError> {
    let mut vm = row.to_api();
    vm.network = super::network::get(conn, row.id)?.map(|n| n.to_api());
    vm.mcp_servers = super::mcp_servers::of_vm(conn, row.id)?
        .into_iter()
        .map(|s| s.name)
        .collect();
    Ok(vm)
}

/// Records a note in the VM's history (a "transition" to its current state), such as a change
/// of its egress policy.
pub fn note(conn: &Connection, id: Uuid, reason: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO vm_transitions (vm_id, from_state, to_state, reason, at_ms)
         SELECT id, state, state, ?2, ?3 FROM vms WHERE id = ?1",
        params![id.to_string(), reason, now_ms()],
    )?;
    Ok(())
}

/// Finds a VM by id or by name.
pub fn get(conn: &Connection, id_or_name: &str) -> Result<Option<VmRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM vms WHERE id = ?1 OR name = ?1"),
            [id_or_name],
            vm_from_row,
        )
        .optional()?)
}

/// All VMs, oldest first, optionally only those in `state`.
pub fn list(conn: &Connection, state: Option<VmState>) -> Result<Vec<VmRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM vms WHERE ?1 IS NULL OR state = ?1 ORDER BY created_at_ms, id"
    ))?;
    let rows = stmt
        .query_map([state.map(VmState::as_str)], vm_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Moves a VM to `to` if `allowed(current)` holds, recording the transition in the same
/// transaction.
pub fn change_state(
    conn: &mut Connection,
    id_or_name: &str,
    to: VmState,
    reason: &str,
    allowed: impl Fn(VmState) -> bool,
) -> Result<Changed, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let Some(mut row) = get(&tx, id_or_name)? else {
        return Ok(Changed::NotFound);
    };
    if !allowed(row.state) {
        return Ok(Changed::Refused(row.state, row.name));
    }
    let now = now_ms();
    tx.execute(
        "UPDATE vms SET state = ?2, state_changed_at_ms = ?3 WHERE id = ?1",
        params![row.id.to_string(), to.as_str(), now],
    )?;
    tx.execute(
        "INSERT INTO vm_transitions (vm_id, from_state, to_state, reason, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            row.id.to_string(),
            row.state.as_str(),
            to.as_str(),
            reason,
            now
        ],
    )?;
    tx.commit()?;
    row.state = to;
    row.state_changed_at_ms = now;
    Ok(Changed::Ok(row))
}

/// Deletes a VM if `allowed(current)` holds. Its history goes with it; so do the rows of the drives
/// made with it unless `keep_drives` (their ids are returned: the caller removes their subvolumes).
pub fn delete(
    conn: &mut Connection,
    id_or_name: &str,
    keep_drives: bool,
    allowed: impl Fn(VmState) -> bool,
) -> Result<(Changed, Vec<Uuid>), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let Some(row) = get(&tx, id_or_name)? else {
        return Ok((Changed::NotFound, Vec::new()));
    };
    if !allowed(row.state) {
        return Ok((Changed::Refused(row.state, row.name), Vec::new()));
    }
    let released = drives::release_for_vm_delete(&tx, row.id, keep_drives)?;
    tx.execute("DELETE FROM vms WHERE id = ?1", [row.id.to_string()])?;
    tx.commit()?;
    Ok((Changed::Ok(row), released))
}

/// The state history of a VM, oldest first.
pub fn history(conn: &Connection, vm_id: Uuid) -> Result<Vec<Transition>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT from_state, to_state, reason, at_ms FROM vm_transitions
         WHERE vm_id = ?1 ORDER BY seq",
    )?;
    let rows = stmt
        .query_map([vm_id.to_string()], |r| {
            let from: Option<String> = r.get(0)?;
            let at_ms: i64 = r.get(3)?;
            Ok(Transition {
                from: from.map(|s| parse_state(s, 0)).transpose()?,
                to: parse_state(r.get(1)?, 1)?,
                reason: r.get(2)?,
                at_ms,
                at: rfc3339_ms(at_ms),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Inserts VM `new` (with its network, as [`insert`]) and its root drive `drive` (made with it)
/// in one transaction: either all rows exist afterwards or none.
pub fn insert_with_root(
    conn: &mut Connection,
    new: &NewVm,
    mut drive: DriveRow,
) -> Result<InsertedWithRoot, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let vm = match insert_in(&tx, new)? {
        Inserted::Ok(vm) => vm,
        Inserted::NameTaken => return Ok(InsertedWithRoot::NameTaken),
        Inserted::Network(refusal) => return Ok(InsertedWithRoot::Network(refusal)),
    };
    drive.vm_id = Some(vm.id);
    drive.is_root = true;
    drive.created_with_vm = true;
    if let Err(refusal) = drives::insert_in(&tx, &drive)? {
        return Ok(InsertedWithRoot::Drive(refusal));
    }
    tx.commit()?;
    Ok(InsertedWithRoot::Ok(vm, drive))
}

/// The drive and, when attached, its VM.
fn drive_and_vm(
    tx: &Transaction<'_>,
    drive: &str,
) -> Result<Result<(DriveRow, Option<VmRow>), Refusal>, StoreError> {
    let Some(row) = drives::get(tx, drive)? else {
        return Ok(Err(Refusal::DriveNotFound));
    };
    let vm = match row.vm_id {
        Some(id) => get(tx, &id.to_string())?,
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
pub fn attach_drive(
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
    let Some(target) = get(&tx, vm)? else {
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
    if root && let Some(name) = drives::root_of(&tx, target.id)? {
        return Ok(Err(Refusal::RootTaken(name)));
    }
    drives::set_attachment(&tx, row.id, Some(target.id), root)?;
    tx.commit()?;
    row.vm_id = Some(target.id);
    row.is_root = root;
    Ok(Ok(row))
}

/// A change of a drive made under the operation lock of its VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockedChange {
    Detach,
    Delete,
}

/// Detaches `drive` from its VM, or deletes its row, unless the VM is live (or, to detach, the
/// drive is not attached). `locked` is the VM whose operation lock the caller holds (none when
/// the drive was detached): a drive now attached elsewhere is [`Refusal::VmChanged`].
pub fn change_drive(
    conn: &mut Connection,
    drive: &str,
    locked: Option<Uuid>,
    change: LockedChange,
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
    if change == LockedChange::Detach && row.vm_id.is_none() {
        return Ok(Err(Refusal::NotAttached));
    }
    if let Err(refusal) = not_live(vm.as_ref(), &live) {
        return Ok(Err(refusal));
    }
    match change {
        LockedChange::Detach => {
            drives::set_attachment(&tx, row.id, None, false)?;
            row.vm_id = None;
            row.is_root = false;
        }
        LockedChange::Delete => drives::delete_row(&tx, row.id)?,
    }
    tx.commit()?;
    Ok(Ok(row))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_lib::api::{EgressPolicy, NetworkMode};

    use crate::store::drives::tests::{drive, store_with_image};
    use crate::store::network::{self, NetRefusal, NewNetwork};
    use crate::store::{Store, images};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        (dir, store)
    }

    fn new(name: &str) -> NewVm {
        NewVm {
            name: name.into(),
            vcpus: 1,
            memory_mib: 256,
            network: None,
            mcp_servers: Vec::new(),
        }
    }

    fn insert_ok(store: &Store, name: &str) -> VmRow {
        match store.call_blocking(|c| insert(c, &new(name))).unwrap() {
            Inserted::Ok(row) => row,
            Inserted::NameTaken => panic!("name {name} taken"),
            Inserted::Network(r) => panic!("{r}"),
        }
    }

    #[test]
    fn cids_start_at_three_and_fill_gaps() {
        let (_d, store) = store();
        let a = insert_ok(&store, "a");
        let b = insert_ok(&store, "b");
        assert_eq!((a.vsock_cid, b.vsock_cid), (3, 4));
        store
            .call_blocking(|c| delete(c, "a", false, |_| true))
            .unwrap();
        assert_eq!(insert_ok(&store, "c").vsock_cid, 3);
    }

    #[test]
    fn duplicate_name_is_reported_and_not_written() {
        let (_d, store) = store();
        insert_ok(&store, "a");
        let second = store.call_blocking(|c| insert(c, &new("a"))).unwrap();
        assert!(matches!(second, Inserted::NameTaken));
        assert_eq!(store.call_blocking(|c| list(c, None)).unwrap().len(), 1);
    }

    #[test]
    fn refused_change_writes_nothing() {
        let (_d, store) = store();
        let vm = insert_ok(&store, "a");
        let out = store
            .call_blocking(|c| change_state(c, "a", VmState::Running, "x", |_| false))
            .unwrap();
        assert!(matches!(out, Changed::Refused(VmState::Created, _)));
        assert_eq!(store.call_blocking(|c| history(c, vm.id)).unwrap().len(), 1);
    }

    #[test]
    fn change_is_recorded_in_history() {
        let (_d, store) = store();
        let vm = insert_ok(&store, "a");
        store
            .call_blocking(|c| {
                change_state(c, &vm.id.to_string(), VmState::Starting, "start", |_| true)
            })
            .unwrap();
        let h = store.call_blocking(|c| history(c, vm.id)).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(
            (h[1].from, h[1].to),
            (Some(VmState::Created), VmState::Starting)
        );
        assert_eq!(h[1].reason, "start");
    }

    /// VM `name` with a root drive `{name}-root` made from `image`.
    fn with_root(store: &Store, name: &str, image: Uuid) -> (VmRow, DriveRow) {
        with_root_of(store, new(name), image)
    }

    /// VM `vm` with a root drive `{name}-root` made from `image`.
    fn with_root_of(store: &Store, vm: NewVm, image: Uuid) -> (VmRow, DriveRow) {
        let root = drive(&format!("{}-root", vm.name), image);
        match store
            .call_blocking(|c| insert_with_root(c, &vm, root))
            .unwrap()
        {
            InsertedWithRoot::Ok(vm, drive) => (vm, drive),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn database_refuses_a_second_root_drive_for_a_vm() {
        let (_d, store, image) = store_with_image();
        let (vm, _) = with_root(&store, "a", image);
        let second = DriveRow {
            vm_id: Some(vm.id),
            is_root: true,
            ..drive("other", image)
        };

        let err = store
            .call_blocking(|c| drives::insert(c, &second))
            .unwrap_err();

        assert!(err.to_string().contains("database"), "{err}");
    }

    #[test]
    fn attaching_a_second_root_is_refused_with_the_first_ones_name() {
        let (_d, store, image) = store_with_image();
        with_root(&store, "a", image);
        store
            .call_blocking(|c| drives::insert(c, &drive("spare", image)))
            .unwrap()
            .unwrap();

        let out = store
            .call_blocking(|c| attach_drive(c, "spare", "a", true, |_| false))
            .unwrap();

        assert_eq!(out, Err(Refusal::RootTaken("a-root".into())));
    }

    #[test]
    fn deleting_a_vm_detaches_kept_drives_and_clears_their_root_flag() {
        let (_d, store, image) = store_with_image();
        with_root(&store, "a", image);

        store
            .call_blocking(|c| delete(c, "a", true, |_| true))
            .unwrap();

        let row = store
            .call_blocking(|c| drives::get(c, "a-root"))
            .unwrap()
            .unwrap();
        assert_eq!((row.vm_id, row.is_root), (None, false));
    }

    #[test]
    fn deleting_a_vm_deletes_the_rows_of_drives_made_with_it() {
        let (_d, store, image) = store_with_image();
        let (_, root) = with_root(&store, "a", image);

        let (_, released) = store
            .call_blocking(|c| delete(c, "a", false, |_| true))
            .unwrap();

        assert_eq!(released, vec![root.id]);
        assert!(
            store
                .call_blocking(|c| drives::get(c, "a-root"))
                .unwrap()
                .is_none()
        );
    }

    /// Inserts VM `a` with the root drive `root`: refused with `refusal`, no VM row left.
    fn assert_root_refused(store: &Store, root: DriveRow, refusal: Refusal) {
        let out = store
            .call_blocking(|c| insert_with_root(c, &new("a"), root))
            .unwrap();

        assert!(
            matches!(out, InsertedWithRoot::Drive(ref r) if *r == refusal),
            "{out:?}"
        );
        assert!(store.call_blocking(|c| get(c, "a")).unwrap().is_none());
    }

    #[test]
    fn a_root_drive_name_clash_leaves_no_vm_row() {
        let (_d, store, image) = store_with_image();
        store
            .call_blocking(|c| drives::insert(c, &drive("taken", image)))
            .unwrap()
            .unwrap();

        assert_root_refused(&store, drive("taken", image), Refusal::DriveNameTaken);
    }

    #[test]
    fn a_vm_whose_root_image_is_gone_is_refused_and_leaves_no_vm_row() {
        let (_d, store, image) = store_with_image();
        store.call_blocking(|c| images::delete(c, "base")).unwrap();

        assert_root_refused(&store, drive("a-root", image), Refusal::ImageNotFound);
    }

    #[test]
    fn detaching_under_the_lock_of_another_vm_is_refused_as_changed() {
        let (_d, store, image) = store_with_image();
        with_root(&store, "a", image);

        let out = store
            .call_blocking(|c| change_drive(c, "a-root", None, LockedChange::Detach, |_| false))
            .unwrap();

        assert_eq!(out.map(|_| ()), Err(Refusal::VmChanged));
    }

    /// VM `name` with a `nat` network that publishes host port 8080.
    fn publishing_8080(name: &str) -> NewVm {
        NewVm {
            network: Some(NewNetwork {
                mode: NetworkMode::Nat,
                publish: vec!["8080:80".parse().unwrap()],
                egress: EgressPolicy::AllowAll,
                subnet: Some("10.9.0.0/24".parse().unwrap()),
                tap_prefix: "nxab12".into(),
            }),
            ..new(name)
        }
    }

    #[test]
    fn a_vm_inserted_with_its_root_drive_has_its_network_recorded() {
        let (_d, store, image) = store_with_image();

        let (vm, _) = with_root_of(&store, publishing_8080("a"), image);

        let net = store
            .call_blocking(|c| network::get(c, vm.id))
            .unwrap()
            .unwrap();
        assert_eq!(net.publish, vec!["8080:80".parse().unwrap()]);
    }

    #[test]
    fn a_refused_network_leaves_neither_the_vm_nor_its_root_drive() {
        let (_d, store, image) = store_with_image();
        with_root_of(&store, publishing_8080("b"), image);

        let out = store
            .call_blocking(|c| insert_with_root(c, &publishing_8080("a"), drive("a-root", image)))
            .unwrap();

        assert!(
            matches!(out, InsertedWithRoot::Network(NetRefusal::PortTaken { .. })),
            "{out:?}"
        );
        let left = store
            .call_blocking(|c| Ok((get(c, "a")?, drives::get(c, "a-root")?)))
            .unwrap();
        assert_eq!(left, (None, None));
    }
}
