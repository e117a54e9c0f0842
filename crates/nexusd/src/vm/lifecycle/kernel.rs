//! Which kernel a VM boots: the configured `guest_kernel`, else the newest guest kernel the
//! `kernel-build` provider installed, else (QEMU only) Debian's kernel with its initramfs.

use std::path::PathBuf;

use nexus_lib::api::AssetKind;

use super::Lifecycle;
use crate::assets::builtin::GUEST_KERNEL;
use crate::store::Store;
use crate::vm::VmError;
use crate::vm::assets::Prepared;
use crate::vmm::VmmKind;

impl Lifecycle {
    /// What a VM on `kind` boots: `guest_kernel`, else the newest built guest kernel installed
    /// by the `kernel-build` provider. A built kernel has everything built in: no initramfs, the
    /// kernel mounts the root drive itself (see `module_less_cmdline`). Without one, QEMU
    /// boots Debian's kernel with the generated initramfs.
    pub(super) async fn boot_assets(&self, kind: VmmKind) -> Result<Prepared, VmError> {
        let cfg = &self.inner.cfg;
        let assets = &self.inner.assets;
        let installed = match cfg.guest_kernel {
            Some(_) => None,
            None => installed_guest_kernel(&self.inner.store).await,
        };
        let prepared = match (kind, cfg.guest_kernel.as_ref().or(installed.as_ref())) {
            (VmmKind::Firecracker, built) => match cfg.firecracker_kernel.as_ref().or(built) {
                Some(vmlinux) => Ok(Prepared::built(vmlinux.clone())),
                None => return Err(VmError::NoFirecrackerKernel),
            },
            (VmmKind::Qemu, Some(vmlinux)) => assets.built_for_qemu(vmlinux).await,
            (VmmKind::Qemu, None) => assets.get().await,
        };
        prepared.map_err(VmError::Assets)
    }
}

/// The `vmlinux` of the newest installed `nexus-guest` kernel asset whose file is there. A store
/// that cannot answer is logged and read as "none": the VM then boots Debian's kernel.
async fn installed_guest_kernel(store: &Store) -> Option<PathBuf> {
    let rows = store
        .call(|c| crate::store::assets::list_assets(c, Some(AssetKind::Kernel)))
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look up installed guest kernels");
            return None;
        }
    };
    rows.iter()
        .rev()
        .filter(|row| row.name == GUEST_KERNEL)
        .map(|row| PathBuf::from(&row.path))
        .find(|path| path.is_file())
}
