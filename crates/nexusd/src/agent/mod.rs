//! The host side of the guest-agent protocol: one multiplexed HTTP/2 connection per VM over the
//! hybrid-vsock Unix socket, shared by clones of [`AgentClient`] and re-dialled when it breaks.
//! Nothing the guest sends is trusted: every reply, line and error body is size-bounded.

mod client;
#[cfg(test)]
pub(crate) mod fake;
mod ndjson;
mod transport;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use client::{AgentClient, ByteStream};
pub use ndjson::NdjsonDecoder;
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

/// Waits until `line` shows up in the console log after byte `start`, or `limit` passes.
/// Reads only what was added since the last look, keeping a line's worth of overlap.
async fn wait_for_console_line(log: &Path, start: u64, line: &str, limit: Duration) {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let deadline = Instant::now() + limit;
    let mut offset = start;
    let mut carry = Vec::new();
    while Instant::now() < deadline {
        if let Ok(mut f) = tokio::fs::File::open(log).await {
            let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
            if len < offset {
                offset = 0; // rotated
            }
            let mut buf = Vec::new();
            if f.seek(std::io::SeekFrom::Start(offset)).await.is_ok()
                && f.take(1 << 20).read_to_end(&mut buf).await.is_ok()
            {
                offset += buf.len() as u64;
                carry.extend_from_slice(&buf);
                if carry.windows(line.len()).any(|w| w == line.as_bytes()) {
                    return;
                }
                let keep = carry.len().saturating_sub(line.len());
                carry.drain(..keep);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
