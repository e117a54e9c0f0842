//! Moving a background process's output from its pipes into its log files, and the drain that
//! decides when its exit may be recorded.
//!
//! A pump owns one pipe. A chunk is in the file before the log counts it: a tokio `File` write
//! only hands the bytes to the blocking pool, so each write is flushed first, or a reader could
//! be told of bytes the file does not hold yet and, at the exit, miss them for good.
//!
//! When the process exits, every pump reads exactly the bytes its pipe holds at that moment
//! (`FIONREAD`) and says so. Everything the process wrote is then in the logs, however late the
//! pumps got to run, and without waiting for the pipes to close: children left behind may hold
//! them open for ever. Only then does the grace period for such children start. The pumps go
//! on until their pipes close, so what the children write later is kept too.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nexus_lib::agent::OutputStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::Proc;

const CHUNK_BYTES: usize = 32 * 1024;
/// Punch holes in page-sized steps, and only once a stream is this far past its bound, so a
/// steady writer does not punch on every chunk.
const PUNCH_STEP: u64 = 1024 * 1024;

/// The pumps of one process.
pub(super) struct Pumps {
    exited: watch::Sender<bool>,
    /// Each resolves (or is dropped, when its pump ended) once its pump drained what its pipe
    /// held at the exit.
    drained: Vec<oneshot::Receiver<()>>,
    tasks: Vec<JoinHandle<()>>,
    /// How long each pump waits before it starts: a stand-in for a loaded scheduler.
    #[cfg(test)]
    pub start_delay: Duration,
}

impl Pumps {
    pub fn new() -> Self {
        Self {
            exited: watch::Sender::new(false),
            drained: Vec::new(),
            tasks: Vec::new(),
            #[cfg(test)]
            start_delay: Duration::ZERO,
        }
    }

    /// Starts appending what `pipe` yields to `proc`'s `stream` log, keeping its newest `bound`
    /// bytes.
    pub fn spawn<R>(
        &mut self,
        pipe: R,
        file: tokio::fs::File,
        proc: Arc<Proc>,
        stream: OutputStream,
        bound: u64,
    ) where
        R: AsyncRead + AsFd + Unpin + Send + 'static,
    {
        let (drained, drained_rx) = oneshot::channel();
        let exited = self.exited.subscribe();
        let sink = Sink {
            file,
            proc,
            stream,
            bound,
            failed: false,
        };
        #[cfg(test)]
        let delay = self.start_delay;
        self.drained.push(drained_rx);
        self.tasks.push(tokio::spawn(async move {
            #[cfg(test)]
            tokio::time::sleep(delay).await;
            pump(pipe, sink, exited, drained).await;
        }));
    }

    /// Called once the process exited: returns when every byte its pipes held is in the logs,
    /// and their pipes closed or `grace` passed since.
    pub async fn drain(self, grace: Duration) {
        self.exited.send_replace(true);
        for drained in self.drained {
            let _ = drained.await;
        }
        let closed = futures_util::future::join_all(self.tasks);
        let _ = tokio::time::timeout(grace, closed).await;
    }
}

/// One stream's log file, as its pump writes it.
struct Sink {
    file: tokio::fs::File,
    proc: Arc<Proc>,
    stream: OutputStream,
    bound: u64,
    /// A write failed (a full file system): later output is drained and dropped, so the process
    /// is not stopped by a full pipe.
    failed: bool,
}

impl Sink {
    async fn append(&mut self, data: &[u8]) {
        if !self.failed {
            let stored = match self.file.write_all(data).await {
                Ok(()) => self.file.flush().await,
                Err(e) => Err(e),
            };
            self.failed = stored.is_err();
        }
        let log = self.proc.log(self.stream);
        let n = data.len() as u64;
        let written = log.written.fetch_add(n, Ordering::AcqRel) + n;
        self.proc.changed.send_modify(|n| *n += 1);
        let start = log.start.load(Ordering::Acquire);
        if written - start > self.bound + PUNCH_STEP {
            let new_start = (written - self.bound) & !4095;
            if punch(&self.file, start, new_start - start).is_ok() {
                log.start.store(new_start, Ordering::Release);
            }
        }
    }
}

/// Appends what `pipe` yields to `sink` until the pipe closes; once `exited` turns true, reads
/// what the pipe holds then and reports it through `drained`.
async fn pump<R: AsyncRead + AsFd + Unpin>(
    mut pipe: R,
    mut sink: Sink,
    mut exited: watch::Receiver<bool>,
    drained: oneshot::Sender<()>,
) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut drained = Some(drained);
    loop {
        // Checked before every read: a child left behind that writes without pause must not
        // keep the exit from being recorded.
        if drained.is_some() && *exited.borrow_and_update() {
            let mut left = buffered(&pipe);
            while left > 0 {
                let n = match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                sink.append(&buf[..n]).await;
                left = left.saturating_sub(n);
            }
            if let Some(drained) = drained.take() {
                let _ = drained.send(());
            }
        }
        let n = tokio::select! {
            read = pipe.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = exited.changed(), if drained.is_some() => {
                if changed.is_err() {
                    drained = None;
                }
                continue;
            }
        };
        sink.append(&buf[..n]).await;
    }
}

/// How many bytes `pipe` holds unread (0 when it cannot tell).
fn buffered(pipe: &impl AsFd) -> usize {
    rustix::io::ioctl_fionread(pipe)
        .ok()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0)
}

/// Frees bytes `offset..offset+len` of `file` (they read as zeros; the size is kept).
fn punch(file: &tokio::fs::File, offset: u64, len: u64) -> nix::Result<()> {
    use nix::fcntl::{FallocateFlags, fallocate};
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    fallocate(file.as_fd(), flags, offset as i64, len as i64)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::processes::Log;

    fn proc_logging_to(dir: &Path) -> Arc<Proc> {
        let log = |name: &str| Log {
            path: dir.join(name),
            written: AtomicU64::new(0),
            start: AtomicU64::new(0),
        };
        Arc::new(Proc {
            id: 1,
            pid: 0,
            command: String::new(),
            started_ms: 0,
            stdout: log("1.stdout"),
            stderr: log("1.stderr"),
            exit: Mutex::new(None),
            stdin: tokio::sync::Mutex::new(None),
            changed: watch::Sender::new(0),
        })
    }

    #[test]
    fn the_log_counts_a_chunk_only_once_it_is_in_the_file() {
        // One blocking thread, held: a file write handed to the pool waits until it is released.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(1)
            .build()
            .unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let proc = proc_logging_to(dir.path());
            let file = super::super::create(&proc.stdout.path).await.unwrap();
            let (release, held) = std::sync::mpsc::channel::<()>();
            let (holding, started) = oneshot::channel();
            tokio::task::spawn_blocking(move || {
                let _ = holding.send(());
                let _ = held.recv();
            });
            started.await.unwrap();
            let (mut writer, reader) = tokio::net::unix::pipe::pipe().unwrap();
            writer.write_all(b"hi").await.unwrap();
            drop(writer);
            let mut changes = proc.changed.subscribe();
            let mut pumps = Pumps::new();
            pumps.spawn(reader, file, proc.clone(), OutputStream::Stdout, 1 << 20);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = release.send(());
            });

            changes.changed().await.unwrap();
            let counted = proc.stdout.written.load(Ordering::Acquire);
            let in_file = std::fs::metadata(&proc.stdout.path).unwrap().len();

            assert_eq!((counted, in_file), (2, 2));
        });
    }
}
