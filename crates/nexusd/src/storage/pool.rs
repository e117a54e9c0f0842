//! The storage pool: the btrfs filesystem every image and drive lives in.
//!
//! Two modes, chosen in config ([`PoolConfig`]):
//! - [`PoolConfig::Dir`]: a directory on the user's own btrfs, used as is. No privileges needed.
//! - [`PoolConfig::Image`], the embedded default: a sparse file (20 GiB by default) formatted once with
//!   `mkfs.btrfs` and loop-mounted at start with `mount -o loop`. Only this mount needs root. Before
//!   mounting, nexusd records that it owns the mount in `<file>.mounted` (the mountpoint, one line),
//!   and removes the record once it unmounted. A pool found already mounted is adopted as ours when
//!   that record names its mountpoint (a daemon killed with `-9`, or one whose VMs kept the pool
//!   busy at shutdown), so the next clean shutdown unmounts it and frees its loop device; a mount
//!   without the record was made by someone else and is used as is and left mounted.
//!
//! Either way the pool is checked to really be btrfs (statfs magic) before it is used.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::{FsError, PoolError, btrfs};
use crate::command;

/// Size of the embedded pool image when config says nothing (sparse: costs nothing until used).
pub const DEFAULT_IMAGE_SIZE: u64 = 20 << 30;
/// Where the kernel lists this process's mounts.
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Where the pool comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolConfig {
    /// An existing directory on btrfs, used as is.
    Dir(PathBuf),
    /// A sparse image file, formatted if missing, loop-mounted at `mountpoint`.
    Image {
        file: PathBuf,
        size: u64,
        mountpoint: PathBuf,
    },
}

impl PoolConfig {
    /// The embedded default under nexusd's data directory: `pool.img` (20 GiB sparse) mounted at `pool/`.
    pub fn embedded(data_dir: &Path) -> Self {
        Self::Image {
            file: data_dir.join("pool.img"),
            size: DEFAULT_IMAGE_SIZE,
            mountpoint: data_dir.join("pool"),
        }
    }
}

/// An open, verified btrfs pool.
#[derive(Debug)]
pub struct Pool {
    root: PathBuf,
    mounted_by_us: bool,
    /// The ownership record removed after unmounting (only when `mounted_by_us`).
    owner_file: Option<PathBuf>,
}

impl Pool {
    /// A pool at `root` that is neither checked nor mounted (see [`super::Storage::unchecked`]).
    #[cfg(test)]
    pub(crate) fn unchecked(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            mounted_by_us: false,
            owner_file: None,
        }
    }

    /// Opens the pool `config` describes, formatting and mounting the embedded image when needed.
    pub fn open(config: &PoolConfig) -> Result<Self, PoolError> {
        match config {
            PoolConfig::Dir(dir) => {
                if !fs::metadata(dir)
                    .map_err(FsError::at("stat", dir))?
                    .is_dir()
                {
                    return Err(PoolError::NotADirectory { path: dir.clone() });
                }
                ensure_btrfs(dir)?;
                Ok(Self {
                    root: dir.clone(),
                    mounted_by_us: false,
                    owner_file: None,
                })
            }
            PoolConfig::Image {
                file,
                size,
                mountpoint,
            } => open_image(file, *size, mountpoint),
        }
    }

    /// The pool's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether this `Pool` mounted the image (and [`Pool::close`] will unmount it).
    pub fn mounted_by_us(&self) -> bool {
        self.mounted_by_us
    }

    /// Bytes still available for new data (what `/v1/health` reports).
    pub fn free_bytes(&self) -> Result<u64, FsError> {
        super::free_bytes(&self.root)
    }

    /// Total size of the pool's filesystem in bytes.
    pub fn total_bytes(&self) -> Result<u64, FsError> {
        let stat = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| FsError::sys("statvfs", &self.root, e))?;
        Ok(stat.blocks() * stat.fragment_size())
    }

    /// Shuts the pool down: unmounts the image if this `Pool` mounted it. A pool still in use (a VM
    /// kept running across the daemon's restart holds a drive open) stays mounted: [`PoolError::Busy`].
    pub fn close(self) -> Result<(), PoolError> {
        if !self.mounted_by_us {
            return Ok(());
        }
        match nix::mount::umount(&self.root) {
            Ok(()) => {
                if let Some(record) = &self.owner_file {
                    let _ = fs::remove_file(record);
                }
                Ok(())
            }
            Err(nix::Error::EBUSY) => Err(PoolError::Busy {
                mountpoint: self.root,
            }),
            Err(e) => Err(FsError::sys("umount", &self.root, e).into()),
        }
    }
}

fn open_image(file: &Path, size: u64, mountpoint: &Path) -> Result<Pool, PoolError> {
    fs::create_dir_all(mountpoint).map_err(FsError::at("create directory", mountpoint))?;
    let root = fs::canonicalize(mountpoint).map_err(FsError::at("resolve", mountpoint))?;
    let mountinfo =
        fs::read_to_string(MOUNTINFO).map_err(FsError::at("read", Path::new(MOUNTINFO)))?;
    let record = owner_record(file);
    if is_mounted(&mountinfo, &root) {
        ensure_btrfs(&root)?;
        let ours = recorded_mountpoint(&record).is_some_and(|m| m == root);
        if ours {
            tracing::info!(mountpoint = %root.display(), "adopting the pool mount an earlier nexusd made");
        }
        return Ok(Pool {
            root,
            mounted_by_us: ours,
            owner_file: ours.then_some(record),
        });
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(PoolError::NeedsRoot {
            file: file.to_owned(),
            mountpoint: root,
        });
    }
    if !file.exists() {
        format_image(file, size)?;
    }
    // Recorded before mounting, so a kill between the mount and the record cannot leak the mount;
    // a record without a mount is ignored (and replaced) by the next start.
    write_owner_record(&record, &root)?;
    let mut mount = command::tool("mount");
    mount
        .args(["-t", "btrfs", "-o", "loop"])
        .arg(file)
        .arg(&root);
    if let Err(source) = command::run(&mut mount, &[0]) {
        let _ = fs::remove_file(&record);
        return Err(PoolError::Mount {
            file: file.to_owned(),
            mountpoint: root,
            source,
        });
    }
    let pool = Pool {
        root,
        mounted_by_us: true,
        owner_file: Some(record),
    };
    if let Err(e) = ensure_btrfs(&pool.root) {
        let _ = pool.close();
        return Err(e);
    }
    Ok(pool)
}

/// Where nexusd records that it mounted the image `file`: `<file>.mounted`.
fn owner_record(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".mounted");
    PathBuf::from(name)
}

/// The mountpoint an ownership record names, if there is a readable one.
fn recorded_mountpoint(record: &Path) -> Option<PathBuf> {
    let text = fs::read_to_string(record).ok()?;
    let line = text.strip_suffix('\n').unwrap_or(&text);
    (!line.is_empty()).then(|| PathBuf::from(line))
}

/// Writes the ownership record durably (temp file, fsync, rename).
fn write_owner_record(record: &Path, mountpoint: &Path) -> Result<(), FsError> {
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    let mut tmp = record.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(mountpoint.as_os_str().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, record)
    };
    write().map_err(FsError::at("write", record))
}

/// Creates the sparse pool image and formats it. Works on `<file>.tmp` and renames it into place at the
/// end, so an interrupted format never leaves a half-made `file` behind.
fn format_image(file: &Path, size: u64) -> Result<(), PoolError> {
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    if let Some(parent) = file.parent() {
        fs::create_dir_all(parent).map_err(FsError::at("create directory", parent))?;
    }
    let _ = fs::remove_file(&tmp);
    let image = File::create(&tmp).map_err(FsError::at("create", &tmp))?;
    image
        .set_len(size)
        .map_err(FsError::at("set length of", &tmp))?;
    let mut mkfs = command::tool("mkfs.btrfs");
    mkfs.args(["-q", "-L", "nexus-pool"]).arg(&tmp);
    command::run(&mut mkfs, &[0]).map_err(|source| PoolError::Format {
        file: file.to_owned(),
        source,
    })?;
    image.sync_all().map_err(FsError::at("sync", &tmp))?;
    fs::rename(&tmp, file).map_err(FsError::at("rename into place", file))?;
    Ok(())
}

/// Fails with [`PoolError::NotBtrfs`] unless `path` lives on btrfs.
pub fn ensure_btrfs(path: &Path) -> Result<(), PoolError> {
    let fs_type = btrfs::fs_type(path)?;
    if fs_type == btrfs::BTRFS_SUPER_MAGIC {
        Ok(())
    } else {
        Err(PoolError::NotBtrfs {
            path: path.to_owned(),
            fs_type,
        })
    }
}

/// Whether `mountinfo` (the text of `/proc/self/mountinfo`) lists a mount at `mountpoint`.
fn is_mounted(mountinfo: &str, mountpoint: &Path) -> bool {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|field| Path::new(&unescape(field)) == mountpoint)
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
98 22 7:0 / /var/lib/nexus\\040data/pool rw,relatime shared:50 - btrfs /dev/loop0 rw,space_cache=v2,subvolid=5,subvol=/
";

    #[test]
    fn is_mounted_finds_an_escaped_mountpoint() {
        assert!(is_mounted(MOUNTINFO, Path::new("/var/lib/nexus data/pool")));
    }

    #[test]
    fn is_mounted_ignores_a_parent_of_a_mountpoint() {
        assert!(!is_mounted(MOUNTINFO, Path::new("/var/lib")));
    }

    #[test]
    fn embedded_default_is_twenty_gib_under_the_data_dir() {
        let config = PoolConfig::embedded(Path::new("/data"));
        assert_eq!(
            config,
            PoolConfig::Image {
                file: "/data/pool.img".into(),
                size: 20 << 30,
                mountpoint: "/data/pool".into()
            }
        );
    }

    #[test]
    fn the_ownership_record_names_the_mountpoint_it_was_written_for() {
        let dir = tempfile::tempdir().unwrap();
        let record = owner_record(&dir.path().join("pool.img"));

        write_owner_record(&record, Path::new("/data/my pool")).unwrap();

        assert_eq!(record, dir.path().join("pool.img.mounted"));
        assert_eq!(
            recorded_mountpoint(&record),
            Some(PathBuf::from("/data/my pool"))
        );
    }

    #[test]
    fn a_missing_ownership_record_names_nothing() {
        let dir = tempfile::tempdir().unwrap();

        assert_eq!(
            recorded_mountpoint(&dir.path().join("pool.img.mounted")),
            None
        );
    }
}
