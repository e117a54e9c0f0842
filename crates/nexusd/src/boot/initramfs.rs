//! The agent initramfs: `/init` is the static `nexus-agent`, `/modules/*.ko` plus `/modules/order`
//! are the drivers it loads before mounting the root drive. Cached by kernel release, agent
//! binary hash and module list.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

use super::modinfo::{ModuleIndex, read_module};
use super::{BootError, CpioWriter, KernelAsset};

/// Drivers for virtio-mmio block, net and vsock (plus console and rng) on Debian's cloud kernel.
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "vmw_vsock_virtio_transport",
    "virtio_console",
    "virtio-rng",
];

/// Builds (or reuses) `<cache_dir>/initramfs-<release>-<key>.cpio.gz`; returns its path.
pub fn build_initramfs(
    kernel: &KernelAsset,
    agent_bin: &Path,
    modules: &[&str],
    cache_dir: &Path,
) -> Result<PathBuf, BootError> {
    let agent = fs::read(agent_bin).map_err(BootError::io(agent_bin))?;
    let mut hasher = Sha256::new();
    hasher.update(&agent);
    hasher.update(modules.join(",").as_bytes());
    let key: String = hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let out = cache_dir.join(format!("initramfs-{}-{key}.cpio.gz", kernel.release));
    if out.is_file() {
        return Ok(out);
    }
    fs::create_dir_all(cache_dir).map_err(BootError::io(cache_dir))?;
    let order = ModuleIndex::scan(&kernel.modules_dir)?.load_order(modules)?;
    let temp = tempfile::NamedTempFile::new_in(cache_dir).map_err(BootError::io(cache_dir))?;
    let gz = GzEncoder::new(BufWriter::new(temp.as_file()), Compression::fast());
    write_archive(gz, &agent, &order)
        .and_then(|gz| gz.finish()?.flush())
        .map_err(BootError::io(temp.path()))?;
    // Readable by the unprivileged uid of a jailed VMM (it holds nothing secret).
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(temp.path(), fs::Permissions::from_mode(0o644))
            .map_err(BootError::io(temp.path()))?;
    }
    temp.persist(&out).map_err(|e| BootError::Io {
        path: out.clone(),
        source: e.error,
    })?;
    Ok(out)
}

fn write_archive<W: Write>(
    out: W,
    agent: &[u8],
    order: &[(String, PathBuf)],
) -> std::io::Result<W> {
    let mut cpio = CpioWriter::new(out);
    for dir in ["/dev", "/proc", "/sys", "/newroot", "/modules"] {
        cpio.dir(dir, 0o755)?;
    }
    // The kernel opens /dev/console for init's stdio before init runs.
    cpio.char_device("/dev/console", 0o600, 5, 1)?;
    cpio.file("/.nexus-initramfs", 0o644, b"")?;
    cpio.file("/init", 0o755, agent)?;
    let mut list = String::new();
    for (name, path) in order {
        let image = read_module(path).map_err(std::io::Error::other)?;
        cpio.file(&format!("/modules/{name}.ko"), 0o644, &image)?;
        list.push_str(&format!("{name}.ko\n"));
    }
    cpio.file("/modules/order", 0o644, list.as_bytes())?;
    cpio.finish()
}
