//! The supervisor of a VM: one task that owns the VM's processes, notices the VMM's exit at once
//! (child reaping, or a pidfd for a re-adopted process), stops the vsock backend with it, caps the
//! console log while the VM runs, and records how the VM ended.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nexus_lib::api::{Vm, VmState};
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::{CONSOLE_CAP_INTERVAL, CONSOLE_TAIL_BYTES, Lifecycle, Live, Outcome, TERM_GRACE};
use crate::agent::AgentClient;
use crate::store::now_ms;
use crate::store::runtime::{self, RuntimeRow};
use crate::vm::VmError;
use crate::vm::process::{Watch, start_ticks};
use crate::vmm::{Launched, ProcessRole, VmSpec, cap_console_log};
use crate::vmm::{cap_firecracker_logs, failure_detail, release_jail};

impl Lifecycle {
    /// Records the processes, and starts the supervisor task that owns them.
    pub(super) async fn supervise(
        &self,
        vm: &Vm,
        boot_id: i64,
        (vmm, helper): (Watch, Option<Watch>),
        spec: &VmSpec,
        accel: &'static str,
        kind: &'static str,
    ) -> Result<Live, VmError> {
        let row = RuntimeRow {
            vm_id: vm.id,
            boot_id,
            backend: kind.into(),
            accel: accel.into(),
            runtime_dir: spec.runtime_dir.display().to_string(),
            vmm_pid: vmm.pid().unwrap_or(0),
            vmm_start_ticks: vmm.pid().and_then(start_ticks).unwrap_or(0),
            helper_pid: helper.as_ref().and_then(Watch::pid),
            helper_start_ticks: helper.as_ref().and_then(Watch::pid).and_then(start_ticks),
        };
        self.inner
            .store
            .call(move |c| runtime::put_runtime(c, &row))
            .await?;
        Ok(self.spawn_supervisor(
            vm,
            boot_id,
            vmm,
            helper,
            spec.vsock_uds.clone(),
            spec.console_log.clone(),
        ))
    }

    pub(super) fn spawn_supervisor(
        &self,
        vm: &Vm,
        boot_id: i64,
        vmm: Watch,
        helper: Option<Watch>,
        vsock_uds: PathBuf,
        console_log: PathBuf,
    ) -> Live {
        let (signals, sig_rx) = mpsc::unbounded_channel();
        let (exited_tx, exited) = watch::channel(false);
        let live = Live {
            boot_id,
            agent: AgentClient::new(vsock_uds),
            outcome: Arc::new(Outcome::default()),
            signals,
            exited,
            console_log,
        };
        self.set_live(vm.id, live.clone());
        let this = self.clone();
        let (id, name, outcome, log) = (
            vm.id,
            vm.name.clone(),
            live.outcome.clone(),
            live.console_log.clone(),
        );
        tokio::spawn(async move {
            let how = this.watch_until_exit(vmm, sig_rx, &log).await;
            if let Some(h) = helper {
                stop_helper(h).await;
            }
            // Firecracker's jail (chroot, mounts), when it had one.
            if let Some(dir) = log.parent().map(Path::to_path_buf) {
                let _ = tokio::task::spawn_blocking(move || release_jail(&dir)).await;
            }
            // Whatever else the VM's uid started in its cgroup goes with it.
            this.release_host(id).await;
            this.clear_live(id, boot_id);
            if let Err(e) = this
                .record_exit(id, &name, boot_id, &how, &outcome, &log)
                .await
            {
                tracing::error!(vm = %name, error = %nexus_lib::error::error_chain(&e), "cannot record VM exit");
            }
            let _ = exited_tx.send(true);
        });
        live
    }

    async fn watch_until_exit(
        &self,
        mut vmm: Watch,
        mut signals: mpsc::UnboundedReceiver<Signal>,
        log: &Path,
    ) -> String {
        let max = self.inner.cfg.console_max_bytes;
        let mut cap = tokio::time::interval(CONSOLE_CAP_INTERVAL);
        cap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                how = vmm.wait() => return how,
                Some(sig) = signals.recv() => vmm.signal(sig),
                _ = cap.tick() => {
                    let log = log.to_path_buf();
                    let _ = tokio::task::spawn_blocking(move || {
                        let _ = cap_console_log(&log, max);
                        // Firecracker's own log, stderr and metrics (nothing there for QEMU).
                        log.parent().map(|dir| cap_firecracker_logs(dir, max))
                    })
                    .await;
                }
            }
        }
    }

    async fn record_exit(
        &self,
        id: Uuid,
        name: &str,
        boot_id: i64,
        how: &str,
        outcome: &Outcome,
        log: &Path,
    ) -> Result<(), VmError> {
        let exit = how.to_owned();
        let backend = self
            .inner
            .store
            .call(move |c| {
                let backend = runtime::get_runtime(c, id)?
                    .filter(|row| row.boot_id == boot_id)
                    .map(|row| row.backend);
                runtime::end_boot(c, boot_id, now_ms(), &exit)?;
                runtime::delete_runtime_of_boot(c, id, boot_id)?;
                Ok(backend)
            })
            .await?;
        let current = self.inner.vms.get(&id.to_string()).await?.state;
        let tail = match current {
            VmState::Stopping => String::new(),
            _ => read_console_tail(log).await,
        };
        let default = || match current {
            VmState::Stopping => (VmState::Stopped, format!("VMM {how}")),
            VmState::Starting => (
                VmState::Failed,
                format!("VMM {how} during boot; console: {tail}"),
            ),
            _ => (
                VmState::Crashed,
                format!("VMM {how} unasked; console: {tail}"),
            ),
        };
        // An outcome decided by a stop or a failed boot wins when the state allows it; otherwise
        // the state decides, so a live state is never left behind without a process.
        let (to, reason) = match outcome.take() {
            Some((to, reason)) if crate::vm::state::can_transition(current, to) => {
                (to, format!("{reason} (VMM {how})"))
            }
            _ => default(),
        };
        if !crate::vm::state::can_transition(current, to) {
            // Not live (already recorded by someone else): nothing to do.
            return Ok(());
        }
        // Firecracker's own error (stderr, log) of this boot, for a VM that failed or crashed.
        let reason = match (to, backend.as_deref(), log.parent()) {
            (VmState::Failed | VmState::Crashed, Some("firecracker"), Some(dir)) => {
                let dir = dir.to_owned();
                let detail = tokio::task::spawn_blocking(move || failure_detail(&dir, boot_id))
                    .await
                    .unwrap_or_default();
                match detail {
                    detail if detail.is_empty() => reason,
                    detail => format!("{reason}; firecracker {detail}"),
                }
            }
            _ => reason,
        };
        if to == VmState::Crashed {
            tracing::warn!(vm = %name, %reason, "VM crashed");
        } else {
            tracing::info!(vm = %name, state = %to, "VM ended");
        }
        self.inner
            .vms
            .transition(&id.to_string(), to, &reason, "record exit")
            .await
            .map(drop)
    }
}

pub(super) fn launched_watches(launched: Launched) -> (Watch, Option<Watch>) {
    let mut vmm = None;
    let mut helper = None;
    for p in launched.processes {
        match p.role {
            ProcessRole::Vmm => vmm = Some(Watch::Child(p.child)),
            ProcessRole::VsockBackend => helper = Some(Watch::Child(p.child)),
        }
    }
    // A backend always launches its VMM; without one, watch the helper as the VM.
    match (vmm, helper) {
        (Some(v), h) => (v, h),
        (None, Some(h)) => (h, None),
        (None, None) => unreachable!("a launched VM has at least one process"),
    }
}

async fn stop_helper(mut helper: Watch) {
    helper.signal(Signal::SIGTERM);
    if tokio::time::timeout(TERM_GRACE, helper.wait())
        .await
        .is_err()
    {
        helper.signal(Signal::SIGKILL);
        let _ = tokio::time::timeout(Duration::from_secs(5), helper.wait()).await;
    }
}

/// [`console_tail`], read on a blocking thread.
pub(super) async fn read_console_tail(log: &Path) -> String {
    let log = log.to_owned();
    tokio::task::spawn_blocking(move || console_tail(&log))
        .await
        .unwrap_or_else(|_| "(console unreadable)".into())
}

/// The newest lines of the console, cleaned, for error reasons.
pub fn console_tail(log: &Path) -> String {
    let tail = crate::sanitize::file_tail(log, CONSOLE_TAIL_BYTES);
    let tail = tail.trim();
    if tail.is_empty() {
        "(no console output)".into()
    } else {
        tail.to_owned()
    }
}
