//! Background processes: started by one request, left running after it, their output read later
//! by offset, signalled as a whole process group.
//!
//! Each process runs in its own process group with its stdout and stderr piped into the agent,
//! which appends them to files under the registry's directory (`/run/nexus-agent/processes`, a
//! tmpfs). Only the newest [`MAX_PROCESS_LOG_BYTES`] of a stream are kept: older bytes are
//! hole-punched, so offsets stay absolute while memory stays bounded, and a reader asking for
//! bytes that are gone gets the oldest kept ones and how many it missed. At most
//! [`MAX_PROCESSES`] are tracked; finished ones are forgotten, oldest first, to make room.
//!
//! A process may keep its stdin open for later writes (`keep_stdin`, `POST
//! /v1/processes/stdin`), and its output can be followed as it comes (`GET
//! /v1/processes/follow`: the exec event stream, from any offsets, for as long as the host
//! listens), which is how a host reattaches to a long-running command.
//!
//! A process's exit is recorded once every byte it wrote is in its log files (`pump.rs`), so a
//! follower that sees the exit has seen all its output.

mod pump;

use std::collections::BTreeMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use nexus_lib::agent::{
    ExecEvent, ExecRequest, FOLLOW_KEEPALIVE_MS, MAX_PROCESS_LOG_BYTES, MAX_PROCESS_READ_BYTES,
    MAX_PROCESS_STDIN_CHUNK, MAX_PROCESSES, MAX_REQUEST_JSON_BYTES, OutputStream, ProcessInfo,
    ProcessOutput, ProcessSignal, ProcessStdin, SignalRequest,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::process::ChildStdin;
use tokio::sync::{mpsc, watch};

use crate::exec;
use crate::server::{self, ApiError, ApiResult, Query};

/// Where the agent keeps process output.
pub const DIR: &str = "/run/nexus-agent/processes";
/// Longest command line kept for listings.
const MAX_COMMAND_CHARS: usize = 200;
/// After the process exited and its output pipes were drained, how long they may stay open
/// (held by children it left behind) before the exit is recorded anyway.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// Longest a write to a process's stdin may block (a process that does not read).
const STDIN_WRITE_LIMIT: Duration = Duration::from_secs(10);

/// The processes this agent started.
pub struct Registry {
    dir: PathBuf,
    log_bytes: u64,
    /// [`DRAIN_AFTER_EXIT`], shorter in tests.
    drain_grace: Duration,
    /// How long each pump waits before it starts: a stand-in for a loaded guest.
    #[cfg(test)]
    pump_delay: Duration,
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    procs: BTreeMap<u64, Arc<Proc>>,
}

struct Proc {
    id: u64,
    pid: u32,
    command: String,
    started_ms: i64,
    stdout: Log,
    stderr: Log,
    /// `(exit code, signal)` once it exited and its output was drained.
    exit: Mutex<Option<(Option<i32>, Option<i32>)>>,
    /// Its stdin while kept open.
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    /// Bumped on every output chunk and at the exit: what followers wait on.
    changed: watch::Sender<u64>,
}

/// One stream's file: bytes `start..written` are kept.
struct Log {
    path: PathBuf,
    written: AtomicU64,
    start: AtomicU64,
}

impl Registry {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::with_log_bytes(dir, MAX_PROCESS_LOG_BYTES)
    }

    fn with_log_bytes(dir: impl Into<PathBuf>, log_bytes: u64) -> Self {
        Self {
            dir: dir.into(),
            log_bytes,
            drain_grace: DRAIN_AFTER_EXIT,
            #[cfg(test)]
            pump_delay: Duration::ZERO,
            inner: Mutex::new(Table::default()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `req` in the background.
    pub async fn start(self: &Arc<Self>, req: &ExecRequest) -> Result<ProcessInfo, ApiError> {
        req.validate().map_err(ApiError::bad_request)?;
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| ApiError::io(&e, &self.dir.to_string_lossy()))?;
        let id = self.reserve()?;
        let mut cmd = exec::command(req)
            .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()))?;
        let log = |stream: OutputStream| Log {
            path: self.dir.join(format!("{id}.{}", stream.as_str())),
            written: AtomicU64::new(0),
            start: AtomicU64::new(0),
        };
        let (stdout_log, stderr_log) = (log(OutputStream::Stdout), log(OutputStream::Stderr));
        let files = (
            create(&stdout_log.path).await?,
            create(&stderr_log.path).await?,
        );
        let mut child = cmd.spawn().map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "spawn_failed",
                format!("cannot run {:?}: {e}", req.argv[0]),
            )
        })?;
        let pid = child.id().unwrap_or(0);
        let proc = Arc::new(Proc {
            id,
            pid,
            command: shorten(&req.argv.join(" ")),
            started_ms: now_ms(),
            stdout: stdout_log,
            stderr: stderr_log,
            exit: Mutex::new(None),
            stdin: tokio::sync::Mutex::new(None),
            changed: watch::Sender::new(0),
        });
        self.table().procs.insert(id, proc.clone());
        match (child.stdin.take(), req.stdin.clone()) {
            (Some(pipe), data) if req.keep_stdin => {
                let mut slot = proc.stdin.lock().await;
                *slot = Some(pipe);
                if let (Some(pipe), Some(data)) = (slot.as_mut(), data) {
                    let _ = tokio::time::timeout(STDIN_WRITE_LIMIT, pipe.write_all(&data)).await;
                }
            }
            (Some(mut pipe), Some(data)) => {
                tokio::spawn(async move {
                    let _ = pipe.write_all(&data).await;
                });
            }
            _ => {}
        }
        let bound = self.log_bytes;
        let mut pumps = pump::Pumps::new();
        #[cfg(test)]
        {
            pumps.start_delay = self.pump_delay;
        }
        if let Some(out) = child.stdout.take() {
            pumps.spawn(out, files.0, proc.clone(), OutputStream::Stdout, bound);
        }
        if let Some(err) = child.stderr.take() {
            pumps.spawn(err, files.1, proc.clone(), OutputStream::Stderr, bound);
        }
        let timeout = req.timeout_ms.map(Duration::from_millis);
        let grace = self.drain_grace;
        let info = proc.info();
        tokio::spawn(async move {
            let status = match timeout {
                Some(limit) => match tokio::time::timeout(limit, child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        exec::kill_group(Some(Pid::from_raw(pid as i32)));
                        child.wait().await
                    }
                },
                None => child.wait().await,
            };
            let exit = match status {
                Ok(s) => (s.code(), s.signal()),
                Err(_) => (None, None),
            };
            // Record the exit once the output is in its files, so a follower that sees the
            // exit has seen every byte.
            pumps.drain(grace).await;
            proc.stdin.lock().await.take();
            *proc.exit.lock().unwrap_or_else(|e| e.into_inner()) = Some(exit);
            proc.changed.send_modify(|n| *n += 1);
        });
        Ok(info)
    }

    /// A fresh id, making room by forgetting the oldest finished process when the table is full.
    fn reserve(&self) -> Result<u64, ApiError> {
        let mut table = self.table();
        if table.procs.len() >= MAX_PROCESSES {
            let finished = table
                .procs
                .values()
                .find(|p| !p.running())
                .map(|p| p.id)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::CONFLICT,
                        "too_many_processes",
                        format!(
                            "{MAX_PROCESSES} background processes are running; signal one first"
                        ),
                    )
                })?;
            if let Some(old) = table.procs.remove(&finished) {
                let _ = std::fs::remove_file(&old.stdout.path);
                let _ = std::fs::remove_file(&old.stderr.path);
            }
        }
        table.next_id += 1;
        Ok(table.next_id)
    }

    fn get(&self, id: u64) -> Result<Arc<Proc>, ApiError> {
        self.table().procs.get(&id).cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no background process {id}"),
            )
        })
    }

    pub fn list(&self) -> Vec<ProcessInfo> {
        self.table().procs.values().map(|p| p.info()).collect()
    }

    /// Up to `length` bytes of a stream from `offset`.
    pub async fn output(
        &self,
        id: u64,
        stream: OutputStream,
        offset: u64,
        length: u64,
    ) -> Result<ProcessOutput, ApiError> {
        let proc = self.get(id)?;
        let info = proc.info();
        let log = proc.log(stream);
        let size = log.written.load(Ordering::Acquire);
        let from = offset.max(log.start.load(Ordering::Acquire)).min(size);
        let want = length.min(MAX_PROCESS_READ_BYTES).min(size - from);
        let mut data = Vec::new();
        if want > 0 {
            let path = log.path.to_string_lossy().into_owned();
            let mut file = tokio::fs::File::open(&log.path)
                .await
                .map_err(|e| ApiError::io(&e, &path))?;
            file.seek(io::SeekFrom::Start(from))
                .await
                .map_err(|e| ApiError::io(&e, &path))?;
            file.take(want)
                .read_to_end(&mut data)
                .await
                .map_err(|e| ApiError::io(&e, &path))?;
        }
        Ok(ProcessOutput {
            id,
            stream,
            offset: from,
            data,
            size,
            skipped: from.saturating_sub(offset),
            running: info.running,
            exit_code: info.exit_code,
            signal: info.signal,
        })
    }

    /// Writes to a process's kept stdin and/or closes it.
    pub async fn write_stdin(&self, req: &ProcessStdin) -> Result<(), ApiError> {
        if req.data.len() > MAX_PROCESS_STDIN_CHUNK {
            return Err(ApiError::bad_request(format!(
                "data: more than {MAX_PROCESS_STDIN_CHUNK} bytes"
            )));
        }
        let proc = self.get(req.id)?;
        let mut slot = proc.stdin.lock().await;
        let Some(pipe) = slot.as_mut() else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "stdin_closed",
                format!(
                    "process {} has no open stdin (closed, exited, or started without keep_stdin)",
                    req.id
                ),
            ));
        };
        if !req.data.is_empty() {
            match tokio::time::timeout(STDIN_WRITE_LIMIT, pipe.write_all(&req.data)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    slot.take();
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "stdin_closed",
                        format!("process {}'s stdin is closed: {e}", req.id),
                    ));
                }
                Err(_) => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "stdin_full",
                        format!(
                            "process {} did not read its stdin within {STDIN_WRITE_LIMIT:?}",
                            req.id
                        ),
                    ));
                }
            }
        }
        if req.close {
            slot.take();
        }
        Ok(())
    }

    /// The output of process `id` from the given offsets on, as exec events (stdout and stderr
    /// chunks, then the exit), for as long as the receiver is kept.
    pub fn follow(
        self: &Arc<Self>,
        id: u64,
        offsets: (u64, u64),
    ) -> Result<mpsc::Receiver<Bytes>, ApiError> {
        let proc = self.get(id)?;
        let (tx, rx) = mpsc::channel(8);
        let registry = self.clone();
        tokio::spawn(async move {
            let mut offsets = offsets;
            let mut changes = proc.changed.subscribe();
            loop {
                changes.borrow_and_update();
                let exited = !proc.running();
                for stream in [OutputStream::Stdout, OutputStream::Stderr] {
                    let at = match stream {
                        OutputStream::Stdout => &mut offsets.0,
                        OutputStream::Stderr => &mut offsets.1,
                    };
                    loop {
                        let Ok(out) = registry
                            .output(id, stream, *at, nexus_lib::agent::EXEC_CHUNK_BYTES as u64)
                            .await
                        else {
                            return;
                        };
                        if out.data.is_empty() {
                            break;
                        }
                        *at = out.offset + out.data.len() as u64;
                        let event = match stream {
                            OutputStream::Stdout => ExecEvent::Stdout { data: out.data },
                            OutputStream::Stderr => ExecEvent::Stderr { data: out.data },
                        };
                        if tx.send(encode(&event)).await.is_err() {
                            return;
                        }
                    }
                }
                if exited {
                    let info = proc.info();
                    let exit = ExecEvent::Exit {
                        code: info.exit_code,
                        signal: info.signal,
                        timed_out: false,
                    };
                    let _ = tx.send(encode(&exit)).await;
                    return;
                }
                let keepalive = Duration::from_millis(FOLLOW_KEEPALIVE_MS);
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                    () = tokio::time::sleep(keepalive) => {
                        let ping = ExecEvent::Stdout { data: Vec::new() };
                        if tx.send(encode(&ping)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(rx)
    }

    /// Sends `signal` to the process's whole group (which may outlive its leader).
    pub fn signal(&self, req: &SignalRequest) -> Result<ProcessInfo, ApiError> {
        let proc = self.get(req.id)?;
        let signal = match req.signal {
            ProcessSignal::Term => Signal::SIGTERM,
            ProcessSignal::Kill => Signal::SIGKILL,
            ProcessSignal::Int => Signal::SIGINT,
            ProcessSignal::Hup => Signal::SIGHUP,
            ProcessSignal::Quit => Signal::SIGQUIT,
            ProcessSignal::Usr1 => Signal::SIGUSR1,
            ProcessSignal::Usr2 => Signal::SIGUSR2,
            ProcessSignal::Stop => Signal::SIGSTOP,
            ProcessSignal::Cont => Signal::SIGCONT,
        };
        killpg(Pid::from_raw(proc.pid as i32), signal).map_err(|e| {
            ApiError::new(
                StatusCode::CONFLICT,
                "no_process",
                format!("process {} has no process left in its group: {e}", req.id),
            )
        })?;
        Ok(proc.info())
    }
}

impl Proc {
    fn running(&self) -> bool {
        self.exit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    fn log(&self, stream: OutputStream) -> &Log {
        match stream {
            OutputStream::Stdout => &self.stdout,
            OutputStream::Stderr => &self.stderr,
        }
    }

    fn info(&self) -> ProcessInfo {
        let exit = *self.exit.lock().unwrap_or_else(|e| e.into_inner());
        ProcessInfo {
            id: self.id,
            pid: self.pid,
            command: self.command.clone(),
            started_ms: self.started_ms,
            running: exit.is_none(),
            exit_code: exit.and_then(|e| e.0),
            signal: exit.and_then(|e| e.1),
            stdout_bytes: self.stdout.written.load(Ordering::Acquire),
            stderr_bytes: self.stderr.written.load(Ordering::Acquire),
        }
    }
}

async fn create(path: &Path) -> Result<tokio::fs::File, ApiError> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .await
        .map_err(|e| ApiError::io(&e, &path.to_string_lossy()))
}

fn shorten(command: &str) -> String {
    match command.char_indices().nth(MAX_COMMAND_CHARS) {
        Some((cut, _)) => format!("{}…", &command[..cut]),
        None => command.to_string(),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `POST /v1/processes`.
pub async fn handle_start(req: Request<Incoming>, registry: &Arc<Registry>) -> ApiResult {
    let request: ExecRequest = server::read_json(req.into_body(), MAX_REQUEST_JSON_BYTES).await?;
    server::json(StatusCode::CREATED, &registry.start(&request).await?)
}

/// `GET /v1/processes/output?id=&stream=&offset=&length=`.
pub async fn handle_output(req: &Request<Incoming>, registry: &Registry) -> ApiResult {
    let query = Query::of(req)?;
    let id = query
        .number("id")?
        .ok_or_else(|| ApiError::bad_request("missing id parameter"))?;
    let stream = query
        .get("stream")
        .unwrap_or("stdout")
        .parse()
        .map_err(ApiError::bad_request)?;
    let offset = query.number("offset")?.unwrap_or(0);
    let length = query.number("length")?.unwrap_or(MAX_PROCESS_READ_BYTES);
    server::json(
        StatusCode::OK,
        &registry.output(id, stream, offset, length).await?,
    )
}

/// One NDJSON line.
fn encode(event: &ExecEvent) -> Bytes {
    let mut line = serde_json::to_vec(event).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// `POST /v1/processes/stdin`.
pub async fn handle_stdin(req: Request<Incoming>, registry: &Registry) -> ApiResult {
    let request: ProcessStdin =
        server::read_json(req.into_body(), MAX_PROCESS_STDIN_CHUNK / 3 * 4 + 4096).await?;
    registry.write_stdin(&request).await?;
    server::json(StatusCode::OK, &serde_json::json!({}))
}

/// `GET /v1/processes/follow?id=&stdout=&stderr=`: NDJSON exec events.
pub fn handle_follow(req: &Request<Incoming>, registry: &Arc<Registry>) -> ApiResult {
    let query = Query::of(req)?;
    let id = query
        .number("id")?
        .ok_or_else(|| ApiError::bad_request("missing id parameter"))?;
    let offsets = (
        query.number("stdout")?.unwrap_or(0),
        query.number("stderr")?.unwrap_or(0),
    );
    let rx = registry.follow(id, offsets)?;
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, io::Error>(b), rx))
    });
    Ok(server::streamed("application/x-ndjson", chunks))
}

/// `POST /v1/processes/signal`.
pub async fn handle_signal(req: Request<Incoming>, registry: &Registry) -> ApiResult {
    let request: SignalRequest = server::read_json(req.into_body(), 4096).await?;
    server::json(StatusCode::OK, &registry.signal(&request)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> ExecRequest {
        ExecRequest::new(["/bin/sh", "-c", script])
    }

    async fn finished(registry: &Registry, id: u64) -> ProcessInfo {
        for _ in 0..500 {
            let info = registry.list().into_iter().find(|p| p.id == id).unwrap();
            if !info.running {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("process {id} did not finish");
    }

    /// Every event a follow yields until its exit, stdout joined.
    async fn follow_all(
        registry: &Arc<Registry>,
        id: u64,
        from: (u64, u64),
    ) -> (Vec<u8>, ExecEvent) {
        let mut rx = registry.follow(id, from).unwrap();
        let mut stdout = Vec::new();
        while let Some(line) = rx.recv().await {
            match serde_json::from_slice::<ExecEvent>(&line).unwrap() {
                ExecEvent::Stdout { data } => stdout.extend(data),
                ExecEvent::Stderr { .. } => {}
                end => return (stdout, end),
            }
        }
        panic!("the follow stream ended without an exit");
    }

    /// A registry whose pumps start `delay` late and that waits `grace` for children left behind.
    fn registry_with(dir: &Path, delay: Duration, grace: Duration) -> Arc<Registry> {
        let mut registry = Registry::new(dir);
        registry.pump_delay = delay;
        registry.drain_grace = grace;
        Arc::new(registry)
    }

    #[tokio::test]
    async fn the_exit_waits_for_output_its_pumps_were_too_slow_to_read_in_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry_with(
            dir.path(),
            Duration::from_secs(1),
            Duration::from_millis(50),
        );
        let info = registry.start(&sh("echo hi")).await.unwrap();

        let (stdout, end) = follow_all(&registry, info.id, (0, 0)).await;

        assert_eq!(stdout, b"hi\n");
        assert!(
            matches!(end, ExecEvent::Exit { code: Some(0), .. }),
            "{end:?}"
        );
    }

    #[tokio::test]
    async fn a_child_holding_the_pipes_open_does_not_keep_the_exit_from_being_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::new(dir.path()));
        let info = registry.start(&sh("sleep 30 & echo hi")).await.unwrap();

        let followed =
            tokio::time::timeout(DRAIN_AFTER_EXIT * 5, follow_all(&registry, info.id, (0, 0)))
                .await;
        let _ = registry.signal(&SignalRequest {
            id: info.id,
            signal: ProcessSignal::Kill,
        });

        let (stdout, end) = followed.expect("the exit was not recorded");
        assert_eq!(stdout, b"hi\n");
        assert!(
            matches!(end, ExecEvent::Exit { code: Some(0), .. }),
            "{end:?}"
        );
    }

    #[tokio::test]
    async fn a_child_writing_without_pause_does_not_keep_the_exit_from_being_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry_with(dir.path(), Duration::ZERO, Duration::from_millis(100));
        let info = registry.start(&sh("yes & exit 3")).await.unwrap();

        let done = finished(&registry, info.id).await;
        let _ = registry.signal(&SignalRequest {
            id: info.id,
            signal: ProcessSignal::Kill,
        });

        assert_eq!(done.exit_code, Some(3));
    }

    #[tokio::test]
    async fn kept_stdin_is_written_later_and_closed_and_a_follow_sees_it_all() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::new(dir.path()));
        let mut req = sh("cat; echo end");
        req.keep_stdin = true;
        let info = registry.start(&req).await.unwrap();

        let write = |data: &[u8], close| ProcessStdin {
            id: info.id,
            data: data.to_vec(),
            close,
        };
        registry.write_stdin(&write(b"one\n", false)).await.unwrap();
        registry.write_stdin(&write(b"two\n", true)).await.unwrap();
        let (stdout, end) = follow_all(&registry, info.id, (0, 0)).await;
        let again = registry.write_stdin(&write(b"late", false)).await;

        assert_eq!(stdout, b"one\ntwo\nend\n");
        assert!(
            matches!(end, ExecEvent::Exit { code: Some(0), .. }),
            "{end:?}"
        );
        assert!(again.is_err(), "stdin written after it was closed");
    }

    #[tokio::test]
    async fn a_follow_from_an_offset_after_the_exit_yields_the_rest_then_the_exit() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::new(dir.path()));
        let info = registry.start(&sh("printf abcdef; exit 2")).await.unwrap();
        finished(&registry, info.id).await;

        let (stdout, end) = follow_all(&registry, info.id, (4, 0)).await;

        assert_eq!(stdout, b"ef");
        assert!(
            matches!(end, ExecEvent::Exit { code: Some(2), .. }),
            "{end:?}"
        );
    }

    #[tokio::test]
    async fn output_is_read_by_offset_after_the_process_ended() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::new(dir.path()));

        let info = registry
            .start(&sh("printf hello; printf oops >&2; exit 4"))
            .await
            .unwrap();
        let done = finished(&registry, info.id).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let out = registry
            .output(info.id, OutputStream::Stdout, 1, 3)
            .await
            .unwrap();
        let err = registry
            .output(info.id, OutputStream::Stderr, 0, 100)
            .await
            .unwrap();

        assert_eq!(done.exit_code, Some(4));
        assert_eq!(
            (out.data.as_slice(), out.offset, out.size),
            (&b"ell"[..], 1, 5)
        );
        assert_eq!(err.data, b"oops");
    }

    #[tokio::test]
    async fn a_signal_reaches_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::new(dir.path()));
        let info = registry
            .start(&sh("sleep 30 & sleep 31; wait"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;

        registry
            .signal(&SignalRequest {
                id: info.id,
                signal: ProcessSignal::Kill,
            })
            .unwrap();
        let done = finished(&registry, info.id).await;

        assert_eq!(done.signal, Some(9));
        // Orphans are reaped by the host's init, not at once: allow it a moment.
        let group_gone = async {
            while killpg(Pid::from_raw(info.pid as i32), None::<Signal>).is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let gone = tokio::time::timeout(Duration::from_secs(5), group_gone).await;
        assert!(gone.is_ok(), "a process of the group survived");
    }

    #[tokio::test]
    async fn only_the_newest_bytes_are_kept_and_a_late_reader_is_told_what_it_missed() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::with_log_bytes(dir.path(), 64 * 1024));

        let info = registry
            .start(&sh("head -c 3000000 /dev/zero | tr '\\0' x"))
            .await
            .unwrap();
        finished(&registry, info.id).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let out = registry
            .output(info.id, OutputStream::Stdout, 0, 10)
            .await
            .unwrap();
        let kept = std::fs::metadata(dir.path().join(format!("{}.stdout", info.id))).unwrap();

        assert_eq!(out.size, 3_000_000);
        assert!(out.skipped > 1_000_000, "{}", out.skipped);
        assert_eq!(out.data, b"xxxxxxxxxx");
        use std::os::unix::fs::MetadataExt;
        assert!(
            kept.blocks() * 512 < 2 * 1024 * 1024,
            "{} blocks",
            kept.blocks()
        );
    }

    #[test]
    fn long_command_lines_are_shortened() {
        assert_eq!(
            shorten(&"x".repeat(300)).chars().count(),
            MAX_COMMAND_CHARS + 1
        );
    }
}
