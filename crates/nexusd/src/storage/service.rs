//! The storage service the daemon calls: import master images, create, resize and delete drives, list
//! what is on disk for reconciliation, and clean up interrupted work.
//!
//! Crash safety: work happens in a subvolume under `tmp/`; it becomes visible under `images/` or
//! `drives/` in one atomic step (a snapshot, or `renameat2` with `RENAME_NOREPLACE`/`RENAME_EXCHANGE`).
//! Deletion first moves the subvolume into `tmp/`, then empties it. So after a crash, `images/` and
//! `drives/` hold only complete subvolumes, and [`Storage::clean_tmp`] at start-up removes the rest.
//!
//! Every method blocks (ioctls, child processes, big copies): call them from `spawn_blocking`.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
use serde::{Deserialize, Serialize};

use super::{
    CreateDriveError, FsError, IdError, ImportBounds, ImportError, PoolError, RemoveError,
    SizeError, SubvolumeError, btrfs, ext4,
};

/// The ext4 image inside every image and drive subvolume.
pub const IMAGE_FILE: &str = "rootfs.ext4";
/// The image's metadata, next to [`IMAGE_FILE`].
pub const META_FILE: &str = "meta.json";
/// Longest accepted image or drive id.
pub const MAX_ID_LEN: usize = 128;

const IMAGES: &str = "images";
const DRIVES: &str = "drives";
const TMP: &str = "tmp";

/// Where a master image came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "path", rename_all = "snake_case")]
pub enum ImageSource {
    /// Copied from an existing ext4 image file.
    Ext4File(PathBuf),
    /// Built with `mke2fs -d` from a directory.
    Directory(PathBuf),
    /// Published from the drive of a template build (the build's id).
    Build(PathBuf),
}

/// A master image as stored in its subvolume's `meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub id: String,
    /// The image's `rootfs.ext4` (not stored in `meta.json`: it follows from where the pool is).
    #[serde(skip)]
    pub path: PathBuf,
    pub size_bytes: u64,
    /// sha256 of `rootfs.ext4`, lowercase hex.
    pub sha256: String,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    pub source: ImageSource,
}

/// A drive: a writable copy-on-write snapshot of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveInfo {
    pub id: String,
    /// The drive's `rootfs.ext4`, what a VM gets as its block device.
    pub path: PathBuf,
    pub size_bytes: u64,
}

/// Storage operations on one pool, rooted at a directory on btrfs.
#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
}

impl Storage {
    /// Storage rooted at `root`, which is not checked or touched: for unit tests that need the
    /// paths of drives but never make a subvolume.
    #[cfg(test)]
    pub(crate) fn unchecked(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    /// Uses the pool rooted at `root` (checked to be btrfs), creating `images/`, `drives/` and `tmp/`.
    pub fn open(root: &Path) -> Result<Self, PoolError> {
        super::pool::ensure_btrfs(root)?;
        for dir in [IMAGES, DRIVES, TMP] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(FsError::at("create directory", &path))?;
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// The subvolume of image `id` (whether or not it exists).
    pub fn image_dir(&self, id: &str) -> PathBuf {
        self.root.join(IMAGES).join(id)
    }

    /// The subvolume of drive `id` (whether or not it exists).
    pub fn drive_dir(&self, id: &str) -> PathBuf {
        self.root.join(DRIVES).join(id)
    }

    /// Imports the ext4 image file `src` as image `id`: copied (sparse, hashed while streaming) into a
    /// new subvolume, then published read-only. A file that is not ext4 is rejected before anything is
    /// created. `shown` is the source's name in records and messages (`src` may be a
    /// `/proc/self/fd/N` path of a checked descriptor). Stopped (and its work removed) when
    /// `bounds` says so.
    pub fn import_image_from_ext4(
        &self,
        src: &Path,
        shown: &Path,
        id: &str,
        bounds: &ImportBounds,
    ) -> Result<ImageInfo, ImportError> {
        validate_id(id)?;
        let not_ext4 = || ImportError::NotExt4 {
            path: shown.to_owned(),
        };
        let meta = fs::metadata(src).map_err(|e| {
            ImportError::open_source(shown, e, |path| ImportError::NotExt4 { path })
        })?;
        if !meta.is_file() || !ext4::is_ext4(src).map_err(ImportError::from_source)? {
            return Err(not_ext4());
        }
        let source = ImageSource::Ext4File(shown.to_owned());
        self.import(id, source, |file| {
            let (size, sha256) = ext4::copy_with_sha256(src, file, bounds)?;
            // The source could have changed since the first check.
            if !ext4::is_ext4(file)? {
                return Err(not_ext4());
            }
            Ok((size, sha256))
        })
    }

    /// Imports the directory `dir` as image `id`: an ext4 image built with `mke2fs -d` (see
    /// [`ext4`] for who owns the files inside), under `bounds`: the tree is measured first (on a
    /// descriptor, see [`ext4::scan_dir`]) and refused past a cap; the image is sized from the
    /// allocated bytes (sparse files count their data, not their holes) and must fit the pool's
    /// free space; `mke2fs` is killed and its output removed when the client goes away or the
    /// deadline passes. `shown` as for [`Storage::import_image_from_ext4`].
    pub fn import_image_from_dir(
        &self,
        dir: &Path,
        shown: &Path,
        id: &str,
        bounds: &ImportBounds,
    ) -> Result<ImageInfo, ImportError> {
        self.import_image_from_dir_sized(dir, shown, id, bounds, 0)
    }

    /// [`Storage::import_image_from_dir`] into a filesystem of at least `min_size` bytes
    /// (rounded up to MiB).
    pub fn import_image_from_dir_sized(
        &self,
        dir: &Path,
        shown: &Path,
        id: &str,
        bounds: &ImportBounds,
        min_size: u64,
    ) -> Result<ImageInfo, ImportError> {
        validate_id(id)?;
        let fd = ext4::open_source_dir(dir, shown)?;
        let usage = ext4::scan_dir(&fd, shown, bounds)?;
        let size = ext4::size_for_usage(usage).max(min_size.div_ceil(1 << 20) << 20);
        let free = self.free_bytes()?;
        if usage.bytes > free {
            return Err(FsError::NoSpace {
                op: "fit the content of",
                path: shown.to_owned(),
            }
            .into());
        }
        self.import(id, ImageSource::Directory(shown.to_owned()), |file| {
            ext4::build_from_dir_bounded(dir, file, size, usage.inodes, bounds)?;
            Ok((size, ext4::sha256_file(file)?))
        })
    }

    /// Bytes an unprivileged writer may still use in the pool.
    pub fn free_bytes(&self) -> Result<u64, FsError> {
        super::free_bytes(&self.root)
    }

    /// Builds an image in a fresh subvolume under `tmp/` with `fill` (which writes `rootfs.ext4` and
    /// returns its size and sha256), then publishes it as a read-only snapshot at `images/<id>`.
    fn import(
        &self,
        id: &str,
        source: ImageSource,
        fill: impl FnOnce(&Path) -> Result<(u64, String), ImportError>,
    ) -> Result<ImageInfo, ImportError> {
        let dest = self.image_dir(id);
        let image_exists = || ImportError::Exists { id: id.to_owned() };
        if exists(&dest)? {
            return Err(image_exists());
        }
        let work = self.work_path("image", id);
        btrfs::create_subvolume(&work)?;
        let result = (|| {
            let (size_bytes, sha256) = fill(&work.join(IMAGE_FILE))?;
            let info = ImageInfo {
                id: id.to_owned(),
                path: dest.join(IMAGE_FILE),
                size_bytes,
                sha256,
                created_at_ms: u64::try_from(crate::store::now_ms()).unwrap_or(0),
                source,
            };
            write_meta(&work.join(META_FILE), &info)?;
            btrfs::snapshot(&work, &dest, true).map_err(|e| exists_as(e, image_exists))?;
            Ok(info)
        })();
        self.discard(&work);
        result
    }

    /// Publishes drive `drive_id` (whose VM is stopped) as the read-only image `image_id`: a
    /// snapshot of the drive under `tmp/` gets the image's `meta.json`, then is published by a
    /// read-only snapshot at `images/<id>`. Constant time but for hashing the ext4 file.
    pub fn image_from_drive(
        &self,
        drive_id: &str,
        image_id: &str,
        source: ImageSource,
    ) -> Result<ImageInfo, ImportError> {
        validate_id(image_id)?;
        let drive = self
            .existing_drive(drive_id)
            .map_err(|_| ImportError::SourceNotFound {
                path: self.drive_dir(drive_id),
            })?;
        let dest = self.image_dir(image_id);
        let image_exists = || ImportError::Exists {
            id: image_id.to_owned(),
        };
        if exists(&dest)? {
            return Err(image_exists());
        }
        let work = self.work_path("image", image_id);
        btrfs::snapshot(&drive, &work, false)?;
        let result = (|| {
            let file = work.join(IMAGE_FILE);
            let info = ImageInfo {
                id: image_id.to_owned(),
                path: dest.join(IMAGE_FILE),
                size_bytes: file_len(&file)?,
                sha256: ext4::sha256_file(&file)?,
                created_at_ms: u64::try_from(crate::store::now_ms()).unwrap_or(0),
                source,
            };
            write_meta(&work.join(META_FILE), &info)?;
            btrfs::snapshot(&work, &dest, true).map_err(|e| exists_as(e, image_exists))?;
            Ok(info)
        })();
        self.discard(&work);
        result
    }

    /// Creates drive `drive_id` as a writable snapshot of image `image_id`, in constant time. With
    /// `size`, the drive's filesystem is grown to it (a size below the image's is an error, checked first).
    pub fn create_drive(
        &self,
        image_id: &str,
        drive_id: &str,
        size: Option<u64>,
    ) -> Result<DriveInfo, CreateDriveError> {
        validate_id(drive_id)?;
        let image = self.existing(IMAGES, image_id, || CreateDriveError::ImageNotFound {
            id: image_id.to_owned(),
        })?;
        let dest = self.drive_dir(drive_id);
        let drive_exists = || CreateDriveError::Exists {
            id: drive_id.to_owned(),
        };
        if exists(&dest)? {
            return Err(drive_exists());
        }
        let image_size = file_len(&image.join(IMAGE_FILE))?;
        match size {
            Some(size) if size < image_size => {
                return Err(SizeError::TooSmall {
                    requested: size,
                    current: image_size,
                }
                .into());
            }
            Some(size) if size > image_size => {
                ext4::check_size(size)?;
                let work = self.work_path("drive", drive_id);
                btrfs::snapshot(&image, &work, false)?;
                let result = self.grow(drive_id, &work, size).and_then(|()| {
                    rename(&work, &dest, RenameFlags::RENAME_NOREPLACE)
                        .map_err(|e| exists_as(e.into(), drive_exists))
                });
                self.discard(&work);
                result?;
            }
            _ => btrfs::snapshot(&image, &dest, false).map_err(|e| exists_as(e, drive_exists))?,
        }
        // The image may have been emptied by a concurrent delete while it was snapshotted: a
        // drive without its file is not published.
        self.drive_info(drive_id).inspect_err(|_| {
            if let Err(e) = self.delete_drive(drive_id) {
                tracing::warn!(drive = drive_id, error = %e, "could not remove an incomplete drive; it is removed at the next start");
            }
        })
    }

    /// Describes drive `id` as it is on disk.
    pub fn drive_info(&self, id: &str) -> Result<DriveInfo, CreateDriveError> {
        let dir = self.existing_drive(id)?;
        let path = dir.join(IMAGE_FILE);
        Ok(DriveInfo {
            id: id.to_owned(),
            size_bytes: file_len(&path)?,
            path,
        })
    }

    /// Grows drive `id` to `new_size` bytes. The resize happens on a snapshot under `tmp/` that is then
    /// swapped in atomically (`RENAME_EXCHANGE`), so a crash leaves the old drive intact. The drive must
    /// not be in use by a running VM.
    pub fn resize_drive(&self, id: &str, new_size: u64) -> Result<DriveInfo, CreateDriveError> {
        let dir = self.existing_drive(id)?;
        let current = file_len(&dir.join(IMAGE_FILE))?;
        if new_size < current {
            return Err(SizeError::TooSmall {
                requested: new_size,
                current,
            }
            .into());
        }
        ext4::check_size(new_size)?;
        if new_size > current {
            let work = self.work_path("resize", id);
            btrfs::snapshot(&dir, &work, false)?;
            let result = self
                .grow(id, &work, new_size)
                .and_then(|()| Ok(rename(&work, &dir, RenameFlags::RENAME_EXCHANGE)?));
            // After the exchange `work` holds the old drive; either way it is garbage now.
            self.discard(&work);
            result?;
        }
        self.drive_info(id)
    }

    /// Deletes drive `id` (no privileges needed): moved into `tmp/` atomically, then removed.
    pub fn delete_drive(&self, id: &str) -> Result<(), RemoveError> {
        let dir = self.existing(DRIVES, id, || RemoveError::DriveNotFound {
            id: id.to_owned(),
        })?;
        let work = self.work_path("deleted-drive", id);
        rename(&dir, &work, RenameFlags::RENAME_NOREPLACE)?;
        Ok(btrfs::delete_subvolume(&work)?)
    }

    /// Deletes image `id`. Drives made from it are independent snapshots and stay intact; refusing to
    /// delete an image that drives still reference is the database's job.
    pub fn delete_image(&self, id: &str) -> Result<(), RemoveError> {
        let dir = self.existing(IMAGES, id, || RemoveError::ImageNotFound {
            id: id.to_owned(),
        })?;
        // A read-only subvolume cannot be renamed (EROFS), so it becomes writable first.
        btrfs::set_readonly(&dir, false)?;
        let work = self.work_path("deleted-image", id);
        if let Err(e) = rename(&dir, &work, RenameFlags::RENAME_NOREPLACE) {
            // Leave the image as it was: published images are read-only.
            let _ = btrfs::set_readonly(&dir, true);
            return Err(e.into());
        }
        Ok(btrfs::delete_subvolume(&work)?)
    }

    /// Ids of the image subvolumes on disk, sorted.
    pub fn list_image_ids(&self) -> Result<Vec<String>, FsError> {
        btrfs::list_subvolumes(&self.root.join(IMAGES))
    }

    /// Ids of the drive subvolumes on disk, sorted.
    pub fn list_drive_ids(&self) -> Result<Vec<String>, FsError> {
        btrfs::list_subvolumes(&self.root.join(DRIVES))
    }

    /// Removes everything under `tmp/` (debris of interrupted work) and returns the names removed. Call
    /// it at start-up, before any storage operation runs.
    pub fn clean_tmp(&self) -> Result<Vec<String>, SubvolumeError> {
        let tmp = self.root.join(TMP);
        let mut removed = Vec::new();
        for entry in fs::read_dir(&tmp).map_err(FsError::at("read directory", &tmp))? {
            let entry = entry.map_err(FsError::at("read directory", &tmp))?;
            btrfs::remove_tree(&entry.path())?;
            removed.push(entry.file_name().to_string_lossy().into_owned());
        }
        removed.sort();
        Ok(removed)
    }

    /// The subvolume of image or drive `id` under `kind` (`images` or `drives`); `missing()`
    /// when there is none.
    fn existing<E: From<IdError> + From<FsError>>(
        &self,
        kind: &str,
        id: &str,
        missing: impl FnOnce() -> E,
    ) -> Result<PathBuf, E> {
        validate_id(id)?;
        let dir = self.root.join(kind).join(id);
        if exists(&dir)? {
            Ok(dir)
        } else {
            Err(missing())
        }
    }

    fn existing_drive(&self, id: &str) -> Result<PathBuf, CreateDriveError> {
        self.existing(DRIVES, id, || CreateDriveError::NotFound {
            id: id.to_owned(),
        })
    }

    /// Grows the image file of the work copy `work` of drive `id` to `size`.
    fn grow(&self, id: &str, work: &Path, size: u64) -> Result<(), CreateDriveError> {
        ext4::grow(&work.join(IMAGE_FILE), size).map_err(|source| CreateDriveError::Grow {
            id: id.to_owned(),
            source,
        })
    }

    /// A fresh, unique path under `tmp/` for work on `id`.
    fn work_path(&self, kind: &str, id: &str) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root
            .join(TMP)
            .join(format!("{kind}-{id}-{}-{n}", std::process::id()))
    }

    /// Best-effort removal of a work subvolume; what is left is removed by the next `clean_tmp`.
    fn discard(&self, work: &Path) {
        if exists(work).unwrap_or(true)
            && let Err(e) = btrfs::remove_tree(work)
        {
            tracing::warn!(path = %work.display(), error = %e, "could not remove storage work directory");
        }
    }
}

/// Checks that `id` is safe as a single path component: 1 to 128 of `[A-Za-z0-9._-]`, no leading dot.
pub fn validate_id(id: &str) -> Result<(), IdError> {
    let invalid = |reason| {
        Err(IdError {
            id: id.to_owned(),
            reason,
        })
    };
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return invalid("must be 1 to 128 characters long");
    }
    if id.starts_with('.') {
        return invalid("must not start with a dot");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return invalid("may only contain ASCII letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

fn exists(path: &Path) -> Result<bool, FsError> {
    path.try_exists().map_err(FsError::at("stat", path))
}

fn file_len(path: &Path) -> Result<u64, FsError> {
    Ok(fs::metadata(path).map_err(FsError::at("stat", path))?.len())
}

/// Turns an `EEXIST` from publishing into the caller's "already exists" error (a concurrent twin won).
fn exists_as<E: From<SubvolumeError>>(err: SubvolumeError, already: impl FnOnce() -> E) -> E {
    if err.is_already_exists() {
        already()
    } else {
        err.into()
    }
}

fn rename(from: &Path, to: &Path, flags: RenameFlags) -> Result<(), FsError> {
    renameat2(AT_FDCWD, from, AT_FDCWD, to, flags).map_err(|e| FsError::sys("rename", to, e))
}

fn write_meta(path: &Path, info: &ImageInfo) -> Result<(), ImportError> {
    let json = serde_json::to_vec_pretty(info).map_err(|source| ImportError::Metadata {
        path: path.to_owned(),
        source,
    })?;
    let mut file = File::create(path).map_err(FsError::at("create", path))?;
    file.write_all(&json).map_err(FsError::at("write", path))?;
    Ok(file.sync_all().map_err(FsError::at("sync", path))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_id_accepts_uuid_like_ids() {
        assert!(validate_id("0190a8e4-7c1b-7d2e-9f00-1234567890ab").is_ok());
    }

    #[test]
    fn validate_id_rejects_path_tricks() {
        for bad in ["", "..", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn image_info_round_trips_through_json_without_the_path() {
        let info = ImageInfo {
            id: "img".into(),
            path: "/pool/images/img/rootfs.ext4".into(),
            size_bytes: 4096,
            sha256: "00".into(),
            created_at_ms: 1,
            source: ImageSource::Directory("/src".into()),
        };
        let back: ImageInfo = serde_json::from_str(&serde_json::to_string(&info).unwrap()).unwrap();
        assert_eq!(
            back,
            ImageInfo {
                path: PathBuf::new(),
                ..info
            }
        );
    }
}
