//! `/v1/vms/{vm}/terminal` (a guest PTY session over a WebSocket) and
//! `/v1/vms/{vm}/sessions[/{id}]`.
//!
//! The query is validated and the session opened on the agent before the upgrade, so every
//! refusal (bad size, no such session, VM not running, too many sessions) is an ordinary JSON
//! error. After it, binary messages carry terminal bytes and text messages carry
//! [`TermControl`] JSON; message sizes and the write buffer toward a slow client are bounded.

use axum::Json;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use nexus_lib::api::ErrorBody;
use nexus_lib::terminal::{
    MAX_FRAME_PAYLOAD, SessionInfo, TermControl, TermFrame, TerminalQuery, parse_terminal_query,
    validate_session_id, validate_size,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::ApiPath;
use crate::agent::{AgentError, TerminalStream};

/// Largest WebSocket message or frame a client may send.
const MAX_WS_MESSAGE: usize = MAX_FRAME_PAYLOAD + 1024;
/// Bytes buffered toward one WebSocket client before sending waits (then the guest's output
/// waits in HTTP/2 flow control, not in host memory).
const MAX_WS_WRITE_BUFFER: usize = 256 * 1024;
/// Close codes: normal (the session ended or the server closed it), policy (bad input).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_POLICY: u16 = 1008;
/// How long the answer to a client's close may take to leave.
const CLOSE_REPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Most terminal WebSockets open at once across all VMs and listeners. Each VM's agent bounds its
/// own sessions and clients; this bounds the host side (tasks, buffers, descriptors) whatever the
/// number of VMs.
pub const MAX_TERMINALS: usize = 512;

/// Slots for open terminal WebSockets, one held by each until it closes.
#[derive(Debug, Clone)]
pub struct TerminalSlots(std::sync::Arc<tokio::sync::Semaphore>);

impl Default for TerminalSlots {
    fn default() -> Self {
        Self(std::sync::Arc::new(tokio::sync::Semaphore::new(
            MAX_TERMINALS,
        )))
    }
}

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(terminal))
        .routes(routes!(sessions))
        .routes(routes!(kill_session))
}

/// Opens a terminal (a new PTY session, or an existing one with `session=`) and upgrades to a
/// WebSocket: binary messages are terminal bytes both ways; text messages are JSON control
/// messages: `{"type":"resize","cols":C,"rows":R}` and `{"type":"signal","signal":N}` from the
/// client; `{"type":"session","id":…}` first, then `{"type":"exit","code":…,"signal":…}` or
/// `{"type":"closed","reason":…}` last from the server. The scrollback (up to 1 MiB) is replayed
/// on attach. Closing the WebSocket detaches; the session keeps running.
#[utoipa::path(
    get, path = "/v1/vms/{vm}/terminal", tag = "guest",
    params(("vm" = String, Path, description = "VM id or name"), TerminalQuery),
    responses((status = 101, description = "Switching to the WebSocket protocol"),
               (status = 400, description = "Not a WebSocket upgrade request", body = ErrorBody),
               (status = 404, description = "No such VM or session", body = ErrorBody),
               (status = 409, description = "VM not running, or too many sessions or clients", body = ErrorBody),
               (status = 422, description = "Invalid query", body = ErrorBody),
               (status = 503, description = "Too many terminals open on this host", body = ErrorBody),
               (status = 502, description = "The guest agent failed", body = ErrorBody))
)]
async fn terminal(
    State(s): State<AppState>,
    ApiPath(vm): ApiPath<String>,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let open = parse_terminal_query(query.as_deref().unwrap_or(""))
        .map_err(|(field, m)| ApiError::invalid(field, m))?;
    let ws = ws.map_err(|e| {
        ApiError::bad_request(format!("this endpoint needs a WebSocket upgrade: {e}"))
    })?;
    let slot = s.terminals.0.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_terminals",
            format!("{MAX_TERMINALS} terminals are open on this host; close one and retry"),
        )
    })?;
    let (vm, agent) = s.lifecycle.agent(&vm).await?;
    let stream = agent.terminal(open).await.map_err(conflict_as_409)?;
    let vm_id = vm.id.to_string();
    Ok(ws
        .max_message_size(MAX_WS_MESSAGE)
        .max_frame_size(MAX_WS_MESSAGE)
        .max_write_buffer_size(MAX_WS_WRITE_BUFFER)
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            pump(socket, stream, s, vm_id).await;
        }))
}

/// The agent's "too many" refusals are conflicts with the VM's state, not invalid input.
fn conflict_as_409(e: AgentError) -> ApiError {
    match e {
        AgentError::Remote {
            status: 409,
            message,
            ..
        } => ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            crate::sanitize::clean(format!("guest: {message}"), 1024),
        ),
        other => other.into(),
    }
}

/// Moves bytes and control messages between the WebSocket and the guest until either ends.
async fn pump(mut socket: WebSocket, mut stream: TerminalStream, s: AppState, vm: String) {
    let end = loop {
        tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(data))) => {
                    if stream.input.send(TermFrame::Data(data)).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(Message::Text(text))) => match client_control(text.as_str()) {
                    Ok(control) => {
                        if stream.input.send(TermFrame::Control(control)).await.is_err() {
                            break None;
                        }
                    }
                    Err(reason) => break Some((CLOSE_POLICY, TermControl::Closed { reason })),
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                // The client closed: answer its close (bounded), detach; the session keeps running.
                Some(Ok(Message::Close(_))) => {
                    let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, futures_util::SinkExt::close(&mut socket)).await;
                    return;
                }
                Some(Err(_)) | None => return,
            },
            frame = stream.next() => match frame {
                Some(Ok(TermFrame::Data(data))) => {
                    if socket.send(Message::Binary(data)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(TermFrame::Control(c @ TermControl::Session { .. }))) => {
                    if send_control(&mut socket, &c).await.is_err() {
                        return;
                    }
                }
                Some(Ok(TermFrame::Control(c @ (TermControl::Exit { .. } | TermControl::Closed { .. })))) => {
                    break Some((CLOSE_NORMAL, c));
                }
                // Anything else from the guest has no meaning here.
                Some(Ok(TermFrame::Control(_))) => {}
                Some(Err(_)) | None => {
                    break Some((CLOSE_NORMAL, TermControl::Closed { reason: lost_reason(&s, &vm).await }));
                }
            },
        }
    };
    if let Some((code, control)) = end {
        let _ = send_control(&mut socket, &control).await;
        let reason = match &control {
            TermControl::Exit { .. } => "session ended".into(),
            TermControl::Closed { reason } => truncate(reason, 120),
            _ => String::new(),
        };
        let _ = socket
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
    }
}

/// Why the guest stream ended without an exit: the VM stopped, or the agent went away.
async fn lost_reason(s: &AppState, vm: &str) -> String {
    match s.vms.get(vm).await {
        Ok(v) if v.state != nexus_lib::api::VmState::Running => format!(
            "the VM {} is {} (it was stopped): the session ended with it",
            v.name, v.state
        ),
        Ok(v) => format!(
            "the connection to the guest agent of VM {} broke; `vm attach` may reach the session again",
            v.name
        ),
        Err(_) => "the VM was deleted: the session ended with it".into(),
    }
}

/// The control messages a client may send.
fn client_control(text: &str) -> Result<TermControl, String> {
    let control: TermControl =
        serde_json::from_str(text).map_err(|e| format!("malformed control message: {e}"))?;
    match control {
        TermControl::Resize { cols, rows } => validate_size(cols, rows).map(|()| control),
        TermControl::Signal { signal } if (1..=64).contains(&signal) => Ok(control),
        TermControl::Signal { signal } => Err(format!("signal: {signal} is not 1 to 64")),
        _ => Err("a client may send only resize and signal control messages".into()),
    }
}

async fn send_control(socket: &mut WebSocket, control: &TermControl) -> Result<(), axum::Error> {
    let json = serde_json::to_string(control).unwrap_or_default();
    socket.send(Message::Text(json.into())).await
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The VM's terminal sessions, running and recently exited.
#[utoipa::path(
    get, path = "/v1/vms/{vm}/sessions", tag = "guest",
    params(("vm" = String, Path, description = "VM id or name")),
    responses((status = 200, description = "Sessions", body = Vec<SessionInfo>),
               (status = 404, description = "No such VM", body = ErrorBody),
               (status = 409, description = "Not running", body = ErrorBody),
               (status = 502, description = "The guest agent failed", body = ErrorBody))
)]
async fn sessions(
    State(s): State<AppState>,
    ApiPath(vm): ApiPath<String>,
) -> Result<Json<Vec<SessionInfo>>, ApiError> {
    let (_, agent) = s.lifecycle.agent(&vm).await?;
    Ok(Json(agent.sessions().await?))
}

/// Kills a session's processes (SIGKILL to its process group); attached clients see the exit.
#[utoipa::path(
    delete, path = "/v1/vms/{vm}/sessions/{id}", tag = "guest",
    params(("vm" = String, Path, description = "VM id or name"),
           ("id" = String, Path, description = "Session id (12 lowercase hex digits)", pattern = "^[0-9a-f]{12}$")),
    responses((status = 204, description = "Killed"),
               (status = 404, description = "No such VM or session", body = ErrorBody),
               (status = 409, description = "Not running", body = ErrorBody),
               (status = 422, description = "Malformed session id", body = ErrorBody))
)]
async fn kill_session(
    State(s): State<AppState>,
    ApiPath((vm, id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    validate_session_id(&id).map_err(|m| ApiError::invalid("id", m))?;
    let (_, agent) = s.lifecycle.agent(&vm).await?;
    agent.kill_session(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
