//! The `fetch` stage: http(s) through reqwest (rustls), resumable; `file://` through the
//! host-path policy. Every byte is hashed as it is written.
//!
//! An http(s) download streams into `<assets>/partial/<sha256 of the URL>.part`, next to a small
//! JSON record of the URL and the server's validator (`ETag` or `Last-Modified`). When a run stops
//! halfway (a dropped connection, a stalled server, a cancelled request, a daemon restart) the
//! part stays; the next run of the same URL hashes the part again and asks for the rest with
//! `Range` (and `If-Range`, so a changed file is sent whole). Only a complete file leaves the
//! partial directory, renamed into the run's staging directory. An exclusive `flock` per URL
//! keeps two runs from writing one part. Parts nobody resumed for [`PARTIAL_MAX_AGE`] are
//! removed when nexusd starts ([`remove_stale_parts`]), so abandoned downloads do not pile up.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

/// Parts of downloads not resumed for this long are removed at start-up.
pub const PARTIAL_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::hashio::{self, FileError, HashWriter, file_err};
use super::progress::Progress;

/// Chunks buffered between the network and the writer thread.
const WRITE_QUEUE: usize = 64;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: the server answered {status}")]
    Status { url: String, status: StatusCode },
    #[error("{url}: request failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "{url}: no data for {secs} s (idle timeout); the part received is kept for the next run"
    )]
    Stalled { url: String, secs: u64 },
    #[error(
        "{url}: not finished after {secs} s (total timeout); the part received is kept for the next run"
    )]
    TimedOut { url: String, secs: u64 },
    #[error("{url}: larger than the limit of {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error(
        "{url}: truncated: the connection closed after {got} of {expected} bytes; the part is kept and the next run resumes it"
    )]
    Truncated {
        url: String,
        got: u64,
        expected: u64,
    },
    #[error("{url}: the server sent an unusable range ({detail})")]
    BadRange { url: String, detail: String },
    #[error("{url} is being downloaded by another run")]
    Busy { url: String },
    #[error(transparent)]
    Io(#[from] FileError),
    #[error("cancelled; the part received is kept for the next run")]
    Cancelled,
}

/// The bounds of one fetch.
#[derive(Debug, Clone, Copy)]
pub struct FetchBounds {
    pub max_bytes: u64,
    pub idle: Duration,
    pub total: Duration,
}

/// A finished download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub sha256: String,
    pub size: u64,
    /// Bytes that were already there from an earlier run.
    pub resumed_from: u64,
}

/// What is remembered about a part between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct PartMeta {
    url: String,
    #[serde(default)]
    validator: Option<String>,
}

/// The http(s) client and the directory of parts.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    partial_dir: PathBuf,
}

/// An exclusive lock on one URL's part, released on drop.
struct PartLock {
    _file: File,
}

impl PartLock {
    fn acquire(path: &Path, url: &str) -> Result<Self, FetchError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(file_err("open", path))?;
        match rustix::fs::flock(
            file.as_fd(),
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        ) {
            Ok(()) => Ok(Self { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(FetchError::Busy { url: url.into() }),
            Err(e) => Err(file_err("lock", path)(e.into()).into()),
        }
    }
}

impl Fetcher {
    /// A fetcher keeping parts in `partial_dir`.
    pub fn new(partial_dir: PathBuf) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("nexusd/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::limited(10))
            .https_only(false)
            .build()?;
        Ok(Self {
            client,
            partial_dir,
        })
    }

    /// Removes the parts (with their records and locks) untouched for longer than `max_age`;
    /// returns how many downloads were dropped. Run at start-up, when no run holds a part.
    pub fn remove_stale_parts(&self, max_age: Duration) -> usize {
        let Ok(entries) = fs::read_dir(&self.partial_dir) else {
            return 0;
        };
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > max_age);
            if stale && fs::remove_file(&path).is_ok() {
                removed += usize::from(path.extension().is_some_and(|e| e == "part"));
            }
        }
        removed
    }

    fn part_paths(&self, url: &str) -> (PathBuf, PathBuf, PathBuf) {
        let key = hashio::hex(&Sha256::digest(url.as_bytes()));
        let dir = &self.partial_dir;
        (
            dir.join(format!("{key}.part")),
            dir.join(format!("{key}.json")),
            dir.join(format!("{key}.lock")),
        )
    }

    /// Downloads `url` into `dest` (which must not exist), resuming an earlier part.
    pub async fn fetch(
        &self,
        url: &reqwest::Url,
        dest: &Path,
        bounds: FetchBounds,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<Fetched, FetchError> {
        let shown = url.as_str().to_owned();
        fs::create_dir_all(&self.partial_dir).map_err(file_err("create", &self.partial_dir))?;
        let (part, meta_path, lock_path) = self.part_paths(&shown);
        let _lock = PartLock::acquire(&lock_path, &shown)?;
        let deadline = Instant::now() + bounds.total;
        let meta = read_meta(&meta_path).filter(|m| m.url == shown);
        let mut offset = match (&meta, fs::metadata(&part)) {
            (Some(_), Ok(m)) if m.len() <= bounds.max_bytes => m.len(),
            _ => 0,
        };
        if offset == 0 {
            remove_part(&part, &meta_path);
        }
        let mut response = self
            .request(url, offset, meta.as_ref(), bounds, deadline, cancel)
            .await?;
        let mut total = None;
        match response.status() {
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                let (start, whole) = content_range(&response)
                    .ok_or_else(|| bad_range(&shown, "no Content-Range on a 206"))?;
                if start != offset {
                    return Err(bad_range(
                        &shown,
                        &format!("asked for {offset}, got {start}"),
                    ));
                }
                total = whole;
                progress.note(format!("resuming at byte {offset}"));
            }
            StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => {
                // Either the part is complete already, or it is longer than the file now is.
                let whole = unsatisfied_length(&response);
                if whole == Some(offset) {
                    return finish(&part, &meta_path, dest, offset, offset, cancel).await;
                }
                remove_part(&part, &meta_path);
                offset = 0;
                response = self.request(url, 0, None, bounds, deadline, cancel).await?;
            }
            _ => {}
        }
        let status = response.status();
        if status == StatusCode::OK {
            offset = 0;
        } else if status != StatusCode::PARTIAL_CONTENT {
            remove_part(&part, &meta_path);
            return Err(FetchError::Status { url: shown, status });
        }
        let expected = total.or(response.content_length().map(|n| n + offset));
        if expected.is_some_and(|len| len > bounds.max_bytes) {
            remove_part(&part, &meta_path);
            return Err(FetchError::TooLarge {
                url: shown,
                limit: bounds.max_bytes,
            });
        }
        write_meta(
            &meta_path,
            &PartMeta {
                url: shown.clone(),
                validator: validator(&response),
            },
        )?;
        let (tx, rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        let writer = spawn_writer(part.clone(), offset, bounds.max_bytes, rx, cancel.clone());
        let streamed = stream_body(
            &mut response,
            &tx,
            offset,
            expected,
            bounds,
            deadline,
            progress,
            cancel,
            &shown,
        )
        .await;
        drop(tx);
        let written = writer
            .await
            .map_err(|e| file_err("write", &part)(e.into()))?;
        let received = streamed?;
        let (sha256, size) = match written {
            Ok(done) => done,
            Err(e) if hashio::exceeded(&e).is_some() => {
                remove_part(&part, &meta_path);
                return Err(FetchError::TooLarge {
                    url: shown,
                    limit: bounds.max_bytes,
                });
            }
            Err(e) if hashio::is_cancelled(&e) => return Err(FetchError::Cancelled),
            Err(e) => return Err(file_err("write", &part)(e).into()),
        };
        if let Some(expected) = expected.filter(|e| received < *e) {
            return Err(FetchError::Truncated {
                url: shown,
                got: received,
                expected,
            });
        }
        fs::rename(&part, dest).map_err(file_err("move the download to", dest))?;
        let _ = fs::remove_file(&meta_path);
        Ok(Fetched {
            sha256,
            size,
            resumed_from: offset,
        })
    }

    /// Sends the GET (with `Range` from `offset`) and waits for the head within the idle bound.
    async fn request(
        &self,
        url: &reqwest::Url,
        offset: u64,
        meta: Option<&PartMeta>,
        bounds: FetchBounds,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Result<reqwest::Response, FetchError> {
        let mut req = self.client.get(url.clone());
        if offset > 0 {
            req = req.header(RANGE, format!("bytes={offset}-"));
            if let Some(v) = meta.and_then(|m| m.validator.as_deref()) {
                req = req.header(IF_RANGE, v);
            }
        }
        let shown = url.as_str();
        let wait = bounds
            .idle
            .min(deadline.saturating_duration_since(Instant::now()));
        tokio::select! {
            _ = cancel.cancelled() => Err(FetchError::Cancelled),
            sent = tokio::time::timeout(wait, req.send()) => match sent {
                Err(_) => Err(FetchError::Stalled { url: shown.into(), secs: wait.as_secs() }),
                Ok(Err(source)) => Err(FetchError::Http { url: shown.into(), source }),
                Ok(Ok(resp)) => Ok(resp),
            },
        }
    }
}

/// Reads the body chunk by chunk into `tx`, bounded by the idle and total timeouts and the size
/// limit; returns the bytes received (after `offset`) plus `offset`.
#[allow(clippy::too_many_arguments)]
async fn stream_body(
    response: &mut reqwest::Response,
    tx: &mpsc::Sender<Bytes>,
    offset: u64,
    expected: Option<u64>,
    bounds: FetchBounds,
    deadline: Instant,
    progress: &Progress,
    cancel: &CancellationToken,
    url: &str,
) -> Result<u64, FetchError> {
    let mut done = offset;
    progress.bytes(done, expected);
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(FetchError::TimedOut {
                url: url.into(),
                secs: bounds.total.as_secs(),
            });
        }
        let wait = bounds.idle.min(deadline - now);
        let chunk = tokio::select! {
            _ = cancel.cancelled() => return Err(FetchError::Cancelled),
            c = tokio::time::timeout(wait, response.chunk()) => c,
        };
        let chunk = match chunk {
            Err(_) if Instant::now() >= deadline => {
                return Err(FetchError::TimedOut {
                    url: url.into(),
                    secs: bounds.total.as_secs(),
                });
            }
            Err(_) => {
                return Err(FetchError::Stalled {
                    url: url.into(),
                    secs: bounds.idle.as_secs(),
                });
            }
            Ok(Err(source)) => {
                return Err(match expected {
                    Some(expected) if done < expected => FetchError::Truncated {
                        url: url.into(),
                        got: done,
                        expected,
                    },
                    _ => FetchError::Http {
                        url: url.into(),
                        source,
                    },
                });
            }
            Ok(Ok(None)) => return Ok(done),
            Ok(Ok(Some(chunk))) => chunk,
        };
        done += chunk.len() as u64;
        if done > bounds.max_bytes {
            return Err(FetchError::TooLarge {
                url: url.into(),
                limit: bounds.max_bytes,
            });
        }
        if tx.send(chunk).await.is_err() {
            // The writer stopped (its error is reported by the caller).
            return Ok(done);
        }
        progress.bytes(done, expected);
    }
}

/// The writer thread: hashes the part's first `offset` bytes again (a resumed download), then
/// appends and hashes every chunk; fsyncs at the end.
fn spawn_writer(
    part: PathBuf,
    offset: u64,
    limit: u64,
    mut rx: mpsc::Receiver<Bytes>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<std::io::Result<(String, u64)>> {
    tokio::task::spawn_blocking(move || {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(offset == 0)
            .open(&part)?;
        let (hasher, have) = if offset > 0 {
            let mut prefix = std::io::Read::take(&mut file, offset);
            hashio::hash_reader(&mut prefix, &cancel)?
        } else {
            (Sha256::new(), 0)
        };
        if have != offset {
            return Err(std::io::Error::other("the part shrank while it was read"));
        }
        file.seek(SeekFrom::Start(offset))?;
        file.set_len(offset)?;
        let mut out = HashWriter::resume(std::io::BufWriter::new(file), limit, hasher, offset);
        while let Some(chunk) = rx.blocking_recv() {
            out.write_all(&chunk)?;
        }
        let (buffered, sha, size) = out.finish();
        let file = buffered.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok((sha, size))
    })
}

/// A part that is complete already (a run stopped between its last byte and the rename).
async fn finish(
    part: &Path,
    meta: &Path,
    dest: &Path,
    offset: u64,
    size: u64,
    cancel: &CancellationToken,
) -> Result<Fetched, FetchError> {
    let (part_owned, cancel) = (part.to_owned(), cancel.clone());
    let (sha256, len) =
        tokio::task::spawn_blocking(move || hashio::hash_file(&part_owned, &cancel))
            .await
            .map_err(|e| file_err("read", part)(e.into()))?
            .map_err(file_err("read", part))?;
    if len != size {
        return Err(file_err("read", part)(std::io::Error::other("the part changed")).into());
    }
    fs::rename(part, dest).map_err(file_err("move the download to", dest))?;
    let _ = fs::remove_file(meta);
    Ok(Fetched {
        sha256,
        size,
        resumed_from: offset,
    })
}

fn bad_range(url: &str, detail: &str) -> FetchError {
    FetchError::BadRange {
        url: url.into(),
        detail: detail.into(),
    }
}

/// `Content-Range: bytes START-END/TOTAL` → (START, TOTAL unless `*`).
fn content_range(resp: &reqwest::Response) -> Option<(u64, Option<u64>)> {
    let v = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

/// `Content-Range: bytes */TOTAL` of a 416.
fn unsatisfied_length(resp: &reqwest::Response) -> Option<u64> {
    let v = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    v.strip_prefix("bytes */")?.trim().parse().ok()
}

/// The response's strong `ETag`, else its `Last-Modified`: what `If-Range` may carry.
fn validator(resp: &reqwest::Response) -> Option<String> {
    let header = |name| {
        resp.headers()
            .get(name)
            .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
            .filter(|v| v.len() <= 512)
            .map(str::to_owned)
    };
    header(ETAG)
        .filter(|e| !e.starts_with("W/"))
        .or_else(|| header(LAST_MODIFIED))
}

fn read_meta(path: &Path) -> Option<PartMeta> {
    let text = fs::read(path).ok().filter(|t| t.len() <= 8192)?;
    serde_json::from_slice(&text).ok()
}

fn write_meta(path: &Path, meta: &PartMeta) -> Result<(), FetchError> {
    let text = serde_json::to_vec(meta).unwrap_or_default();
    Ok(fs::write(path, text).map_err(file_err("write", path))?)
}

fn remove_part(part: &Path, meta: &Path) {
    let _ = fs::remove_file(part);
    let _ = fs::remove_file(meta);
}

/// Copies the already-opened local file `src` (what a `file://` source resolved to) into `dest`,
/// hashing it; on a blocking thread.
pub fn copy_local(
    src: &Path,
    shown: &str,
    dest: &Path,
    max_bytes: u64,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Fetched, FetchError> {
    let mut input = File::open(src).map_err(file_err("open", Path::new(shown)))?;
    let total = input.metadata().ok().map(|m| m.len());
    if total.is_some_and(|t| t > max_bytes) {
        return Err(FetchError::TooLarge {
            url: shown.into(),
            limit: max_bytes,
        });
    }
    let out = hashio::create_new(dest).map_err(file_err("create", dest))?;
    let mut out = HashWriter::new(std::io::BufWriter::new(out), max_bytes);
    let copied = hashio::copy_with(&mut input, &mut out, cancel, |n| progress.bytes(n, total));
    match copied {
        Ok(_) => {}
        Err(e) if hashio::exceeded(&e).is_some() => {
            return Err(FetchError::TooLarge {
                url: shown.into(),
                limit: max_bytes,
            });
        }
        Err(e) if hashio::is_cancelled(&e) => return Err(FetchError::Cancelled),
        Err(e) => return Err(file_err("copy", Path::new(shown))(e).into()),
    }
    let (buffered, sha256, size) = out.finish();
    let file = buffered
        .into_inner()
        .map_err(|e| file_err("write", dest)(e.into_error()))?;
    file.sync_all().map_err(file_err("sync", dest))?;
    Ok(Fetched {
        sha256,
        size,
        resumed_from: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_untouched_past_the_age_are_removed_with_their_records() {
        let dir = tempfile::tempdir().unwrap();
        let fetcher = Fetcher::new(dir.path().to_owned()).unwrap();
        let week_ago = std::time::SystemTime::now() - Duration::from_secs(8 * 24 * 3600);
        for name in ["old.part", "old.json", "old.lock"] {
            let f = File::create(dir.path().join(name)).unwrap();
            f.set_modified(week_ago).unwrap();
        }
        File::create(dir.path().join("new.part")).unwrap();

        let removed = fetcher.remove_stale_parts(PARTIAL_MAX_AGE);

        assert_eq!(removed, 1);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["new.part"]);
    }
}
