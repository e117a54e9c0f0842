//! envd's `filesystem.Filesystem` on the Nexus agent: `Stat`, `ListDir` (to a depth),
//! `MakeDir`, `Move`, `Remove`; directory watching is in [`super::watcher`] (the agent's
//! inotify watch). Paths that are not absolute are taken relative to `/root`, the home of the
//! guest's user.

use std::collections::VecDeque;

use axum::body::Body;
use axum::response::Response;
use axum::routing::post;
use axum::{Extension, Router};
use futures_util::StreamExt;
use nexus_lib::agent::{ExecEvent, ExecRequest, FileKind, FileStat, MAX_LIST_ENTRIES};

use super::connect::{Code, ConnectError, unary_request, unary_response};
use super::process::agent_error;
use super::proto::filesystem::{
    EntryInfo, FileType, ListDirRequest, ListDirResponse, MakeDirRequest, MakeDirResponse,
    MoveRequest, MoveResponse, RemoveRequest, RemoveResponse, StatRequest, StatResponse,
};
use super::sandbox::EnvdSandbox;
use super::{E2bState, watcher};
use crate::agent::AgentClient;

/// The guest user's home, for relative paths.
pub const HOME: &str = "/root";
/// Deepest `ListDir`.
const MAX_DEPTH: u32 = 16;

pub(super) fn routes() -> Router<E2bState> {
    Router::new()
        .route("/filesystem.Filesystem/Stat", post(stat))
        .route("/filesystem.Filesystem/ListDir", post(list_dir))
        .route("/filesystem.Filesystem/MakeDir", post(make_dir))
        .route("/filesystem.Filesystem/Move", post(move_entry))
        .route("/filesystem.Filesystem/Remove", post(remove))
        .route("/filesystem.Filesystem/WatchDir", post(watcher::watch_dir))
        .route(
            "/filesystem.Filesystem/CreateWatcher",
            post(watcher::create_watcher),
        )
        .route(
            "/filesystem.Filesystem/GetWatcherEvents",
            post(watcher::get_watcher_events),
        )
        .route(
            "/filesystem.Filesystem/RemoveWatcher",
            post(watcher::remove_watcher),
        )
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

#[cfg(test)]
mod tests {
    use super::*;

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
