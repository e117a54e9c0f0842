//! The boot assets every VM of the embedded default uses: Debian's cloud kernel unpacked from
//! its package, and the initramfs generated from its modules with the guest agent as `/init`.
//! Prepared once on first start (a second or two) and reused; a failure is retried next time.
//! The package is the newest in `kernel_dir` (an operator's, or an air-gapped host's), else the
//! newest `linux-image-*` package asset installed; with neither, nexusd installs one through the
//! built-in `debian-package` provider (the host's apt) on that first start.
//! Or Nexus's built kernel (`guest_kernel`), which needs neither: it is checked once to be an
//! ELF `vmlinux` QEMU can enter through PVH.

use std::path::{Path, PathBuf};

use nexus_lib::api::{Asset, AssetKind, DownloadEvent, DownloadRequest, ProviderKind};

use crate::assets::AssetService;
use crate::assets::builtin::DEBIAN_KERNEL_PACKAGE;
use crate::assets::kernel_build::check_pvh_vmlinux;
use crate::boot::{self, BootError, DEFAULT_MODULES};
use crate::hostpath::Caller;

/// Kernel and initramfs ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub kernel: PathBuf,
    /// `None` for a kernel that needs no modules (the agent then boots from the root drive).
    pub initrd: Option<PathBuf>,
    /// `uname -r` of Debian's kernel; empty for a built kernel.
    pub release: String,
}

impl Prepared {
    /// A built kernel: everything built in, booted without an initramfs.
    pub fn built(vmlinux: PathBuf) -> Self {
        Self {
            kernel: vmlinux,
            initrd: None,
            release: String::new(),
        }
    }
}

/// Why boot assets are unavailable.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error(
        "no guest agent binary: build it with scripts/build-agent.sh and set `agent_binary` (or put nexus-agent next to nexusd)"
    )]
    NoAgent,
    #[error(
        "no guest kernel package in {dir}, none installed, and the debian-package provider could not install one: {reason} (`nexusctl kernel download` retries it; or put the .deb in `kernel_dir`)"
    )]
    NoKernel { dir: PathBuf, reason: String },
    #[error(
        "guest_kernel {} cannot boot under QEMU: {reason} (set it to the vmlinux of a kernel build, or unset it to boot Debian's kernel)",
        path.display()
    )]
    GuestKernel { path: PathBuf, reason: String },
    #[error("preparing boot assets failed")]
    Boot(#[from] BootError),
    #[error("boot asset worker failed")]
    Worker(#[source] tokio::task::JoinError),
}

/// Lazily prepared boot assets.
#[derive(Debug)]
pub struct BootAssets {
    kernel_dir: PathBuf,
    assets_dir: PathBuf,
    agent: Option<PathBuf>,
    ready: tokio::sync::Mutex<Option<Prepared>>,
    /// Where an installed kernel package is found, or installed from.
    packages: Option<AssetService>,
}

impl BootAssets {
    /// `kernel_dir` holds the kernel `.deb`; `assets_dir` receives what is unpacked and built.
    pub fn new(kernel_dir: PathBuf, assets_dir: PathBuf, agent: Option<PathBuf>) -> Self {
        Self {
            kernel_dir,
            assets_dir,
            agent,
            ready: tokio::sync::Mutex::new(None),
            packages: None,
        }
    }

    /// Looks for (and installs) the kernel package through `service` when `kernel_dir` has none.
    pub fn with_packages(mut self, service: AssetService) -> Self {
        self.packages = Some(service);
        self
    }

    /// Assets already prepared (for unit tests: nothing is unpacked or built).
    #[cfg(test)]
    pub(crate) fn ready(prepared: Prepared) -> Self {
        Self {
            kernel_dir: PathBuf::new(),
            assets_dir: PathBuf::new(),
            agent: None,
            ready: tokio::sync::Mutex::new(Some(prepared)),
            packages: None,
        }
    }

    /// The built kernel at `vmlinux`, checked to be an ELF with a PVH entry (QEMU refuses
    /// anything else). The check reads a few headers, on a blocking thread, at every start: a
    /// kernel replaced by a rebuild is checked again.
    pub async fn built_for_qemu(&self, vmlinux: &Path) -> Result<Prepared, AssetError> {
        let path = vmlinux.to_owned();
        tokio::task::spawn_blocking(move || check_pvh_vmlinux(&path))
            .await
            .map_err(AssetError::Worker)?
            .map_err(|reason| AssetError::GuestKernel {
                path: vmlinux.to_owned(),
                reason,
            })?;
        Ok(Prepared::built(vmlinux.to_owned()))
    }

    /// The guest agent binary, when one is configured.
    pub fn agent(&self) -> Option<&Path> {
        self.agent.as_deref()
    }

    /// The prepared assets, preparing them on first use.
    pub async fn get(&self) -> Result<Prepared, AssetError> {
        let mut ready = self.ready.lock().await;
        if let Some(p) = ready.as_ref() {
            return Ok(p.clone());
        }
        let agent = self
            .agent
            .clone()
            .filter(|p| p.is_file())
            .ok_or(AssetError::NoAgent)?;
        let deb = match boot::find_kernel_deb(&self.kernel_dir) {
            Ok(deb) => deb,
            Err(_) => self.kernel_package().await?,
        };
        let assets = self.assets_dir.clone();
        let prepared = tokio::task::spawn_blocking(move || prepare(&deb, &assets, &agent))
            .await
            .map_err(AssetError::Worker)??;
        tracing::info!(kernel = %prepared.kernel.display(), initrd = ?prepared.initrd, "boot assets ready");
        *ready = Some(prepared.clone());
        Ok(prepared)
    }
}

fn prepare(deb: &Path, assets: &Path, agent: &Path) -> Result<Prepared, AssetError> {
    let kernel = boot::unpack_kernel_deb(deb, assets)?;
    let initrd = boot::build_initramfs(&kernel, agent, DEFAULT_MODULES, &assets.join("initramfs"))?;
    Ok(Prepared {
        kernel: kernel.kernel,
        initrd: Some(initrd),
        release: kernel.release,
    })
}

impl BootAssets {
    /// The newest installed cloud kernel package, installed now through the `debian-package`
    /// provider when there is none.
    async fn kernel_package(&self) -> Result<PathBuf, AssetError> {
        let no_kernel = |reason: String| AssetError::NoKernel {
            dir: self.kernel_dir.clone(),
            reason,
        };
        let service = self
            .packages
            .as_ref()
            .ok_or_else(|| no_kernel("no asset store".into()))?;
        let newest = |assets: &[Asset]| {
            assets
                .iter()
                .rev()
                .find(|a| a.kind == AssetKind::Package && is_cloud_kernel(&a.name))
                .map(|a| PathBuf::from(&a.path))
        };
        let installed = service.list(Some(AssetKind::Package)).await;
        if let Some(deb) = installed.ok().as_deref().and_then(newest) {
            return Ok(deb);
        }
        tracing::info!(
            "no guest kernel package: installing {DEBIAN_KERNEL_PACKAGE} through the debian-package provider"
        );
        let request = DownloadRequest {
            provider: ProviderKind::DebianPackage.as_str().to_owned(),
            vars: Default::default(),
        };
        let mut run = service
            .download(request, &Caller::Daemon)
            .await
            .map_err(|e| no_kernel(nexus_lib::error::error_chain(&e)))?;
        while let Some(event) = run.events.recv().await {
            match event {
                DownloadEvent::Done { assets } => {
                    return newest(&assets).ok_or_else(|| {
                        no_kernel(
                            "the provider installed no linux-image-*-cloud-amd64 package".into(),
                        )
                    });
                }
                DownloadEvent::Error { message, .. } => return Err(no_kernel(message)),
                DownloadEvent::Stage { stage, detail, .. } => {
                    tracing::info!(%stage, %detail, "guest kernel package");
                }
                _ => {}
            }
        }
        Err(no_kernel("the download ended without a result".into()))
    }
}

/// A versioned cloud kernel image package (`linux-image-6.1.0-41-cloud-amd64`), not the meta
/// package nor debug symbols.
pub(crate) fn is_cloud_kernel(name: &str) -> bool {
    name.strip_prefix("linux-image-")
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        && name.ends_with("-cloud-amd64")
}

/// Where to look for the agent when none is configured: next to the running nexusd, if the
/// binary there is statically linked (a dynamically linked agent cannot run in a minimal guest).
pub fn default_agent_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.with_file_name("nexus-agent");
    is_static_elf(&candidate).then_some(candidate)
}

/// Whether `path` is an ELF executable without a program interpreter: its program headers are
/// read and none is `PT_INTERP` (a dynamic executable names its loader there). Anything that is
/// not a well-formed ELF file is not static.
pub fn is_static_elf(path: &Path) -> bool {
    std::fs::File::open(path)
        .ok()
        .and_then(|f| has_interpreter(&f))
        .is_some_and(|interp| !interp)
}

/// Program header type of the interpreter request.
const PT_INTERP: u32 = 3;
/// More program headers than any real executable has; a bound on what a hostile file makes us read.
const MAX_PROGRAM_HEADERS_BYTES: usize = 64 * 1024;

/// Whether the ELF file `f` has a `PT_INTERP` program header; `None` when it is not ELF or its
/// headers are truncated or malformed.
fn has_interpreter(f: &std::fs::File) -> Option<bool> {
    use std::os::unix::fs::FileExt;
    let mut ident = [0u8; 64];
    f.read_exact_at(&mut ident, 0).ok()?;
    if &ident[..4] != b"\x7fELF" {
        return None;
    }
    let wide = match ident[4] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let big = match ident[5] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let int = |bytes: &[u8]| -> u64 {
        let shift = |v: u64, b: &u8| (v << 8) | u64::from(*b);
        if big {
            bytes.iter().fold(0, shift)
        } else {
            bytes.iter().rev().fold(0, shift)
        }
    };
    // e_phoff, e_phentsize, e_phnum (ELF64 and ELF32 layouts).
    let (phoff, phentsize, phnum) = if wide {
        (
            int(&ident[32..40]),
            int(&ident[54..56]),
            int(&ident[56..58]),
        )
    } else {
        (
            int(&ident[28..32]),
            int(&ident[42..44]),
            int(&ident[44..46]),
        )
    };
    let phentsize = usize::try_from(phentsize).ok()?;
    let table = phentsize.checked_mul(usize::try_from(phnum).ok()?)?;
    if phentsize < 4 || table > MAX_PROGRAM_HEADERS_BYTES {
        return None;
    }
    let mut headers = vec![0u8; table];
    f.read_exact_at(&mut headers, phoff).ok()?;
    Some(
        headers
            .chunks_exact(phentsize)
            .any(|ph| int(&ph[..4]) == u64::from(PT_INTERP)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_is_not_static() {
        assert!(!is_static_elf(Path::new("/bin/ls")));
    }

    #[test]
    fn a_static_executable_is_static() {
        assert!(is_static_elf(Path::new("/bin/busybox")));
    }

    #[test]
    fn a_static_binary_that_mentions_ld_linux_is_static() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent");
        let mut bytes = std::fs::read("/bin/busybox").unwrap();
        bytes.extend_from_slice(b"/lib64/ld-linux-x86-64.so.2");
        std::fs::write(&path, bytes).unwrap();

        assert!(is_static_elf(&path));
    }

    #[test]
    fn a_file_that_is_not_elf_is_not_static() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("script");
        std::fs::write(&path, b"#!/bin/sh\necho hi\n").unwrap();

        assert!(!is_static_elf(&path));
    }

    #[test]
    fn a_truncated_elf_header_is_not_static() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short");
        std::fs::write(&path, &std::fs::read("/bin/busybox").unwrap()[..40]).unwrap();

        assert!(!is_static_elf(&path));
    }
}
