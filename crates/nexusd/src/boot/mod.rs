//! Boot assets for the embedded default: Debian's cloud kernel unpacked from its `.deb`, an
//! initramfs generated in pure Rust (the agent as `/init` plus the virtio/vsock modules in
//! dependency order), and a busybox root filesystem for the quick start.
//!
//! Everything here is blocking file work: call it through `spawn_blocking`.

mod cpio;
mod initramfs;
mod kernel;
mod modinfo;
mod rootfs;

use std::path::PathBuf;

pub use cpio::CpioWriter;
pub use initramfs::{DEFAULT_MODULES, build_initramfs};
pub use kernel::{KernelAsset, find_kernel_deb, unpack_debian_kernel, unpack_kernel_deb};
pub use rootfs::{ROOT_AGENT_PATH, RootfsOptions, build_busybox_rootfs};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no linux-image-*-cloud-amd64 .deb in {} (fetch one with scripts/fetch-kernel.sh)", dir.display())]
    NoKernelDeb { dir: PathBuf },
    #[error(transparent)]
    Tool(#[from] crate::command::CommandError),
    #[error("{} holds no boot/vmlinuz-*", dir.display())]
    NoVmlinuz { dir: PathBuf },
    #[error("kernel module {name} not found under {}", dir.display())]
    ModuleMissing { name: String, dir: PathBuf },
    #[error("kernel module {}: {reason}", path.display())]
    BadModule { path: PathBuf, reason: String },
    #[error("module dependency cycle through {name}")]
    DependencyCycle { name: String },
}

impl BootError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
