//! A template image's `start` service and `ready` check, run once the agent answered and before
//! the VM counts as `running`. The image carries them at
//! [`START_CONFIG_PATH`](nexus_lib::api::template::START_CONFIG_PATH) (written by its build);
//! the file is read from the guest, so it is bounded and validated like any guest input.
//!
//! The service runs as one of the agent's background processes (its output readable later
//! through them), under a shell loop that restarts it a second after it exits. The check polls
//! until it passes or its timeout ends, which fails the start with the check named.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use nexus_lib::agent::{ExecEvent, ExecRequest};
use nexus_lib::api::template::{
    DEFAULT_READY_TIMEOUT_SECS, ImageStartConfig, MAX_READY_TIMEOUT_SECS, ReadySpec,
    START_CONFIG_PATH, TemplateSpec,
};
use uuid::Uuid;

use super::Lifecycle;
use crate::agent::{AgentClient, AgentError};

/// Largest start configuration read from a guest.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;
/// Largest output of one check read from a guest.
const MAX_CHECK_OUTPUT: usize = 1 << 20;
/// How often a check that did not pass is tried again.
const READY_POLL: Duration = Duration::from_millis(250);

impl Lifecycle {
    /// Boots a VM without its image's `start` service and `ready` check (a template's build
    /// VM): the VM is running once its agent answers.
    pub async fn start_plain(&self, key: &str) -> Result<nexus_lib::api::Vm, crate::vm::VmError> {
        let vm = self.inner.vms.get(key).await?;
        self.skip_services_once(vm.id);
        self.start(&vm.id.to_string()).await
    }

    /// Marks VM `id` to be started without its image's service and check (a build VM); the
    /// mark is used up by the next start.
    fn skip_services_once(&self, id: Uuid) {
        self.inner
            .skip_services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
    }

    /// Starts the image's service and waits for its check, if it has them; what was done, for
    /// the VM's history, or why the start fails.
    pub(super) async fn image_services(
        &self,
        id: Uuid,
        agent: &AgentClient,
    ) -> Result<Option<String>, String> {
        let skip = self
            .inner
            .skip_services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if skip {
            return Ok(None);
        }
        let Some(config) = read_config(agent).await? else {
            return Ok(None);
        };
        let mut done = Vec::new();
        if let Some(start) = &config.start {
            let mut req = ExecRequest::new([
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                "while :; do /bin/sh -c \"$0\"; echo \"nexus: start service exited ($?); restarting in 1 s\" >&2; sleep 1; done".to_owned(),
                start.command.clone(),
            ]);
            req.env = start.env.clone();
            req.cwd = start.workdir.clone();
            let p = agent
                .start_process(&req)
                .await
                .map_err(|e| format!("cannot start the image's start service: {e}"))?;
            done.push(format!("start service running (process {})", p.id));
        }
        if let Some(ready) = &config.ready {
            let t = Instant::now();
            wait_ready(agent, ready).await?;
            done.push(format!(
                "ready check ({}) passed after {} ms",
                describe(ready),
                t.elapsed().as_millis()
            ));
        }
        Ok(Some(done.join("; ")))
    }
}

/// The guest's start configuration; `None` when it has none.
async fn read_config(agent: &AgentClient) -> Result<Option<ImageStartConfig>, String> {
    let range = match agent
        .read_range(START_CONFIG_PATH, 0, MAX_CONFIG_BYTES)
        .await
    {
        Ok(r) => r,
        Err(AgentError::Remote { status: 404, .. }) => return Ok(None),
        Err(e) => return Err(format!("cannot read {START_CONFIG_PATH}: {e}")),
    };
    if range.size.is_some_and(|s| s > MAX_CONFIG_BYTES) {
        return Err(format!(
            "{START_CONFIG_PATH} is larger than {MAX_CONFIG_BYTES} bytes"
        ));
    }
    let mut bytes = Vec::new();
    let mut content = range.content;
    while let Some(chunk) = content.next().await {
        let chunk = chunk.map_err(|e| format!("cannot read {START_CONFIG_PATH}: {e}"))?;
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(format!(
                "{START_CONFIG_PATH} is larger than {MAX_CONFIG_BYTES} bytes"
            ));
        }
    }
    let config: ImageStartConfig = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{START_CONFIG_PATH} is not a valid start configuration: {e}"))?;
    // The same rules as a template's: the guest could have written anything there.
    let check = TemplateSpec {
        name: "image".into(),
        base: "default".into(),
        size: None,
        files: Vec::new(),
        run: Vec::new(),
        start: config.start.clone(),
        ready: config.ready.clone(),
    };
    check
        .validate()
        .map_err(|e| format!("{START_CONFIG_PATH} is refused: {e}"))?;
    Ok(Some(config))
}

fn describe(ready: &ReadySpec) -> String {
    match (&ready.command, ready.port, &ready.file) {
        (Some(c), _, _) => format!("command {:?}", crate::sanitize::clean(c, 80)),
        (_, Some(p), _) => format!("port {p}"),
        (_, _, Some(f)) => format!("file {}", crate::sanitize::clean(f, 200)),
        _ => "none".into(),
    }
}

/// Polls the check until it passes or its timeout ends.
async fn wait_ready(agent: &AgentClient, ready: &ReadySpec) -> Result<(), String> {
    let limit = Duration::from_secs(
        ready
            .timeout_secs
            .unwrap_or(DEFAULT_READY_TIMEOUT_SECS)
            .min(MAX_READY_TIMEOUT_SECS),
    );
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    loop {
        match check_once(agent, ready).await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            let why = if last.is_empty() {
                String::new()
            } else {
                format!(" (last error: {last})")
            };
            return Err(format!(
                "the image's ready check ({}) did not pass within {} s{why}",
                describe(ready),
                limit.as_secs()
            ));
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

async fn check_once(agent: &AgentClient, ready: &ReadySpec) -> Result<bool, String> {
    if let Some(command) = &ready.command {
        let mut req = ExecRequest::new(["/bin/sh", "-c", command.as_str()]);
        req.timeout_ms = Some(10_000);
        return Ok(run(agent, &req).await?.0 == Some(0));
    }
    if let Some(port) = ready.port {
        let req = ExecRequest::new(["/bin/cat", "/proc/net/tcp", "/proc/net/tcp6"]);
        let (_, out) = run(agent, &req).await?;
        return Ok(listening_ports(&out).contains(&port));
    }
    if let Some(file) = &ready.file {
        return match agent.stat(file).await {
            Ok(_) => Ok(true),
            Err(AgentError::Remote { status: 404, .. }) => Ok(false),
            Err(e) => Err(e.to_string()),
        };
    }
    Ok(true)
}

/// Runs a command; its exit code and stdout (bounded).
async fn run(agent: &AgentClient, req: &ExecRequest) -> Result<(Option<i32>, Vec<u8>), String> {
    let mut events = agent.exec(req).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while let Some(event) = events.next().await {
        match event.map_err(|e| e.to_string())? {
            ExecEvent::Stdout { data } => {
                if out.len() + data.len() <= MAX_CHECK_OUTPUT {
                    out.extend_from_slice(&data);
                }
            }
            ExecEvent::Stderr { .. } => {}
            ExecEvent::Exit { code, .. } => return Ok((code, out)),
            ExecEvent::Error { message } => return Err(message),
        }
    }
    Err("the command's stream ended without its exit".into())
}

/// The TCP ports in state LISTEN (`0A`) in the text of `/proc/net/tcp` and `/proc/net/tcp6`.
fn listening_ports(text: &[u8]) -> HashSet<u16> {
    String::from_utf8_lossy(text)
        .lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1)?;
            let state = cols.nth(1)?;
            if state != "0A" {
                return None;
            }
            let port = local.rsplit_once(':')?.1;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_ports_are_read_from_proc_net_tcp() {
        let text = b"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1
   1: 0100007F:0016 0100007F:A0B2 01 00000000:00000000 00:00000000 00000000     0        0 1235 1
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1
";
        let ports = listening_ports(text);
        assert_eq!(ports, HashSet::from([8080, 80]));
    }
}
