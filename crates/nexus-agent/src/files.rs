//! File endpoints: streamed read and write (temp file + rename), stat, bounded listing, remove.
//! Contents are never held in memory as a whole.

use std::fs::Metadata;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use nexus_lib::agent::{
    DirEntry, DirListing, FILE_OFFSET_HEADER, FILE_SIZE_HEADER, FileKind, FileStat,
    MAX_LIST_ENTRIES,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use crate::server::{self, ApiError, ApiResult, Query};

const READ_CHUNK_BYTES: usize = 64 * 1024;
const DEFAULT_MODE: u32 = 0o644;

/// Streams a file, or the part of it from `offset` (default 0) of at most `length` bytes
/// (default: to the end). The reply says where it starts and how big the file is.
pub async fn read(req: &Request<Incoming>) -> ApiResult {
    let query = Query::of(req)?;
    let path = query.path()?;
    let offset = query.number("offset")?.unwrap_or(0);
    let length = query.number("length")?;
    let (size, reader) = open_range(&path, offset, length).await?;
    let chunks = ReaderStream::with_capacity(reader, READ_CHUNK_BYTES);
    let mut resp = server::streamed("application/octet-stream", chunks);
    let headers = resp.headers_mut();
    headers.insert(FILE_OFFSET_HEADER, http::HeaderValue::from(offset));
    headers.insert(FILE_SIZE_HEADER, http::HeaderValue::from(size));
    Ok(resp)
}

/// Opens the regular file `path` positioned at `offset`, limited to `length` bytes; also returns
/// the file's size.
async fn open_range(
    path: &str,
    offset: u64,
    length: Option<u64>,
) -> Result<(u64, tokio::io::Take<tokio::fs::File>), ApiError> {
    let mut file = open_regular(path).await?;
    let size = file
        .metadata()
        .await
        .map_err(|e| ApiError::io(&e, path))?
        .len();
    if offset > 0 {
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| ApiError::io(&e, path))?;
    }
    Ok((size, file.take(length.unwrap_or(u64::MAX))))
}

/// Opens `path` for reading if it is a regular file. Opening a FIFO or some device nodes blocks
/// open(2) until a writer shows up, so the type is checked first, and the open is non-blocking in
/// case the path is swapped in between (regular files ignore `O_NONBLOCK`).
async fn open_regular(path: &str) -> Result<tokio::fs::File, ApiError> {
    let not_a_file = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_a_file",
            format!("{path} is not a regular file"),
        )
    };
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| ApiError::io(&e, path))?;
    if !meta.is_file() {
        return Err(not_a_file());
    }
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .await
        .map_err(|e| ApiError::io(&e, path))?;
    let meta = file.metadata().await.map_err(|e| ApiError::io(&e, path))?;
    if !meta.is_file() {
        return Err(not_a_file());
    }
    Ok(file)
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
    write_atomic(target, mode, req.into_body()).await?;
    let meta = tokio::fs::symlink_metadata(target)
        .await
        .map_err(|e| ApiError::io(&e, &path))?;
    server::json(StatusCode::OK, &file_stat(&path, &meta))
}

/// Streams `body` into a temp file next to `target`, then renames it over `target`. The temp
/// name is unique per request, so concurrent writes to one path cannot clobber each other's temp
/// files; the last rename wins.
async fn write_atomic<B>(target: &Path, mode: u32, body: B) -> Result<(), ApiError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let path = target.to_string_lossy();
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(ApiError::bad_request(format!("{path} names no file")));
    };
    let temp = dir.join(temp_name(&name.to_string_lossy()));
    let temp_str = temp.to_string_lossy().into_owned();
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .await
        .map_err(|e| ApiError::io(&e, &temp_str))?;
    // From here on the temp file is ours: removed on every error and on cancellation.
    let guard = TempGuard(Some(temp));
    write_body(file, mode, body)
        .await
        .map_err(|e| e.into_api(&temp_str))?;
    tokio::fs::rename(&temp_str, target)
        .await
        .map_err(|e| ApiError::io(&e, &path))?;
    guard.disarm();
    Ok(())
}

/// `.{name}.nexus-{pid}-{n}` with `n` unique within this process.
fn temp_name(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(".{name}.nexus-{}-{n}", std::process::id())
}

/// Removes a temp file when dropped unless disarmed, so a failed or cancelled write (the host
/// dropping the request mid-upload) leaves nothing behind.
struct TempGuard(Option<PathBuf>);

impl TempGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // A single unlink: cheap enough to do inline, and Drop cannot await.
            let _ = std::fs::remove_file(path);
        }
    }
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

async fn write_body<B>(mut file: tokio::fs::File, mode: u32, mut body: B) -> Result<(), WriteError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;
    use tokio::sync::mpsc;

    use super::*;

    type ChunkTx = mpsc::Sender<Bytes>;

    /// A request body fed chunk by chunk; it ends when the sender is dropped.
    fn channel_body() -> (
        ChunkTx,
        impl Body<Data = Bytes, Error = std::io::Error> + Unpin,
    ) {
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            let chunk = rx.recv().await?;
            Some((Ok::<_, std::io::Error>(Frame::data(chunk)), rx))
        });
        (tx, StreamBody::new(Box::pin(frames)))
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn reading_a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();

        let result =
            tokio::time::timeout(Duration::from_secs(5), open_regular(fifo.to_str().unwrap()))
                .await
                .expect("open must not block");

        assert_eq!(result.unwrap_err().status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn concurrent_writes_to_one_path_both_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        let (tx, slow_body) = channel_body();
        let slow = tokio::spawn({
            let target = target.clone();
            async move { write_atomic(&target, 0o644, slow_body).await }
        });
        tx.send(Bytes::from_static(b"slow")).await.unwrap();
        while names_in(dir.path()).is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        let fast = write_atomic(&target, 0o644, Full::new(Bytes::from_static(b"fast"))).await;
        drop(tx);
        let slow = slow.await.unwrap();

        assert!(fast.is_ok() && slow.is_ok());
        assert_eq!(std::fs::read(&target).unwrap(), b"slow");
        assert_eq!(names_in(dir.path()), ["f"]);
    }

    #[tokio::test]
    async fn cancelled_write_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        let (tx, body) = channel_body();
        tx.send(Bytes::from_static(b"partial")).await.unwrap();

        let cancelled = tokio::time::timeout(
            Duration::from_millis(100),
            write_atomic(&target, 0o644, body),
        )
        .await;

        assert!(cancelled.is_err());
        assert!(names_in(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_range_reads_only_its_bytes_and_reports_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"0123456789").unwrap();

        let (size, mut reader) = open_range(file.to_str().unwrap(), 3, Some(4))
            .await
            .unwrap();
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();

        assert_eq!((size, got.as_slice()), (10, &b"3456"[..]));
    }

    #[test]
    fn temp_names_differ_per_call() {
        assert_ne!(temp_name("f"), temp_name("f"));
    }
}
