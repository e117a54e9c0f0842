//! Assets: kernels, Firecracker binaries and packages, downloaded by pipelines that are data
//! (a provider's stages, stored as JSON in the database) and kept in a content-addressed store.
//!
//! Layout under `<data>/assets/`: `sha256/<hex>` the installed files (read-only, named by their
//! hash), `partial/` interrupted http(s) downloads waiting to be resumed, `tmp/` the staging
//! directory of each run (removed when the run ends, and at start-up). A run works only in its
//! staging directory; its files reach `sha256/` by `rename` and become assets by one database
//! transaction at its very end, so a failed or interrupted run installs nothing.
//!
//! The modules, one per stage or concern: `fetch` (http(s) with resume, `file://`), `apt` (the
//! Debian-package source), `checksum`, `signature` (OpenPGP, pinned keys), `decompress`,
//! `extract` (tar, `.deb`), `convert` (bzImage → vmlinux), `hashio` (hashing writers and copies),
//! `mmdebstrap` and `apt_sources` (a Debian root filesystem built from the host's apt
//! configuration), `progress` (the event stream), `engine` (runs a pipeline), `install` (the content-addressed
//! store and the final commit), `builtin` (the providers shipped with nexusd and the default
//! pipeline of each kind), `service` (what the API calls).
//!
//! The `kernel-build` stage (`kernel_stage`) runs the kernel build (`kernel_build`) in its cache
//! (`kernel-build/`, or `kernel_build_dir`) and signs it with the key nexusd generates on first
//! use and pins (`build_key`, under `keys/`).

pub mod apt;
pub mod apt_sources;
pub mod build_key;
pub mod builtin;
pub mod checksum;
pub mod convert;
pub mod decompress;
pub mod engine;
pub mod extract;
pub mod fetch;
pub mod hashio;
pub mod install;
pub mod kernel_build;
mod kernel_stage;
pub mod key_validity;
pub mod mmdebstrap;
pub mod progress;
pub mod service;
pub mod signature;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use engine::{Engine, RunError};
pub use service::{AssetError, AssetService};

/// The directories of the asset store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetDirs {
    pub root: PathBuf,
}

impl AssetDirs {
    /// The store under the data directory: `<data>/assets`.
    pub fn under(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("assets"),
        }
    }

    /// Installed files, by sha256.
    pub fn store(&self) -> PathBuf {
        self.root.join("sha256")
    }

    /// Interrupted downloads.
    pub fn partial(&self) -> PathBuf {
        self.root.join("partial")
    }

    /// Staging directories of runs.
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The key nexusd signs its builds with (`build_key`).
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }

    /// The kernel build cache, unless `kernel_build_dir` names another.
    pub fn kernel_build(&self) -> PathBuf {
        self.root.join("kernel-build")
    }
}

/// Bounds on what a run may take (config keys `asset_*`); a stage may ask for less, never more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssetLimits {
    /// `asset_max_download_bytes`.
    pub max_download_bytes: u64,
    /// `asset_max_unpacked_bytes`: decompressed, extracted or converted output.
    pub max_unpacked_bytes: u64,
    /// `asset_max_entries` of one archive.
    pub max_entries: u64,
    /// `asset_fetch_idle_timeout_secs`.
    pub fetch_idle_timeout: Duration,
    /// `asset_fetch_timeout_secs`.
    pub fetch_timeout: Duration,
}

impl AssetLimits {
    pub const DEFAULT: Self = Self {
        max_download_bytes: 8 << 30,
        max_unpacked_bytes: 16 << 30,
        max_entries: 200_000,
        fetch_idle_timeout: Duration::from_secs(60),
        fetch_timeout: Duration::from_secs(6 * 3600),
    };
}

impl Default for AssetLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The asset settings of one daemon.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssetSettings {
    pub limits: AssetLimits,
    /// `asset_keys`: OpenPGP fingerprint → public key file.
    pub keys: BTreeMap<String, PathBuf>,
    /// `asset_mirrors`: provider name → base URL replacing its `base_url`.
    pub mirrors: BTreeMap<String, String>,
    /// `kernel_build_dir`: the kernel build cache (default `<data>/assets/kernel-build`).
    pub kernel_build_dir: Option<PathBuf>,
}
