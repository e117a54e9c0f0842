//! The build log: every step's output (stdout and stderr through one pipe, so they interleave
//! as they happened) streamed into a file that never grows past a bound. When the file reaches
//! its bound it becomes `<name>.1` (replacing the previous one) and a new file starts, so the
//! newest output is always on disk and the pair never holds more than twice the bound. The last
//! lines are also kept in memory, for the error that quotes them.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Lines kept in memory for an error message.
const TAIL_LINES: usize = 30;

/// A size-bounded log file.
#[derive(Debug)]
pub struct BoundedLog {
    path: PathBuf,
    file: File,
    written: u64,
    limit: u64,
    tail: VecDeque<String>,
}

impl BoundedLog {
    /// Creates (truncating) the log at `path`, rotated past `limit` bytes.
    pub fn create(path: &Path, limit: u64) -> std::io::Result<Self> {
        let file = File::create(path)?;
        Ok(Self {
            path: path.to_owned(),
            file,
            written: 0,
            limit: limit.max(1024),
            tail: VecDeque::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The rotated file (older output), when there is one.
    pub fn rotated(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".1");
        PathBuf::from(name)
    }

    /// Appends one line (a newline is added).
    pub fn line(&mut self, line: &str) -> std::io::Result<()> {
        if self.written + line.len() as u64 + 1 > self.limit {
            self.file.flush()?;
            std::fs::rename(&self.path, self.rotated())?;
            self.file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&self.path)?;
            self.written = 0;
        }
        self.file.write_all(line.as_bytes())?;
        self.file.write_all(b"\n")?;
        self.written += line.len() as u64 + 1;
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_owned());
        Ok(())
    }

    /// The last lines written, oldest first.
    pub fn tail(&self) -> String {
        self.tail.iter().map(|l| format!("{l}\n")).collect()
    }

    /// Runs `cmd` with its stdout and stderr streamed into the log, line by line; `on_line` sees
    /// each line too. Returns the exit status; the caller decides by it.
    ///
    /// The command runs in a process group of its own; when `cancel` fires, the whole group
    /// (`make` and every compiler it started) is killed and the status tells of the signal.
    pub fn run(
        &mut self,
        mut cmd: Command,
        mut on_line: impl FnMut(&str),
        cancel: &CancellationToken,
    ) -> std::io::Result<ExitStatus> {
        self.line(&format!("$ {}", describe(&cmd)))?;
        let (reader, writer) = std::io::pipe()?;
        cmd.stdin(Stdio::null())
            .stdout(writer.try_clone()?)
            .stderr(writer)
            .process_group(0);
        let spawned = cmd.spawn();
        // The Command holds the parent's copies of the write end: drop it, so the reader sees
        // end-of-file once the child and its descendants are done.
        drop(cmd);
        let mut child = spawned?;
        let _killer = GroupKiller::watch(child.id(), cancel);
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        let read = loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => break Ok(()),
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf);
                    let text = text.trim_end_matches(['\n', '\r']);
                    on_line(text);
                    if let Err(e) = self.line(text) {
                        break Err(e);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = read {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        let status = child.wait()?;
        self.line(&format!("# {status}"))?;
        Ok(status)
    }
}

/// Kills a process group when a token fires, until dropped (the group's command finished).
struct GroupKiller {
    done: Arc<AtomicBool>,
}

impl GroupKiller {
    fn watch(pid: u32, cancel: &CancellationToken) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let (flag, cancel) = (done.clone(), cancel.clone());
        std::thread::spawn(move || {
            while !flag.load(Ordering::Acquire) {
                if cancel.is_cancelled() {
                    // The leader is our child and is reaped only after its output ends, so
                    // until then the group id cannot name anyone else's processes.
                    if let Ok(pgid) = i32::try_from(pid) {
                        let _ = rustix::process::kill_process_group(
                            rustix::process::Pid::from_raw(pgid)
                                .expect("a child's pid is positive"),
                            rustix::process::Signal::KILL,
                        );
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self { done }
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
    }
}

/// `program arg arg…` of a command, for the log and for errors.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn stdout_and_stderr_both_reach_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = BoundedLog::create(&dir.path().join("build.log"), 1 << 20).unwrap();

        let status = log
            .run(
                sh("echo out; echo err >&2; exit 3"),
                |_| {},
                &CancellationToken::new(),
            )
            .unwrap();

        let text = std::fs::read_to_string(log.path()).unwrap();
        assert_eq!(status.code(), Some(3));
        assert!(text.contains("out\n") && text.contains("err\n"), "{text}");
    }

    #[test]
    fn the_log_rotates_at_its_bound_and_keeps_the_newest_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = BoundedLog::create(&dir.path().join("build.log"), 4096).unwrap();

        for i in 0..2000 {
            log.line(&format!("line {i:05}")).unwrap();
        }

        let current = std::fs::read_to_string(log.path()).unwrap();
        let older = std::fs::metadata(log.rotated()).unwrap().len();
        assert!(current.len() as u64 <= 4096 && older <= 4096);
        assert!(current.ends_with("line 01999\n"));
        assert!(log.tail().ends_with("line 01999\n"));
        assert_eq!(log.tail().lines().count(), TAIL_LINES);
    }
}
