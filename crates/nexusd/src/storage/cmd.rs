//! Running the external filesystem tools (`mke2fs`, `e2fsck`, `resize2fs`, `dumpe2fs`, `mkfs.btrfs`,
//! `mount`) as child processes: no shell, stdin closed, exit status checked, stderr kept for the error.

use std::env;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use super::StorageError;

/// How much of a tool's stderr is kept in an error: enough for the message, bounded for the log.
const STDERR_KEEP: usize = 2048;

/// Finds `name` in `PATH`, then in the sbin directories a non-root `PATH` usually lacks.
pub(crate) fn program(name: &str) -> PathBuf {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// A `Command` for the tool `name`, resolved with [`program`].
pub(crate) fn tool(name: &str) -> Command {
    let mut cmd = Command::new(program(name));
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to completion; any exit code outside `ok_codes` is a [`StorageError::Command`].
pub(crate) fn run(cmd: &mut Command, ok_codes: &[i32]) -> Result<Output, StorageError> {
    let line = describe(cmd);
    let output = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| StorageError::Spawn {
            command: line.clone(),
            source,
        })?;
    match output.status.code() {
        Some(code) if ok_codes.contains(&code) => Ok(output),
        _ => Err(StorageError::Command {
            command: line,
            status: output.status.to_string(),
            stderr: tail(&output.stderr),
        }),
    }
}

/// Runs `cmd` like [`run`], but asks `stop` every 50 ms whether to give up: when it answers an
/// error, the child is killed (`SIGKILL`), reaped, and that error returned. For tools that may run
/// long on untrusted input (`mke2fs -d` on a client's tree).
pub(crate) fn run_bounded(
    cmd: &mut Command,
    ok_codes: &[i32],
    stop: &dyn Fn() -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let line = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| StorageError::Spawn {
            command: line.clone(),
            source,
        })?;
    // Drained on its own thread so a chatty tool cannot block on a full pipe; the thread ends
    // when the child (killed or not) closes its end.
    let mut pipe = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(p) = pipe.as_mut() {
            let _ = std::io::Read::read_to_end(p, &mut buf);
        }
        buf
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(StorageError::Spawn {
                    command: line,
                    source,
                });
            }
        }
        if let Err(e) = stop() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join();
            return Err(e);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let stderr = reader.join().unwrap_or_default();
    match status.code() {
        Some(code) if ok_codes.contains(&code) => Ok(()),
        _ => Err(StorageError::Command {
            command: line,
            status: status.to_string(),
            stderr: tail(&stderr),
        }),
    }
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last [`STDERR_KEEP`] bytes of `stderr`, trimmed, as text.
fn tail(stderr: &[u8]) -> String {
    let start = stderr.len().saturating_sub(STDERR_KEEP);
    String::from_utf8_lossy(&stderr[start..]).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_reports_the_exit_status_and_stderr_of_a_failing_command() {
        let err = run(
            Command::new("sh").args(["-c", "echo boom >&2; exit 3"]),
            &[0],
        )
        .unwrap_err();
        let StorageError::Command { status, stderr, .. } = err else {
            panic!("unexpected {err:?}")
        };
        assert_eq!(
            (status.as_str(), stderr.as_str()),
            ("exit status: 3", "boom")
        );
    }

    #[test]
    fn run_accepts_listed_nonzero_codes() {
        assert!(run(Command::new("sh").args(["-c", "exit 1"]), &[0, 1]).is_ok());
    }

    #[test]
    fn run_bounded_kills_the_child_when_told_to_stop() {
        let started = std::time::Instant::now();
        let err = run_bounded(Command::new("sleep").arg("30"), &[0], &|| {
            if started.elapsed() > std::time::Duration::from_millis(200) {
                Err(StorageError::ImportCancelled)
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert!(matches!(err, StorageError::ImportCancelled), "{err:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn run_bounded_reports_stderr_of_a_failing_command() {
        let err = run_bounded(
            Command::new("sh").args(["-c", "echo boom >&2; exit 3"]),
            &[0],
            &|| Ok(()),
        )
        .unwrap_err();
        assert!(
            matches!(err, StorageError::Command { ref stderr, .. } if stderr == "boom"),
            "{err:?}"
        );
    }

    #[test]
    fn tail_keeps_the_end_of_long_output() {
        let long = vec![b'x'; STDERR_KEEP + 10];
        assert_eq!(tail(&long).len(), STDERR_KEEP);
    }
}
