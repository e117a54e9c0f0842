//! Wire types of assets (`/v1/assets`: kernels, Firecracker binaries, packages in the daemon's
//! content-addressed store) and of the providers whose pipelines download them
//! (`/v1/providers`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::pipeline::{MAX_VARS, Stage, validate_var};

/// What a provider is; decides the stages it may have and its default pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// A package by name from the host's own apt configuration.
    DebianPackage,
    /// A Firecracker release tarball and its published `.sha256.txt`.
    FirecrackerRelease,
    /// Any file with a checksum and optionally a signature.
    Url,
    /// A kernel built here from the distribution's kernel source package.
    KernelBuild,
    /// A Debian root filesystem built with mmdebstrap from the host's apt configuration.
    DebianRootfs,
}

impl ProviderKind {
    pub const ALL: [Self; 5] = [
        Self::DebianPackage,
        Self::FirecrackerRelease,
        Self::Url,
        Self::KernelBuild,
        Self::DebianRootfs,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::DebianPackage => "debian-package",
            Self::FirecrackerRelease => "firecracker-release",
            Self::Url => "url",
            Self::KernelBuild => "kernel-build",
            Self::DebianRootfs => "debian-rootfs",
        }
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ProviderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown provider kind {s:?}"))
    }
}

/// A provider's settings: where it downloads from, defaults of its template variables, and
/// what verification its source cannot offer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// The `{base_url}` of its stages (`asset_mirrors` in nexus.toml overrides it): http(s) or
    /// `file://` for an air-gapped directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Default values of template variables (at most 32: `version`, `package`, `arch`, ...); a download's
    /// own variables win.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
    /// The source publishes no signature: installing needs a checksum only.
    #[serde(default)]
    pub no_signature: bool,
    /// The source publishes no checksum either: files are installed unverified.
    #[serde(default)]
    pub no_checksum: bool,
}

impl ProviderSettings {
    /// Checks the variables' names, values and count.
    pub fn validate(&self) -> Result<(), String> {
        if self.vars.len() > MAX_VARS {
            return Err(format!("at most {MAX_VARS} vars"));
        }
        if let Some(base) = &self.base_url {
            validate_var("base_url", base)?;
        }
        for (k, v) in &self.vars {
            validate_var(k, v)?;
        }
        if self.no_checksum && !self.no_signature {
            return Err(
                "`no_checksum` needs `no_signature` too (a signature vouches for a checksum)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// A provider: a kind, settings and the pipeline its downloads run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    /// Shipped with nexusd: cannot be removed, refreshed at every start.
    pub builtin: bool,
    pub settings: ProviderSettings,
    pub stages: Vec<Stage>,
    /// RFC 3339, millisecond precision.
    pub created_at: String,
}

/// Body of `POST /v1/providers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProvider {
    /// `[a-z0-9][a-z0-9-]{0,62}`, unique.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub name: String,
    pub kind: ProviderKind,
    #[serde(default)]
    pub settings: ProviderSettings,
    /// The pipeline; default: the kind's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 32)]
    pub stages: Option<Vec<Stage>>,
}

/// What an asset is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AssetKind {
    Kernel,
    Rootfs,
    Firecracker,
    Jailer,
    Initrd,
    /// A package file kept as it was downloaded (a `.deb`).
    Package,
    File,
}

impl AssetKind {
    pub const ALL: [Self; 7] = [
        Self::Kernel,
        Self::Rootfs,
        Self::Firecracker,
        Self::Jailer,
        Self::Initrd,
        Self::Package,
        Self::File,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::Rootfs => "rootfs",
            Self::Firecracker => "firecracker",
            Self::Jailer => "jailer",
            Self::Initrd => "initrd",
            Self::Package => "package",
            Self::File => "file",
        }
    }
}

impl std::fmt::Display for AssetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AssetKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown asset kind {s:?}"))
    }
}

/// An installed asset: one file in the content-addressed store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Asset {
    pub id: Uuid,
    pub kind: AssetKind,
    pub name: String,
    pub version: String,
    /// sha256 of the file, lowercase hex; also its name in the store.
    pub sha256: String,
    pub size_bytes: u64,
    /// Where the file is on the daemon's host (`<data>/assets/sha256/<hex>`).
    pub path: String,
    /// The provider that installed it.
    pub provider: String,
    /// What it was made from: URLs and their hashes, the checksum and signature checked, the
    /// package version, the stages run.
    #[schema(value_type = Object)]
    pub inputs: serde_json::Value,
    /// RFC 3339, millisecond precision.
    pub created_at: String,
}

/// Query of `GET /v1/assets`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AssetListQuery {
    /// Only assets of this kind.
    #[serde(default)]
    pub kind: Option<AssetKind>,
}

/// Body of `POST /v1/assets/download`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DownloadRequest {
    /// Provider name.
    pub provider: String,
    /// Values of the pipeline's template variables (`version`, `package`, `url`, `sha256`, ...),
    /// over the provider's defaults.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
}

/// One line of the `POST /v1/assets/download` stream (newline-delimited JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DownloadEvent {
    /// A stage starts.
    Stage {
        /// 0-based index of the stage.
        index: usize,
        /// Number of stages.
        count: usize,
        stage: String,
        /// What it works on (a URL, a package, an artifact).
        detail: String,
    },
    /// Bytes done in the current stage.
    Progress {
        index: usize,
        bytes: u64,
        /// Bytes expected, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total: Option<u64>,
    },
    /// Something worth telling (a resumed download, the package version apt chose).
    Note { index: usize, message: String },
    /// The run finished: the assets it installed (or found installed already).
    Done { assets: Vec<Asset> },
    /// The run failed; nothing was installed.
    Error {
        code: String,
        message: String,
        /// The stage that failed, when one did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stage: Option<usize>,
    },
}

/// Answer of `POST /v1/assets/{asset}/verify`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AssetVerification {
    pub asset: Asset,
    /// The file is there and hashes to the recorded sha256 and size.
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_size: Option<u64>,
    pub message: String,
}
