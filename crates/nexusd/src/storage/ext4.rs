//! ext4 image files: build one from a directory, recognise one, grow one, hash one.
//!
//! The work is done by e2fsprogs run as child processes (`mke2fs`, `e2fsck`, `resize2fs`) through
//! the one command runner: exit codes checked, stderr carried in the error.
//!
//! # Ownership of files in images built from a directory
//!
//! A guest needs its system files owned by root, not by whoever ran the build on the host.
//! `mke2fs -d` copies each file's uid/gid as `stat` reports it, and `-E root_owner` only sets the owner
//! of the image's root directory (verified with e2fsprogs 1.47: the files below it keep the host uid).
//! So Nexus does this:
//! - as root: `mke2fs -d` keeps ownership exactly as in the directory (a rootfs unpacked as root is
//!   already root-owned where it should be, and keeps its other owners such as `_apt` or `www-data`);
//!   the root directory is `0:0` (`-E root_owner=0:0`).
//! - not as root: `mke2fs` runs inside a user namespace that maps the calling user to root
//!   (`unshare --map-root-user`), so every file the caller owns lands in the image owned by `0:0`; files
//!   owned by other host users appear as 65534 (`nobody`), which is what such a user could not map
//!   anyway. Plus `-E root_owner=0:0`. Without unprivileged user namespaces the build fails with the
//!   `unshare` error rather than silently producing host-owned files.

use std::fs::{self, File};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use sha2::{Digest, Sha256};

use super::{FsError, GrowError, ImportBounds, ImportError, SizeError, out_of_space_after};
use crate::command;

/// ext2/3/4 superblock magic, little-endian at byte 1080 of the image (superblock at 1024, field 0x38).
pub const EXT4_MAGIC: u16 = 0xEF53;
const MAGIC_OFFSET: u64 = 1024 + 0x38;
/// ext4 block size Nexus builds with; sizes are whole multiples of it.
pub const BLOCK_SIZE: u64 = 4096;
/// The smallest image [`size_for_usage`] proposes.
pub const MIN_IMAGE_SIZE: u64 = 64 << 20;
/// Fixed headroom on top of the content: journal, metadata, reserved blocks, some free space.
const HEADROOM: u64 = 32 << 20;
/// Bytes of inode table per inode (mke2fs's default inode size).
const INODE_SIZE: u64 = 256;
/// mke2fs's default bytes-per-inode ratio; a directory with more files than that allows gets `-N`.
const BYTES_PER_INODE: u64 = 16384;
/// Read/write chunk for hashing and copying.
const CHUNK: usize = 1 << 20;

/// Whether `path` is a regular file that starts with an ext2/3/4 superblock (all mountable as ext4).
/// Reads two bytes, never the whole file.
pub fn is_ext4(path: &Path) -> Result<bool, FsError> {
    let file = open_nonblocking(path).map_err(FsError::at("open", path))?;
    let meta = file.metadata().map_err(FsError::at("stat", path))?;
    if !meta.is_file() {
        return Ok(false);
    }
    let mut magic = [0u8; 2];
    match file.read_exact_at(&mut magic, MAGIC_OFFSET) {
        Ok(()) => Ok(u16::from_le_bytes(magic) == EXT4_MAGIC),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(FsError::io("read superblock of", path, e)),
    }
}

/// What a directory tree needs in an ext4 filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirUsage {
    /// Data bytes as allocated on the host (`st_blocks`, so holes of sparse files cost nothing),
    /// each file and directory rounded up to whole blocks: what the image must hold.
    pub bytes: u64,
    /// Apparent bytes (`st_size` of regular files): what a reader of the tree sees.
    pub apparent: u64,
    /// Files, directories, links and special files, the root included.
    pub inodes: u64,
}

const RESOLVE_BENEATH: rustix::fs::ResolveFlags = rustix::fs::ResolveFlags::BENEATH
    .union(rustix::fs::ResolveFlags::NO_SYMLINKS)
    .union(rustix::fs::ResolveFlags::NO_MAGICLINKS);

/// Walks `dir` (symlinks are not followed) and sums what its content needs.
fn dir_usage(dir: &Path) -> Result<DirUsage, ImportError> {
    let fd = open_source_dir(dir, dir)?;
    scan_dir(&fd, dir, &ImportBounds::unbounded())
}

/// Walks the directory open at `top` (named `shown` in messages) through descriptors only:
/// every subdirectory is opened beneath `top` without following symlinks, non-blocking, and
/// nothing else is opened (entries are `fstatat`ed), so a FIFO or device in the tree or swapped
/// in cannot block it. Stops with [`ImportError::TooBig`] as soon as a cap of `bounds` is
/// passed, and when `bounds` says to stop. Linear in the number of entries.
pub fn scan_dir(
    top: &impl AsFd,
    shown: &Path,
    bounds: &ImportBounds,
) -> Result<DirUsage, ImportError> {
    let mut usage = DirUsage {
        bytes: BLOCK_SIZE,
        apparent: 0,
        inodes: 1,
    };
    let mut pending = vec![PathBuf::from(".")];
    while let Some(rel) = pending.pop() {
        bounds.check()?;
        let here = shown.join(&rel);
        let dir = openat2_retry(
            top,
            &rel,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        )
        .map_err(|e| ImportError::unreadable("open directory", &here, e.into()))?;
        let entries = rustix::fs::Dir::read_from(&dir)
            .map_err(|e| ImportError::unreadable("read directory", &here, e.into()))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| ImportError::unreadable("read directory", &here, e.into()))?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let st = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Removed since it was listed: not in the image either.
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(ImportError::unreadable("stat an entry of", &here, e.into())),
            };
            usage.inodes += 1;
            // `st_blocks` counts 512-byte units whatever the file system's block size.
            #[allow(clippy::unnecessary_cast)]
            let allocated = (st.st_blocks as u64).saturating_mul(512);
            #[allow(clippy::unnecessary_cast)]
            let size = st.st_size as u64;
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    usage.bytes += allocated.max(BLOCK_SIZE).next_multiple_of(BLOCK_SIZE);
                    pending.push(rel.join(std::ffi::OsStr::from_bytes(name.to_bytes())));
                }
                FileType::RegularFile => {
                    usage.bytes += allocated.next_multiple_of(BLOCK_SIZE);
                    usage.apparent = usage.apparent.saturating_add(size);
                }
                // Short symlinks live inside the inode; longer ones take a block.
                FileType::Symlink if size > 59 => usage.bytes += BLOCK_SIZE,
                _ => {}
            }
            let too_big = |key, what: String, limit| ImportError::TooBig { key, what, limit };
            if usage.inodes > bounds.max_entries {
                return Err(too_big(
                    "import_max_entries",
                    format!(
                        "{} has more than {} entries",
                        shown.display(),
                        bounds.max_entries
                    ),
                    bounds.max_entries,
                ));
            }
            if usage.bytes > bounds.max_bytes {
                return Err(too_big(
                    "import_max_bytes",
                    format!(
                        "{} holds more than {} bytes",
                        shown.display(),
                        bounds.max_bytes
                    ),
                    bounds.max_bytes,
                ));
            }
            if usage.apparent > bounds.max_bytes {
                return Err(too_big(
                    "import_max_bytes",
                    format!(
                        "the files of {} (sparse or not) add up to more than {} bytes",
                        shown.display(),
                        bounds.max_bytes
                    ),
                    bounds.max_bytes,
                ));
            }
            if usage.inodes.is_multiple_of(4096) {
                bounds.check()?;
            }
        }
    }
    Ok(usage)
}

/// Opens the source directory `dir` (named `shown` in messages) for [`scan_dir`]: read-only,
/// non-blocking, refusing anything but a directory.
pub fn open_source_dir(dir: &Path, shown: &Path) -> Result<OwnedFd, ImportError> {
    rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        ImportError::open_source(shown, e.into(), |path| ImportError::NotADirectory { path })
    })
}

/// `openat2` beneath `top` (no symlinks), retried on `EAGAIN` (a concurrent rename).
fn openat2_retry(top: &impl AsFd, rel: &Path, flags: OFlags) -> Result<OwnedFd, rustix::io::Errno> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(top, rel, flags, Mode::empty(), RESOLVE_BENEATH) {
            Err(rustix::io::Errno::AGAIN) if tries < 8 => tries += 1,
            other => return other,
        }
    }
}

/// Inodes to reserve for `count` entries: room for the guest to create more files.
fn inodes_for(count: u64) -> u64 {
    count + count / 2 + 1024
}

/// A filesystem size for content measured by [`scan_dir`]: data and inode tables plus a
/// quarter, plus 32 MiB of headroom, at least [`MIN_IMAGE_SIZE`], rounded up to a MiB.
pub fn size_for_usage(usage: DirUsage) -> u64 {
    let content = usage.bytes + inodes_for(usage.inodes) * INODE_SIZE;
    let size = (content + content / 4 + HEADROOM).max(MIN_IMAGE_SIZE);
    size.div_ceil(1 << 20) << 20
}

/// Builds the ext4 image `out` (which must not exist) of `size` bytes from the content of `dir`, with
/// `mke2fs -d`. See the module documentation for file ownership. On failure `out` is removed.
pub fn build_from_dir(dir: &Path, out: &Path, size: u64) -> Result<(), ImportError> {
    let usage = dir_usage(dir)?;
    build_from_dir_bounded(dir, out, size, usage.inodes, &ImportBounds::unbounded())
}

/// [`build_from_dir`] for a tree already measured (`entries` from [`scan_dir`]), under `bounds`:
/// `mke2fs` is killed and `out` removed when the client goes away or the deadline passes.
pub fn build_from_dir_bounded(
    dir: &Path,
    out: &Path,
    size: u64,
    entries: u64,
    bounds: &ImportBounds,
) -> Result<(), ImportError> {
    check_size(size)?;
    let inodes = inodes_for(entries).max(size / BYTES_PER_INODE);
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(FsError::at("create", out))?;
    let result = file
        .set_len(size)
        .map_err(|e| FsError::io("set length of", out, e).into())
        .and_then(|()| {
            let mut mke2fs = if nix::unistd::geteuid().is_root() {
                command::tool("mke2fs")
            } else {
                let mut unshare = command::tool("unshare");
                unshare
                    .arg("--map-root-user")
                    .arg(command::program("mke2fs"));
                unshare
            };
            mke2fs
                .args([
                    "-q",
                    "-F",
                    "-t",
                    "ext4",
                    "-b",
                    "4096",
                    "-E",
                    "root_owner=0:0",
                    "-N",
                ])
                .arg(inodes.to_string())
                // From inside `dir`: `dir` may be a `/proc/self/fd/N` path, which names the
                // checked directory in this process and, before exec, in the child.
                .arg("-d")
                .arg(".")
                .arg(std::path::absolute(out).unwrap_or_else(|_| out.to_owned()))
                .current_dir(dir);
            command::run_bounded(&mut mke2fs, &[0], &|| bounds.check()).map_err(|e| match e {
                ImportError::Tool(e) => out_of_space_after("build an image in", parent_of(out))
                    .map_or(e.into(), Into::into),
                other => other,
            })
        });
    if result.is_err() {
        let _ = fs::remove_file(out);
    }
    result
}

/// Grows the ext4 image at `path` to `new_size` bytes: sparse extension, `e2fsck -fy` (exit 0 or 1:
/// clean or corrected), `resize2fs`. Growing to the current size is a no-op; shrinking is an error.
/// The image must not be in use by a VM.
pub fn grow(path: &Path, new_size: u64) -> Result<(), GrowError> {
    check_size(new_size)?;
    let file = File::options()
        .write(true)
        .open(path)
        .map_err(FsError::at("open", path))?;
    let current = file.metadata().map_err(FsError::at("stat", path))?.len();
    if new_size < current {
        return Err(SizeError::TooSmall {
            requested: new_size,
            current,
        }
        .into());
    }
    if new_size == current {
        return Ok(());
    }
    file.set_len(new_size)
        .map_err(FsError::at("set length of", path))?;
    let result = command::run(command::tool("e2fsck").arg("-fy").arg(path), &[0, 1])
        .and_then(|_| command::run(command::tool("resize2fs").arg(path), &[0]))
        .map_err(|e| out_of_space_after("grow", parent_of(path)).map_or(e.into(), GrowError::Fs));
    if result.is_err() {
        // The filesystem still has its old size, so the old length is safe to restore.
        let _ = file.set_len(current);
    }
    result.map(drop)
}

pub(crate) fn check_size(size: u64) -> Result<(), SizeError> {
    if size == 0 || !size.is_multiple_of(BLOCK_SIZE) {
        return Err(SizeError::Unaligned { size });
    }
    Ok(())
}

/// The sha256 of the file at `path`, as lowercase hex, read in 1 MiB chunks.
pub fn sha256_file(path: &Path) -> Result<String, FsError> {
    let mut file = File::open(path).map_err(FsError::at("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).map_err(FsError::at("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Copies `src` to the new file `dst`, hashing while streaming, until `bounds` says to stop
/// (checked every chunk). All-zero chunks become holes, so a sparse image stays sparse. The
/// source is opened non-blocking and must be a regular file on the opened descriptor. Returns
/// the length and the sha256 (hex) of the content.
pub fn copy_with_sha256(
    src: &Path,
    dst: &Path,
    bounds: &ImportBounds,
) -> Result<(u64, String), ImportError> {
    let mut input = open_nonblocking(src)
        .map_err(|e| ImportError::open_source(src, e, |path| ImportError::NotExt4 { path }))?;
    if !input
        .metadata()
        .map_err(|e| ImportError::unreadable("stat", src, e))?
        .is_file()
    {
        return Err(ImportError::NotExt4 {
            path: src.to_owned(),
        });
    }
    let mut output = File::options()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(FsError::at("create", dst))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0u64;
    loop {
        bounds.check()?;
        let n =
            read_full(&mut input, &mut buf).map_err(|e| ImportError::unreadable("read", src, e))?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        hasher.update(chunk);
        if chunk.iter().all(|&b| b == 0) {
            output
                .seek(SeekFrom::Current(n as i64))
                .map_err(FsError::at("seek in", dst))?;
        } else {
            output.write_all(chunk).map_err(FsError::at("write", dst))?;
        }
        len += n as u64;
    }
    output
        .set_len(len)
        .map_err(FsError::at("set length of", dst))?;
    output.sync_all().map_err(FsError::at("sync", dst))?;
    Ok((len, hex(&hasher.finalize())))
}

/// Opens `path` for reading without blocking on a FIFO or device that may have been swapped in
/// (`O_NONBLOCK`); callers check the type on the returned descriptor. For a regular file the
/// flag changes nothing.
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    File::options()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
}

/// Fills `buf` as far as the input allows; short only at end of file.
fn read_full(input: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The directory holding `file` (`.` for a bare name).
fn parent_of(file: &Path) -> &Path {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_ext4_is_false_for_a_short_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short");
        fs::write(&path, b"tiny").unwrap();
        assert!(!is_ext4(&path).unwrap());
    }

    #[test]
    fn is_ext4_is_true_for_the_magic_at_offset_1080() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake");
        let mut bytes = vec![0u8; 2048];
        bytes[1080..1082].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        fs::write(&path, bytes).unwrap();
        assert!(is_ext4(&path).unwrap());
    }

    #[test]
    fn size_for_an_empty_tree_is_the_minimum() {
        assert_eq!(
            size_for_usage(DirUsage {
                bytes: 4096,
                apparent: 0,
                inodes: 1
            }),
            MIN_IMAGE_SIZE
        );
    }

    #[test]
    fn size_grows_with_content_and_is_whole_mebibytes() {
        let size = size_for_usage(DirUsage {
            bytes: 1 << 30,
            apparent: 1 << 30,
            inodes: 10_000,
        });
        assert!(
            size > (1 << 30) + (1 << 30) / 4 && size.is_multiple_of(1 << 20),
            "{size}"
        );
    }

    #[test]
    fn scan_counts_allocated_not_apparent_bytes_and_stops_at_the_caps() {
        let dir = tempfile::tempdir().unwrap();
        let sparse = File::create(dir.path().join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/data"), vec![1u8; 10_000]).unwrap();
        nix::unistd::mkfifo(&dir.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();

        let usage = dir_usage(dir.path()).unwrap();

        assert_eq!((usage.inodes, usage.apparent), (5, (1 << 30) + 10_000));
        assert!(usage.bytes < 1 << 20, "{usage:?}");
        let fd = File::open(dir.path()).unwrap();
        let capped = |entries, bytes| {
            let mut b = ImportBounds::unbounded();
            (b.max_entries, b.max_bytes) = (entries, bytes);
            match scan_dir(&fd, dir.path(), &b) {
                Err(ImportError::TooBig { key, .. }) => key,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(capped(3, u64::MAX), "import_max_entries");
        assert_eq!(capped(u64::MAX, 512 << 20), "import_max_bytes");
    }

    #[test]
    fn scan_stops_when_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let bounds = ImportBounds::unbounded();
        bounds.cancel.cancel();
        let fd = File::open(dir.path()).unwrap();
        assert!(matches!(
            scan_dir(&fd, dir.path(), &bounds),
            Err(ImportError::Cancelled)
        ));
    }

    #[test]
    fn is_ext4_does_not_block_on_a_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(!is_ext4(&fifo).unwrap());
    }

    #[test]
    fn check_size_rejects_unaligned_sizes() {
        assert!(matches!(
            check_size(4097),
            Err(SizeError::Unaligned { size: 4097 })
        ));
    }

    #[test]
    fn copy_keeps_content_hash_and_length() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let mut content = vec![0u8; 3 * CHUNK + 5];
        content[CHUNK + 7] = 1;
        fs::write(&src, &content).unwrap();
        let (len, sha) = copy_with_sha256(&src, &dst, &ImportBounds::unbounded()).unwrap();
        assert_eq!(
            (len, sha, fs::read(&dst).unwrap()),
            (
                content.len() as u64,
                hex(&Sha256::digest(&content)),
                content
            )
        );
    }

    #[test]
    fn sha256_of_a_known_string() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
