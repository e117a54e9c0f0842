//! Booting and stopping VMs, supervising their processes, and re-adopting them after a daemon
//! restart.
//!
//! Start: preflight (root drive, boot assets, backend) → `starting` → spawn the backend → wait
//! for the guest agent's handshake → `running`. Every VM has one supervisor task that owns its
//! processes: it notices the VMM's exit at once (child reaping, or a pidfd for re-adopted
//! processes) and records the outcome (`stopped` when asked, `failed` during boot, `crashed`
//! otherwise, with the exit and the console tail). Stop: ask the agent to power off, wait with a
//! deadline, then SIGTERM, then SIGKILL.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nexus_lib::api::{Vm, VmState};
use nix::sys::signal::Signal;
use rustix::process::{PidfdFlags, pidfd_open, pidfd_send_signal};
use std::os::fd::OwnedFd;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

mod jail;
mod kernel;
mod recover;
mod services;
mod supervisor;

use jail::find_jailer;
pub use supervisor::console_tail;
use supervisor::{launched_watches, read_console_tail};

use super::assets::{BootAssets, Prepared};
use super::{VmError, VmService};
use crate::agent::AgentClient;
use crate::jail::{JailConfig, Jailer};
use crate::store::runtime::{self, BootPhases};
use crate::store::{Store, now_ms};
use crate::vmm::{
    Accel, DriveSpec, FirecrackerVmm, HostProbe, Launched, QemuVmm, VmSpec, Vmm, VmmChoice,
    VmmKind, guest_cmdline, select_backend,
};

/// How much console output is quoted into a crash or failure reason.
const CONSOLE_TAIL_BYTES: u64 = 2048;
/// How often the console log is checked against its cap.
const CONSOLE_CAP_INTERVAL: Duration = Duration::from_secs(5);
/// How long the agent gets to accept a shutdown request.
const SHUTDOWN_ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// Grace between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// Settings of the life cycle.
#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    pub vmm: VmmChoice,
    pub boot_timeout: Duration,
    pub stop_timeout: Duration,
    pub qemu: PathBuf,
    pub vhost_vsock: PathBuf,
    pub firecracker: Option<PathBuf>,
    /// Firecracker-ready vmlinux; Firecracker is only chosen when there is one.
    pub firecracker_kernel: Option<PathBuf>,
    /// Nexus's built kernel (ELF vmlinux, everything built in): QEMU boots it without an
    /// initramfs, and Firecracker too when `firecracker_kernel` is unset.
    pub guest_kernel: Option<PathBuf>,
    /// Firecracker's `jailer`; unset: looked for next to Firecracker, in /usr/local/bin, /usr/bin.
    pub jailer: Option<PathBuf>,
    /// `--chroot-base-dir` of the jailer.
    pub jailer_chroot_base: PathBuf,
    pub console_max_bytes: u64,
    /// Parent of every VM's runtime directory.
    pub vms_dir: PathBuf,
    /// The jail of the VMM processes.
    pub jail: JailConfig,
}

impl LifecycleConfig {
    /// The kernel Firecracker boots: its own when configured, else the built guest kernel
    /// (Debian's cannot boot there: no virtio-mmio command-line devices).
    pub fn firecracker_kernel(&self) -> Option<&PathBuf> {
        self.firecracker_kernel
            .as_ref()
            .or(self.guest_kernel.as_ref())
    }
}

/// How a supervisor should record the VMM's exit when someone asked for it.
#[derive(Debug, Default)]
struct Outcome(Mutex<Option<(VmState, String)>>);

impl Outcome {
    fn set(&self, state: VmState, reason: impl Into<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((state, reason.into()));
    }

    /// Sets the outcome unless someone (a stop) already decided it.
    fn set_if_empty(&self, state: VmState, reason: impl Into<String>) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some((state, reason.into()));
        }
    }

    fn take(&self) -> Option<(VmState, String)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A VM whose processes are up.
#[derive(Clone)]
struct Live {
    /// The boot these processes belong to; cleanup of an older boot never touches a newer one.
    boot_id: i64,
    agent: AgentClient,
    outcome: Arc<Outcome>,
    signals: mpsc::UnboundedSender<Signal>,
    exited: watch::Receiver<bool>,
    console_log: PathBuf,
}

impl Live {
    /// Waits until the VMM has exited and its supervisor has recorded it, or `limit` passes.
    async fn wait_exit(&self, limit: Duration) -> bool {
        let mut exited = self.exited.clone();
        tokio::time::timeout(limit, exited.wait_for(|e| *e))
            .await
            .is_ok()
    }
}

/// The VM life-cycle service; cheap to clone.
#[derive(Clone)]
pub struct Lifecycle {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    vms: VmService,
    assets: BootAssets,
    cfg: LifecycleConfig,
    jailer: Arc<Jailer>,
    host: HostProbe,
    /// How Firecracker is jailed, when its `jailer` is installed.
    fc_jailer: Option<crate::vmm::JailerSettings>,
    /// The QEMU backend, measured against the host once (its TSC rate, for TCG guests).
    qemu: tokio::sync::OnceCell<Arc<QemuVmm>>,
    /// The backend every VM gets instead of the host's choice: the fake VMM of unit tests.
    fixed_backend: Option<(Arc<dyn Vmm>, Accel)>,
    /// Grace between SIGTERM and SIGKILL when a stop escalates.
    term_grace: Duration,
    live: Mutex<HashMap<Uuid, Live>>,
    /// VMs whose next start skips their image's service and check ([`services`]).
    skip_services: Mutex<std::collections::HashSet<Uuid>>,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("cfg", &self.inner.cfg)
            .finish()
    }
}

impl Lifecycle {
    pub fn new(store: Store, vms: VmService, assets: BootAssets, cfg: LifecycleConfig) -> Self {
        let mut candidates: Vec<PathBuf> = cfg.firecracker.iter().cloned().collect();
        candidates.push("/usr/local/bin/firecracker".into());
        candidates.push("/usr/bin/firecracker".into());
        let mut host = HostProbe::detect(&candidates);
        // Debian's kernel cannot boot under Firecracker (no virtio-mmio command-line devices):
        // without a Firecracker-ready kernel, Firecracker counts as absent.
        if cfg.firecracker_kernel().is_none() {
            host.firecracker = None;
        }
        let fc_jailer = host
            .firecracker
            .as_deref()
            .and_then(|fc| find_jailer(&cfg, fc));
        Self {
            inner: Arc::new(Inner {
                store,
                vms,
                assets,
                jailer: Arc::new(Jailer::new(cfg.jail.clone())),
                cfg,
                host,
                fc_jailer,
                qemu: tokio::sync::OnceCell::new(),
                fixed_backend: None,
                term_grace: TERM_GRACE,
                live: Mutex::new(HashMap::new()),
                skip_services: Mutex::default(),
            }),
        }
    }

    /// A life cycle whose VMs all run on `backend` (a fake VMM), with `term_grace` between
    /// SIGTERM and SIGKILL: unit tests of the life cycle without the host's VMMs.
    #[cfg(test)]
    pub(crate) fn with_backend(mut self, backend: Arc<dyn Vmm>, term_grace: Duration) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("a life cycle not yet shared");
        inner.fixed_backend = Some((backend, Accel::Tcg));
        inner.term_grace = term_grace;
        self
    }

    fn live(&self, id: Uuid) -> Option<Live> {
        self.inner
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    fn set_live(&self, id: Uuid, live: Live) {
        let mut map = self.inner.live.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(id, live);
    }

    /// Forgets the live entry of `id` if it still belongs to `boot_id`.
    fn clear_live(&self, id: Uuid, boot_id: i64) {
        let mut map = self.inner.live.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&id).is_some_and(|l| l.boot_id == boot_id) {
            map.remove(&id);
        }
    }

    /// Gives the live entry of `id` the connected agent client, if it is still `boot_id`'s.
    fn set_agent(&self, id: Uuid, boot_id: i64, agent: AgentClient) {
        let mut map = self.inner.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(live) = map.get_mut(&id).filter(|l| l.boot_id == boot_id) {
            live.agent = agent;
        }
    }

    /// Takes the VM's operation lock (shared with drive attach/detach/delete, see
    /// [`super::VmLocks`]), held by start, stop and delete up to the point where the VM's
    /// processes are registered, so none of them acts on a half-started VM.
    async fn lock_vm(&self, id: Uuid) -> tokio::sync::OwnedMutexGuard<()> {
        self.inner.vms.locks().lock(id).await
    }

    /// Runs a life-cycle operation on its own task, so that a caller who goes away (a client
    /// disconnecting, a request dropped at shutdown) cannot leave it half done.
    async fn detached<T, F>(&self, op: F) -> Result<T, VmError>
    where
        F: std::future::Future<Output = Result<T, VmError>> + Send + 'static,
        T: Send + 'static,
    {
        tokio::spawn(op)
            .await
            .map_err(|e| VmError::Task(e.to_string()))?
    }

    fn runtime_dir(&self, id: Uuid) -> PathBuf {
        self.inner.cfg.vms_dir.join(id.to_string())
    }

    /// The console log of a VM (it may not exist yet).
    pub fn console_log(&self, id: Uuid) -> PathBuf {
        self.runtime_dir(id).join("console.log")
    }

    /// The directory of a VM's sockets, the only one its jailed processes may write.
    fn socket_dir(&self, id: Uuid) -> PathBuf {
        self.runtime_dir(id).join("sock")
    }

    fn vsock_uds(&self, id: Uuid) -> PathBuf {
        self.socket_dir(id).join("vsock.sock")
    }

    async fn backend(&self) -> Result<(Arc<dyn Vmm>, Accel), VmError> {
        if let Some(fixed) = &self.inner.fixed_backend {
            return Ok(fixed.clone());
        }
        let cfg = &self.inner.cfg;
        if cfg.vmm == VmmChoice::Firecracker && cfg.firecracker_kernel().is_none() {
            return Err(VmError::NoFirecrackerKernel);
        }
        let kind = select_backend(cfg.vmm, &self.inner.host).map_err(VmError::Backend)?;
        let accel = self.inner.host.accel;
        Ok(match kind {
            VmmKind::Qemu => {
                let (qemu, vhost) = (cfg.qemu.clone(), cfg.vhost_vsock.clone());
                let vmm = self
                    .inner
                    .qemu
                    .get_or_init(|| async move {
                        let vmm =
                            tokio::task::spawn_blocking(move || QemuVmm::for_host(qemu, vhost))
                                .await
                                .expect("probing the host clock does not panic");
                        Arc::new(vmm)
                    })
                    .await;
                (vmm.clone() as Arc<dyn Vmm>, vmm.accel)
            }
            VmmKind::Firecracker => {
                let bin = self.inner.host.firecracker.clone().unwrap_or_default();
                let vmm = FirecrackerVmm::new(bin).with_jailer(self.inner.fc_jailer.clone());
                (Arc::new(vmm), accel)
            }
        })
    }

    /// The VM service this life cycle drives.
    pub fn vms(&self) -> &VmService {
        &self.inner.vms
    }

    /// Boots a VM and waits for its agent; returns the running VM.
    pub async fn start(&self, key: &str) -> Result<Vm, VmError> {
        let (this, key) = (self.clone(), key.to_owned());
        self.detached(async move { this.start_now(&key).await })
            .await
    }

    async fn start_now(&self, key: &str) -> Result<Vm, VmError> {
        let vm = self.inner.vms.get(key).await?;
        let guard = self.lock_vm(vm.id).await;
        let (root, extra) = self.inner.vms.drive_files(vm.id).await?;
        let root = root.ok_or_else(|| VmError::NoRootDrive(vm.name.clone()))?;
        let (backend, accel) = self.backend().await?;
        let assets = self.boot_assets(backend.kind()).await?;
        let vm = self
            .inner
            .vms
            .transition(
                &vm.id.to_string(),
                VmState::Starting,
                "start requested",
                "start",
            )
            .await?;
        self.boot(vm, (root, extra), assets, backend, accel, guard)
            .await
    }

    async fn boot(
        &self,
        vm: Vm,
        (root, extra): (PathBuf, Vec<(Uuid, PathBuf)>),
        assets: Prepared,
        backend: Arc<dyn Vmm>,
        accel: Accel,
        guard: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<Vm, VmError> {
        let id = vm.id;
        let dir = self.runtime_dir(id);
        let socket_dir = self.socket_dir(id);
        let kind = kind_name(backend.kind());
        let accel_name = accel_name(accel);
        let boot_id = self
            .inner
            .store
            .call(move |c| runtime::insert_boot(c, id, now_ms(), kind, accel_name))
            .await?;
        // The tap comes first: a VM whose network cannot be set up does not start.
        let (tap, guest_net) = match self
            .inner
            .vms
            .network()
            .attach(id, &vm.name, self.tap_owner(&vm))
            .await
        {
            Ok(Some((tap, net))) => (Some(tap), Some(net)),
            Ok(None) => (None, None),
            Err(e) => {
                let reason = format!(
                    "cannot put the VM on the network: {}",
                    nexus_lib::error::error_chain(&e)
                );
                return self.fail_boot(&vm, boot_id, reason).await;
            }
        };
        let mut cmdline = guest_cmdline(&vm.name, guest_net.as_ref());
        if assets.initrd.is_none() {
            cmdline = module_less_cmdline(cmdline);
        }
        let spec = VmSpec {
            name: vm.name.clone(),
            vm_id: id,
            boot_id,
            kernel: assets.kernel.clone(),
            initrd: assets.initrd.clone(),
            cmdline,
            root_drive: root,
            extra_drives: extra
                .into_iter()
                .enumerate()
                .map(|(i, (_, path))| DriveSpec {
                    id: format!("data{i}"),
                    path,
                    read_only: false,
                })
                .collect(),
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
            vsock_cid: vm.vsock_cid,
            vsock_uds: self.vsock_uds(id),
            socket_dir: socket_dir.clone(),
            tap,
            runtime_dir: dir.clone(),
            console_log: dir.join("console.log"),
        };
        let prepared = {
            let (dir, socket_dir) = (dir.clone(), socket_dir.clone());
            tokio::task::spawn_blocking(move || prepare_runtime_dir(&dir, &socket_dir))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        };
        if let Err(e) = prepared {
            self.release_host(id).await;
            return self
                .fail_boot(
                    &vm,
                    boot_id,
                    format!("cannot prepare {}: {e}", dir.display()),
                )
                .await;
        }
        if spec.tap.is_some() && self.inner.jailer.enabled() {
            let (node, uid) = (spec.tun_node(), self.tap_owner(&vm).0);
            let made =
                tokio::task::spawn_blocking(move || crate::jail::make_tun_node(&node, uid)).await;
            if let Err(e) = made.map_err(std::io::Error::other).and_then(|r| r) {
                self.release_host(id).await;
                let reason = format!("cannot make the VM's tun device node: {e}");
                return self.fail_boot(&vm, boot_id, reason).await;
            }
        }
        let mut writable = vec![socket_dir.clone(), spec.root_drive.clone()];
        writable.extend(spec.extra_drives.iter().map(|d| d.path.clone()));
        let jail = match self.prepare_jail(&vm, writable).await {
            Ok(jail) => jail,
            Err(e) => {
                self.release_host(id).await;
                let reason = format!(
                    "cannot set up the VMM jail: {}",
                    nexus_lib::error::error_chain(&e)
                );
                return self.fail_boot(&vm, boot_id, reason).await;
            }
        };
        // Console output of earlier boots stays in the log: only what this boot adds counts.
        let console_start = tokio::fs::metadata(&spec.console_log)
            .await
            .map_or(0, |m| m.len());
        let t0 = Instant::now();
        let launched = match backend.spawn(&spec, jail.as_ref()).await {
            Ok(l) => l,
            Err(e) => {
                self.release_host(id).await;
                let reason = format!(
                    "{}; console: {}",
                    nexus_lib::error::error_chain(&e),
                    read_console_tail(&spec.console_log).await
                );
                return self.fail_boot(&vm, boot_id, reason).await;
            }
        };
        let vmm_ready_ms = t0.elapsed().as_millis() as u64;
        // Until a supervisor owns them, the processes are killed if anything fails (or this
        // task is dropped): nothing spawned outlives a boot that did not register it.
        let spawned = SpawnGuard::new(&launched);
        let live = match self
            .supervise(
                &vm,
                boot_id,
                launched_watches(launched),
                &spec,
                accel_name,
                kind,
            )
            .await
        {
            Ok(live) => {
                spawned.disarm();
                live
            }
            Err(e) => {
                drop(spawned);
                self.release_host(id).await;
                let reason = format!(
                    "cannot register the VMM's processes (killed): {}",
                    nexus_lib::error::error_chain(&e)
                );
                return self.fail_boot(&vm, boot_id, reason).await;
            }
        };
        // The processes are registered: stop and delete may act on this VM from now on.
        drop(guard);
        tracing::info!(vm = %vm.name, backend = kind, accel = accel_name, vmm_ready_ms, "VMM spawned; waiting for the agent");

        let mut exited = live.exited.clone();
        let boot_timeout = self.inner.cfg.boot_timeout;
        let (uds, log) = (spec.vsock_uds.clone(), spec.console_log.clone());
        let connect = async move {
            crate::agent::wait_for_ready_line(&log, console_start, boot_timeout).await;
            let left = boot_timeout
                .saturating_sub(t0.elapsed())
                .max(Duration::from_secs(1));
            // The dial gets what is left of the boot timeout, but a timeout names the whole wait.
            AgentClient::connect(uds, left).await.map_err(|e| match e {
                crate::agent::AgentError::Timeout { path, .. } => {
                    crate::agent::AgentError::Timeout {
                        path,
                        waited: waited_since(t0),
                    }
                }
                e => e,
            })
        };
        tokio::select! {
            res = async {
                let (agent, hs) = match connect.await {
                    Ok(c) => c,
                    Err(e) => return Err(format!("{}; console: {}", nexus_lib::error::error_chain(&e), read_console_tail(&spec.console_log).await)),
                };
                let agent_ready_ms = t0.elapsed().as_millis() as u64;
                let services = self.image_services(id, &agent).await?;
                Ok((agent, hs, agent_ready_ms, services))
            } => match res {
                Ok((agent, hs, agent_ready_ms, services)) => {
                    self.set_agent(id, boot_id, agent);
                    let phases = BootPhases {
                        vmm_ready_ms: Some(vmm_ready_ms),
                        guest_init_ms: Some(hs.boot.init_ms),
                        guest_ready_ms: Some(hs.boot.ready_ms),
                        agent_ready_ms: Some(agent_ready_ms),
                    };
                    self.inner
                        .store
                        .call(move |c| runtime::finish_boot(c, boot_id, phases, "running"))
                        .await?;
                    let reason = format!(
                        "agent answered in {agent_ready_ms} ms (protocol {}, agent {}, kernel {}, {kind}/{accel_name}){}",
                        hs.protocol,
                        crate::sanitize::clean(&hs.agent_version, 128),
                        crate::sanitize::clean(&hs.kernel_release, 128),
                        services.map(|s| format!("; {s}")).unwrap_or_default()
                    );
                    tracing::info!(vm = %vm.name, agent_ready_ms, "VM running");
                    self.inner
                        .vms
                        .transition(&id.to_string(), VmState::Running, &reason, "start")
                        .await
                }
                Err(reason) => {
                    live.outcome.set_if_empty(VmState::Failed, reason.clone());
                    let _ = live.signals.send(Signal::SIGKILL);
                    live.wait_exit(Duration::from_secs(10)).await;
                    self.inner.store.call(move |c| runtime::finish_boot(c, boot_id, BootPhases { vmm_ready_ms: Some(vmm_ready_ms), ..BootPhases::default() }, "failed")).await?;
                    Err(VmError::BootFailed { vm: vm.name.clone(), reason })
                }
            },
            () = async { let _ = exited.wait_for(|e| *e).await; } => {
                let state = self.inner.vms.get(&id.to_string()).await?;
                self.inner.store.call(move |c| runtime::finish_boot(c, boot_id, BootPhases { vmm_ready_ms: Some(vmm_ready_ms), ..BootPhases::default() }, "failed")).await?;
                let reason = self.inner.vms.history(&id.to_string()).await?
                    .pop()
                    .map(|t| t.reason)
                    .unwrap_or_default();
                Err(VmError::BootFailed { vm: state.name, reason })
            }
        }
    }

    /// Records a boot that failed before any process was supervised.
    async fn fail_boot(&self, vm: &Vm, boot_id: i64, reason: String) -> Result<Vm, VmError> {
        let id = vm.id;
        let outcome = format!("failed: {reason}");
        self.inner
            .store
            .call(move |c| runtime::finish_boot(c, boot_id, BootPhases::default(), &outcome))
            .await?;
        self.inner
            .vms
            .transition(&id.to_string(), VmState::Failed, &reason, "start")
            .await?;
        tracing::warn!(vm = %vm.name, %reason, "VM failed to start");
        Err(VmError::BootFailed {
            vm: vm.name.clone(),
            reason,
        })
    }

    /// Asks the guest to power off, then escalates; returns the stopped VM.
    pub async fn stop(&self, key: &str) -> Result<Vm, VmError> {
        let (this, key) = (self.clone(), key.to_owned());
        self.detached(async move { this.stop_now(&key).await })
            .await
    }

    async fn stop_now(&self, key: &str) -> Result<Vm, VmError> {
        let vm = self.inner.vms.get(key).await?;
        let id = vm.id;
        let guard = self.lock_vm(id).await;
        self.inner
            .vms
            .transition(&id.to_string(), VmState::Stopping, "stop requested", "stop")
            .await?;
        let Some(live) = self.live(id) else {
            return self
                .inner
                .vms
                .transition(
                    &id.to_string(),
                    VmState::Stopped,
                    "no VMM process was running",
                    "stop",
                )
                .await;
        };
        drop(guard);
        self.shut_down(&vm.name, &live).await;
        self.inner.vms.get(&id.to_string()).await
    }

    async fn shut_down(&self, name: &str, live: &Live) {
        let timeout = self.inner.cfg.stop_timeout;
        live.outcome
            .set(VmState::Stopped, "guest powered off on request");
        let asked = tokio::time::timeout(SHUTDOWN_ASK_TIMEOUT, live.agent.shutdown()).await;
        if !matches!(asked, Ok(Ok(_))) {
            tracing::warn!(vm = %name, "agent did not accept the shutdown request; escalating");
        } else if live.wait_exit(timeout).await {
            return;
        }
        live.outcome.set(
            VmState::Stopped,
            format!("guest did not power off within {timeout:?}; VMM terminated"),
        );
        let _ = live.signals.send(Signal::SIGTERM);
        if live.wait_exit(self.inner.term_grace).await {
            return;
        }
        live.outcome
            .set(VmState::Stopped, "VMM ignored SIGTERM; killed");
        let _ = live.signals.send(Signal::SIGKILL);
        live.wait_exit(Duration::from_secs(10)).await;
    }

    /// Stops (when live) and starts again.
    pub async fn restart(&self, key: &str) -> Result<Vm, VmError> {
        let (this, key) = (self.clone(), key.to_owned());
        self.detached(async move {
            let vm = this.inner.vms.get(&key).await?;
            if matches!(vm.state, VmState::Starting | VmState::Running) {
                this.stop_now(&key).await?;
            }
            this.start_now(&key).await
        })
        .await
    }

    /// The agent of a running VM.
    pub async fn agent(&self, key: &str) -> Result<(Vm, AgentClient), VmError> {
        let vm = self.inner.vms.get(key).await?;
        match (vm.state, self.live(vm.id)) {
            (VmState::Running, Some(live)) => Ok((vm, live.agent)),
            (state, _) => Err(VmError::WrongState {
                vm: vm.name,
                state,
                action: "talking to the guest",
            }),
        }
    }

    /// Deletes a VM that is not live, with its runtime directory.
    pub async fn delete(&self, key: &str, keep_drives: bool) -> Result<(), VmError> {
        let vm = self.inner.vms.get(key).await?;
        let _guard = self.lock_vm(vm.id).await;
        self.inner
            .vms
            .delete(&vm.id.to_string(), keep_drives)
            .await?;
        let dir = self.runtime_dir(vm.id);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        self.inner.vms.locks().forget(vm.id);
        Ok(())
    }

    /// At daemon shutdown: stops every live VM when asked to, else leaves them running.
    pub async fn shutdown(&self, stop_vms: bool) {
        if stop_vms {
            let ids: Vec<Uuid> = self
                .inner
                .live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .copied()
                .collect();
            let stops = ids.into_iter().map(|id| {
                let this = self.clone();
                async move {
                    if let Err(e) = this.stop(&id.to_string()).await {
                        tracing::warn!(vm = %id, error = %e, "cannot stop VM at shutdown");
                    }
                }
            });
            futures_util::future::join_all(stops).await;
        }
        if self.inner.jailer.enabled() {
            let jailer = self.inner.jailer.clone();
            let _ = tokio::task::spawn_blocking(move || jailer.remove_parent_if_empty()).await;
        }
    }
}

/// The processes a backend launched, killed (SIGKILL through pidfds, immune to pid reuse) when
/// the guard is dropped, unless [`SpawnGuard::disarm`]ed once a supervisor owns them.
struct SpawnGuard {
    pidfds: Vec<OwnedFd>,
}

impl SpawnGuard {
    fn new(launched: &Launched) -> Self {
        Self::for_pids(launched.processes.iter().map(|p| p.pid))
    }

    fn for_pids(pids: impl Iterator<Item = u32>) -> Self {
        let pidfds = pids
            .filter_map(|pid| rustix::process::Pid::from_raw(i32::try_from(pid).ok()?))
            // Not yet reaped (their `Child` is alive), so the pids are still theirs.
            .filter_map(|pid| pidfd_open(pid, PidfdFlags::empty()).ok())
            .collect();
        Self { pidfds }
    }

    fn disarm(mut self) {
        self.pidfds.clear();
    }
}

impl Drop for SpawnGuard {
    fn drop(&mut self) {
        for fd in &self.pidfds {
            let _ = pidfd_send_signal(fd, rustix::process::Signal::KILL);
        }
    }
}

/// Time since `t0`, to the millisecond (for messages).
fn waited_since(t0: Instant) -> Duration {
    Duration::from_millis(t0.elapsed().as_millis() as u64)
}

pub use crate::boot::ROOT_AGENT_PATH;

/// Without an initramfs the kernel mounts the root drive itself (Firecracker adds
/// `root=/dev/vda rw` for the root device) and starts the agent from it as PID 1.
fn module_less_cmdline(mut cmdline: String) -> String {
    if !cmdline.split_whitespace().any(|w| w.starts_with("init=")) {
        cmdline.push_str(" init=");
        cmdline.push_str(ROOT_AGENT_PATH);
    }
    cmdline
}

/// Creates the runtime directory (nexusd's) and the socket directory (the VMM's), emptying the
/// latter: whatever a previous boot's VMM left there is not to be trusted.
fn prepare_runtime_dir(dir: &Path, socket_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    builder.create(dir)?;
    match std::fs::remove_dir_all(socket_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    builder.create(socket_dir)
}

fn kind_name(kind: VmmKind) -> &'static str {
    match kind {
        VmmKind::Qemu => "qemu",
        VmmKind::Firecracker => "firecracker",
    }
}

fn accel_name(accel: Accel) -> &'static str {
    match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    }
}

#[cfg(test)]
mod tests;
