//! Host paths named by API clients (`image import` today): which caller may name which path, and
//! opening it so that what is imported is exactly what was checked.
//!
//! The rules, in the order they are applied:
//! 1. The path is absolute and lies, component by component, under one of the caller's roots:
//!    the configured `import_roots`; when unset, none over TCP and `/` over the Unix socket (the
//!    socket is 0600, so its peers are the daemon's user or root, and the access check below
//!    limits them to what they can read). The daemon's own imports (the built-in image) use `/`.
//! 2. The rest of the path is resolved from the root with `openat2(RESOLVE_BENEATH |
//!    RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`: a `..` or a symlink (anywhere, the last
//!    component included) that would leave the root is refused by the kernel, not by string checks.
//!    For a Unix-socket peer this happens on a thread that has taken the peer's file-system
//!    identity (`setfsuid`/`setfsgid` and its groups, see [`peer`]), so the kernel checks search
//!    permission on every directory for that uid.
//! 3. The object, its ancestors (walked with `..` on descriptors) and, for a directory, everything
//!    inside it must not be a protected location (the pool, the data, state and run directories,
//!    the TCP token file, `/proc`, `/sys`, `/dev`; compared by device and inode, so bind mounts and
//!    other spellings are caught) nor on a kernel pseudo file system (procfs, sysfs, …).
//! 4. For a Unix-socket peer, everything that will be copied must be readable by that peer: the
//!    file, or every file and directory of the tree (checked as the peer, with `faccessat2`).
//!
//! The result is an `O_PATH` descriptor; the import reads through `/proc/self/fd/N`, so a path
//! swapped after the check cannot be imported instead. What remains: a peer able to write inside
//! a checked tree can change its content between the check and the copy (for example move in a
//! directory it cannot read but may rename); importing such a tree is that peer's own doing.

mod peer;
mod resolve;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

pub use peer::PeerCred;

/// Who names the path: decides the roots and whose permissions apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// nexusd itself (the built-in image): any path outside the protected locations.
    Daemon,
    /// A client of the TCP listener: holds the token, but is not a local user.
    Tcp,
    /// A client of the Unix socket, with the credentials the kernel gave for its connection.
    Unix(PeerCred),
}

impl Caller {
    fn describe(&self) -> String {
        match self {
            Self::Daemon => "nexusd".into(),
            Self::Tcp => "a TCP client".into(),
            Self::Unix(p) => format!("uid {}", p.uid),
        }
    }
}

/// Why a host path was refused or could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HostPathError {
    #[error(
        "imports over TCP are disabled: no `import_roots` are configured (the Unix socket may import)"
    )]
    NoRoots,
    #[error("{path:?} is not under an import root ({})", roots_list(.roots))]
    OutsideRoots { path: PathBuf, roots: Vec<PathBuf> },
    #[error("{path:?} leaves its import root {root:?} (through `..` or an absolute link)")]
    Escapes { path: PathBuf, root: PathBuf },
    #[error("{path:?} goes through a symbolic link; name the real path")]
    Symlink { path: PathBuf },
    #[error("{path:?} is, is inside or contains {protected:?}, which is never importable")]
    Protected { path: PathBuf, protected: PathBuf },
    #[error("{path:?} is, is inside or contains a kernel file system ({fs}), never importable")]
    PseudoFs { path: PathBuf, fs: &'static str },
    #[error("{caller} may not read {path:?}")]
    Unreadable { path: PathBuf, caller: String },
    #[error(
        "cannot check what uid {uid} may read: nexusd runs unprivileged as another user and cannot take its identity"
    )]
    CannotImpersonate { uid: u32 },
    #[error("{path:?} is neither a directory nor a regular file")]
    Unsupported { path: PathBuf },
    #[error("{path:?} does not exist")]
    NotFound { path: PathBuf },
    #[error("cannot {op} {path:?}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn roots_list(roots: &[PathBuf]) -> String {
    roots
        .iter()
        .map(|r| format!("{r:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl HostPathError {
    /// Whether this is a refusal by policy (403), as opposed to a missing path or an I/O failure.
    pub fn is_forbidden(&self) -> bool {
        !matches!(
            self,
            Self::NotFound { .. } | Self::Unsupported { .. } | Self::Io { .. }
        )
    }
}

/// Locations never importable, whatever the roots: the kernel's pseudo file systems and device
/// nodes. The daemon adds its own directories (see [`ImportPolicy::new`]).
pub const ALWAYS_PROTECTED: [&str; 3] = ["/proc", "/sys", "/dev"];

/// The import policy of one daemon.
#[derive(Debug, Clone)]
pub struct ImportPolicy {
    /// `import_roots` from the config; `None` when unset.
    roots: Option<Vec<PathBuf>>,
    /// Never importable, in addition to [`ALWAYS_PROTECTED`]; looked up at each check, so a pool
    /// created after start-up is covered.
    protected: Vec<PathBuf>,
}

/// An import source, opened and checked.
#[derive(Debug)]
pub struct Resolved {
    /// `O_PATH` descriptor of the checked object.
    fd: OwnedFd,
    /// Whether it is a directory (else a regular file).
    pub is_dir: bool,
}

impl Resolved {
    /// A path that opens exactly the checked object for as long as `self` lives (in this process
    /// and in children forked from it before `exec`, e.g. as their working directory).
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

impl ImportPolicy {
    /// `roots` as configured (absolute, checked by the config); `protected`: the daemon's own
    /// directories and files.
    pub fn new(roots: Option<Vec<PathBuf>>, protected: Vec<PathBuf>) -> Self {
        let mut all: Vec<PathBuf> = ALWAYS_PROTECTED.iter().map(PathBuf::from).collect();
        all.extend(protected);
        Self {
            roots,
            protected: all,
        }
    }

    /// The roots `caller` may import from.
    fn roots_for(&self, caller: &Caller) -> Vec<PathBuf> {
        match (caller, &self.roots) {
            (Caller::Daemon, _) => vec![PathBuf::from("/")],
            (_, Some(roots)) => roots.clone(),
            (Caller::Tcp, None) => Vec::new(),
            (Caller::Unix(_), None) => vec![PathBuf::from("/")],
        }
    }

    /// Rule 1: the root `path` lies under and the rest of the path, relative to it. Pure.
    pub fn locate(
        &self,
        path: &Path,
        caller: &Caller,
    ) -> Result<(PathBuf, PathBuf), HostPathError> {
        let roots = self.roots_for(caller);
        if roots.is_empty() {
            return Err(HostPathError::NoRoots);
        }
        let outside = || HostPathError::OutsideRoots {
            path: path.to_owned(),
            roots: roots.clone(),
        };
        if !path.is_absolute() {
            return Err(outside());
        }
        roots
            .iter()
            .find_map(|root| {
                let rest = path.strip_prefix(root).ok()?;
                // `Path::strip_prefix` compares components, so `/srv/a` is not under `/srv/ab`;
                // `..` stays in `rest` and is resolved by the kernel beneath the root.
                Some((root.clone(), relative_or_dot(rest)))
            })
            .ok_or_else(outside)
    }

    /// Applies every rule to `path` for `caller` and opens it. Blocking: call it from
    /// `spawn_blocking`.
    pub fn open(&self, path: &Path, caller: &Caller) -> Result<Resolved, HostPathError> {
        let (root, rest) = self.locate(path, caller)?;
        let check = resolve::Check {
            shown: path,
            root: &root,
            rest: &rest,
            protected: &self.protected,
            caller,
        };
        let (fd, is_dir) = match caller {
            Caller::Unix(cred) => peer::as_peer(cred, || check.run())??,
            Caller::Daemon | Caller::Tcp => check.run()?,
        };
        Ok(Resolved { fd, is_dir })
    }
}

/// `rest` without a leading `/`, or `.` when empty.
fn relative_or_dot(rest: &Path) -> PathBuf {
    let rel: PathBuf = rest
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .collect();
    if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel
    }
}

#[cfg(test)]
mod tests;
