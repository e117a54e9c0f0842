//! Recovery at start-up: VMs that were live when the last daemon stopped are re-adopted when
//! their VMM still runs (pidfd opened first, then pid start time and command line checked, so a
//! reused pid is never adopted), or recorded as ended. Any other process still running for a VM
//! (a vsock backend, a VMM whose start was interrupted) is killed: every state is reconciled.
//! Before any of that, every VM's console log is capped (the guest kept printing while nexusd was
//! down, into a file nothing capped), and `/proc` is scanned once, off the async runtime.

use std::path::PathBuf;
use std::time::Duration;

use nexus_lib::api::{Vm, VmState};
use nix::sys::signal::Signal;

use super::Lifecycle;
use super::supervisor::read_console_tail;
use crate::agent::AgentClient;
use crate::store::now_ms;
use crate::store::runtime::{self, RuntimeRow};
use crate::vm::VmError;
use crate::vm::process::{Watch, is_same_process};
use crate::vmm::{cap_console_log, cap_firecracker_logs};

impl Lifecycle {
    /// At start-up: re-adopts the processes of VMs that were live when the last daemon
    /// stopped, records the end of those whose VMM is gone, and kills strays.
    pub async fn recover(&self) -> Result<(), VmError> {
        let vms = self.inner.vms.list(None).await?;
        self.remove_orphan_cgroups(&vms).await;
        self.cap_logs(&vms).await;
        let processes = tokio::task::spawn_blocking(vm_processes)
            .await
            .unwrap_or_default();
        for vm in vms {
            let id = vm.id;
            let row = self
                .inner
                .store
                .call(move |c| runtime::get_runtime(c, id))
                .await?;
            let live_state = crate::vm::state::is_live(vm.state);
            match row {
                Some(row) if live_state => match adoptable_off_runtime(&row).await {
                    Ok((vmm, helper)) => self.adopt(&vm, row, vmm, helper),
                    Err(e) => {
                        tracing::info!(vm = %vm.name, reason = %e, "VMM not re-adoptable");
                        self.record_lost(&vm, Some(row), &processes).await?;
                    }
                },
                row if live_state => self.record_lost(&vm, row, &processes).await?,
                row => {
                    kill_strays(&processes, &self.runtime_dir(id));
                    self.release_host(id).await;
                    if row.is_some() {
                        self.inner
                            .store
                            .call(move |c| runtime::delete_runtime(c, id))
                            .await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes the cgroups of VMs that no longer exist (deleted while their cgroup could not be
    /// removed, or by an older database).
    async fn remove_orphan_cgroups(&self, vms: &[Vm]) {
        if !self.inner.jailer.enabled() {
            return;
        }
        let jailer = self.inner.jailer.clone();
        let known: std::collections::HashSet<String> =
            vms.iter().map(|v| v.id.to_string()).collect();
        let _ = tokio::task::spawn_blocking(move || {
            for name in jailer.cgroups() {
                if !known.contains(&name) {
                    tracing::warn!(cgroup = %name, "removing the cgroup of a VM that no longer exists");
                    jailer.remove_cgroup(&name);
                }
            }
        })
        .await;
    }

    /// Caps every VM's console log (and Firecracker's logs) before anything reads them: a guest
    /// may have printed any amount while no supervisor was capping.
    async fn cap_logs(&self, vms: &[Vm]) {
        let max = self.inner.cfg.console_max_bytes;
        let dirs: Vec<PathBuf> = vms.iter().map(|vm| self.runtime_dir(vm.id)).collect();
        let _ = tokio::task::spawn_blocking(move || {
            for dir in dirs {
                let log = dir.join("console.log");
                if let Err(e) = cap_console_log(&log, max) {
                    tracing::warn!(log = %log.display(), error = %e, "cannot cap the console log");
                }
                let _ = cap_firecracker_logs(&dir, max);
            }
        })
        .await;
    }

    fn adopt(&self, vm: &Vm, row: RuntimeRow, vmm: Watch, helper: Option<Watch>) {
        let dir = PathBuf::from(&row.runtime_dir);
        let live = self.spawn_supervisor(
            vm,
            row.boot_id,
            vmm,
            helper,
            self.vsock_uds(vm.id),
            dir.join("console.log"),
        );
        tracing::info!(vm = %vm.name, pid = row.vmm_pid, state = %vm.state, "re-adopted running VM");
        let this = self.clone();
        let vm = vm.clone();
        let boot_id = row.boot_id;
        tokio::spawn(async move {
            if vm.state == VmState::Stopping {
                this.shut_down(&vm.name, &live).await;
                return;
            }
            let starting = vm.state == VmState::Starting;
            let wait = if starting {
                this.inner.cfg.boot_timeout
            } else {
                Duration::from_secs(10)
            };
            match AgentClient::connect(live.agent.socket_path().to_owned(), wait).await {
                Ok((agent, _)) => {
                    this.set_agent(vm.id, boot_id, agent);
                    if starting {
                        let _ = this
                            .inner
                            .vms
                            .transition(
                                &vm.id.to_string(),
                                VmState::Running,
                                "agent answered after daemon restart",
                                "start",
                            )
                            .await;
                    }
                }
                Err(e) if starting => {
                    // The boot was interrupted by the restart and never completed: fail it as a
                    // boot timeout would.
                    live.outcome.set_if_empty(
                        VmState::Failed,
                        format!("agent did not answer after a daemon restart: {e}"),
                    );
                    let _ = live.signals.send(Signal::SIGKILL);
                }
                Err(e) => {
                    tracing::warn!(vm = %vm.name, error = %e, "re-adopted VM's agent does not answer")
                }
            }
        });
    }

    async fn record_lost(
        &self,
        vm: &Vm,
        row: Option<RuntimeRow>,
        processes: &[VmProcess],
    ) -> Result<(), VmError> {
        let id = vm.id;
        kill_strays(processes, &self.runtime_dir(id));
        self.release_host(id).await;
        let boot_id = row.map(|r| r.boot_id);
        self.inner
            .store
            .call(move |c| {
                if let Some(b) = boot_id {
                    runtime::end_boot(c, b, now_ms(), "gone while nexusd was not running")?;
                }
                runtime::delete_runtime(c, id)
            })
            .await?;
        let to = match vm.state {
            VmState::Stopping => VmState::Stopped,
            VmState::Starting => VmState::Failed,
            _ => VmState::Crashed,
        };
        let tail = read_console_tail(&self.console_log(id)).await;
        let reason = format!("VMM exited while nexusd was not running; console: {tail}");
        tracing::warn!(vm = %vm.name, state = %to, "VM's VMM is gone");
        self.inner
            .vms
            .transition(&id.to_string(), to, &reason, "recover")
            .await
            .map(drop)
    }
}

/// [`adoptable`] on a blocking thread (it reads `/proc`).
async fn adoptable_off_runtime(row: &RuntimeRow) -> Result<(Watch, Option<Watch>), String> {
    let row = row.clone();
    tokio::task::spawn_blocking(move || adoptable(&row))
        .await
        .unwrap_or_else(|e| Err(format!("adoption check failed: {e}")))
}

/// Opens a pidfd on the recorded VMM first and only then checks that it is still the same
/// process, so a pid reused in between cannot be adopted; the same for its helper, which is
/// simply not watched when it is gone.
fn adoptable(row: &RuntimeRow) -> Result<(Watch, Option<Watch>), String> {
    let vmm = Watch::adopt(row.vmm_pid).map_err(|e| format!("pid {}: {e}", row.vmm_pid))?;
    // The VM's id, not its runtime directory: a Firecracker the jailer exec'd in place (same pid
    // and start time) carries only chroot-relative paths and `--id <vm-id>` on its command line.
    if !is_same_process(row.vmm_pid, row.vmm_start_ticks, &row.vm_id.to_string()) {
        return Err(format!("pid {} is no longer the VMM", row.vmm_pid));
    }
    let helper = match (row.helper_pid, row.helper_start_ticks) {
        (Some(pid), Some(ticks)) => Watch::adopt(pid)
            .ok()
            .filter(|_| is_same_process(pid, ticks, &row.runtime_dir)),
        _ => None,
    };
    Ok((vmm, helper))
}

/// A running VMM or vsock backend, as `/proc` showed it at recovery.
struct VmProcess {
    pid: u32,
    cmdline: String,
}

/// Every VMM and vsock backend process (by `comm`), read once from `/proc` at recovery. Blocking:
/// run it in `spawn_blocking`.
fn vm_processes() -> Vec<VmProcess> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if !["qemu-system", "vhost-device", "firecracker"]
            .iter()
            .any(|p| comm.starts_with(p))
        {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        found.push(VmProcess {
            pid,
            cmdline: String::from_utf8_lossy(&cmdline).into_owned(),
        });
    }
    found
}

/// SIGKILLs every VMM or vsock backend of `processes` whose command line names the VM (its runtime
/// directory `<vms>/<id>`, or `--id <id>` for a jailed Firecracker): one left behind, or one whose
/// start a crash interrupted before it was recorded.
fn kill_strays(processes: &[VmProcess], runtime_dir: &std::path::Path) {
    let Some(needle) = runtime_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
    else {
        return;
    };
    for p in processes.iter().filter(|p| p.cmdline.contains(&needle)) {
        tracing::warn!(pid = p.pid, dir = %needle, "killing a stray VM process");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid as i32), Signal::SIGKILL);
    }
}
