//! The hybrid-vsock byte transport (Firecracker and vhost-device-vsock alike): connect to the Unix
//! socket, send `CONNECT <port>\n`, read `OK <hostport>\n` one byte at a time so no stream byte is
//! consumed, and the socket is then a stream to the guest's listener.

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::AgentError;

/// Longest acknowledgement line accepted.
const MAX_ACK_BYTES: usize = 64;

pub async fn dial_hybrid_vsock(uds: &Path, port: u32) -> Result<UnixStream, AgentError> {
    let connect_err = |source| AgentError::Connect {
        path: uds.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(uds).await.map_err(connect_err)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(connect_err)?;
    let mut line = Vec::with_capacity(MAX_ACK_BYTES);
    loop {
        let mut byte = [0u8; 1];
        let handshake_err = |reason: String| AgentError::VsockHandshake {
            path: uds.to_path_buf(),
            reason,
        };
        match stream.read(&mut byte).await {
            Ok(0) => {
                return Err(handshake_err(
                    "closed before OK (is the agent listening?)".into(),
                ));
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() < MAX_ACK_BYTES => line.push(byte[0]),
            Ok(_) => return Err(handshake_err("acknowledgement line too long".into())),
            Err(e) => return Err(handshake_err(e.to_string())),
        }
    }
    if line.starts_with(b"OK ") {
        Ok(stream)
    } else {
        let reason = format!("unexpected reply {:?}", String::from_utf8_lossy(&line));
        Err(AgentError::VsockHandshake {
            path: uds.to_path_buf(),
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::UnixListener;

    use super::*;

    async fn fake_vsock(reply: &'static [u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut stream = BufReader::new(stream);
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            assert_eq!(line, "CONNECT 1024\n");
            stream.get_mut().write_all(reply).await.unwrap();
        });
        (dir, path)
    }

    #[tokio::test]
    async fn ok_line_is_consumed_and_following_bytes_stay_in_stream() {
        let (_dir, path) = fake_vsock(b"OK 1073741824\nhello").await;
        let mut stream = dial_hybrid_vsock(&path, 1024).await.unwrap();
        let mut rest = String::new();
        stream.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "hello");
    }

    #[tokio::test]
    async fn close_without_ok_is_a_handshake_error() {
        let (_dir, path) = fake_vsock(b"").await;
        let err = dial_hybrid_vsock(&path, 1024).await.unwrap_err();
        assert!(matches!(err, AgentError::VsockHandshake { .. }));
    }
}
