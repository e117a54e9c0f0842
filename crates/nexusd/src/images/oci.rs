//! Master images from OCI image layouts (a directory holding `oci-layout`, `index.json` and
//! `blobs/sha256/…`, or a tar archive of one), for templates with `base = "oci:PATH"`.
//!
//! The path is checked with the caller's import rights like any import. An archive is unpacked
//! by the `extract` stage's rules; in a directory every file is opened beneath it without
//! following any symlink. The index names one manifest (the `linux/amd64` one when it lists
//! several), the manifest its layers; every blob's sha256 is checked against its digest and
//! bounded in size. Each layer is unpacked by [`extract::extract_rootfs`] (the hostile-tar
//! rules of rootfs assets) into its own directory, then applied in order onto the root with the
//! whiteouts honoured: `.wh.NAME` removes `NAME` from the layers below, `.wh..wh..opq` empties
//! its directory first. Applying never goes through a symlink: a directory of a layer replaces
//! whatever non-directory the root had there. Then the mount points and the agent, and the
//! ordinary directory import, as for rootfs assets. The image is named after the manifest's
//! digest (`oci-<12 hex>`), so the same image is found again rather than imported twice.

use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nexus_lib::api::pipeline::{ArchiveFormat, Compression};
use nexus_lib::api::{CreateImage, Image};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::rootfs::finish_tree;
use super::{ImageError, ImageService, detached};
use crate::assets::extract::{self, ExtractBounds};
use crate::assets::progress::Progress;
use crate::hostpath::Caller;

/// Largest `index.json` or manifest read.
const MAX_JSON: u64 = 1 << 20;
/// Most layers an image may have.
const MAX_LAYERS: usize = 128;

#[derive(Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Debug, Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    layers: Vec<Descriptor>,
}

fn invalid(message: impl Into<String>) -> ImageError {
    ImageError::Invalid {
        field: "base",
        message: message.into(),
    }
}

impl ImageService {
    /// The image of the OCI layout or archive at `path` (on this host, read with `caller`'s
    /// rights): found when it was imported before, imported otherwise.
    pub async fn import_oci(&self, path: &str, caller: &Caller) -> Result<Image, ImageError> {
        super::check_path_text(path)?;
        let agent = self.agent.clone().filter(|a| a.is_file()).ok_or_else(|| {
            invalid("no guest agent to put into the image: set agent_binary or NEXUS_AGENT_BIN")
        })?;
        let (this, path, caller) = (self.clone(), path.to_owned(), caller.clone());
        let cancel = CancellationToken::new();
        let _cancel_on_drop = cancel.clone().drop_guard();
        detached(async move {
            let (policy, limits, stop) = (this.policy.clone(), this.limits, cancel.clone());
            let shown = path.clone();
            let (scratch, digest) = tokio::task::spawn_blocking(move || {
                let bounds = ExtractBounds {
                    max_entries: limits.max_entries,
                    max_bytes: limits.max_bytes,
                };
                let src = policy.open(Path::new(&shown), &caller)?;
                prepare(&src.proc_path(), src.is_dir, &shown, &agent, bounds, &stop)
            })
            .await
            .map_err(ImageError::Worker)??;
            let hex = digest.trim_start_matches("sha256:");
            let name = format!("oci-{}", &hex[..12]);
            let image = match this.get(&name).await {
                Ok(existing) => Ok(existing),
                Err(ImageError::NotFound(_)) => {
                    let req = CreateImage {
                        path: scratch.path().join("rootfs").display().to_string(),
                        name: Some(name),
                        asset: None,
                        size: None,
                    };
                    let source = format!("oci:{path} ({digest})");
                    this.import_now(req, &Caller::Daemon, cancel, Some(source))
                        .await
                }
                Err(e) => Err(e),
            };
            let _ = tokio::task::spawn_blocking(move || drop(scratch)).await;
            image
        })
        .await
    }
}

/// Unpacks the layout at `src` (a directory, else an archive) into `<scratch>/rootfs`, with the
/// mount points and the agent; the manifest's digest. Blocking.
fn prepare(
    src: &Path,
    is_dir: bool,
    shown: &str,
    agent: &Path,
    bounds: ExtractBounds,
    cancel: &CancellationToken,
) -> Result<(tempfile::TempDir, String), ImageError> {
    let tmp = std::env::temp_dir();
    let scratch = tempfile::Builder::new()
        .prefix("oci-image-")
        .tempdir_in(&tmp)
        .map_err(|source| ImageError::Scratch { path: tmp, source })?;
    let layout = if is_dir {
        src.to_owned()
    } else {
        let dir = scratch.path().join("layout");
        extract::extract(
            src,
            shown,
            ArchiveFormat::Tar,
            Compression::Auto,
            &dir,
            &[],
            bounds,
            &Progress::silent(),
            cancel,
        )
        .map_err(|e| invalid(format!("{shown}: {}", nexus_lib::error::error_chain(&e))))?;
        dir
    };
    let root = open_dir(&layout).map_err(|e| invalid(format!("{shown}: {e}")))?;
    let digest = apply_layout(&root, shown, &scratch.path().join("rootfs"), bounds, cancel)?;
    finish_tree(&scratch.path().join("rootfs"), agent)
        .map_err(|e| invalid(nexus_lib::error::error_chain(&e)))?;
    Ok((scratch, digest))
}

/// Reads the index and manifest under `root` and applies the layers onto `rootfs`; the
/// manifest's digest.
fn apply_layout(
    root: &OwnedFd,
    shown: &str,
    rootfs: &Path,
    bounds: ExtractBounds,
    cancel: &CancellationToken,
) -> Result<String, ImageError> {
    let bad = |m: String| invalid(format!("{shown} is not a usable OCI image layout: {m}"));
    read_beneath(root, "oci-layout", 4096).map_err(|e| bad(format!("oci-layout: {e}")))?;
    let index: Index = serde_json::from_slice(
        &read_beneath(root, "index.json", MAX_JSON).map_err(|e| bad(format!("index.json: {e}")))?,
    )
    .map_err(|e| bad(format!("index.json: {e}")))?;
    let mut manifest_desc = pick_manifest(&index.manifests)
        .ok_or_else(|| bad("index.json lists no linux/amd64 image manifest".into()))?;
    let mut manifest_bytes = read_blob(root, manifest_desc, MAX_JSON).map_err(bad)?;
    // A nested index (as `docker save` and some tools write): follow it once.
    if manifest_desc.media_type.contains("image.index") {
        let nested: Index = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| bad(format!("nested index: {e}")))?;
        let inner = pick_manifest(&nested.manifests)
            .ok_or_else(|| bad("the nested index lists no image manifest".into()))?;
        manifest_bytes = read_blob(root, inner, MAX_JSON).map_err(bad)?;
        manifest_desc = inner;
        let manifest: Manifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| bad(format!("manifest: {e}")))?;
        apply_layers(root, shown, &manifest, rootfs, bounds, cancel)?;
        return Ok(manifest_desc.digest.clone());
    }
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| bad(format!("manifest: {e}")))?;
    apply_layers(root, shown, &manifest, rootfs, bounds, cancel)?;
    Ok(manifest_desc.digest.clone())
}

fn pick_manifest(list: &[Descriptor]) -> Option<&Descriptor> {
    let usable = |d: &&Descriptor| {
        d.platform.as_ref().is_none_or(|p| {
            p.os == "linux" && (p.architecture == "amd64" || p.architecture.is_empty())
        })
    };
    list.iter().find(usable)
}

fn apply_layers(
    root: &OwnedFd,
    shown: &str,
    manifest: &Manifest,
    rootfs: &Path,
    bounds: ExtractBounds,
    cancel: &CancellationToken,
) -> Result<(), ImageError> {
    if manifest.layers.is_empty() || manifest.layers.len() > MAX_LAYERS {
        return Err(invalid(format!(
            "{shown}: an image needs 1 to {MAX_LAYERS} layers, the manifest lists {}",
            manifest.layers.len()
        )));
    }
    std::fs::create_dir(rootfs).map_err(|e| invalid(format!("{}: {e}", rootfs.display())))?;
    let work = rootfs.with_file_name("layers");
    std::fs::create_dir(&work).map_err(|e| invalid(format!("{}: {e}", work.display())))?;
    for (i, layer) in manifest.layers.iter().enumerate() {
        if !layer.media_type.contains("tar") {
            return Err(invalid(format!(
                "{shown}: layer {i} has media type {:?}, not a tar",
                layer.media_type
            )));
        }
        let blob =
            open_blob(root, layer).map_err(|m| invalid(format!("{shown}: layer {i}: {m}")))?;
        let proc = PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&blob)
        ));
        let dir = work.join(format!("{i}"));
        let name = format!("{shown} layer {i}");
        extract::extract_rootfs(&proc, &name, &dir, bounds, &Progress::silent(), cancel)
            .map_err(|e| invalid(nexus_lib::error::error_chain(&e)))?;
        apply_layer(&dir, rootfs).map_err(|e| invalid(format!("{name}: {e}")))?;
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// Applies the unpacked layer `layer` onto `merged`, honouring whiteouts.
pub(super) fn apply_layer(layer: &Path, merged: &Path) -> io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(layer)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    if names.iter().any(|n| n == ".wh..wh..opq") {
        for entry in std::fs::read_dir(merged)? {
            remove_any(&entry?.path())?;
        }
    }
    for name in names {
        let text = name.to_string_lossy();
        if text == ".wh..wh..opq" {
            continue;
        }
        if let Some(hidden) = text.strip_prefix(".wh.") {
            if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
                return Err(io::Error::other(format!("bad whiteout {text:?}")));
            }
            let target = merged.join(hidden);
            if target.symlink_metadata().is_ok() {
                remove_any(&target)?;
            }
            continue;
        }
        let (src, dst) = (layer.join(&name), merged.join(&name));
        let meta = src.symlink_metadata()?;
        if meta.is_dir() {
            match dst.symlink_metadata() {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    remove_any(&dst)?;
                    std::fs::create_dir(&dst)?;
                }
                Err(_) => std::fs::create_dir(&dst)?,
            }
            apply_layer(&src, &dst)?;
            std::fs::set_permissions(&dst, meta.permissions())?;
            if rustix::process::geteuid().is_root() {
                use std::os::unix::fs::MetadataExt;
                std::os::unix::fs::lchown(&dst, Some(meta.uid()), Some(meta.gid()))?;
            }
        } else {
            if dst.symlink_metadata().is_ok() {
                remove_any(&dst)?;
            }
            std::fs::rename(&src, &dst)?;
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> io::Result<()> {
    if path.symlink_metadata()?.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens `rel` beneath `root`, following no symlink and never leaving it.
fn open_beneath(root: &OwnedFd, rel: &str) -> io::Result<std::fs::File> {
    let fd = rustix::fs::openat2(
        root,
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?;
    let file = std::fs::File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

fn read_beneath(root: &OwnedFd, rel: &str, limit: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    open_beneath(root, rel)?
        .take(limit + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(io::Error::other(format!("larger than {limit} bytes")));
    }
    Ok(out)
}

/// The blob of `desc`, its sha256 checked against the digest (and its size, when given).
fn open_blob(root: &OwnedFd, desc: &Descriptor) -> Result<std::fs::File, String> {
    let hex = desc
        .digest
        .strip_prefix("sha256:")
        .filter(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
        .ok_or_else(|| format!("digest {:?} is not a sha256 digest", desc.digest))?;
    let rel = format!("blobs/sha256/{hex}");
    let mut file = open_beneath(root, &rel).map_err(|e| format!("{rel}: {e}"))?;
    let mut hasher = Sha256::new();
    let len = io::copy(&mut file, &mut hasher).map_err(|e| format!("{rel}: {e}"))?;
    if desc.size != 0 && len != desc.size {
        return Err(format!(
            "{rel} is {len} bytes, the descriptor says {}",
            desc.size
        ));
    }
    let got = crate::builds::hex(&hasher.finalize());
    if got != hex {
        return Err(format!("{rel} has sha256 {got}, not its digest"));
    }
    use std::io::Seek;
    file.seek(io::SeekFrom::Start(0))
        .map_err(|e| format!("{rel}: {e}"))?;
    Ok(file)
}

fn read_blob(root: &OwnedFd, desc: &Descriptor, limit: u64) -> Result<Vec<u8>, String> {
    if desc.size > limit {
        return Err(format!("{} is larger than {limit} bytes", desc.digest));
    }
    let mut out = Vec::new();
    open_blob(root, desc)?
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts_and_opaque_directories() {
        let dir = tempfile::tempdir().unwrap();
        let (l1, l2, merged) = (
            dir.path().join("l1"),
            dir.path().join("l2"),
            dir.path().join("m"),
        );
        write(&l1.join("etc/keep"), "1");
        write(&l1.join("etc/gone"), "1");
        write(&l1.join("opt/old"), "1");
        write(&l1.join("var/x"), "1");
        write(&l2.join("etc/.wh.gone"), "");
        write(&l2.join("etc/keep"), "2");
        write(&l2.join("opt/.wh..wh..opq"), "");
        write(&l2.join("opt/new"), "2");
        write(&l2.join(".wh.var"), "");
        std::fs::create_dir(&merged).unwrap();

        apply_layer(&l1, &merged).unwrap();
        apply_layer(&l2, &merged).unwrap();

        assert_eq!(
            std::fs::read_to_string(merged.join("etc/keep")).unwrap(),
            "2"
        );
        assert!(!merged.join("etc/gone").exists());
        assert!(!merged.join("opt/old").exists());
        assert!(merged.join("opt/new").exists());
        assert!(!merged.join("var").exists());
        assert!(!merged.join("etc/.wh.gone").exists());
    }

    #[test]
    fn a_layer_directory_replaces_a_lower_symlink_instead_of_writing_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let (l1, l2, merged) = (
            dir.path().join("l1"),
            dir.path().join("l2"),
            dir.path().join("m"),
        );
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(&l1).unwrap();
        std::os::unix::fs::symlink(&outside, l1.join("lib")).unwrap();
        write(&l2.join("lib/evil"), "x");
        std::fs::create_dir(&merged).unwrap();

        apply_layer(&l1, &merged).unwrap();
        apply_layer(&l2, &merged).unwrap();

        assert!(!outside.join("evil").exists());
        assert!(merged.join("lib").symlink_metadata().unwrap().is_dir());
        assert!(merged.join("lib/evil").exists());
    }
}
