//! Narrow, in-process btrfs subvolume operations through ioctls.
//!
//! This is the only place in Nexus that talks to btrfs directly. It covers what the storage pool needs:
//! create a subvolume, snapshot one (writable or read-only), read and change the read-only flag, tell
//! whether a directory is a subvolume, list the subvolumes directly under a directory, and delete one.
//!
//! Deletion deliberately avoids `BTRFS_IOC_SNAP_DESTROY` (which needs `CAP_SYS_ADMIN` or the
//! `user_subvol_rm_allowed` mount option): it clears the read-only flag, empties the tree and removes the
//! emptied subvolume with a plain `rmdir`, which the owner may do on kernels >= 4.18.
//!
//! ioctl numbers and argument layouts follow the kernel's uapi header `linux/btrfs.h`.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::{FsError, SubvolumeError};

/// `BTRFS_SUPER_MAGIC` from `linux/magic.h`: the `f_type` statfs reports for btrfs.
pub const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
/// Inode number of the root directory of every btrfs subvolume (`BTRFS_FIRST_FREE_OBJECTID`).
const SUBVOLUME_ROOT_INO: u64 = 256;
/// Longest file name the VFS accepts; the ioctl buffers are larger but unusable beyond it.
const NAME_MAX: usize = 255;

/// The raw ioctl interface, exactly as in `linux/btrfs.h`.
mod sys {
    /// `BTRFS_IOCTL_MAGIC`.
    const BTRFS_IOCTL_MAGIC: u8 = 0x94;
    /// `BTRFS_PATH_NAME_MAX`.
    const BTRFS_PATH_NAME_MAX: usize = 4087;
    /// `BTRFS_SUBVOL_NAME_MAX`.
    const BTRFS_SUBVOL_NAME_MAX: usize = 4039;
    /// `BTRFS_SUBVOL_RDONLY`: flag of `SNAP_CREATE_V2` and of `SUBVOL_GETFLAGS`/`SETFLAGS`.
    pub const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;

    /// `struct btrfs_ioctl_vol_args` (4096 bytes).
    #[repr(C)]
    pub struct VolArgs {
        pub fd: i64,
        pub name: [u8; BTRFS_PATH_NAME_MAX + 1],
    }

    /// `struct btrfs_ioctl_vol_args_v2` (4096 bytes). The first union (`size` plus `qgroup_inherit`, or
    /// `unused[4]`) is kept as four zeroed words: Nexus never inherits qgroups.
    #[repr(C)]
    pub struct VolArgsV2 {
        pub fd: i64,
        pub transid: u64,
        pub flags: u64,
        pub unused: [u64; 4],
        pub name: [u8; BTRFS_SUBVOL_NAME_MAX + 1],
    }

    const _: () = assert!(size_of::<VolArgs>() == 4096);
    const _: () = assert!(size_of::<VolArgsV2>() == 4096);

    impl VolArgs {
        pub fn zeroed() -> Self {
            Self {
                fd: 0,
                name: [0; BTRFS_PATH_NAME_MAX + 1],
            }
        }
    }

    impl VolArgsV2 {
        pub fn zeroed() -> Self {
            Self {
                fd: 0,
                transid: 0,
                flags: 0,
                unused: [0; 4],
                name: [0; BTRFS_SUBVOL_NAME_MAX + 1],
            }
        }
    }

    // BTRFS_IOC_SUBVOL_CREATE = _IOW(BTRFS_IOCTL_MAGIC, 14, struct btrfs_ioctl_vol_args)
    nix::ioctl_write_ptr!(subvol_create, BTRFS_IOCTL_MAGIC, 14, VolArgs);
    // BTRFS_IOC_SNAP_CREATE_V2 = _IOW(BTRFS_IOCTL_MAGIC, 23, struct btrfs_ioctl_vol_args_v2)
    nix::ioctl_write_ptr!(snap_create_v2, BTRFS_IOCTL_MAGIC, 23, VolArgsV2);
    // BTRFS_IOC_SUBVOL_GETFLAGS = _IOR(BTRFS_IOCTL_MAGIC, 25, __u64)
    nix::ioctl_read!(subvol_getflags, BTRFS_IOCTL_MAGIC, 25, u64);
    // BTRFS_IOC_SUBVOL_SETFLAGS = _IOW(BTRFS_IOCTL_MAGIC, 26, __u64)
    nix::ioctl_write_ptr!(subvol_setflags, BTRFS_IOCTL_MAGIC, 26, u64);
}

/// Whether `path` lives on a btrfs filesystem (statfs magic).
pub fn is_btrfs(path: &Path) -> Result<bool, FsError> {
    Ok(fs_type(path)? == BTRFS_SUPER_MAGIC)
}

/// The statfs `f_type` of the filesystem holding `path`.
pub fn fs_type(path: &Path) -> Result<i64, FsError> {
    let stat = nix::sys::statfs::statfs(path).map_err(|e| FsError::sys("statfs", path, e))?;
    // f_type is a signed long on x86_64 but a magic number, not a quantity.
    #[allow(clippy::useless_conversion)]
    Ok(i64::from(stat.filesystem_type().0))
}

/// Creates an empty subvolume at `path` (its parent must exist, `path` must not).
pub fn create_subvolume(path: &Path) -> Result<(), SubvolumeError> {
    let (parent, name) = split(path)?;
    let dir = open_dir(parent)?;
    let mut args = sys::VolArgs::zeroed();
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `dir` is an open directory fd that outlives the call; `args` is a fully initialised
    // `btrfs_ioctl_vol_args` whose name is NUL-terminated (name.len() <= 255 < buffer length).
    unsafe { sys::subvol_create(dir.as_raw_fd(), &args) }
        .map_err(|e| FsError::sys("BTRFS_IOC_SUBVOL_CREATE", path, e))?;
    Ok(())
}

/// Snapshots the subvolume `src` to the new path `dst`, read-only if asked.
///
/// The snapshot appears atomically under its final name, so it doubles as a crash-safe "publish" step.
pub fn snapshot(src: &Path, dst: &Path, readonly: bool) -> Result<(), SubvolumeError> {
    let (parent, name) = split(dst)?;
    let source = open_dir(src)?;
    let dir = open_dir(parent)?;
    let mut args = sys::VolArgsV2::zeroed();
    args.fd = i64::from(source.as_raw_fd());
    args.flags = if readonly {
        sys::BTRFS_SUBVOL_RDONLY
    } else {
        0
    };
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: both fds are open directories that outlive the call; `args` is a fully initialised
    // `btrfs_ioctl_vol_args_v2` with only documented flags set and a NUL-terminated name.
    unsafe { sys::snap_create_v2(dir.as_raw_fd(), &args) }
        .map_err(|e| FsError::sys("BTRFS_IOC_SNAP_CREATE_V2", dst, e))?;
    Ok(())
}

/// Whether the subvolume at `path` is read-only.
pub fn is_readonly(path: &Path) -> Result<bool, FsError> {
    let dir = open_dir(path)?;
    let mut flags = 0u64;
    // SAFETY: `dir` is an open directory fd that outlives the call; the kernel writes one u64 to `flags`.
    unsafe { sys::subvol_getflags(dir.as_raw_fd(), &mut flags) }
        .map_err(|e| FsError::sys("BTRFS_IOC_SUBVOL_GETFLAGS", path, e))?;
    Ok(flags & sys::BTRFS_SUBVOL_RDONLY != 0)
}

/// Makes the subvolume at `path` read-only or writable (the owner may do this without privileges).
pub fn set_readonly(path: &Path, readonly: bool) -> Result<(), FsError> {
    let dir = open_dir(path)?;
    let flags = if readonly {
        sys::BTRFS_SUBVOL_RDONLY
    } else {
        0
    };
    // SAFETY: `dir` is an open directory fd that outlives the call; the kernel reads one u64 from `flags`.
    unsafe { sys::subvol_setflags(dir.as_raw_fd(), &flags) }
        .map_err(|e| FsError::sys("BTRFS_IOC_SUBVOL_SETFLAGS", path, e))?;
    Ok(())
}

/// Whether `path` is the root of a btrfs subvolume (a directory with inode 256 on btrfs).
pub fn is_subvolume(path: &Path) -> Result<bool, FsError> {
    let meta = fs::symlink_metadata(path).map_err(FsError::at("stat", path))?;
    Ok(meta.is_dir() && meta.ino() == SUBVOLUME_ROOT_INO && is_btrfs(path)?)
}

/// Names of the subvolumes directly under `dir`, sorted. Other entries are ignored.
pub fn list_subvolumes(dir: &Path) -> Result<Vec<String>, FsError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(FsError::at("read directory", dir))? {
        let entry = entry.map_err(FsError::at("read directory", dir))?;
        let path = entry.path();
        if is_subvolume(&path)? {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Deletes the subvolume at `path` without privileges: clear read-only, empty it (nested subvolumes
/// included), `rmdir` it.
pub fn delete_subvolume(path: &Path) -> Result<(), SubvolumeError> {
    if !is_subvolume(path)? {
        return Err(SubvolumeError::NotSubvolume {
            path: path.to_owned(),
        });
    }
    if is_readonly(path)? {
        set_readonly(path, false)?;
    }
    remove_contents(path)?;
    Ok(fs::remove_dir(path).map_err(FsError::at("rmdir subvolume", path))?)
}

/// Removes whatever is at `path`: a subvolume (as [`delete_subvolume`]), a directory tree that may hold
/// subvolumes, or a file. Symlinks are removed, never followed.
pub fn remove_tree(path: &Path) -> Result<(), SubvolumeError> {
    let meta = fs::symlink_metadata(path).map_err(FsError::at("stat", path))?;
    if !meta.is_dir() {
        Ok(fs::remove_file(path).map_err(FsError::at("remove file", path))?)
    } else if is_subvolume(path)? {
        delete_subvolume(path)
    } else {
        remove_contents(path)?;
        Ok(fs::remove_dir(path).map_err(FsError::at("remove directory", path))?)
    }
}

/// Removes everything inside `dir`, deleting nested subvolumes as subvolumes.
fn remove_contents(dir: &Path) -> Result<(), SubvolumeError> {
    make_owner_writable(dir)?;
    for entry in fs::read_dir(dir).map_err(FsError::at("read directory", dir))? {
        let entry = entry.map_err(FsError::at("read directory", dir))?;
        remove_tree(&entry.path())?;
    }
    Ok(())
}

/// A directory without owner write permission cannot be emptied by a non-root owner; grant it first.
fn make_owner_writable(dir: &Path) -> Result<(), FsError> {
    let meta = fs::symlink_metadata(dir).map_err(FsError::at("stat", dir))?;
    let mode = meta.permissions().mode();
    if mode & 0o300 != 0o300 {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o700))
            .map_err(FsError::at("chmod", dir))?;
    }
    Ok(())
}

/// Opens a directory for use as an ioctl target.
fn open_dir(path: &Path) -> Result<File, FsError> {
    File::options()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY)
        .open(path)
        .map_err(FsError::at("open directory", path))
}

/// Splits `path` into its parent directory and a name the btrfs ioctls accept.
fn split(path: &Path) -> Result<(&Path, &OsStr), SubvolumeError> {
    let invalid = |reason| SubvolumeError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    let name = path
        .file_name()
        .ok_or_else(|| invalid("has no final component"))?;
    if name.len() > NAME_MAX {
        return Err(invalid("final component is longer than 255 bytes"));
    }
    if name.as_bytes().contains(&0) {
        return Err(invalid("contains a NUL byte"));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((parent, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rejects_a_path_without_a_name() {
        assert!(matches!(
            split(Path::new("/")),
            Err(SubvolumeError::InvalidPath { .. })
        ));
    }

    #[test]
    fn split_rejects_overlong_names() {
        let long = "a".repeat(256);
        assert!(matches!(
            split(Path::new(&long)),
            Err(SubvolumeError::InvalidPath { .. })
        ));
    }

    #[test]
    fn split_uses_the_current_directory_for_bare_names() {
        let (parent, name) = split(Path::new("sub")).unwrap();
        assert_eq!((parent, name), (Path::new("."), OsStr::new("sub")));
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_header() {
        // _IOW(0x94, 14, 4096) and _IOW(0x94, 23, 4096), _IOR(0x94, 25, 8), _IOW(0x94, 26, 8).
        assert_eq!(nix::request_code_write!(0x94, 14, 4096), 0x5000_940e);
        assert_eq!(nix::request_code_write!(0x94, 23, 4096), 0x5000_9417);
        assert_eq!(nix::request_code_read!(0x94, 25, 8), 0x8008_9419);
        assert_eq!(nix::request_code_write!(0x94, 26, 8), 0x4008_941a);
    }
}
