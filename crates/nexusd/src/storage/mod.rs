//! Storage: the btrfs pool that holds master images and copy-on-write VM drives.
//!
//! A pool is a btrfs filesystem ([`pool`]): a directory on the user's own btrfs, or an embedded sparse
//! image file that nexusd formats and loop-mounts. Inside it:
//!
//! ```text
//! <pool>/images/<id>/   read-only subvolume: rootfs.ext4 + meta.json
//! <pool>/drives/<id>/   writable snapshot of an image subvolume: rootfs.ext4 (+ the image's meta.json)
//! <pool>/tmp/           work in progress; anything here after a crash is garbage (see `clean_tmp`)
//! ```
//!
//! Every step that makes something visible under `images/` or `drives/` is a single atomic btrfs
//! operation (a snapshot, or a `renameat2(RENAME_NOREPLACE)`), so an interrupted import or drive
//! creation leaves debris only under `tmp/`. All functions here block; the daemon calls them through
//! `spawn_blocking`. Subvolume ioctls live in [`btrfs`], ext4 tooling in [`ext4`], the service the
//! daemon uses in [`Storage`].

pub mod btrfs;
pub(crate) mod cmd;
pub mod ext4;
mod manager;
pub mod pool;
pub mod reconcile;
mod service;

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

pub use manager::PoolManager;
pub use pool::{Pool, PoolConfig};
pub use service::{DriveInfo, IMAGE_FILE, ImageInfo, ImageSource, Storage};

/// Everything that can go wrong in storage. Variants carry the path or id a reader needs.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{op} on {path}")]
    Sys {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("the storage pool is out of space ({op} {path})")]
    NoSpace { op: &'static str, path: PathBuf },
    #[error("{path} is not on a btrfs filesystem (statfs type {fs_type:#x})")]
    NotBtrfs { path: PathBuf, fs_type: i64 },
    #[error("{path} is not a btrfs subvolume")]
    NotSubvolume { path: PathBuf },
    #[error("invalid path {path}: {reason}")]
    InvalidPath { path: PathBuf, reason: &'static str },
    #[error(
        "mounting the storage pool image {file} at {mountpoint} needs root; start nexusd as root, or set \
         `pool = \"/some/dir\"` in nexus.toml to a directory on an existing btrfs filesystem \
         (for example a subvolume created with `btrfs subvolume create`)"
    )]
    PoolNeedsRoot { file: PathBuf, mountpoint: PathBuf },
    #[error("the storage pool at {mountpoint} is still in use and stays mounted")]
    PoolBusy { mountpoint: PathBuf },
    #[error("could not run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("unexpected output from `{command}`: {reason}")]
    ToolOutput { command: String, reason: String },
    #[error("cannot {op} {path}")]
    SourceUnreadable {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} does not exist")]
    SourceNotFound { path: PathBuf },
    #[error("{path} is not an ext4 image")]
    NotExt4 { path: PathBuf },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("invalid id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },
    #[error("invalid size {size}: {reason}")]
    InvalidSize { size: u64, reason: &'static str },
    #[error("requested size {requested} bytes is smaller than the current {current} bytes")]
    SizeTooSmall { requested: u64, current: u64 },
    #[error("image {id} not found")]
    ImageNotFound { id: String },
    #[error("drive {id} not found")]
    DriveNotFound { id: String },
    #[error("image {id} already exists")]
    ImageExists { id: String },
    #[error("drive {id} already exists")]
    DriveExists { id: String },
    #[error("{what} exceeds `{key}` ({limit}); raise it in nexus.toml or import a smaller tree")]
    ImportTooBig {
        key: &'static str,
        what: String,
        limit: u64,
    },
    #[error("the import took longer than `import_timeout_secs` ({secs} s) and was stopped")]
    ImportTimedOut { secs: u64 },
    #[error("the import was stopped: the client went away")]
    ImportCancelled,
    #[error("invalid metadata {path}")]
    Metadata {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Bounds of one import from outside: size caps for a directory's content, a deadline, and a
/// token cancelled when the client goes away. Checked by the scan, the copy and while `mke2fs`
/// runs (which is killed when a bound is hit).
#[derive(Debug, Clone)]
pub struct ImportBounds {
    pub max_entries: u64,
    pub max_bytes: u64,
    pub timeout: Duration,
    pub deadline: Instant,
    pub cancel: CancellationToken,
}

impl ImportBounds {
    /// Bounds starting now.
    pub fn new(
        max_entries: u64,
        max_bytes: u64,
        timeout: Duration,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            max_entries,
            max_bytes,
            timeout,
            deadline: Instant::now() + timeout,
            cancel,
        }
    }

    /// No caps, no deadline to speak of, never cancelled: for callers that trust the source.
    pub fn unbounded() -> Self {
        Self::new(
            u64::MAX,
            u64::MAX,
            Duration::from_secs(100 * 365 * 86400),
            CancellationToken::new(),
        )
    }

    /// An error when the work must stop now: the client went away or the deadline passed.
    pub fn check(&self) -> Result<(), StorageError> {
        if self.cancel.is_cancelled() {
            return Err(StorageError::ImportCancelled);
        }
        if Instant::now() >= self.deadline {
            return Err(StorageError::ImportTimedOut {
                secs: self.timeout.as_secs(),
            });
        }
        Ok(())
    }
}

impl StorageError {
    /// An I/O error on `path`; running out of space gets its own variant so the API can answer 507.
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

    /// A failed system call on `path`.
    pub(crate) fn sys(op: &'static str, path: &Path, source: nix::Error) -> Self {
        if source == nix::Error::ENOSPC {
            Self::NoSpace {
                op,
                path: path.to_owned(),
            }
        } else {
            Self::Sys {
                op,
                path: path.to_owned(),
                source,
            }
        }
    }

    /// Whether the pool ran out of space (directly, or as reported by an external tool).
    pub fn is_out_of_space(&self) -> bool {
        match self {
            Self::NoSpace { .. } => true,
            Self::Command { stderr, .. } => stderr.contains("No space left on device"),
            _ => false,
        }
    }
}
