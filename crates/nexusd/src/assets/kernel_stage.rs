//! The `kernel-build` stage: the guest kernel built from a verified `linux-source-*` package with
//! the fragment compiled into nexusd (`kernel/nexus-guest.config`), in the build cache, then
//! signed with nexusd's build key and handed to the run as a tree.
//!
//! What the run gets is only what the signature vouches for: `vmlinux` and `bzImage` are copied
//! out of the build directory into the run's staging directory, hashed as they are copied, and
//! those hashes compared with `SHA256SUMS`, whose signature by the pinned build key is checked
//! first. A build directory changed behind nexusd's back (a cached one, say) therefore fails the
//! stage instead of being installed.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use super::build_key::{BuildKey, BuildKeyError};
use super::extract::{Tree, TreeFile};
use super::hashio::{self, FileError, file_err};
use super::kernel_build::{
    self, BZIMAGE, BuildRecord, CONFIG, KernelBuild, KernelBuildError, KernelSource, Progress,
    RECORD, SUMS, SumsSigner, VMLINUX,
};
use super::progress::Progress as Reporter;
use super::signature::{self, SignatureError};

/// The configuration fragment of the guest kernel, as this nexusd was built with it.
pub const FRAGMENT: &str = include_str!("../../../../kernel/nexus-guest.config");

/// Why the stage failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelStageError {
    #[error(transparent)]
    Build(#[from] KernelBuildError),
    #[error(transparent)]
    Key(#[from] BuildKeyError),
    #[error("the build's SHA256SUMS is not signed by this nexusd's build key")]
    Signature(#[from] SignatureError),
    #[error("{name} of the build does not match its signed SHA256SUMS")]
    Mismatch { name: String },
    #[error("option {key}: {value:?} is not {wanted}")]
    Option {
        key: String,
        value: String,
        wanted: &'static str,
    },
    #[error(transparent)]
    Io(#[from] FileError),
}

/// Where a build happens and what it is signed with.
#[derive(Debug, Clone)]
pub struct KernelStageDirs {
    /// The build cache: `<dir>/<inputs key>/` per build.
    pub out_root: PathBuf,
    /// The build key's directory.
    pub key_dir: PathBuf,
}

/// What the stage hands back: the tree (under `into`) and the build's record.
pub struct Built {
    pub tree: Tree,
    pub record: BuildRecord,
    pub cached: bool,
    pub key: String,
}

/// Builds (or finds built) the kernel of `source` (a `linux-source-*` `.deb`), verifies it and
/// copies its kernels into `into`. Blocking: minutes for a build, a second for a cache hit.
pub fn run(
    dirs: &KernelStageDirs,
    source: &Path,
    options: &BTreeMap<String, String>,
    into: &Path,
    progress: &Reporter,
    cancel: &CancellationToken,
) -> Result<Built, KernelStageError> {
    let key = BuildKey::load_or_create(&dirs.key_dir)?;
    let keyring = key.keyring();
    let fingerprint = key.fingerprint().to_owned();
    let signature_name = key.signature_name().to_owned();

    fs::create_dir_all(into).map_err(file_err("create", into))?;
    let fragment = into.join(".fragment.config");
    fs::write(&fragment, FRAGMENT).map_err(file_err("write", &fragment))?;
    let mut build = KernelBuild::new(
        KernelSource::Package(source.to_owned()),
        &fragment,
        &dirs.out_root,
    )
    .rebuild(flag(options, "rebuild")?)
    .signer(Box::new(key))
    .cancel(cancel.clone());
    if let Some(jobs) = options.get("jobs").filter(|j| *j != "auto") {
        let jobs = jobs
            .parse::<usize>()
            .ok()
            .filter(|j| (1..=256).contains(j))
            .ok_or_else(|| KernelStageError::Option {
                key: "jobs".into(),
                value: jobs.clone(),
                wanted: "auto or a number from 1 to 256",
            })?;
        build = build.jobs(jobs);
    }
    let built = build.run(&mut |event| report(progress, event))?;
    fs::remove_file(&fragment).map_err(file_err("remove", &fragment))?;

    let sums = built.dir.join(SUMS);
    signature::verify(
        &keyring,
        std::slice::from_ref(&fingerprint),
        &sums,
        SUMS,
        &built.dir.join(&signature_name),
        &signature_name,
    )?;
    let signed = fs::read(&sums).map_err(file_err("read", &sums))?;
    let entries = kernel_build::parse_sums(&String::from_utf8_lossy(&signed)).ok_or_else(|| {
        KernelStageError::Mismatch {
            name: SUMS.to_owned(),
        }
    })?;
    let mut files = BTreeMap::new();
    for name in [VMLINUX, BZIMAGE] {
        let file = copy_hashed(&built.dir.join(name), &into.join(name), cancel)?;
        let listed = entries.iter().any(|(n, h)| n == name && *h == file.sha256);
        if !listed {
            return Err(KernelStageError::Mismatch { name: name.into() });
        }
        files.insert(name.to_owned(), file);
    }
    // The record and config travel with the kernels for people to read; only the kernels are
    // covered by the sums, so only they are what an install stage may take.
    for name in [RECORD, CONFIG] {
        let from = built.dir.join(name);
        let to = into.join(name);
        fs::copy(&from, &to).map_err(file_err("copy", &from))?;
    }
    Ok(Built {
        tree: Tree {
            root: into.to_owned(),
            files,
        },
        record: built.record,
        cached: built.cached,
        key: fingerprint,
    })
}

/// `true` or `false` (absent: `false`).
fn flag(options: &BTreeMap<String, String>, key: &str) -> Result<bool, KernelStageError> {
    match options.get(key).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(KernelStageError::Option {
            key: key.into(),
            value: other.into(),
            wanted: "true or false",
        }),
    }
}

fn report(progress: &Reporter, event: Progress) {
    match event {
        Progress::Stage(stage) => progress.note(format!("{stage:?}").to_lowercase()),
        Progress::Compiled(n) => progress.bytes(n, None),
        Progress::CacheHit => progress.note("cached: these inputs were built before".into()),
    }
}

/// Copies `from` to the new file `to`, hashing what is written.
fn copy_hashed(
    from: &Path,
    to: &Path,
    cancel: &CancellationToken,
) -> Result<TreeFile, KernelStageError> {
    let mut input = fs::File::open(from).map_err(file_err("open", from))?;
    let out = hashio::create_new(to).map_err(file_err("create", to))?;
    let mut out = hashio::HashWriter::new(std::io::BufWriter::new(out), u64::MAX);
    hashio::copy_with(&mut input, &mut out, cancel, |_| {}).map_err(file_err("copy", from))?;
    let (writer, sha256, size) = out.finish();
    writer
        .into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .map_err(file_err("write", to))?;
    Ok(TreeFile {
        sha256,
        size,
        executable: false,
    })
}
