//! Runs a provider's pipeline: renders each stage's templates, runs it (blocking work on
//! blocking threads), tracks what each artifact is and how far it is vouched for, and stages the
//! files to install. Installing them is [`super::install::commit`], done by the caller once every
//! stage passed.

mod kernel;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nexus_lib::api::pipeline::{
    self, Expected, FetchSource, Stage, Trust, render, required_trust, validate_var,
};
use nexus_lib::api::{AssetKind, Provider};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::apt::{self, AptError};
use super::checksum::{self, ChecksumError};
use super::convert::{self, ConvertError};
use super::decompress::{self, DecompressError};
use super::extract::{self, ExtractBounds, ExtractError, Tree};
use super::fetch::{self, FetchBounds, FetchError, Fetcher};
use super::kernel_build::KernelBuildError;
use super::kernel_stage::KernelStageError;
use super::mmdebstrap::MmdebstrapError;
use super::progress::Progress;
use super::signature::{self, SignatureError};
use super::{AssetDirs, AssetSettings};
use crate::hostpath::{Caller, HostPathError, ImportPolicy};

/// Why one stage failed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Apt(#[from] AptError),
    #[error(transparent)]
    Checksum(#[from] ChecksumError),
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error(transparent)]
    Decompress(#[from] DecompressError),
    #[error(transparent)]
    Extract(#[from] ExtractError),
    #[error(transparent)]
    Convert(#[from] ConvertError),
    #[error(transparent)]
    Mmdebstrap(#[from] MmdebstrapError),
    #[error("{path}: not allowed")]
    HostPath {
        path: String,
        #[source]
        source: HostPathError,
    },
    /// A template, a variable or a URL that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// A file about to be installed lacks the verification its provider promises.
    #[error("{0}")]
    Unverified(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    KernelBuild(#[from] KernelStageError),
    #[error("worker failed")]
    Worker(#[source] tokio::task::JoinError),
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("stage {index} ({stage})")]
    Stage {
        index: usize,
        stage: &'static str,
        #[source]
        source: StageError,
    },
    #[error("cannot create the staging directory under {path}")]
    Staging {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cancelled: the client went away or nexusd is stopping")]
    Cancelled,
}

impl RunError {
    /// The stage that failed, when one did.
    pub fn stage(&self) -> Option<usize> {
        match self {
            Self::Stage { index, .. } => Some(*index),
            _ => None,
        }
    }

    /// A stable code for clients: what went wrong, not where.
    pub fn code(&self) -> &'static str {
        let Self::Stage { source, .. } = self else {
            return match self {
                Self::Cancelled => "cancelled",
                _ => "internal",
            };
        };
        match source {
            StageError::Fetch(e) => match e {
                FetchError::Status { .. } => "http_status",
                FetchError::Http { .. } => "unreachable",
                FetchError::Stalled { .. } => "stalled",
                FetchError::TimedOut { .. } => "timeout",
                FetchError::TooLarge { .. } => "too_large",
                FetchError::Truncated { .. } | FetchError::BadRange { .. } => "truncated",
                FetchError::Busy { .. } => "busy",
                FetchError::Cancelled => "cancelled",
                FetchError::Io { .. } => "io",
            },
            StageError::Apt(AptError::Mismatch { .. }) => "checksum_mismatch",
            StageError::Apt(AptError::NotFound { .. }) => "not_found",
            StageError::Apt(AptError::Cancelled) => "cancelled",
            StageError::Apt(_) => "apt",
            StageError::Checksum(ChecksumError::Mismatch { .. }) => "checksum_mismatch",
            StageError::Checksum(_) => "checksum",
            StageError::Signature(SignatureError::UnknownKey { .. }) => "unknown_key",
            StageError::Signature(SignatureError::NotPinned { .. }) => "key_not_pinned",
            StageError::Signature(
                SignatureError::Bad { .. }
                | SignatureError::SignedInFuture { .. }
                | SignatureError::SignedBeforeKey { .. },
            ) => "bad_signature",
            StageError::Signature(SignatureError::NotSigningKey { .. }) => "unknown_key",
            StageError::Signature(SignatureError::Revoked { .. }) => "key_revoked",
            StageError::Signature(SignatureError::KeyExpired { .. }) => "key_expired",
            StageError::Signature(SignatureError::SignatureExpired { .. }) => "signature_expired",
            StageError::Signature(
                SignatureError::WeakHash { .. } | SignatureError::WeakKey { .. },
            ) => "weak_algorithm",
            StageError::Signature(_) => "signature",
            StageError::Decompress(DecompressError::Bomb { .. })
            | StageError::Extract(ExtractError::TooBig { .. })
            | StageError::Convert(ConvertError::Decompress(DecompressError::Bomb { .. })) => {
                "decompression_bomb"
            }
            StageError::Extract(ExtractError::Unsafe { .. }) => "unsafe_archive",
            StageError::Extract(ExtractError::TooManyEntries { .. }) => "too_many_entries",
            StageError::Decompress(DecompressError::Cancelled)
            | StageError::Extract(ExtractError::Cancelled) => "cancelled",
            StageError::Decompress(_) | StageError::Extract(_) | StageError::Convert(_) => {
                "corrupt"
            }
            StageError::Mmdebstrap(e) => match e {
                MmdebstrapError::Invalid(_) => "invalid",
                MmdebstrapError::TimedOut { .. } => "timeout",
                MmdebstrapError::Cancelled => "cancelled",
                _ => "mmdebstrap",
            },
            StageError::HostPath { .. } => "forbidden",
            StageError::Invalid(_) => "invalid",
            StageError::Unverified(_) => "unverified",
            StageError::Unsupported(_) => "unsupported",
            StageError::KernelBuild(KernelStageError::Build(KernelBuildError::Cancelled)) => {
                "cancelled"
            }
            StageError::KernelBuild(
                KernelStageError::Signature(_) | KernelStageError::Mismatch { .. },
            ) => "bad_signature",
            StageError::KernelBuild(_) => "kernel_build",
            StageError::Worker(_) => "internal",
        }
    }
}

/// An artifact of a run.
#[derive(Debug, Clone)]
enum Artifact {
    File {
        path: PathBuf,
        sha256: String,
        size: u64,
        trust: Trust,
    },
    Tree {
        tree: Tree,
        trust: Trust,
    },
}

/// One file of an artifact, as a later stage reads it.
#[derive(Debug, Clone)]
struct FileRef {
    path: PathBuf,
    shown: String,
    sha256: String,
    size: u64,
    executable: bool,
    trust: Trust,
}

/// A file a run will install.
#[derive(Debug, Clone)]
pub struct Staged {
    pub kind: AssetKind,
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
    /// The staged file (inside the run's staging directory).
    pub path: PathBuf,
    pub executable: bool,
    pub inputs: serde_json::Value,
}

/// What a run produced: files to install, and the staging directory that holds them (removed
/// when dropped).
#[derive(Debug)]
pub struct Prepared {
    pub staged: Vec<Staged>,
    pub staging: tempfile::TempDir,
}

/// The pipeline runner of one daemon.
#[derive(Debug, Clone)]
pub struct Engine {
    pub dirs: AssetDirs,
    settings: Arc<AssetSettings>,
    fetcher: Fetcher,
    host_files: Arc<ImportPolicy>,
}

/// The state of one run.
struct Run<'a> {
    engine: &'a Engine,
    provider: &'a Provider,
    caller: &'a Caller,
    vars: BTreeMap<String, String>,
    artifacts: HashMap<String, Artifact>,
    steps: Vec<serde_json::Value>,
    staged: Vec<Staged>,
    staging: PathBuf,
    cancel: &'a CancellationToken,
}

/// Runs blocking `f` on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StageError> + Send + 'static,
) -> Result<T, StageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(StageError::Worker)?
}

/// The smaller of a stage's own bound and the daemon's.
fn bound(stage: Option<u64>, daemon: u64) -> u64 {
    stage.map_or(daemon, |s| s.min(daemon))
}

/// The shorter of a stage's own time bound and the daemon's.
fn time_bound(stage_secs: Option<u64>, daemon: Duration) -> Duration {
    stage_secs.map_or(daemon, |s| Duration::from_secs(s).min(daemon))
}

/// Whether `name` can name an asset: `[a-z0-9][a-z0-9.+_-]{0,127}`.
fn valid_asset_name(name: &str) -> bool {
    name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".+_-".contains(c))
}

impl Engine {
    pub fn new(
        dirs: AssetDirs,
        settings: AssetSettings,
        host_files: Arc<ImportPolicy>,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            fetcher: Fetcher::new(dirs.partial())?,
            dirs,
            settings: Arc::new(settings),
            host_files,
        })
    }

    pub fn settings(&self) -> &AssetSettings {
        &self.settings
    }

    /// Drops downloads nobody resumed for a week (see `fetch`). Blocking.
    pub fn remove_stale_parts(&self) -> usize {
        self.fetcher
            .remove_stale_parts(super::fetch::PARTIAL_MAX_AGE)
    }

    /// The variables of a run: the provider's defaults, `arch`, its base URL (a configured
    /// mirror wins), then the request's own.
    pub fn vars(
        &self,
        provider: &Provider,
        request: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut vars = BTreeMap::from([("arch".to_string(), std::env::consts::ARCH.to_string())]);
        vars.extend(provider.settings.vars.clone());
        let base = self
            .settings
            .mirrors
            .get(&provider.name)
            .or(provider.settings.base_url.as_ref());
        if let Some(base) = base {
            vars.insert("base_url".into(), base.trim_end_matches('/').to_owned());
        }
        if request.len() > pipeline::MAX_VARS {
            return Err(format!("at most {} vars", pipeline::MAX_VARS));
        }
        for (k, v) in request {
            validate_var(k, v)?;
            vars.insert(k.clone(), v.clone());
        }
        let missing = pipeline::missing_vars(&provider.stages, &vars);
        if !missing.is_empty() {
            return Err(format!(
                "provider {} needs {} (give {})",
                provider.name,
                missing.join(", "),
                missing
                    .iter()
                    .map(|v| format!("--set {v}=…"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        Ok(vars)
    }

    /// Runs every stage of `provider` with `vars`; the files to install come back staged.
    pub async fn prepare(
        &self,
        provider: &Provider,
        vars: BTreeMap<String, String>,
        caller: &Caller,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<Prepared, RunError> {
        let tmp = self.dirs.tmp();
        let staging = std::fs::create_dir_all(&tmp)
            .and_then(|()| tempfile::Builder::new().prefix("run-").tempdir_in(&tmp))
            .map_err(|source| RunError::Staging { path: tmp, source })?;
        let mut run = Run {
            engine: self,
            provider,
            caller,
            vars,
            artifacts: HashMap::new(),
            steps: Vec::new(),
            staged: Vec::new(),
            staging: staging.path().to_owned(),
            cancel,
        };
        let count = provider.stages.len();
        for (index, stage) in provider.stages.iter().enumerate() {
            if cancel.is_cancelled() {
                return Err(RunError::Cancelled);
            }
            run.stage(index, count, stage, progress)
                .await
                .map_err(|source| match source {
                    StageError::Fetch(FetchError::Cancelled)
                    | StageError::Apt(AptError::Cancelled)
                    | StageError::Decompress(DecompressError::Cancelled)
                    | StageError::Extract(ExtractError::Cancelled)
                    | StageError::Mmdebstrap(MmdebstrapError::Cancelled)
                        if cancel.is_cancelled() =>
                    {
                        RunError::Cancelled
                    }
                    source => RunError::Stage {
                        index,
                        stage: stage.name(),
                        source,
                    },
                })?;
        }
        let inputs = json!({
            "provider": provider.name,
            "provider_kind": provider.kind,
            "vars": run.vars,
            "steps": run.steps,
        });
        for staged in &mut run.staged {
            staged.inputs = inputs.clone();
        }
        Ok(Prepared {
            staged: run.staged,
            staging,
        })
    }
}

impl Run<'_> {
    fn render(&self, template: &str) -> Result<String, StageError> {
        render(template, &self.vars).map_err(StageError::Invalid)
    }

    /// One file of an artifact: the artifact itself, or the tree member matching `member`.
    fn file(&self, artifact: &str, member: Option<&str>) -> Result<FileRef, StageError> {
        let missing = || StageError::Invalid(format!("no artifact {artifact:?}"));
        match (self.artifacts.get(artifact).ok_or_else(missing)?, member) {
            (
                Artifact::File {
                    path,
                    sha256,
                    size,
                    trust,
                },
                None,
            ) => Ok(FileRef {
                path: path.clone(),
                shown: artifact.to_owned(),
                sha256: sha256.clone(),
                size: *size,
                executable: false,
                trust: *trust,
            }),
            (Artifact::Tree { tree, trust }, Some(pattern)) => {
                let pattern = self.render(pattern)?;
                let (rel, file) = tree.find(&pattern).map_err(StageError::Invalid)?;
                Ok(FileRef {
                    path: tree.root.join(rel),
                    shown: format!("{artifact}/{rel}"),
                    sha256: file.sha256.clone(),
                    size: file.size,
                    executable: file.executable,
                    trust: *trust,
                })
            }
            _ => Err(StageError::Invalid(format!(
                "{artifact:?} is read with the wrong shape (a tree needs a member, a file has none)"
            ))),
        }
    }

    fn out_path(&self, into: &str) -> Result<PathBuf, StageError> {
        if !pipeline::valid_artifact_name(into) || self.artifacts.contains_key(into) {
            return Err(StageError::Invalid(format!("{into:?} cannot be written")));
        }
        Ok(self.staging.join(into))
    }

    async fn stage(
        &mut self,
        index: usize,
        count: usize,
        stage: &Stage,
        progress: &Progress,
    ) -> Result<(), StageError> {
        let limits = self.engine.settings.limits;
        let cancel = self.cancel.clone();
        match stage {
            Stage::Fetch(f) => self.fetch(index, count, f, progress).await,
            Stage::Checksum(c) => {
                let detail = match &c.expected {
                    Expected::Sha256(_) => c.artifact.clone(),
                    Expected::File(sums) => format!("{} against {}", c.artifact, sums.artifact),
                };
                progress.stage(index, count, "checksum", detail);
                let file = self.file(&c.artifact, None)?;
                let (expected, origin, vouched) = match &c.expected {
                    Expected::Sha256(v) => {
                        let v = self.render(v)?;
                        validate_var("sha256", &v).map_err(StageError::Invalid)?;
                        let origin = "pinned in the provider or the request".to_string();
                        (v, origin, Trust::Checksummed)
                    }
                    Expected::File(sums) => {
                        let list = self.file(&sums.artifact, None)?;
                        let entry = self.render(&sums.entry)?;
                        let (path, name) = (list.path.clone(), list.shown.clone());
                        let text = blocking(move || Ok(checksum::read_sums(&path, &name)?)).await?;
                        let expected = checksum::lookup(&text, &list.shown, &entry)?;
                        let trust = if list.trust == Trust::Signed {
                            Trust::Signed
                        } else {
                            Trust::Checksummed
                        };
                        (
                            expected,
                            format!("entry {entry:?} of {:?}", list.shown),
                            trust,
                        )
                    }
                };
                checksum::compare(&c.artifact, &file.sha256, &expected, origin.clone())?;
                self.raise_trust(&c.artifact, vouched);
                self.steps.push(json!({"checksum": {"artifact": c.artifact, "sha256": file.sha256, "from": origin}}));
                Ok(())
            }
            Stage::Signature(s) => {
                let p = progress.stage(
                    index,
                    count,
                    "signature",
                    format!("{} by {}", s.artifact, s.signature),
                );
                let data = self.file(&s.artifact, None)?;
                let sig = self.file(&s.signature, None)?;
                let keys = self.engine.settings.keys.clone();
                let allowed = s.keys.clone();
                let key = blocking(move || {
                    Ok(signature::verify(
                        &keys,
                        &allowed,
                        &data.path,
                        &data.shown,
                        &sig.path,
                        &sig.shown,
                    )?)
                })
                .await?;
                p.note(format!("good signature by {key}"));
                self.raise_trust(&s.artifact, Trust::Signed);
                self.steps
                    .push(json!({"signature": {"artifact": s.artifact, "key": key}}));
                Ok(())
            }
            Stage::Decompress(d) => {
                let input = self.file(&d.artifact, d.member.as_deref())?;
                let dest = self.out_path(&d.into)?;
                let p = progress.stage(index, count, "decompress", input.shown.clone());
                let limit = bound(d.max_bytes, limits.max_unpacked_bytes);
                let (format, out) = (d.format, dest.clone());
                let src = input.clone();
                let (sha256, size) = blocking(move || {
                    Ok(decompress::decompress_file(
                        &src.path, &src.shown, &out, format, limit, &p, &cancel,
                    )?)
                })
                .await?;
                self.file_artifact(&d.into, dest, sha256, size, input.trust);
                Ok(())
            }
            Stage::Extract(x) => {
                let input = self.file(&x.artifact, x.member.as_deref())?;
                let root = self.out_path(&x.into)?;
                let p = progress.stage(index, count, "extract", input.shown.clone());
                let bounds = ExtractBounds {
                    max_entries: bound(x.max_entries, limits.max_entries),
                    max_bytes: bound(x.max_bytes, limits.max_unpacked_bytes),
                };
                let members = x
                    .members
                    .iter()
                    .map(|m| self.render(m))
                    .collect::<Result<Vec<_>, _>>()?;
                let (format, compression, q) = (x.format, x.compression, p.clone());
                let src = input.clone();
                let tree = blocking(move || {
                    Ok(extract::extract(
                        &src.path,
                        &src.shown,
                        format,
                        compression,
                        &root,
                        &members,
                        bounds,
                        &q,
                        &cancel,
                    )?)
                })
                .await?;
                p.note(format!("{} files", tree.files.len()));
                self.artifacts.insert(
                    x.into.clone(),
                    Artifact::Tree {
                        tree,
                        trust: input.trust,
                    },
                );
                Ok(())
            }
            Stage::Convert(c) => {
                let input = self.file(&c.artifact, c.member.as_deref())?;
                let dest = self.out_path(&c.into)?;
                let p = progress.stage(
                    index,
                    count,
                    "convert",
                    format!("{} to vmlinux", input.shown),
                );
                let limit = bound(c.max_bytes, limits.max_unpacked_bytes);
                let (out, src) = (dest.clone(), input.clone());
                let (sha256, size) = blocking(move || {
                    Ok(convert::bzimage_to_vmlinux(
                        &src.path, &src.shown, &out, limit, &p, &cancel,
                    )?)
                })
                .await?;
                self.steps.push(json!({"convert": {"from": input.shown, "from_sha256": input.sha256, "sha256": sha256}}));
                self.file_artifact(&c.into, dest, sha256, size, input.trust);
                Ok(())
            }
            Stage::Install(inst) => {
                let file = self.file(&inst.artifact, inst.member.as_deref())?;
                let kind = self.render(&inst.kind)?;
                let kind: AssetKind = kind.parse().map_err(StageError::Invalid)?;
                let name = self.render(&inst.name)?;
                let version = self.render(&inst.version)?;
                progress.stage(index, count, "install", format!("{kind} {name} {version}"));
                if !valid_asset_name(&name) {
                    return Err(StageError::Invalid(format!(
                        "{name:?} is not an asset name ([a-z0-9][a-z0-9.+_-]{{0,127}})"
                    )));
                }
                validate_var("version", &version).map_err(StageError::Invalid)?;
                let need = required_trust(&self.provider.settings);
                if file.trust < need {
                    return Err(StageError::Unverified(format!(
                        "{} would be installed with verification {:?}, but provider {} requires {:?}",
                        file.shown, file.trust, self.provider.name, need
                    )));
                }
                self.staged.push(Staged {
                    kind,
                    name,
                    version,
                    sha256: file.sha256,
                    size: file.size,
                    path: file.path,
                    executable: inst.executable || file.executable,
                    inputs: serde_json::Value::Null,
                });
                Ok(())
            }
            Stage::Mmdebstrap(m) => self.mmdebstrap(index, count, m, progress).await,
            Stage::KernelBuild(b) => self.kernel_build(index, count, b, progress).await,
        }
    }

    fn raise_trust(&mut self, artifact: &str, to: Trust) {
        if let Some(Artifact::File { trust, .. } | Artifact::Tree { trust, .. }) =
            self.artifacts.get_mut(artifact)
        {
            *trust = (*trust).max(to);
        }
    }

    fn file_artifact(
        &mut self,
        name: &str,
        path: PathBuf,
        sha256: String,
        size: u64,
        trust: Trust,
    ) {
        self.artifacts.insert(
            name.to_owned(),
            Artifact::File {
                path,
                sha256,
                size,
                trust,
            },
        );
    }

    async fn fetch(
        &mut self,
        index: usize,
        count: usize,
        f: &pipeline::FetchStage,
        progress: &Progress,
    ) -> Result<(), StageError> {
        let limits = self.engine.settings.limits;
        let dest = self.out_path(&f.into)?;
        let max_bytes = bound(f.max_bytes, limits.max_download_bytes);
        let cancel = self.cancel.clone();
        match &f.source {
            FetchSource::Url(template) => {
                let rendered = self.render(template)?;
                let url = reqwest::Url::parse(&rendered)
                    .map_err(|e| StageError::Invalid(format!("{rendered:?} is not a URL: {e}")))?;
                let p = progress.stage(index, count, "fetch", url.to_string());
                let fetched = match url.scheme() {
                    "http" | "https" => {
                        let bounds = FetchBounds {
                            max_bytes,
                            idle: time_bound(f.idle_timeout_secs, limits.fetch_idle_timeout),
                            total: time_bound(f.timeout_secs, limits.fetch_timeout),
                        };
                        self.engine
                            .fetcher
                            .fetch(&url, &dest, bounds, &p, &cancel)
                            .await?
                    }
                    "file" => self.fetch_local(&url, &dest, max_bytes, &p).await?,
                    other => {
                        return Err(StageError::Invalid(format!(
                            "{other}: only http, https and file URLs"
                        )));
                    }
                };
                self.steps.push(json!({"fetch": {"artifact": f.into, "url": url.as_str(), "sha256": fetched.sha256, "size": fetched.size, "resumed_from": fetched.resumed_from}}));
                self.file_artifact(&f.into, dest, fetched.sha256, fetched.size, Trust::None);
                Ok(())
            }
            FetchSource::Apt(source) => {
                let package = self.render(&source.package)?;
                let prefix = source
                    .follow_depends
                    .as_deref()
                    .map(|p| self.render(p))
                    .transpose()?;
                let p = progress.stage(index, count, "fetch", format!("apt: {package}"));
                let (q, out) = (p.clone(), dest.clone());
                let pkg = blocking(move || {
                    let pkg = apt::resolve(&package, prefix.as_deref())?;
                    q.note(format!(
                        "apt: {} {} ({} bytes)",
                        pkg.name, pkg.version, pkg.size
                    ));
                    apt::download(&pkg, &out, max_bytes, &q, &cancel)?;
                    Ok(pkg)
                })
                .await?;
                self.vars.insert("apt_package".into(), pkg.name.clone());
                self.vars.insert("apt_version".into(), pkg.version.clone());
                self.steps.push(json!({"apt": {"artifact": f.into, "package": pkg.name, "version": pkg.version, "sha256": pkg.sha256, "size": pkg.size}}));
                self.file_artifact(&f.into, dest, pkg.sha256, pkg.size, Trust::Signed);
                Ok(())
            }
        }
    }

    /// A root filesystem built by mmdebstrap ([`super::mmdebstrap`]); sets `{rootfs_version}`.
    async fn mmdebstrap(
        &mut self,
        index: usize,
        count: usize,
        m: &pipeline::MmdebstrapStage,
        progress: &Progress,
    ) -> Result<(), StageError> {
        use super::mmdebstrap::{self, Request};
        self.out_path(&m.into)?;
        let req = Request::from_stage(m, &self.vars).map_err(StageError::Invalid)?;
        let p = progress.stage(index, count, "mmdebstrap", req.describe());
        let (staging, into, cancel) = (self.staging.clone(), m.into.clone(), self.cancel.clone());
        let built = blocking(move || {
            let apt = super::apt_sources::AptConfig::default();
            Ok(mmdebstrap::build(&req, &apt, &staging, &into, &p, &cancel)?)
        })
        .await?;
        self.vars.insert("rootfs_version".into(), built.version);
        self.steps.push(json!({"mmdebstrap": built.record}));
        self.file_artifact(&m.into, built.path, built.sha256, built.size, Trust::Signed);
        Ok(())
    }

    /// A `file://` source: the host-path policy decides whether the caller may name it.
    async fn fetch_local(
        &self,
        url: &reqwest::Url,
        dest: &Path,
        max_bytes: u64,
        progress: &Progress,
    ) -> Result<fetch::Fetched, StageError> {
        let path = url
            .to_file_path()
            .map_err(|()| StageError::Invalid(format!("{url} names no local file")))?;
        let (policy, caller) = (self.engine.host_files.clone(), self.caller.clone());
        let (dest, p, cancel, shown) = (
            dest.to_owned(),
            progress.clone(),
            self.cancel.clone(),
            url.to_string(),
        );
        blocking(move || {
            let resolved = policy
                .open(&path, &caller)
                .map_err(|source| StageError::HostPath {
                    path: path.display().to_string(),
                    source,
                })?;
            if resolved.is_dir {
                return Err(StageError::Invalid(format!("{shown} is a directory")));
            }
            Ok(fetch::copy_local(
                &resolved.proc_path(),
                &shown,
                &dest,
                max_bytes,
                &p,
                &cancel,
            )?)
        })
        .await
    }
}
