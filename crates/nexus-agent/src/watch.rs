//! `GET /v1/watch?path=&recursive=`: a directory watched with inotify, its changes streamed as
//! NDJSON [`WatchEvent`]s for as long as the host keeps the stream open.
//!
//! Bounded: at most [`MAX_WATCHERS`] watches per agent, [`MAX_WATCHED_DIRS`] directories per
//! recursive watch, and [`WATCH_QUEUE_EVENTS`] events queued per watch. Whatever is lost (the
//! kernel's queue overflowing, our queue full, the directory bound reached) is reported by one
//! [`WatchEvent::Overflow`], never dropped silently. A recursive watch adds the directories
//! created (or moved in) after it began, and reports what they already hold as creations, since
//! their first entries may come before the new watch does.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use nexus_lib::agent::{
    MAX_WATCHED_DIRS, MAX_WATCHERS, WATCH_KEEPALIVE_MS, WATCH_QUEUE_EVENTS, WatchEvent, WatchOp,
};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::server::{self, ApiError, ApiResult, Query};

/// The count of live watches, shared by all connections.
#[derive(Default)]
pub struct Watchers {
    active: AtomicUsize,
}

/// A taken watcher slot, given back on drop.
struct Slot(Arc<Watchers>);

impl Slot {
    fn take(watchers: &Arc<Watchers>) -> Result<Self, ApiError> {
        let taken = watchers
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_WATCHERS).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(Self(watchers.clone())),
            Err(_) => Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_watchers",
                format!("at most {MAX_WATCHERS} watches at once"),
            )),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Bounds of one watch (smaller in tests).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub queue: usize,
    pub max_dirs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            queue: WATCH_QUEUE_EVENTS,
            max_dirs: MAX_WATCHED_DIRS,
        }
    }
}

fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
        | AddWatchFlags::IN_DONT_FOLLOW
}

struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// The watched directories: watch descriptor → path relative to the root ("" for the root).
struct Tree {
    root: PathBuf,
    dirs: HashMap<WatchDescriptor, String>,
    recursive: bool,
    max_dirs: usize,
    /// Set once a directory could not be watched (bound reached, or the kernel's limit).
    lost: bool,
}

impl Tree {
    /// Watches `rel` and, when recursive, the directories under it; the entries found under it
    /// are pushed to `found` as creations when given (for directories that appeared later).
    fn add(&mut self, inotify: &Inotify, rel: &str, mut found: Option<&mut Vec<WatchEvent>>) {
        let mut stack = vec![rel.to_string()];
        while let Some(dir) = stack.pop() {
            if self.dirs.len() >= self.max_dirs {
                self.lost = true;
                return;
            }
            let full = if dir.is_empty() {
                self.root.clone()
            } else {
                self.root.join(&dir)
            };
            match inotify.add_watch(&full, mask()) {
                Ok(wd) => {
                    self.dirs.insert(wd, dir.clone());
                }
                Err(nix::errno::Errno::ENOSPC) => {
                    self.lost = true;
                    return;
                }
                // Gone again already: its removal is reported by its parent.
                Err(_) => continue,
            }
            if !self.recursive {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&full) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = join(&dir, &name);
                if let Some(found) = found.as_deref_mut() {
                    found.push(WatchEvent::Fs {
                        op: WatchOp::Create,
                        name: child.clone(),
                    });
                }
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(child);
                }
            }
        }
    }

    /// Forgets `rel` and the directories under it.
    fn forget(&mut self, inotify: &Inotify, rel: &str) {
        let prefix = format!("{rel}/");
        let gone: Vec<WatchDescriptor> = self
            .dirs
            .iter()
            .filter(|(_, d)| !d.is_empty() && (*d == rel || d.starts_with(&prefix)))
            .map(|(wd, _)| *wd)
            .collect();
        for wd in gone {
            self.dirs.remove(&wd);
            let _ = inotify.rm_watch(wd);
        }
    }

    /// What one inotify event means for the host; `Gone` when the root itself went away.
    fn translate(&mut self, inotify: &Inotify, ev: InotifyEvent, out: &mut Vec<WatchEvent>) {
        if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            out.push(WatchEvent::Overflow);
            return;
        }
        let Some(dir) = self.dirs.get(&ev.wd).cloned() else {
            return;
        };
        let self_gone =
            AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF | AddWatchFlags::IN_IGNORED;
        if ev.mask.intersects(self_gone) {
            if dir.is_empty() {
                out.push(WatchEvent::Gone);
            } else {
                // Its parent reports the removal or move; stop following it under its old name.
                self.forget(inotify, &dir);
            }
            return;
        }
        let Some(name) = ev.name else {
            return;
        };
        let rel = join(&dir, &name.to_string_lossy());
        let is_dir = ev.mask.contains(AddWatchFlags::IN_ISDIR);
        let op = if ev
            .mask
            .intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
        {
            WatchOp::Create
        } else if ev.mask.contains(AddWatchFlags::IN_MODIFY) {
            WatchOp::Write
        } else if ev.mask.contains(AddWatchFlags::IN_DELETE) {
            WatchOp::Remove
        } else if ev.mask.contains(AddWatchFlags::IN_MOVED_FROM) {
            WatchOp::Rename
        } else if ev.mask.contains(AddWatchFlags::IN_ATTRIB) {
            WatchOp::Chmod
        } else {
            return;
        };
        out.push(WatchEvent::Fs {
            op,
            name: rel.clone(),
        });
        if self.recursive && is_dir {
            match op {
                WatchOp::Create => {
                    let was_lost = self.lost;
                    self.add(inotify, &rel, Some(out));
                    if self.lost && !was_lost {
                        out.push(WatchEvent::Overflow);
                    }
                }
                WatchOp::Rename => self.forget(inotify, &rel),
                _ => {}
            }
        }
    }
}

/// Starts watching `root`; the events come on the returned receiver until it is dropped.
pub async fn start(
    watchers: &Arc<Watchers>,
    root: PathBuf,
    recursive: bool,
    limits: Limits,
) -> Result<mpsc::Receiver<WatchEvent>, ApiError> {
    let slot = Slot::take(watchers)?;
    let shown = root.display().to_string();
    let (inotify, tree) = tokio::task::spawn_blocking(move || setup(root, recursive, limits))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::io(&e, &shown))?;
    // SAFETY: `InotifyFd` owns the inotify descriptor and always returns that same one; it
    // stays open until the `AsyncFd` (its only owner) is dropped.
    let registered = unsafe {
        AsyncFd::register_with_interest(InotifyFd(inotify), tokio::io::Interest::READABLE)
    };
    let fd =
        registered.map_err(|e| ApiError::internal(format!("inotify: {}", e.into_parts().1)))?;
    let (tx, rx) = mpsc::channel(limits.queue.max(1));
    tokio::spawn(async move {
        let _slot = slot;
        run(fd, tree, tx).await;
    });
    Ok(rx)
}

fn setup(root: PathBuf, recursive: bool, limits: Limits) -> io::Result<(Inotify, Tree)> {
    if !std::fs::metadata(&root)?.is_dir() {
        return Err(io::Error::from(io::ErrorKind::NotADirectory));
    }
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    // The root is watched first, so its failure is the caller's error.
    let wd = inotify.add_watch(&root, mask() & !AddWatchFlags::IN_DONT_FOLLOW)?;
    let mut tree = Tree {
        root,
        dirs: HashMap::from([(wd, String::new())]),
        recursive,
        max_dirs: limits.max_dirs.max(1),
        lost: false,
    };
    if recursive {
        let children = subdirs(&tree.root);
        for child in children {
            tree.add(&inotify, &child, None);
        }
    }
    Ok((inotify, tree))
}

fn subdirs(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The watch's loop: reads inotify, queues events without blocking (an overflow marked when the
/// queue is full), ends when the receiver is dropped or the root goes away.
async fn run(fd: AsyncFd<InotifyFd>, mut tree: Tree, tx: mpsc::Sender<WatchEvent>) {
    let keepalive = Duration::from_millis(WATCH_KEEPALIVE_MS);
    let mut overflow = tree.lost;
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            () = tx.closed() => return,
            permit = tx.reserve(), if overflow => match permit {
                Ok(permit) => {
                    permit.send(WatchEvent::Overflow);
                    overflow = false;
                }
                Err(_) => return,
            },
            ready = fd.readable() => {
                let Ok(mut guard) = ready else { return };
                match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(io::Error::from)) {
                    Ok(Ok(events)) => {
                        for ev in events {
                            tree.translate(&fd.get_ref().0, ev, &mut batch);
                        }
                    }
                    Ok(Err(_)) => return,
                    Err(_would_block) => continue,
                }
            }
            () = tokio::time::sleep(keepalive) => {
                let _ = tx.try_send(WatchEvent::Keepalive);
            }
        }
        for event in batch {
            match event {
                WatchEvent::Gone => {
                    if overflow {
                        let _ = tx.send(WatchEvent::Overflow).await;
                    }
                    let _ = tx.send(WatchEvent::Gone).await;
                    return;
                }
                WatchEvent::Overflow => overflow = true,
                _ if overflow => {}
                event => match tx.try_send(event) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => overflow = true,
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                },
            }
        }
    }
}

fn encode(event: &WatchEvent) -> Bytes {
    let mut line = serde_json::to_vec(event).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// `GET /v1/watch?path=&recursive=`: NDJSON watch events.
pub async fn handle(req: &Request<Incoming>, watchers: &Arc<Watchers>) -> ApiResult {
    let query = Query::of(req)?;
    let path = query.path()?;
    let recursive = query.flag("recursive")?;
    let rx = start(watchers, PathBuf::from(path), recursive, Limits::default()).await?;
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|e| (Ok::<_, io::Error>(encode(&e)), rx))
    });
    Ok(server::streamed("application/x-ndjson", chunks))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(op: WatchOp, name: &str) -> WatchEvent {
        WatchEvent::Fs {
            op,
            name: name.into(),
        }
    }

    /// Receives until all of `wants` arrived (failing after 5 s), returning everything seen.
    async fn until(rx: &mut mpsc::Receiver<WatchEvent>, wants: &[WatchEvent]) -> Vec<WatchEvent> {
        let mut seen = Vec::new();
        while !wants.iter().all(|w| seen.contains(w)) {
            let next = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
            match next {
                Ok(Some(e)) => seen.push(e),
                _ => panic!("not all of {wants:?}; saw {seen:?}"),
            }
        }
        seen
    }

    #[tokio::test]
    async fn creates_writes_renames_and_removes_are_reported_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let watchers = Arc::new(Watchers::default());
        let mut rx = start(&watchers, dir.path().into(), false, Limits::default())
            .await
            .unwrap();

        std::fs::write(dir.path().join("a"), b"x").unwrap();
        std::fs::rename(dir.path().join("a"), dir.path().join("b")).unwrap();
        std::fs::remove_file(dir.path().join("b")).unwrap();

        until(
            &mut rx,
            &[
                fs(WatchOp::Create, "a"),
                fs(WatchOp::Write, "a"),
                fs(WatchOp::Rename, "a"),
                fs(WatchOp::Create, "b"),
                fs(WatchOp::Remove, "b"),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn a_chmod_is_reported() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"").unwrap();
        let watchers = Arc::new(Watchers::default());
        let mut rx = start(&watchers, dir.path().into(), false, Limits::default())
            .await
            .unwrap();

        std::fs::set_permissions(dir.path().join("f"), std::fs::Permissions::from_mode(0o600))
            .unwrap();

        until(&mut rx, &[fs(WatchOp::Chmod, "f")]).await;
    }

    #[tokio::test]
    async fn a_recursive_watch_sees_files_in_a_subdirectory_made_after_it_began() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("old")).unwrap();
        let watchers = Arc::new(Watchers::default());
        let mut rx = start(&watchers, dir.path().into(), true, Limits::default())
            .await
            .unwrap();

        std::fs::create_dir_all(dir.path().join("new/deeper")).unwrap();
        std::fs::write(dir.path().join("new/deeper/f"), b"x").unwrap();
        std::fs::write(dir.path().join("old/g"), b"x").unwrap();

        until(
            &mut rx,
            &[
                fs(WatchOp::Create, "new"),
                fs(WatchOp::Create, "new/deeper/f"),
                fs(WatchOp::Create, "old/g"),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn a_full_queue_is_reported_by_one_overflow_event() {
        let dir = tempfile::tempdir().unwrap();
        let watchers = Arc::new(Watchers::default());
        let limits = Limits {
            queue: 2,
            max_dirs: 8,
        };
        let mut rx = start(&watchers, dir.path().into(), false, limits)
            .await
            .unwrap();

        for i in 0..20 {
            std::fs::write(dir.path().join(format!("f{i}")), b"").unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;

        let seen = until(&mut rx, &[WatchEvent::Overflow]).await;
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(
            tokio::time::timeout(Duration::from_millis(300), rx.recv())
                .await
                .is_err(),
            "events after the overflow with nothing new"
        );
    }

    #[test]
    fn watchers_past_the_bound_are_refused_and_a_dropped_one_frees_its_slot() {
        let watchers = Arc::new(Watchers::default());
        let mut held: Vec<Slot> = (0..MAX_WATCHERS)
            .map(|_| Slot::take(&watchers).unwrap())
            .collect();

        let refused = Slot::take(&watchers).map(|_| ());
        held.pop();

        assert_eq!(refused.unwrap_err().status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(Slot::take(&watchers).is_ok());
    }
}
