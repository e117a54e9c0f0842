//! Debian's cloud kernel: find the versioned `linux-image-<abi>-cloud-amd64` package (the
//! `linux-image-cloud-amd64` meta package holds no files) and unpack it with `dpkg-deb -x`
//! into `<assets>/kernels/<release>/`, idempotently.

use std::fs;
use std::path::{Path, PathBuf};

use super::BootError;
use crate::command;

/// An unpacked kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelAsset {
    /// `uname -r` of the kernel, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// The bzImage.
    pub kernel: PathBuf,
    /// `lib/modules/<release>`.
    pub modules_dir: PathBuf,
}

/// The newest versioned cloud-kernel `.deb` in `dir`.
pub fn find_kernel_deb(dir: &Path) -> Result<PathBuf, BootError> {
    let entries = fs::read_dir(dir).map_err(BootError::io(dir))?;
    let mut debs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_versioned_cloud_kernel)
        })
        .collect();
    debs.sort_by_key(|p| version_key(p));
    debs.pop().ok_or_else(|| BootError::NoKernelDeb {
        dir: dir.to_path_buf(),
    })
}

/// A `.deb` file (`PACKAGE_VERSION_ARCH.deb`) of a versioned cloud kernel image package.
fn is_versioned_cloud_kernel(name: &str) -> bool {
    name.ends_with(".deb")
        && name
            .split_once('_')
            .is_some_and(|(package, _)| crate::vm::assets::is_cloud_kernel(package))
}

/// Sorts `6.1.0-56` after `6.1.0-9` by comparing digit runs numerically.
fn version_key(path: &Path) -> Vec<u64> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Unpacks the newest cloud-kernel `.deb` in `assets` into `assets/kernels/<release>/`.
pub fn unpack_debian_kernel(assets: &Path) -> Result<KernelAsset, BootError> {
    unpack_kernel_deb(&find_kernel_deb(assets)?, assets)
}

/// Unpacks the kernel package `deb` into `assets/kernels/<release>/` (idempotent).
pub fn unpack_kernel_deb(deb: &Path, assets: &Path) -> Result<KernelAsset, BootError> {
    let deb = deb.to_path_buf();
    let kernels = assets.join("kernels");
    fs::create_dir_all(&kernels).map_err(BootError::io(&kernels))?;
    if let Some(release) = release_from_deb_name(&deb)
        && let Ok(asset) = locate(&kernels.join(&release))
    {
        return Ok(asset);
    }
    let staging = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(&kernels)
        .map_err(BootError::io(&kernels))?;
    command::run(
        command::tool("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(staging.path()),
        &[0],
    )?;
    let unpacked = locate(staging.path())?;
    let dest = kernels.join(&unpacked.release);
    match fs::rename(staging.path(), &dest) {
        Ok(()) => {}
        // Another caller won the race: its copy is just as good.
        Err(_) if dest.exists() => {}
        Err(e) => {
            return Err(BootError::Io {
                path: dest,
                source: e,
            });
        }
    }
    locate(&dest)
}

/// `linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb` → `6.1.0-56-cloud-amd64`.
fn release_from_deb_name(deb: &Path) -> Option<String> {
    let name = deb.file_name()?.to_str()?;
    Some(
        name.strip_prefix("linux-image-")?
            .split('_')
            .next()?
            .to_string(),
    )
}

/// Finds `boot/vmlinuz-<release>` and its modules in an unpacked package tree.
fn locate(root: &Path) -> Result<KernelAsset, BootError> {
    let boot = root.join("boot");
    let entries = fs::read_dir(&boot).map_err(|_| BootError::NoVmlinuz {
        dir: root.to_path_buf(),
    })?;
    let release = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find_map(|n| n.strip_prefix("vmlinuz-").map(str::to_string))
        .ok_or_else(|| BootError::NoVmlinuz {
            dir: root.to_path_buf(),
        })?;
    let modules_dir = root.join("lib/modules").join(&release);
    if !modules_dir.is_dir() {
        return Err(BootError::NoVmlinuz {
            dir: root.to_path_buf(),
        });
    }
    Ok(KernelAsset {
        kernel: boot.join(format!("vmlinuz-{release}")),
        modules_dir,
        release,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_package_is_not_a_kernel_deb() {
        assert!(!is_versioned_cloud_kernel(
            "linux-image-cloud-amd64_6.1.192-2_amd64.deb"
        ));
    }

    #[test]
    fn versioned_package_is_a_kernel_deb() {
        assert!(is_versioned_cloud_kernel(
            "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb"
        ));
        for other in [
            "linux-image-6.1.0-56-cloud-amd64-dbg_6.1.192-2_amd64.deb",
            "linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb",
            "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.udeb",
            "linux-image-6.1.0-56-cloud-amd64.deb",
        ] {
            assert!(!is_versioned_cloud_kernel(other), "{other}");
        }
    }

    #[test]
    fn newest_kernel_deb_wins_numerically() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "linux-image-6.1.0-9-cloud-amd64_6.1.1-1_amd64.deb",
            "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb",
        ] {
            fs::write(dir.path().join(name), b"").unwrap();
        }
        let found = find_kernel_deb(dir.path()).unwrap();
        assert!(found.ends_with("linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb"));
    }

    #[test]
    fn release_comes_from_package_name() {
        let deb = Path::new("/x/linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb");
        assert_eq!(
            release_from_deb_name(deb).as_deref(),
            Some("6.1.0-56-cloud-amd64")
        );
    }
}
