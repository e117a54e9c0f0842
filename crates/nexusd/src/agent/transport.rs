//! The hybrid-vsock byte transport (Firecracker and vhost-device-vsock alike): connect to the Unix
//! socket, send `CONNECT <port>\n`, read `OK <hostport>\n` one byte at a time so no stream byte is
//! consumed, and the socket is then a stream to the guest's listener.
//!
//! A `CONNECT` is never abandoned before its answer: vhost-device-vsock (0.3.0) writes the `OK`
//! line with an `unwrap()`, so when the guest's answer finds the host end already closed (a
//! caller that timed out, a dropped request), the write fails with `EPIPE` and its vring worker
//! panics, and that VM's vsock is dead for good (every later `CONNECT` goes unanswered). So the
//! exchange runs on a task of its own: a caller that gives up leaves the task to read the answer
//! (for at most [`ABANDONED_ANSWER_WAIT`]) before the stream is closed.
//!
//! The socket lives in the VM's socket directory, which belongs to the VM's jailed (untrusted)
//! uid: it could plant a symlink there to steer nexusd, as root, into another socket of the host.
//! So the socket is opened with `O_PATH | O_NOFOLLOW`, checked to be a socket, and connected to
//! through `/proc/self/fd`. A symlink nexusd made itself (owned by nexusd's uid, which the jailed
//! uid cannot forge), such as the link into a Firecracker jailer's chroot, is followed once.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::AgentError;

/// Longest acknowledgement line accepted.
const MAX_ACK_BYTES: usize = 64;
/// How long a `CONNECT` whose caller gave up still waits for its answer before closing.
const ABANDONED_ANSWER_WAIT: Duration = Duration::from_secs(120);

/// Connects to the guest's vsock `port` through the hybrid-vsock socket `uds`. Cancelling this
/// future does not close a `CONNECT` still waiting for its answer (see the module comment).
pub async fn dial_hybrid_vsock(uds: &Path, port: u32) -> Result<UnixStream, AgentError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let path = uds.to_path_buf();
    tokio::spawn(async move {
        let dialled = tokio::time::timeout(ABANDONED_ANSWER_WAIT, connect(&path, port)).await;
        let result = dialled.unwrap_or_else(|_| {
            Err(AgentError::VsockHandshake {
                path,
                reason: format!("no answer to CONNECT within {ABANDONED_ANSWER_WAIT:?}"),
            })
        });
        // A caller that went away leaves the stream to be dropped here, after the answer.
        let _ = tx.send(result);
    });
    rx.await.unwrap_or_else(|_| {
        Err(AgentError::VsockHandshake {
            path: uds.to_path_buf(),
            reason: "the dialling task ended without an answer".into(),
        })
    })
}

/// `CONNECT <port>`, then the `OK` line.
async fn connect(uds: &Path, port: u32) -> Result<UnixStream, AgentError> {
    let connect_err = |source| AgentError::Connect {
        path: uds.to_path_buf(),
        source,
    };
    let fd = open_socket(uds, true).map_err(connect_err)?;
    let mut stream = UnixStream::connect(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .await
        .map_err(connect_err)?;
    drop(fd);
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

/// An `O_PATH` descriptor of the socket at `path`, refusing anything else (see the module
/// comment); `follow_own_link` allows one symlink owned by nexusd's own uid.
fn open_socket(path: &Path, follow_own_link: bool) -> std::io::Result<OwnedFd> {
    use rustix::fs::{FileType, Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let stat = rustix::fs::fstat(&fd)?;
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::Socket => Ok(fd),
        FileType::Symlink
            if follow_own_link && stat.st_uid == rustix::process::geteuid().as_raw() =>
        {
            let target = rustix::fs::readlinkat(&fd, "", Vec::new())?;
            let target = PathBuf::from(
                <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(
                    target.into_bytes(),
                ),
            );
            let target = match path.parent() {
                Some(dir) if target.is_relative() => dir.join(target),
                _ => target,
            };
            open_socket(&target, false)
        }
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a socket (a link or file planted in the VM's socket directory is not followed)",
        )),
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
    async fn a_link_made_by_our_own_uid_is_followed_once() {
        let (dir, path) = fake_vsock(b"OK 1\n").await;
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(dial_hybrid_vsock(&link, 1024).await.is_ok());
    }

    #[tokio::test]
    async fn a_link_to_a_link_and_a_regular_file_are_refused() {
        let (dir, path) = fake_vsock(b"OK 1\n").await;
        let (link, link2) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
        std::os::unix::fs::symlink(&path, &link).unwrap();
        std::os::unix::fs::symlink(&link, &link2).unwrap();
        let err = dial_hybrid_vsock(&link2, 1024).await.unwrap_err();
        assert!(matches!(err, AgentError::Connect { .. }), "{err}");
        let file = dir.path().join("file.sock");
        std::fs::write(&file, b"").unwrap();
        assert!(dial_hybrid_vsock(&file, 1024).await.is_err());
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_leaves_the_connect_open_until_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut connect = [0u8; 13];
            stream.read_exact(&mut connect).await.unwrap();
            // The guest answers late, after the caller below has given up.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            stream.write_all(b"OK 1073741824\n").await
        });

        let gave_up =
            tokio::time::timeout(Duration::from_millis(50), dial_hybrid_vsock(&path, 1024)).await;

        assert!(gave_up.is_err(), "the dial should still be waiting");
        let answer = server.await.unwrap();
        assert!(
            answer.is_ok(),
            "the answer found the stream closed: {answer:?}"
        );
    }

    #[tokio::test]
    async fn close_without_ok_is_a_handshake_error() {
        let (_dir, path) = fake_vsock(b"").await;
        let err = dial_hybrid_vsock(&path, 1024).await.unwrap_err();
        assert!(matches!(err, AgentError::VsockHandshake { .. }));
    }
}
