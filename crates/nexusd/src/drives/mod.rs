//! Drives: writable copy-on-write snapshots of master images, and their attachment to VMs. The
//! service API handlers call; the VM service asks it for a VM's root drive
//! ([`DriveService::make_subvolume`]) and inserts that drive's row in its own transaction.
//!
//! Creation makes the subvolume first and inserts the row after (in one transaction with the check
//! that the image still exists), so an interruption leaves at most an unregistered subvolume
//! (removed at start-up). Deletion removes the row first (atomically with the checks on the VM's
//! state) and the subvolume after. Creation and deletion run on their own task, so a client that
//! disconnects cannot stop them between the subvolume and the row. A drive attached to a live VM
//! (starting, running, stopping) cannot be detached or deleted: the rules come from
//! [`crate::vm::state`]; attach, detach and delete hold the VM's operation lock
//! ([`crate::vm::VmLocks`]), so they wait for a start in progress and are then refused.

use std::path::PathBuf;
use std::sync::Arc;

use nexus_lib::api::{AttachDrive, CreateDrive, Drive, StorageState, VmState};
use nexus_lib::names::{MAX_NAME_LEN, validate_name};
use nexus_lib::size::ByteSize;
use uuid::Uuid;

use crate::storage::{CreateDriveError, PoolError, PoolManager, ext4};
use crate::store::drives::{self, DriveRow, Refusal};
use crate::store::images::{self, ImageRow};
use crate::store::vms::{self, LockedChange};
use crate::store::{Store, StoreError, now_ms};
use crate::vm::{VmLocks, state};

/// How often a detach or delete looks again when the drive's VM changed while it waited.
const LOCK_RETRIES: usize = 3;

/// Runs `op` on its own task, so that a caller who goes away (a client disconnecting) cannot
/// stop it between publishing a subvolume and writing its row.
async fn detached<T: Send + 'static>(
    op: impl std::future::Future<Output = Result<T, DriveError>> + Send + 'static,
) -> Result<T, DriveError> {
    tokio::spawn(op).await.map_err(DriveError::Worker)?
}

/// Errors of drive operations.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("no drive named or with id {0:?}")]
    NotFound(String),
    #[error("no image named or with id {0:?}")]
    ImageNotFound(String),
    #[error("no VM named or with id {0:?}")]
    VmNotFound(String),
    #[error("a drive named {0:?} already exists")]
    NameTaken(String),
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Snapshot(#[from] CreateDriveError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("storage worker failed")]
    Worker(#[source] tokio::task::JoinError),
}

/// Whether a VM in `state` may have a VMM process using its drives.
fn vm_is_live(state: VmState) -> bool {
    !state::can_delete(state)
}

/// The drive service.
#[derive(Debug, Clone)]
pub struct DriveService {
    store: Store,
    pool: Arc<PoolManager>,
    locks: VmLocks,
}

impl DriveService {
    pub fn new(store: Store, pool: Arc<PoolManager>) -> Self {
        Self {
            store,
            pool,
            locks: VmLocks::default(),
        }
    }

    /// The VMs' operation locks (the life cycle takes them too).
    pub fn vm_locks(&self) -> &VmLocks {
        &self.locks
    }

    /// The ext4 files of the drives attached to a VM: its root drive (if any) and the others,
    /// each with its drive id. A broken drive is an error: the VM cannot boot without it.
    pub async fn files_of_vm(
        &self,
        vm_id: Uuid,
    ) -> Result<(Option<PathBuf>, Vec<(Uuid, PathBuf)>), DriveError> {
        let rows = self
            .store
            .call(move |c| drives::attached_to(c, vm_id))
            .await?;
        if rows.is_empty() {
            return Ok((None, Vec::new()));
        }
        if let Some(broken) = rows.iter().find(|r| r.state != StorageState::Ready) {
            return Err(DriveError::Conflict(format!(
                "drive {} is {:?}: its subvolume is missing; delete it",
                broken.name, broken.state
            )));
        }
        let pool = self.pool.clone();
        let storage = tokio::task::spawn_blocking(move || pool.get_or_create())
            .await
            .map_err(DriveError::Worker)??;
        let file = |id: Uuid| {
            storage
                .drive_dir(&id.to_string())
                .join(crate::storage::IMAGE_FILE)
        };
        let mut root = None;
        let mut extra = Vec::new();
        for row in rows {
            if row.is_root {
                root = Some(file(row.id));
            } else {
                extra.push((row.id, file(row.id)));
            }
        }
        Ok((root, extra))
    }

    /// Creates a detached drive from an image.
    pub async fn create(&self, req: CreateDrive) -> Result<Drive, DriveError> {
        let this = self.clone();
        detached(async move { this.create_now(req).await }).await
    }

    async fn create_now(&self, req: CreateDrive) -> Result<Drive, DriveError> {
        let row = self
            .make_subvolume(&req.image, req.name, req.size, "size")
            .await?;
        let insert = row.clone();
        let inserted = self.store.call(move |c| drives::insert(c, &insert)).await;
        let row = self.keep_or_remove(row, &req.image, inserted).await?;
        tracing::info!(drive = %row.name, id = %row.id, size = row.size_bytes, "drive created");
        Ok(row.to_api())
    }

    pub async fn list(&self) -> Result<Vec<Drive>, DriveError> {
        let rows = self.store.call(|c| drives::list(c)).await?;
        Ok(rows.iter().map(DriveRow::to_api).collect())
    }

    pub async fn get(&self, id_or_name: &str) -> Result<Drive, DriveError> {
        let key = id_or_name.to_owned();
        self.store
            .call(move |c| drives::get(c, &key))
            .await?
            .map(|r| r.to_api())
            .ok_or_else(|| DriveError::NotFound(id_or_name.to_owned()))
    }

    /// Attaches a drive to a VM that is not live, under the VM's operation lock.
    pub async fn attach(&self, drive: &str, req: AttachDrive) -> Result<Drive, DriveError> {
        let key = req.vm.clone();
        let target = self
            .store
            .call(move |c| vms::get(c, &key))
            .await?
            .ok_or_else(|| DriveError::VmNotFound(req.vm.clone()))?;
        let _lock = self.locks.lock(target.id).await;
        // By id: a VM deleted (and its name reused) while this waited is not found.
        let (key, vm, root) = (drive.to_owned(), target.id.to_string(), req.root);
        let out = self
            .store
            .call(move |c| vms::attach_drive(c, &key, &vm, root, vm_is_live))
            .await?;
        let row = out.map_err(|r| refused(r, drive, &req.vm))?;
        tracing::info!(drive = %row.name, vm = %crate::sanitize::Escaped(&req.vm), root, "drive attached");
        Ok(row.to_api())
    }

    /// Detaches a drive from a VM that is not live, under the VM's operation lock.
    pub async fn detach(&self, drive: &str) -> Result<Drive, DriveError> {
        let row = self.under_vm_lock(drive, LockedChange::Detach).await?;
        tracing::info!(drive = %row.name, "drive detached");
        Ok(row.to_api())
    }

    /// Deletes a drive not attached to a live VM: the row (under the VM's operation lock), then
    /// the subvolume, on its own task.
    pub async fn delete(&self, drive: &str) -> Result<(), DriveError> {
        let (this, drive) = (self.clone(), drive.to_owned());
        detached(async move { this.delete_now(&drive).await }).await
    }

    async fn delete_now(&self, drive: &str) -> Result<(), DriveError> {
        let row = self.under_vm_lock(drive, LockedChange::Delete).await?;
        self.remove_subvolumes(&[row.id]).await;
        tracing::info!(drive = %row.name, id = %row.id, "drive deleted");
        Ok(())
    }

    /// Makes `change` to `drive` while holding the operation lock of the VM the drive is
    /// attached to (none when detached). The change is refused with [`Refusal::VmChanged`] when
    /// the attachment changed while this waited; then it is tried again under the new VM's lock.
    async fn under_vm_lock(
        &self,
        drive: &str,
        change: LockedChange,
    ) -> Result<DriveRow, DriveError> {
        for _ in 0..LOCK_RETRIES {
            let key = drive.to_owned();
            let row = self
                .store
                .call(move |c| drives::get(c, &key))
                .await?
                .ok_or_else(|| DriveError::NotFound(drive.to_owned()))?;
            let _lock = match row.vm_id {
                Some(vm) => Some(self.locks.lock(vm).await),
                None => None,
            };
            let (id, locked) = (row.id.to_string(), row.vm_id);
            let changed = self
                .store
                .call(move |c| vms::change_drive(c, &id, locked, change, vm_is_live))
                .await?;
            match changed {
                Ok(row) => return Ok(row),
                Err(Refusal::VmChanged) => continue,
                Err(refusal) => return Err(refused(refusal, drive, "")),
            }
        }
        Err(DriveError::Conflict(format!(
            "drive {drive} keeps moving between VMs; try again"
        )))
    }

    /// Removes the subvolumes of drives whose rows are gone. A failure leaves an unregistered
    /// subvolume, which the next start-up removes: logged, not returned.
    pub async fn remove_subvolumes(&self, ids: &[Uuid]) {
        if ids.is_empty() {
            return;
        }
        let (pool, ids) = (self.pool.clone(), ids.to_vec());
        let result = tokio::task::spawn_blocking(move || {
            let Some(storage) = pool.get() else {
                return;
            };
            for id in ids {
                match storage.delete_drive(&id.to_string()) {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => tracing::warn!(%id, error = %crate::sanitize::Escaped(nexus_lib::error::error_chain(&e)), "could not remove drive subvolume; it is removed at the next start"),
                }
            }
        })
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "drive removal worker failed");
        }
    }

    /// Validates a new drive (name, image, size), then snapshots the image into its subvolume.
    /// Returns the row to insert; the caller removes the subvolume if the insert fails.
    pub(crate) async fn make_subvolume(
        &self,
        image: &str,
        name: Option<String>,
        size: Option<ByteSize>,
        size_field: &'static str,
    ) -> Result<DriveRow, DriveError> {
        let key = image.to_owned();
        let image_row: ImageRow = self
            .store
            .call(move |c| images::get(c, &key))
            .await?
            .ok_or_else(|| DriveError::ImageNotFound(image.to_owned()))?;
        if image_row.state == StorageState::Broken {
            return Err(DriveError::Conflict(format!(
                "image {} is broken (its subvolume is missing); delete it and import it again",
                image_row.name
            )));
        }
        let id = Uuid::now_v7();
        let name = name.unwrap_or_else(|| {
            let simple = id.simple().to_string();
            let prefix = &image_row.name[..image_row.name.len().min(MAX_NAME_LEN - 9)];
            format!(
                "{}-{}",
                prefix.trim_end_matches('-'),
                &simple[simple.len() - 8..]
            )
        });
        validate_name(&name).map_err(|e| DriveError::Invalid {
            field: "name",
            message: e.to_string(),
        })?;
        let size = size.map(|s| s.bytes().next_multiple_of(ext4::BLOCK_SIZE));
        if let Some(size) = size
            && size < image_row.size_bytes
        {
            return Err(DriveError::Invalid {
                field: size_field,
                message: format!(
                    "{size} bytes is smaller than image {} ({} bytes)",
                    image_row.name, image_row.size_bytes
                ),
            });
        }
        let key = name.clone();
        if self
            .store
            .call(move |c| drives::name_taken(c, &key))
            .await?
        {
            return Err(DriveError::NameTaken(name));
        }
        let (pool, image_id) = (self.pool.clone(), image_row.id);
        let info = tokio::task::spawn_blocking(move || -> Result<_, DriveError> {
            Ok(pool
                .get_or_create()?
                .create_drive(&image_id.to_string(), &id.to_string(), size)?)
        })
        .await
        .map_err(DriveError::Worker)?;
        let info = match info {
            Ok(info) => info,
            Err(e) => {
                // Whatever the failure left under `drives/` goes (none is the usual case).
                self.remove_subvolumes(&[id]).await;
                return Err(self.snapshot_failed(e, image, &image_row).await);
            }
        };
        Ok(DriveRow {
            id,
            name,
            image_id,
            size_bytes: info.size_bytes,
            vm_id: None,
            is_root: false,
            created_with_vm: false,
            state: StorageState::Ready,
            created_at_ms: now_ms(),
        })
    }

    /// The error for a snapshot of `image_row` that failed with `e`: an image deleted meanwhile
    /// is [`DriveError::ImageNotFound`] (the race with a delete is a 404, not a 500); a row
    /// without its subvolume is a conflict; anything else is `e`.
    async fn snapshot_failed(
        &self,
        e: DriveError,
        image: &str,
        image_row: &ImageRow,
    ) -> DriveError {
        let id = image_row.id;
        match self.store.call(move |c| images::exists(c, id)).await {
            Ok(false) => DriveError::ImageNotFound(image.to_owned()),
            Err(store) => store.into(),
            Ok(true) => match e {
                DriveError::Snapshot(CreateDriveError::ImageNotFound { .. }) => {
                    DriveError::Conflict(format!(
                        "image {} has no subvolume in the pool; delete it and import it again",
                        image_row.name
                    ))
                }
                other => other,
            },
        }
    }

    /// Keeps the new drive `row` when its insert succeeded, else removes its subvolume.
    async fn keep_or_remove(
        &self,
        row: DriveRow,
        image: &str,
        inserted: Result<Result<(), Refusal>, StoreError>,
    ) -> Result<DriveRow, DriveError> {
        match inserted {
            Ok(Ok(())) => Ok(row),
            Ok(Err(refusal)) => {
                self.remove_subvolumes(&[row.id]).await;
                Err(refused(refusal, &row.name, image))
            }
            Err(e) => {
                self.remove_subvolumes(&[row.id]).await;
                Err(e.into())
            }
        }
    }
}

/// The error for a refused change of `drive` (involving VM or image `other`, when there is one).
pub(crate) fn refused(refusal: Refusal, drive: &str, other: &str) -> DriveError {
    match refusal {
        Refusal::DriveNotFound => DriveError::NotFound(drive.to_owned()),
        Refusal::VmNotFound => DriveError::VmNotFound(other.to_owned()),
        Refusal::DriveNameTaken => DriveError::NameTaken(drive.to_owned()),
        Refusal::Broken => DriveError::Conflict(format!(
            "drive {drive} is broken (its subvolume is missing); it can only be deleted"
        )),
        Refusal::AttachedElsewhere(vm) => DriveError::Conflict(format!(
            "drive {drive} is attached to VM {vm}; detach it first"
        )),
        Refusal::NotAttached => DriveError::Conflict(format!("drive {drive} is not attached")),
        Refusal::VmLive { vm, state } => DriveError::Conflict(format!(
            "drive {drive} is attached to VM {vm}, which is {state}; stop the VM first"
        )),
        Refusal::RootTaken(root) => DriveError::Conflict(format!(
            "VM {other} already has a root drive ({root}); detach it first"
        )),
        Refusal::ImageNotFound => DriveError::ImageNotFound(other.to_owned()),
        Refusal::VmChanged => {
            DriveError::Conflict(format!("drive {drive} moved to another VM; try again"))
        }
    }
}
