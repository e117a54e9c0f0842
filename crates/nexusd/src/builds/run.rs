//! Running one build: wait for a slot, boot the build VM from a drive of the base, copy the
//! files in and run each step through the agent (output into the build's log), write the
//! image's start configuration, stop the VM, publish its root drive as the image. Whatever
//! happens, the build VM and its drive are deleted before the final record is written, so a
//! client that sees a build over (cancel included) finds nothing of it left but its image.

use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use nexus_lib::agent::{ExecEvent, ExecRequest};
use nexus_lib::api::template::{
    DEFAULT_STEP_TIMEOUT_SECS, ImageStartConfig, START_CONFIG_PATH, TemplateSpec,
};
use nexus_lib::api::{BuildState, BuildStep, CreateVm, EgressPolicy, NetworkMode, UpdateVmNetwork};
use uuid::Uuid;

use super::inputs::{FileInput, Inputs};
use super::{BuildService, Live, remove_dir, vm_name};
use crate::agent::AgentClient;
use crate::sanitize::Escaped;
use crate::store::builds::{self, Finish};
use crate::vm::VmError;
use crate::vm::lifecycle::Lifecycle;

/// Memory of a build VM (MiB).
const BUILD_VM_MEMORY_MIB: u32 = 512;

/// What a queued build will do, with its inputs fixed.
pub(super) struct Job {
    pub id: Uuid,
    pub template: String,
    pub spec: TemplateSpec,
    pub base: Uuid,
    pub inputs: Inputs,
    pub scratch: std::path::PathBuf,
    pub image_name: String,
}

/// Why a build did not succeed.
enum Stop {
    Failed(String),
    Cancelled,
}

/// The state of a running build that outlives its (cancellable) work future.
struct Ctx<'a> {
    svc: &'a BuildService,
    job: &'a Job,
    live: &'a Live,
    steps: Mutex<Vec<BuildStep>>,
    vm: Mutex<Option<Uuid>>,
}

impl BuildService {
    pub(super) async fn run_job(self, job: Job, live: Live) {
        let started = Instant::now();
        let ctx = Ctx {
            svc: &self,
            job: &job,
            live: &live,
            steps: Mutex::default(),
            vm: Mutex::default(),
        };
        let outcome = ctx.run().await;
        let vm = *ctx.vm.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(vm) = vm {
            remove_vm(&self.inner.lifecycle, &vm.to_string()).await;
        }
        let (state, error, image) = match outcome {
            Ok(image) => (BuildState::Succeeded, None, Some(image)),
            Err(Stop::Cancelled) => (BuildState::Cancelled, Some("cancelled".to_owned()), None),
            Err(Stop::Failed(e)) => (BuildState::Failed, Some(e), None),
        };
        ctx.line(&format!(
            "==> build {state} after {:.1} s{}",
            started.elapsed().as_secs_f64(),
            error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
        let steps = ctx.steps.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let log = live.log.lock().unwrap_or_else(|e| e.into_inner()).render();
        let id = job.id;
        let saved = self
            .inner
            .store
            .call(move |c| {
                builds::finish(
                    c,
                    id,
                    &Finish {
                        state,
                        error: error.as_deref(),
                        image_id: image,
                        steps: &steps,
                        log: &log,
                    },
                )
            })
            .await;
        if let Err(e) = saved {
            tracing::error!(build = %id, error = %Escaped(nexus_lib::error::error_chain(&e)), "cannot record the end of a build");
        }
        tracing::info!(build = %id, %state, "build over");
        // Before the build counts as over for its clients, so they find the older images gone.
        if state == BuildState::Succeeded {
            self.prune_images(&job.template).await;
        }
        self.lock_live().remove(&id);
        live.done.cancel();
        remove_dir(job.scratch.clone()).await;
    }
}

impl Ctx<'_> {
    fn line(&self, text: &str) {
        self.live
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .line(text);
    }

    fn vm_id(&self) -> Uuid {
        self.vm
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or_default()
    }

    fn append(&self, data: &[u8]) {
        self.live
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(data);
    }

    fn record(&self, name: &str, started: Instant, ok: bool) {
        self.steps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(BuildStep {
                name: name.to_owned(),
                duration_ms: started.elapsed().as_millis() as u64,
                ok,
            });
    }

    async fn save_progress(&self) {
        let steps = self.steps.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let log = self
            .live
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .render();
        let id = self.job.id;
        let _ = self
            .svc
            .inner
            .store
            .call(move |c| builds::save_progress(c, id, &steps, &log))
            .await;
    }

    /// The whole build; the cancellable part is raced against the build's cancel token.
    async fn run(&self) -> Result<Uuid, Stop> {
        let cancel = self.live.cancel.clone();
        let slots = self.svc.inner.slots.clone();
        self.line("==> waiting for a build slot");
        let _permit = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(Stop::Cancelled),
            p = slots.acquire_owned() => p.map_err(|_| Stop::Failed("the daemon is stopping".into()))?,
        };
        let id = self.job.id;
        let running = self
            .svc
            .inner
            .store
            .call(move |c| builds::set_running(c, id))
            .await
            .map_err(|e| Stop::Failed(e.to_string()))?;
        if !running {
            return Err(Stop::Cancelled);
        }
        // Not cancellable: once asked for, the VM's id is recorded, so clean-up finds it.
        let t = Instant::now();
        let created = self.create_vm().await;
        self.step_result("create", t, created)?;
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(Stop::Cancelled),
            r = self.in_vm() => r?,
        }
        if cancel.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        let vm = self.vm_id();
        self.import(vm).await
    }

    /// Steps `boot`, `files`, `run[N]`, `config`, `export`.
    async fn in_vm(&self) -> Result<(), Stop> {
        let lifecycle = &self.svc.inner.lifecycle;
        let t = Instant::now();
        let vm = self.vm_id().to_string();
        let booted = async {
            lifecycle.start_plain(&vm).await?;
            let (_, agent) = lifecycle.agent(&vm).await?;
            Ok::<_, VmError>(agent)
        }
        .await;
        let agent = self.step_result("boot", t, booted.map_err(|e| vm_failure("boot", &e)))?;
        self.save_progress().await;

        let t = Instant::now();
        let copied = self.copy_files(&agent).await;
        self.step_result("files", t, copied)?;

        // The policy the build VM has now: it was created with deny-all when it has a network.
        let networked = self.job.spec.needs_network();
        let mut egress = EgressPolicy::DenyAll;
        for (i, step) in self.job.spec.run.iter().enumerate() {
            let label = format!("run[{i}]");
            let t = Instant::now();
            if networked {
                let wanted = step.egress();
                self.line(&format!("==> {label}: network {}", wanted.summary()));
                if wanted != egress {
                    let set = self.set_egress(&vm, wanted.clone()).await;
                    self.step_result(&label, t, set)?;
                    egress = wanted;
                }
            }
            self.line(&format!("==> {label}: {}", step.command));
            let req = ExecRequest {
                argv: vec!["/bin/sh".into(), "-c".into(), step.command.clone()],
                env: step.env.clone(),
                cwd: step.workdir.clone(),
                stdin: None,
                timeout_ms: Some(step.timeout_secs.unwrap_or(DEFAULT_STEP_TIMEOUT_SECS) * 1000),
                keep_stdin: false,
            };
            let done = self.exec_logged(&agent, &req, true).await;
            let done = done.and_then(|code| match code {
                0 => Ok(()),
                code => Err(format!("step {label} failed: {}", exit_text(code))),
            });
            self.step_result(&label, t, done)?;
            self.save_progress().await;
        }

        let t = Instant::now();
        let configured = self.write_start_config(&agent).await;
        self.step_result("config", t, configured)?;

        let t = Instant::now();
        self.line("==> export: sync and stop the build VM");
        let _ = self
            .exec_logged(&agent, &ExecRequest::new(["sync"]), false)
            .await;
        let vm = self.vm_id();
        let stopped = lifecycle
            .stop(&vm.to_string())
            .await
            .map(|_| ())
            .map_err(|e| vm_failure("export", &e));
        self.step_result("export", t, stopped)?;
        Ok(())
    }

    /// Creates the build VM from a drive of the base and records it with the build.
    async fn create_vm(&self) -> Result<(), String> {
        let name = vm_name(self.job.id);
        let needs_network = self.job.spec.needs_network();
        let network = if needs_network {
            NetworkMode::Nat
        } else {
            NetworkMode::None
        };
        self.line(&format!(
            "==> boot: build VM {name} from image {}, network {}",
            self.job.base,
            network.as_str()
        ));
        let vm = self
            .svc
            .inner
            .lifecycle
            .vms()
            .create(CreateVm {
                name,
                memory_mib: Some(BUILD_VM_MEMORY_MIB),
                image: Some(self.job.base.to_string()),
                disk_size: self
                    .job
                    .spec
                    .size_bytes()
                    .ok()
                    .flatten()
                    .map(nexus_lib::size::ByteSize),
                network: Some(network),
                // Each step sets its own policy before it runs.
                egress: needs_network.then_some(EgressPolicy::DenyAll),
                ..CreateVm::default()
            })
            .await
            .map_err(|e| vm_failure("boot", &e))?;
        *self.vm.lock().unwrap_or_else(|e| e.into_inner()) = Some(vm.id);
        let (id, vm_id) = (self.job.id, vm.id);
        self.svc
            .inner
            .store
            .call(move |c| builds::set_vm(c, id, Some(vm_id)))
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Replaces the build VM's egress policy (at once: it runs).
    async fn set_egress(&self, vm: &str, egress: EgressPolicy) -> Result<(), String> {
        self.svc
            .inner
            .lifecycle
            .vms()
            .set_network(vm, UpdateVmNetwork { egress })
            .await
            .map(|_| ())
            .map_err(|e| vm_failure("network", &e))
    }

    /// Records step `name` as done or failed, turning a failure into the build's.
    fn step_result<T>(&self, name: &str, t: Instant, r: Result<T, String>) -> Result<T, Stop> {
        self.record(name, t, r.is_ok());
        r.map_err(|e| {
            self.line(&format!("==> {name} failed: {e}"));
            Stop::Failed(e)
        })
    }

    async fn copy_files(&self, agent: &AgentClient) -> Result<(), String> {
        for (spec, input) in self.job.spec.files.iter().zip(&self.job.inputs.files) {
            let mode = spec.mode_bits()?;
            self.line(&format!("==> files: {} (mode {mode:04o})", spec.dest));
            let parent = std::path::Path::new(&spec.dest)
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|| "/".into());
            self.must(agent, vec!["mkdir".into(), "-p".into(), parent])
                .await?;
            match input {
                FileInput::Inline(bytes) => {
                    let body =
                        futures_util::stream::once(std::future::ready(Ok::<_, std::io::Error>(
                            Bytes::from(bytes.clone()),
                        )));
                    agent.write_file(&spec.dest, mode, body).await
                }
                FileInput::Copied(path) => {
                    let file = tokio::fs::File::open(path)
                        .await
                        .map_err(|e| format!("cannot open the copy of {}: {e}", spec.dest))?;
                    let body = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
                    agent.write_file(&spec.dest, mode, body).await
                }
            }
            .map_err(|e| format!("cannot write {}: {e}", spec.dest))?;
            // The agent's file creation is subject to its umask: set the mode exactly.
            self.must(
                agent,
                vec!["chmod".into(), format!("{mode:o}"), spec.dest.clone()],
            )
            .await?;
            if let Some(owner) = &spec.owner {
                self.must(
                    agent,
                    vec!["chown".into(), owner.clone(), spec.dest.clone()],
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Writes the image's `start`/`ready` configuration for the agent, when the template has
    /// one.
    async fn write_start_config(&self, agent: &AgentClient) -> Result<(), String> {
        let spec = &self.job.spec;
        if spec.start.is_none() && spec.ready.is_none() {
            return Ok(());
        }
        self.line(&format!("==> config: {START_CONFIG_PATH}"));
        let config = ImageStartConfig {
            start: spec.start.clone(),
            ready: spec.ready.clone(),
        };
        let json = serde_json::to_vec_pretty(&config).map_err(|e| e.to_string())?;
        self.must(
            agent,
            vec!["mkdir".into(), "-p".into(), "/etc/nexus".into()],
        )
        .await?;
        let body = futures_util::stream::once(std::future::ready(Ok::<_, std::io::Error>(
            Bytes::from(json),
        )));
        agent
            .write_file(START_CONFIG_PATH, 0o644, body)
            .await
            .map_err(|e| format!("cannot write {START_CONFIG_PATH}: {e}"))?;
        Ok(())
    }

    /// Runs `argv`, which must exit 0.
    async fn must(&self, agent: &AgentClient, argv: Vec<String>) -> Result<(), String> {
        let shown = argv.join(" ");
        let mut req = ExecRequest::new(argv);
        req.timeout_ms = Some(60_000);
        match self.exec_logged(agent, &req, true).await? {
            0 => Ok(()),
            code => Err(format!("`{shown}` failed: {}", exit_text(code))),
        }
    }

    /// Runs a command with its output appended to the log (when `log`); its exit code, or -1
    /// for a signal or a timeout.
    async fn exec_logged(
        &self,
        agent: &AgentClient,
        req: &ExecRequest,
        log: bool,
    ) -> Result<i32, String> {
        let mut events = agent.exec(req).await.map_err(|e| e.to_string())?;
        while let Some(event) = events.next().await {
            match event.map_err(|e| e.to_string())? {
                ExecEvent::Stdout { data } | ExecEvent::Stderr { data } => {
                    if log {
                        self.append(&data);
                    }
                }
                ExecEvent::Exit {
                    code,
                    signal,
                    timed_out,
                } => {
                    if timed_out {
                        return Err("timed out".into());
                    }
                    return Ok(code.unwrap_or_else(|| -signal.unwrap_or(1)));
                }
                ExecEvent::Error { message } => return Err(message),
            }
        }
        Err("the agent ended the command's stream without its exit".into())
    }

    /// Step `import`: the stopped VM's root drive published as the build's image.
    async fn import(&self, vm: Uuid) -> Result<Uuid, Stop> {
        let t = Instant::now();
        self.line(&format!("==> import: image {}", self.job.image_name));
        let published = async {
            let drives = self
                .svc
                .inner
                .store
                .call(move |c| crate::store::drives::attached_to(c, vm))
                .await
                .map_err(|e| e.to_string())?;
            let root = drives
                .iter()
                .find(|d| d.is_root)
                .ok_or("the build VM has no root drive")?;
            self.svc
                .inner
                .images
                .publish_build(root.id, self.job.image_name.clone(), self.job.id)
                .await
                .map_err(|e| nexus_lib::error::error_chain(&e))
        }
        .await;
        let image = self.step_result("import", t, published)?;
        Ok(image.id)
    }
}

fn exit_text(code: i32) -> String {
    if code < 0 {
        format!("killed by signal {}", -code)
    } else {
        format!("exit code {code}")
    }
}

fn vm_failure(phase: &str, e: &VmError) -> String {
    format!(
        "{phase}: {}",
        crate::sanitize::clean(nexus_lib::error::error_chain(e), 4000)
    )
}

/// Stops (when live) and deletes a build VM with its drives; what cannot be removed is logged.
pub(super) async fn remove_vm(lifecycle: &Lifecycle, vm: &str) {
    match lifecycle.vms().get(vm).await {
        Err(VmError::NotFound(_)) => return,
        Err(e) => {
            tracing::warn!(vm, error = %Escaped(nexus_lib::error::error_chain(&e)), "cannot look up a build VM");
            return;
        }
        Ok(found) if crate::vm::state::can_delete(found.state) => {}
        Ok(_) => {
            if let Err(e) = lifecycle.stop(vm).await {
                tracing::warn!(vm, error = %Escaped(nexus_lib::error::error_chain(&e)), "cannot stop a build VM");
            }
        }
    }
    if let Err(e) = lifecycle.delete(vm, false).await {
        tracing::warn!(vm, error = %Escaped(nexus_lib::error::error_chain(&e)), "cannot delete a build VM");
    }
}
