//! Directory watching for envd's `filesystem.Filesystem`: the `WatchDir` stream and the trio
//! `CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher`, both fed by the agent's inotify watch
//! (`GET /v1/watch`), its events named relative to the watched directory as E2B names them.
//!
//! E2B's `EventType` has no overflow. When events were lost (the guest reports an overflow) or
//! the watch broke, a `WatchDir` stream ends with a `resource_exhausted` (or the agent's) error,
//! and a created watcher answers its next `GetWatcherEvents` with that error and is removed: the
//! SDK raises it instead of the caller missing events without knowing. Bounded per sandbox in
//! watchers and in events queued for `GetWatcherEvents` (past the bound: the overflow above);
//! each guest event is checked by the agent client (a bounded relative name).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use axum::Extension;
use axum::body::Body;
use axum::response::Response;
use futures_util::{Stream, StreamExt};
use nexus_lib::agent::{FileKind, WatchEvent, WatchOp};

use super::connect::{
    Code, ConnectError, EnvelopeReader, stream_error, stream_response, unary_request,
    unary_response,
};
use super::filesystem::guest_path;
use super::process::agent_error;
use super::proto::filesystem::{
    CreateWatcherRequest, CreateWatcherResponse, EventType, FilesystemEvent,
    GetWatcherEventsRequest, GetWatcherEventsResponse, RemoveWatcherRequest, RemoveWatcherResponse,
    WatchDirRequest, WatchDirResponse, watch_dir_response,
};
use super::sandbox::EnvdSandbox;
use crate::agent::AgentError;

/// Most watchers per sandbox (streams and created ones together).
const MAX_WATCHERS: usize = 16;
/// Most events a created watcher queues between two `GetWatcherEvents`.
const MAX_QUEUED_EVENTS: usize = 1024;

type Events = std::pin::Pin<Box<dyn Stream<Item = Result<WatchEvent, AgentError>> + Send>>;

/// The watchers of one sandbox.
#[derive(Default)]
pub(crate) struct Watchers {
    map: Mutex<HashMap<String, Arc<Mutex<Queued>>>>,
    streams: AtomicUsize,
}

impl Watchers {
    fn count(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
            + self.streams.load(Ordering::Relaxed)
    }
}

/// A created watcher: its events until the next `GetWatcherEvents`, or why it ended.
#[derive(Default)]
struct Queued {
    events: VecDeque<FilesystemEvent>,
    failed: Option<ConnectError>,
    task: Option<tokio::task::AbortHandle>,
}

impl Queued {
    /// Queues what the guest reported; `false` once nothing more will be queued.
    fn push(&mut self, event: Result<WatchEvent, AgentError>) -> bool {
        match event.map_err(agent_error).and_then(to_e2b) {
            Ok(None) => true,
            Ok(Some(_)) if self.events.len() >= MAX_QUEUED_EVENTS => {
                self.failed = Some(lost(&format!(
                    "more than {MAX_QUEUED_EVENTS} events between two GetWatcherEvents"
                )));
                false
            }
            Ok(Some(event)) => {
                self.events.push_back(event);
                true
            }
            Err(e) => {
                self.failed = Some(e);
                false
            }
        }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

fn lost(why: &str) -> ConnectError {
    ConnectError::new(
        Code::ResourceExhausted,
        format!("watch events were lost ({why}); watch again"),
    )
}

/// An agent event as E2B's: `Ok(None)` for a keep-alive, an error for the ends of a watch.
fn to_e2b(event: WatchEvent) -> Result<Option<FilesystemEvent>, ConnectError> {
    let (op, name) = match event {
        WatchEvent::Fs { op, name } => (op, name),
        WatchEvent::Keepalive => return Ok(None),
        WatchEvent::Overflow => return Err(lost("the guest's queue overflowed")),
        WatchEvent::Gone => {
            return Err(ConnectError::not_found(
                "the watched directory was removed or moved",
            ));
        }
    };
    let r#type = match op {
        WatchOp::Create => EventType::Create,
        WatchOp::Write => EventType::Write,
        WatchOp::Remove => EventType::Remove,
        WatchOp::Rename => EventType::Rename,
        WatchOp::Chmod => EventType::Chmod,
    };
    Ok(Some(FilesystemEvent {
        name,
        r#type: r#type as i32,
        entry: None,
    }))
}

/// Checks the bound and that `path` is a directory, then starts the agent's watch.
async fn start_watch(
    sbx: &EnvdSandbox,
    path: &str,
    recursive: bool,
) -> Result<Events, ConnectError> {
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
    sbx.agent.watch(&dir, recursive).await.map_err(agent_error)
}

/// Counts a `WatchDir` stream among the sandbox's watchers while it lives.
struct StreamCount(Arc<super::sandbox::Runtime>);

impl Drop for StreamCount {
    fn drop(&mut self) {
        self.0.watchers.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `WatchDir` (server stream).
pub(super) async fn watch_dir(Extension(sbx): Extension<EnvdSandbox>, body: Body) -> Response {
    let mut reader = EnvelopeReader::new(body);
    let req: WatchDirRequest = match reader.next().await {
        Ok(Some(r)) => r,
        Ok(None) => return stream_error(ConnectError::invalid("missing WatchDirRequest")),
        Err(e) => return stream_error(e),
    };
    let mut events = match start_watch(&sbx, &req.path, req.recursive).await {
        Ok(v) => v,
        Err(e) => return stream_error(e),
    };
    sbx.rt.watchers.streams.fetch_add(1, Ordering::Relaxed);
    let count = StreamCount(sbx.rt.clone());
    let (tx, resp) = stream_response();
    tokio::spawn(async move {
        let _count = count;
        let wrap = |e| WatchDirResponse { event: Some(e) };
        let start = watch_dir_response::Event::Start(watch_dir_response::StartEvent {});
        if !tx.send(&wrap(start)).await {
            return;
        }
        loop {
            let next = tokio::select! {
                next = events.next() => next,
                () = tx.closed() => return,
            };
            let message = match next.map(|e| e.map_err(agent_error).and_then(to_e2b)) {
                Some(Ok(Some(event))) => watch_dir_response::Event::Filesystem(event),
                Some(Ok(None)) => {
                    watch_dir_response::Event::Keepalive(watch_dir_response::KeepAlive {})
                }
                Some(Err(e)) => return tx.end(Some(e)).await,
                None => {
                    return tx
                        .end(Some(ConnectError::new(
                            Code::Unavailable,
                            "the guest ended the watch",
                        )))
                        .await;
                }
            };
            if !tx.send(&wrap(message)).await {
                return;
            }
        }
    });
    resp
}

fn unary<T: serde::Serialize>(result: Result<T, ConnectError>) -> Response {
    match result {
        Ok(msg) => unary_response(&msg),
        Err(e) => e.into_response_unary(),
    }
}

/// Queues `events` into `queued` until it is dropped, the watch ends or the queue overflows.
async fn feed(mut events: Events, queued: Weak<Mutex<Queued>>) {
    loop {
        let next = events
            .next()
            .await
            .ok_or_else(|| AgentError::Malformed("the guest ended the watch".into()));
        let Some(queued) = queued.upgrade() else {
            return;
        };
        let more = queued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(next.and_then(|r| r));
        if !more {
            return;
        }
    }
}

pub(super) async fn create_watcher(Extension(sbx): Extension<EnvdSandbox>, body: Body) -> Response {
    unary(
        async {
            let req: CreateWatcherRequest = unary_request(body).await?;
            let events = start_watch(&sbx, &req.path, req.recursive).await?;
            let id = uuid::Uuid::new_v4().simple().to_string();
            let queued = Arc::new(Mutex::new(Queued::default()));
            let task = tokio::spawn(feed(events, Arc::downgrade(&queued)));
            queued.lock().unwrap_or_else(|e| e.into_inner()).task = Some(task.abort_handle());
            sbx.rt
                .watchers
                .map
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.clone(), queued);
            Ok(CreateWatcherResponse { watcher_id: id })
        }
        .await,
    )
}

fn not_found(id: &str) -> ConnectError {
    ConnectError::not_found(format!("watcher {id} not found"))
}

pub(super) async fn get_watcher_events(
    Extension(sbx): Extension<EnvdSandbox>,
    body: Body,
) -> Response {
    unary(
        async {
            let req: GetWatcherEventsRequest = unary_request(body).await?;
            let mut map = sbx
                .rt
                .watchers
                .map
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let queued = map
                .get(&req.watcher_id)
                .ok_or_else(|| not_found(&req.watcher_id))?;
            let mut q = queued.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = q.failed.take() {
                drop(q);
                map.remove(&req.watcher_id);
                return Err(e);
            }
            Ok(GetWatcherEventsResponse {
                events: q.events.drain(..).collect(),
            })
        }
        .await,
    )
}

pub(super) async fn remove_watcher(Extension(sbx): Extension<EnvdSandbox>, body: Body) -> Response {
    unary(
        async {
            let req: RemoveWatcherRequest = unary_request(body).await?;
            sbx.rt
                .watchers
                .map
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&req.watcher_id)
                .ok_or_else(|| not_found(&req.watcher_id))?;
            Ok(RemoveWatcherResponse {})
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(op: WatchOp, name: &str) -> Result<WatchEvent, AgentError> {
        Ok(WatchEvent::Fs {
            op,
            name: name.into(),
        })
    }

    #[test]
    fn guest_events_are_queued_as_e2b_events_and_keepalives_are_not() {
        let mut q = Queued::default();

        q.push(fs(WatchOp::Create, "a"));
        q.push(Ok(WatchEvent::Keepalive));
        q.push(fs(WatchOp::Chmod, "sub/b"));

        let got: Vec<(String, i32)> = q
            .events
            .iter()
            .map(|e| (e.name.clone(), e.r#type))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), EventType::Create as i32),
                ("sub/b".into(), EventType::Chmod as i32),
            ]
        );
    }

    #[test]
    fn a_guest_overflow_fails_the_watcher_with_resource_exhausted() {
        let mut q = Queued::default();

        let more = q.push(Ok(WatchEvent::Overflow));

        assert!(!more);
        assert_eq!(
            q.failed.as_ref().map(|e| e.code),
            Some(Code::ResourceExhausted)
        );
    }

    #[test]
    fn a_full_host_queue_fails_the_watcher_instead_of_dropping_events() {
        let mut q = Queued::default();
        for _ in 0..MAX_QUEUED_EVENTS {
            q.push(fs(WatchOp::Write, "f"));
        }

        let more = q.push(fs(WatchOp::Write, "f"));

        assert!(!more);
        assert_eq!(q.events.len(), MAX_QUEUED_EVENTS);
        assert_eq!(
            q.failed.as_ref().map(|e| e.code),
            Some(Code::ResourceExhausted)
        );
    }
}
