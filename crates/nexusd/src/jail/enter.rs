//! The child side of the jail: what a freshly forked VMM or helper does before it executes, as
//! root, in this order: a private mount namespace (and IPC and UTS namespaces) whose root is a
//! small read-only tmpfs holding only the bind mounts of its [`Plan`]; its pid written into its
//! cgroup; no core dumps; `no_new_privs`; every capability dropped from the bounding set; the
//! VM's uid and gid (which clears the remaining capabilities); every inherited descriptor above
//! stderr closed at exec.
//!
//! This runs between `fork` and `exec` of a multithreaded daemon, so it only makes system calls
//! on data prepared beforehand: no allocation, no locks. A failing step writes its name to the
//! child's stderr (the process's log file) before the spawn fails with the errno.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};

/// A bind mount into the jail.
#[derive(Debug)]
pub(super) struct PlannedBind {
    pub source: CString,
    /// Absolute path of the target in the host view, i.e. under the jail's root mount point.
    pub target: CString,
    /// Flags the bind is remounted with (`MS_RDONLY`, `MS_NOSUID`, `MS_NODEV`, `MS_NOEXEC`).
    pub flags: MsFlags,
}

/// Everything the child needs, prepared by the parent.
#[derive(Debug)]
pub(super) struct Plan {
    /// Where the jail's tmpfs root is mounted (inside the child's own namespace).
    pub root: CString,
    /// Directories to create under the root, parents first.
    pub dirs: Vec<CString>,
    /// Empty files to create as targets of file binds.
    pub files: Vec<CString>,
    /// `(target, link)` symlinks, such as `/lib -> usr/lib` on merged-/usr hosts.
    pub symlinks: Vec<(CString, CString)>,
    pub binds: Vec<PlannedBind>,
    /// `cgroup.procs` of each hierarchy, opened by the parent (close-on-exec).
    pub cgroup_procs: Vec<OwnedFd>,
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
}

/// Fails the spawn with `errno`, after naming `step` on stderr.
fn fail(step: &'static CStr, errno: nix::errno::Errno) -> io::Error {
    let msg = step.to_bytes();
    // SAFETY: writes a static byte string to fd 2; no memory is shared or retained.
    unsafe {
        libc::write(2, b"nexus jail: ".as_ptr().cast(), 12);
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::write(2, b" failed\n".as_ptr().cast(), 8);
    }
    io::Error::from_raw_os_error(errno as i32)
}

fn step<T>(name: &'static CStr, r: nix::Result<T>) -> io::Result<T> {
    r.map_err(|e| fail(name, e))
}

fn raw(name: &'static CStr, ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(fail(name, nix::errno::Errno::last()))
    } else {
        Ok(())
    }
}

/// Runs in the forked child; see the module comment.
pub(super) fn enter(plan: &Plan) -> io::Result<()> {
    let none: Option<&CStr> = None;
    step(
        c"unshare",
        nix::sched::unshare(
            CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS,
        ),
    )?;
    step(
        c"making / private",
        mount(
            none,
            c"/",
            none,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            none,
        ),
    )?;
    step(
        c"mounting the jail's tmpfs",
        mount(
            Some(c"tmpfs"),
            plan.root.as_c_str(),
            Some(c"tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(c"mode=0755,size=256k,nr_inodes=512"),
        ),
    )?;
    for dir in &plan.dirs {
        step(
            c"creating a directory in the jail",
            nix::unistd::mkdir(dir.as_c_str(), Mode::from_bits_truncate(0o755)),
        )?;
    }
    for file in &plan.files {
        // SAFETY: `file` is a valid C string; the descriptor is closed right away.
        let fd = unsafe {
            libc::open(
                file.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o644,
            )
        };
        raw(c"creating a bind target in the jail", fd)?;
        // SAFETY: `fd` was just opened above and is owned here.
        unsafe { libc::close(fd) };
    }
    for (target, link) in &plan.symlinks {
        // SAFETY: both are valid C strings.
        let ret = unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) };
        raw(c"creating a symlink in the jail", ret)?;
    }
    for b in &plan.binds {
        step(
            c"bind-mounting into the jail",
            mount(
                Some(b.source.as_c_str()),
                b.target.as_c_str(),
                none,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                none,
            ),
        )?;
        step(
            c"remounting a bind mount",
            mount(
                none,
                b.target.as_c_str(),
                none,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | b.flags,
                none,
            ),
        )?;
    }
    step(
        c"entering the jail root",
        nix::unistd::chdir(plan.root.as_c_str()),
    )?;
    step(c"pivot_root", nix::unistd::pivot_root(c".", c"."))?;
    step(
        c"detaching the host root",
        umount2(c".", MntFlags::MNT_DETACH),
    )?;
    step(c"chdir /", nix::unistd::chdir(c"/"))?;
    step(
        c"making the jail root read-only",
        mount(
            none,
            c"/",
            none,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            none,
        ),
    )?;

    let mut digits = [0u8; 12];
    let pid = pid_digits(std::process::id(), &mut digits);
    for fd in &plan.cgroup_procs {
        // SAFETY: writes `pid` (a stack buffer) to a descriptor the plan owns.
        let n = unsafe { libc::write(fd.as_raw_fd(), pid.as_ptr().cast(), pid.len()) };
        raw(c"joining the VM's cgroup", if n < 0 { -1 } else { 0 })?;
    }

    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system call on a stack value.
    raw(c"setrlimit(RLIMIT_CORE)", unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &no_core)
    })?;
    step(c"no_new_privs", nix::sys::prctl::set_no_new_privs())?;
    for cap in 0..64 {
        // SAFETY: plain prctl; EINVAL past the last capability the kernel knows is expected.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if ret < 0 && nix::errno::Errno::last() != nix::errno::Errno::EINVAL {
            return Err(fail(
                c"dropping the capability bounding set",
                nix::errno::Errno::last(),
            ));
        }
    }
    step(c"setgroups", nix::unistd::setgroups(&plan.groups))?;
    step(
        c"setresgid",
        nix::unistd::setresgid(plan.gid, plan.gid, plan.gid),
    )?;
    step(
        c"setresuid",
        nix::unistd::setresuid(plan.uid, plan.uid, plan.uid),
    )?;
    // SAFETY: plain prctl.
    raw(c"clearing ambient capabilities", unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    })?;
    // SAFETY: marks every descriptor from 3 up close-on-exec; std's own error pipe already is.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    raw(c"close_range", if ret < 0 { -1 } else { 0 })
}

/// `pid` in decimal, in `buf`.
fn pid_digits(mut pid: u32, buf: &mut [u8; 12]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (pid % 10) as u8;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_digits_are_decimal() {
        let mut b = [0u8; 12];
        assert_eq!(pid_digits(0, &mut b), b"0");
        assert_eq!(pid_digits(4194304, &mut b), b"4194304");
        assert_eq!(pid_digits(u32::MAX, &mut b), b"4294967295");
    }
}
