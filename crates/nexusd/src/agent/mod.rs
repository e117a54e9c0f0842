//! The host side of the guest-agent protocol: one multiplexed HTTP/2 connection per VM over the
//! hybrid-vsock Unix socket, shared by clones of [`AgentClient`] and re-dialled when it breaks.
//! Nothing the guest sends is trusted: every reply, line and error body is size-bounded.

mod client;
mod ndjson;
mod transport;

use std::path::PathBuf;
use std::time::Duration;

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
