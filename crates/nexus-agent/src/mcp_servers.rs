//! MCP servers that run inside the guest: stdio programs the host declared for this VM. The agent
//! starts each one, restarts it with back-off when it exits (1 s, doubling to 30 s; a run of a
//! minute resets it), and lends its stdin and stdout to one host connection at a time
//! (`POST /v1/mcp-servers/connect?name=`, a request body flowing to the server's stdin and a
//! response body from its stdout). When that connection ends, the server is restarted at once,
//! so every connection starts a fresh MCP session. A server's stderr goes to
//! `/run/nexus-agent/mcp/<name>.log`, bounded: past [`LOG_MAX_BYTES`] the file becomes
//! `<name>.log.1` (replacing the older one) and a new one is started.

use std::collections::HashMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use nexus_lib::agent::{ExecRequest, McpServerSet, McpServerSpec, McpServerStatus};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::{Notify, mpsc};
use tokio_util::io::ReaderStream;

use crate::exec;
use crate::server::{self, ApiError, ApiResult, Query};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run this long counts as healthy: the next crash starts the back-off over.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// How long a connection waits for its server to be up.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// Where the servers' stderr logs are.
pub const LOG_DIR: &str = "/run/nexus-agent/mcp";
/// Size at which a server's log is rotated (so at most twice this is kept).
const LOG_MAX_BYTES: u64 = 512 * 1024;

/// The MCP servers of this guest.
#[derive(Default)]
pub struct Servers {
    inner: Mutex<HashMap<String, Arc<Server>>>,
}

struct Server {
    spec: McpServerSpec,
    /// The running instance's pipes, until a connection takes them.
    io: Mutex<Option<(u64, ChildStdin, ChildStdout)>>,
    up: Notify,
    /// Restart requests, naming the instance they are about.
    restart: mpsc::UnboundedSender<u64>,
    stop: tokio_util::sync::CancellationToken,
    status: Mutex<McpServerStatus>,
}

impl Servers {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Server>>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs exactly `set`: servers no longer in it (or changed) are stopped, new ones started.
    pub fn set(&self, set: McpServerSet) -> Result<Vec<McpServerStatus>, ApiError> {
        McpServerSpec::validate_all(&set.servers).map_err(ApiError::bad_request)?;
        let mut map = self.map();
        map.retain(|name, server| {
            let keep = set
                .servers
                .iter()
                .any(|s| s.name == *name && *s == server.spec);
            if !keep {
                server.stop.cancel();
            }
            keep
        });
        for spec in set.servers {
            if map.contains_key(&spec.name) {
                continue;
            }
            let (restart, requests) = mpsc::unbounded_channel();
            let server = Arc::new(Server {
                status: Mutex::new(McpServerStatus {
                    name: spec.name.clone(),
                    running: false,
                    pid: None,
                    starts: 0,
                    last_exit: None,
                }),
                spec,
                io: Mutex::new(None),
                up: Notify::new(),
                restart,
                stop: tokio_util::sync::CancellationToken::new(),
            });
            tokio::spawn(supervise(server.clone(), requests));
            map.insert(server.spec.name.clone(), server);
        }
        drop(map);
        Ok(self.statuses())
    }

    pub fn statuses(&self) -> Vec<McpServerStatus> {
        let mut all: Vec<McpServerStatus> = self.map().values().map(|s| s.status()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Takes the pipes of server `name`'s running instance, waiting for one to be up.
    async fn take(
        &self,
        name: &str,
    ) -> Result<(Arc<Server>, u64, ChildStdin, ChildStdout), ApiError> {
        let server = self.map().get(name).cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no MCP server {name}"),
            )
        })?;
        let deadline = tokio::time::Instant::now() + CONNECT_WAIT;
        loop {
            let up = server.up.notified();
            let io = server.lock_io().take();
            if let Some((generation, stdin, stdout)) = io {
                return Ok((server.clone(), generation, stdin, stdout));
            }
            if tokio::time::timeout_at(deadline, up).await.is_err() {
                let status = server.status();
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!(
                        "MCP server {name} is not up or is in use (last exit: {})",
                        status.last_exit.as_deref().unwrap_or("none")
                    ),
                ));
            }
        }
    }
}

impl Server {
    fn lock_io(&self) -> std::sync::MutexGuard<'_, Option<(u64, ChildStdin, ChildStdout)>> {
        self.io.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn status(&self) -> McpServerStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut McpServerStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// Keeps one instance of `server` running until it is stopped.
async fn supervise(server: Arc<Server>, mut restarts: mpsc::UnboundedReceiver<u64>) {
    let mut backoff = FIRST_BACKOFF;
    let mut generation = 0u64;
    while !server.stop.is_cancelled() {
        generation += 1;
        let exec = ExecRequest {
            argv: server.spec.argv.clone(),
            env: server.spec.env.clone(),
            ..ExecRequest::default()
        };
        let spawned = exec::command(&exec).and_then(|mut cmd| {
            cmd.stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
        });
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                server.update(|s| s.last_exit = Some(format!("could not start: {e}")));
                if !pause(&server, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let pid = child.id();
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(keep_log(server.spec.name.clone(), stderr));
        }
        server.update(|s| {
            s.running = true;
            s.pid = pid;
            s.starts += 1;
        });
        if let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) {
            *server.lock_io() = Some((generation, stdin, stdout));
            server.up.notify_waiters();
        }
        let started = Instant::now();
        let asked_to_restart = loop {
            tokio::select! {
                status = child.wait() => {
                    let how = match status {
                        Ok(s) => match (s.code(), s.signal()) {
                            (Some(code), _) => format!("exit code {code}"),
                            (_, Some(signal)) => format!("signal {signal}"),
                            _ => "unknown".into(),
                        },
                        Err(e) => format!("wait failed: {e}"),
                    };
                    server.update(|s| s.last_exit = Some(how));
                    break false;
                }
                Some(which) = restarts.recv() => {
                    if which == generation {
                        break true;
                    }
                }
                () = server.stop.cancelled() => break true,
            }
        };
        exec::kill_group(pid.map(|p| Pid::from_raw(p as i32)));
        let _ = child.wait().await;
        *server.lock_io() = None;
        server.update(|s| {
            s.running = false;
            s.pid = None;
        });
        if asked_to_restart {
            backoff = FIRST_BACKOFF;
            continue;
        }
        if started.elapsed() >= HEALTHY_RUN {
            backoff = FIRST_BACKOFF;
        }
        if !pause(&server, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Appends a server's stderr to its log file, rotating it at [`LOG_MAX_BYTES`]; a log that
/// cannot be written is dropped (the server must not block on a full pipe).
async fn keep_log(name: String, mut stderr: tokio::process::ChildStderr) {
    use tokio::io::AsyncReadExt;
    let path = std::path::Path::new(LOG_DIR).join(format!("{name}.log"));
    let _ = tokio::fs::create_dir_all(LOG_DIR).await;
    let open = |path: std::path::PathBuf| async move {
        tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .ok()
    };
    let mut file = open(path.clone()).await;
    let mut size = match &file {
        Some(f) => f.metadata().await.map_or(0, |m| m.len()),
        None => 0,
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if size + n as u64 > LOG_MAX_BYTES {
            let _ = tokio::fs::rename(&path, path.with_extension("log.1")).await;
            file = open(path.clone()).await;
            size = 0;
        }
        if let Some(f) = file.as_mut()
            && f.write_all(&buf[..n]).await.is_ok()
        {
            size += n as u64;
        }
    }
}

/// Sleeps `how_long` unless the server is stopped meanwhile (then `false`).
async fn pause(server: &Server, how_long: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(how_long) => true,
        () = server.stop.cancelled() => false,
    }
}

/// Asks for a restart of instance `generation` when dropped: the connection using it ended.
struct EndOfConnection(Arc<Server>, u64);

impl Drop for EndOfConnection {
    fn drop(&mut self) {
        let _ = self.0.restart.send(self.1);
    }
}

/// `PUT /v1/mcp-servers`.
pub async fn handle_set(req: Request<Incoming>, servers: &Servers) -> ApiResult {
    let set: McpServerSet = server::read_json(req.into_body(), 1024 * 1024).await?;
    server::json(StatusCode::OK, &servers.set(set)?)
}

/// `POST /v1/mcp-servers/connect?name=`: the request body goes to the server's stdin, its stdout
/// comes back as the response body, until either side ends.
pub async fn handle_connect(req: Request<Incoming>, servers: &Servers) -> ApiResult {
    let name = Query::of(&req)?
        .get("name")
        .ok_or_else(|| ApiError::bad_request("missing name parameter"))?
        .to_string();
    let (server, generation, mut stdin, stdout) = servers.take(&name).await?;
    let ended = Arc::new(EndOfConnection(server, generation));
    let mut body = req.into_body();
    let input_ended = ended.clone();
    tokio::spawn(async move {
        let _ended = input_ended;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref()
                && stdin.write_all(data).await.is_err()
            {
                break;
            }
        }
    });
    let output = ReaderStream::new(stdout).map(move |chunk: io::Result<Bytes>| {
        let _keep = &ended;
        chunk
    });
    Ok(server::streamed("application/octet-stream", output))
}
