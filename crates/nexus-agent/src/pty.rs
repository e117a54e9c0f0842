//! A pseudo-terminal with a process on its slave side: `openpty`, a new session (`setsid`) whose
//! controlling terminal is the slave, non-blocking async I/O on the master, window size and
//! signals to the terminal's foreground process group.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Stdio;

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::pty::{Winsize, openpty};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::process::{Child, Command};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The shell of a session started without a command.
pub const SHELL: &str = "/bin/sh";

nix::ioctl_write_ptr_bad!(set_winsize, nix::libc::TIOCSWINSZ, Winsize);

/// The master side of a PTY.
pub struct Pty {
    master: AsyncFd<OwnedFd>,
}

/// Starts `argv` (the login shell when empty) on a new PTY of `cols`×`rows`.
pub fn spawn(argv: &[String], term: &str, cols: u16, rows: u16) -> io::Result<(Pty, Child)> {
    let pty = openpty(Some(&winsize(cols, rows)), None).map_err(io::Error::from)?;
    for fd in [&pty.master, &pty.slave] {
        fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
    }
    fcntl(pty.master.as_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
    let mut cmd = if argv.is_empty() {
        let mut cmd = Command::new(SHELL);
        // A leading dash makes it a login shell, as after ssh.
        cmd.arg0("-sh");
        cmd
    } else {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd
    };
    let home = if std::path::Path::new("/root").is_dir() {
        "/root"
    } else {
        "/"
    };
    cmd.env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", home)
        .env("USER", "root")
        .env("LOGNAME", "root")
        .env("SHELL", SHELL)
        .env("TERM", term)
        .current_dir(home)
        .stdin(Stdio::from(pty.slave.try_clone()?))
        .stdout(Stdio::from(pty.slave.try_clone()?))
        .stderr(Stdio::from(pty.slave));
    // SAFETY: the closure runs in the forked child before exec and only makes two
    // async-signal-safe system calls (setsid, ioctl); it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(|| {
            if nix::libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // stdin is the slave by now: make it the new session's controlling terminal.
            if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // `cmd` (holding the parent's copies of the slave) is dropped here, so the master reads EOF
    // (EIO) once every process of the session has closed the terminal.
    drop(cmd);
    // SAFETY: `OwnedFd` owns its descriptor: it stays open, unchanged, until the `AsyncFd` drops.
    let master = unsafe { AsyncFd::register(pty.master) }.map_err(|e| e.into_parts().1)?;
    Ok((Pty { master }, child))
}

fn winsize(cols: u16, rows: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl Pty {
    /// Reads what the session wrote; `Ok(0)` once the slave side is closed.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.master.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(Ok(n)) => return Ok(n),
                // Linux answers EIO on the master once no process holds the slave open.
                Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::EIO) => return Ok(0),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` to the terminal (the session's input).
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.master.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Sets the window size; the kernel sends SIGWINCH to the foreground process group.
    pub fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        let ws = winsize(cols, rows);
        // SAFETY: TIOCSWINSZ reads one `Winsize` from the pointer, which is valid for the call.
        unsafe { set_winsize(self.master.get_ref().as_raw_fd(), &ws) }
            .map(drop)
            .map_err(io::Error::from)
    }

    /// Sends `signal` to the terminal's foreground process group, else to `session_pid`'s group.
    pub fn signal(&self, signal: i32, session_pid: Option<u32>) -> io::Result<()> {
        let signal = Signal::try_from(signal).map_err(io::Error::from)?;
        let group = nix::unistd::tcgetpgrp(self.master.get_ref())
            .ok()
            .or_else(|| session_pid.map(|p| Pid::from_raw(p as i32)))
            .ok_or_else(|| io::Error::other("the session has no process group"))?;
        killpg(group, signal).map_err(io::Error::from)
    }
}
