//! The storage pool: the btrfs filesystem every image and drive lives in.
//!
//! Two modes, chosen in config ([`PoolConfig`]):
//! - [`PoolConfig::Dir`]: a directory on the user's own btrfs, used as is. No privileges needed.
//! - [`PoolConfig::Image`], the embedded default: a sparse file (20 GiB by default) formatted once with
//!   `mkfs.btrfs` and loop-mounted at start with `mount -o loop`. Only this mount needs root. A pool that
//!   is already mounted there (left by an earlier run, e.g. because VMs kept it busy) is reused as is and
//!   left mounted at shutdown: only a mount made by this [`Pool`] is undone by [`Pool::close`].
//!
//! Either way the pool is checked to really be btrfs (statfs magic) before it is used.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::{StorageError, btrfs, cmd};

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
}

impl Pool {
    /// Opens the pool `config` describes, formatting and mounting the embedded image when needed.
    pub fn open(config: &PoolConfig) -> Result<Self, StorageError> {
        match config {
            PoolConfig::Dir(dir) => {
                if !fs::metadata(dir)
                    .map_err(|e| StorageError::io("stat", dir, e))?
                    .is_dir()
                {
                    return Err(StorageError::NotADirectory { path: dir.clone() });
                }
                btrfs::ensure_btrfs(dir)?;
                Ok(Self {
                    root: dir.clone(),
                    mounted_by_us: false,
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
    pub fn free_bytes(&self) -> Result<u64, StorageError> {
        let stat = self.statvfs()?;
        Ok(stat.blocks_available() * stat.fragment_size())
    }

    /// Total size of the pool's filesystem in bytes.
    pub fn total_bytes(&self) -> Result<u64, StorageError> {
        let stat = self.statvfs()?;
        Ok(stat.blocks() * stat.fragment_size())
    }

    fn statvfs(&self) -> Result<nix::sys::statvfs::Statvfs, StorageError> {
        nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| StorageError::sys("statvfs", &self.root, e))
    }

    /// Shuts the pool down: unmounts the image if this `Pool` mounted it. A pool still in use (a VM
    /// kept running across the daemon's restart holds a drive open) stays mounted: [`StorageError::PoolBusy`].
    pub fn close(self) -> Result<(), StorageError> {
        if !self.mounted_by_us {
            return Ok(());
        }
        match nix::mount::umount(&self.root) {
            Ok(()) => Ok(()),
            Err(nix::Error::EBUSY) => Err(StorageError::PoolBusy {
                mountpoint: self.root,
            }),
            Err(e) => Err(StorageError::sys("umount", &self.root, e)),
        }
    }
}

fn open_image(file: &Path, size: u64, mountpoint: &Path) -> Result<Pool, StorageError> {
    fs::create_dir_all(mountpoint)
        .map_err(|e| StorageError::io("create directory", mountpoint, e))?;
    let root =
        fs::canonicalize(mountpoint).map_err(|e| StorageError::io("resolve", mountpoint, e))?;
    let mountinfo = fs::read_to_string(MOUNTINFO)
        .map_err(|e| StorageError::io("read", Path::new(MOUNTINFO), e))?;
    if is_mounted(&mountinfo, &root) {
        btrfs::ensure_btrfs(&root)?;
        return Ok(Pool {
            root,
            mounted_by_us: false,
        });
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(StorageError::PoolNeedsRoot {
            file: file.to_owned(),
            mountpoint: root,
        });
    }
    if !file.exists() {
        format_image(file, size)?;
    }
    let mut mount = cmd::tool("mount");
    mount
        .args(["-t", "btrfs", "-o", "loop"])
        .arg(file)
        .arg(&root);
    cmd::run(&mut mount, &[0])?;
    let pool = Pool {
        root,
        mounted_by_us: true,
    };
    if let Err(e) = btrfs::ensure_btrfs(&pool.root) {
        let _ = pool.close();
        return Err(e);
    }
    Ok(pool)
}

/// Creates the sparse pool image and formats it. Works on `<file>.tmp` and renames it into place at the
/// end, so an interrupted format never leaves a half-made `file` behind.
fn format_image(file: &Path, size: u64) -> Result<(), StorageError> {
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    if let Some(parent) = file.parent() {
        fs::create_dir_all(parent).map_err(|e| StorageError::io("create directory", parent, e))?;
    }
    let _ = fs::remove_file(&tmp);
    let image = File::create(&tmp).map_err(|e| StorageError::io("create", &tmp, e))?;
    image
        .set_len(size)
        .map_err(|e| StorageError::io("set length of", &tmp, e))?;
    let mut mkfs = cmd::tool("mkfs.btrfs");
    mkfs.args(["-q", "-L", "nexus-pool"]).arg(&tmp);
    cmd::run(&mut mkfs, &[0])?;
    image
        .sync_all()
        .map_err(|e| StorageError::io("sync", &tmp, e))?;
    fs::rename(&tmp, file).map_err(|e| StorageError::io("rename into place", file, e))
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
}
