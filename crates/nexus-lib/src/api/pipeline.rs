//! Download pipelines as data: the stages a provider runs (`fetch`, `checksum`, `signature`,
//! `decompress`, `extract`, `convert`, `install`, and `kernel-build`), their JSON form, and the
//! checks every stored pipeline passes (bounds, artifact references, and that every installed
//! file is verified as strongly as its provider promises).
//!
//! Stages pass *artifacts* to each other by name: a `fetch` writes one (`into`), later stages
//! read it (`artifact`). An `extract` makes a tree; stages reading a tree name one file of it
//! with `member`, a pattern that must match exactly one file. Strings of stages are templates:
//! `{var}` is replaced at run time from the download's variables (see [`render`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::assets::{AssetKind, ProviderKind, ProviderSettings};

#[path = "pipeline_rootfs.rs"]
mod rootfs;
pub use rootfs::*;
#[path = "pipeline_schema.rs"]
mod schema;
#[path = "pipeline_validate.rs"]
mod validate;
pub use validate::*;

/// Most stages in one pipeline.
pub const MAX_STAGES: usize = 32;
/// Longest template (URL, name, pattern), in bytes.
pub const MAX_TEMPLATE_LEN: usize = 2048;
/// Most `members` of an `extract` and most `keys` of a `signature`.
pub const MAX_LIST: usize = 16;
/// Largest byte bound a stage may ask for (1 TiB); the daemon's own limits apply on top.
pub const MAX_STAGE_BYTES: u64 = 1 << 40;
/// Longest time bound a stage may ask for.
pub const MAX_STAGE_SECS: u64 = 86_400;
/// Most template variables in a download or a provider's settings.
pub const MAX_VARS: usize = 32;
/// Longest variable value, in bytes.
pub const MAX_VAR_LEN: usize = 2048;

/// One stage of a pipeline: `{"stage": "fetch", ...}`. Its OpenAPI schema is written by hand
/// (`pipeline_schema.rs`): utoipa would describe each variant as `allOf` of the stage's object (which
/// forbids other properties) and the `stage` tag, which no value can satisfy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "kebab-case")]
pub enum Stage {
    Fetch(FetchStage),
    Checksum(ChecksumStage),
    Signature(SignatureStage),
    Decompress(DecompressStage),
    Extract(ExtractStage),
    Convert(ConvertStage),
    Install(InstallStage),
    KernelBuild(KernelBuildStage),
    Mmdebstrap(MmdebstrapStage),
}

impl Stage {
    /// The stage's name as written in JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Fetch(_) => "fetch",
            Self::Checksum(_) => "checksum",
            Self::Signature(_) => "signature",
            Self::Decompress(_) => "decompress",
            Self::Extract(_) => "extract",
            Self::Convert(_) => "convert",
            Self::Install(_) => "install",
            Self::KernelBuild(_) => "kernel-build",
            Self::Mmdebstrap(_) => "mmdebstrap",
        }
    }
}

/// Downloads a file into the artifact `into`, hashing it (sha256) while it streams. Over
/// http(s) an interrupted download is kept and resumed with `Range` by the next run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchStage {
    pub source: FetchSource,
    /// The artifact written.
    pub into: String,
    /// Refuse a file larger than this (default and ceiling: the daemon's
    /// `asset_max_download_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Give up when no byte arrives for this long (default `asset_fetch_idle_timeout_secs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    /// Give up when the whole fetch takes longer (default `asset_fetch_timeout_secs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// Where a `fetch` reads from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FetchSource {
    /// An `http://`, `https://` or `file://` URL template, e.g. `{base_url}/v{version}/x.tgz`.
    Url(String),
    /// A Debian package from the host's own apt configuration, verified by apt (signed
    /// `Release`, package hash) and against the SHA256 of its index entry.
    Apt(AptSource),
}

/// A package fetched with `apt-get download`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AptSource {
    /// Package name template, e.g. `{package}`.
    pub package: String,
    /// When set and the package depends on a package whose name starts with this, fetch that
    /// dependency instead (a meta package: `linux-image-` turns `linux-image-cloud-amd64` into
    /// `linux-image-6.1.0-56-cloud-amd64`); a package without such a dependency is fetched
    /// itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_depends: Option<String>,
}

/// Compares the sha256 of an artifact (computed when it was written) with an expected value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChecksumStage {
    /// The checked artifact (a file).
    pub artifact: String,
    pub expected: Expected,
}

/// Where the expected sha256 comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Expected {
    /// The value itself (64 hex digits, or a template such as `{sha256}`).
    Sha256(String),
    /// A line of a checksum file (`SHA256SUMS`, `*.sha256.txt`: `<hex>  <name>`) fetched by the
    /// pipeline.
    File(ChecksumFile),
}

/// A checksum file and the entry to read from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChecksumFile {
    /// The artifact holding the checksum file.
    pub artifact: String,
    /// File name template of the entry.
    pub entry: String,
}

/// Verifies an OpenPGP detached signature over an artifact (usually a checksum file) with keys
/// pinned in the daemon's config by fingerprint (`asset_keys`), never with a key from the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignatureStage {
    /// The signed artifact.
    pub artifact: String,
    /// The artifact holding the detached signature (armored or binary).
    pub signature: String,
    /// Fingerprints (40 or 64 hex digits) of the keys allowed to have signed it.
    #[schema(max_items = 16)]
    pub keys: Vec<String>,
}

/// A compression format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Told by the file's first bytes.
    Auto,
    None,
    Gz,
    Xz,
    Zstd,
    /// LZ4 frames, or the legacy format of `lz4 -l` that kernels use.
    Lz4,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::None => "none",
            Self::Gz => "gz",
            Self::Xz => "xz",
            Self::Zstd => "zstd",
            Self::Lz4 => "lz4",
        }
    }
}

/// Decompresses an artifact into a new one, streamed, with a bound on the output size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecompressStage {
    pub artifact: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    pub format: Compression,
    pub into: String,
    /// Most bytes of output (default and ceiling: `asset_max_unpacked_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// An archive format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveFormat {
    Tar,
    /// A Debian package: its `data.tar.*`.
    Deb,
}

/// Unpacks a tar archive or a Debian package into a tree. Refused: `..` or absolute paths,
/// absolute symlinks, symlinks or hard links leading out of the tree, device nodes and FIFOs,
/// paths through a symlink of the archive, more entries or bytes than the bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractStage {
    pub artifact: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    pub format: ArchiveFormat,
    /// Compression of a tar archive (a `.deb` names its own).
    #[serde(default = "compression_auto")]
    pub compression: Compression,
    pub into: String,
    /// Only entries matching one of these patterns are written (every entry is still checked).
    /// Empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 16)]
    pub members: Vec<String>,
    /// Most entries (default and ceiling: `asset_max_entries`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<u64>,
    /// Most bytes unpacked (default and ceiling: `asset_max_unpacked_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

fn compression_auto() -> Compression {
    Compression::Auto
}

/// What a `convert` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ConvertTarget {
    /// The ELF `vmlinux` inside an x86 bzImage (its compressed payload, decompressed and checked
    /// to be an x86-64 ELF executable).
    Vmlinux,
}

/// Turns an artifact into another form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConvertStage {
    pub artifact: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    pub to: ConvertTarget,
    pub into: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// Puts a verified file into the content-addressed store and records it as an asset. All
/// installs of a run happen together at its end, or none does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallStage {
    pub artifact: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// The asset kind (`kernel`, `rootfs`, `firecracker`, `jailer`, `initrd`, `package`,
    /// `file`), or a template such as `{kind}`.
    pub kind: String,
    /// Name template of the asset.
    pub name: String,
    /// Version template of the asset.
    pub version: String,
    /// Install it executable (a VMM binary).
    #[serde(default)]
    pub executable: bool,
}

/// Builds a kernel from the distribution's source package (the `kernel-build` provider kind);
/// the build itself lives in its own module of the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KernelBuildStage {
    /// The artifact holding the kernel source: a `linux-source-*` `.deb` (or its
    /// `linux-source-*.tar.xz`), verified (apt, or a signature).
    pub source: String,
    /// The tree written: `vmlinux`, `bzImage`, `config`, `SHA256SUMS` and its signature by
    /// nexusd's build key, `inputs.json`, `build.log`.
    pub into: String,
    /// Options of the build, as templates: `jobs` (parallel `make` jobs), `rebuild`
    /// (`true` builds even when the outputs of these inputs exist).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

impl Stage {
    /// Every template string of the stage.
    pub fn templates(&self) -> Vec<&str> {
        fn opt(o: &Option<String>) -> Vec<&str> {
            o.as_deref().into_iter().collect()
        }
        match self {
            Self::Fetch(f) => match &f.source {
                FetchSource::Url(u) => vec![u.as_str()],
                FetchSource::Apt(a) => [vec![a.package.as_str()], opt(&a.follow_depends)].concat(),
            },
            Self::Checksum(c) => match &c.expected {
                Expected::Sha256(v) => vec![v.as_str()],
                Expected::File(f) => vec![f.entry.as_str()],
            },
            Self::Signature(_) => Vec::new(),
            Self::Decompress(d) => opt(&d.member),
            Self::Extract(x) => [
                opt(&x.member),
                x.members.iter().map(String::as_str).collect(),
            ]
            .concat(),
            Self::Convert(c) => opt(&c.member),
            Self::Install(i) => {
                [opt(&i.member), vec![i.kind.as_str(), &i.name, &i.version]].concat()
            }
            Self::KernelBuild(b) => b.options.values().map(String::as_str).collect(),
            Self::Mmdebstrap(m) => m.templates(),
        }
    }

    /// The variables the stage sets for the stages after it.
    pub fn sets_vars(&self) -> &'static [&'static str] {
        match self {
            Self::Fetch(FetchStage {
                source: FetchSource::Apt(_),
                ..
            }) => &["apt_package", "apt_version"],
            Self::Mmdebstrap(_) => &["rootfs_version"],
            Self::KernelBuild(_) => &["kernel_release", "kernel_version"],
            _ => &[],
        }
    }
}

/// The variables `stages` use that neither `vars` nor an earlier stage provides, in order.
pub fn missing_vars<'a>(stages: &'a [Stage], vars: &BTreeMap<String, String>) -> Vec<&'a str> {
    let mut set: Vec<&str> = Vec::new();
    let mut missing = Vec::new();
    for stage in stages {
        for t in stage.templates() {
            for var in template_vars(t).unwrap_or_default() {
                if !vars.contains_key(var) && !set.contains(&var) && !missing.contains(&var) {
                    missing.push(var);
                }
            }
        }
        set.extend(stage.sets_vars());
    }
    missing
}

/// How far an artifact's content is vouched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trust {
    /// Nothing checked it.
    None,
    /// Its sha256 matched a value given inline or read from an unsigned checksum file.
    Checksummed,
    /// A pinned key's signature covers it (directly or through a signed checksum file), or apt
    /// verified it.
    Signed,
}

/// The trust an installed file needs under a provider's declarations.
pub fn required_trust(settings: &ProviderSettings) -> Trust {
    if !settings.no_signature {
        Trust::Signed
    } else if !settings.no_checksum {
        Trust::Checksummed
    } else {
        Trust::None
    }
}

/// Whether `name` is an artifact name: `[a-z][a-z0-9_]{0,31}`.
pub fn valid_artifact_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Whether `name` is a template variable name: `[a-z][a-z0-9_]{0,31}`.
pub fn valid_var_name(name: &str) -> bool {
    valid_artifact_name(name)
}

/// The variables a template uses, in order; an error for unbalanced braces or bad names.
pub fn template_vars(template: &str) -> Result<Vec<&str>, String> {
    if template.len() > MAX_TEMPLATE_LEN {
        return Err(format!("longer than {MAX_TEMPLATE_LEN} bytes"));
    }
    if template.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    let mut vars = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err(format!("{template:?} has a '}}' without '{{'"));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("{template:?} has a '{{' without '}}'"))?;
        let name = &after[..close];
        if !valid_var_name(name) {
            return Err(format!("{template:?} uses {{{name}}}, not a variable name"));
        }
        vars.push(name);
        rest = &after[close + 1..];
    }
    Ok(vars)
}

/// Replaces every `{var}` of `template`; the error names a variable that has no value.
pub fn render(template: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("{template:?} has a '{{' without '}}'"))?;
        let name = &after[..close];
        let value = vars
            .get(name)
            .ok_or_else(|| format!("no value for {{{name}}}"))?;
        out.push_str(value);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks a variable's value: URLs (`url`, `base_url`) are printable without spaces, `sha256` is
/// 64 hex digits, `suite`, `variant` and `packages` follow Debian's rules ([`check_suite`],
/// [`check_variant`], [`parse_packages`]), anything else is a word of `[A-Za-z0-9.+~:_-]` (so it
/// cannot add a path component or a query to a URL).
pub fn validate_var(name: &str, value: &str) -> Result<(), String> {
    if !valid_var_name(name) {
        return Err(format!(
            "{name:?} is not a variable name ([a-z][a-z0-9_]{{0,31}})"
        ));
    }
    if value.is_empty() || value.len() > MAX_VAR_LEN {
        return Err(format!("{name}: 1 to {MAX_VAR_LEN} bytes"));
    }
    let ok = match name {
        "url" | "base_url" => value.chars().all(|c| c.is_ascii_graphic()),
        "sha256" => value.len() == 64 && value.chars().all(|c| c.is_ascii_hexdigit()),
        "suite" => return check_suite(value),
        "variant" => return check_variant(value),
        "packages" => return parse_packages(value).map(drop),
        _ => {
            value.len() <= 128
                && !value.starts_with(['.', '-'])
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".+~:_-".contains(c))
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{name}: {value:?} is not allowed here"))
    }
}

/// Whether `fpr` is an OpenPGP v4 (40 hex digits) or v6 (64) fingerprint.
pub fn valid_fingerprint(fpr: &str) -> bool {
    matches!(fpr.len(), 40 | 64) && fpr.chars().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
