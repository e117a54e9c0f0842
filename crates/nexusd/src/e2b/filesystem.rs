//! envd's `filesystem.Filesystem` on the Nexus agent: `Stat`, `ListDir` (to a depth),
//! `MakeDir`, `Move`, `Remove`, and directory watching (`WatchDir`'s stream and the polling
//! trio `CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher`).
//!
//! Watching compares listings of the directory taken through the agent every
//! [`WATCH_PERIOD`] (create, remove, and write seen as a size change), bounded in watchers per
//! sandbox, entries per listing and queued events (the oldest dropped past the bound). Paths that
//! are not absolute are taken relative to `/root`, the home of the guest's user.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::{Extension, Router};
use futures_util::StreamExt;
use nexus_lib::agent::{ExecEvent, ExecRequest, FileKind, FileStat, MAX_LIST_ENTRIES};

use super::E2bState;
use super::connect::{
    Code, ConnectError, EnvelopeReader, stream_error, stream_response, unary_request,
    unary_response,
};
use super::process::agent_error;
use super::proto::filesystem::{
    CreateWatcherRequest, CreateWatcherResponse, EntryInfo, EventType, FileType, FilesystemEvent,
    GetWatcherEventsRequest, GetWatcherEventsResponse, ListDirRequest, ListDirResponse,
    MakeDirRequest, MakeDirResponse, MoveRequest, MoveResponse, RemoveRequest, RemoveResponse,
    RemoveWatcherRequest, RemoveWatcherResponse, StatRequest, StatResponse, WatchDirRequest,
    WatchDirResponse, watch_dir_response,
};
use super::sandbox::EnvdSandbox;
use crate::agent::AgentClient;

/// The guest user's home, for relative paths.
pub const HOME: &str = "/root";
/// Deepest `ListDir` and recursive watch.
const MAX_DEPTH: u32 = 16;
/// Most watchers per sandbox (streams and polled ones together).
const MAX_WATCHERS: usize = 16;
/// Most events a polled watcher queues between two `GetWatcherEvents`.
const MAX_QUEUED_EVENTS: usize = 1024;
/// How often a watched directory is looked at.
const WATCH_PERIOD: Duration = Duration::from_millis(200);
/// Keep-alive period of a `WatchDir` stream.
const WATCH_KEEPALIVE: Duration = Duration::from_secs(30);

pub(super) fn routes() -> Router<E2bState> {
    Router::new()
        .route("/filesystem.Filesystem/Stat", post(stat))
        .route("/filesystem.Filesystem/ListDir", post(list_dir))
        .route("/filesystem.Filesystem/MakeDir", post(make_dir))
        .route("/filesystem.Filesystem/Move", post(move_entry))
        .route("/filesystem.Filesystem/Remove", post(remove))
        .route("/filesystem.Filesystem/WatchDir", post(watch_dir))
        .route("/filesystem.Filesystem/CreateWatcher", post(create_watcher))
        .route(
            "/filesystem.Filesystem/GetWatcherEvents",
            post(get_watcher_events),
        )
        .route("/filesystem.Filesystem/RemoveWatcher", post(remove_watcher))
}

/// An absolute guest path for `path` (relative ones under [`HOME`]), checked.
pub(super) fn guest_path(path: &str) -> Result<String, ConnectError> {
    let full = if path.starts_with('/') {
        path.to_string()
    } else if path.is_empty() {
        HOME.to_string()
    } else {
        format!("{HOME}/{path}")
    };
    nexus_lib::agent::validate_path(&full).map_err(ConnectError::invalid)?;
    Ok(full)
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::File,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Other => FileType::Unspecified,
    }
}

/// `ls -l`'s permission string.
fn permissions(kind: FileKind, mode: u32) -> String {
    let first = match kind {
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        _ => '-',
    };
    let mut s = String::from(first);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn owner(id: u32) -> String {
    if id == 0 {
        "root".into()
    } else {
        id.to_string()
    }
}

fn name_of(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

fn entry_from_stat(stat: &FileStat) -> EntryInfo {
    EntryInfo {
        name: name_of(&stat.path),
        r#type: file_type(stat.kind) as i32,
        path: stat.path.clone(),
        size: i64::try_from(stat.size).unwrap_or(i64::MAX),
        mode: stat.mode,
        permissions: permissions(stat.kind, stat.mode),
        owner: owner(stat.uid),
        group: owner(stat.gid),
        modified_time: Some(pbjson_types::Timestamp {
            seconds: stat.mtime_ms.div_euclid(1000),
            nanos: (stat.mtime_ms.rem_euclid(1000) * 1_000_000) as i32,
        }),
        is_symlink: stat.kind == FileKind::Symlink,
        ..EntryInfo::default()
    }
}

async fn stat_entry(agent: &AgentClient, path: &str) -> Result<EntryInfo, ConnectError> {
    agent
        .stat(path)
        .await
        .map(|s| entry_from_stat(&s))
        .map_err(agent_error)
}

/// Runs a tool in the guest (no shell) and fails with its stderr when it exits non-zero.
async fn run_tool(agent: &AgentClient, argv: &[&str]) -> Result<(), ConnectError> {
    let mut req = ExecRequest::new(argv.iter().copied());
    req.timeout_ms = Some(60_000);
    let mut events = agent.exec(&req).await.map_err(agent_error)?;
    let mut stderr = Vec::new();
    while let Some(event) = events.next().await {
        match event.map_err(agent_error)? {
            ExecEvent::Stderr { data } if stderr.len() < 4096 => stderr.extend(data),
            ExecEvent::Exit { code: Some(0), .. } => return Ok(()),
            ExecEvent::Exit { .. } => {
                let msg = crate::sanitize::clean(&stderr, 1024);
                return Err(ConnectError::new(
                    Code::FailedPrecondition,
                    format!("{} failed: {msg}", argv[0]),
                ));
            }
            ExecEvent::Error { message } => return Err(ConnectError::internal(message)),
            _ => {}
        }
    }
    Err(ConnectError::internal(format!(
        "{} ended without an exit status",
        argv[0]
    )))
}

/// Makes `dir` and its parents in the guest.
pub(super) async fn make_dirs(agent: &AgentClient, dir: &str) -> Result<(), ConnectError> {
    run_tool(agent, &["mkdir", "-p", "--", dir]).await
}

fn unary<T: serde::Serialize>(result: Result<T, ConnectError>) -> Response {
    match result {
        Ok(msg) => unary_response(&msg),
        Err(e) => e.into_response_unary(),
    }
}

async fn stat(Extension(sbx): Extension<EnvdSandbox>, body: Body) -> Response {
    unary(
        async {
            let req: StatRequest = unary_request(body).await?;
            let entry = stat_entry(&sbx.agent, &guest_path(&req.path)?).await?;
            Ok(StatResponse { entry: Some(entry) })
        }
        .await,
    )
}

/// Lists `dir` to `depth` levels (1: its entries only), at most [`MAX_LIST_ENTRIES`] in all.
async fn walk(agent: &AgentClient, dir: &str, depth: u32) -> Result<Vec<EntryInfo>, ConnectError> {
    let mut out = Vec::new();
    let mut queue = VecDeque::from([(dir.to_string(), 1u32)]);
    while let Some((path, level)) = queue.pop_front() {
        let listing = agent.list(&path).await.map_err(agent_error)?;
        for e in listing.entries {
            let full = if path == "/" {
                format!("/{}", e.name)
            } else {
                format!("{path}/{}", e.name)
            };
            if e.kind == FileKind::Dir && level < depth {
                queue.push_back((full.clone(), level + 1));
            }
            out.push(EntryInfo {
                name: e.name,
                r#type: file_type(e.kind) as i32,
                path: full,
                size: i64::try_from(e.size).unwrap_or(i64::MAX),
                mode: e.mode,
                permissions: permissions(e.kind, e.mode),
                is_symlink: e.kind == FileKind::Symlink,
                ..EntryInfo::default()
            });
            if out.len() >= MAX_LIST_ENTRIES {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

async fn list_dir(Extension(sbx): Extension<EnvdSandbox>, body: Body) -> Response {
    unary(
        async {
            let req: ListDirRequest = unary_request(body).await?;
            let depth = req.depth.max(1);
            if depth > MAX_DEPTH {
                return Err(ConnectError::invalid(format!("depth: at most {MAX_DEPTH}")));
            }
            let path = guest_path(&req.path)?;
            let stat = sbx.agent.stat(&path).await.map_err(agent_error)?;
            if stat.kind != FileKind::Dir {
                return Err(ConnectError::invalid(format!("{path} is not a directory")));
            }
            Ok(ListDirResponse {
                entries: walk(&sbx.agent, &path, depth).await?,
            })
        }
        .await,
    )
}

async fn make_dir(Extension(sbx): Extension<EnvdSandbox>, body: Body) -> Response {
    unary(
        async {
            let req: MakeDirRequest = unary_request(body).await?;
            let path = guest_path(&req.path)?;
            if sbx.agent.stat(&path).await.is_ok() {
                return Err(ConnectError::new(
                    Code::AlreadyExists,
                    format!("{path} already exists"),
                ));
            }
            make_dirs(&sbx.agent, &path).await?;
            Ok(MakeDirResponse {
                entry: Some(stat_entry(&sbx.agent, &path).await?),
            })
        }
        .await,
    )
}

async fn move_entry(Extension(sbx): Extension<EnvdSandbox>, body: Body) -> Response {
    unary(
        async {
            let req: MoveRequest = unary_request(body).await?;
            let (from, to) = (guest_path(&req.source)?, guest_path(&req.destination)?);
            sbx.agent.stat(&from).await.map_err(agent_error)?;
            run_tool(&sbx.agent, &["mv", "--", &from, &to]).await?;
            Ok(MoveResponse {
                entry: Some(stat_entry(&sbx.agent, &to).await?),
            })
        }
        .await,
    )
}

async fn remove(Extension(sbx): Extension<EnvdSandbox>, body: Body) -> Response {
    unary(
        async {
            let req: RemoveRequest = unary_request(body).await?;
            let path = guest_path(&req.path)?;
            sbx.agent.remove(&path, true).await.map_err(agent_error)?;
            Ok(RemoveResponse {})
        }
        .await,
    )
}

/// A directory's entries as last seen: path → (kind, size).
type Snapshot = BTreeMap<String, (FileKind, u64)>;

async fn snapshot(
    agent: &AgentClient,
    dir: &str,
    recursive: bool,
) -> Result<Snapshot, ConnectError> {
    let depth = if recursive { MAX_DEPTH } else { 1 };
    Ok(walk(agent, dir, depth)
        .await?
        .into_iter()
        .map(|e| {
            let kind = match FileType::try_from(e.r#type) {
                Ok(FileType::Directory) => FileKind::Dir,
                Ok(FileType::Symlink) => FileKind::Symlink,
                Ok(FileType::File) => FileKind::File,
                _ => FileKind::Other,
            };
            (e.path, (kind, e.size as u64))
        })
        .collect())
}

/// The events between two snapshots, named relative to the watched directory.
fn diff(dir: &str, old: &Snapshot, new: &Snapshot) -> Vec<FilesystemEvent> {
    let rel = |p: &str| {
        p.strip_prefix(dir)
            .unwrap_or(p)
            .trim_start_matches('/')
            .to_string()
    };
    let event = |p: &str, t: EventType| FilesystemEvent {
        name: rel(p),
        r#type: t as i32,
        entry: None,
    };
    let mut out = Vec::new();
    for (path, (kind, size)) in new {
        match old.get(path) {
            None => {
                out.push(event(path, EventType::Create));
                if *kind == FileKind::File && *size > 0 {
                    out.push(event(path, EventType::Write));
                }
            }
            Some((_, old_size)) if old_size != size && *kind == FileKind::File => {
                out.push(event(path, EventType::Write));
            }
            _ => {}
        }
    }
    out.extend(
        old.keys()
            .filter(|p| !new.contains_key(*p))
            .map(|p| event(p, EventType::Remove)),
    );
    out
}

/// The polled watchers of one sandbox.
#[derive(Default)]
pub(crate) struct Watchers {
    map: Mutex<HashMap<String, Arc<Mutex<Polled>>>>,
    streams: std::sync::atomic::AtomicUsize,
}

struct Polled {
    events: VecDeque<FilesystemEvent>,
    task: tokio::task::AbortHandle,
}

impl Watchers {
    fn count(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
            + self.streams.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Checks that `path` is a directory and takes its first snapshot.
async fn start_watch(
    sbx: &EnvdSandbox,
    path: &str,
    recursive: bool,
) -> Result<(String, Snapshot), ConnectError> {
    if sbx.rt.watchers.count() >= MAX_WATCHERS {
        return Err(ConnectError::new(
            Code::ResourceExhausted,
            format!("at most {MAX_WATCHERS} watchers per sandbox"),
        ));
    }
    let dir = guest_path(path)?;
    let stat = sbx.agent.stat(&dir).await.map_err(agent_error)?;
    if stat.kind != FileKind::Dir {
        return Err(ConnectError::invalid(format!("{dir} is not a directory")));
    }
    let first = snapshot(&sbx.agent, &dir, recursive).await?;
    Ok((dir, first))
}

/// `WatchDir` (server stream).
async fn watch_dir(
    Extension(sbx): Extension<EnvdSandbox>,
    _headers: HeaderMap,
    body: Body,
) -> Response {
    let mut reader = EnvelopeReader::new(body);
    let req: WatchDirRequest = match reader.next().await {
        Ok(Some(r)) => r,
        Ok(None) => return stream_error(ConnectError::invalid("missing WatchDirRequest")),
        Err(e) => return stream_error(e),
    };
    let (dir, mut last) = match start_watch(&sbx, &req.path, req.recursive).await {
        Ok(v) => v,
        Err(e) => return stream_error(e),
    };
    let (tx, resp) = stream_response();
    let counter = Arc::new(());
    sbx.rt
        .watchers
        .streams
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tokio::spawn(async move {
        let _count = counter;
        let wrap = |e| WatchDirResponse { event: Some(e) };
        let mut ok = tx
            .send(&wrap(watch_dir_response::Event::Start(
                watch_dir_response::StartEvent {},
            )))
            .await;
        let mut since_ping = Duration::ZERO;
        while ok {
            tokio::select! {
                () = tokio::time::sleep(WATCH_PERIOD) => {}
                () = tx.closed() => break,
            }
            since_ping += WATCH_PERIOD;
            let next = match snapshot(&sbx.agent, &dir, req.recursive).await {
                Ok(s) => s,
                Err(e) => {
                    tx.end(Some(e)).await;
                    break;
                }
            };
            for event in diff(&dir, &last, &next) {
                ok = ok
                    && tx
                        .send(&wrap(watch_dir_response::Event::Filesystem(event)))
                        .await;
            }
            last = next;
            if since_ping >= WATCH_KEEPALIVE {
                since_ping = Duration::ZERO;
                ok = ok
                    && tx
                        .send(&wrap(watch_dir_response::Event::Keepalive(
                            watch_dir_response::KeepAlive {},
                        )))
                        .await;
            }
        }
        sbx.rt
            .watchers
            .streams
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    });
    resp
}

async fn create_watcher(Extension(sbx): Extension<EnvdSandbox>, body: Body) -> Response {
    unary(
        async {
            let req: CreateWatcherRequest = unary_request(body).await?;
            let (dir, mut last) = start_watch(&sbx, &req.path, req.recursive).await?;
            let id = uuid::Uuid::new_v4().simple().to_string();
            let agent = sbx.agent.clone();
            let recursive = req.recursive;
            let slot: Arc<Mutex<Option<Arc<Mutex<Polled>>>>> = Arc::default();
            let weak_slot = slot.clone();
            let task = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(WATCH_PERIOD).await;
                    let Ok(next) = snapshot(&agent, &dir, recursive).await else {
                        continue;
                    };
                    let events = diff(&dir, &last, &next);
                    last = next;
                    let target = weak_slot.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    if let Some(polled) = target {
                        let mut p = polled.lock().unwrap_or_else(|e| e.into_inner());
                        for event in events {
                            if p.events.len() >= MAX_QUEUED_EVENTS {
                                p.events.pop_front();
                            }
                            p.events.push_back(event);
                        }
                    }
                }
            });
            let polled = Arc::new(Mutex::new(Polled {
                events: VecDeque::new(),
                task: task.abort_handle(),
            }));
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(polled.clone());
            sbx.rt
                .watchers
                .map
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.clone(), polled);
            Ok(CreateWatcherResponse { watcher_id: id })
        }
        .await,
    )
}

fn watcher(sbx: &EnvdSandbox, id: &str) -> Result<Arc<Mutex<Polled>>, ConnectError> {
    sbx.rt
        .watchers
        .map
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(id)
        .cloned()
        .ok_or_else(|| ConnectError::not_found(format!("watcher {id} not found")))
}

async fn get_watcher_events(Extension(sbx): Extension<EnvdSandbox>, body: Body) -> Response {
    unary(
        async {
            let req: GetWatcherEventsRequest = unary_request(body).await?;
            let polled = watcher(&sbx, &req.watcher_id)?;
            let events = polled
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .events
                .drain(..)
                .collect();
            Ok(GetWatcherEventsResponse { events })
        }
        .await,
    )
}

async fn remove_watcher(Extension(sbx): Extension<EnvdSandbox>, body: Body) -> Response {
    unary(
        async {
            let req: RemoveWatcherRequest = unary_request(body).await?;
            let polled = sbx
                .rt
                .watchers
                .map
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&req.watcher_id)
                .ok_or_else(|| {
                    ConnectError::not_found(format!("watcher {} not found", req.watcher_id))
                })?;
            polled
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .task
                .abort();
            Ok(RemoveWatcherResponse {})
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_is_a_create_and_a_write_and_a_gone_one_a_remove() {
        let old: Snapshot = [("/d/a".to_string(), (FileKind::File, 1))].into();
        let new: Snapshot = [("/d/b".to_string(), (FileKind::File, 3))].into();
        let events = diff("/d", &old, &new);
        let kinds: Vec<(String, i32)> = events.into_iter().map(|e| (e.name, e.r#type)).collect();
        assert_eq!(
            kinds,
            vec![
                ("b".into(), EventType::Create as i32),
                ("b".into(), EventType::Write as i32),
                ("a".into(), EventType::Remove as i32),
            ]
        );
    }

    #[test]
    fn relative_paths_are_under_home() {
        assert_eq!(guest_path("x/y").unwrap(), "/root/x/y");
        assert_eq!(guest_path("/etc").unwrap(), "/etc");
    }

    #[test]
    fn permissions_read_like_ls() {
        assert_eq!(permissions(FileKind::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(permissions(FileKind::File, 0o640), "-rw-r-----");
    }
}
