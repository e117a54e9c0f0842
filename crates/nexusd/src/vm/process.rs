//! Watching and signalling the processes of a VM, whether the daemon spawned them (a
//! `tokio::process::Child`, reaped with its exit status) or re-adopted them after a restart (a
//! pidfd: readable the moment the process exits, and immune to pid reuse).

use std::os::fd::OwnedFd;

use nix::sys::signal::Signal;
use rustix::process::{Pid, PidfdFlags, pidfd_open, pidfd_send_signal};
use tokio::io::unix::AsyncFd;

/// The start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`), which
/// with the pid identifies a process across pid reuse.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

fn parse_start_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and ')'; fields after the last ')' are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is still the process that started at `ticks` and its command line mentions
/// `needle` (the VM's runtime directory).
pub fn is_same_process(pid: u32, ticks: u64, needle: &str) -> bool {
    if start_ticks(pid) != Some(ticks) {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(needle))
        .unwrap_or(false)
}

/// A process being watched.
#[derive(Debug)]
pub enum Watch {
    /// Our own child.
    Child(tokio::process::Child),
    /// A process adopted from an earlier daemon.
    Pidfd { pid: u32, fd: AsyncFd<OwnedFd> },
}

impl Watch {
    /// Adopts a running process by pid.
    pub fn adopt(pid: u32) -> std::io::Result<Self> {
        let raw = i32::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
        let pid_t = Pid::from_raw(raw).ok_or_else(|| std::io::Error::other("pid 0"))?;
        let fd = pidfd_open(pid_t, PidfdFlags::NONBLOCK)?;
        // SAFETY: `fd` is an open pidfd that the AsyncFd owns from here on; nothing else closes
        // it or swaps the descriptor behind `as_raw_fd` while the AsyncFd lives.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(Self::Pidfd { pid, fd })
    }

    pub fn pid(&self) -> Option<u32> {
        match self {
            Self::Child(c) => c.id(),
            Self::Pidfd { pid, .. } => Some(*pid),
        }
    }

    /// Waits for the exit; returns how it ended, for people.
    pub async fn wait(&mut self) -> String {
        match self {
            Self::Child(child) => match child.wait().await {
                Ok(status) => describe(status),
                Err(e) => format!("exit status unavailable: {e}"),
            },
            Self::Pidfd { fd, .. } => {
                // A pidfd becomes readable when the process exits; its status belongs to its
                // real parent, which we are not after a restart.
                let _ = fd.readable().await;
                "exited (status unknown: process re-adopted after a daemon restart)".into()
            }
        }
    }

    /// Sends `sig` unless the process is already gone.
    pub fn signal(&mut self, sig: Signal) {
        match self {
            Self::Child(child) => {
                // Not yet reaped, so the pid cannot have been reused.
                if let (Ok(None), Some(pid)) = (child.try_wait(), child.id()) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
                }
            }
            Self::Pidfd { fd, .. } => {
                let sig = rustix::process::Signal::from_named_raw(sig as i32);
                if let Some(sig) = sig {
                    let _ = pidfd_send_signal(fd.get_ref(), sig);
                }
            }
        }
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("killed by signal {s}"),
            Err(_) => format!("killed by signal {sig}"),
        },
        _ => format!("ended: {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_skip_a_command_with_spaces_and_parens() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_ticks(stat), Some(987654));
    }

    #[test]
    fn own_process_is_recognised() {
        let me = std::process::id();
        let ticks = start_ticks(me).unwrap();
        assert!(is_same_process(me, ticks, ""));
        assert!(!is_same_process(me, ticks + 1, ""));
    }

    #[tokio::test]
    async fn adopted_process_exit_is_noticed() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let mut watch = Watch::adopt(child.id()).unwrap();
        let reaper = std::thread::spawn(move || child.wait());
        let how = tokio::time::timeout(std::time::Duration::from_secs(5), watch.wait())
            .await
            .expect("exit noticed");
        assert!(how.contains("re-adopted"));
        reaper.join().unwrap().unwrap();
    }
}
