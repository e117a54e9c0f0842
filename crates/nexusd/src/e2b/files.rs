//! envd's plain HTTP endpoints: `GET /files?path=` (the file's bytes), `POST /files?path=`
//! (an `application/octet-stream` body, or `multipart/form-data` with one part per file, named
//! by the part's file name when several come) and `GET /health`. Content streams through the
//! agent's file calls; parent directories are made as envd makes them. Errors are envd's
//! `{code, message}`.

use axum::body::Body;
use axum::extract::{FromRequest, Query, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};

use super::connect::ConnectError;
use super::filesystem::{guest_path, make_dirs};
use super::process::agent_error;
use super::sandbox::EnvdSandbox;
use super::{E2bError, E2bState};
use crate::agent::AgentError;

/// Most files one multipart upload may carry.
const MAX_PARTS: usize = 1000;

pub(super) fn routes() -> Router<E2bState> {
    Router::new().route(
        "/files",
        get(read)
            .post(write)
            .layer(axum::extract::DefaultBodyLimit::disable()),
    )
}

/// `GET /health` → 204; 502 (what E2B's proxy answers, and the SDK reads as "not running")
/// when the sandbox named by `E2b-Sandbox-Id` is gone or not running.
pub(super) async fn health(
    axum::extract::State(state): axum::extract::State<E2bState>,
    headers: axum::http::HeaderMap,
) -> Result<StatusCode, E2bError> {
    let Some(id) = headers.get("e2b-sandbox-id").and_then(|v| v.to_str().ok()) else {
        return Ok(StatusCode::NO_CONTENT);
    };
    if id.len() > 64 {
        return Err(E2bError::bad_request("E2b-Sandbox-Id is too long"));
    }
    let key = id.to_string();
    let row = state
        .app
        .store
        .call(move |c| crate::store::e2b::get(c, &key))
        .await?;
    let running = match row {
        Some(row) => state
            .app
            .lifecycle
            .agent(&row.vm_id.to_string())
            .await
            .is_ok(),
        None => false,
    };
    if running {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(E2bError::new(
            StatusCode::BAD_GATEWAY,
            format!("sandbox {id} is not running"),
        ))
    }
}

#[derive(Deserialize)]
struct FileQuery {
    path: Option<String>,
}

#[derive(Serialize)]
struct WrittenEntry {
    name: String,
    path: String,
    r#type: &'static str,
}

fn envd_error(e: ConnectError) -> E2bError {
    E2bError::new(e.code.http_status(), e.message)
}

fn agent_err(e: AgentError) -> E2bError {
    envd_error(agent_error(e))
}

/// `GET /files?path=`.
async fn read(
    Extension(sbx): Extension<EnvdSandbox>,
    Query(q): Query<FileQuery>,
) -> Result<Response, E2bError> {
    let path = guest_path(q.path.as_deref().unwrap_or("")).map_err(envd_error)?;
    let stat = sbx.agent.stat(&path).await.map_err(agent_err)?;
    if stat.kind == nexus_lib::agent::FileKind::Dir {
        return Err(E2bError::bad_request(format!("{path} is a directory")));
    }
    let stream = sbx.agent.read_file(&path).await.map_err(agent_err)?;
    let body = Body::from_stream(stream.map_err(std::io::Error::other));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, stat.size.to_string()),
        ],
        body,
    )
        .into_response())
}

/// Makes `path`'s parent directory when it is missing.
async fn ensure_parent(sbx: &EnvdSandbox, path: &str) -> Result<(), E2bError> {
    if let Some((parent, _)) = path.rsplit_once('/')
        && !parent.is_empty()
        && sbx.agent.stat(parent).await.is_err()
    {
        make_dirs(&sbx.agent, parent).await.map_err(envd_error)?;
    }
    Ok(())
}

fn written(path: &str) -> WrittenEntry {
    WrittenEntry {
        name: path.rsplit('/').next().unwrap_or(path).to_string(),
        path: path.to_string(),
        r#type: "file",
    }
}

/// `POST /files?path=`.
async fn write(
    Extension(sbx): Extension<EnvdSandbox>,
    Query(q): Query<FileQuery>,
    req: Request,
) -> Result<Json<Vec<WrittenEntry>>, E2bError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if !content_type.starts_with("multipart/form-data") {
        if req.headers().get(header::CONTENT_ENCODING).is_some() {
            return Err(E2bError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "compressed uploads are not supported",
            ));
        }
        let path = guest_path(
            q.path
                .as_deref()
                .ok_or_else(|| E2bError::bad_request("missing path parameter"))?,
        )
        .map_err(envd_error)?;
        ensure_parent(&sbx, &path).await?;
        let body = req
            .into_body()
            .into_data_stream()
            .map_err(std::io::Error::other);
        sbx.agent
            .write_file(&path, 0o644, body)
            .await
            .map_err(agent_err)?;
        return Ok(Json(vec![written(&path)]));
    }
    let mut multipart = axum::extract::Multipart::from_request(req, &())
        .await
        .map_err(|e| E2bError::bad_request(format!("malformed multipart body: {e}")))?;
    let mut out = Vec::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| E2bError::bad_request(format!("malformed multipart body: {e}")))?
    {
        if out.len() >= MAX_PARTS {
            return Err(E2bError::bad_request(format!(
                "at most {MAX_PARTS} files per upload"
            )));
        }
        let named = field.file_name().map(str::to_string);
        let target = match (&q.path, named) {
            (Some(p), _) if out.is_empty() => p.clone(),
            (_, Some(name)) => name,
            _ => return Err(E2bError::bad_request("a file part has no path")),
        };
        let path = guest_path(&target).map_err(envd_error)?;
        ensure_parent(&sbx, &path).await?;
        let data = field.map_err(std::io::Error::other);
        // The part borrows the multipart reader: stream it through a channel.
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
        let agent = sbx.agent.clone();
        let dest = path.clone();
        let upload = tokio::spawn(async move {
            let body = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            agent.write_file(&dest, 0o644, body).await
        });
        let mut data = std::pin::pin!(data);
        while let Some(chunk) = data.as_mut().try_next().await.transpose() {
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                break;
            }
        }
        drop(tx);
        upload
            .await
            .map_err(|e| E2bError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(agent_err)?;
        out.push(written(&path));
    }
    Ok(Json(out))
}
