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
mod error;
pub mod ext4;
mod manager;
pub mod pool;
pub mod reconcile;
mod service;

use std::path::Path;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

pub use error::{
    CreateDriveError, FsError, GrowError, IdError, ImportError, PoolError, RemoveError, SizeError,
    SubvolumeError,
};
pub use manager::PoolManager;
pub use pool::{Pool, PoolConfig};
pub use service::{DriveInfo, IMAGE_FILE, ImageInfo, ImageSource, Storage};

/// Free bytes under which a file system a tool failed to write to counts as full.
const NEARLY_FULL: u64 = 32 << 20;

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
    pub fn check(&self) -> Result<(), ImportError> {
        if self.cancel.is_cancelled() {
            return Err(ImportError::Cancelled);
        }
        if Instant::now() >= self.deadline {
            return Err(ImportError::TimedOut {
                secs: self.timeout.as_secs(),
            });
        }
        Ok(())
    }
}

/// Bytes an unprivileged writer may still use in the file system holding `path`.
pub(crate) fn free_bytes(path: &Path) -> Result<u64, FsError> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| FsError::sys("statvfs", path, e))?;
    #[allow(clippy::unnecessary_cast)]
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// After a tool failed while writing under `dir`: out of space when the file system holding
/// `dir` is nearly full now. Decided from the state the tool left, never from its stderr (whose
/// wording depends on the tool's version and locale).
pub(crate) fn out_of_space_after(op: &'static str, dir: &Path) -> Option<FsError> {
    match free_bytes(dir) {
        Ok(free) if free < NEARLY_FULL => Some(FsError::NoSpace {
            op,
            path: dir.to_owned(),
        }),
        _ => None,
    }
}
