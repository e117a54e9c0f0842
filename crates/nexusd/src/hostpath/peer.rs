//! The credentials of a Unix-socket peer, and running a check with that peer's file-system
//! identity.
//!
//! Why a thread with `setfsuid`: the kernel then applies its own permission rules (modes, ACLs,
//! groups, LSMs) to every lookup and open of the check, exactly as for the peer, instead of us
//! re-implementing them. `setfsuid`, `setfsgid` and the raw `setgroups` syscall change only the
//! calling thread's credentials (glibc's `setgroups` wrapper would change every thread, so the raw
//! per-thread call from rustix is used), and the thread is a fresh one that ends with the check, so
//! no other work ever runs with those credentials, even if the check panics. Leaving fsuid 0
//! also clears the thread's file-system capabilities (`CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`).

use std::os::fd::AsRawFd;

use super::HostPathError;

/// Who is on the other end of a Unix-socket connection, as the kernel recorded it at `connect`
/// (`SO_PEERCRED`, plus `SO_PEERGROUPS` for the supplementary groups).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCred {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups; empty when the kernel could not say (fewer rights, never more).
    pub groups: Vec<u32>,
}

impl PeerCred {
    /// The credentials of the peer of the connected Unix socket `sock`.
    pub fn of(sock: &impl AsRawFd) -> std::io::Result<Self> {
        let fd = sock.as_raw_fd();
        let mut cred = nix::libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<nix::libc::ucred>() as nix::libc::socklen_t;
        // SAFETY: `cred` is a writable `ucred` of `len` bytes; the kernel writes at most `len`.
        let rc = unsafe {
            nix::libc::getsockopt(
                fd,
                nix::libc::SOL_SOCKET,
                nix::libc::SO_PEERCRED,
                (&raw mut cred).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            uid: cred.uid,
            gid: cred.gid,
            groups: peer_groups(fd).unwrap_or_default(),
        })
    }
}

/// `SO_PEERGROUPS` (Linux 4.13): the peer's supplementary groups at `connect` time.
fn peer_groups(fd: i32) -> std::io::Result<Vec<u32>> {
    // NGROUPS_MAX is 65536; start small and grow once to what the kernel says it needs.
    let mut groups = vec![0u32; 64];
    for _ in 0..2 {
        let mut len = (groups.len() * 4) as nix::libc::socklen_t;
        // SAFETY: `groups` is a writable buffer of `len` bytes; the kernel writes at most `len`
        // and sets `len` to the size it wrote or needs.
        let rc = unsafe {
            nix::libc::getsockopt(
                fd,
                nix::libc::SOL_SOCKET,
                nix::libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / 4;
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(nix::libc::ERANGE) {
            return Err(err);
        }
        groups.resize(needed.max(groups.len() * 2), 0);
    }
    Err(std::io::Error::from_raw_os_error(nix::libc::ERANGE))
}

/// Runs `f` on a fresh thread whose file-system identity is `cred`'s. A daemon that cannot
/// change identity (not root) runs `f` as itself when that is no more than the peer may do
/// (the peer is root or the daemon's own user) and refuses otherwise.
pub(super) fn as_peer<T: Send>(
    cred: &PeerCred,
    f: impl FnOnce() -> T + Send,
) -> Result<T, HostPathError> {
    let me = nix::unistd::geteuid().as_raw();
    if me != 0 {
        return if cred.uid == 0 || cred.uid == me {
            Ok(f())
        } else {
            Err(HostPathError::CannotImpersonate { uid: cred.uid })
        };
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            become_peer(cred)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Switches the calling thread's groups, fsgid and fsuid to `cred`'s.
fn become_peer(cred: &PeerCred) -> Result<(), HostPathError> {
    let failed = |what: &str| HostPathError::Io {
        op: "take the file-system identity of the peer for",
        path: format!("uid {} ({what})", cred.uid).into(),
        source: std::io::Error::last_os_error(),
    };
    let groups: Vec<rustix::fs::Gid> = cred
        .groups
        .iter()
        .map(|&g| rustix::fs::Gid::from_raw(g))
        .collect();
    rustix::thread::set_thread_groups(&groups).map_err(|_| failed("groups"))?;
    // setfsgid/setfsuid return the previous value and never fail visibly: set, then read back.
    nix::unistd::setfsgid(nix::unistd::Gid::from_raw(cred.gid));
    if nix::unistd::setfsgid(nix::unistd::Gid::from_raw(cred.gid)).as_raw() != cred.gid {
        return Err(failed("fsgid"));
    }
    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(cred.uid));
    if nix::unistd::setfsuid(nix::unistd::Uid::from_raw(cred.uid)).as_raw() != cred.uid {
        return Err(failed("fsuid"));
    }
    Ok(())
}
