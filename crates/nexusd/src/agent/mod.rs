//! The host side of the guest-agent protocol: one multiplexed HTTP/2 connection per VM over the
//! hybrid-vsock Unix socket, shared by clones of [`AgentClient`] and re-dialled when it breaks.
//! Nothing the guest sends is trusted: every reply, line and error body is size-bounded.

mod client;
#[cfg(test)]
pub(crate) mod fake;
mod ndjson;
mod terminal;
mod transport;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use client::{AgentClient, ByteStream, FileRange};
pub use ndjson::NdjsonDecoder;
pub use terminal::TerminalStream;
pub use transport::dial_hybrid_vsock;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot connect to the VM's vsock socket {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("hybrid-vsock handshake on {} failed: {reason}", path.display())]
    VsockHandshake { path: PathBuf, reason: String },
    #[error("HTTP/2 exchange with the agent failed")]
    Http(#[source] hyper::Error),
    #[error("the agent on {} did not answer within {waited:?}", path.display())]
    Timeout { path: PathBuf, waited: Duration },
    #[error("the agent replied {status} {code}: {message}")]
    Remote {
        status: u16,
        code: String,
        message: String,
    },
    #[error("no common protocol version: {0}")]
    Protocol(String),
    #[error("agent reply larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("malformed agent reply: {0}")]
    Malformed(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl From<hyper::Error> for AgentError {
    fn from(e: hyper::Error) -> Self {
        Self::Http(e)
    }
}

/// Waits until the agent announces itself ([`nexus_lib::agent::AGENT_READY_LINE`]) in the console
/// log after byte `start`, or `limit` passes. Dial only after this: vsock connections attempted
/// while the guest's vsock driver is still coming up can wedge vhost-device-vsock.
pub async fn wait_for_ready_line(console_log: &Path, start: u64, limit: Duration) {
    wait_for_console_line(
        console_log,
        start,
        nexus_lib::agent::AGENT_READY_LINE,
        limit,
    )
    .await;
}

/// How often the console is re-read even without an inotify event (and the only wake-up when
/// inotify is unavailable): a safety net, not the way the line is normally noticed.
const CONSOLE_FALLBACK_POLL: Duration = Duration::from_millis(250);

/// Waits until `line` shows up in the console log after byte `start`, or `limit` passes.
/// Reads only what was added since the last look, keeping a line's worth of overlap, and sleeps
/// on inotify (the log's directory, so a log not created yet is seen too) between looks.
async fn wait_for_console_line(log: &Path, start: u64, line: &str, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let watch = log.parent().and_then(|dir| match DirWatch::new(dir) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::debug!(error = %e, "no inotify on the console directory; polling");
            None
        }
    });
    let mut scan = ConsoleScan {
        offset: start,
        carry: Vec::new(),
    };
    loop {
        if scan.finds(log, line).await {
            return;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return;
        }
        let wake = deadline.min(now + CONSOLE_FALLBACK_POLL);
        match &watch {
            Some(w) => {
                let _ = tokio::time::timeout_at(wake, w.changed()).await;
            }
            None => tokio::time::sleep_until(wake).await,
        }
    }
}

/// Where a console search stands: the next byte to read and the tail kept across reads.
struct ConsoleScan {
    offset: u64,
    carry: Vec<u8>,
}

impl ConsoleScan {
    /// Reads what was appended since the last call (at most 1 MiB) and looks for `line` in it.
    async fn finds(&mut self, log: &Path, line: &str) -> bool {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let Ok(mut f) = tokio::fs::File::open(log).await else {
            return false;
        };
        let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            self.offset = 0; // rotated
        }
        let mut buf = Vec::new();
        if f.seek(std::io::SeekFrom::Start(self.offset)).await.is_err()
            || f.take(1 << 20).read_to_end(&mut buf).await.is_err()
        {
            return false;
        }
        self.offset += buf.len() as u64;
        self.carry.extend_from_slice(&buf);
        if self.carry.windows(line.len()).any(|w| w == line.as_bytes()) {
            return true;
        }
        let keep = self.carry.len().saturating_sub(line.len());
        self.carry.drain(..keep);
        false
    }
}

/// An inotify watch on a directory: wakes when a file in it is created or written.
struct DirWatch(tokio::io::unix::AsyncFd<InotifyFd>);

struct InotifyFd(nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

impl DirWatch {
    fn new(dir: &Path) -> std::io::Result<Self> {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        inotify.add_watch(
            dir,
            AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO,
        )?;
        let fd = InotifyFd(inotify);
        // SAFETY: `InotifyFd` owns the inotify descriptor and always returns that same one; it
        // stays open until the `AsyncFd` (its only owner) is dropped.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        };
        registered.map(Self).map_err(|e| e.into_parts().1)
    }

    /// Returns once at least one event arrived (all pending events are consumed).
    async fn changed(&self) {
        loop {
            let Ok(mut ready) = self.0.readable().await else {
                return std::future::pending().await;
            };
            match ready.try_io(|fd| fd.get_ref().0.read_events().map_err(std::io::Error::from)) {
                Ok(Ok(_)) => return,
                Ok(Err(_)) => return std::future::pending().await,
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[tokio::test]
    async fn ready_line_appended_later_is_noticed_without_polling_delay() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, b"booting\n").unwrap();
        let writer = {
            let log = log.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
                f.write_all(b"nexus-agent: ready on vsock\n").unwrap();
            })
        };
        let started = tokio::time::Instant::now();

        wait_for_ready_line(&log, 0, Duration::from_secs(5)).await;

        writer.await.unwrap();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        assert!(waited < CONSOLE_FALLBACK_POLL, "{waited:?}");
    }

    #[tokio::test]
    async fn a_missing_line_waits_the_whole_limit() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, b"kernel panic\n").unwrap();
        let started = tokio::time::Instant::now();

        wait_for_ready_line(&log, 0, Duration::from_millis(100)).await;

        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}
