//! Unit tests of the life cycle on the fake VMM (`crate::vmm::fake`): real processes speaking
//! the agent protocol on the VM's vsock socket, a temporary SQLite store, no root, KVM or QEMU.
//! `boot.rs`: starts that fail and the drive lock during a start; `running.rs`: a running VM's
//! guest stalling or crashing, stop escalation, and recovery after a daemon restart; `units.rs`:
//! the spawn guard and the command line on their own.

mod boot;
mod running;
mod units;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nexus_lib::api::{Vm, VmState};
use uuid::Uuid;

use super::{Lifecycle, LifecycleConfig};
use crate::drives::DriveService;
use crate::jail::JailConfig;
use crate::storage::PoolManager;
use crate::store::Store;
use crate::store::drives::{self as drive_rows, DriveRow};
use crate::store::images::{self as image_rows, ImageRow};
use crate::store::vms::{self as vm_rows, InsertedWithRoot, NewVm};
use crate::vm::VmService;
use crate::vm::assets::{BootAssets, Prepared};
use crate::vmm::VmmChoice;
use crate::vmm::fake::{FakeVmm, Guest};

/// The life cycle's time bounds in a test.
#[derive(Debug, Clone, Copy)]
struct Timing {
    boot: Duration,
    stop: Duration,
    term_grace: Duration,
}

impl Default for Timing {
    /// Generous: a loaded test machine must not turn a healthy boot or stop into a failure.
    fn default() -> Self {
        Self {
            boot: Duration::from_secs(10),
            stop: Duration::from_secs(10),
            term_grace: Duration::from_secs(3),
        }
    }
}

/// A daemon's services on a temporary directory, with the fake VMM as the only backend.
struct FakeHost {
    dir: tempfile::TempDir,
    store: Store,
    pool: Arc<PoolManager>,
    vms: VmService,
    drives: DriveService,
    vmm: Arc<FakeVmm>,
    timing: Timing,
    lifecycle: Lifecycle,
    image: Uuid,
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        self.vmm.kill_all();
    }
}

impl FakeHost {
    fn new(guest: Guest) -> Self {
        Self::with(FakeVmm::new(guest), Timing::default())
    }

    fn with(vmm: FakeVmm, timing: Timing) -> Self {
        Self::booting(vmm, timing, None)
    }

    /// A host booting `guest_kernel` (a built kernel: no initramfs) instead of Debian's.
    fn with_guest_kernel(guest: Guest, guest_kernel: &std::path::Path) -> Self {
        Self::booting(FakeVmm::new(guest), Timing::default(), Some(guest_kernel))
    }

    fn booting(vmm: FakeVmm, timing: Timing, guest_kernel: Option<&std::path::Path>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("nexus.db")).unwrap();
        let pool = Arc::new(PoolManager::opened_unchecked(&dir.path().join("pool")));
        let drives = DriveService::new(store.clone(), pool.clone());
        let vms = VmService::new(
            store.clone(),
            drives.clone(),
            crate::network::NetworkService::new(
                crate::network::NetworkSettings::loopback_only(),
                store.clone(),
            ),
        );
        let image = ImageRow::ready("base");
        store
            .call_blocking(|c| image_rows::insert(c, &image))
            .unwrap();
        let vmm = Arc::new(vmm);
        let lifecycle = life_cycle(dir.path(), &store, &vms, &vmm, timing, guest_kernel);
        Self {
            dir,
            store,
            pool,
            vms,
            drives,
            vmm,
            timing,
            lifecycle,
            image: image.id,
        }
    }

    /// A host whose VM `a` is running on `vmm`.
    async fn running(vmm: FakeVmm, timing: Timing) -> Self {
        let host = Self::with(vmm, timing);
        host.vm("a").await;
        host.lifecycle.start("a").await.unwrap();
        host
    }

    /// A second life cycle on the same store and directories: the daemon after a restart.
    fn restarted(&self) -> Lifecycle {
        life_cycle(
            self.dir.path(),
            &self.store,
            &self.vms,
            &self.vmm,
            self.timing,
            None,
        )
    }

    /// Creates VM `name` with a root drive (rows only: the fake VMM never opens the file).
    async fn vm(&self, name: &str) -> Vm {
        let new = NewVm {
            name: name.into(),
            vcpus: 1,
            memory_mib: 256,
            network: None,
            mcp_servers: Vec::new(),
        };
        let root = drive_row(&format!("{name}-root"), self.image, None);
        match self
            .store
            .call(move |c| vm_rows::insert_with_root(c, &new, root))
            .await
            .unwrap()
        {
            InsertedWithRoot::Ok(vm, _) => vm.to_api(),
            other => panic!("{other:?}"),
        }
    }

    /// Creates drive `name`, attached to `vm` when there is one.
    async fn drive(&self, name: &str, vm: Option<Uuid>) -> DriveRow {
        let row = drive_row(name, self.image, vm);
        let insert = row.clone();
        self.store
            .call(move |c| drive_rows::insert(c, &insert))
            .await
            .unwrap()
            .unwrap();
        row
    }

    async fn state(&self, vm: &str) -> VmState {
        self.vms.get(vm).await.unwrap().state
    }

    /// The reason of the VM's latest transition.
    async fn reason(&self, vm: &str) -> String {
        self.vms.history(vm).await.unwrap().pop().unwrap().reason
    }

    /// Waits until VM `vm` is in `state`; panics after 10 s.
    async fn wait_for(&self, vm: &str, state: VmState) {
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            while self.state(vm).await != state {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "VM {vm} never became {state}; it is {}: {}",
            self.state(vm).await,
            self.reason(vm).await
        );
    }

    fn console(&self, vm: &Vm) -> String {
        std::fs::read_to_string(self.lifecycle.console_log(vm.id)).unwrap_or_default()
    }

    /// The API as a daemon serves it, on this host's services.
    fn app_state(&self) -> crate::api::AppState {
        let policy = Arc::new(crate::hostpath::ImportPolicy::new(None, Vec::new()));
        let images =
            crate::images::ImageService::new(self.store.clone(), self.pool.clone(), policy.clone());
        let assets = crate::assets::AssetService::new(
            self.store.clone(),
            crate::assets::AssetDirs::under(&self.dir.path().join("data")),
            Default::default(),
            policy.clone(),
        )
        .expect("asset service");
        crate::api::AppState {
            builds: crate::builds::BuildService::new(
                self.store.clone(),
                self.lifecycle.clone(),
                images.clone(),
                assets.clone(),
                policy,
                self.dir.path().join("builds"),
                1,
            ),
            store: self.store.clone(),
            vms: self.vms.clone(),
            lifecycle: self.lifecycle.clone(),
            pool: self.pool.clone(),
            images,
            drives: self.drives.clone(),
            assets,
            started: std::time::Instant::now(),
            mcp: crate::mcp::McpSettings::default(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            tokens: crate::tokens::TokenService::new(self.store.clone()),
            guest_mcp: crate::mcp::GuestServers::default(),
            terminals: Default::default(),
        }
    }
}

fn life_cycle(
    dir: &std::path::Path,
    store: &Store,
    vms: &VmService,
    vmm: &Arc<FakeVmm>,
    timing: Timing,
    guest_kernel: Option<&std::path::Path>,
) -> Lifecycle {
    let cfg = LifecycleConfig {
        vmm: VmmChoice::Qemu,
        boot_timeout: timing.boot,
        stop_timeout: timing.stop,
        qemu: "/nonexistent/qemu".into(),
        vhost_vsock: "/nonexistent/vhost-device-vsock".into(),
        firecracker: None,
        firecracker_kernel: None,
        guest_kernel: guest_kernel.map(std::path::Path::to_path_buf),
        jailer: None,
        jailer_chroot_base: dir.join("jailer"),
        console_max_bytes: 1 << 20,
        vms_dir: dir.join("vms"),
        jail: JailConfig {
            enabled: false,
            ..JailConfig::with_defaults(dir)
        },
    };
    let assets = BootAssets::ready(Prepared {
        kernel: PathBuf::from("/fake/vmlinuz"),
        initrd: Some(PathBuf::from("/fake/initrd.img")),
        release: "6.1.0-fake".into(),
    });
    Lifecycle::new(store.clone(), vms.clone(), assets, cfg)
        .with_backend(vmm.clone(), timing.term_grace)
}

fn drive_row(name: &str, image_id: Uuid, vm_id: Option<Uuid>) -> DriveRow {
    DriveRow {
        vm_id,
        ..DriveRow::ready(name, image_id)
    }
}
