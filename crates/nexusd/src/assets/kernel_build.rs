//! Building the Nexus guest kernel from Debian's kernel source package: one kernel for QEMU and
//! Firecracker, with everything built in, booted without an initramfs.
//!
//! The steps: the source tarball is taken from a `linux-source-*` `.deb` (or given directly),
//! `make tinyconfig`, the repository's fragment (`kernel/nexus-guest.config`) merged with
//! `merge_config.sh -m` and settled with `make olddefconfig`, every fragment line checked in the
//! final `.config`, then `make vmlinux bzImage`. The outputs (`vmlinux`, the ELF that QEMU boots
//! through PVH and Firecracker loads; `bzImage`; `config`; `SHA256SUMS`; `inputs.json`;
//! `build.log`) land in `<out_root>/<inputs key>/`, published by one rename: the key hashes the
//! source tarball, the fragment, the compiler and linker and the recipe, so building again with
//! the same inputs is a cache hit, and a changed input builds anew next to the old outputs.
//!
//! Everything here blocks (a build takes minutes): call it from a blocking thread. External
//! commands run with a clean environment and `LC_ALL=C`, under `nice`, and are judged by their
//! exit status; their output goes to a size-bounded log that errors quote the tail of.

mod elf;
mod fragment;
mod host;
mod log;
mod record;
mod source;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub use elf::check_pvh_vmlinux;
pub use fragment::{Requirement, Unmet, parse_fragment, unmet};
pub use record::{BuildInputs, BuildRecord, RECIPE, parse_sums};
pub use source::find_or_download_source;

use tokio_util::sync::CancellationToken;

use crate::command::CommandError;
use host::{Step, TOOLS, check_headers, check_host, clean_command, lock, output};
use log::BoundedLog;
use record::{format_sums, sha256_file};
use source::{build_timestamp, find_tarball, single_dir};

/// The Debian package holding the kernel source this fragment is written for.
pub const DEFAULT_SOURCE_PACKAGE: &str = "linux-source-6.1";
/// The build log rotates past this many bytes (the log and its predecessor are kept).
pub const LOG_LIMIT: u64 = 4 << 20;
/// Niceness of the build's commands unless told otherwise: a build is background work on a host
/// that runs VMs.
pub const DEFAULT_NICE: i32 = 19;
/// Names of the outputs in a build directory.
pub const VMLINUX: &str = "vmlinux";
pub const BZIMAGE: &str = "bzImage";
pub const SUMS: &str = "SHA256SUMS";
pub const RECORD: &str = "inputs.json";
pub const CONFIG: &str = "config";
pub const BUILD_LOG: &str = "build.log";

/// Where the outputs come from in the kernel tree.
const TREE_VMLINUX: &str = "vmlinux";
const TREE_BZIMAGE: &str = "arch/x86/boot/bzImage";
const TREE_RELEASE: &str = "include/config/kernel.release";

/// Where the kernel source comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// A `linux-source-*` package (`apt-get download linux-source-6.1`), holding
    /// `usr/src/linux-source-*.tar.xz`.
    Package(PathBuf),
    /// The source tarball itself.
    Tarball(PathBuf),
}

/// The stages a build reports, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Hashing the inputs (the source package is unpacked for its tarball).
    Inputs,
    /// Unpacking the source tree.
    Unpack,
    /// `tinyconfig`, the fragment merged, `olddefconfig`, the fragment checked.
    Configure,
    /// `make vmlinux bzImage`.
    Compile,
    /// Checksums, record, signature, publication.
    Install,
}

/// What a build tells its caller as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Stage(Stage),
    /// Objects compiled or linked so far (kbuild's `  CC …` lines).
    Compiled(u64),
    /// The outputs of these inputs already exist: nothing is built.
    CacheHit,
}

/// Signs `SHA256SUMS`: the seam for the key nexusd generates and pins. The signature is written
/// next to the sums under [`SumsSigner::signature_name`].
pub trait SumsSigner: Send + Sync {
    /// File name of the detached signature, e.g. `SHA256SUMS.asc`.
    fn signature_name(&self) -> &str;
    /// A detached signature over the exact bytes of `SHA256SUMS`.
    fn sign(&self, sums: &[u8]) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>>;
}

/// A finished build (fresh or from the cache).
#[derive(Debug, Clone)]
pub struct BuiltKernel {
    pub dir: PathBuf,
    pub vmlinux: PathBuf,
    pub bzimage: PathBuf,
    pub sums: PathBuf,
    pub record: BuildRecord,
    /// The outputs were already there.
    pub cached: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelBuildError {
    #[error("the guest kernel is built for x86-64, on an x86-64 host (this one is {0})")]
    UnsupportedHost(&'static str),
    #[error(
        "the guest kernel build needs `{tool}` (apt-get install build-essential bc flex bison libelf-dev libssl-dev lz4; it is in {package})"
    )]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error(
        "the guest kernel build needs {header} (apt-get install build-essential bc flex bison libelf-dev libssl-dev lz4; it is in {package})"
    )]
    MissingHeader {
        header: &'static str,
        package: &'static str,
    },
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tool(#[from] CommandError),
    #[error("`{command}` failed ({status}); the end of {}:\n{tail}", log.display())]
    Step {
        command: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("cannot download {package} (is it in the host's apt sources? try apt-get update)")]
    Download {
        package: String,
        #[source]
        source: CommandError,
    },
    #[error("`apt-get download {package}` left no {package}_*.deb in {}", dir.display())]
    NoPackage { package: String, dir: PathBuf },
    #[error("{} holds no usr/src/linux-source-*.tar.xz", deb.display())]
    NoTarball { deb: PathBuf },
    #[error("{} did not unpack into a single kernel source directory", tarball.display())]
    NoSourceTree { tarball: PathBuf },
    #[error("kernel config fragment {}: {reason}", path.display())]
    BadFragment { path: PathBuf, reason: String },
    #[error(
        "options of {} did not survive `make olddefconfig` (a dependency is off, or options conflict): {}",
        fragment.display(),
        lost.join("; ")
    )]
    FragmentNotApplied {
        fragment: PathBuf,
        lost: Vec<String>,
    },
    #[error("{} is not a bootable vmlinux: {reason}", path.display())]
    BadVmlinux { path: PathBuf, reason: String },
    #[error("the build in {} does not verify: {reason}", dir.display())]
    BadOutputs { dir: PathBuf, reason: String },
    #[error("the kernel build was cancelled")]
    Cancelled,
    #[error("signing {} failed", path.display())]
    Sign {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl KernelBuildError {
    fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| Self::Io { op, path, source }
    }
}

/// One kernel build: a source, a fragment and the directory its outputs go under.
pub struct KernelBuild {
    source: KernelSource,
    fragment: PathBuf,
    out_root: PathBuf,
    jobs: usize,
    nice: i32,
    rebuild: bool,
    signer: Option<Box<dyn SumsSigner>>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for KernelBuild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelBuild")
            .field("source", &self.source)
            .field("fragment", &self.fragment)
            .field("out_root", &self.out_root)
            .field("jobs", &self.jobs)
            .field("nice", &self.nice)
            .field("rebuild", &self.rebuild)
            .field("signed", &self.signer.is_some())
            .finish()
    }
}

impl KernelBuild {
    /// A build of `source` with `fragment`, its outputs under `out_root/<inputs key>/` (the
    /// scratch tree goes under `out_root` too, and is removed afterwards).
    pub fn new(
        source: KernelSource,
        fragment: impl Into<PathBuf>,
        out_root: impl Into<PathBuf>,
    ) -> Self {
        Self {
            source,
            fragment: fragment.into(),
            out_root: out_root.into(),
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            nice: DEFAULT_NICE,
            rebuild: false,
            signer: None,
            cancel: CancellationToken::new(),
        }
    }

    /// Parallel jobs of `make` (default: the host's CPUs).
    pub fn jobs(mut self, jobs: usize) -> Self {
        self.jobs = jobs.max(1);
        self
    }

    /// Niceness of the build's commands (default [`DEFAULT_NICE`]).
    pub fn nice(mut self, nice: i32) -> Self {
        self.nice = nice.clamp(-20, 19);
        self
    }

    /// Build even when the outputs of these inputs exist (they are replaced).
    pub fn rebuild(mut self, rebuild: bool) -> Self {
        self.rebuild = rebuild;
        self
    }

    /// Sign `SHA256SUMS` with `signer` (a cached build lacking its signature is signed too).
    pub fn signer(mut self, signer: Box<dyn SumsSigner>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Stop the build when `cancel` fires: the running command's process group is killed, the
    /// scratch tree removed, nothing published.
    pub fn cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// Builds the kernel, or finds it already built; `progress` hears each stage.
    pub fn run(&self, progress: &mut dyn FnMut(Progress)) -> Result<BuiltKernel, KernelBuildError> {
        let started = Instant::now();
        check_host(&[("dpkg-deb", "dpkg")])?;
        fs::create_dir_all(&self.out_root)
            .map_err(KernelBuildError::io("cannot create", &self.out_root))?;
        let scratch = tempfile::Builder::new()
            .prefix(".build-")
            .tempdir_in(&self.out_root)
            .map_err(KernelBuildError::io(
                "cannot create a directory in",
                &self.out_root,
            ))?;
        progress(Progress::Stage(Stage::Inputs));
        let (tarball, package) = self.tarball(scratch.path())?;
        let inputs = self.inputs(&tarball, package)?;
        let key = inputs.key();
        let dir = self.out_root.join(&key);
        let _lock = lock(&self.out_root.join(format!(".{key}.lock")))?;
        if !self.rebuild
            && let Ok(record) = verify_build(&dir)
            && record.matches(&inputs)
        {
            progress(Progress::CacheHit);
            self.sign_if_wanted(&dir)?;
            return Ok(built(dir, record, true));
        }
        check_host(TOOLS)?;
        check_headers()?;
        let log_path = self.out_root.join(format!("{key}.{BUILD_LOG}"));
        let mut log = BoundedLog::create(&log_path, LOG_LIMIT)
            .map_err(KernelBuildError::io("cannot create", &log_path))?;
        let stamp = build_timestamp(&tarball);
        let step = Step {
            log: &mut log,
            nice: self.nice,
            stamp: &stamp,
            cancel: &self.cancel,
        };
        let out = scratch.path().join("out");
        let release = self.build(step, &tarball, scratch.path(), &out, progress)?;
        progress(Progress::Stage(Stage::Install));
        let record = BuildRecord {
            key: key.clone(),
            inputs,
            kernel_release: release,
            build_secs: (started.elapsed().as_millis() as f64) / 1000.0,
            built_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        write_outputs(&out, &record)?;
        let rotated_log = log.rotated();
        drop(log);
        for (from, name) in [
            (log_path, BUILD_LOG.to_owned()),
            (rotated_log, format!("{BUILD_LOG}.1")),
        ] {
            if from.exists() {
                let to = out.join(name);
                fs::rename(&from, &to).map_err(KernelBuildError::io("cannot move", &from))?;
            }
        }
        self.sign_if_wanted(&out)?;
        publish(&out, &dir)?;
        Ok(built(dir, record, false))
    }

    /// The source tarball, unpacked from the package when the source is one, and the package's
    /// `name version`.
    fn tarball(&self, scratch: &Path) -> Result<(PathBuf, Option<String>), KernelBuildError> {
        match &self.source {
            KernelSource::Tarball(path) => {
                if !path.is_file() {
                    return Err(KernelBuildError::Io {
                        op: "cannot read the kernel source tarball",
                        path: path.clone(),
                        source: std::io::ErrorKind::NotFound.into(),
                    });
                }
                Ok((path.clone(), None))
            }
            KernelSource::Package(deb) => {
                let fields = output(
                    self.command("dpkg-deb")
                        .arg("--show")
                        .arg("--showformat=${Package} ${Version}")
                        .arg(deb),
                )?;
                let pkg = scratch.join("package");
                output(self.command("dpkg-deb").arg("-x").arg(deb).arg(&pkg))?;
                let tarball = find_tarball(&pkg.join("usr/src"))
                    .ok_or_else(|| KernelBuildError::NoTarball { deb: deb.clone() })?;
                Ok((tarball, Some(fields.trim().to_owned())))
            }
        }
    }

    fn inputs(
        &self,
        tarball: &Path,
        source_package: Option<String>,
    ) -> Result<BuildInputs, KernelBuildError> {
        let text = fs::read_to_string(&self.fragment)
            .map_err(KernelBuildError::io("cannot read", &self.fragment))?;
        parse_fragment(&text).map_err(|reason| KernelBuildError::BadFragment {
            path: self.fragment.clone(),
            reason,
        })?;
        let first_line = |s: String| s.lines().next().unwrap_or_default().trim().to_owned();
        Ok(BuildInputs {
            recipe: RECIPE,
            source_package,
            source_tarball: tarball
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            source_sha256: sha256_file(tarball)
                .map_err(KernelBuildError::io("cannot read", tarball))?,
            fragment_sha256: sha256_file(&self.fragment)
                .map_err(KernelBuildError::io("cannot read", &self.fragment))?,
            compiler: first_line(output(self.command("gcc").arg("--version"))?),
            linker: first_line(output(self.command("ld").arg("--version"))?),
        })
    }

    /// Unpacks, configures and compiles in `scratch`; copies the outputs to `out`. Returns the
    /// kernel release.
    fn build(
        &self,
        mut step: Step<'_>,
        tarball: &Path,
        scratch: &Path,
        out: &Path,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<String, KernelBuildError> {
        progress(Progress::Stage(Stage::Unpack));
        let src = scratch.join("src");
        fs::create_dir_all(&src).map_err(KernelBuildError::io("cannot create", &src))?;
        let mut tar = step.command("tar");
        tar.arg("-xf").arg(tarball).arg("-C").arg(&src);
        step.run(tar, &mut |_| {})?;
        let tree = single_dir(&src).ok_or_else(|| KernelBuildError::NoSourceTree {
            tarball: tarball.to_owned(),
        })?;

        progress(Progress::Stage(Stage::Configure));
        step.run(step.make(&tree, &["tinyconfig"]), &mut |_| {})?;
        let mut merge = step.command("scripts/kconfig/merge_config.sh");
        merge
            .current_dir(&tree)
            .args(["-m", ".config"])
            .arg(absolute(&self.fragment)?);
        step.run(merge, &mut |_| {})?;
        step.run(step.make(&tree, &["olddefconfig"]), &mut |_| {})?;
        self.check_fragment(&tree.join(".config"))?;

        progress(Progress::Stage(Stage::Compile));
        let mut compiled = 0u64;
        let mut count = |line: &str| {
            if is_kbuild_step(line) {
                compiled += 1;
                progress(Progress::Compiled(compiled));
            }
        };
        let jobs = format!("-j{}", self.jobs);
        step.run(
            step.make(&tree, &[&jobs, TREE_VMLINUX, "bzImage"]),
            &mut count,
        )?;

        fs::create_dir_all(out).map_err(KernelBuildError::io("cannot create", out))?;
        for (from, to) in [
            (TREE_VMLINUX, VMLINUX),
            (TREE_BZIMAGE, BZIMAGE),
            (".config", CONFIG),
        ] {
            let (from, to) = (tree.join(from), out.join(to));
            fs::copy(&from, &to).map_err(KernelBuildError::io("cannot copy", &from))?;
        }
        let vmlinux = out.join(VMLINUX);
        check_pvh_vmlinux(&vmlinux).map_err(|reason| KernelBuildError::BadVmlinux {
            path: vmlinux,
            reason,
        })?;
        let release = tree.join(TREE_RELEASE);
        Ok(fs::read_to_string(&release)
            .map_err(KernelBuildError::io("cannot read", &release))?
            .trim()
            .to_owned())
    }

    /// Every line of the fragment must hold in the final `.config`.
    fn check_fragment(&self, config: &Path) -> Result<(), KernelBuildError> {
        let text = fs::read_to_string(&self.fragment)
            .map_err(KernelBuildError::io("cannot read", &self.fragment))?;
        let wanted = parse_fragment(&text).map_err(|reason| KernelBuildError::BadFragment {
            path: self.fragment.clone(),
            reason,
        })?;
        let config_text =
            fs::read_to_string(config).map_err(KernelBuildError::io("cannot read", config))?;
        let lost = unmet(&wanted, &config_text);
        if lost.is_empty() {
            return Ok(());
        }
        Err(KernelBuildError::FragmentNotApplied {
            fragment: self.fragment.clone(),
            lost: lost.iter().map(ToString::to_string).collect(),
        })
    }

    fn sign_if_wanted(&self, dir: &Path) -> Result<(), KernelBuildError> {
        match &self.signer {
            Some(signer) if !dir.join(signer.signature_name()).exists() => {
                sign_sums(dir, signer.as_ref()).map(drop)
            }
            _ => Ok(()),
        }
    }

    /// A command with the build's environment: nothing of nexusd's but `PATH`, `LC_ALL=C`.
    fn command(&self, program: &str) -> Command {
        clean_command(program)
    }
}

/// Signs `<dir>/SHA256SUMS` with `signer`, writing the signature next to it (atomically);
/// returns the signature's path. Usable on any build directory, fresh or installed long ago.
pub fn sign_sums(dir: &Path, signer: &dyn SumsSigner) -> Result<PathBuf, KernelBuildError> {
    let sums = dir.join(SUMS);
    let bytes = fs::read(&sums).map_err(KernelBuildError::io("cannot read", &sums))?;
    let signature = signer
        .sign(&bytes)
        .map_err(|source| KernelBuildError::Sign {
            path: sums.clone(),
            source,
        })?;
    let path = dir.join(signer.signature_name());
    write_atomic(&path, &signature)?;
    Ok(path)
}

/// Re-checks a build directory: its record parses, and `vmlinux` and `bzImage` match
/// `SHA256SUMS`. Returns the record.
pub fn verify_build(dir: &Path) -> Result<BuildRecord, KernelBuildError> {
    let bad = |reason: String| KernelBuildError::BadOutputs {
        dir: dir.to_owned(),
        reason,
    };
    let record_path = dir.join(RECORD);
    let text =
        fs::read_to_string(&record_path).map_err(|e| bad(format!("cannot read {RECORD}: {e}")))?;
    let record: BuildRecord =
        serde_json::from_str(&text).map_err(|e| bad(format!("{RECORD}: {e}")))?;
    let sums =
        fs::read_to_string(dir.join(SUMS)).map_err(|e| bad(format!("cannot read {SUMS}: {e}")))?;
    let entries = parse_sums(&sums).ok_or_else(|| bad(format!("{SUMS} is malformed")))?;
    for name in [VMLINUX, BZIMAGE] {
        let wanted = entries
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| bad(format!("{SUMS} does not list {name}")))?;
        let got = sha256_file(&dir.join(name)).map_err(|e| bad(format!("{name}: {e}")))?;
        if got != wanted.1 {
            return Err(bad(format!("{name} does not match its checksum")));
        }
    }
    Ok(record)
}

fn absolute(path: &Path) -> Result<PathBuf, KernelBuildError> {
    std::path::absolute(path).map_err(KernelBuildError::io("cannot resolve", path))
}

/// kbuild's quiet output: `  CC      kernel/fork.o`, `  LD      vmlinux`…
fn is_kbuild_step(line: &str) -> bool {
    line.strip_prefix("  ").is_some_and(|rest| {
        let word = rest.split_whitespace().next().unwrap_or("");
        !word.is_empty()
            && word
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    })
}

/// Writes `SHA256SUMS` over the images and the record, into `out`.
fn write_outputs(out: &Path, record: &BuildRecord) -> Result<(), KernelBuildError> {
    let mut entries = Vec::new();
    for name in [VMLINUX, BZIMAGE] {
        let path = out.join(name);
        let hash = sha256_file(&path).map_err(KernelBuildError::io("cannot read", &path))?;
        entries.push((name, hash));
    }
    write_atomic(&out.join(SUMS), format_sums(&entries).as_bytes())?;
    let json = serde_json::to_vec_pretty(record).expect("a record serialises");
    write_atomic(&out.join(RECORD), &json)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), KernelBuildError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, bytes).map_err(KernelBuildError::io("cannot write", &tmp))?;
    fs::rename(&tmp, path).map_err(KernelBuildError::io("cannot write", path))
}

/// Moves the finished outputs to their key's directory, replacing what was there (a rebuild, or
/// outputs that no longer verified).
fn publish(out: &Path, dir: &Path) -> Result<(), KernelBuildError> {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(KernelBuildError::io("cannot remove", dir))?;
    }
    fs::rename(out, dir).map_err(KernelBuildError::io("cannot publish the build to", dir))
}

fn built(dir: PathBuf, record: BuildRecord, cached: bool) -> BuiltKernel {
    BuiltKernel {
        vmlinux: dir.join(VMLINUX),
        bzimage: dir.join(BZIMAGE),
        sums: dir.join(SUMS),
        dir,
        record,
        cached,
    }
}

/// A minimal ELF with a PVH entry note (tests of code that checks a guest kernel).
#[cfg(test)]
pub(crate) fn pvh_elf_fixture() -> Vec<u8> {
    elf::tests::pvh_elf()
}

#[cfg(test)]
mod tests;
