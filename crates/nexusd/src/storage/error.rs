//! The errors of storage, one type per operation or small group of operations (Firecracker's
//! way): opening and closing the pool ([`PoolError`]), subvolume work ([`SubvolumeError`]),
//! importing an image ([`ImportError`]), making or growing a drive ([`CreateDriveError`], with
//! [`GrowError`] and [`SizeError`] below it), removing either ([`RemoveError`]). The leaves
//! ([`FsError`], [`IdError`], and the runner's `CommandError`) name the path, id or command.
//! Sources are chained with `#[source]`, never repeated in the message. Which of them the API
//! answers with which status is `api/error.rs`'s business.

use std::io;
use std::path::{Path, PathBuf};

use crate::command::CommandError;

/// A file-system call on a path failed. Running out of space is its own variant, decided from
/// the errno (or, for a tool, from the free space it left): the API answers it with 507.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the storage pool is out of space ({op} {path})")]
    NoSpace { op: &'static str, path: PathBuf },
}

impl FsError {
    /// `op` on `path` failed with `source`.
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        if source.raw_os_error() == Some(nix::libc::ENOSPC) {
            Self::NoSpace {
                op,
                path: path.to_owned(),
            }
        } else {
            Self::Io {
                op,
                path: path.to_owned(),
                source,
            }
        }
    }

    /// The system call `op` on `path` failed with `errno`.
    pub(crate) fn sys(op: &'static str, path: &Path, errno: nix::Error) -> Self {
        Self::io(op, path, errno.into())
    }

    /// A closure for `map_err`: `op` on `path` failed.
    pub(crate) fn at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| Self::io(op, path, source)
    }

    pub fn is_out_of_space(&self) -> bool {
        matches!(self, Self::NoSpace { .. })
    }

    /// Whether the call failed because its target already exists (a concurrent twin won).
    pub(crate) fn is_already_exists(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.raw_os_error() == Some(nix::libc::EEXIST))
    }
}

/// An image or drive id that is not safe as one path component.
#[derive(Debug, thiserror::Error)]
#[error("invalid id {id:?}: {reason}")]
pub struct IdError {
    pub id: String,
    pub reason: &'static str,
}

/// Opening, creating or closing the storage pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("{path} is not on a btrfs filesystem (statfs type {fs_type:#x})")]
    NotBtrfs { path: PathBuf, fs_type: i64 },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error(
        "mounting the storage pool image {file} at {mountpoint} needs root; start nexusd as root, or set \
         `pool = \"/some/dir\"` in nexus.toml to a directory on an existing btrfs filesystem \
         (for example a subvolume created with `btrfs subvolume create`)"
    )]
    NeedsRoot { file: PathBuf, mountpoint: PathBuf },
    #[error("the storage pool at {mountpoint} is still in use and stays mounted")]
    Busy { mountpoint: PathBuf },
    #[error("cannot format the storage pool image {file}")]
    Format {
        file: PathBuf,
        #[source]
        source: CommandError,
    },
    #[error("cannot mount the storage pool image {file} at {mountpoint}")]
    Mount {
        file: PathBuf,
        mountpoint: PathBuf,
        #[source]
        source: CommandError,
    },
    #[error(transparent)]
    Fs(#[from] FsError),
}

impl PoolError {
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, Self::Fs(e) if e.is_out_of_space())
    }
}

/// Creating, snapshotting or deleting a btrfs subvolume.
#[derive(Debug, thiserror::Error)]
pub enum SubvolumeError {
    #[error("{path} is not a btrfs subvolume")]
    NotSubvolume { path: PathBuf },
    #[error("invalid subvolume path {path}: {reason}")]
    InvalidPath { path: PathBuf, reason: &'static str },
    #[error(transparent)]
    Fs(#[from] FsError),
}

impl SubvolumeError {
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, Self::Fs(e) if e.is_out_of_space())
    }

    /// Whether the new subvolume's name was taken meanwhile.
    pub(crate) fn is_already_exists(&self) -> bool {
        matches!(self, Self::Fs(e) if e.is_already_exists())
    }
}

/// Importing a master image from an ext4 file or a directory on the host. The first group is
/// the source's fault (the client's to fix); then the bounds of the import; then the pool's.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path} does not exist")]
    SourceNotFound { path: PathBuf },
    #[error("{path} is not an ext4 image")]
    NotExt4 { path: PathBuf },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("cannot {op} {path}")]
    Unreadable {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} exceeds `{key}` ({limit}); raise it in nexus.toml or import a smaller tree")]
    TooBig {
        key: &'static str,
        what: String,
        limit: u64,
    },
    #[error("the import took longer than `import_timeout_secs` ({secs} s) and was stopped")]
    TimedOut { secs: u64 },
    #[error("the import was stopped: the client went away")]
    Cancelled,
    #[error("image {id} already exists")]
    Exists { id: String },
    #[error(transparent)]
    Id(#[from] IdError),
    #[error(transparent)]
    Size(#[from] SizeError),
    #[error("cannot encode the metadata {path}")]
    Metadata {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Tool(#[from] CommandError),
    #[error(transparent)]
    Subvolume(#[from] SubvolumeError),
    #[error(transparent)]
    Fs(#[from] FsError),
}

impl ImportError {
    /// The source at `path` could not be read (`op` says how far it got).
    pub(crate) fn unreadable(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Unreadable {
            op,
            path: path.to_owned(),
            source,
        }
    }

    /// The source at `path` could not be opened: missing, of the wrong type, or unreadable.
    pub(crate) fn open_source(path: &Path, source: io::Error, not_a: fn(PathBuf) -> Self) -> Self {
        match source.raw_os_error() {
            Some(nix::libc::ENOENT) => Self::SourceNotFound {
                path: path.to_owned(),
            },
            Some(nix::libc::ENOTDIR) => not_a(path.to_owned()),
            _ => Self::unreadable("open", path, source),
        }
    }

    /// A file-system call on the source failed: the source is unreadable, not the pool broken.
    pub(crate) fn from_source(e: FsError) -> Self {
        match e {
            FsError::Io { op, path, source } => Self::Unreadable { op, path, source },
            no_space => Self::Fs(no_space),
        }
    }

    pub fn is_out_of_space(&self) -> bool {
        match self {
            Self::Fs(e) => e.is_out_of_space(),
            Self::Subvolume(e) => e.is_out_of_space(),
            _ => false,
        }
    }

    /// Whether a bound of the import stopped it (the client went away, or its time was up).
    pub fn is_stopped(&self) -> bool {
        matches!(self, Self::Cancelled | Self::TimedOut { .. })
    }
}

/// A size that an ext4 image cannot have.
#[derive(Debug, thiserror::Error)]
pub enum SizeError {
    #[error("invalid size {size}: must be a positive multiple of 4096 bytes")]
    Unaligned { size: u64 },
    #[error("requested size {requested} bytes is smaller than the current {current} bytes")]
    TooSmall { requested: u64, current: u64 },
}

/// Growing an ext4 image file (sparse extension, `e2fsck`, `resize2fs`).
#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    #[error(transparent)]
    Size(#[from] SizeError),
    #[error(transparent)]
    Tool(#[from] CommandError),
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// Creating a drive as a snapshot of an image, or growing one.
#[derive(Debug, thiserror::Error)]
pub enum CreateDriveError {
    #[error("image {id} not found")]
    ImageNotFound { id: String },
    #[error("drive {id} not found")]
    NotFound { id: String },
    #[error("drive {id} already exists")]
    Exists { id: String },
    #[error(transparent)]
    Id(#[from] IdError),
    #[error(transparent)]
    Size(#[from] SizeError),
    #[error("cannot grow drive {id}")]
    Grow {
        id: String,
        #[source]
        source: GrowError,
    },
    #[error(transparent)]
    Subvolume(#[from] SubvolumeError),
    #[error(transparent)]
    Fs(#[from] FsError),
}

impl CreateDriveError {
    pub fn is_out_of_space(&self) -> bool {
        match self {
            Self::Grow {
                source: GrowError::Fs(e),
                ..
            }
            | Self::Fs(e) => e.is_out_of_space(),
            Self::Subvolume(e) => e.is_out_of_space(),
            _ => false,
        }
    }
}

/// Removing an image or a drive, or the debris of interrupted work.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("image {id} not found")]
    ImageNotFound { id: String },
    #[error("drive {id} not found")]
    DriveNotFound { id: String },
    #[error(transparent)]
    Id(#[from] IdError),
    #[error(transparent)]
    Subvolume(#[from] SubvolumeError),
    #[error(transparent)]
    Fs(#[from] FsError),
}

impl RemoveError {
    /// Whether there was nothing to remove.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::ImageNotFound { .. } | Self::DriveNotFound { .. }
        )
    }
}
