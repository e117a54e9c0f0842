//! The one runner for external tools run to completion: the file-system tools of the storage
//! pool (`mke2fs`, `e2fsck`, `resize2fs`, `dumpe2fs`, `mkfs.btrfs`, `mount`, `unshare`) and of the
//! boot assets (`dpkg-deb`, `xz`/`zstd`/`gzip`, `busybox --list-full`), and the kernel build's
//! short steps (`apt-get download`, `dpkg-deb`, `gcc`/`ld --version`; its long `make` steps stream
//! into the build's own log, see `assets::kernel_build`). No shell, stdin closed,
//! `LC_ALL=C` so that output nexusd parses has one format, success decided by the exit status
//! alone. Stderr is kept, bounded, for the error message only: it is never matched to decide
//! anything (callers that need to know why a tool failed look at the state it left). VMMs and
//! their helpers are long-lived children owned by a supervisor: they are spawned by `vmm/`.

use std::env;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};

/// How much of a tool's stderr is kept in an error: enough for the message, bounded for the log.
const STDERR_KEEP: usize = 2048;

/// A tool that could not be run or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("could not run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        /// The end of its stderr, for people to read.
        stderr: String,
    },
}

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
    Command::new(program(name))
}

/// Runs `cmd` to completion (stdin closed, `LC_ALL=C`); any exit code outside `ok_codes` is a
/// [`CommandError::Failed`].
pub(crate) fn run(cmd: &mut Command, ok_codes: &[i32]) -> Result<Output, CommandError> {
    let line = prepare(cmd);
    let output = cmd
        .stdout(Stdio::piped())
        .output()
        .map_err(spawn_failed(&line))?;
    check(line, output.status, &output.stderr, ok_codes).map(|()| output)
}

/// Runs `cmd` like [`run`], but asks `stop` every 50 ms whether to give up: when it answers an
/// error, the child is killed (`SIGKILL`), reaped, and that error returned. For tools that may run
/// long on untrusted input (`mke2fs -d` on a client's tree).
pub(crate) fn run_bounded<E: From<CommandError>>(
    cmd: &mut Command,
    ok_codes: &[i32],
    stop: &dyn Fn() -> Result<(), E>,
) -> Result<(), E> {
    let line = prepare(cmd);
    let mut child = cmd
        .stdout(Stdio::null())
        .spawn()
        .map_err(spawn_failed(&line))?;
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
    let kill = |child: &mut Child| {
        let _ = child.kill();
        let _ = child.wait();
    };
    let status = match wait_or_stop(&mut child, &line, stop, &kill) {
        Ok(status) => status,
        Err(e) => {
            let _ = reader.join();
            return Err(e);
        }
    };
    let stderr = reader.join().unwrap_or_default();
    Ok(check(line, status, &stderr, ok_codes)?)
}

/// Waits for `child`, asking `stop` every 50 ms whether to give up; when it answers an error (or
/// waiting fails), `kill` ends and reaps the child and the error is returned.
fn wait_or_stop<E: From<CommandError>>(
    child: &mut Child,
    line: &str,
    stop: &dyn Fn() -> Result<(), E>,
    kill: &dyn Fn(&mut Child),
) -> Result<ExitStatus, E> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            Err(source) => {
                kill(child);
                return Err(spawn_failed(line)(source).into());
            }
        }
        if let Err(e) = stop() {
            kill(child);
            return Err(e);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Runs `cmd` like [`run_bounded`], with two differences for long builds that start tools of
/// their own (`mmdebstrap`, which runs apt and dpkg): the child leads its own process group, and
/// a stop kills the whole group (`SIGKILL`), so nothing it started outlives it; and each line of
/// its stderr is handed to `on_line` as it comes (progress), while the end is kept for the error.
pub(crate) fn run_streaming<E: From<CommandError>>(
    cmd: &mut Command,
    ok_codes: &[i32],
    stop: &dyn Fn() -> Result<(), E>,
    on_line: &(dyn Fn(&str) + Sync),
) -> Result<(), E> {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let line = prepare(cmd);
    let mut child = cmd
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(spawn_failed(&line))?;
    let group = rustix::process::Pid::from_child(&child);
    let kill_group = |child: &mut Child| {
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let _ = child.kill();
        let _ = child.wait();
    };
    let pipe = child.stderr.take();
    std::thread::scope(|scope| {
        // Ends when every process of the group closed its end of the pipe.
        let reader = scope.spawn(move || {
            let mut kept: Vec<u8> = Vec::new();
            let Some(pipe) = pipe else { return kept };
            for text in std::io::BufReader::new(pipe)
                .split(b'\n')
                .map_while(Result::ok)
            {
                on_line(&String::from_utf8_lossy(&text));
                kept.extend_from_slice(&text);
                kept.push(b'\n');
                if kept.len() > 2 * STDERR_KEEP {
                    kept.drain(..kept.len() - STDERR_KEEP);
                }
            }
            kept
        });
        let status = wait_or_stop(&mut child, &line, stop, &kill_group)?;
        // The leader is gone; whatever of its group is left goes with it.
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let stderr = reader.join().unwrap_or_default();
        Ok(check(line, status, &stderr, ok_codes)?)
    })
}

/// Success when the exit code is one of `ok_codes`; a signal or any other code is a failure.
fn check(
    command: String,
    status: ExitStatus,
    stderr: &[u8],
    ok_codes: &[i32],
) -> Result<(), CommandError> {
    match status.code() {
        Some(code) if ok_codes.contains(&code) => Ok(()),
        _ => Err(CommandError::Failed {
            command,
            status,
            stderr: tail(stderr),
        }),
    }
}

/// Sets what every run shares (the C locale, stdin closed, stderr captured) and returns the
/// command line for messages.
fn prepare(cmd: &mut Command) -> String {
    cmd.env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    describe(cmd)
}

fn spawn_failed(command: &str) -> impl FnOnce(std::io::Error) -> CommandError + '_ {
    |source| CommandError::Spawn {
        command: command.to_owned(),
        source,
    }
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last [`STDERR_KEEP`] bytes of `stderr`, cleaned, trimmed, as text.
fn tail(stderr: &[u8]) -> String {
    let start = stderr.len().saturating_sub(STDERR_KEEP);
    crate::sanitize::clean_lines(&stderr[start..], STDERR_KEEP)
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a caller's stop check answers in these tests.
    #[derive(Debug)]
    enum Stop {
        Asked,
        Tool(CommandError),
    }

    impl From<CommandError> for Stop {
        fn from(e: CommandError) -> Self {
            Self::Tool(e)
        }
    }

    #[test]
    fn run_reports_the_exit_status_and_stderr_of_a_failing_command() {
        let err = run(
            Command::new("sh").args(["-c", "echo boom >&2; exit 3"]),
            &[0],
        )
        .unwrap_err();
        let CommandError::Failed { status, stderr, .. } = err else {
            panic!("unexpected {err:?}")
        };
        assert_eq!((status.code(), stderr.as_str()), (Some(3), "boom"));
    }

    #[test]
    fn run_accepts_listed_nonzero_codes() {
        assert!(run(Command::new("sh").args(["-c", "exit 1"]), &[0, 1]).is_ok());
    }

    #[test]
    fn run_sets_the_c_locale() {
        let out = run(
            Command::new("sh")
                .args(["-c", "echo $LC_ALL"])
                .env("LC_ALL", "de_DE.UTF-8"),
            &[0],
        )
        .unwrap();
        assert_eq!(out.stdout, b"C\n");
    }

    #[test]
    fn run_bounded_kills_the_child_when_told_to_stop() {
        let started = std::time::Instant::now();
        let err = run_bounded(Command::new("sleep").arg("30"), &[0], &|| {
            if started.elapsed() > std::time::Duration::from_millis(200) {
                Err(Stop::Asked)
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert!(matches!(err, Stop::Asked), "{err:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn run_bounded_reports_stderr_of_a_failing_command() {
        let err = run_bounded(
            Command::new("sh").args(["-c", "echo boom >&2; exit 3"]),
            &[0],
            &|| Ok::<(), Stop>(()),
        )
        .unwrap_err();
        assert!(
            matches!(err, Stop::Tool(CommandError::Failed { ref stderr, .. }) if stderr == "boom"),
            "{err:?}"
        );
    }

    #[test]
    fn run_streaming_hands_over_lines_and_kills_the_whole_group() {
        let lines = std::sync::Mutex::new(Vec::new());
        let started = std::time::Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let script = format!(
            "echo one >&2; echo two >&2; (sleep 2; touch {}) & sleep 30",
            marker.display()
        );
        let err = run_streaming(
            Command::new("sh").args(["-c", &script]),
            &[0],
            &|| {
                if started.elapsed() > std::time::Duration::from_millis(500) {
                    Err(Stop::Asked)
                } else {
                    Ok(())
                }
            },
            &|l| lines.lock().unwrap().push(l.to_owned()),
        )
        .unwrap_err();
        assert!(matches!(err, Stop::Asked), "{err:?}");
        std::thread::sleep(std::time::Duration::from_secs(3));
        assert_eq!(
            (lines.into_inner().unwrap(), marker.exists()),
            (vec!["one".to_owned(), "two".to_owned()], false)
        );
    }

    #[test]
    fn tail_keeps_the_end_of_long_output() {
        let long = vec![b'x'; STDERR_KEEP + 10];
        assert_eq!(tail(&long).len(), STDERR_KEEP);
    }
}
