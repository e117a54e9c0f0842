//! envd's `process.Process` on the Nexus agent. A command is one of the agent's background
//! processes (own process group, output kept in the guest and read by offset, stdin kept open
//! when asked): `Start` starts it and follows its output, `Connect` follows it again from the
//! first byte, however long after it started (the follow stream has no deadline of its own,
//! only keep-alives), `SendSignal` signals its whole process group, so killing a command kills
//! the children it spawned. PTY processes are terminal sessions (`pty.rs`).

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::{Extension, Router};
use futures_util::StreamExt;
use nexus_lib::agent::{ExecEvent, ExecRequest, ProcessSignal};

use super::E2bState;
use super::connect::{
    self, Code, ConnectError, EnvelopeReader, StreamSender, stream_error, stream_response,
    unary_request, unary_response,
};
use super::proto::process::{
    CloseStdinRequest, CloseStdinResponse, ConnectRequest, ConnectResponse, ListRequest,
    ListResponse, ProcessConfig, ProcessEvent, ProcessInfo, ProcessSelector, SendInputRequest,
    SendInputResponse, SendSignalRequest, SendSignalResponse, Signal, StartRequest, StartResponse,
    StreamInputRequest, StreamInputResponse, UpdateRequest, UpdateResponse, process_event,
    process_input, process_selector, stream_input_request,
};
use super::sandbox::EnvdSandbox;
use crate::agent::AgentError;

/// Keep-alive period when the client names none (`Keepalive-Ping-Interval`, seconds).
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(50);
/// Most processes remembered per sandbox (for `List` and tags); the oldest go first.
const MAX_REMEMBERED: usize = 1024;
/// Longest tag.
const MAX_TAG_CHARS: usize = 256;

pub(super) fn routes() -> Router<E2bState> {
    Router::new()
        .route("/process.Process/Start", post(start))
        .route("/process.Process/Connect", post(connect_process))
        .route("/process.Process/List", post(list))
        .route("/process.Process/SendInput", post(send_input))
        .route("/process.Process/StreamInput", post(stream_input))
        .route("/process.Process/CloseStdin", post(close_stdin))
        .route("/process.Process/SendSignal", post(send_signal))
        .route("/process.Process/Update", post(update))
}

/// What a process started through envd was asked to run.
#[derive(Clone)]
pub(crate) struct Started {
    pub agent_id: u64,
    pub config: ProcessConfig,
    pub tag: Option<String>,
    pub seq: u64,
}

/// An agent error as a Connect error.
pub(super) fn agent_error(e: AgentError) -> ConnectError {
    match e {
        AgentError::Remote {
            status, message, ..
        } => {
            let code = match status {
                400 => Code::InvalidArgument,
                404 => Code::NotFound,
                409 => Code::FailedPrecondition,
                413 | 429 => Code::ResourceExhausted,
                _ => Code::Internal,
            };
            ConnectError::new(code, message)
        }
        AgentError::InvalidRequest(m) => ConnectError::invalid(m),
        other => ConnectError::new(Code::Unavailable, other.to_string()),
    }
}

/// The keep-alive period the client asked for.
fn keepalive(headers: &HeaderMap) -> Duration {
    headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(DEFAULT_KEEPALIVE, |s| Duration::from_secs(s.clamp(1, 300)))
}

/// The agent's exec request for `config` in `sbx` (the sandbox's environment under the
/// request's; `/bin/bash` mapped to `/bin/sh` on images without bash).
pub(super) async fn exec_request(
    sbx: &EnvdSandbox,
    config: &ProcessConfig,
) -> Result<ExecRequest, ConnectError> {
    if config.cmd.is_empty() {
        return Err(ConnectError::invalid("process.cmd is empty"));
    }
    let mut argv = vec![sbx.program(&config.cmd).await];
    argv.extend(config.args.iter().cloned());
    let mut env: std::collections::BTreeMap<String, String> = sbx.row.env_vars.clone();
    env.extend(config.envs.iter().map(|(k, v)| (k.clone(), v.clone())));
    let req = ExecRequest {
        argv,
        env,
        cwd: config.cwd.clone().filter(|c| !c.is_empty()),
        ..ExecRequest::default()
    };
    req.validate().map_err(ConnectError::invalid)?;
    Ok(req)
}

/// `Start` (server stream): starts the command, then its `start`, `data`, `keepalive` and `end`
/// events.
async fn start(Extension(sbx): Extension<EnvdSandbox>, headers: HeaderMap, body: Body) -> Response {
    let mut reader = EnvelopeReader::new(body);
    let req: StartRequest = match reader.next().await {
        Ok(Some(req)) => req,
        Ok(None) => return stream_error(ConnectError::invalid("missing StartRequest")),
        Err(e) => return stream_error(e),
    };
    let deadline = match connect::timeout(&headers) {
        Ok(d) => d,
        Err(e) => return stream_error(e),
    };
    if req
        .tag
        .as_ref()
        .is_some_and(|t| t.chars().count() > MAX_TAG_CHARS)
    {
        return stream_error(ConnectError::invalid(format!(
            "tag: at most {MAX_TAG_CHARS} characters"
        )));
    }
    let config = req.process.clone().unwrap_or_default();
    if let Some(pty) = req.pty {
        return super::pty::start(sbx, config, req.tag, pty, deadline, keepalive(&headers)).await;
    }
    let mut exec = match exec_request(&sbx, &config).await {
        Ok(r) => r,
        Err(e) => return stream_error(e),
    };
    exec.keep_stdin = req.stdin.unwrap_or(false);
    let info = match sbx.agent.start_process(&exec).await {
        Ok(info) => info,
        Err(e) => return stream_error(agent_error(e)),
    };
    remember(&sbx, info.pid, info.id, config, req.tag);
    let (tx, resp) = stream_response();
    tokio::spawn(follow(
        sbx,
        info.id,
        info.pid,
        tx,
        deadline,
        keepalive(&headers),
        |event| StartResponse { event: Some(event) },
    ));
    resp
}

fn remember(
    sbx: &EnvdSandbox,
    pid: u32,
    agent_id: u64,
    config: ProcessConfig,
    tag: Option<String>,
) {
    let mut procs = sbx.rt.procs.lock().unwrap_or_else(|e| e.into_inner());
    let seq = procs.values().map(|s| s.seq).max().unwrap_or(0) + 1;
    if procs.len() >= MAX_REMEMBERED
        && let Some(oldest) = procs.iter().min_by_key(|(_, s)| s.seq).map(|(p, _)| *p)
    {
        procs.remove(&oldest);
    }
    procs.insert(
        pid,
        Started {
            agent_id,
            config,
            tag,
            seq,
        },
    );
}

/// Streams a background process's events to an envd client until it ends, the client goes,
/// or the deadline passes (the process keeps running then: `Connect` finds it again).
async fn follow<M, F>(
    sbx: EnvdSandbox,
    id: u64,
    pid: u32,
    tx: StreamSender,
    deadline: Option<Duration>,
    keepalive: Duration,
    wrap: F,
) where
    M: serde::Serialize,
    F: Fn(ProcessEvent) -> M + Send,
{
    let event = |e: process_event::Event| wrap(ProcessEvent { event: Some(e) });
    if !tx
        .send(&event(process_event::Event::Start(
            process_event::StartEvent { pid },
        )))
        .await
    {
        return;
    }
    let mut events = match sbx.agent.follow_process(id, (0, 0)).await {
        Ok(events) => events,
        Err(e) => return tx.end(Some(agent_error(e))).await,
    };
    let until = deadline.map(|d| tokio::time::Instant::now() + d);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    loop {
        let next = tokio::select! {
            next = events.next() => next,
            _ = ping.tick() => {
                let ka = process_event::Event::Keepalive(process_event::KeepAlive {});
                if !tx.send(&event(ka)).await {
                    return;
                }
                continue;
            }
            () = sleep_until(until) => {
                return tx.end(Some(ConnectError::new(
                    Code::DeadlineExceeded,
                    "the stream's deadline passed; the process keeps running (connect to it by pid)",
                ))).await;
            }
            () = tx.closed() => return,
        };
        let data = |output| {
            process_event::Event::Data(process_event::DataEvent {
                output: Some(output),
            })
        };
        use process_event::data_event::Output;
        let out = match next {
            Some(Ok(ExecEvent::Stdout { data: d })) if d.is_empty() => continue,
            Some(Ok(ExecEvent::Stdout { data: d })) => data(Output::Stdout(d.into())),
            Some(Ok(ExecEvent::Stderr { data: d })) => data(Output::Stderr(d.into())),
            Some(Ok(ExecEvent::Exit { code, signal, .. })) => {
                let end = end_event(code, signal);
                if tx.send(&event(process_event::Event::End(end))).await {
                    tx.end(None).await;
                }
                return;
            }
            Some(Ok(ExecEvent::Error { message })) => {
                return tx.end(Some(ConnectError::internal(message))).await;
            }
            Some(Err(e)) => return tx.end(Some(agent_error(e))).await,
            None => {
                return tx
                    .end(Some(ConnectError::new(
                        Code::Unavailable,
                        format!("the agent ended process {pid}'s stream without its exit"),
                    )))
                    .await;
            }
        };
        if !tx.send(&event(out)).await {
            return;
        }
    }
}

/// envd's end event: exit code and `exit status N`, or -1 and the signal.
pub(super) fn end_event(code: Option<i32>, signal: Option<i32>) -> process_event::EndEvent {
    match (code, signal) {
        (Some(code), _) => process_event::EndEvent {
            exit_code: code,
            exited: true,
            status: format!("exit status {code}"),
            error: None,
        },
        (None, Some(sig)) => process_event::EndEvent {
            exit_code: -1,
            exited: false,
            status: format!("signal: {}", signal_name(sig)),
            error: None,
        },
        (None, None) => process_event::EndEvent {
            exit_code: -1,
            exited: false,
            status: "unknown".into(),
            error: Some("the process's exit status is unknown".into()),
        },
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        9 => "killed".into(),
        15 => "terminated".into(),
        2 => "interrupt".into(),
        1 => "hangup".into(),
        n => format!("signal {n}"),
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Which process a selector names.
pub(super) enum Target {
    /// A background process: its pid and agent id.
    Proc { pid: u32, id: u64 },
    /// A PTY session: the pid given to the SDK.
    Pty(u32),
}

/// Resolves a selector (pid or tag) to a process of this sandbox.
pub(super) async fn target(
    sbx: &EnvdSandbox,
    selector: Option<&ProcessSelector>,
) -> Result<Target, ConnectError> {
    let selector = selector
        .and_then(|s| s.selector.as_ref())
        .ok_or_else(|| ConnectError::invalid("process selector (pid or tag) is missing"))?;
    let pid = match selector {
        process_selector::Selector::Pid(pid) => *pid,
        process_selector::Selector::Tag(tag) => {
            let by_tag = |tags: Vec<(u32, Option<String>)>| {
                tags.into_iter()
                    .find(|(_, t)| t.as_deref() == Some(tag))
                    .map(|(p, _)| p)
            };
            let procs: Vec<_> = {
                let procs = sbx.rt.procs.lock().unwrap_or_else(|e| e.into_inner());
                procs.iter().map(|(p, s)| (*p, s.tag.clone())).collect()
            };
            by_tag(procs)
                .or_else(|| by_tag(sbx.rt.ptys.tags()))
                .ok_or_else(|| ConnectError::not_found(format!("no process tagged {tag:?}")))?
        }
    };
    if sbx.rt.ptys.has(pid) {
        return Ok(Target::Pty(pid));
    }
    let known = sbx
        .rt
        .procs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&pid)
        .map(|s| s.agent_id);
    let id = match known {
        Some(id) => id,
        None => sbx
            .agent
            .processes()
            .await
            .map_err(agent_error)?
            .into_iter()
            .filter(|p| p.pid == pid)
            .max_by_key(|p| p.id)
            .map(|p| p.id)
            .ok_or_else(|| ConnectError::not_found(format!("process with pid {pid} not found")))?,
    };
    Ok(Target::Proc { pid, id })
}

/// `Connect` (server stream): the process's output from its first byte, then as it comes.
async fn connect_process(
    Extension(sbx): Extension<EnvdSandbox>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut reader = EnvelopeReader::new(body);
    let req: ConnectRequest = match reader.next().await {
        Ok(Some(req)) => req,
        Ok(None) => return stream_error(ConnectError::invalid("missing ConnectRequest")),
        Err(e) => return stream_error(e),
    };
    let deadline = match connect::timeout(&headers) {
        Ok(d) => d,
        Err(e) => return stream_error(e),
    };
    match target(&sbx, req.process.as_ref()).await {
        Ok(Target::Proc { pid, id }) => {
            let (tx, resp) = stream_response();
            tokio::spawn(follow(
                sbx,
                id,
                pid,
                tx,
                deadline,
                keepalive(&headers),
                |event| ConnectResponse { event: Some(event) },
            ));
            resp
        }
        Ok(Target::Pty(pid)) => super::pty::connect(sbx, pid, deadline, keepalive(&headers)).await,
        Err(e) => stream_error(e),
    }
}

/// `List`: the running processes.
async fn list(Extension(sbx): Extension<EnvdSandbox>, body: Body) -> Response {
    if let Err(e) = unary_request::<ListRequest>(body).await {
        return e.into_response_unary();
    }
    let running = match sbx.agent.processes().await {
        Ok(p) => p,
        Err(e) => return agent_error(e).into_response_unary(),
    };
    let known: HashMap<u32, Started> = sbx
        .rt
        .procs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut processes: Vec<ProcessInfo> = running
        .into_iter()
        .filter(|p| p.running)
        .map(|p| match known.get(&p.pid) {
            Some(s) => ProcessInfo {
                config: Some(s.config.clone()),
                pid: p.pid,
                tag: s.tag.clone(),
            },
            None => ProcessInfo {
                config: Some(ProcessConfig {
                    cmd: p.command,
                    ..ProcessConfig::default()
                }),
                pid: p.pid,
                tag: None,
            },
        })
        .collect();
    processes.extend(sbx.rt.ptys.list());
    unary_response(&ListResponse { processes })
}

/// Writes stdin to a background process, or input to a PTY.
async fn input(
    sbx: &EnvdSandbox,
    target: Target,
    input: Option<process_input::Input>,
) -> Result<(), ConnectError> {
    match (target, input) {
        (_, None) => Ok(()),
        (Target::Proc { id, .. }, Some(process_input::Input::Stdin(data))) => sbx
            .agent
            .process_stdin(id, data.to_vec(), false)
            .await
            .map_err(agent_error),
        (
            Target::Pty(pid),
            Some(process_input::Input::Pty(data) | process_input::Input::Stdin(data)),
        ) => sbx.rt.ptys.input(pid, data).await,
        (Target::Proc { pid, .. }, Some(process_input::Input::Pty(_))) => Err(ConnectError::new(
            Code::FailedPrecondition,
            format!("process {pid} has no PTY"),
        )),
    }
}

/// `SendInput`.
async fn send_input(Extension(sbx): Extension<EnvdSandbox>, body: Body) -> Response {
    let result = async {
        let req: SendInputRequest = unary_request(body).await?;
        let target = target(&sbx, req.process.as_ref()).await?;
        input(&sbx, target, req.input.and_then(|i| i.input)).await
    }
    .await;
    match result {
        Ok(()) => unary_response(&SendInputResponse {}),
        Err(e) => e.into_response_unary(),
    }
}

/// `StreamInput` (client stream): a `start` naming the process, then `data` events in order.
async fn stream_input(Extension(sbx): Extension<EnvdSandbox>, body: Body) -> Response {
    let mut reader = EnvelopeReader::new(body);
    let result = async {
        let mut target_of: Option<Target> = None;
        while let Some(req) = reader.next::<StreamInputRequest>().await? {
            match req.event {
                Some(stream_input_request::Event::Start(s)) => {
                    target_of = Some(target(&sbx, s.process.as_ref()).await?);
                }
                Some(stream_input_request::Event::Data(d)) => {
                    let t = target_of.as_ref().ok_or_else(|| {
                        ConnectError::invalid("StreamInput: data before the start event")
                    })?;
                    let t = match t {
                        Target::Proc { pid, id } => Target::Proc { pid: *pid, id: *id },
                        Target::Pty(p) => Target::Pty(*p),
                    };
                    input(&sbx, t, d.input.and_then(|i| i.input)).await?;
                }
                Some(stream_input_request::Event::Keepalive(_)) | None => {}
            }
        }
        Ok::<(), ConnectError>(())
    }
    .await;
    let (tx, resp) = stream_response();
    tokio::spawn(async move {
        match result {
            Ok(()) => {
                if tx.send(&StreamInputResponse {}).await {
                    tx.end(None).await;
                }
            }
            Err(e) => tx.end(Some(e)).await,
        }
    });
    resp
}

/// `CloseStdin`: EOF on a background process's stdin.
async fn close_stdin(Extension(sbx): Extension<EnvdSandbox>, body: Body) -> Response {
    let result = async {
        let req: CloseStdinRequest = unary_request(body).await?;
        match target(&sbx, req.process.as_ref()).await? {
            Target::Proc { id, .. } => sbx
                .agent
                .process_stdin(id, Vec::new(), true)
                .await
                .map_err(agent_error),
            Target::Pty(pid) => Err(ConnectError::new(
                Code::FailedPrecondition,
                format!("process {pid} is a PTY: send Ctrl-D (0x04) instead"),
            )),
        }
    }
    .await;
    match result {
        Ok(()) => unary_response(&CloseStdinResponse {}),
        Err(e) => e.into_response_unary(),
    }
}

/// `SendSignal`: SIGTERM or SIGKILL to the process's whole group (or its PTY session).
async fn send_signal(Extension(sbx): Extension<EnvdSandbox>, body: Body) -> Response {
    let result = async {
        let req: SendSignalRequest = unary_request(body).await?;
        let signal = match Signal::try_from(req.signal) {
            Ok(Signal::Sigkill) => ProcessSignal::Kill,
            Ok(Signal::Sigterm) => ProcessSignal::Term,
            _ => {
                return Err(ConnectError::invalid(
                    "signal must be SIGNAL_SIGTERM or SIGNAL_SIGKILL",
                ));
            }
        };
        match target(&sbx, req.process.as_ref()).await? {
            Target::Proc { id, .. } => sbx
                .agent
                .signal_process(id, signal)
                .await
                .map(|_| ())
                .map_err(agent_error),
            Target::Pty(pid) => sbx.rt.ptys.kill(&sbx.agent, pid).await,
        }
    }
    .await;
    match result {
        Ok(()) => unary_response(&SendSignalResponse {}),
        Err(e) => e.into_response_unary(),
    }
}

/// `Update`: a PTY's new size.
async fn update(Extension(sbx): Extension<EnvdSandbox>, body: Body) -> Response {
    let result = async {
        let req: UpdateRequest = unary_request(body).await?;
        let size = req.pty.and_then(|p| p.size);
        match (target(&sbx, req.process.as_ref()).await?, size) {
            (Target::Pty(pid), Some(size)) => sbx.rt.ptys.resize(pid, size.cols, size.rows).await,
            (Target::Pty(_), None) => Ok(()),
            (Target::Proc { pid, .. }, _) => Err(ConnectError::new(
                Code::FailedPrecondition,
                format!("process {pid} has no PTY to resize"),
            )),
        }
    }
    .await;
    match result {
        Ok(()) => unary_response(&UpdateResponse {}),
        Err(e) => e.into_response_unary(),
    }
}
