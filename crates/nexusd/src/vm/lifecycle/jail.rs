//! The jail side of the life cycle: a VM's jail prepared before its processes start and its
//! cgroup removed after they exit (see `crate::jail`), and Firecracker's own `jailer` found.

use std::path::{Path, PathBuf};

use nexus_lib::api::Vm;
use uuid::Uuid;

use super::{Lifecycle, LifecycleConfig};
use crate::jail::{JailError, VmJail};

impl Lifecycle {
    /// Sets up the jail of VM `vm` (its cgroup, and its uid owning `writable`), or `None` when
    /// the config turned the jail off.
    pub(super) async fn prepare_jail(
        &self,
        vm: &Vm,
        writable: Vec<PathBuf>,
    ) -> Result<Option<VmJail>, JailError> {
        if !self.inner.jailer.enabled() {
            tracing::warn!(vm = %vm.name, "jail = false: this VM's VMM runs unjailed, as root, with nexusd's view of the host");
            return Ok(None);
        }
        let jailer = self.inner.jailer.clone();
        let (id, cid, mem) = (
            vm.id.to_string(),
            vm.vsock_cid,
            u64::from(vm.memory_mib) << 20,
        );
        tokio::task::spawn_blocking(move || jailer.prepare(&id, cid, mem, &writable).map(Some))
            .await
            .map_err(|e| JailError::Cgroup(format!("jail worker failed: {e}")))?
    }

    /// Releases what the host holds for VM `id` once its processes are gone (or never
    /// started): its cgroup, and its tap and firewall rules.
    pub(super) async fn release_host(&self, id: Uuid) {
        self.remove_cgroup(id).await;
        self.inner.vms.network().release(id).await;
    }

    /// The uid and gid that own VM `vm`'s tap: its jail's, or root's when the jail is off.
    pub(super) fn tap_owner(&self, vm: &Vm) -> (u32, u32) {
        if !self.inner.jailer.enabled() {
            return (0, 0);
        }
        let uid = self.inner.cfg.jail.uid_base.saturating_add(vm.vsock_cid);
        (uid, uid)
    }

    /// Removes the cgroup of VM `id`, killing whatever is left in it.
    pub(super) async fn remove_cgroup(&self, id: Uuid) {
        if !self.inner.jailer.enabled() {
            return;
        }
        let jailer = self.inner.jailer.clone();
        let _ = tokio::task::spawn_blocking(move || jailer.remove_cgroup(&id.to_string())).await;
    }
}

/// The jailer to start Firecracker through (`fc` is the Firecracker binary in use), if one is
/// installed, with the host's cgroup hierarchy.
pub(super) fn find_jailer(cfg: &LifecycleConfig, fc: &Path) -> Option<crate::vmm::JailerSettings> {
    use crate::vmm::jailer;
    let binary = jailer::jailer_candidates(cfg.jailer.as_deref(), Some(fc))
        .into_iter()
        .find(|p| crate::vmm::is_executable(p))?;
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    Some(crate::vmm::JailerSettings {
        binary,
        chroot_base: cfg.jailer_chroot_base.clone(),
        cgroup_version: jailer::detect_cgroup_version(&mounts),
    })
}
