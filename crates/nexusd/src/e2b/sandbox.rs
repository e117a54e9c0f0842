//! E2B sandboxes as Nexus VMs: creating one (a VM from the template's image, booted, in the
//! API key's scope, with a row in `e2b_sandboxes`), finding the ones a key may see, ending one
//! (stopped, deleted, the reason recorded in `e2b_sandbox_ends`), and the expiry task that ends
//! each sandbox at its `end_at` (read from the database, so expiry survives a daemon restart).
//!
//! Also the envd side's entry: [`resolve_envd`] turns the `E2b-Sandbox-Id` header into the
//! sandbox's agent, after checking the caller's access token or API key.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use nexus_lib::api::{CreateVm, Vm, VmState};
use rand::RngCore;
use subtle::ConstantTimeEq;
use tokio::sync::{Notify, OnceCell};
use uuid::Uuid;

use super::connect::{Code, ConnectError};
use super::{E2bError, E2bState};
use crate::agent::AgentClient;
use crate::api::AppState;
use crate::store::e2b::{self as rows, SandboxRow};
use crate::store::now_ms;
use crate::tokens::Scope;

/// Longest lifetime a sandbox may be given at once (E2B's own ceiling is a day on paid plans).
pub const MAX_TIMEOUT_SECS: i64 = 7 * 24 * 3600;
/// Lifetime when the request names none (the SDK's default).
pub const DEFAULT_TIMEOUT_SECS: i64 = 300;
/// The SDK's default template, mapped to Nexus's built-in image.
const DEFAULT_TEMPLATE: &str = "base";
const DEFAULT_IMAGE: &str = "default";
/// Bounds on what a sandbox carries.
pub const MAX_METADATA: usize = 64;
pub const MAX_ENV_VARS: usize = 256;
const MAX_KEY_CHARS: usize = 256;
const MAX_VALUE_CHARS: usize = 4096;
/// How often the expiry task looks even when nothing woke it.
const EXPIRY_POLL: Duration = Duration::from_secs(5);
/// When ending a sandbox failed, how long until the expiry task tries again.
const RETRY_END: Duration = Duration::from_secs(60);

/// Sandboxes: the rows, and per-VM state of the envd side that lives only in memory.
pub struct SandboxService {
    app: AppState,
    runtimes: Mutex<HashMap<Uuid, Arc<Runtime>>>,
    wake: Arc<Notify>,
}

/// What the envd side keeps for one running sandbox.
#[derive(Default)]
pub(crate) struct Runtime {
    /// The shell that stands in for `/bin/bash` (itself when the image has it).
    shell: OnceCell<String>,
    /// What each process started through envd was asked to run, and its tag, by pid.
    pub procs: Mutex<HashMap<u32, super::process::Started>>,
    /// PTY processes, by the pid given to the SDK.
    pub ptys: super::pty::Ptys,
    /// Directory watchers (`WatchDir` streams and `CreateWatcher`'s).
    pub watchers: super::watcher::Watchers,
}

/// The sandbox an envd request is for (an extension the handlers take).
#[derive(Clone)]
pub(crate) struct EnvdSandbox {
    pub row: Arc<SandboxRow>,
    pub agent: AgentClient,
    pub rt: Arc<Runtime>,
}

impl EnvdSandbox {
    /// The program to run for `cmd`: `/bin/bash` becomes `/bin/sh` on images without bash.
    pub async fn program(&self, cmd: &str) -> String {
        if cmd != "/bin/bash" {
            return cmd.to_string();
        }
        self.rt
            .shell
            .get_or_init(|| async {
                match self.agent.stat("/bin/bash").await {
                    Ok(_) => "/bin/bash".to_string(),
                    Err(_) => "/bin/sh".to_string(),
                }
            })
            .await
            .clone()
    }
}

/// The fields of a create request, validated.
pub struct NewSandbox {
    pub template_id: String,
    pub timeout_secs: i64,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
}

impl SandboxService {
    pub fn new(app: AppState) -> Self {
        Self {
            app,
            runtimes: Mutex::new(HashMap::new()),
            wake: Arc::new(Notify::new()),
        }
    }

    fn runtime(&self, vm: Uuid) -> Arc<Runtime> {
        let mut map = self.runtimes.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(vm).or_default().clone()
    }

    fn forget(&self, vm: Uuid) {
        self.runtimes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&vm);
    }

    /// Creates and boots a sandbox; it joins the scope of the key that asked.
    pub async fn create(
        &self,
        scope: &Scope,
        req: NewSandbox,
    ) -> Result<(SandboxRow, Vm), E2bError> {
        if !scope.lifecycle() {
            return Err(E2bError::new(
                axum::http::StatusCode::FORBIDDEN,
                "this API key may not create sandboxes (make one with `nexusctl token create --lifecycle`)",
            ));
        }
        let image = if req.template_id == DEFAULT_TEMPLATE {
            DEFAULT_IMAGE.to_string()
        } else {
            nexus_lib::names::validate_name(&req.template_id).map_err(|e| {
                E2bError::bad_request(format!("templateID must name a Nexus image: {e}"))
            })?;
            req.template_id.clone()
        };
        let name = new_id();
        let vm = self
            .app
            .create_vm(
                CreateVm {
                    name: name.clone(),
                    image: Some(image),
                    ..CreateVm::default()
                },
                scope,
            )
            .await?;
        let now = now_ms();
        let row = SandboxRow {
            vm_id: vm.id,
            sandbox_id: name.clone(),
            template_id: req.template_id,
            metadata: req.metadata,
            env_vars: req.env_vars,
            access_token: new_secret(),
            started_at_ms: now,
            end_at_ms: now + req.timeout_secs * 1000,
        };
        let insert = row.clone();
        if let Err(e) = self.app.store.call(move |c| rows::insert(c, &insert)).await {
            let _ = self.app.lifecycle.delete(&name, false).await;
            return Err(e.into());
        }
        self.wake.notify_one();
        match self.app.lifecycle.start(&name).await {
            Ok(vm) => Ok((row, vm)),
            Err(e) => {
                let err = E2bError::from(e);
                self.end(&row, &format!("the VM failed to boot: {}", err.message))
                    .await;
                Err(err)
            }
        }
    }

    /// A sandbox the scope may see, with its VM.
    pub async fn get(&self, scope: &Scope, id: &str) -> Result<(SandboxRow, Vm), E2bError> {
        let key = id.to_string();
        let row = self.app.store.call(move |c| rows::get(c, &key)).await?;
        let missing = || E2bError::not_found(format!("sandbox {id} not found"));
        let row = row.filter(|r| scope.sees(r.vm_id)).ok_or_else(missing)?;
        let vm = self
            .app
            .vms
            .get(&row.vm_id.to_string())
            .await
            .map_err(|_| missing())?;
        Ok((row, vm))
    }

    /// Every sandbox the scope may see, oldest first, with its VM.
    pub async fn list(&self, scope: &Scope) -> Result<Vec<(SandboxRow, Vm)>, E2bError> {
        let all = self.app.store.call(rows::list).await?;
        let mut out = Vec::new();
        for row in all.into_iter().filter(|r| scope.sees(r.vm_id)) {
            if let Ok(vm) = self.app.vms.get(&row.vm_id.to_string()).await {
                out.push((row, vm));
            }
        }
        Ok(out)
    }

    /// Sets the sandbox to expire `secs` from now.
    pub async fn set_timeout(&self, sandbox_id: &str, secs: i64) -> Result<(), E2bError> {
        let key = sandbox_id.to_string();
        let end = now_ms() + secs * 1000;
        let found = self
            .app
            .store
            .call(move |c| rows::set_end(c, &key, end))
            .await?;
        if !found {
            return Err(E2bError::not_found(format!(
                "sandbox {sandbox_id} not found"
            )));
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Ends a sandbox: records why, stops its VM and deletes it with its drives.
    pub async fn end(&self, row: &SandboxRow, reason: &str) {
        tracing::info!(sandbox = %row.sandbox_id, vm = %row.vm_id, reason, "ending E2B sandbox");
        let (sandbox, vm, why) = (row.sandbox_id.clone(), row.vm_id, reason.to_string());
        if let Err(e) = self
            .app
            .store
            .call(move |c| rows::record_end(c, &sandbox, vm, &why, now_ms()))
            .await
        {
            tracing::warn!(error = %e, "cannot record why an E2B sandbox ended");
        }
        let key = row.vm_id.to_string();
        if let Ok(vm) = self.app.vms.get(&key).await
            && matches!(vm.state, VmState::Starting | VmState::Running)
            && let Err(e) = self.app.lifecycle.stop(&key).await
        {
            tracing::warn!(error = %e, vm = %key, "stopping an ending E2B sandbox failed");
        }
        if let Err(e) = self.app.lifecycle.delete(&key, false).await {
            tracing::warn!(error = %e, vm = %key, "deleting an ending E2B sandbox failed; retrying in a minute");
            // The row stays (it goes with the VM): look again later rather than at every poll.
            let (sandbox, retry) = (
                row.sandbox_id.clone(),
                now_ms() + RETRY_END.as_millis() as i64,
            );
            let _ = self
                .app
                .store
                .call(move |c| rows::set_end(c, &sandbox, retry))
                .await;
        }
        self.forget(row.vm_id);
    }

    /// Ends every sandbox whose time is up; returns when to look next.
    async fn expire_due(&self) -> Duration {
        let now = now_ms();
        match self.app.store.call(move |c| rows::due(c, now)).await {
            Ok(due) => {
                for row in due {
                    let reason = format!(
                        "timeout: the sandbox expired at {}",
                        crate::store::rfc3339_ms(row.end_at_ms)
                    );
                    self.end(&row, &reason).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read E2B sandbox expiries"),
        }
        match self.app.store.call(rows::next_end).await {
            Ok(Some(next)) => Duration::from_millis(
                (next - now_ms()).clamp(0, EXPIRY_POLL.as_millis() as i64) as u64,
            ),
            _ => EXPIRY_POLL,
        }
    }
}

/// Runs the expiry task until `shutdown`.
pub fn spawn_expiry(
    service: Arc<SandboxService>,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let wait = service.expire_due().await;
            let wake = service.wake.clone();
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = wake.notified() => {}
            }
        }
    })
}

/// A fresh sandbox id, also the VM's name: `e2b-` and 12 hex digits.
fn new_id() -> String {
    let mut bytes = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("e2b-{}", hex(&bytes))
}

/// A fresh envd access token.
fn new_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("nxe_{}", hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a metadata or environment map against the bounds; `field` names it in errors.
pub fn validate_map(
    field: &str,
    map: &BTreeMap<String, String>,
    max: usize,
) -> Result<(), E2bError> {
    if map.len() > max {
        return Err(E2bError::bad_request(format!(
            "{field}: at most {max} entries"
        )));
    }
    for (k, v) in map {
        if k.is_empty() || k.chars().count() > MAX_KEY_CHARS || v.chars().count() > MAX_VALUE_CHARS
        {
            return Err(E2bError::bad_request(format!(
                "{field}: keys must be 1–{MAX_KEY_CHARS} characters and values at most {MAX_VALUE_CHARS}"
            )));
        }
        if k.contains('\0') || v.contains('\0') {
            return Err(E2bError::bad_request(format!(
                "{field}: NUL bytes are not allowed"
            )));
        }
    }
    Ok(())
}

/// The envd side's entry: finds the sandbox named by `E2b-Sandbox-Id`, checks the caller may
/// use it (its access token, or an API key whose scope holds it) and that it runs, and hands
/// its agent to the handler.
pub(super) async fn resolve_envd(
    State(state): State<E2bState>,
    mut req: Request,
    next: Next,
) -> Response {
    match envd_sandbox(&state, req.headers()).await {
        Ok(sandbox) => {
            req.extensions_mut().insert(sandbox);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

async fn envd_sandbox(
    state: &E2bState,
    headers: &axum::http::HeaderMap,
) -> Result<EnvdSandbox, ConnectError> {
    let id = headers
        .get("e2b-sandbox-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .ok_or_else(|| {
            ConnectError::invalid(
                "missing E2b-Sandbox-Id header (set E2B_SANDBOX_URL to this listener)",
            )
        })?
        .to_string();
    let key = id.clone();
    let row = state
        .app
        .store
        .call(move |c| rows::get(c, &key))
        .await
        .map_err(|e| ConnectError::internal(e.to_string()))?
        .ok_or_else(|| ConnectError::not_found(format!("sandbox {id} not found")))?;
    let by_token = headers
        .get("x-access-token")
        .is_some_and(|t| bool::from(t.as_bytes().ct_eq(row.access_token.as_bytes())));
    let allowed = by_token
        || match super::api_key_scope(state, headers).await {
            Ok(Some(scope)) => scope.sees(row.vm_id),
            _ => false,
        };
    if !allowed {
        return Err(ConnectError::new(
            Code::Unauthenticated,
            format!("no valid X-Access-Token or X-API-KEY for sandbox {id}"),
        ));
    }
    let (_, agent) = state
        .app
        .lifecycle
        .agent(&row.vm_id.to_string())
        .await
        .map_err(|e| ConnectError::new(Code::Unavailable, format!("sandbox {id}: {e}")))?;
    Ok(EnvdSandbox {
        rt: state.sandboxes.runtime(row.vm_id),
        row: Arc::new(row),
        agent,
    })
}
