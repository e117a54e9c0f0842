//! File endpoints: streamed read and write (temp file + rename), stat, bounded listing, remove.
//! Contents are never held in memory as a whole.

use std::fs::Metadata;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use nexus_lib::agent::{DirEntry, DirListing, FileKind, FileStat, MAX_LIST_ENTRIES};
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

use crate::server::{self, ApiError, ApiResult, Query};

const READ_CHUNK_BYTES: usize = 64 * 1024;
const DEFAULT_MODE: u32 = 0o644;

pub async fn read(req: &Request<Incoming>) -> ApiResult {
    let path = Query::of(req)?.path()?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::io(&e, &path))?;
    let meta = file.metadata().await.map_err(|e| ApiError::io(&e, &path))?;
    if !meta.is_file() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_a_file",
            format!("{path} is not a regular file"),
        ));
    }
    let chunks = ReaderStream::with_capacity(file, READ_CHUNK_BYTES);
    Ok(server::streamed("application/octet-stream", chunks))
}

pub async fn write(req: Request<Incoming>) -> ApiResult {
    let query = Query::of(&req)?;
    let path = query.path()?;
    let mode = match query.get("mode") {
        None => DEFAULT_MODE,
        Some(m) => u32::from_str_radix(m, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| ApiError::bad_request(format!("mode {m} is not an octal permission")))?,
    };
    let target = Path::new(&path);
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(ApiError::bad_request(format!("{path} names no file")));
    };
    let temp = dir.join(format!(
        ".{}.nexus-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let temp_str = temp.to_string_lossy().into_owned();
    let result = write_temp(&temp, mode, req.into_body()).await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&temp).await;
        return Err(e.into_api(&temp_str));
    }
    if let Err(e) = tokio::fs::rename(&temp, target).await {
        let _ = tokio::fs::remove_file(&temp).await;
        return Err(ApiError::io(&e, &path));
    }
    let meta = tokio::fs::symlink_metadata(target)
        .await
        .map_err(|e| ApiError::io(&e, &path))?;
    server::json(StatusCode::OK, &file_stat(&path, &meta))
}

enum WriteError {
    Io(std::io::Error),
    Body(String),
}

impl WriteError {
    fn into_api(self, path: &str) -> ApiError {
        match self {
            Self::Io(e) => ApiError::io(&e, path),
            Self::Body(msg) => ApiError::bad_request(format!("request body broke: {msg}")),
        }
    }
}

async fn write_temp(temp: &Path, mode: u32, mut body: Incoming) -> Result<(), WriteError> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(temp)
        .await
        .map_err(WriteError::Io)?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| WriteError::Body(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            file.write_all(data).await.map_err(WriteError::Io)?;
        }
    }
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .await
        .map_err(WriteError::Io)?;
    file.sync_all().await.map_err(WriteError::Io)
}

pub async fn stat(req: &Request<Incoming>) -> ApiResult {
    let path = Query::of(req)?.path()?;
    let meta = tokio::fs::symlink_metadata(&path)
        .await
        .map_err(|e| ApiError::io(&e, &path))?;
    server::json(StatusCode::OK, &file_stat(&path, &meta))
}

pub async fn list(req: &Request<Incoming>) -> ApiResult {
    let path = Query::of(req)?.path()?;
    let mut dir = tokio::fs::read_dir(&path)
        .await
        .map_err(|e| ApiError::io(&e, &path))?;
    let mut entries = Vec::new();
    let mut truncated = false;
    while let Some(entry) = dir
        .next_entry()
        .await
        .map_err(|e| ApiError::io(&e, &path))?
    {
        if entries.len() == MAX_LIST_ENTRIES {
            truncated = true;
            break;
        }
        let Ok(meta) = entry.metadata().await else {
            continue;
        };
        entries.push(DirEntry {
            name: entry.file_name().to_string_lossy().into_owned(),
            kind: kind(&meta),
            size: meta.len(),
            mode: meta.mode() & 0o7777,
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    server::json(
        StatusCode::OK,
        &DirListing {
            path,
            entries,
            truncated,
        },
    )
}

pub async fn remove(req: &Request<Incoming>) -> ApiResult {
    let query = Query::of(req)?;
    let path = query.path()?;
    let recursive = query.flag("recursive")?;
    if Path::new(&path).parent().is_none() {
        return Err(ApiError::bad_request("refusing to remove /"));
    }
    let meta = tokio::fs::symlink_metadata(&path)
        .await
        .map_err(|e| ApiError::io(&e, &path))?;
    let result = match (meta.is_dir(), recursive) {
        (true, true) => tokio::fs::remove_dir_all(&path).await,
        (true, false) => tokio::fs::remove_dir(&path).await,
        (false, _) => tokio::fs::remove_file(&path).await,
    };
    result.map_err(|e| ApiError::io(&e, &path))?;
    Ok(http::Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap_or_default())
}

fn kind(meta: &Metadata) -> FileKind {
    let ft = meta.file_type();
    if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    }
}

fn file_stat(path: &str, meta: &Metadata) -> FileStat {
    FileStat {
        path: path.to_string(),
        kind: kind(meta),
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_ms: meta.mtime() * 1000 + meta.mtime_nsec() / 1_000_000,
    }
}
