//! The boot assets every VM of the embedded default uses: Debian's cloud kernel unpacked from
//! its package, and the initramfs generated from its modules with the guest agent as `/init`.
//! Prepared once on first start (a second or two) and reused; a failure is retried next time.

use std::path::{Path, PathBuf};

use crate::boot::{self, BootError, DEFAULT_MODULES};

/// Kernel and initramfs ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub kernel: PathBuf,
    /// `None` for a kernel that needs no modules (the agent then boots from the root drive).
    pub initrd: Option<PathBuf>,
    pub release: String,
}

/// Why boot assets are unavailable.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error(
        "no guest agent binary: build it with scripts/build-agent.sh and set `agent_binary` (or put nexus-agent next to nexusd)"
    )]
    NoAgent,
    #[error(
        "no guest kernel package in {dir} (run scripts/fetch-kernel.sh {dir} or set `kernel_dir`)"
    )]
    NoKernel { dir: PathBuf },
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
}

impl BootAssets {
    /// `kernel_dir` holds the kernel `.deb`; `assets_dir` receives what is unpacked and built.
    pub fn new(kernel_dir: PathBuf, assets_dir: PathBuf, agent: Option<PathBuf>) -> Self {
        Self {
            kernel_dir,
            assets_dir,
            agent,
            ready: tokio::sync::Mutex::new(None),
        }
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
        let (kernel_dir, assets) = (self.kernel_dir.clone(), self.assets_dir.clone());
        let prepared = tokio::task::spawn_blocking(move || prepare(&kernel_dir, &assets, &agent))
            .await
            .map_err(AssetError::Worker)??;
        tracing::info!(kernel = %prepared.kernel.display(), initrd = ?prepared.initrd, "boot assets ready");
        *ready = Some(prepared.clone());
        Ok(prepared)
    }
}

fn prepare(kernel_dir: &Path, assets: &Path, agent: &Path) -> Result<Prepared, AssetError> {
    let deb = boot::find_kernel_deb(kernel_dir).map_err(|_| AssetError::NoKernel {
        dir: kernel_dir.to_owned(),
    })?;
    let kernel = boot::unpack_kernel_deb(&deb, assets)?;
    let initrd = boot::build_initramfs(&kernel, agent, DEFAULT_MODULES, &assets.join("initramfs"))?;
    Ok(Prepared {
        kernel: kernel.kernel,
        initrd: Some(initrd),
        release: kernel.release,
    })
}

/// Where to look for the agent when none is configured: next to the running nexusd, if the
/// binary there is statically linked (a dynamically linked agent cannot run in a minimal guest).
pub fn default_agent_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.with_file_name("nexus-agent");
    is_static_elf(&candidate).then_some(candidate)
}

/// Whether `path` is an ELF file without a program interpreter. The interpreter path of a
/// dynamic executable sits in its first page.
pub fn is_static_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 4096];
    let Ok(n) = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)) else {
        return false;
    };
    let head = &head[..n];
    head.starts_with(b"\x7fELF") && !head.windows(8).any(|w| w == b"ld-linux")
}
