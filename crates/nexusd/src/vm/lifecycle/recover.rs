//! Recovery at start-up: VMs that were live when the last daemon stopped are re-adopted when
//! their VMM still runs (pid, start time and command line checked), or recorded as ended.

use std::path::PathBuf;
use std::time::Duration;

use nexus_lib::api::{Vm, VmState};
use nix::sys::signal::Signal;

use super::Lifecycle;
use super::supervisor::console_tail;
use crate::agent::AgentClient;
use crate::store::now_ms;
use crate::store::runtime::{self, RuntimeRow};
use crate::vm::VmError;
use crate::vm::process::{Watch, is_same_process};

impl Lifecycle {
    /// At start-up: re-adopts the processes of VMs that were live when the last daemon
    /// stopped, and records the end of those whose VMM is gone.
    pub async fn recover(&self) -> Result<(), VmError> {
        for vm in self.inner.vms.list(None).await? {
            if !matches!(
                vm.state,
                VmState::Starting | VmState::Running | VmState::Stopping
            ) {
                continue;
            }
            let id = vm.id;
            let row = self
                .inner
                .store
                .call(move |c| runtime::get_runtime(c, id))
                .await?;
            let alive = row
                .as_ref()
                .is_some_and(|r| is_same_process(r.vmm_pid, r.vmm_start_ticks, &r.runtime_dir));
            match row {
                Some(row) if alive => self.adopt(&vm, row).await?,
                row => self.record_lost(&vm, row).await?,
            }
        }
        Ok(())
    }

    async fn adopt(&self, vm: &Vm, row: RuntimeRow) -> Result<(), VmError> {
        let vmm = Watch::adopt(row.vmm_pid).map_err(|e| VmError::Adopt {
            vm: vm.name.clone(),
            source: e,
        })?;
        let helper = match (row.helper_pid, row.helper_start_ticks) {
            (Some(pid), Some(ticks)) if is_same_process(pid, ticks, &row.runtime_dir) => {
                Watch::adopt(pid).ok()
            }
            _ => None,
        };
        let dir = PathBuf::from(&row.runtime_dir);
        let live = self.spawn_supervisor(
            vm,
            row.boot_id,
            vmm,
            helper,
            dir.join("vsock.sock"),
            dir.join("console.log"),
        );
        tracing::info!(vm = %vm.name, pid = row.vmm_pid, state = %vm.state, "re-adopted running VM");
        let this = self.clone();
        let vm = vm.clone();
        tokio::spawn(async move {
            match vm.state {
                VmState::Stopping => this.shut_down(&vm.name, &live).await,
                state => {
                    let wait = if state == VmState::Starting {
                        this.inner.cfg.boot_timeout
                    } else {
                        Duration::from_secs(10)
                    };
                    match AgentClient::connect(live.agent.socket_path().to_owned(), wait).await {
                        Ok((agent, _)) => {
                            let mut l = live.clone();
                            l.agent = agent;
                            if this.live(vm.id).is_some() {
                                this.set_live(vm.id, Some(l));
                            }
                            if state == VmState::Starting {
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
                        Err(e) => {
                            tracing::warn!(vm = %vm.name, error = %e, "re-adopted VM's agent does not answer")
                        }
                    }
                }
            }
        });
        Ok(())
    }

    async fn record_lost(&self, vm: &Vm, row: Option<RuntimeRow>) -> Result<(), VmError> {
        if let Some(r) = &row
            && let (Some(pid), Some(ticks)) = (r.helper_pid, r.helper_start_ticks)
            && is_same_process(pid, ticks, &r.runtime_dir)
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let id = vm.id;
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
        let reason = format!(
            "VMM exited while nexusd was not running; console: {}",
            console_tail(&self.console_log(id))
        );
        tracing::warn!(vm = %vm.name, state = %to, "VM's VMM is gone");
        self.inner
            .vms
            .transition(&id.to_string(), to, &reason, "recover")
            .await
            .map(drop)
    }
}
