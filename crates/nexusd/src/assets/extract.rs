//! The `extract` stage: a tar archive (compressed or not) or a Debian package's `data.tar.*`,
//! parsed by the `tar` and `ar` crates, unpacked under a fresh directory by rules of our own.
//!
//! The whole archive is refused, before anything is used, when one entry is unsafe: a path that
//! is absolute or has a `..` component; a symlink whose target is absolute or leads out of the
//! tree (checked on its words, then again by the kernel with `openat2(RESOLVE_BENEATH)` once the
//! tree is complete, which also catches chains of links); a hard link to anything but a regular
//! file unpacked before it; an entry whose path runs through a symlink of the archive; device
//! nodes, FIFOs and sparse files; the same non-directory path twice. Entries and bytes are
//! bounded, and so is the decompressed stream. Files are created `O_EXCL|O_NOFOLLOW`, owned by
//! nexusd, without set-id bits, and hashed as they are written.
//!
//! [`extract_rootfs`] unpacks a root filesystem for an image by the same rules with three
//! differences a system tree needs: absolute symlinks are kept (they point into the guest's own
//! root once it boots; on the host nothing follows them: no entry may pass through a symlink,
//! files are created `O_NOFOLLOW`, and `mke2fs -d` copies links as links), owners and modes
//! (set-id bits included) are kept, applied to the descriptor or with `AT_SYMLINK_NOFOLLOW`, and
//! device nodes and FIFOs are skipped rather than refused (the guest mounts devtmpfs). The
//! caller unpacks into a directory only root can reach, so set-id files are never usable on the
//! host.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use nexus_lib::api::pipeline::{ArchiveFormat, Compression};
use tokio_util::sync::CancellationToken;

use super::decompress::{self, CountingReader, DecompressError, Format};
use super::hashio::{self, FileError, HashWriter, file_err};
use super::progress::Progress;

/// Longest path inside an archive.
const MAX_PATH: usize = 4096;
/// Slack for tar headers and padding on top of the byte bound, per entry.
const TAR_OVERHEAD_PER_ENTRY: u64 = 1536;

/// Why an archive was refused or could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("unsafe archive {archive:?}: entry {entry:?} {reason}")]
    Unsafe {
        archive: String,
        entry: String,
        reason: String,
    },
    #[error("{archive:?} has more than {limit} entries")]
    TooManyEntries { archive: String, limit: u64 },
    #[error(
        "{archive:?} unpacks to more than the bound of {limit} bytes (a decompression bomb, or raise `asset_max_unpacked_bytes`)"
    )]
    TooBig { archive: String, limit: u64 },
    #[error("{archive:?} is not a usable Debian package: {reason}")]
    NotDeb { archive: String, reason: String },
    #[error("{archive:?} is corrupt")]
    Corrupt {
        archive: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Decompress(#[from] DecompressError),
    #[error(transparent)]
    Io(#[from] FileError),
    #[error("cancelled")]
    Cancelled,
}

/// Bounds of one extraction.
#[derive(Debug, Clone, Copy)]
pub struct ExtractBounds {
    pub max_entries: u64,
    pub max_bytes: u64,
}

/// A regular file of an unpacked tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeFile {
    pub sha256: String,
    pub size: u64,
    pub executable: bool,
}

/// An unpacked tree: its root and its regular files (hard links included) by relative path.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    pub root: PathBuf,
    pub files: BTreeMap<String, TreeFile>,
}

impl Tree {
    /// The one file matching `pattern` (a glob on the relative path).
    pub fn find(&self, pattern: &str) -> Result<(&str, &TreeFile), String> {
        let glob =
            glob::Pattern::new(pattern).map_err(|e| format!("bad pattern {pattern:?}: {e}"))?;
        let options = glob::MatchOptions {
            require_literal_separator: true,
            ..Default::default()
        };
        let matched: Vec<_> = self
            .files
            .iter()
            .filter(|(path, _)| glob.matches_with(path, options))
            .collect();
        match matched.as_slice() {
            [(path, file)] => Ok((path.as_str(), file)),
            [] => Err(format!("no file of the tree matches {pattern:?}")),
            many => Err(format!(
                "{} files match {pattern:?} ({}, ...): make the pattern match one",
                many.len(),
                many[0].0
            )),
        }
    }
}

/// What kind of entry a path was, to refuse duplicates and paths through symlinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Dir,
    File,
    Symlink,
}

/// What [`extract_rootfs`] did beyond the tree itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RootfsStats {
    pub entries: u64,
    pub bytes: u64,
    /// Device nodes and FIFOs left out.
    pub skipped: u64,
}

/// The extra state of a root filesystem extraction.
#[derive(Debug, Default)]
struct RootfsMode {
    /// Owners are applied only as root (otherwise `mke2fs` maps the caller to root).
    as_root: bool,
    /// Directories with their mode and owner, applied once everything inside is written.
    dirs: Vec<(PathBuf, u32, u64, u64)>,
    skipped: u64,
}

/// Extraction of one archive into `root`.
struct Unpacker<'a> {
    rootfs: Option<RootfsMode>,
    archive: &'a str,
    root: &'a Path,
    members: Vec<glob::Pattern>,
    bounds: ExtractBounds,
    seen: HashMap<String, Seen>,
    symlinks: Vec<String>,
    tree: Tree,
    entries: u64,
    bytes: u64,
}

/// Unpacks `src` into the new directory `root`. Blocking.
#[allow(clippy::too_many_arguments)]
pub fn extract(
    src: &Path,
    archive: &str,
    format: ArchiveFormat,
    compression: Compression,
    root: &Path,
    members: &[String],
    bounds: ExtractBounds,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Tree, ExtractError> {
    let src = Source {
        path: src,
        archive,
        format,
        compression,
    };
    unpack(&src, root, members, bounds, None, progress, cancel).map(|(tree, _)| tree)
}

/// Unpacks the root filesystem tarball `src` (any compression) into the new directory `root`,
/// keeping owners, modes and absolute symlinks (see the module's header). Blocking.
pub fn extract_rootfs(
    src: &Path,
    archive: &str,
    root: &Path,
    bounds: ExtractBounds,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<RootfsStats, ExtractError> {
    let source = Source {
        path: src,
        archive,
        format: ArchiveFormat::Tar,
        compression: Compression::Auto,
    };
    let mode = RootfsMode {
        as_root: rustix::process::geteuid().is_root(),
        ..RootfsMode::default()
    };
    let (_, unpacker) = unpack(&source, root, &[], bounds, Some(mode), progress, cancel)?;
    Ok(unpacker)
}

/// The archive an extraction reads.
struct Source<'a> {
    path: &'a Path,
    archive: &'a str,
    format: ArchiveFormat,
    compression: Compression,
}

fn unpack(
    source: &Source<'_>,
    root: &Path,
    members: &[String],
    bounds: ExtractBounds,
    rootfs: Option<RootfsMode>,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<(Tree, RootfsStats), ExtractError> {
    let Source {
        path: src,
        archive,
        format,
        compression,
    } = *source;
    let members = members
        .iter()
        .map(|m| glob::Pattern::new(m))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ExtractError::Unsafe {
            archive: archive.into(),
            entry: String::new(),
            reason: format!("has a bad member pattern: {e}"),
        })?;
    fs::create_dir(root).map_err(file_err("create", root))?;
    let file = File::open(src).map_err(file_err("open", src))?;
    let total_in = file.metadata().ok().map(|m| m.len());
    let counted = CountingReader::new(file);
    let read = counted.count.clone();
    let tick = move || progress.bytes(read.load(std::sync::atomic::Ordering::Relaxed), total_in);
    let mut unpacker = Unpacker {
        rootfs,
        archive,
        root,
        members,
        bounds,
        seen: HashMap::new(),
        symlinks: Vec::new(),
        tree: Tree {
            root: root.to_owned(),
            files: BTreeMap::new(),
        },
        entries: 0,
        bytes: 0,
    };
    match format {
        ArchiveFormat::Tar => {
            let mut input = BufReader::with_capacity(hashio::BUF, counted);
            let format = decompress::resolve(compression, &mut input, archive)?;
            unpacker.tar(format, input, cancel, &tick)?;
        }
        ArchiveFormat::Deb => {
            let mut ar = ar::Archive::new(counted);
            let mut checked_version = false;
            loop {
                let Some(entry) = ar.next_entry() else {
                    return Err(not_deb(archive, "it has no data.tar member"));
                };
                let entry = entry.map_err(|source| ExtractError::Corrupt {
                    archive: archive.into(),
                    source,
                })?;
                let name = String::from_utf8_lossy(entry.header().identifier()).into_owned();
                if !checked_version {
                    check_debian_binary(archive, &name, entry)?;
                    checked_version = true;
                    continue;
                }
                let wanted = match name.as_str() {
                    "data.tar" => Compression::None,
                    "data.tar.gz" => Compression::Gz,
                    "data.tar.xz" => Compression::Xz,
                    "data.tar.zst" => Compression::Zstd,
                    n if n.starts_with("data.tar") => {
                        return Err(not_deb(archive, &format!("{n} is not supported")));
                    }
                    _ => continue,
                };
                let mut input = BufReader::with_capacity(hashio::BUF, entry);
                let format = decompress::resolve(wanted, &mut input, archive)?;
                unpacker.tar(format, input, cancel, &tick)?;
                break;
            }
        }
    }
    let stats = match unpacker.rootfs.take() {
        // Absolute links point into the guest's root; nothing on the host follows them.
        Some(mode) => finish_rootfs(&unpacker, mode)?,
        None => {
            unpacker.check_symlinks_stay_inside()?;
            RootfsStats::default()
        }
    };
    Ok((unpacker.tree, stats))
}

/// Applies the directories' modes and owners, deepest first (so a read-only directory does not
/// stop what is written inside it).
fn finish_rootfs(
    unpacker: &Unpacker<'_>,
    mut mode: RootfsMode,
) -> Result<RootfsStats, ExtractError> {
    mode.dirs.sort_by(|a, b| b.0.cmp(&a.0));
    for (dir, perms, uid, gid) in &mode.dirs {
        if mode.as_root {
            set_owner(dir, *uid, *gid)?;
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(*perms))
            .map_err(file_err("chmod", dir))?;
    }
    Ok(RootfsStats {
        entries: unpacker.entries,
        bytes: unpacker.bytes,
        skipped: mode.skipped,
    })
}

/// `lchown`: the owner of `path` itself, never of what a symlink points to.
fn set_owner(path: &Path, uid: u64, gid: u64) -> Result<(), ExtractError> {
    let id = |n: u64| u32::try_from(n).ok();
    let (Some(uid), Some(gid)) = (id(uid), id(gid)) else {
        return Ok(());
    };
    rustix::fs::chownat(
        rustix::fs::CWD,
        path,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| file_err("chown", path)(e.into()))?;
    Ok(())
}

fn not_deb(archive: &str, reason: &str) -> ExtractError {
    ExtractError::NotDeb {
        archive: archive.into(),
        reason: reason.into(),
    }
}

/// A `.deb` starts with `debian-binary` holding `2.x`.
fn check_debian_binary(archive: &str, name: &str, entry: impl Read) -> Result<(), ExtractError> {
    if name != "debian-binary" {
        return Err(not_deb(archive, "its first member is not debian-binary"));
    }
    let mut version = String::new();
    entry
        .take(64)
        .read_to_string(&mut version)
        .map_err(|source| ExtractError::Corrupt {
            archive: archive.into(),
            source,
        })?;
    if !version.starts_with("2.") {
        return Err(not_deb(
            archive,
            &format!("format {:?} is not 2.x", version.trim()),
        ));
    }
    Ok(())
}

/// A path of the archive as `a/b/c`: relative, without `.` or `..`; `None` for the root itself.
fn clean_path(raw: &Path) -> Result<Option<String>, String> {
    let text = raw.to_string_lossy();
    if text.len() > MAX_PATH {
        return Err(format!("has a path longer than {MAX_PATH} bytes"));
    }
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(part) => parts.push(
                part.to_str()
                    .ok_or("has a path that is not UTF-8")?
                    .to_owned(),
            ),
            Component::CurDir => {}
            Component::ParentDir => return Err("has a `..` component".into()),
            Component::RootDir | Component::Prefix(_) => return Err("has an absolute path".into()),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// Where a relative symlink target leads, lexically, from the link at `link` (`a/b/c`); an
/// error when it leaves the tree.
fn resolve_link(link: &str, target: &Path) -> Result<String, String> {
    if target.as_os_str().is_empty() {
        return Err("is a symlink with an empty target".into());
    }
    if target.is_absolute() {
        return Err(format!("is an absolute symlink (to {})", target.display()));
    }
    let mut at: Vec<&str> = link.split('/').collect();
    at.pop();
    for c in target.components() {
        match c {
            Component::Normal(part) => at.push(part.to_str().ok_or("has a non-UTF-8 link target")?),
            Component::CurDir => {}
            Component::ParentDir => {
                if at.pop().is_none() {
                    return Err(format!(
                        "is a symlink leading out of the tree (to {})",
                        target.display()
                    ));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err("is an absolute symlink".into());
            }
        }
    }
    Ok(at.join("/"))
}

impl Unpacker<'_> {
    fn unsafe_entry(&self, entry: &str, reason: impl Into<String>) -> ExtractError {
        ExtractError::Unsafe {
            archive: self.archive.into(),
            entry: entry.into(),
            reason: reason.into(),
        }
    }

    fn wanted(&self, path: &str) -> bool {
        let options = glob::MatchOptions {
            require_literal_separator: true,
            ..Default::default()
        };
        self.members.is_empty() || self.members.iter().any(|m| m.matches_with(path, options))
    }

    /// Refuses a path that runs through a symlink of the archive (or is one already).
    fn check_not_through_symlink(&self, path: &str) -> Result<(), ExtractError> {
        let mut prefix = String::new();
        for part in path.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.seen.get(&prefix) == Some(&Seen::Symlink) {
                return Err(self.unsafe_entry(path, format!("goes through the symlink {prefix:?}")));
            }
        }
        Ok(())
    }

    fn tar<R: BufRead + Send>(
        &mut self,
        format: Format,
        input: R,
        cancel: &CancellationToken,
        tick: &dyn Fn(),
    ) -> Result<(), ExtractError> {
        let stream_limit = self.bounds.max_bytes.saturating_add(
            self.bounds
                .max_entries
                .saturating_mul(TAR_OVERHEAD_PER_ENTRY),
        );
        let decoded = decompress::decoder(format, input, self.archive)?;
        let mut archive = tar::Archive::new(Bounded {
            inner: decoded,
            left: stream_limit,
            limit: stream_limit,
        });
        let entries = archive
            .entries()
            .map_err(|e| self.stream_error(e, format))?;
        for entry in entries {
            if cancel.is_cancelled() {
                return Err(ExtractError::Cancelled);
            }
            let entry = entry.map_err(|e| self.stream_error(e, format))?;
            self.entries += 1;
            if self.entries > self.bounds.max_entries {
                return Err(ExtractError::TooManyEntries {
                    archive: self.archive.into(),
                    limit: self.bounds.max_entries,
                });
            }
            self.entry(entry, format, cancel)?;
            tick();
        }
        Ok(())
    }

    /// A read error of the tar stream: the bound, cancellation, or corruption.
    fn stream_error(&self, e: io::Error, format: Format) -> ExtractError {
        if hashio::exceeded(&e).is_some() {
            return ExtractError::TooBig {
                archive: self.archive.into(),
                limit: self.bounds.max_bytes,
            };
        }
        match decompress::classify(e, self.archive, format, self.bounds.max_bytes) {
            DecompressError::Cancelled => ExtractError::Cancelled,
            DecompressError::Corrupt { source, .. } => ExtractError::Corrupt {
                archive: self.archive.into(),
                source,
            },
            other => other.into(),
        }
    }

    fn entry<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
        format: Format,
        cancel: &CancellationToken,
    ) -> Result<(), ExtractError> {
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(());
        }
        let raw = entry
            .path()
            .map_err(|e| self.stream_error(e, format))?
            .into_owned();
        let shown = raw.to_string_lossy().into_owned();
        let path = clean_path(&raw).map_err(|r| self.unsafe_entry(&shown, r))?;
        let Some(path) = path else {
            return match kind {
                T::Directory => Ok(()),
                _ => Err(self.unsafe_entry(&shown, "names the root of the tree")),
            };
        };
        self.check_not_through_symlink(&path)?;
        let seen = match kind {
            T::Directory => Seen::Dir,
            T::Symlink => Seen::Symlink,
            T::Regular | T::Continuous | T::Link => Seen::File,
            T::Char | T::Block | T::Fifo if self.rootfs.is_some() => {
                if let Some(mode) = self.rootfs.as_mut() {
                    mode.skipped += 1;
                }
                return Ok(());
            }
            T::Char | T::Block => return Err(self.unsafe_entry(&path, "is a device node")),
            T::Fifo => return Err(self.unsafe_entry(&path, "is a FIFO")),
            T::GNUSparse => {
                return Err(self.unsafe_entry(&path, "is a sparse file (not supported)"));
            }
            other => {
                return Err(self.unsafe_entry(&path, format!("has unsupported type {other:?}")));
            }
        };
        match self.seen.insert(path.clone(), seen) {
            Some(Seen::Dir) if seen == Seen::Dir => return Ok(()),
            Some(_) => return Err(self.unsafe_entry(&path, "appears twice")),
            None => {}
        }
        let dest = self.root.join(&path);
        match kind {
            T::Directory => {
                if self.members.is_empty() {
                    fs::create_dir_all(&dest).map_err(file_err("create", &dest))?;
                }
                let header = entry.header();
                let (mode, uid, gid) = (
                    header.mode().unwrap_or(0o755) & 0o7777,
                    header.uid().unwrap_or(0),
                    header.gid().unwrap_or(0),
                );
                if let Some(rootfs) = self.rootfs.as_mut() {
                    rootfs.dirs.push((dest, mode, uid, gid));
                }
                Ok(())
            }
            T::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| self.stream_error(e, format))?
                    .ok_or_else(|| self.unsafe_entry(&path, "is a symlink without a target"))?
                    .into_owned();
                let kept_absolute = self.rootfs.is_some() && target.is_absolute();
                if !kept_absolute {
                    resolve_link(&path, &target).map_err(|r| self.unsafe_entry(&path, r))?;
                }
                self.symlinks.push(path.clone());
                if self.wanted(&path) {
                    self.parent_dirs(&dest)?;
                    std::os::unix::fs::symlink(&target, &dest)
                        .map_err(file_err("create", &dest))?;
                    if self.rootfs.as_ref().is_some_and(|m| m.as_root) {
                        let header = entry.header();
                        set_owner(&dest, header.uid().unwrap_or(0), header.gid().unwrap_or(0))?;
                    }
                }
                Ok(())
            }
            T::Link => self.hard_link(&mut entry, &path, &dest, format),
            _ => self.regular(&mut entry, &path, &dest, format, cancel),
        }
    }

    fn parent_dirs(&self, dest: &Path) -> Result<(), ExtractError> {
        match dest.parent() {
            Some(parent) => Ok(fs::create_dir_all(parent).map_err(file_err("create", parent))?),
            None => Ok(()),
        }
    }

    fn hard_link<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &str,
        dest: &Path,
        format: Format,
    ) -> Result<(), ExtractError> {
        let target = entry
            .link_name()
            .map_err(|e| self.stream_error(e, format))?
            .ok_or_else(|| self.unsafe_entry(path, "is a hard link without a target"))?
            .into_owned();
        let target = clean_path(&target)
            .map_err(|r| self.unsafe_entry(path, format!("is a hard link that {r}")))?
            .ok_or_else(|| self.unsafe_entry(path, "is a hard link to the root"))?;
        self.check_not_through_symlink(&target)
            .map_err(|_| self.unsafe_entry(path, "is a hard link through a symlink"))?;
        if self.seen.get(&target) != Some(&Seen::File) {
            return Err(self.unsafe_entry(
                path,
                format!("is a hard link to {target:?}, which is not a file unpacked before it"),
            ));
        }
        if !self.wanted(path) {
            return Ok(());
        }
        let file = self.tree.files.get(&target).cloned().ok_or_else(|| {
            self.unsafe_entry(
                path,
                format!("links to {target:?}, which the members filter left out"),
            )
        })?;
        self.parent_dirs(dest)?;
        let src = self.root.join(&target);
        fs::hard_link(&src, dest).map_err(file_err("link", dest))?;
        self.tree.files.insert(path.to_owned(), file);
        Ok(())
    }

    fn regular<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &str,
        dest: &Path,
        format: Format,
        cancel: &CancellationToken,
    ) -> Result<(), ExtractError> {
        let size = entry.size();
        self.bytes = self.bytes.saturating_add(size);
        if self.bytes > self.bounds.max_bytes {
            return Err(ExtractError::TooBig {
                archive: self.archive.into(),
                limit: self.bounds.max_bytes,
            });
        }
        let mode = entry.header().mode().unwrap_or(0o644);
        if !self.wanted(path) {
            // Still read through it, so that a corrupt or oversized stream is noticed.
            io::copy(entry, &mut io::sink()).map_err(|e| self.stream_error(e, format))?;
            return Ok(());
        }
        self.parent_dirs(dest)?;
        let out = hashio::create_new(dest).map_err(file_err("create", dest))?;
        let mut out = HashWriter::new(io::BufWriter::new(out), size);
        hashio::copy_with(entry, &mut out, cancel, |_| {})
            .map_err(|e| self.stream_error(e, format))?;
        let (buffered, sha256, written) = out.finish();
        let file = buffered
            .into_inner()
            .map_err(|e| file_err("write", dest)(e.into_error()))?;
        if written != size {
            return Err(ExtractError::Corrupt {
                archive: self.archive.into(),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{path} is truncated"),
                ),
            });
        }
        let executable = mode & 0o111 != 0;
        let perms = match &self.rootfs {
            Some(rootfs) => {
                if rootfs.as_root {
                    let header = entry.header();
                    let id = |n: u64| u32::try_from(n).ok().map(rustix::fs::Uid::from_raw);
                    let gid = |n: u64| u32::try_from(n).ok().map(rustix::fs::Gid::from_raw);
                    // Before the mode: a change of owner clears set-id bits.
                    rustix::fs::fchown(
                        &file,
                        id(header.uid().unwrap_or(0)),
                        gid(header.gid().unwrap_or(0)),
                    )
                    .map_err(|e| file_err("chown", dest)(e.into()))?;
                }
                mode & 0o7777
            }
            None if executable => 0o700,
            None => 0o600,
        };
        file.set_permissions(fs::Permissions::from_mode(perms))
            .map_err(file_err("chmod", dest))?;
        self.tree.files.insert(
            path.to_owned(),
            TreeFile {
                sha256,
                size,
                executable,
            },
        );
        Ok(())
    }

    /// Once the tree is complete, resolves every symlink written with the kernel's
    /// `RESOLVE_BENEATH`: a chain of links that leaves the tree is refused.
    fn check_symlinks_stay_inside(&self) -> Result<(), ExtractError> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let root = rustix::fs::open(
            self.root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| file_err("open", self.root)(e.into()))?;
        for link in &self.symlinks {
            if !self.wanted(link) {
                continue;
            }
            let opened = rustix::fs::openat2(
                &root,
                link.as_str(),
                OFlags::PATH | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
            );
            match opened {
                Ok(_) | Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => {}
                Err(rustix::io::Errno::XDEV) => {
                    return Err(self.unsafe_entry(
                        link,
                        "is a symlink that leads out of the tree through other links",
                    ));
                }
                Err(rustix::io::Errno::LOOP) => {
                    return Err(self.unsafe_entry(link, "is a symlink loop"));
                }
                Err(e) => return Err(file_err("resolve", &self.root.join(link))(e.into()).into()),
            }
        }
        Ok(())
    }
}

/// A reader that fails with [`hashio::LimitExceeded`] past `limit` bytes.
struct Bounded<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::other(hashio::LimitExceeded {
                limit: self.limit,
            }));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
#[path = "extract_tests.rs"]
mod tests;
