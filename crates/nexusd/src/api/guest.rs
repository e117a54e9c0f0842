//! `/v1/vms/{vm}/start|stop|restart|exec|files|console|boots`: the life cycle and the guest.
//! Exec output and file contents stream through without being buffered whole.

use axum::Json;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::TryStreamExt;
use nexus_lib::agent::{ExecRequest, FileStat, MAX_REQUEST_JSON_BYTES};
use nexus_lib::api::{
    BootRecord, ConsoleQuery, ErrorBody, FileQuery, MAX_CONSOLE_OFFSET, MAX_CONSOLE_TAIL, Vm,
};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery};

/// Largest console excerpt returned at once.
const MAX_CONSOLE_BYTES: u64 = 1 << 20;
/// Header carrying the console offset to continue from (`?offset=`).
pub const CONSOLE_OFFSET_HEADER: &str = "x-console-offset";

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start_vm))
        .routes(routes!(stop_vm))
        .routes(routes!(restart_vm))
        .routes(routes!(exec).layer(DefaultBodyLimit::max(MAX_REQUEST_JSON_BYTES)))
        .routes(routes!(read_file, write_file).layer(DefaultBodyLimit::disable()))
        .routes(routes!(console))
        .routes(routes!(boots))
}

/// Boots the VM and waits until its guest agent answers.
#[utoipa::path(
    post, path = "/v1/vms/{vm}/start", tag = "vms",
    params(("vm" = String, Path, description = "VM id or name")),
    responses((status = 200, description = "Running", body = Vm),
               (status = 404, description = "No such VM", body = ErrorBody),
               (status = 409, description = "Wrong state or no root drive", body = ErrorBody),
               (status = 500, description = "The boot failed; the reason names the phase and quotes the console", body = ErrorBody),
               (status = 503, description = "No boot assets or no usable VMM", body = ErrorBody))
)]
async fn start_vm(
    State(s): State<AppState>,
    ApiPath(vm): ApiPath<String>,
) -> Result<Json<Vm>, ApiError> {
    Ok(Json(s.lifecycle.start(&vm).await?))
}

/// Asks the guest to power off; escalates to SIGTERM and SIGKILL after the stop timeout.
#[utoipa::path(
    post, path = "/v1/vms/{vm}/stop", tag = "vms",
    params(("vm" = String, Path, description = "VM id or name")),
    responses((status = 200, description = "Stopped", body = Vm),
               (status = 404, description = "No such VM", body = ErrorBody),
               (status = 409, description = "Not running", body = ErrorBody))
)]
async fn stop_vm(
    State(s): State<AppState>,
    ApiPath(vm): ApiPath<String>,
) -> Result<Json<Vm>, ApiError> {
    Ok(Json(s.lifecycle.stop(&vm).await?))
}

/// Stops the VM if it is live, then starts it.
#[utoipa::path(
    post, path = "/v1/vms/{vm}/restart", tag = "vms",
    params(("vm" = String, Path, description = "VM id or name")),
    responses((status = 200, description = "Running again", body = Vm),
               (status = 404, description = "No such VM", body = ErrorBody),
               (status = 409, description = "Wrong state", body = ErrorBody))
)]
async fn restart_vm(
    State(s): State<AppState>,
    ApiPath(vm): ApiPath<String>,
) -> Result<Json<Vm>, ApiError> {
    Ok(Json(s.lifecycle.restart(&vm).await?))
}

/// Runs a command in the guest. The response streams newline-delimited JSON events as the
/// command produces output: `stdout`/`stderr` chunks (base64), then `exit` (or `error`).
#[utoipa::path(
    post, path = "/v1/vms/{vm}/exec", tag = "guest", request_body = ExecRequest,
    params(("vm" = String, Path, description = "VM id or name")),
    responses((status = 200, description = "Stream of ExecEvent lines", content_type = "application/x-ndjson", body = nexus_lib::agent::ExecEvent),
               (status = 404, description = "No such VM", body = ErrorBody),
               (status = 409, description = "Not running", body = ErrorBody),
               (status = 422, description = "Invalid request", body = ErrorBody),
               (status = 502, description = "The guest agent failed", body = ErrorBody))
)]
async fn exec(
    State(s): State<AppState>,
    ApiPath(vm): ApiPath<String>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> Result<Response, ApiError> {
    req.validate().map_err(|m| ApiError::invalid("argv", m))?;
    let (_, agent) = s.lifecycle.agent(&vm).await?;
    let lines = agent.exec_raw(&req).await?;
    Ok(stream_response(
        Body::from_stream(lines),
        "application/x-ndjson",
    ))
}

/// Streams a file out of the guest.
#[utoipa::path(
    get, path = "/v1/vms/{vm}/files", tag = "guest",
    params(("vm" = String, Path, description = "VM id or name"), FileQuery),
    responses((status = 200, description = "File content", content_type = "application/octet-stream"),
               (status = 404, description = "No such VM or file", body = ErrorBody),
               (status = 409, description = "Not running", body = ErrorBody))
)]
async fn read_file(
    State(s): State<AppState>,
    ApiPath(vm): ApiPath<String>,
    ApiQuery(q): ApiQuery<FileQuery>,
) -> Result<Response, ApiError> {
    nexus_lib::agent::validate_path(&q.path).map_err(|m| ApiError::invalid("path", m))?;
    let (_, agent) = s.lifecycle.agent(&vm).await?;
    let content = agent.read_file(&q.path).await?;
    Ok(stream_response(
        Body::from_stream(content),
        "application/octet-stream",
    ))
}

/// Streams the request body into a file in the guest (written aside, then renamed).
#[utoipa::path(
    put, path = "/v1/vms/{vm}/files", tag = "guest",
    params(("vm" = String, Path, description = "VM id or name"), FileQuery),
    request_body(content = String, content_type = "application/octet-stream"),
    responses((status = 200, description = "Written", body = FileStat),
               (status = 404, description = "No such VM or directory", body = ErrorBody),
               (status = 409, description = "Not running", body = ErrorBody))
)]
async fn write_file(
    State(s): State<AppState>,
    ApiPath(vm): ApiPath<String>,
    ApiQuery(q): ApiQuery<FileQuery>,
    body: Body,
) -> Result<Json<FileStat>, ApiError> {
    nexus_lib::agent::validate_path(&q.path).map_err(|m| ApiError::invalid("path", m))?;
    let mode = match q.mode.as_deref() {
        None => 0o644,
        Some(m) => u32::from_str_radix(m, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| ApiError::invalid("mode", format!("{m:?} is not an octal mode")))?,
    };
    let (_, agent) = s.lifecycle.agent(&vm).await?;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    Ok(Json(agent.write_file(&q.path, mode, stream).await?))
}

/// The VM's serial console: the last `tail` lines, or everything after byte `offset` (for
/// following); the `x-console-offset` header says where to continue.
#[utoipa::path(
    get, path = "/v1/vms/{vm}/console", tag = "vms",
    params(("vm" = String, Path, description = "VM id or name"), ConsoleQuery),
    responses((status = 200, description = "Console text", content_type = "text/plain",
                headers(("x-console-offset" = u64, description = "The byte offset to continue from"))),
               (status = 400, description = "Bad query: `tail` over 10000, `offset` over 2^53, or an unknown parameter", body = ErrorBody),
               (status = 404, description = "No such VM", body = ErrorBody))
)]
async fn console(
    State(s): State<AppState>,
    ApiPath(vm): ApiPath<String>,
    ApiQuery(q): ApiQuery<ConsoleQuery>,
) -> Result<Response, ApiError> {
    if q.tail.is_some_and(|t| t > MAX_CONSOLE_TAIL) {
        return Err(
            ApiError::bad_request(format!("tail is at most {MAX_CONSOLE_TAIL}")).with_field("tail"),
        );
    }
    if q.offset.is_some_and(|o| o > MAX_CONSOLE_OFFSET) {
        return Err(
            ApiError::bad_request(format!("offset is at most {MAX_CONSOLE_OFFSET}"))
                .with_field("offset"),
        );
    }
    let vm = s.vms.get(&vm).await?;
    let log = s.lifecycle.console_log(vm.id);
    let tail = q.tail.unwrap_or(100);
    let (text, end) = tokio::task::spawn_blocking(move || read_console(&log, q.offset, tail))
        .await
        .map_err(|e| ApiError::from(crate::store::StoreError::Worker(e)))?;
    let mut resp = Response::new(Body::from(text));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CONSOLE_OFFSET_HEADER, HeaderValue::from(end));
    Ok(resp)
}

/// Every boot of the VM, oldest first (the last 100), with phase timings.
#[utoipa::path(
    get, path = "/v1/vms/{vm}/boots", tag = "vms",
    params(("vm" = String, Path, description = "VM id or name")),
    responses((status = 200, description = "Boots", body = Vec<BootRecord>),
               (status = 404, description = "No such VM", body = ErrorBody))
)]
async fn boots(
    State(s): State<AppState>,
    ApiPath(vm): ApiPath<String>,
) -> Result<Json<Vec<BootRecord>>, ApiError> {
    Ok(Json(s.vms.boots(&vm).await?))
}

pub(super) fn stream_response(body: Body, content_type: &'static str) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Reads the console: bytes after `offset` (bounded), or the last `tail` lines. Returns the
/// text and the offset of its end. An offset past the end (the log was rotated) starts over.
fn read_console(log: &std::path::Path, offset: Option<u64>, tail: usize) -> (Vec<u8>, u64) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(log) else {
        return (Vec::new(), 0);
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = match offset {
        Some(o) if o <= len => o.max(len.saturating_sub(MAX_CONSOLE_BYTES)),
        Some(_) => len.saturating_sub(MAX_CONSOLE_BYTES),
        None => len.saturating_sub(MAX_CONSOLE_BYTES),
    };
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.take(len - start).read_to_end(&mut buf).is_err()
    {
        return (Vec::new(), len);
    }
    let end = start + buf.len() as u64;
    if offset.is_none() {
        let mut newlines = 0;
        let cut = buf.iter().rposition(|b| {
            if *b == b'\n' {
                newlines += 1;
            }
            newlines > tail
        });
        if let Some(i) = cut {
            buf.drain(..=i);
        }
    }
    (buf, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        std::fs::write(&log, "a\nb\nc\nd\n").unwrap();
        let (text, end) = read_console(&log, None, 2);
        assert_eq!((text.as_slice(), end), (&b"c\nd\n"[..], 8));
    }

    #[test]
    fn console_offset_returns_what_follows() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        std::fs::write(&log, "hello world").unwrap();
        assert_eq!(read_console(&log, Some(6), 0).0, b"world");
        assert_eq!(read_console(&log, Some(99), 0).0, b"hello world");
    }
}
