//! VM records and their life cycle: validation of requests, the state machine, and the service
//! that API handlers call. Handlers never touch SQL; this module never touches HTTP.

pub mod assets;
pub mod lifecycle;
pub mod process;
pub mod state;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nexus_lib::api::{
    CreateVm, DEFAULT_MEMORY_MIB, DEFAULT_VCPUS, MEMORY_MIB_RANGE, Transition, VCPUS_RANGE, Vm,
    VmState,
};
use nexus_lib::names::{MAX_NAME_LEN, validate_name};
use nexus_lib::size::ByteSize;
use uuid::Uuid;

use crate::drives::{DriveError, DriveService};
use crate::store::vms::{self, Changed, Inserted, InsertedWithRoot, NewVm, VmRow};
use crate::store::{Store, StoreError};

/// Errors of VM operations.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("no VM named or with id {0:?}")]
    NotFound(String),
    #[error("a VM named {0:?} already exists")]
    NameTaken(String),
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("VM {vm} is {state}; {action} is not allowed in that state")]
    WrongState {
        vm: String,
        state: VmState,
        action: &'static str,
    },
    #[error(
        "VM {0} has no root drive: create it with an image (`nexusctl vm create NAME --image IMG`)"
    )]
    NoRootDrive(String),
    #[error("boot assets are not available")]
    Assets(#[source] assets::AssetError),
    #[error(
        "the firecracker backend needs a Firecracker-ready kernel: set `firecracker_kernel` to a vmlinux with virtio-mmio built in"
    )]
    NoFirecrackerKernel,
    #[error("no usable VMM backend")]
    Backend(#[source] crate::vmm::VmmError),
    #[error("VM {vm} failed to start: {reason}")]
    BootFailed { vm: String, reason: String },
    #[error("life-cycle task failed: {0}")]
    Task(String),
    #[error("cannot re-adopt the processes of VM {vm}")]
    Adopt {
        vm: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Network(crate::store::network::NetRefusal),
    #[error(transparent)]
    Net(#[from] crate::network::NetworkError),
    #[error("VM {0} has no nat network (it was created with network none)")]
    NoNatNetwork(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Drive(#[from] DriveError),
}

/// One operation lock per VM. Start, stop and delete hold it until the VM's processes are
/// registered (see [`lifecycle`]); drive attach, detach and delete hold it around their
/// transaction. So a drive never moves while its VM is being started: a detach either happens
/// before the start reads the VM's drives, or waits and then finds the VM live and is refused.
#[derive(Debug, Clone, Default)]
pub struct VmLocks(Arc<Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>>);

impl VmLocks {
    /// Takes the operation lock of VM `id`, waiting for whoever holds it.
    pub async fn lock(&self, id: Uuid) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// Forgets the lock of a deleted VM.
    pub fn forget(&self, id: Uuid) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }
}

/// The VM service.
#[derive(Debug, Clone)]
pub struct VmService {
    store: Store,
    drives: DriveService,
    network: crate::network::NetworkService,
}

impl VmService {
    pub fn new(
        store: Store,
        drives: DriveService,
        network: crate::network::NetworkService,
    ) -> Self {
        Self {
            store,
            drives,
            network,
        }
    }

    /// The VMs' operation locks, shared with the drive service.
    pub fn locks(&self) -> &VmLocks {
        self.drives.vm_locks()
    }

    /// Validates and records a new VM in state `created`; with `image`, together with its root drive.
    pub async fn create(&self, req: CreateVm) -> Result<Vm, VmError> {
        let (image, disk_size) = (req.image.clone(), req.disk_size);
        let net = (req.network, req.publish.clone(), req.egress.clone());
        let mut new = validate_create(req)?;
        new.network = Some(self.network.plan(net.0, net.1, net.2).await?);
        let name = new.name.clone();
        if let Some(image) = image {
            // On its own task: a client that goes away cannot leave a root drive's subvolume
            // without its row.
            let this = self.clone();
            let created =
                tokio::spawn(async move { this.create_with_root(new, &image, disk_size).await })
                    .await
                    .map_err(|e| VmError::Task(e.to_string()))??;
            return self.get(&created.id.to_string()).await;
        }
        match self.store.call(move |c| vms::insert(c, &new)).await? {
            Inserted::Ok(row) => {
                tracing::info!(vm = %row.name, id = %row.id, cid = row.vsock_cid, "VM created");
                self.get(&row.id.to_string()).await
            }
            Inserted::NameTaken => Err(VmError::NameTaken(name)),
            Inserted::Network(refusal) => Err(VmError::Network(refusal)),
        }
    }

    /// Creates VM `new` with a root drive made from `image` (of `disk_size`): the drive service
    /// makes the drive's subvolume, then both rows (and the VM's network) go in one transaction,
    /// so there is never a VM row without its drive, nor a drive left from a failed create.
    async fn create_with_root(
        &self,
        new: NewVm,
        image: &str,
        disk_size: Option<ByteSize>,
    ) -> Result<VmRow, VmError> {
        let vm_name = new.name.clone();
        let key = vm_name.clone();
        if self.store.call(move |c| vms::get(c, &key)).await?.is_some() {
            return Err(VmError::NameTaken(vm_name));
        }
        let root_name = format!("{}-root", &vm_name[..vm_name.len().min(MAX_NAME_LEN - 5)]);
        let drive = self
            .drives
            .make_subvolume(image, Some(root_name.clone()), disk_size, "disk_size")
            .await?;
        let id = drive.id;
        let inserted = self
            .store
            .call(move |c| vms::insert_with_root(c, &new, drive))
            .await;
        let err = match inserted {
            Ok(InsertedWithRoot::Ok(vm, drive)) => {
                tracing::info!(vm = %vm.name, drive = %drive.name, "VM created with its root drive");
                return Ok(vm);
            }
            Ok(InsertedWithRoot::NameTaken) => VmError::NameTaken(vm_name),
            Ok(InsertedWithRoot::Network(refusal)) => VmError::Network(refusal),
            Ok(InsertedWithRoot::Drive(refusal)) => {
                crate::drives::refused(refusal, &root_name, image).into()
            }
            Err(e) => e.into(),
        };
        self.drives.remove_subvolumes(&[id]).await;
        Err(err)
    }

    pub async fn list(&self, state: Option<VmState>) -> Result<Vec<Vm>, VmError> {
        Ok(self
            .store
            .call(move |c| {
                vms::list(c, state)?
                    .iter()
                    .map(|r| vms::to_api(c, r))
                    .collect()
            })
            .await?)
    }

    pub async fn get(&self, id_or_name: &str) -> Result<Vm, VmError> {
        let key = id_or_name.to_owned();
        self.store
            .call(move |c| vms::get(c, &key)?.map(|r| vms::to_api(c, &r)).transpose())
            .await?
            .ok_or_else(|| VmError::NotFound(id_or_name.to_owned()))
    }

    /// Replaces the egress policy of a `nat` VM, at once if it runs, and notes it in its history.
    pub async fn set_network(
        &self,
        id_or_name: &str,
        req: nexus_lib::api::UpdateVmNetwork,
    ) -> Result<Vm, VmError> {
        let vm = self.get(id_or_name).await?;
        if vm.network.as_ref().map(|n| n.mode) != Some(nexus_lib::api::NetworkMode::Nat) {
            return Err(VmError::NoNatNetwork(vm.name));
        }
        let summary = req.egress.summary();
        if self.network.set_egress(vm.id, req.egress).await?.is_none() {
            return Err(VmError::NotFound(id_or_name.to_owned()));
        }
        let (id, why) = (vm.id, format!("egress policy set to {summary}"));
        self.store.call(move |c| vms::note(c, id, &why)).await?;
        tracing::info!(vm = %vm.name, policy = %summary, "egress policy changed");
        self.get(&vm.id.to_string()).await
    }

    /// The network service (the life cycle attaches VMs through it).
    pub fn network(&self) -> &crate::network::NetworkService {
        &self.network
    }

    /// Deletes a VM that is not live, and the drives made with it unless `keep_drives`. Runs on
    /// its own task: a client that goes away cannot leave the rows gone and the subvolumes kept.
    pub async fn delete(&self, id_or_name: &str, keep_drives: bool) -> Result<(), VmError> {
        let (this, key) = (self.clone(), id_or_name.to_owned());
        tokio::spawn(async move { this.delete_now(&key, keep_drives).await })
            .await
            .map_err(|e| VmError::Task(e.to_string()))?
    }

    async fn delete_now(&self, id_or_name: &str, keep_drives: bool) -> Result<(), VmError> {
        let key = id_or_name.to_owned();
        let (changed, released) = self
            .store
            .call(move |c| vms::delete(c, &key, keep_drives, state::can_delete))
            .await?;
        match changed {
            Changed::Ok(row) => {
                self.drives.remove_subvolumes(&released).await;
                tracing::info!(vm = %row.name, id = %row.id, drives_deleted = released.len(), "VM deleted");
                Ok(())
            }
            Changed::NotFound => Err(VmError::NotFound(id_or_name.to_owned())),
            Changed::Refused(state, name) => Err(VmError::WrongState {
                vm: name,
                state,
                action: "delete",
            }),
        }
    }

    pub async fn history(&self, id_or_name: &str) -> Result<Vec<Transition>, VmError> {
        let key = id_or_name.to_owned();
        self.store
            .call(move |c| {
                vms::get(c, &key)?
                    .map(|row| vms::history(c, row.id))
                    .transpose()
            })
            .await?
            .ok_or_else(|| VmError::NotFound(id_or_name.to_owned()))
    }

    /// The boots of a VM, oldest first (the last 100).
    pub async fn boots(
        &self,
        id_or_name: &str,
    ) -> Result<Vec<nexus_lib::api::BootRecord>, VmError> {
        let vm = self.get(id_or_name).await?;
        Ok(self
            .store
            .call(move |c| crate::store::runtime::boots(c, vm.id, 100))
            .await?)
    }

    /// The ext4 files of the VM's drives: root (if any) and the others with their ids.
    pub async fn drive_files(
        &self,
        vm: uuid::Uuid,
    ) -> Result<
        (
            Option<std::path::PathBuf>,
            Vec<(uuid::Uuid, std::path::PathBuf)>,
        ),
        VmError,
    > {
        Ok(self.drives.files_of_vm(vm).await?)
    }

    /// Moves a VM to `to`, refusing illegal transitions with [`VmError::WrongState`].
    pub async fn transition(
        &self,
        id_or_name: &str,
        to: VmState,
        reason: &str,
        action: &'static str,
    ) -> Result<Vm, VmError> {
        let (key, why) = (id_or_name.to_owned(), reason.to_owned());
        let out = self
            .store
            .call(move |c| {
                vms::change_state(c, &key, to, &why, |from| state::can_transition(from, to))
            })
            .await?;
        match out {
            Changed::Ok(row) => self.get(&row.id.to_string()).await,
            Changed::NotFound => Err(VmError::NotFound(id_or_name.to_owned())),
            Changed::Refused(state, name) => Err(VmError::WrongState {
                vm: name,
                state,
                action,
            }),
        }
    }
}

/// Applies defaults and bounds to a create request.
fn validate_create(req: CreateVm) -> Result<NewVm, VmError> {
    if req.disk_size.is_some() && req.image.is_none() {
        return Err(VmError::Invalid {
            field: "disk_size",
            message: "a disk size needs an image to make the disk from".into(),
        });
    }
    validate_name(&req.name).map_err(|e| VmError::Invalid {
        field: "name",
        message: e.to_string(),
    })?;
    let vcpus = req.vcpus.unwrap_or(DEFAULT_VCPUS);
    if !VCPUS_RANGE.contains(&vcpus) {
        return Err(VmError::Invalid {
            field: "vcpus",
            message: format!(
                "{vcpus} is out of range {}..={}",
                VCPUS_RANGE.start(),
                VCPUS_RANGE.end()
            ),
        });
    }
    let memory_mib = req.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
    if !MEMORY_MIB_RANGE.contains(&memory_mib) {
        return Err(VmError::Invalid {
            field: "memory_mib",
            message: format!(
                "{memory_mib} MiB is out of range {}..={}",
                MEMORY_MIB_RANGE.start(),
                MEMORY_MIB_RANGE.end()
            ),
        });
    }
    nexus_lib::agent::McpServerSpec::validate_all(&req.mcp_servers).map_err(|message| {
        VmError::Invalid {
            field: "mcp_servers",
            message,
        }
    })?;
    Ok(NewVm {
        name: req.name,
        vcpus,
        memory_mib,
        network: None,
        mcp_servers: req.mcp_servers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, vcpus: Option<u32>, memory_mib: Option<u32>) -> CreateVm {
        CreateVm {
            name: name.into(),
            vcpus,
            memory_mib,
            ..CreateVm::default()
        }
    }

    #[test]
    fn defaults_are_applied() {
        let v = validate_create(req("a", None, None)).unwrap();
        assert_eq!((v.vcpus, v.memory_mib), (1, 256));
    }

    #[test]
    fn out_of_range_fields_are_named() {
        for (r, field) in [
            (req("a", Some(0), None), "vcpus"),
            (req("a", Some(33), None), "vcpus"),
            (req("a", None, Some(63)), "memory_mib"),
            (req("a", None, Some(65537)), "memory_mib"),
            (req("A", None, None), "name"),
        ] {
            let err = validate_create(r).unwrap_err();
            assert!(
                matches!(err, VmError::Invalid { field: f, .. } if f == field),
                "{err}"
            );
        }
    }
}
