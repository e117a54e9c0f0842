//! `POST /v1/exec`: runs a process in its own process group and streams its output as NDJSON
//! [`ExecEvent`]s while it is produced; a timeout or a vanished client kills the whole group.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use nexus_lib::agent::{EXEC_CHUNK_BYTES, ExecEvent, ExecRequest, MAX_REQUEST_JSON_BYTES};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::server::{self, ApiError, ApiResult};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long output is still collected after the process exited (background children may hold the
/// pipes open forever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

pub async fn handle(req: Request<Incoming>) -> ApiResult {
    let request: ExecRequest = server::read_json(req.into_body(), MAX_REQUEST_JSON_BYTES).await?;
    request.validate().map_err(ApiError::bad_request)?;
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    match spawn(&request) {
        Ok(child) => {
            tokio::spawn(supervise(child, request.stdin, request.timeout_ms, tx));
        }
        Err(e) => {
            let message = format!("cannot run {:?}: {e}", request.argv[0]);
            let _ = tx.send(encode(&ExecEvent::Error { message })).await;
        }
    }
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, io::Error>(line), rx))
    });
    Ok(server::streamed("application/x-ndjson", chunks))
}

/// Spawns the process, killed if its `Child` is dropped.
fn spawn(req: &ExecRequest) -> io::Result<Child> {
    command(req)?.kill_on_drop(true).spawn()
}

/// The command for `req`, in its own process group, stdout and stderr piped. The program is
/// resolved against `PATH` here and no working directory is set unless asked for, so std can use
/// `posix_spawn` (a vfork) instead of forking the agent, which costs milliseconds under emulation.
pub fn command(req: &ExecRequest) -> io::Result<Command> {
    let path_var = req.env.get("PATH").map_or(DEFAULT_PATH, String::as_str);
    let program = resolve_program(&req.argv[0], path_var).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} not found in PATH", req.argv[0]),
        )
    })?;
    let mut cmd = Command::new(program);
    cmd.arg0(&req.argv[0])
        .args(&req.argv[1..])
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", "/root")
        .env("TERM", "xterm")
        .envs(&req.env)
        .stdin(if req.stdin.is_some() || req.keep_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(cwd) = &req.cwd {
        cmd.current_dir(cwd);
    }
    Ok(cmd)
}

/// `execvp`'s lookup: a name with a `/` is used as is, others are searched in `path_var`.
fn resolve_program(name: &str, path_var: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    path_var
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

async fn supervise(
    mut child: Child,
    stdin: Option<Vec<u8>>,
    timeout_ms: Option<u64>,
    tx: mpsc::Sender<Bytes>,
) {
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    if let (Some(mut pipe), Some(data)) = (child.stdin.take(), stdin) {
        tokio::spawn(async move {
            let _ = pipe.write_all(&data).await;
        });
    }
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let deadline = timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut timed_out = false;
    let mut status: Option<ExitStatus> = None;
    let mut drain_until = None;
    let (mut out_buf, mut err_buf) = (vec![0u8; EXEC_CHUNK_BYTES], vec![0u8; EXEC_CHUNK_BYTES]);
    while stdout.is_some() || stderr.is_some() || status.is_none() {
        let event = tokio::select! {
            n = read_some(&mut stdout, &mut out_buf) => n.map(|data| ExecEvent::Stdout { data }),
            n = read_some(&mut stderr, &mut err_buf) => n.map(|data| ExecEvent::Stderr { data }),
            s = child.wait(), if status.is_none() => match s {
                Ok(s) => {
                    status = Some(s);
                    drain_until = Some(Instant::now() + DRAIN_AFTER_EXIT);
                    None
                }
                Err(e) => {
                    kill_group(pgid);
                    let _ = tx.send(encode(&wait_failed(&e))).await;
                    return;
                }
            },
            () = sleep_until(deadline), if !timed_out => {
                timed_out = true;
                kill_group(pgid);
                None
            }
            () = sleep_until(drain_until) => break,
            // The host cancelled (the response stream was dropped): a silent process would
            // otherwise only notice at its next write, if ever.
            () = tx.closed() => {
                kill_group(pgid);
                return;
            }
        };
        if let Some(event) = event
            && tx.send(encode(&event)).await.is_err()
        {
            kill_group(pgid);
            return;
        }
    }
    let status = match status {
        Some(s) => s,
        None => match child.wait().await {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(encode(&wait_failed(&e))).await;
                return;
            }
        },
    };
    let exit = ExecEvent::Exit {
        code: status.code(),
        signal: status.signal(),
        timed_out,
    };
    let _ = tx.send(encode(&exit)).await;
}

/// A failed `wait` leaves the exit status unknown; reporting it as an exit 0 would be a lie.
fn wait_failed(e: &io::Error) -> ExecEvent {
    ExecEvent::Error {
        message: format!("waiting for the process failed: {e}"),
    }
}

/// Reads one chunk; on EOF or error clears the pipe and yields `None` (and never again).
async fn read_some<R: AsyncRead + Unpin>(pipe: &mut Option<R>, buf: &mut [u8]) -> Option<Vec<u8>> {
    let Some(reader) = pipe.as_mut() else {
        return std::future::pending().await;
    };
    match reader.read(buf).await {
        Ok(n) if n > 0 => Some(buf[..n].to_vec()),
        _ => {
            *pipe = None;
            None
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

pub fn kill_group(pgid: Option<Pid>) {
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
}

fn encode(event: &ExecEvent) -> Bytes {
    let mut line = serde_json::to_vec(event).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_with_slash_is_used_as_is() {
        assert_eq!(resolve_program("./x", ""), Some(PathBuf::from("./x")));
    }

    #[test]
    fn name_is_searched_in_path_order() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for d in [&a, &b] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("tool"), b"").unwrap();
            std::fs::set_permissions(d.join("tool"), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        std::fs::set_permissions(a.join("tool"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let path_var = format!("{}:{}", a.display(), b.display());
        assert_eq!(resolve_program("tool", &path_var), Some(b.join("tool")));
    }

    #[tokio::test]
    async fn silent_process_is_killed_when_the_client_goes_away() {
        let request = ExecRequest {
            argv: vec!["sleep".into(), "30".into()],
            env: Default::default(),
            cwd: None,
            stdin: None,
            timeout_ms: None,
            keep_stdin: false,
        };
        let child = spawn(&request).unwrap();
        let (tx, rx) = mpsc::channel::<Bytes>(16);

        drop(rx);
        let finished =
            tokio::time::timeout(Duration::from_secs(5), supervise(child, None, None, tx)).await;

        assert!(finished.is_ok());
    }

    #[test]
    fn missing_program_is_none() {
        assert_eq!(resolve_program("surely-not-here", "/nonexistent"), None);
    }
}
