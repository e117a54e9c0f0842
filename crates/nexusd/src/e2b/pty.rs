//! envd PTY processes as the agent's terminal sessions. `Start` with `pty` opens a session and
//! streams its output as `data{pty}`; the attachment stays open (drained) after the SDK's stream
//! ends, so input and resizes keep flowing through it until the session exits. `Connect`
//! attaches again (the session's scrollback first). The pid given to the SDK is nexusd's own
//! number for the session (above any Linux pid), since a session is named by its id.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::response::Response;
use bytes::Bytes;
use nexus_lib::terminal::{MAX_FRAME_PAYLOAD, TermControl, TermFrame, TermOpen};
use tokio::sync::mpsc;

use super::connect::{Code, ConnectError, StreamSender, stream_error, stream_response};
use super::process::{agent_error, end_event};
use super::proto::process::{
    ConnectResponse, ProcessConfig, ProcessEvent, ProcessInfo, Pty, StartResponse, process_event,
};
use super::sandbox::EnvdSandbox;
use crate::agent::{AgentClient, TerminalStream};

/// PTY pids start here: above `pid_max`'s ceiling (2^22), so never a real pid.
const PTY_PID_BASE: u32 = 1 << 30;

/// The PTY sessions of one sandbox.
#[derive(Default)]
pub(crate) struct Ptys {
    next: AtomicU32,
    map: Mutex<HashMap<u32, PtyEntry>>,
}

struct PtyEntry {
    session: String,
    input: mpsc::Sender<TermFrame>,
    config: ProcessConfig,
    tag: Option<String>,
    size: (u16, u16),
}

impl Ptys {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, PtyEntry>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn has(&self, pid: u32) -> bool {
        self.lock().contains_key(&pid)
    }

    pub fn tags(&self) -> Vec<(u32, Option<String>)> {
        self.lock()
            .iter()
            .map(|(p, e)| (*p, e.tag.clone()))
            .collect()
    }

    pub fn list(&self) -> Vec<ProcessInfo> {
        self.lock()
            .iter()
            .map(|(pid, e)| ProcessInfo {
                config: Some(e.config.clone()),
                pid: *pid,
                tag: e.tag.clone(),
            })
            .collect()
    }

    fn input_of(&self, pid: u32) -> Result<mpsc::Sender<TermFrame>, ConnectError> {
        self.lock()
            .get(&pid)
            .map(|e| e.input.clone())
            .ok_or_else(|| ConnectError::not_found(format!("PTY process {pid} not found")))
    }

    /// Keyboard input, in frames of at most the protocol's size.
    pub async fn input(&self, pid: u32, data: Bytes) -> Result<(), ConnectError> {
        let input = self.input_of(pid)?;
        for chunk in data.chunks(MAX_FRAME_PAYLOAD) {
            input
                .send(TermFrame::Data(Bytes::copy_from_slice(chunk)))
                .await
                .map_err(|_| ConnectError::not_found(format!("PTY process {pid} has ended")))?;
        }
        Ok(())
    }

    pub async fn resize(&self, pid: u32, cols: u32, rows: u32) -> Result<(), ConnectError> {
        let size = size(cols, rows)?;
        let input = self.input_of(pid)?;
        if let Some(e) = self.lock().get_mut(&pid) {
            e.size = size;
        }
        input
            .send(TermFrame::Control(TermControl::Resize {
                cols: size.0,
                rows: size.1,
            }))
            .await
            .map_err(|_| ConnectError::not_found(format!("PTY process {pid} has ended")))
    }

    pub async fn kill(&self, agent: &AgentClient, pid: u32) -> Result<(), ConnectError> {
        let session = self
            .lock()
            .get(&pid)
            .map(|e| e.session.clone())
            .ok_or_else(|| ConnectError::not_found(format!("PTY process {pid} not found")))?;
        agent.kill_session(&session).await.map_err(agent_error)
    }

    fn forget(&self, pid: u32) {
        self.lock().remove(&pid);
    }
}

fn size(cols: u32, rows: u32) -> Result<(u16, u16), ConnectError> {
    let ok = |n: u32| u16::try_from(n).ok().filter(|n| (1..=1000).contains(n));
    match (ok(cols), ok(rows)) {
        (Some(c), Some(r)) => Ok((c, r)),
        _ => Err(ConnectError::invalid(
            "pty size: cols and rows must be 1–1000",
        )),
    }
}

/// `Start` with a PTY.
pub(super) async fn start(
    sbx: EnvdSandbox,
    config: ProcessConfig,
    tag: Option<String>,
    pty: Pty,
    deadline: Option<Duration>,
    keepalive: Duration,
) -> Response {
    let Some(sz) = pty.size else {
        return stream_error(ConnectError::invalid("pty.size is missing"));
    };
    let (cols, rows) = match size(sz.cols, sz.rows) {
        Ok(s) => s,
        Err(e) => return stream_error(e),
    };
    let exec = match super::process::exec_request(&sbx, &config).await {
        Ok(r) => r,
        Err(e) => return stream_error(e),
    };
    // A terminal session takes a command line only: the environment and the working directory
    // go through `env` and a fixed `sh` snippet, never through a shell string built from input.
    let term = exec
        .env
        .get("TERM")
        .filter(|t| {
            !t.is_empty()
                && t.len() <= 64
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
        })
        .cloned()
        .unwrap_or_else(|| "xterm-256color".into());
    let mut argv: Vec<String> = Vec::new();
    if let Some(cwd) = &exec.cwd {
        argv.extend(["/bin/sh", "-c", "cd -- \"$0\" && exec \"$@\""].map(String::from));
        argv.push(cwd.clone());
    }
    argv.push("env".into());
    argv.extend(exec.env.iter().map(|(k, v)| format!("{k}={v}")));
    argv.extend(exec.argv.iter().cloned());
    let open = TermOpen {
        session: None,
        cols,
        rows,
        term: Some(term),
        argv,
    };
    if let Err(e) = open.validate() {
        return stream_error(ConnectError::invalid(format!(
            "the PTY's command, environment and directory are too large for a terminal session: {e}"
        )));
    }
    let mut stream = match sbx.agent.terminal(open).await {
        Ok(s) => s,
        Err(e) => return stream_error(agent_error(e)),
    };
    let session = match stream.next().await {
        Some(Ok(TermFrame::Control(TermControl::Session { id, .. }))) => id,
        Some(Err(e)) => return stream_error(agent_error(e)),
        _ => return stream_error(ConnectError::internal("the agent did not name the session")),
    };
    let pid = PTY_PID_BASE + sbx.rt.ptys.next.fetch_add(1, Ordering::Relaxed);
    sbx.rt.ptys.lock().insert(
        pid,
        PtyEntry {
            session,
            input: stream.input.clone(),
            config,
            tag,
            size: (cols, rows),
        },
    );
    let (tx, resp) = stream_response();
    tokio::spawn(async move {
        forward(&mut stream, pid, Some(tx), deadline, keepalive, |event| {
            StartResponse { event: Some(event) }
        })
        .await;
        // The SDK's stream ended first: keep the attachment (input, resizes) until the session
        // ends.
        while let Some(Ok(frame)) = stream.next().await {
            if matches!(
                frame,
                TermFrame::Control(TermControl::Exit { .. } | TermControl::Closed { .. })
            ) {
                break;
            }
        }
        sbx.rt.ptys.forget(pid);
    });
    resp
}

/// `Connect` to a PTY: a new attachment, the scrollback first.
pub(super) async fn connect(
    sbx: EnvdSandbox,
    pid: u32,
    deadline: Option<Duration>,
    keepalive: Duration,
) -> Response {
    let found = sbx
        .rt
        .ptys
        .lock()
        .get(&pid)
        .map(|e| (e.session.clone(), e.size));
    let Some((session, (cols, rows))) = found else {
        return stream_error(ConnectError::not_found(format!(
            "PTY process {pid} not found"
        )));
    };
    let open = TermOpen {
        session: Some(session),
        cols,
        rows,
        ..TermOpen::default()
    };
    let mut stream = match sbx.agent.terminal(open).await {
        Ok(s) => s,
        Err(e) => return stream_error(agent_error(e)),
    };
    let (tx, resp) = stream_response();
    tokio::spawn(async move {
        forward(&mut stream, pid, Some(tx), deadline, keepalive, |event| {
            ConnectResponse { event: Some(event) }
        })
        .await;
    });
    resp
}

/// Sends the session's frames to the envd client as process events until the session ends, the
/// client goes away or the deadline passes.
async fn forward<M, F>(
    stream: &mut TerminalStream,
    pid: u32,
    tx: Option<StreamSender>,
    deadline: Option<Duration>,
    keepalive: Duration,
    wrap: F,
) where
    M: serde::Serialize,
    F: Fn(ProcessEvent) -> M,
{
    let Some(tx) = tx else { return };
    let event = |e: process_event::Event| wrap(ProcessEvent { event: Some(e) });
    if !tx
        .send(&event(process_event::Event::Start(
            process_event::StartEvent { pid },
        )))
        .await
    {
        return;
    }
    let until = deadline.map(|d| tokio::time::Instant::now() + d);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    loop {
        let frame = tokio::select! {
            f = stream.next() => f,
            _ = ping.tick() => {
                if !tx.send(&event(process_event::Event::Keepalive(process_event::KeepAlive {}))).await {
                    return;
                }
                continue;
            }
            () = async {
                match until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                return tx.end(Some(ConnectError::new(Code::DeadlineExceeded,
                    "the stream's deadline passed; the PTY keeps running"))).await;
            }
            () = tx.closed() => return,
        };
        match frame {
            Some(Ok(TermFrame::Data(data))) => {
                let out = process_event::Event::Data(process_event::DataEvent {
                    output: Some(process_event::data_event::Output::Pty(data)),
                });
                if !tx.send(&event(out)).await {
                    return;
                }
            }
            Some(Ok(TermFrame::Control(TermControl::Exit { code, signal }))) => {
                let end = process_event::Event::End(end_event(code, signal));
                if tx.send(&event(end)).await {
                    tx.end(None).await;
                }
                return;
            }
            Some(Ok(TermFrame::Control(TermControl::Closed { reason }))) => {
                return tx
                    .end(Some(ConnectError::new(Code::Unavailable, reason)))
                    .await;
            }
            Some(Ok(TermFrame::Control(_))) => {}
            Some(Err(e)) => return tx.end(Some(agent_error(e))).await,
            None => {
                return tx
                    .end(Some(ConnectError::new(
                        Code::Unavailable,
                        "the agent ended the PTY's stream",
                    )))
                    .await;
            }
        }
    }
}
