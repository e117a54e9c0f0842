//! Master images from `rootfs` assets: a tarball of the asset store (a Debian root filesystem
//! built by the `debian-rootfs` provider, or one downloaded) unpacked into a directory only root
//! can reach, given the mount points the agent needs and the static guest agent at
//! `/sbin/nexus-agent` (so kernels booted without an initramfs run it as `init=`), then built into
//! ext4 by the ordinary directory import (`mke2fs -d`).
//!
//! The tarball is unpacked by [`crate::assets::extract::extract_rootfs`]: the extract stage's
//! rules (no `..`, nothing through a symlink, no hard link out of the tree, bounded) with owners,
//! modes and absolute symlinks kept. Absolute symlinks point into the guest's root; nothing here
//! follows them: the agent's directory is resolved with `RESOLVE_IN_ROOT` (so `sbin -> usr/sbin`
//! and even `sbin -> /usr/sbin` land inside the tree) and the agent is created in it with
//! `O_EXCL|O_NOFOLLOW` after removing what was there.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nexus_lib::api::{Asset, CreateImage, Image};
use nexus_lib::names::validate_name;
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use tokio_util::sync::CancellationToken;

use super::{ImageError, ImageService, detached};
use crate::assets::extract::{self, ExtractBounds, ExtractError};
use crate::assets::hashio::file_err;
use crate::assets::progress::Progress;
use crate::boot::ROOT_AGENT_PATH;
use crate::hostpath::Caller;

/// Directories the agent mounts on or writes to at boot, made when the tarball lacks them.
const MOUNT_POINTS: [(&str, u32); 5] = [
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("tmp", 0o1777),
];

/// Why a root filesystem could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("cannot unpack the rootfs asset")]
    Extract(#[from] ExtractError),
    #[error(transparent)]
    Io(#[from] crate::assets::hashio::FileError),
}

impl ImageService {
    /// Imports the `rootfs` asset `asset` as a new image named `name` (default: the asset's
    /// name), of at least `size` bytes. Runs on its own task like [`ImageService::import`]; dropping this future stops
    /// the unpacking and the build, never the step from published subvolume to row.
    pub async fn import_rootfs(
        &self,
        asset: &Asset,
        name: Option<String>,
        size: Option<nexus_lib::size::ByteSize>,
    ) -> Result<Image, ImageError> {
        let name = match name {
            Some(n) => n,
            None => image_name(&asset.name).ok_or_else(|| ImageError::Invalid {
                field: "name",
                message: format!(
                    "cannot derive an image name from {:?}; pass one",
                    asset.name
                ),
            })?,
        };
        validate_name(&name).map_err(|e| ImageError::Invalid {
            field: "name",
            message: e.to_string(),
        })?;
        if self.get(&name).await.is_ok() {
            return Err(ImageError::NameTaken(name));
        }
        let agent =
            self.agent
                .clone()
                .filter(|a| a.is_file())
                .ok_or_else(|| ImageError::Invalid {
                    field: "asset",
                    message:
                        "no guest agent to put into the image: set agent_binary or NEXUS_AGENT_BIN"
                            .into(),
                })?;
        let (this, asset) = (self.clone(), asset.clone());
        let cancel = CancellationToken::new();
        let _cancel_on_drop = cancel.clone().drop_guard();
        detached(async move {
            let (limits, stop) = (this.limits, cancel.clone());
            let tarball = PathBuf::from(&asset.path);
            let shown = format!("{}@{}", asset.name, asset.version);
            let scratch = tokio::task::spawn_blocking(move || {
                let bounds = ExtractBounds {
                    max_entries: limits.max_entries,
                    max_bytes: limits.max_bytes,
                };
                prepare_tree(&tarball, &shown, &agent, bounds, &stop)
            })
            .await
            .map_err(ImageError::Worker)??;
            let req = CreateImage {
                path: scratch.path().join("rootfs").display().to_string(),
                name: Some(name),
                asset: None,
                size,
            };
            let source = asset_source(&asset);
            let image = this
                .import_now(req, &Caller::Daemon, cancel, Some(source))
                .await;
            // The unpacked tree can be large: removed on a blocking thread.
            let _ = tokio::task::spawn_blocking(move || drop(scratch)).await;
            image
        })
        .await
    }
}

impl ImageService {
    /// The image made from the `rootfs` asset `asset`, imported on first use: an image already
    /// imported from exactly this asset (same kind, name, version and SHA-256, by any name) is
    /// reused; otherwise one is imported, named after the asset, or after the asset and its
    /// digest when that name is taken. Serialised, so concurrent callers import it once.
    pub async fn for_rootfs_asset(&self, asset: &Asset) -> Result<Image, ImageError> {
        let _guard = self.base_lock.lock().await;
        let source = asset_source(asset);
        if let Some(image) = self
            .list()
            .await?
            .into_iter()
            .find(|i| i.source == source && i.state == nexus_lib::api::StorageState::Ready)
        {
            return Ok(image);
        }
        let base = image_name(&asset.name).unwrap_or_else(|| "asset".into());
        let name = if self.get(&base).await.is_ok() {
            let short = &asset.sha256[..asset.sha256.len().min(12)];
            format!("{}-{short}", &base[..base.len().min(50)])
        } else {
            base
        };
        self.import_rootfs(asset, Some(name), None).await
    }
}

/// What an image imported from `asset` records as its source.
fn asset_source(asset: &Asset) -> String {
    format!(
        "asset:{}/{}@{} (sha256 {})",
        asset.kind, asset.name, asset.version, asset.sha256
    )
}

/// An image name from an asset name: `debian-bookworm` stays, `Foo_1.2` → `foo-1-2`.
fn image_name(asset: &str) -> Option<String> {
    super::name_from_text(asset)
}

/// Unpacks `tarball` into `<scratch>/rootfs` (the scratch directory is private to root), adds
/// the mount points and the agent. Blocking.
fn prepare_tree(
    tarball: &Path,
    shown: &str,
    agent: &Path,
    bounds: ExtractBounds,
    cancel: &CancellationToken,
) -> Result<tempfile::TempDir, ImageError> {
    let tmp = std::env::temp_dir();
    let scratch = tempfile::Builder::new()
        .prefix("rootfs-image-")
        .tempdir_in(&tmp)
        .map_err(|source| ImageError::Scratch { path: tmp, source })?;
    let tree = scratch.path().join("rootfs");
    let invalid = |e: RootfsError| ImageError::Invalid {
        field: "asset",
        message: nexus_lib::error::error_chain(&e),
    };
    let stats = extract::extract_rootfs(tarball, shown, &tree, bounds, &Progress::silent(), cancel)
        .map_err(|e| invalid(e.into()))?;
    finish_tree(&tree, agent).map_err(invalid)?;
    tracing::info!(asset = %shown, entries = stats.entries, bytes = stats.bytes, skipped_devices = stats.skipped, "rootfs asset unpacked");
    Ok(scratch)
}

/// The root directory's mode, the mount points and the agent.
pub(super) fn finish_tree(tree: &Path, agent: &Path) -> Result<(), RootfsError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tree, std::fs::Permissions::from_mode(0o755))
        .map_err(file_err("chmod", tree))?;
    for (dir, mode) in MOUNT_POINTS {
        let path = tree.join(dir);
        // mkdir never follows a symlink in the way; one there is left as the tarball made it.
        match std::fs::create_dir(&path) {
            Ok(()) => std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(file_err("chmod", &path))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(file_err("create", &path)(e).into()),
        }
    }
    install_agent(tree, agent)
}

/// Writes `agent` at [`ROOT_AGENT_PATH`] inside `tree`, resolving its directory as the guest
/// would (`RESOLVE_IN_ROOT`), never outside the tree.
fn install_agent(tree: &Path, agent: &Path) -> Result<(), RootfsError> {
    let in_tree = ROOT_AGENT_PATH.trim_start_matches('/');
    let (dir, file) = in_tree.rsplit_once('/').unwrap_or(("", in_tree));
    let dest = tree.join(in_tree);
    let fail = |op: &'static str| {
        let dest = dest.clone();
        move |e: rustix::io::Errno| RootfsError::from(file_err(op, &dest)(io::Error::from(e)))
    };
    let root = rustix::fs::open(
        tree,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail("open the tree of"))?;
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let dir_flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
    let parent: OwnedFd = match rustix::fs::openat2(&root, dir, dir_flags, Mode::empty(), resolve) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => {
            rustix::fs::mkdirat(&root, dir, Mode::from_raw_mode(0o755))
                .map_err(fail("create the directory of"))?;
            rustix::fs::openat2(&root, dir, dir_flags, Mode::empty(), resolve)
                .map_err(fail("open the directory of"))?
        }
        Err(e) => return Err(fail("open the directory of")(e)),
    };
    match rustix::fs::unlinkat(&parent, file, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(fail("replace")(e)),
    }
    let out = rustix::fs::openat(
        &parent,
        file,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o755),
    )
    .map_err(fail("create"))?;
    let mut out = std::fs::File::from(out);
    let mut input = std::fs::File::open(agent).map_err(file_err("open", agent))?;
    io::copy(&mut input, &mut out).map_err(file_err("write", &dest))?;
    if rustix::process::geteuid().is_root() {
        rustix::fs::fchown(
            &out,
            Some(rustix::fs::Uid::ROOT),
            Some(rustix::fs::Gid::ROOT),
        )
        .map_err(fail("chown"))?;
    }
    rustix::fs::fchmod(&out, Mode::from_raw_mode(0o755)).map_err(fail("chmod"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_lands_inside_the_tree_through_an_absolute_sbin_link() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("rootfs");
        std::fs::create_dir_all(tree.join("usr/sbin")).unwrap();
        // Absolute, as a guest would resolve it; on the host it names the host's /usr/sbin.
        std::os::unix::fs::symlink("/usr/sbin", tree.join("sbin")).unwrap();
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"agent").unwrap();
        finish_tree(&tree, &agent).unwrap();
        assert_eq!(
            std::fs::read(tree.join("usr/sbin/nexus-agent")).unwrap(),
            b"agent"
        );
        assert!(tree.join("proc").is_dir() && tree.join("dev").is_dir());
        assert!(!Path::new("/usr/sbin/nexus-agent").exists());
    }

    #[test]
    fn a_planted_agent_symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("rootfs");
        std::fs::create_dir_all(tree.join("sbin")).unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("sbin/nexus-agent")).unwrap();
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"agent").unwrap();
        install_agent(&tree, &agent).unwrap();
        assert_eq!(
            (
                std::fs::read(&outside).unwrap(),
                std::fs::read(tree.join("sbin/nexus-agent")).unwrap()
            ),
            (b"keep".to_vec(), b"agent".to_vec())
        );
    }

    #[test]
    fn image_names_come_from_asset_names() {
        assert_eq!(
            image_name("debian-bookworm").as_deref(),
            Some("debian-bookworm")
        );
        assert_eq!(image_name("Foo_1.2").as_deref(), Some("foo-1-2"));
    }
}
