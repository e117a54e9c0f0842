//! The agent's HTTP/2 server: connection settings and limits, routing, JSON and error replies.
//!
//! Routing is a plain `match` on method and path: the agent has a handful of endpoints and stays
//! small without a router framework.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use nexus_lib::agent::{
    self as proto, AgentInfo, BootTimes, ErrorBody, ErrorDetail, Handshake, ShutdownAccepted,
};
use serde::Serialize;
use tokio::sync::{Notify, Semaphore};

use crate::session::Sessions;
use crate::vsock::VsockListener;
use crate::{exec, files, init, mcp_servers, processes, sysinfo, terminal};

pub type Body = UnsyncBoxBody<Bytes, io::Error>;
pub type ApiResult = Result<Response<Body>, ApiError>;

const MAX_CONNECTIONS: usize = 64;
const MAX_CONCURRENT_STREAMS: u32 = 256;
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
const MAX_FRAME_BYTES: u32 = 64 * 1024;
const STREAM_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
const MAX_SEND_BUF_BYTES: usize = 1024 * 1024;

pub struct State {
    pub boot: BootTimes,
    pub shutdown: Notify,
    pub sessions: Arc<Sessions>,
    pub processes: Arc<processes::Registry>,
    pub mcp_servers: mcp_servers::Servers,
}

/// Accepts vsock connections until a shutdown is requested; returns the process exit code.
pub async fn run(listener: VsockListener, state: Arc<State>) -> i32 {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let accept_loop = async {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok(stream) => stream,
                Err(e) => {
                    init::log(&format!("accept: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(route(req, state).await) }
                });
                let _ = connection_builder()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                drop(permit);
            });
        }
    };
    tokio::select! {
        () = accept_loop => 1,
        () = state.shutdown.notified() => {
            // Give the reply to `POST /v1/shutdown` time to leave before PID 1 stops everything.
            tokio::time::sleep(Duration::from_millis(100)).await;
            init::EXIT_SHUTDOWN
        }
    }
}

fn connection_builder() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_send_buf_size(MAX_SEND_BUF_BYTES);
    builder
}

async fn route(req: Request<Incoming>, state: Arc<State>) -> Response<Body> {
    let result = match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/v1/handshake") => handshake(&req, &state),
        (Method::POST, "/v1/exec") => exec::handle(req).await,
        (Method::GET, "/v1/files") => files::read(&req).await,
        (Method::PUT, "/v1/files") => files::write(req).await,
        (Method::DELETE, "/v1/files") => files::remove(&req).await,
        (Method::GET, "/v1/stat") => files::stat(&req).await,
        (Method::GET, "/v1/list") => files::list(&req).await,
        (Method::GET, "/v1/info") => info().await,
        (Method::POST, "/v1/terminal") => terminal::open(req, &state.sessions).await,
        (Method::GET, "/v1/sessions") => terminal::list(&state.sessions),
        (Method::DELETE, "/v1/sessions") => terminal::kill(&req, &state.sessions),
        (Method::POST, "/v1/processes") => processes::handle_start(req, &state.processes).await,
        (Method::GET, "/v1/processes") => json(StatusCode::OK, &state.processes.list()),
        (Method::GET, "/v1/processes/output") => {
            processes::handle_output(&req, &state.processes).await
        }
        (Method::GET, "/v1/mcp-servers") => json(StatusCode::OK, &state.mcp_servers.statuses()),
        (Method::PUT, "/v1/mcp-servers") => mcp_servers::handle_set(req, &state.mcp_servers).await,
        (Method::POST, "/v1/mcp-servers/connect") => {
            mcp_servers::handle_connect(req, &state.mcp_servers).await
        }
        (Method::POST, "/v1/processes/signal") => {
            processes::handle_signal(req, &state.processes).await
        }
        (Method::POST, "/v1/shutdown") => {
            state.shutdown.notify_one();
            json(
                StatusCode::ACCEPTED,
                &ShutdownAccepted {
                    shutting_down: true,
                },
            )
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint",
        )),
    };
    result.unwrap_or_else(ApiError::into_response)
}

fn handshake(req: &Request<Incoming>, state: &State) -> ApiResult {
    let offered = req
        .headers()
        .get(proto::PROTOCOL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(proto::parse_protocol_header)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "missing or malformed {} header",
                proto::PROTOCOL_HEADER
            ))
        })?;
    let protocol = proto::negotiate(&offered, proto::SUPPORTED_PROTOCOLS).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_protocol",
            format!(
                "host offers protocol {offered:?}, agent supports {:?}",
                proto::SUPPORTED_PROTOCOLS
            ),
        )
    })?;
    json(
        StatusCode::OK,
        &Handshake {
            protocol,
            supported: proto::SUPPORTED_PROTOCOLS.to_vec(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_release: sysinfo::kernel_release(),
            boot: state.boot,
        },
    )
}

async fn info() -> ApiResult {
    let meminfo = tokio::fs::read_to_string("/proc/meminfo")
        .await
        .unwrap_or_default();
    let (mem_total_kib, mem_available_kib) = sysinfo::parse_meminfo(&meminfo);
    json(
        StatusCode::OK,
        &AgentInfo {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: proto::SUPPORTED_PROTOCOLS.to_vec(),
            kernel_release: sysinfo::kernel_release(),
            hostname: sysinfo::hostname(),
            uptime_ms: sysinfo::uptime_ms(),
            mem_total_kib,
            mem_available_kib,
        },
    )
}

/// A JSON reply.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> ApiResult {
    let body = serde_json::to_vec(value).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(response(status, "application/json", full(body)))
}

/// A streamed reply built from a stream of byte chunks.
pub fn streamed<S>(content_type: &str, chunks: S) -> Response<Body>
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    use futures_util::TryStreamExt;
    let body = StreamBody::new(chunks.map_ok(Frame::data));
    response(StatusCode::OK, content_type, BodyExt::boxed_unsync(body))
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn response(status: StatusCode, content_type: &str, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        resp.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    resp
}

/// Reads a whole JSON request body of at most `limit` bytes.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    body: Incoming,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request body over {limit} bytes"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Query parameters of a request.
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn of<B>(req: &Request<B>) -> Result<Self, ApiError> {
        let raw = req.uri().query().unwrap_or("");
        proto::parse_query(raw)
            .map(Self)
            .ok_or_else(|| ApiError::bad_request("malformed query string"))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The validated absolute `path` parameter.
    pub fn path(&self) -> Result<String, ApiError> {
        let path = self
            .get("path")
            .ok_or_else(|| ApiError::bad_request("missing path parameter"))?;
        proto::validate_path(path).map_err(ApiError::bad_request)?;
        Ok(path.to_string())
    }

    /// An optional unsigned integer parameter.
    pub fn number(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::bad_request(format!("{name}={v} is not an unsigned integer"))
                })
            })
            .transpose()
    }

    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("false" | "0") => Ok(false),
            Some("true" | "1") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "{name}={other} is not a boolean"
            ))),
        }
    }
}

/// An error reply: status plus the `{"error":{"code","message"}}` body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    #[cfg(test)]
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// Maps a file-system error on `path` to the matching status.
    pub fn io(err: &io::Error, path: &str) -> Self {
        let (status, code) = match err.kind() {
            io::ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            io::ErrorKind::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
            io::ErrorKind::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
            io::ErrorKind::DirectoryNotEmpty => (StatusCode::CONFLICT, "not_empty"),
            io::ErrorKind::IsADirectory => (StatusCode::BAD_REQUEST, "is_a_directory"),
            io::ErrorKind::NotADirectory => (StatusCode::BAD_REQUEST, "not_a_directory"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "io_error"),
        };
        Self::new(status, code, format!("{path}: {err}"))
    }

    fn into_response(self) -> Response<Body> {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        response(self.status, "application/json", full(bytes))
    }
}
