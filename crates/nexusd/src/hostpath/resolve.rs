//! Rules 2 to 4 of [`super`]: resolving beneath the root with `openat2`, the protected
//! locations (by device and inode) and kernel file systems, and the peer's read access. Runs on
//! the thread that has the caller's file-system identity, so every lookup here is permission
//! checked for that caller by the kernel.

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Access, AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::{Caller, HostPathError};

const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Kernel file systems whose files are views of the host, not content: (magic, name).
const PSEUDO_FS: [(i64, &str); 11] = [
    (0x9fa0, "procfs"),
    (0x6265_6572, "sysfs"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7363_6673, "securityfs"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0xcafe_4a11, "bpf"),
    (0x6265_6570, "configfs"),
    (0xde5e_81e4, "efivarfs"),
    (0x1cd1, "devpts"),
];

/// The name of the pseudo file system with magic `f_type`, if it is one.
pub(super) fn pseudo_fs(f_type: i64) -> Option<&'static str> {
    PSEUDO_FS
        .iter()
        .find(|(magic, _)| *magic == f_type)
        .map(|(_, name)| *name)
}

/// A file's identity: device and inode.
// The field types differ between targets (and rustix backends); u64 holds them all.
#[allow(clippy::unnecessary_cast)]
fn file_id(st: &rustix::fs::Stat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

/// One check of one path for one caller.
pub(super) struct Check<'a> {
    pub shown: &'a Path,
    pub root: &'a Path,
    pub rest: &'a Path,
    pub protected: &'a [PathBuf],
    pub caller: &'a Caller,
}

/// A protected location that exists, by identity.
struct Protected {
    ids: HashSet<(u64, u64)>,
    names: Vec<((u64, u64), PathBuf)>,
}

impl Protected {
    fn lookup(paths: &[PathBuf]) -> Self {
        let names: Vec<_> = paths
            .iter()
            .filter_map(|p| {
                let st = rustix::fs::stat(p).ok()?;
                Some((file_id(&st), p.clone()))
            })
            .collect();
        Self {
            ids: names.iter().map(|(id, _)| *id).collect(),
            names,
        }
    }

    fn find(&self, st: &rustix::fs::Stat) -> Option<&Path> {
        let id = file_id(st);
        if !self.ids.contains(&id) {
            return None;
        }
        self.names
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, p)| p.as_path())
    }
}

impl Check<'_> {
    /// Opens the path (`O_PATH`) after every check; returns it and whether it is a directory.
    pub fn run(&self) -> Result<(OwnedFd, bool), HostPathError> {
        let protected = Protected::lookup(self.protected);
        let root = rustix::fs::open(
            self.root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.fail(e, self.root, "open import root"))?;
        // The parent is opened first and the last component beneath it, so the ancestor walk
        // below starts from the real parent of what is imported.
        let (parent, fd) = match self.rest.components().next_back() {
            Some(Component::Normal(name)) => {
                let parent_rel = self.rest.parent().filter(|p| !p.as_os_str().is_empty());
                let parent = self.beneath(&root, parent_rel.unwrap_or(Path::new(".")))?;
                let fd = self.beneath(&parent, Path::new(name))?;
                (Some(parent), fd)
            }
            _ => (None, self.beneath(&root, self.rest)?),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| self.fail(e, self.shown, "stat"))?;
        let kind = FileType::from_raw_mode(st.st_mode);
        if !matches!(kind, FileType::Directory | FileType::RegularFile) {
            return Err(HostPathError::Unsupported {
                path: self.shown.to_owned(),
            });
        }
        self.check_identity(&fd, &st, &protected, self.shown)?;
        self.check_ancestors(parent.as_ref().unwrap_or(&fd), &protected)?;
        if kind == FileType::Directory {
            self.walk(&fd, &protected)?;
        } else if self.is_peer() {
            // Reopening for reading is the permission check, done by the kernel as the peer.
            // (Opening the own process's `/proc/self/fd/N` is always allowed; the kernel then
            // checks the file's permissions against this thread's fsuid.)
            rustix::fs::open(
                format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd)),
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| self.fail(e, self.shown, "open"))?;
        }
        Ok((fd, kind == FileType::Directory))
    }

    fn is_peer(&self) -> bool {
        matches!(self.caller, Caller::Unix(_))
    }

    /// `openat2(dir, rel, O_PATH, BENEATH | NO_SYMLINKS | NO_MAGICLINKS)`, retried on `EAGAIN`
    /// (a concurrent rename, which `RESOLVE_BENEATH` answers that way rather than risk an escape).
    fn beneath(&self, dir: &impl AsFd, rel: &Path) -> Result<OwnedFd, HostPathError> {
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(
                dir,
                rel,
                OFlags::PATH | OFlags::CLOEXEC,
                Mode::empty(),
                BENEATH,
            ) {
                Err(Errno::AGAIN) if tries < 8 => tries += 1,
                other => return other.map_err(|e| self.fail(e, self.shown, "open")),
            }
        }
    }

    /// Maps a failed lookup to the refusal it means.
    fn fail(&self, e: Errno, path: &Path, op: &'static str) -> HostPathError {
        let path = path.to_owned();
        match e {
            Errno::LOOP => HostPathError::Symlink { path },
            Errno::XDEV => HostPathError::Escapes {
                path,
                root: self.root.to_owned(),
            },
            Errno::NOENT | Errno::NOTDIR => HostPathError::NotFound { path },
            Errno::ACCESS | Errno::PERM => HostPathError::Unreadable {
                path,
                caller: self.caller.describe(),
            },
            other => HostPathError::Io {
                op,
                path,
                source: other.into(),
            },
        }
    }

    /// Refuses a protected location or an object on a kernel file system.
    fn check_identity(
        &self,
        fd: &impl AsFd,
        st: &rustix::fs::Stat,
        protected: &Protected,
        shown: &Path,
    ) -> Result<(), HostPathError> {
        if let Some(p) = protected.find(st) {
            return Err(HostPathError::Protected {
                path: self.shown.to_owned(),
                protected: p.to_owned(),
            });
        }
        let fs = rustix::fs::fstatfs(fd).map_err(|e| self.fail(e, shown, "statfs"))?;
        if let Some(name) = pseudo_fs(fs.f_type as i64) {
            return Err(HostPathError::PseudoFs {
                path: self.shown.to_owned(),
                fs: name,
            });
        }
        Ok(())
    }

    /// Walks `..` from `dir` up to `/`, refusing a protected or pseudo-fs ancestor.
    fn check_ancestors(&self, dir: &OwnedFd, protected: &Protected) -> Result<(), HostPathError> {
        let mut cur = dir.try_clone().map_err(|e| HostPathError::Io {
            op: "duplicate the descriptor of",
            path: self.shown.to_owned(),
            source: e,
        })?;
        // Bounded: a path has at most PATH_MAX / 2 components.
        for _ in 0..4096 {
            let st = rustix::fs::fstat(&cur).map_err(|e| self.fail(e, self.shown, "stat"))?;
            self.check_identity(&cur, &st, protected, self.shown)?;
            let up = rustix::fs::openat(
                &cur,
                c"..",
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| self.fail(e, self.shown, "open the parent of"))?;
            let up_st = rustix::fs::fstat(&up).map_err(|e| self.fail(e, self.shown, "stat"))?;
            if (up_st.st_dev, up_st.st_ino) == (st.st_dev, st.st_ino) {
                return Ok(());
            }
            cur = up;
        }
        Ok(())
    }

    /// Walks the tree under `top`: no protected location, no kernel file system, and, for a
    /// peer, every directory readable and searchable and every regular file readable.
    fn walk(&self, top: &OwnedFd, protected: &Protected) -> Result<(), HostPathError> {
        let mut pending = vec![PathBuf::from(".")];
        while let Some(rel) = pending.pop() {
            let shown = self.shown.join(&rel);
            let dir = loop_openat2(top, &rel, OFlags::RDONLY | OFlags::DIRECTORY)
                .map_err(|e| self.fail(e, &shown, "open directory"))?;
            if rel != Path::new(".") {
                let st = rustix::fs::fstat(&dir).map_err(|e| self.fail(e, &shown, "stat"))?;
                self.check_identity(&dir, &st, protected, &shown)?;
            }
            if self.is_peer() {
                rustix::fs::accessat(
                    &dir,
                    c".",
                    Access::READ_OK | Access::EXEC_OK,
                    AtFlags::EACCESS,
                )
                .map_err(|e| self.fail(e, &shown, "check access to"))?;
            }
            let entries = Dir::read_from(&dir).map_err(|e| self.fail(e, &shown, "read"))?;
            for entry in entries {
                let entry = entry.map_err(|e| self.fail(e, &shown, "read"))?;
                let name = entry.file_name();
                if name == c"." || name == c".." {
                    continue;
                }
                let st = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    // Removed since it was listed: nothing to import, nothing to refuse.
                    Err(Errno::NOENT) => continue,
                    Err(e) => return Err(self.fail(e, &shown, "stat an entry of")),
                };
                let child = rel.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
                if let Some(p) = protected.find(&st) {
                    return Err(HostPathError::Protected {
                        path: self.shown.to_owned(),
                        protected: p.to_owned(),
                    });
                }
                match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory => pending.push(child),
                    FileType::RegularFile if self.is_peer() => {
                        rustix::fs::accessat(
                            &dir,
                            name,
                            Access::READ_OK,
                            AtFlags::EACCESS | AtFlags::SYMLINK_NOFOLLOW,
                        )
                        .map_err(|e| self.fail(e, &self.shown.join(&child), "check access to"))?;
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// `openat2` beneath `top` (no symlinks), retried on `EAGAIN`.
fn loop_openat2(top: &OwnedFd, rel: &Path, flags: OFlags) -> Result<OwnedFd, Errno> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(top, rel, flags | OFlags::CLOEXEC, Mode::empty(), BENEATH) {
            Err(Errno::AGAIN) if tries < 8 => tries += 1,
            other => return other,
        }
    }
}
